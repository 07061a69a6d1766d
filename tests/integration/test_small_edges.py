"""Small edges: a profile command whose waiting record is damaged, the log
line of an unreadable queue entry, and NUL characters in the strings of
API bodies. Each failed on 7bd0260."""
import json
import os

from conftest import Server
from device import Api, Device
from test_db import mdb_items, mdb_put
from test_profile_edges import profile, put_profile, start, types, write_policy

QHDR = 44  # a queue entry's header: command UUID, expiry


def _store(datadir):
    return os.path.join(datadir.path, "db")


def _damage_waiting(datadir, command_uuid):
    """Replaces the waiting result kept in command_uuid's queue entry by
    bytes that do not decode; returns the entry's key."""
    store = _store(datadir)
    keys = [k for k, v in mdb_items(store, "queue") if v[:36] == command_uuid.encode()]
    assert len(keys) == 1, keys
    value = dict(mdb_items(store, "queue"))[keys[0]]
    mdb_put(store, "queue", [(keys[0], value[:QHDR] + b"\xff damaged")])
    return keys[0]


def _restart(datadir, dev):
    srv = Server(datadir)
    dev.close()
    dev.server = srv
    return srv, Api(srv)


def _profiles(api, udid):
    """Identifier -> state of the enrollment's profiles."""
    st, r = api.call("GET", "/v1/devices/" + udid)
    assert st == 200, r
    return {p["identifier"]: p["state"] for p in r["profiles"]}


# ---- a damaged record of a profile's command -------------------------------

PID = "com.example.small"


def _damage_and_reconcile(datadir, dev, first, request_type, profiles_after):
    """Damages the waiting record of command `first`, restarts, asks for a
    reconciliation: the device gets the command again under a new UUID."""
    _damage_waiting(datadir, first)
    srv, api = _restart(datadir, dev)
    try:
        st, _ = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202
        got = dev.run()
        assert types(got) == [request_type], types(got)
        assert got[0]["CommandUUID"] != first
        assert _profiles(api, dev.udid) == profiles_after
    finally:
        assert srv.stop() == 0


def test_damaged_pending_install_is_queued_again(tmpdir_path, datadir):
    """An InstallProfile left unanswered whose waiting record no longer
    decodes: a reconciliation queues the profile again and the device gets
    it, rather than waiting for ever for a command that cannot be sent."""
    srv, api, _ = start(tmpdir_path, datadir, [PID])
    dev = Device(srv)
    try:
        assert put_profile(api, PID, profile(PID))[0] == 201
        dev.enroll()
        st, cmd = dev.idle()
        assert st == 200 and cmd["Command"]["RequestType"] == "InstallProfile", cmd
        first = cmd["CommandUUID"]
    finally:
        assert srv.stop() == 0
    _damage_and_reconcile(datadir, dev, first, "InstallProfile", {PID: "installed"})


def test_damaged_pending_removal_is_queued_again(tmpdir_path, datadir):
    """The same for a RemoveProfile: a removal whose waiting record no
    longer decodes is queued again at the next reconciliation."""
    srv, api, pdir = start(tmpdir_path, datadir, [PID])
    dev = Device(srv)
    try:
        assert put_profile(api, PID, profile(PID))[0] == 201
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"]
        write_policy(pdir, [])
        assert api.call("POST", "/v1/policy/reload")[0] == 200
        st, cmd = dev.idle()
        assert st == 200 and cmd["Command"]["RequestType"] == "RemoveProfile", cmd
        first = cmd["CommandUUID"]
    finally:
        assert srv.stop() == 0
    _damage_and_reconcile(datadir, dev, first, "RemoveProfile", {})



# ---- the log line of an unreadable record -----------------------------------

def _unreadable_line(srv, uuid):
    m = srv.wait_log(r"event=queue\.entry_unreadable .*command=\"?%s\b.*" % uuid)
    return m.group(0)


def test_unreadable_queue_entry_is_named_by_its_position(tmpdir_path, datadir):
    """A NotNow for a command whose queue entry does not decode: the log
    names the entry's priority and sequence (the key of that entry)."""
    srv = Server(datadir)
    dev = Device(srv)
    try:
        dev.enroll()
        uuid = Api(srv).send("DeviceLock", [dev.udid], priority=7)[1]["command_uuid"]
    finally:
        assert srv.stop() == 0
    key = _damage_waiting(datadir, uuid)
    seq = int.from_bytes(key[-8:], "big")
    srv, _ = _restart(datadir, dev)
    try:
        assert dev.report("NotNow", uuid)[0] == 200
        line = _unreadable_line(srv, uuid)
        assert "record=queue priority=7 seq=%d " % seq in line, line
    finally:
        assert srv.stop() == 0


def test_unreadable_finished_result_is_named_as_such(tmpdir_path, datadir):
    """A report for a command whose finished result (results table) does
    not decode: the log says that record was the results table's, and gives
    no queue position (there is no queue entry)."""
    srv = Server(datadir)
    dev = Device(srv)
    try:
        dev.enroll()
        uuid = Api(srv).send("DeviceLock", [dev.udid])[1]["command_uuid"]
        assert [c["CommandUUID"] for c in dev.run()] == [uuid]
    finally:
        assert srv.stop() == 0
    store = _store(datadir)
    key = dev.udid.encode() + b"\0" + uuid.encode()
    assert key in dict(mdb_items(store, "results"))
    mdb_put(store, "results", [(key, b"\xff damaged")])
    srv, _ = _restart(datadir, dev)
    try:
        assert dev.report("Acknowledged", uuid)[0] == 200
        line = _unreadable_line(srv, uuid)
        assert " record=results detail=" in line, line
        assert "priority=" not in line and "seq=" not in line, line
    finally:
        assert srv.stop() == 0


# ---- NUL characters in the strings of API bodies ----------------------------

NUL = "\\u0000"  # as it stands in the JSON text


def _nul_cases(udid):
    """(method, path, JSON text, the field the answer must name)."""
    return [
        ("POST", "/v1/challenges", '{"user": "alice%sbob"}' % NUL, "user"),
        ("POST", "/v1/challenges", '{"udid": "%s%sX"}' % (udid, NUL), "udid"),
        ("POST", "/v1/challenges", '{"user": "alice", "note": "x%s"}' % NUL, "note"),
        ("POST", "/v1/commands",
         '{"request_type": "DeviceLock", "targets": ["%s%sX"]}' % (udid, NUL), "targets[0]"),
        ("POST", "/v1/commands",
         '{"request_type": "DeviceLock%s", "targets": ["%s"]}' % (NUL, udid), "request_type"),
        ("POST", "/v1/commands",
         '{"request_type": "DeviceLock", "targets": ["%s"], "Message": "hi%s"}' % (udid, NUL),
         "Message"),
        ("POST", "/v1/commands",
         '{"request_type": "Settings", "targets": ["%s"], "Settings": [{"Item": "x%s"}]}'
         % (udid, NUL), "Settings[0].Item"),
        ("PUT", "/v1/devices/%s/tags" % udid, '{"tags": ["new", "a%sb"]}' % NUL, "tags[1]"),
        ("POST", "/v1/policy/eval", '{"device": "%s%s", "hook": "groups"}' % (udid, NUL),
         "device"),
        ("POST", "/v1/certs/01/revoke", '{"reason": 1, "comment": "x%s"}' % NUL, "comment"),
    ]


def test_nul_in_a_json_string_is_refused_naming_the_field(datadir):
    """A string holding \\u0000 in the JSON body of any route: 400 naming
    the field, and nothing stored (a C string would be taken cut at the
    NUL)."""
    srv = Server(datadir)
    dev = Device(srv)
    try:
        api = Api(srv)
        dev.enroll()
        assert api.call("PUT", "/v1/devices/%s/tags" % dev.udid, {"tags": ["keep"]})[0] == 200
        for method, path, text, field in _nul_cases(dev.udid):
            st, r = api.call(method, path, text.encode())
            assert st == 400, (path, text, st, r)
            assert r["error"] == "bad_request", (path, text, r)
            assert r["detail"].startswith(field + ": ") and "NUL" in r["detail"], (text, r)
        st, r = api.call("GET", "/v1/devices/" + dev.udid)
        assert st == 200 and r["tags"] == ["keep"], r
        assert r["queue_length"] == 0, r
    finally:
        assert srv.stop() == 0
    store = _store(datadir)
    assert mdb_items(store, "challenges") == []
    assert mdb_items(store, "commands") == []
