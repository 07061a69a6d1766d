"""Security: every admin route needs a key (walked from the live route
table), brute-force lockouts, and no secret in the logs of a full run."""
import base64
import os
import re
import time

import requests

from conftest import Server, get, run
from device import Api, Device


def test_every_admin_route_needs_a_key(server):
    api = Api(server)
    st, body = api.call("GET", "/v1/routes")
    assert st == 200
    routes = body["routes"]
    admin = [r for r in routes if r["pattern"].startswith("/v1")]
    assert len(admin) >= 10, routes
    for r in admin:
        assert r["auth"] in ("api_read", "api_admin"), r
        path = re.sub(r"\{[^}]+\}", "x", r["pattern"])
        for m in r["methods"]:
            resp = requests.request(m, server.url + path, verify=server.datadir.ca_crt,
                                    timeout=10)
            assert resp.status_code == 401, (m, path, resp.status_code)
    # Routes without a key are the ones devices and people use.
    public = {r["pattern"] for r in routes if r["auth"] == "public"}
    assert public <= {"/healthz", "/version", "/metrics", "/scep", "/ca.crl", "/enroll",
                      "/ota/profile"}, public
    device = {r["pattern"] for r in routes if r["auth"] == "device"}
    assert device == {"/mdm/checkin", "/mdm/connect", "/mdm"}


def test_failed_api_keys_lock_the_address_out(datadir):
    datadir.write_config('  security = { auth_fail_threshold = 3, auth_backoff = "1s" },')
    srv = Server(datadir)
    try:
        bad = {"Authorization": "Bearer mdm_" + "0" * 16 + "_" + "0" * 64}
        for _ in range(3):
            assert get(srv, "/v1/status", bad).status == 401
        r = get(srv, "/v1/status", bad)
        assert r.status == 429 and r.header("retry-after") in ("1", "2")
        # Locked by address: even the right key waits.
        good = {"Authorization": "Bearer " + datadir.api_key}
        assert get(srv, "/v1/status", good).status == 429
        srv.wait_log(r"event=guard.lockout endpoint=api key=addr:127.0.0.1 failures=3")
        time.sleep(1.1)  # the lockout (wall-clock) passes
        assert get(srv, "/v1/status", good).status == 200
        m = re.search(rb'moonmdm_auth_lockouts_total\{endpoint="api"\} (\d+)',
                      get(srv, "/metrics").body)
        assert m and int(m.group(1)) == 1
    finally:
        assert srv.stop() == 0


def test_failed_enrollment_sign_ins_lock_out(datadir):
    datadir.write_config('  security = { auth_fail_threshold = 2, auth_backoff = "30s" },')
    srv = Server(datadir)
    try:
        url = srv.url + "/enroll"
        for i in range(2):
            r = requests.post(url, data={"username": "mallory", "password": f"guess{i}"},
                              verify=datadir.ca_crt, timeout=10)
            assert r.status_code == 403
        r = requests.post(url, data={"username": "mallory", "password": "guess3"},
                          verify=datadir.ca_crt, timeout=10)
        assert r.status_code == 429 and "Too many failed sign-ins" in r.text
        assert int(r.headers["Retry-After"]) > 20
        srv.wait_log(r'event=enroll.locked_out .*user=mallory')
        assert "guess" not in srv.log()
    finally:
        assert srv.stop() == 0


def test_no_secret_reaches_the_log(datadir, tmpdir_path):
    """A full run: API keys, a sign-in password, challenges, push tokens,
    unlock and bootstrap tokens; none of them may appear in the log."""
    srv = Server(datadir, ["--log-level", "debug"])
    try:
        api = Api(srv)
        secrets = [datadir.api_key, datadir.api_key.split("_")[2]]
        ro = run("apikey", "create", "--role", "read", "--config", datadir.config).stdout.strip()
        secrets += [ro, ro.split("_")[2]]
        assert api.call("GET", "/v1/devices", key=ro)[0] == 200
        password = "pw-" + os.urandom(6).hex()
        secrets.append(password)
        requests.post(srv.url + "/enroll", data={"username": "alice", "password": password},
                      verify=datadir.ca_crt, timeout=10)
        requests.get(srv.url + "/enroll", auth=("alice", password), verify=datadir.ca_crt,
                     timeout=10)
        ch = run("challenge", "new", "--user", "alice", "--config", datadir.config).stdout.strip()
        secrets.append(ch)
        d = Device(srv)
        unlock = os.urandom(24)
        bootstrap = os.urandom(40)
        assert d.authenticate() == 200
        assert d.token_update(UnlockToken=unlock) == 200
        assert d.checkin("SetBootstrapToken", BootstrapToken=bootstrap)[0] == 200
        assert d.checkin("GetBootstrapToken")[0] == 200
        api.send("DeviceInformation", [d.udid], Queries=["UDID"])
        d.run()
        for blob in (unlock, bootstrap, d.token):
            secrets += [blob.hex(), base64.b64encode(blob).decode()]
        secrets.append(d.push_magic)
    finally:
        assert srv.stop() == 0
    log = srv.log()
    assert "event=mdm.checkin" in log and "event=enroll.authenticate" in log
    for s in secrets:
        assert s not in log, s
