"""Edges of the admin API and the check-in logs: repeated targets, CommandUUID
and ttl limits, ids the store cannot hold, NUL in paths, NanoMDM's answer
shapes, and values from devices and admins in the log."""
import json
import plistlib

import pytest

from conftest import Server, http_request, read_response, run
from device import Api, Device


@pytest.fixture
def api(server):
    return Api(server)


def test_duplicate_targets_queue_the_command_twice(server, api):
    d = Device(server)
    d.enroll()
    st, r = api.send("ProfileList", [d.udid, d.udid])
    assert st == 201, r
    cmd = r["command_uuid"]
    # Observed: the command is offered again after every Acknowledged,
    # forever (the device's session never ends).
    got = [c["CommandUUID"] for c in d.run(limit=5)]
    assert got == [cmd]
    # Nothing is left behind for the device.
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["queue_length"] == 0
    assert d.run() == []


def test_nano_enqueue_duplicate_ids_queue_the_command_twice(server, api):
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid},{d.udid}?nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 200, r
    got = [c["CommandUUID"] for c in d.run(limit=5)]
    assert got == [r["command_uuid"]]
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["queue_length"] == 0


def test_json_command_uuid_too_long_is_a_client_error(server, api):
    d = Device(server)
    d.enroll()
    st, r = api.send("ProfileList", [d.udid], command_uuid="X" * 40, nopush=True)
    assert st == 400, (st, r)


def test_raw_command_uuid_too_long_is_a_client_error(server, api):
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"CommandUUID": "Y" * 40, "Command": {"RequestType": "ProfileList"}})
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid}?nopush=1", raw, "application/x-apple-plist")
    assert st == 400, (st, r)
    st, r = api.call("POST", f"/v1/commands?targets={d.udid}", raw, "application/x-apple-plist")
    assert st == 400, (st, r)


def test_json_command_uuid_cannot_forge_log_lines(server, api):
    d = Device(server)
    d.enroll()
    api.send("ProfileList", [d.udid], nopush=True,
             command_uuid="a\nts=x level=ERROR event=forged")
    # The raw-plist path refuses such a CommandUUID; the JSON path must too,
    # and no log line may start with text chosen by the client.
    assert not any(l.startswith("ts=x level=ERROR event=forged")
                   for l in server.log().splitlines()), server.log()[-800:]


def test_long_ids_are_client_errors_not_500(server, api):
    d = Device(server)
    d.enroll()
    long = "A" * 600
    bad = []
    for method, path in [("GET", "/v1/devices?cursor=" + long),
                         ("GET", "/v1/devices/" + long),
                         ("GET", f"/v1/devices/{long}/commands"),
                         ("GET", "/v1/commands/" + long),
                         ("DELETE", "/v1/devices/" + long),
                         ("DELETE", f"/v1/devices/{d.udid}/commands/{'B' * 40}"),
                         ("DELETE", f"/v1/devices/{long}/commands/x")]:
        st, r = api.call(method, path)
        if st >= 500:
            bad.append((method, path[:45], st, r))
    assert bad == [], "\n".join(map(str, bad))


def test_push_with_no_ids(server, api):
    st, r = api.call("POST", "/v1/push/,")
    assert st == 400, (st, r)


def test_nul_in_path_id_does_not_address_another_device(server, api):
    d = Device(server)
    d.enroll()
    # "<udid>%00:x" names a user channel (deleting one is refused with 400)
    # or nothing; it must not delete the device <udid>.
    st, r = api.call("DELETE", f"/v1/devices/{d.udid}%00:x")
    assert st == 400 and r["error"] == "bad_path", (st, r)
    assert api.call("GET", "/v1/devices/" + d.udid)[0] == 200
    # A bad escape in a path parameter: 400 (it once reached the handler
    # without its parameter and crashed the server).
    # Sent as they are (an HTTP library would escape the '%').
    with server.connect() as sock:
        buf = bytearray()
        for method, path in [("GET", "/v1/devices/%zz"), ("DELETE", "/v1/devices/%4"),
                             ("GET", "/v1/commands/%g0"), ("PUT", "/v1/enqueue/a,%zz")]:
            http_request(sock, method, path, {"Authorization": "Bearer " + api.key,
                                              "Content-Length": "0"})
            resp = read_response(sock, buf)
            assert resp.status == 400 and b"bad_path" in resp.body, (method, path, resp.status)
    assert api.call("GET", "/v1/devices/" + d.udid)[0] == 200


def test_nano_enqueue_result_shape(server, api):
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid},nobody?nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 207, r
    # NanoMDM's EnrollmentResult: push_error, push_result, command_error.
    assert "command_error" in r["status"]["nobody"], r
    assert r.get("no_push") is True, r


def test_nano_enqueue_counts_push_errors_like_nanomdm(server, api):
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    # No APNs certificate: every push fails.
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid}", raw, "application/x-apple-plist")
    assert "push_error" in r["status"][d.udid], r
    # NanoMDM: an id with a push_error counts as an error; all errors -> 500.
    assert st == 500, (st, r)


def test_ttl_is_bounded_and_a_long_one_works(server, api):
    d = Device(server)
    d.enroll()
    # Past ten years: refused (it used to overflow into an expiry in the past);
    # zero in any spelling too (as a string it used to mean "never").
    for ttl in [9223372036854775, "9000000000000000000ms", 315360001, "3651d", 0, "0", "0s"]:
        st, r = api.send("ProfileList", [d.udid], ttl=ttl, nopush=True)
        assert st == 400 and "ttl" in r["detail"], (ttl, st, r)
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    for ttl in ["3651d", "0"]:
        st, r = api.call("POST", f"/v1/commands?targets={d.udid}&ttl={ttl}", raw,
                         "application/x-apple-plist")
        assert st == 400 and "ttl" in r["detail"], (ttl, r)
    for q in ["priority=256", "priority=-1", "priority=x"]:
        st, r = api.call("POST", f"/v1/commands?targets={d.udid}&{q}", raw,
                         "application/x-apple-plist")
        assert st == 400 and "priority" in r["detail"], (q, r)
    # Ten years is allowed, and the command waits as it should.
    uuids = []
    for ttl in [315360000, "3650d"]:
        st, r = api.send("ProfileList", [d.udid], ttl=ttl, nopush=True)
        assert st == 201, r
        uuids.append(r["command_uuid"])
    assert [c["CommandUUID"] for c in d.run()] == uuids


def test_message_type_cannot_forge_log_lines(server):
    d = Device(server)
    d.enroll()
    d.checkin("X\nts=x level=ERROR event=forged_by_device")
    d.report("Y\nts=x level=ERROR event=forged_by_report", "abc")
    lines = server.log().splitlines()
    assert not any(l.startswith("ts=x level=ERROR") for l in lines), \
        [l for l in lines if "forged" in l]


def test_raw_command_takes_nopush(server, api):
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    st, r = api.call("POST", f"/v1/commands?targets={d.udid}", raw, "application/x-apple-plist")
    assert st == 201 and "push" in r, r  # pushed (or told why not)
    st, r = api.call("POST", f"/v1/commands?targets={d.udid}&nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 201 and "push" not in r, r


def test_query_parameters_repeated_or_malformed_are_400(server, api):
    d = Device(server)
    d.enroll()
    other = Device(server)
    other.enroll()
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    # A repeated parameter is ambiguous: refused, named, nothing queued.
    for path in [f"/v1/commands?targets={d.udid}&targets={other.udid}&nopush=1",
                 f"/v1/commands?targets={d.udid}&nopush=1&nopush=0",
                 f"/v1/enqueue/{d.udid}?nopush=1&nopush=1"]:
        method = "PUT" if path.startswith("/v1/enqueue") else "POST"
        st, r = api.call(method, path, raw, "application/x-apple-plist")
        assert st == 400 and r["error"] == "bad_query", (path, st, r)
        name = "targets" if "targets=" + other.udid in path else "nopush"
        assert f'"{name}"' in r["detail"], r
    for path in ["/v1/devices?limit=1&limit=2", "/v1/devices?enrolled=1&enrolled=0",
                 "/v1/decisions?limit=1&limit=2", "/v1/certs?limit=1&limit=1"]:
        st, r = api.call("GET", path)
        assert st == 400 and r["error"] == "bad_query", (path, st, r)
        assert '"limit"' in r["detail"] or '"enrolled"' in r["detail"], r
    # Values that are not booleans (or numbers) are refused, not ignored.
    # A sign, a space or an overflowing number too (strtol took them).
    for q in ["enrolled=yes", "enabled=maybe", "limit=abc", "limit=+5", "limit=%205",
              "limit=99999999999999999999"]:
        st, r = api.call("GET", "/v1/devices?" + q)
        assert st == 400 and r["error"] == "bad_query", (q, st, r)
        assert q.split("=")[0] in r["detail"], r
    # A bad escape in the cursor (sent as is: an HTTP library would escape
    # the '%') used to restart the listing at page 1.
    with server.connect() as sock:
        buf = bytearray()
        for q in ["cursor=%zz", "cursor=%4"]:
            http_request(sock, "GET", "/v1/devices?" + q, {"Authorization": "Bearer " + api.key})
            resp = read_response(sock, buf)
            assert resp.status == 400 and b"bad_query" in resp.body and b"cursor" in resp.body, \
                (q, resp.status, resp.body)
    for q in ["dedupe=maybe", "nopush=xyz", "priority=abc", "priority=-5", "priority=999"]:
        st, r = api.call("POST", f"/v1/commands?targets={d.udid}&{q}", raw,
                         "application/x-apple-plist")
        assert st == 400 and q.split("=")[0] in r["detail"], (q, st, r)
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid}?nopush=xyz", raw, "application/x-apple-plist")
    assert st == 400, (st, r)
    # Nothing was queued by any of these.
    for dev in (d, other):
        assert api.call("GET", "/v1/devices/" + dev.udid)[1]["queue_length"] == 0
    # The accepted spellings still work.
    for q in ["enrolled=1", "enrolled=true", "enrolled", "enabled=0", "enabled=false", "limit=5"]:
        assert api.call("GET", "/v1/devices?" + q)[0] == 200, q


def test_cli_exit_code_tells_of_partial_failure(datadir, tmpdir_path):
    from test_apns import Env, upload
    env = Env(tmpdir_path)
    try:
        datadir.write_config(env.config())
        srv = Server(datadir)
        try:
            api = Api(srv)
            upload(api, env.cert, env.key)
            d = Device(srv)
            d.enroll()
            cli = ["--config", datadir.config, "--url", srv.url, "--api-key", api.key]
            p = run("push", *cli, d.udid, check=False)
            assert p.returncode == 0 and '"push_result"' in p.stdout, (p.returncode, p.stdout)
            # One id pushed, one unknown: 207, and the exit code says so.
            p = run("push", *cli, d.udid, "nobody", check=False)
            assert '"push_error"' in p.stdout and p.returncode == 3, (p.returncode, p.stdout)
            assert "207" in p.stderr, p.stderr
            # The same for a command queued to some of its targets.
            p = run("cmd", "send", *cli, d.udid + ",nobody", "ProfileList", "nopush=true",
                    check=False)
            assert '"unknown_enrollment"' in p.stdout and p.returncode == 3, \
                (p.returncode, p.stdout, p.stderr)
            # Every push failed: 500, exit 1.
            p = run("push", *cli, "nobody", check=False)
            assert p.returncode == 1, (p.returncode, p.stdout)
        finally:
            assert srv.stop() == 0
    finally:
        env.standin.stop()


def test_nano_enqueue_conflict_has_nanomdm_shape(server, api):
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"CommandUUID": "dup-1", "Command": {"RequestType": "ProfileList"}})
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid}?nopush=1", raw, "application/x-apple-plist")
    assert st == 200, (st, r)
    st, r = api.call("PUT", f"/v1/enqueue/{d.udid}?nopush=1", raw, "application/x-apple-plist")
    assert st == 409, (st, r)
    assert "CommandUUID" in r.get("command_error", ""), r
    assert "error" not in r and r.get("command_uuid") == "dup-1", r
    # The admin route keeps its own shape.
    st, r = api.call("POST", f"/v1/commands?targets={d.udid}&nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 409 and r["error"] == "conflict", (st, r)
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["queue_length"] == 1


def test_nano_routes_reach_an_id_with_a_comma(server, api):
    from urllib.parse import quote
    d = Device(server)
    d.enroll()
    # A Shared iPad user channel whose short name has a comma.
    d.user = ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "smith,john")
    assert d.token_update() == 200
    d.user = None
    uid = d.udid + ":smith,john"
    esc = quote(uid, safe="")
    assert "%2C" in esc
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    st, r = api.call("PUT", f"/v1/enqueue/{esc},{d.udid}?nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 200 and set(r["status"]) == {uid, d.udid}, (st, r)
    st, show = api.call("GET", "/v1/devices/" + esc)
    assert st == 200 and show["queue_length"] == 1, (st, show)
    st, r = api.call("POST", f"/v1/push/{esc}")
    assert set(r["status"]) == {uid}, (st, r)
    # The raw form of POST /v1/commands splits its targets the same way.
    st, r = api.call("POST", f"/v1/commands?targets={esc},{d.udid}&nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 201 and set(r["targets"]) == {uid, d.udid}, (st, r)
    # The CLI escapes each id, so it reaches the same channel.
    p = run("push", "--config", server.datadir.config, "--url", server.url,
            "--api-key", api.key, uid, check=False)
    assert f'"{uid}"' in p.stdout, p.stdout
    # `cmd send` takes a list: the comma inside an id is written %2C.
    p = run("cmd", "send", "--config", server.datadir.config, "--url", server.url,
            "--api-key", api.key, f"{d.udid}:smith%2Cjohn,{d.udid}", "ProfileList", "nopush=true",
            check=False)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert set(json.loads(p.stdout)["targets"]) == {uid, d.udid}, p.stdout
    st, show = api.call("GET", "/v1/devices/" + esc)
    assert st == 200 and show["queue_length"] == 3, (st, show)
    p = run("cmd", "send", "--config", server.datadir.config, "--url", server.url,
            "--api-key", api.key, f"{d.udid}%zz", "ProfileList", check=False)
    assert p.returncode == 2 and "bad %-escape" in p.stderr, (p.returncode, p.stderr)


def test_device_list_last_page_is_not_empty(server, api):
    from device import TOPIC
    devs = sorted((Device(server) for _ in range(3)), key=lambda d: d.udid)
    for d in devs:
        d.enroll()
    # The last one in id order is checked out: the enrolled filter drops it.
    assert devs[-1].checkin("CheckOut", Topic=TOPIC)[0] == 200
    st, r = api.call("GET", "/v1/devices?enrolled=true&limit=2")
    assert st == 200 and [x["id"] for x in r["devices"]] == [d.udid for d in devs[:2]], r
    assert r["next_cursor"] is None, r
    # Without the filter the third is on the next page.
    st, r = api.call("GET", "/v1/devices?limit=2")
    assert r["next_cursor"] == devs[-1].udid, r
    st, r = api.call("GET", "/v1/devices?limit=2&cursor=" + r["next_cursor"])
    assert [x["id"] for x in r["devices"]] == [devs[-1].udid] and r["next_cursor"] is None, r


def test_cli_cmd_send_types_values_by_the_schema(server, api):
    import json as _json
    d = Device(server)
    d.enroll()
    cli = ["--config", server.datadir.config, "--url", server.url, "--api-key", api.key]
    # PIN is a string in DeviceLock's schema: digits stay a string.
    p = run("cmd", "send", *cli, d.udid, "DeviceLock", "PIN=123456", "Message=42",
            "nopush=true", check=False)
    assert p.returncode == 0, (p.stdout, p.stderr)
    uuid = _json.loads(p.stdout)["command_uuid"]
    st, r = api.call("GET", "/v1/commands/" + uuid)
    assert r["command"]["PIN"] == "123456" and r["command"]["Message"] == "42", r
    # The explicit JSON form still works; options keep their types.
    p = run("cmd", "send", *cli, d.udid, "DeviceLock", "PIN:=\"654321\"", "priority=7",
            "nopush=true", check=False)
    assert p.returncode == 0, (p.stdout, p.stderr)
    st, r = api.call("GET", "/v1/commands/" + _json.loads(p.stdout)["command_uuid"])
    assert r["command"]["PIN"] == "654321" and r["priority"] == 7, r


def test_target_id_not_utf8_is_shown_in_the_answer(server, api):
    """An id that is not UTF-8 cannot be a JSON key: it vanished from the
    answer's targets (jansson refuses the key without a word)."""
    d = Device(server)
    d.enroll()
    raw = plistlib.dumps({"Command": {"RequestType": "ProfileList"}})
    st, r = api.call("POST", f"/v1/commands?targets=%FF,{d.udid}&nopush=1", raw,
                     "application/x-apple-plist")
    assert st == 207, (st, r)
    assert r["targets"][d.udid]["status"] == "queued", r
    assert r["targets"]["%FF"]["status"] == "unknown_enrollment", r
