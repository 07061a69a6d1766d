"""Large MDM messages: bodies of 64 KiB or more (an InstalledApplicationList
of thousands of apps) are parsed in the thread pool, policy hooks read them
key by key, and GET /v1/commands/{uuid} converts large results back to JSON
in the pool: the loop goes on serving everyone else meanwhile."""
import json
import os
import plistlib
import re
import subprocess
import time

import pytest
import requests

from conftest import BIN, SLOWDOWN, WRAPPER, Server, http_request, read_response
from device import CONNECT_CT, Api, Device, IdlePinger

POOL_METRIC = "moonmdm_mdm_parsed_in_pool_total"


def apps(n):
    return [{"Identifier": f"com.example.app{i}", "Name": f"App {i}", "Version": f"1.{i}",
             "ShortVersion": "1.0", "BundleSize": 1000 + i, "DynamicSize": i,
             "IsValidated": True} for i in range(n)]


def parsed_in_pool(srv):
    r = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=30)
    m = re.search(r"^" + POOL_METRIC + r" (\d+)$", r.text, re.M)
    assert m, r.text[:2000]
    return int(m.group(1))


def enrolled(srv):
    d = Device(srv)
    d.enroll()
    d.run()  # a first session (a policy may queue commands at enrollment)
    return d


def report_body(d, status, uuid, **keys):
    msg = {"Status": status, "UDID": d.udid, "CommandUUID": uuid}
    msg.update(keys)
    return plistlib.dumps(msg)


def test_a_large_report_is_parsed_in_the_pool_and_recorded(server):
    api = Api(server)
    d = enrolled(server)
    before = parsed_in_pool(server)
    st, res = api.send("InstalledApplicationList", [d.udid])
    assert st == 201, res
    uuid = res["command_uuid"]
    st, info = api.send("DeviceInformation", [d.udid], Queries=["OSVersion"])
    assert st == 201, info
    st, cmd = d.idle()
    assert cmd["CommandUUID"] == uuid
    body = report_body(d, "Acknowledged", uuid, InstalledApplicationList=apps(2000))
    assert len(body) >= 64 * 1024
    st, _, resp = d.put("/mdm/connect", body, CONNECT_CT)
    # The answer is the next command, chosen after the report was recorded.
    assert st == 200
    assert plistlib.loads(resp)["CommandUUID"] == info["command_uuid"]
    assert parsed_in_pool(server) == before + 1
    st, c = api.call("GET", "/v1/commands/" + uuid)
    t = c["targets"][d.udid]
    assert t["status"] == "Acknowledged"
    got = t["result"]["InstalledApplicationList"]
    assert len(got) == 2000 and got[1999]["Identifier"] == "com.example.app1999"
    # Small bodies stay on the loop.
    d.run()
    assert parsed_in_pool(server) == before + 1


def test_a_large_xml_report_is_stored_as_a_binary_plist(server):
    """A large report sent as XML is kept as the binary plist of the same
    message, each dictionary key written once (2.9 MB for these 7.5 MB):
    three such reports grow the store by far less than their 22.6 MB of
    XML (by all of it before), and read back whole."""
    api = Api(server)
    d = enrolled(server)
    data = os.path.join(server.datadir.path, "db", "data.mdb")
    before = os.path.getsize(data)
    big = apps(20000)
    uuids = []
    for _ in range(3):
        uuids.append(api.send("InstalledApplicationList", [d.udid])[1]["command_uuid"])
        d.run(handler=lambda cmd: ("Acknowledged", {"InstalledApplicationList": big}))
    xml = len(report_body(d, "Acknowledged", uuids[0], InstalledApplicationList=big))
    grown = os.path.getsize(data) - before
    assert grown < 1.5 * xml, (grown, xml)
    for u in uuids:
        st, c = api.call("GET", f"/v1/commands/{u}")
        assert st == 200
        t = c["targets"][d.udid]
        assert t["status"] == "Acknowledged"
        assert t["result"]["InstalledApplicationList"] == big
        assert t["result"]["CommandUUID"] == u and t["result"]["UDID"] == d.udid


def test_a_dense_xml_report_past_the_binary_limit_is_stored_as_sent(datadir):
    """An XML report can hold more values within its size limit than a
    binary plist may expand to when read back (MDM_PLIST_MAX_NODES, 2^20):
    with a body limit of 16 MiB, 350,000 one-key dictionaries are 11 MB of
    XML, 1,050,010 values, and a binary form of 7 MB that would not load
    again. That report is stored as sent, and reads back whole."""
    if WRAPPER:
        pytest.skip("a million values take minutes under valgrind (the ASan run covers it)")
    datadir.write_config('http = { max_body_bytes = "16MiB" },')
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = enrolled(srv)
        uuid = api.send("InstalledApplicationList", [d.udid])[1]["command_uuid"]
        st, cmd = d.idle()
        assert cmd["CommandUUID"] == uuid
        n = 350000
        body = (f'<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict>'
                f"<key>Status</key><string>Acknowledged</string>"
                f"<key>UDID</key><string>{d.udid}</string>"
                f"<key>CommandUUID</key><string>{uuid}</string>"
                f"<key>Flags</key><array>" + "<dict><key>a</key><true/></dict>" * n +
                "</array></dict></plist>").encode()
        st, _, _ = d.put("/mdm/connect", body, CONNECT_CT)
        assert st == 200
        st, c = api.call("GET", f"/v1/commands/{uuid}")
        assert st == 200
        res = c["targets"][d.udid]["result"]
        assert res is not None and len(res["Flags"]) == n and res["Flags"][n - 1] == {"a": True}
    finally:
        assert srv.stop(timeout=120 if WRAPPER else 30) == 0, srv.log()[-3000:]


def test_a_large_bad_body_is_refused_and_changes_nothing(server):
    api = Api(server)
    d = enrolled(server)
    st, res = api.send("ProfileList", [d.udid])
    uuid = res["command_uuid"]
    assert d.idle()[1]["CommandUUID"] == uuid
    before = parsed_in_pool(server)
    good = report_body(d, "Acknowledged", uuid, InstalledApplicationList=apps(1000))
    bad = [good[:len(good) // 2],                                  # cut short
           b"<?xml version=\"1.0\"?><plist>" + b"<array>" * 40000,  # too deep
           plistlib.dumps([plistlib.loads(good)])]                # not a dictionary
    assert all(len(b) >= 64 * 1024 for b in bad)
    for body in bad:
        st, _, resp = d.put("/mdm/connect", body, CONNECT_CT)
        assert st == 400, (st, resp[:200])
    assert parsed_in_pool(server) == before + len(bad)
    # Nothing was recorded: the command still waits for its report.
    st, c = api.call("GET", "/v1/commands/" + uuid)
    assert c["targets"][d.udid]["status"] != "Acknowledged"
    st, _, resp = d.put("/mdm/connect", good, CONNECT_CT)
    assert st == 200
    assert api.call("GET", "/v1/commands/" + uuid)[1]["targets"][d.udid]["status"] == \
        "Acknowledged"


def test_a_request_pipelined_behind_a_large_report_sees_its_effects(server):
    """Two reports in one write: the second is handled only after the
    first (parsed in the pool) is, so its answer reflects the first."""
    api = Api(server)
    d = enrolled(server)
    a = api.send("InstalledApplicationList", [d.udid])[1]["command_uuid"]
    b = api.send("ProfileList", [d.udid])[1]["command_uuid"]
    assert d.idle()[1]["CommandUUID"] == a
    first = report_body(d, "Acknowledged", a, InstalledApplicationList=apps(2000))
    second = report_body(d, "Acknowledged", b, ProfileList=[])
    c, k = d._paths()
    with server.connect(c, k, timeout=60) as s:
        req = bytearray()
        for body in (first, second):
            req += (f"PUT /mdm/connect HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                    f"{CONNECT_CT}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        s.sendall(req)
        buf = bytearray()
        r1 = read_response(s, buf)
        r2 = read_response(s, buf)
    # In order: a recorded, so b comes next; then b recorded, nothing left.
    # Handled the other way round, the first answer would be empty and the
    # second would offer a again.
    assert r1.status == 200 and plistlib.loads(r1.body)["CommandUUID"] == b
    assert r2.status == 200 and r2.body == b""
    for u in (a, b):
        assert api.call("GET", "/v1/commands/" + u)[1]["targets"][d.udid]["status"] == \
            "Acknowledged"


def test_a_large_report_is_recorded_when_its_device_hangs_up(server):
    """The connection goes away while the pool parses its report: the
    report is still recorded (the request keeps the device's certificate)."""
    api = Api(server)
    d = enrolled(server)
    uuid = api.send("InstalledApplicationList", [d.udid])[1]["command_uuid"]
    assert d.idle()[1]["CommandUUID"] == uuid
    body = report_body(d, "Acknowledged", uuid, InstalledApplicationList=apps(20000))
    before = parsed_in_pool(server)
    c, k = d._paths()
    s = server.connect(c, k, timeout=60)
    http_request(s, "PUT", "/mdm/connect", {"Content-Type": CONNECT_CT}, body)
    deadline = time.monotonic() + 60
    while parsed_in_pool(server) == before and time.monotonic() < deadline:
        time.sleep(0.005)
    s.close()  # the parse (about 0.1 s) has begun: hang up
    status = None
    while time.monotonic() < deadline:
        status = api.call("GET", "/v1/commands/" + uuid)[1]["targets"][d.udid]["status"]
        if status == "Acknowledged":
            break
        time.sleep(0.1)
    assert status == "Acknowledged"
    assert len(api.call("GET", "/v1/commands/" + uuid)[1]["targets"][d.udid]["result"]
               ["InstalledApplicationList"]) == 20000
    # The same report again (the device did not see the answer) is
    # acknowledged and ignored.
    st, _, resp = d.put("/mdm/connect", body, CONNECT_CT)
    assert st == 200 and resp == b""


def test_a_large_signed_report_is_parsed_in_the_pool(datadir):
    srv = Server(datadir, plain=True)
    try:
        api = Api(srv)
        d = Device(srv, sign=True, plain=True)
        d.enroll()
        d.run()
        before = parsed_in_pool(srv)
        uuid = api.send("InstalledApplicationList", [d.udid])[1]["command_uuid"]
        assert d.idle()[1]["CommandUUID"] == uuid
        st, nxt = d.report("Acknowledged", uuid, InstalledApplicationList=apps(1500))
        assert st == 200 and nxt is None
        assert parsed_in_pool(srv) == before + 1
        assert api.call("GET", "/v1/commands/" + uuid)[1]["targets"][d.udid]["status"] == \
            "Acknowledged"
        # A signature over other bytes is refused before any parse.
        other = report_body(d, "Acknowledged", uuid, InstalledApplicationList=apps(1500))
        st, _, _ = d.put("/mdm/connect", other, CONNECT_CT,
                         extra_headers={"Mdm-Signature": d.signature(other + b" ")})
        assert st == 400
        assert parsed_in_pool(srv) == before + 1
    finally:
        assert srv.stop(timeout=120 if WRAPPER else 30) == 0, srv.log()[-3000:]


def test_a_command_s_large_results_are_shown_whole(server):
    """GET /v1/commands/{uuid} converts the reports of its targets to JSON
    in the thread pool when they are large: every target is there, with its
    report, or null for a target that has not answered."""
    api = Api(server)
    a, b, idle = enrolled(server), enrolled(server), enrolled(server)
    uuid = api.send("InstalledApplicationList", [a.udid, b.udid, idle.udid])[1]["command_uuid"]
    for d, n in ((a, 1500), (b, 700)):
        d.run(handler=lambda cmd, n=n: ("Acknowledged", {"InstalledApplicationList": apps(n)}))
    st, c = api.call("GET", "/v1/commands/" + uuid)
    assert st == 200, c
    assert c["request_type"] == "InstalledApplicationList"
    t = c["targets"]
    assert set(t) == {a.udid, b.udid, idle.udid}
    assert len(t[a.udid]["result"]["InstalledApplicationList"]) == 1500
    assert t[b.udid]["result"]["InstalledApplicationList"][699]["Identifier"] == \
        "com.example.app699"
    assert t[a.udid]["status"] == t[b.udid]["status"] == "Acknowledged"
    assert t[idle.udid]["result"] is None and t[idle.udid]["status"] == "Queued"


def test_a_command_s_targets_come_in_pages(server):
    """?limit pages through a command's targets (in enrollment id order,
    next_cursor to go on), and ?results=false leaves the reports out."""
    api = Api(server)
    devs = [enrolled(server) for _ in range(5)]
    ids = sorted(d.udid for d in devs)
    uuid = api.send("InstalledApplicationList", ids)[1]["command_uuid"]
    for d in devs[:3]:
        d.run(handler=lambda cmd: ("Acknowledged", {"InstalledApplicationList": apps(10)}))
    st, whole = api.call("GET", "/v1/commands/" + uuid)
    assert st == 200 and sorted(whole["targets"]) == ids and whole["next_cursor"] is None
    seen, cursor, pages = [], None, 0
    while True:
        q = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        st, page = api.call("GET", f"/v1/commands/{uuid}{q}")
        assert st == 200, page
        pages += 1
        assert 1 <= len(page["targets"]) <= 2
        for eid, t in page["targets"].items():
            assert t == whole["targets"][eid]
        seen += sorted(page["targets"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 5
    assert seen == ids and pages == 3
    st, bare = api.call("GET", f"/v1/commands/{uuid}?results=false&limit=0")
    assert st == 200 and sorted(bare["targets"]) == ids
    assert all("result" not in t for t in bare["targets"].values())
    assert sum(t["status"] == "Acknowledged" for t in bare["targets"].values()) == 3
    for q, err in (("?limit=-1", "bad_query"), ("?limit=two", "bad_query"),
                   ("?results=maybe", "bad_query"), ("?cursor=" + "x" * 300, "bad_request")):
        st, e = api.call("GET", f"/v1/commands/{uuid}{q}")
        assert st == 400 and e["error"] == err, (q, st, e)
    # A bad escape, sent as is (an HTTP library would escape the '%').
    with server.connect() as sock:
        http_request(sock, "GET", f"/v1/commands/{uuid}?cursor=%zz",
                     {"Authorization": "Bearer " + api.key})
        resp = read_response(sock)
        assert resp.status == 400 and b"bad_query" in resp.body, (resp.status, resp.body)


# What one answer of GET /v1/commands/{uuid} holds of reports at most
# (ANSWER_RESULTS_MAX in core/api/api_mdm.c).
ANSWER_RESULTS_MAX = 16 << 20


def test_an_answer_holds_at_most_16_mib_of_reports(server):
    """Without a limit, GET /v1/commands/{uuid} still ends its answer before
    its reports pass 16 MiB (with at least one target), and next_cursor
    leads to the rest: a command answered by thousands of devices with
    megabytes each cannot make one answer of gigabytes. `moonmdm cmd show`
    follows the cursors and prints every target."""
    api = Api(server)
    devs = [enrolled(server) for _ in range(3)]
    ids = sorted(d.udid for d in devs)
    uuid = api.send("InstalledApplicationList", ids)[1]["command_uuid"]
    # Binary plists are stored as sent, so the size each one counts for is
    # known here: 50,000 apps, about 6 MB, two to a page.
    n = 50000
    big = apps(n)
    size = None
    for d in devs:
        st, cmd = d.idle()
        assert st == 200 and cmd["CommandUUID"] == uuid
        body = plistlib.dumps({"Status": "Acknowledged", "UDID": d.udid, "CommandUUID": uuid,
                               "InstalledApplicationList": big}, fmt=plistlib.FMT_BINARY)
        size = size or len(body)
        st, _, _ = d.put("/mdm/connect", body, CONNECT_CT)
        assert st == 200
    per_page = max(1, ANSWER_RESULTS_MAX // size)
    assert per_page < 3, size  # the test needs a page to end early
    seen, cursor, sizes = [], None, []
    for _ in range(4):
        st, page = api.call("GET", f"/v1/commands/{uuid}" + (f"?cursor={cursor}" if cursor else ""))
        assert st == 200, page
        sizes.append(len(page["targets"]))
        for eid, t in page["targets"].items():
            assert t["status"] == "Acknowledged"
            assert len(t["result"]["InstalledApplicationList"]) == n
            assert t["result"]["InstalledApplicationList"][n - 1]["Identifier"] == \
                f"com.example.app{n - 1}"
        seen += sorted(page["targets"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert sizes[0] == per_page and sum(sizes) == 3, sizes
    # Without the reports, every target fits in one answer.
    st, bare = api.call("GET", f"/v1/commands/{uuid}?results=false")
    assert st == 200 and sorted(bare["targets"]) == ids and bare["next_cursor"] is None
    env = dict(os.environ, MOONMDM_API_KEY=server.datadir.api_key)
    p = subprocess.run([BIN, "cmd", "show", "--config", server.datadir.config, "--url",
                        server.url, uuid], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert sorted(shown["targets"]) == ids and shown["next_cursor"] is None
    assert all(len(t["result"]["InstalledApplicationList"]) == n
               for t in shown["targets"].values())
    assert shown["request_type"] == "InstalledApplicationList"


def slow_iterations(srv, le):
    """Event loop iterations that worked longer than le seconds (a bucket
    bound of moonmdm_loop_busy_seconds) since the server started."""
    r = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=30)
    count = re.search(r"^moonmdm_loop_busy_seconds_count (\d+)$", r.text, re.M)
    le_n = re.search(r'^moonmdm_loop_busy_seconds_bucket\{le="%s"\} (\d+)$' % le, r.text, re.M)
    assert count and le_n, r.text[:3000]
    return int(count.group(1)) - int(le_n.group(1))


@pytest.mark.timing
def test_a_large_report_does_not_stop_other_devices(server):
    """A 20,000-app report (7.5 MB of XML here) takes 100-200 ms to parse, and as
    long to convert back to JSON for the admin API: both happen in the
    pool, and the loop goes on serving another device's Idles."""
    api = Api(server)
    d = enrolled(server)
    e = enrolled(server)
    # The parse took 180-230 ms of one iteration on the loop (release
    # build); what remains there is the commit of the result, 20-45 ms.
    le = "0.1" if SLOWDOWN <= 1 else "0.5"
    before = slow_iterations(server, le)
    pinger = IdlePinger(e).start()
    big = apps(20000)
    try:
        for _ in range(3):
            api.send("InstalledApplicationList", [d.udid])

            def h(cmd):
                if cmd["Command"]["RequestType"] == "InstalledApplicationList":
                    return "Acknowledged", {"InstalledApplicationList": big}
                return d.answer(cmd)
            d.run(handler=h)
        # The admin reads the results back: 7.5 MB of XML to JSON each.
        st, hist = api.call("GET", f"/v1/devices/{d.udid}/commands")
        assert st == 200
        for cmd in hist["commands"]:
            if cmd["request_type"] == "InstalledApplicationList":
                st, c = api.call("GET", "/v1/commands/" + cmd["command_uuid"])
                assert st == 200
                assert len(c["targets"][d.udid]["result"]["InstalledApplicationList"]) == 20000
    finally:
        pinger.stop()
    assert pinger.errors == []
    assert pinger.latencies
    if WRAPPER:
        return  # under valgrind every iteration is slow: no bound holds
    assert slow_iterations(server, le) == before, sorted(pinger.latencies)[-5:]


# The message a hook receives is made key by key on first read: a connect
# hook that reads report.Status does not pay for a table of 20,000 apps.
# A key's value is whole once read, pairs() sees every key, and a table
# kept past its call raises when a key not read during the call is read.
VIEW_POLICY = r'''
local kept
return {
  result = function(device, result)
    if result.RequestType == "ProfileList" then
      kept = result              -- nothing else of it is read in this call
      return
    end
    if result.RequestType ~= "InstalledApplicationList" then return end
    local keys = {}
    for k in pairs(result) do keys[#keys + 1] = k end
    table.sort(keys)
    local ok, err = pcall(function() return kept.UDID end)
    local list = result.InstalledApplicationList
    return { facts = { view_keys = table.concat(keys, ","), view_apps = #list,
                       view_last = list[#list].Identifier, view_stale_ok = ok,
                       view_stale_err = tostring(err) } }
  end,
  connect = function(device, report)
    if report.Status ~= "Idle" then return end
  end,
}
'''


def test_hooks_read_a_large_report_key_by_key(datadir, tmpdir_path):
    pdir = os.path.join(tmpdir_path, "viewpolicy")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(VIEW_POLICY)
    # The budget is the default's 100x: under valgrind making 3,000 tables
    # takes longer than 50 ms, and this test is about what the hook sees.
    datadir.write_config('  policy = { dir = "%s", budget = "5s" },' % pdir)
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = enrolled(srv)
        api.send("ProfileList", [d.udid])
        api.send("InstalledApplicationList", [d.udid])
        big = apps(3000)

        def h(cmd):
            if cmd["Command"]["RequestType"] == "InstalledApplicationList":
                return "Acknowledged", {"InstalledApplicationList": big}
            return d.answer(cmd)
        got = d.run(handler=h)
        assert [c["Command"]["RequestType"] for c in got] == ["ProfileList",
                                                              "InstalledApplicationList"]
        facts = api.call("GET", "/v1/devices/" + d.udid)[1]["facts"]
        assert facts["view_keys"] == \
            "CommandUUID,InstalledApplicationList,RequestType,Status,UDID", facts
        assert facts["view_apps"] == 3000 and facts["view_last"] == "com.example.app2999"
        assert facts["view_stale_ok"] is False
        assert "read after the hook call that received the message returned" in \
            facts["view_stale_err"], facts["view_stale_err"]
    finally:
        assert srv.stop(timeout=120 if WRAPPER else 30) == 0, srv.log()[-3000:]
