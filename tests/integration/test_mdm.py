"""The MDM check-in and command protocols with the device simulator."""
import base64
import json
import os
import plistlib
import re
import signal
import subprocess
import threading
import time
import uuid as uuidlib

import pytest

import pki
from conftest import BIN, Server, run
from device import CHECKIN_CT, TOPIC, Api, Device


@pytest.fixture
def api(server):
    return Api(server)


def test_full_lifecycle(server, api):
    d = Device(server)
    d.enroll()
    st, body = api.call("GET", "/v1/devices")
    assert st == 200
    dev = next(x for x in body["devices"] if x["id"] == d.udid)
    assert dev["enabled"] and dev["enrolled"] and dev["serial"] == d.serial
    assert dev["push_token"] and dev["unlock_token"] and dev["token_updates"] == 1
    assert dev["new_enrollment"] is True

    st, res = api.send("DeviceInformation", [d.udid], Queries=["SerialNumber", "OSVersion"])
    assert st == 201, res
    cmd_uuid = res["command_uuid"]
    assert res["targets"][d.udid]["status"] == "queued"

    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert show["queue_length"] == 1 and show["identity_certificate"]["sha256"]

    got = d.run()
    assert [c["CommandUUID"] for c in got] == [cmd_uuid]
    assert got[0]["Command"] == {"RequestType": "DeviceInformation",
                                 "Queries": ["SerialNumber", "OSVersion"]}

    st, c = api.call("GET", "/v1/commands/" + cmd_uuid)
    t = c["targets"][d.udid]
    assert t["status"] == "Acknowledged" and t["completed_at"]
    assert t["result"]["QueryResponses"]["BatteryLevel"] == 0.8
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert show["queue_length"] == 0 and show["new_enrollment"] is False
    assert show["facts"]["DeviceName"] == "Test iPhone" and show["facts"]["IsSupervised"] is False
    st, hist = api.call("GET", f"/v1/devices/{d.udid}/commands")
    assert [h["status"] for h in hist["commands"]] == ["Acknowledged"]


def test_notnow_is_offered_again_on_the_next_session(server, api):
    d = Device(server)
    d.enroll()
    a = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    b = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]

    seen = []

    def handler(cmd):
        seen.append(cmd["CommandUUID"])
        if cmd["CommandUUID"] == a:
            return "NotNow", {}
        return d.answer(cmd)

    d.run(handler)
    assert seen == [a, b]  # A deferred, B went ahead, A not offered again
    st, c = api.call("GET", "/v1/commands/" + a)
    assert c["targets"][d.udid]["status"] == "NotNow"
    assert c["targets"][d.udid]["notnow_count"] == 1
    # Put off again in the next session: offered once there, again after.
    seen.clear()
    d.run(handler)
    assert seen == [a]
    assert api.call("GET", "/v1/commands/" + a)[1]["targets"][d.udid]["notnow_count"] == 2
    got = d.run()
    assert [g["CommandUUID"] for g in got] == [a]
    assert api.call("GET", "/v1/commands/" + a)[1]["targets"][d.udid]["status"] == "Acknowledged"
    # Sessions without a NotNow, then a NotNow: the command put off is
    # still offered again in the next session, once.
    for _ in range(2):
        one = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
        assert [g["CommandUUID"] for g in d.run()] == [one]
    e = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    seen.clear()
    d.run(lambda cmd: (seen.append(cmd["CommandUUID"]), ("NotNow", {}))[1])
    assert seen == [e]
    assert [g["CommandUUID"] for g in d.run()] == [e]
    assert api.call("GET", "/v1/commands/" + e)[1]["targets"][d.udid]["status"] == "Acknowledged"


def test_priorities_then_order(server, api):
    d = Device(server)
    d.enroll()
    low1 = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    low2 = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
    high = api.send("DeviceLock", [d.udid], priority=10, Message="hi")[1]["command_uuid"]
    got = [c["CommandUUID"] for c in d.run()]
    assert got == [high, low1, low2]


def test_ttl_expiry_and_cancel(server, api):
    d = Device(server)
    d.enroll()
    exp = api.send("ProfileList", [d.udid], ttl="200ms")[1]["command_uuid"]
    canceled = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
    kept = api.send("DeviceInformation", [d.udid], Queries=["UDID"])[1]["command_uuid"]
    st, r = api.call("DELETE", f"/v1/devices/{d.udid}/commands/{canceled}")
    assert st == 200 and r["status"] == "Canceled"
    assert api.call("DELETE", f"/v1/devices/{d.udid}/commands/{canceled}")[0] == 404
    time.sleep(0.3)  # let the TTL pass (wall-clock, not server readiness)
    got = [c["CommandUUID"] for c in d.run()]
    assert got == [kept]
    assert api.call("GET", "/v1/commands/" + exp)[1]["targets"][d.udid]["status"] == "Expired"
    assert api.call("GET", "/v1/commands/" + canceled)[1]["targets"][d.udid]["status"] == "Canceled"


def test_reenrollment_clears_the_old_queue(server, api):
    d = Device(server)
    d.enroll()
    old = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    assert d.authenticate() == 200
    # Until the next TokenUpdate the enrollment is disabled.
    assert d.idle()[0] == 403
    assert d.token_update() == 200
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert show["token_updates"] == 2 and show["new_enrollment"] is True
    assert d.run() == []
    assert api.call("GET", "/v1/commands/" + old)[1]["targets"][d.udid]["status"] == "Cleared"
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["new_enrollment"] is False


def test_checkout_disables_and_unbinds(server, api):
    d = Device(server)
    d.enroll()
    st, _ = d.checkin("CheckOut", Topic=TOPIC)
    assert st == 200
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert show["enabled"] is False and show["checked_out_at"]
    assert show["identity_certificate"] is None
    # History is kept; the device can no longer speak for the enrollment.
    assert d.idle()[0] == 403
    assert d.token_update() == 403


def test_a_device_cannot_speak_for_another(server, api):
    a, b = Device(server), Device(server)
    a.enroll()
    b.enroll()
    cmd = api.send("DeviceLock", [b.udid], Message="for b only")[1]["command_uuid"]
    spoof = Device(server, udid=b.udid, cert=a.cert, key=a.key)
    assert spoof.idle()[0] == 403
    assert spoof.token_update() == 403
    assert spoof.authenticate() == 403  # a's certificate is bound to a
    server.wait_log(r"event=mdm.report .*http_status=403 .*bound to another enrollment")
    # b still gets its command; nothing changed for it.
    assert [c["CommandUUID"] for c in b.run()] == [cmd]
    # A certificate nobody bound (never authenticated) is refused too.
    stranger = Device(server, udid=a.udid)
    assert stranger.idle()[0] == 403
    assert stranger.token_update() == 403


def test_unknown_certificate_and_no_identity(server):
    other_ca, other_key = pki.make_ca()
    cert, key = pki.issue_client(other_ca, other_key, "x")
    d = Device(server, cert=cert, key=key, sign=True)
    # Signed by a certificate from another CA: refused before anything else.
    assert d.authenticate() == 400
    server.wait_log(r"event=mdm.checkin .*http_status=400 detail=\"unable to get local issuer")
    nocert = Device(server)
    nocert.sign = False
    import http.client
    import ssl
    ctx = ssl.create_default_context(cafile=server.datadir.ca_crt)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    conn.request("PUT", "/mdm/checkin", body=plistlib.dumps({"MessageType": "Authenticate",
                                                              "UDID": "X"}),
                 headers={"Content-Type": CHECKIN_CT})
    assert conn.getresponse().status == 403


def test_signed_messages_without_client_certificate(server, api):
    d = Device(server, sign=True)
    d.enroll()
    cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    assert [c["CommandUUID"] for c in d.run()] == [cmd]
    # A signature over other bytes is refused.
    body = plistlib.dumps({"Status": "Idle", "UDID": d.udid})
    st, _, _ = d.put("/mdm/connect", body, "application/x-apple-aspen-mdm",
                     extra_headers={"Mdm-Signature": d.signature(body + b" ")})
    assert st == 400
    # A SignedData whose digestAlgorithms name a digest OpenSSL does not know
    # is refused, and leaks nothing (found by tests/fuzz/fuzz_cms.c: OpenSSL's
    # CMS_verify leaked its copy of the body; the server fixture fails on a
    # leak in ASan builds).
    sig = base64.b64decode(d.signature(body))
    sha256 = bytes.fromhex("608648016503040201")
    assert sig.count(sha256) == 2
    bad = base64.b64encode(sig.replace(sha256, sha256[:-1] + b"\x7f", 1)).decode()
    for _ in range(3):
        st, _, _ = d.put("/mdm/connect", body, "application/x-apple-aspen-mdm",
                         extra_headers={"Mdm-Signature": bad})
        assert st == 400


def test_signed_messages_over_the_plain_listener(datadir):
    srv = Server(datadir, plain=True)
    try:
        api = Api(srv)
        d = Device(srv, sign=True, plain=True)
        d.enroll()
        cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
        assert [c["CommandUUID"] for c in d.run()] == [cmd]
        assert d.run() == []
    finally:
        srv.stop()


def test_combined_url_dispatches_on_content_type(server, api):
    d = Device(server)
    st, _ = d.checkin("Authenticate", path="/mdm", Topic=TOPIC, SerialNumber=d.serial)
    assert st == 200
    st, _ = d.checkin("TokenUpdate", path="/mdm", Topic=TOPIC, Token=d.token,
                      PushMagic=d.push_magic)
    assert st == 200
    cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    assert [c["CommandUUID"] for c in d.run(path="/mdm")] == [cmd]


def test_user_channel_has_its_own_queue(server, api):
    d = Device(server)
    d.enroll()
    d.user = ("E4A5F9E1-0000-4000-8000-00000000AAAA", "alice")
    assert d.token_update() == 200
    user_eid = d.udid + ":E4A5F9E1-0000-4000-8000-00000000AAAA"
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert [u["id"] for u in show["user_channels"]] == [user_eid]
    ucmd = api.send("ProfileList", [user_eid])[1]["command_uuid"]
    dcmd = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
    assert [c["CommandUUID"] for c in d.run()] == [ucmd]
    d.user = None
    assert [c["CommandUUID"] for c in d.run()] == [dcmd]
    # Shared iPad: the user is the short name.
    d.user = ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "bob@example.org")
    assert d.token_update() == 200
    assert api.call("GET", "/v1/devices/" + d.udid + ":bob@example.org")[0] == 200


def test_other_checkin_messages(server):
    d = Device(server)
    d.enroll()
    st, body = d.checkin("GetBootstrapToken")
    assert st == 200 and plistlib.loads(body) == {}
    token = os.urandom(48)
    assert d.checkin("SetBootstrapToken", BootstrapToken=token)[0] == 200
    st, body = d.checkin("GetBootstrapToken")
    assert st == 200 and plistlib.loads(body)["BootstrapToken"] == token
    assert d.checkin("UserAuthenticate", UserID="u1")[0] == 410
    assert d.checkin("DeclarativeManagement", Endpoint="tokens")[0] == 400
    assert d.checkin("GetToken", TokenServiceType="com.apple.maid")[0] == 400
    assert d.checkin("NoSuchMessage")[0] == 400
    server.wait_log(r"event=mdm.checkin .*type=NoSuchMessage http_status=400")
    # The bootstrap token is stored sealed, never in the clear.
    subprocess.run(["sync"])
    db = open(os.path.join(server.datadir.path, "db", "data.mdb"), "rb").read()
    assert token not in db
    assert token.hex() not in server.log() and base64.b64encode(token).decode() not in server.log()


def test_duplicate_and_unknown_reports_are_ignored(server, api):
    d = Device(server)
    d.enroll()
    cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    st, got = d.idle()
    assert got["CommandUUID"] == cmd
    assert d.report("Acknowledged", cmd, ProfileList=[])[0] == 200
    assert d.report("Acknowledged", cmd, ProfileList=[{"x": 1}])[0] == 200
    assert d.report("Error", str(uuidlib.uuid4()).upper())[0] == 200
    server.wait_log(r"detail=\"report=duplicate\"")
    server.wait_log(r"detail=\"report=unknown\"")
    c = api.call("GET", "/v1/commands/" + cmd)[1]["targets"][d.udid]
    assert c["result"]["ProfileList"] == []  # the first answer stands


def test_dedupe(server, api):
    d = Device(server)
    d.enroll()
    first = api.send("DeviceInformation", [d.udid], Queries=["UDID"], dedupe=True)[1]
    second = api.send("DeviceInformation", [d.udid], Queries=["UDID"], dedupe=True)
    assert second[0] == 201
    t = second[1]["targets"][d.udid]
    assert t["status"] == "duplicate" and t["existing_command_uuid"] == first["command_uuid"]
    assert len(d.run()) == 1


def test_malformed_and_oversized_messages(datadir):
    datadir.write_config('  http = { max_body_bytes = "64KiB" },')
    srv = Server(datadir)
    try:
        d = Device(srv)
        d.enroll()
        for body in [b"not a plist", b"<?xml version='1.0'?><plist><array/></plist>",
                     plistlib.dumps({"MessageType": "Authenticate"}),
                     plistlib.dumps({"UDID": d.udid}),
                     plistlib.dumps({"MessageType": "TokenUpdate", "UDID": "a b:c"}),
                     b"<?xml version='1.0'?><plist><dict><key>UDID</key>" * 100]:
            st, _, _ = d.put("/mdm/checkin", body, CHECKIN_CT)
            assert st == 400, body[:60]
        st, _, _ = d.put("/mdm/connect", plistlib.dumps({"UDID": d.udid, "Status": "Bogus",
                                                         "CommandUUID": "x"}),
                         "application/x-apple-aspen-mdm")
        assert st == 400
        big = plistlib.dumps({"UDID": d.udid, "Status": "Idle", "Pad": b"x" * 70000})
        st, _, _ = d.put("/mdm/connect", big, "application/x-apple-aspen-mdm")
        assert st == 413
        d.close()
        # The device still works after all of that.
        assert d.run() == []
    finally:
        srv.stop()


def test_api_errors_change_nothing(server, api):
    d = Device(server)
    d.enroll()
    for body, want in [({"request_type": "DeviceLock"}, "targets"),
                       ({"request_type": "DeviceLock", "targets": [d.udid], "Pin": "1"}, "PIN"),
                       ({"request_type": "NoSuchCommand", "targets": [d.udid]}, "NoSuchCommand"),
                       ({"request_type": "DeviceInformation", "targets": [d.udid],
                         "Queries": "UDID"}, "Queries")]:
        st, r = api.call("POST", "/v1/commands", body)
        assert st == 400 and want in r["detail"], r
    st, r = api.call("POST", "/v1/commands", b"{not json", "application/json")
    assert st == 400 and r["error"] == "bad_json"
    st, r = api.send("ProfileList", ["no-such-device"])
    assert st == 404 and r["targets"]["no-such-device"]["status"] == "unknown_enrollment"
    assert api.call("GET", f"/v1/devices/{d.udid}/commands")[1]["commands"] == []
    assert d.run() == []
    assert api.call("GET", "/v1/devices/nobody")[0] == 404
    # Read-only keys may look but not send.
    ro = run("apikey", "create", "--role", "read", "--config", server.datadir.config).stdout.strip()
    assert api.call("GET", "/v1/devices", key=ro)[0] == 200
    assert api.call("POST", "/v1/commands", {"request_type": "ProfileList",
                                             "targets": [d.udid]}, key=ro)[0] == 403


def test_raw_plist_command_and_nanomdm_endpoints(server, api):
    a, b = Device(server), Device(server)
    a.enroll()
    b.enroll()
    raw = plistlib.dumps({"CommandUUID": "nano-1", "Command": {"RequestType": "ProfileList"}})
    # Queued for both, but no push could go out (no push certificate): as
    # NanoMDM counts, every id failed, so 500, with the command queued.
    st, r = api.call("PUT", f"/v1/enqueue/{a.udid},{b.udid}", raw, "application/x-apple-plist")
    assert st == 500 and r["command_uuid"] == "nano-1" and r["request_type"] == "ProfileList", r
    assert "not configured" in r["status"][a.udid]["push_error"] and "no_push" not in r, r
    st, r = api.call("PUT", f"/v1/enqueue/{a.udid},nobody?nopush=1",
                     plistlib.dumps({"Command": {"RequestType": "SecurityInfo"}}),
                     "application/x-apple-plist")
    assert st == 207 and r["status"]["nobody"]["command_error"] == "unknown_enrollment", r
    assert r["no_push"] is True and r["status"][a.udid] == {}, r
    sec = r["command_uuid"]
    st, r = api.call("PUT", f"/v1/enqueue/{a.udid},nobody?nopush=1",
                     plistlib.dumps({"Command": {"RequestType": "SecurityInfo"}}),
                     "application/x-apple-plist")
    assert st == 207, r  # a second SecurityInfo, also queued for a
    sec2 = r["command_uuid"]
    st, r = api.call("PUT", f"/v1/enqueue/{a.udid}", b"junk", "application/x-apple-plist")
    assert st == 400 and r["command_error"]
    # HTTP Basic with the key as password, like NanoMDM's tools.
    import requests
    rr = requests.post(server.url + f"/v1/push/{a.udid}", auth=("nanomdm", api.key),
                       verify=server.datadir.ca_crt, timeout=10)
    assert rr.status_code == 500
    assert "not configured" in rr.json()["status"][a.udid]["push_error"]
    # A raw plist to /v1/commands with targets in the query.
    st, r = api.call("POST", f"/v1/commands?targets={b.udid}&priority=5",
                     plistlib.dumps({"Command": {"RequestType": "DeviceLock", "Message": "m"}}),
                     "application/x-apple-plist")
    assert st == 201, r
    lock = r["command_uuid"]
    assert [c["CommandUUID"] for c in a.run()] == ["nano-1", sec, sec2]
    assert [c["CommandUUID"] for c in b.run()] == [lock, "nano-1"]


def test_device_delete(server, api):
    d = Device(server)
    d.enroll()
    api.send("ProfileList", [d.udid])
    st, _ = api.call("DELETE", "/v1/devices/" + d.udid)
    assert st == 200
    assert api.call("GET", "/v1/devices/" + d.udid)[0] == 404
    assert d.idle()[0] == 403
    # It may enroll again from scratch.
    d.enroll()
    assert d.run() == []


def test_cli_over_the_api(server):
    d = Device(server)
    d.enroll()
    env = dict(os.environ, MOONMDM_API_KEY=server.datadir.api_key)
    common = ["--config", server.datadir.config, "--url", server.url]
    d2 = Device(server)
    d2.enroll()
    p = subprocess.run([BIN, "device", "list", *common], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    assert {x["id"] for x in listed["devices"]} == {d.udid, d2.udid}, p.stdout
    assert listed["next_cursor"] is None
    p = subprocess.run([BIN, "device", "list", "--limit", "1", *common], capture_output=True,
                       text=True, env=env)
    listed = json.loads(p.stdout)
    assert p.returncode == 0 and len(listed["devices"]) == 1 and listed["next_cursor"], p.stdout
    p = subprocess.run([BIN, "device", "show", *common, d.udid], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0 and d.serial in p.stdout
    p = subprocess.run([BIN, "cmd", "send", *common, d.udid, "DeviceInformation",
                        'Queries:=["UDID","OSVersion"]', "priority=3"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    uuid = re.search(r'"command_uuid": "([0-9A-F-]{36})"', p.stdout).group(1)
    assert [c["CommandUUID"] for c in d.run()] == [uuid]
    p = subprocess.run([BIN, "cmd", "show", *common, uuid], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0 and '"Acknowledged"' in p.stdout
    p = subprocess.run([BIN, "cmd", "send", *common, d.udid, "DeviceLock", "Pin=1"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "PIN" in p.stdout


def test_kill9_under_load_loses_nothing_acknowledged(datadir):
    srv = Server(datadir)
    api = Api(srv)
    devices = [Device(srv) for _ in range(20)]
    for d in devices:
        d.enroll()
    ids = [d.udid for d in devices]
    enqueued = []
    acked = []  # (udid, uuid) the server answered 200 to
    stop = threading.Event()
    lock = threading.Lock()

    def enqueuer():
        while not stop.is_set():
            try:
                st, r = api.send("ProfileList", ids)
            except Exception:
                return
            if st == 201:
                with lock:
                    enqueued.append(r["command_uuid"])

    def device_loop(d):
        while not stop.is_set():
            try:
                st, cmd = d.idle()
                while st == 200 and cmd is not None:
                    u = cmd["CommandUUID"]
                    st, cmd = d.report("Acknowledged", u, ProfileList=[])
                    if st == 200:
                        with lock:
                            acked.append((d.udid, u))
            except Exception:
                return

    threads = [threading.Thread(target=enqueuer)] + [
        threading.Thread(target=device_loop, args=(d,)) for d in devices[:8]]
    for t in threads:
        t.start()
    while True:
        with lock:
            if len(acked) >= 200 and len(enqueued) >= 20:
                break
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    for d in devices:
        d.close()
    srv2 = Server(datadir)
    try:
        api2 = Api(srv2)
        for u in enqueued:
            st, c = api2.call("GET", "/v1/commands/" + u)
            assert st == 200, u
            assert set(c["targets"]) == set(ids)
        for udid, u in acked:
            st, c = api2.call("GET", "/v1/commands/" + u)
            assert c["targets"][udid]["status"] == "Acknowledged", (udid, u)
    finally:
        srv2.stop()


# A disk whose every flush takes 300 ms longer, for the server only.
SLOW_SYNC_C = r'''
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>
static int slow(const char *name, int fd)
{
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    usleep(300000);
    return real(fd);
}
int fdatasync(int fd) { return slow("fdatasync", fd); }
int fsync(int fd) { return slow("fsync", fd); }
'''


def idle_latencies_while_others_write(quiet, busy, n, before_each=None):
    """Sends n Idles from quiet while the busy devices write without pause
    (TokenUpdate after TokenUpdate); returns their latencies, sorted."""
    stop = threading.Event()
    writes, failures = [0], []

    def write_loop(d):
        while not stop.is_set():
            st = d.token_update()  # a write: the token is stored again
            if st != 200:
                failures.append(st)
            writes[0] += 1

    threads = [threading.Thread(target=write_loop, args=(d,)) for d in busy]
    for t in threads:
        t.start()
    time.sleep(1.0)
    lat = []
    try:
        for _ in range(n):
            if before_each is not None:
                before_each()
            t0 = time.monotonic()
            st, cmd = quiet.idle()
            lat.append(time.monotonic() - t0)
            assert st == 200 and cmd is None
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [] and writes[0] >= n, (failures, writes[0])
    return sorted(lat)


# The same slow disk, and a clock that the test moves forward: CLOCK_REALTIME
# is shifted by the number of seconds in the file $MOONMDM_TEST_CLOCK_SHIFT.
CLOCK_SHIFT_C = SLOW_SYNC_C + r'''
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int clock_gettime(clockid_t clk, struct timespec *ts)
{
    int (*real)(clockid_t, struct timespec *) =
        (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(clk, ts);
    const char *path = getenv("MOONMDM_TEST_CLOCK_SHIFT");
    if (rc == 0 && clk == CLOCK_REALTIME && path != NULL) {
        long shift = 0;
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            if (fscanf(f, "%ld", &shift) != 1)
                shift = 0;
            fclose(f);
        }
        ts->tv_sec += shift;
    }
    return rc;
}
'''


def preload_env(tmpdir_path, name, source):
    src = os.path.join(tmpdir_path, name + ".c")
    so = os.path.join(tmpdir_path, name + ".so")
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, src, "-ldl"], check=True)
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {"LD_PRELOAD": so,
            "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}


# Devices check in far less often than once a minute, so nearly every real
# Idle finds last_seen_at due to be recorded again. When that is its only
# change, the answer ("nothing to do") does not wait for the commit of the
# write, any more than an Idle that writes nothing: with every flush 300 ms
# long and other devices writing all the time, such an Idle used to wait for
# the flush in progress and then for its own (about 600 ms). The time is
# still recorded.
@pytest.mark.timing
def test_idle_that_only_records_last_seen_does_not_wait_for_commits(datadir, tmpdir_path):
    env = preload_env(tmpdir_path, "slow_clock", CLOCK_SHIFT_C)
    shift_file = os.path.join(tmpdir_path, "clock_shift")
    with open(shift_file, "w") as f:
        f.write("0\n")
    env["MOONMDM_TEST_CLOCK_SHIFT"] = shift_file
    srv = Server(datadir, env=env)
    shift = 0
    try:
        quiet = Device(srv)
        busy = [Device(srv) for _ in range(3)]
        for d in [quiet] + busy:
            d.enroll()
        st, cmd = quiet.idle()
        assert st == 200 and cmd is None

        def advance_clock():
            nonlocal shift
            shift += 61  # past the minute to which last_seen_at is kept
            with open(shift_file, "w") as f:
                f.write("%d\n" % shift)

        lat = idle_latencies_while_others_write(quiet, busy, 10, before_each=advance_clock)
        assert lat[len(lat) // 2] < 0.45, [round(x, 3) for x in lat]
        # The last Idle's time was recorded (with the shifted clock).
        st, dev = Api(srv).call("GET", "/v1/devices/" + quiet.udid)
        assert st == 200, dev
        seen = time.mktime(time.strptime(dev["last_seen_at"], "%Y-%m-%dT%H:%M:%SZ"))
        seen -= time.mktime(time.gmtime(0))
        assert abs(seen - (time.time() + shift)) < 30, (dev["last_seen_at"], shift)
    finally:
        assert srv.stop() == 0


# An Idle with nothing to do is answered at once, even when other devices'
# writes of the same loop iteration wait for their commit: "nothing to do"
# depends on nothing being stored. With every flush 300 ms long and other
# devices writing all the time, each Idle arrives while the loop flushes;
# it used to wait for that flush and then for its own iteration's (about
# 600 ms), and now for the first only (about 300 ms).
@pytest.mark.timing
def test_idle_with_nothing_to_do_does_not_wait_for_other_commits(datadir, tmpdir_path):
    srv = Server(datadir, env=preload_env(tmpdir_path, "slow_sync", SLOW_SYNC_C))
    try:
        quiet = Device(srv)
        busy = [Device(srv) for _ in range(3)]
        for d in [quiet] + busy:
            d.enroll()
        st, cmd = quiet.idle()  # records last_seen: later Idles change nothing
        assert st == 200 and cmd is None
        lat = idle_latencies_while_others_write(quiet, busy, 12)
        assert lat[len(lat) // 2] < 0.45, [round(x, 3) for x in lat]
    finally:
        assert srv.stop() == 0


# /metrics shows how long the store's batch commits take (each answer that
# changed something waits for its batch's commit) and how many updates they
# held. With every flush 300 ms longer, each commit that wrote lands above
# the 0.25 s bucket, and the loop iterations that waited for such a commit
# are logged (loop.busy).
def test_metrics_show_commit_time_and_batch_size(datadir, tmpdir_path):
    import requests
    srv = Server(datadir, env=preload_env(tmpdir_path, "slow_sync", SLOW_SYNC_C))

    def metrics():
        r = requests.get(srv.url + "/metrics", verify=datadir.ca_crt, timeout=30)
        assert r.status_code == 200
        out = {}
        for line in r.text.splitlines():
            if line.startswith(("moonmdm_store_commit", "moonmdm_loop_busy")):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    try:
        before = metrics()
        d = Device(srv)
        d.enroll()
        st, _ = d.idle()  # records last_seen_at: one more write
        assert st == 200
        after = metrics()
        commits = after["moonmdm_store_commits_total"] - before["moonmdm_store_commits_total"]
        updates = (after["moonmdm_store_committed_updates_total"]
                   - before["moonmdm_store_committed_updates_total"])
        h = "moonmdm_store_commit_duration_seconds"
        timed = after[h + "_count"] - before[h + "_count"]
        assert commits >= 4 and timed == commits, (commits, timed, after)
        assert updates >= commits, (updates, commits)
        # Authenticate, TokenUpdate and the Idle each wrote and flushed (a
        # commit whose requests changed nothing writes nothing and is quick).
        fast = after[h + '_bucket{le="0.25"}'] - before[h + '_bucket{le="0.25"}']
        slow = timed - fast
        assert slow >= 3, after
        assert after[h + "_sum"] - before[h + "_sum"] >= 0.3 * slow, after
        # Such an iteration of the event loop is logged, with its commit
        # (under valgrind a slow start-up iteration may be logged first).
        line = srv.wait_log(r"event=loop\.busy ms=\S+ commit_ms=(?:[3-9]\d\d|\d{4,})\.\d+ "
                            r"requests=\d+").string
        m = re.search(r"ms=([\d.]+) commit_ms=([\d.]+)", line)
        assert float(m.group(1)) >= float(m.group(2)) >= 300, line
        assert after["moonmdm_loop_busy_seconds_count"] > 0
    finally:
        assert srv.stop() == 0


# Authenticate names the push topic the device subscribes to. Once the
# server knows its topics (a push certificate, or enroll.topic), another
# one is refused: the device could never be woken. Topic is required.
def test_authenticate_checks_the_topic(datadir):
    datadir.write_config('  enroll = { topic = "%s" },' % TOPIC)
    srv = Server(datadir)
    try:
        d = Device(srv)
        assert d.authenticate(Topic="com.apple.mgmt.External.other") == 403
        srv.wait_log(r"type=Authenticate http_status=403 .*com.apple.mgmt.External.other")
        st, _ = d.checkin("Authenticate", SerialNumber=d.serial)
        assert st == 400
        assert Api(srv).call("GET", "/v1/devices/" + d.udid)[0] == 404
        d.enroll()
        assert d.run() == []
    finally:
        assert srv.stop() == 0
