"""`moonmdm db backup|restore|check` against real stores."""
import glob
import os
import plistlib
import re
import shutil
import struct
import subprocess
import time
import uuid as uuidlib

from conftest import SOURCE_DIR, Server, run
from device import Api, Device
from test_faults import Load, assert_nothing_lost, device_commands, enrolled_devices, repoint

# The store schema version this build writes.
with open(os.path.join(SOURCE_DIR, "core", "store", "store.h")) as _f:
    SCHEMA = int(re.search(r"#define MDM_STORE_SCHEMA_VERSION (\d+)", _f.read()).group(1))


def db(datadir, *args, check=True):
    return run("db", *args, "--config", datadir.config, check=check)


def entries(check_stdout):
    """Table -> entries from `db check` output."""
    out = {}
    block = check_stdout.split("entries:\n", 1)[1]
    for line in block.splitlines():
        m = re.match(r"^  (\w+)\s+(\d+)$", line)
        if not m:
            break
        out[m.group(1)] = int(m.group(2))
    return out


def t_escape(b):
    """Bytes in mdb_load -T's plain-text form."""
    out = []
    for c in b:
        # A backslash as a hex escape too: mdb_load reads "\\" followed by a
        # hex digit wrongly.
        if 0x20 <= c < 0x7f and c != 0x5c:
            out.append(chr(c))
        else:
            out.append("\\%02x" % c)
    return "".join(out)


def mdb_put(store_dir, table, pairs):
    """Writes raw (key, value) pairs into a table with mdb_load -T."""
    text = "".join(t_escape(k) + "\n" + t_escape(v) + "\n" for k, v in pairs)
    p = subprocess.run(["mdb_load", "-T", "-s", table, store_dir], input=text.encode(),
                       capture_output=True)
    assert p.returncode == 0, p.stderr


def mdb_items(store_dir, table):
    """A table's (key, value) pairs, read with mdb_dump in hex (its -p form
    leaves a backslash unescaped, which makes it ambiguous)."""
    p = subprocess.run(["mdb_dump", "-s", table, store_dir], capture_output=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().split("HEADER=END\n", 1)[1].splitlines()
    data = [bytes.fromhex(ln[1:]) for ln in lines if ln.startswith(" ")]
    return list(zip(data[0::2], data[1::2]))


def test_backup_while_serving_under_load(datadir, tmpdir_path, capsys):
    srv = Server(datadir)
    devices = enrolled_devices(srv, 10)
    ids = [d.udid for d in devices]
    load = Load(srv, devices, enqueuers=2, readers=1, tolerate_errors=False).start()
    backups = []
    try:
        load.wait_progress(1.0, min_enqueued=10, min_acked=50)
        for i in range(2):
            with load.lock:
                before_enq, before_ack = list(load.enqueued), list(load.acked)
            bk = os.path.join(tmpdir_path, f"backup{i}")
            t0 = time.monotonic()
            p = db(datadir, "backup", bk)
            backups.append((bk, before_enq, before_ack, time.monotonic() - t0, p.stdout))
            # The live store checks out too: db check reads one snapshot.
            chk = db(datadir, "check", check=False)
            assert chk.returncode == 0, chk.stdout + chk.stderr
            load.wait_progress(0.5, 0, 0)
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    after_enq, after_ack = list(load.enqueued), list(load.acked)
    for bk, _, _, _, out in backups:
        # What it did, with sizes; the copy was opened and checked.
        assert re.search(r"^source: .* \(\d+ entries, .* used, map .*\)$", out, re.M), out
        assert re.search(r"^backup: .*/data\.mdb, [\d.]+ \w+ \(\d+ bytes\), compacted from .* "
                         rf"in [\d.]+ s while process {srv.proc.pid} had the store open$", out,
                         re.M), out
        assert re.search(rf"^verify: the backup opens; schema version {SCHEMA}, \d+ entries, "
                         r"consistency ok$", out, re.M), out
        assert os.listdir(bk) == ["data.mdb"], os.listdir(bk)
        chk = run("db", "check", bk)
        assert "consistency: ok" in chk.stdout, chk.stdout
    # The second backup, restored, holds everything acknowledged before it
    # began, and the server works on it.
    bk, before_enq, before_ack, secs, out = backups[1]
    assert srv.stop() == 0
    p = db(datadir, "restore", bk, "--force")
    assert "restored:" in p.stdout, p.stdout
    srv = Server(datadir)
    try:
        api = Api(srv)
        repoint(devices, srv)
        assert_nothing_lost(api, ids, before_enq, before_ack)
        have = device_commands(api, ids[0])
        later = [u for u in after_enq if u not in have]
        with capsys.disabled():
            size = re.search(r"^backup: .*$", out, re.M).group(0)
            print(f"\nbackup under load: {len(before_enq)} commands and {len(before_ack)} results "
                  f"acknowledged before it began, all in it; {len(later)} of the "
                  f"{len(after_enq)} enqueued in all came after it\n  {size}")
        # The restored server takes new work.
        st, r = api.send("ProfileList", ids[:1])
        assert st == 201, r
        assert r["command_uuid"] in [c["CommandUUID"] for c in devices[0].run()]
    finally:
        assert srv.stop() == 0
    db(datadir, "check")


def test_restore_brings_back_the_state(datadir, tmpdir_path):
    srv = Server(datadir)
    api = Api(srv)
    a, b = enrolled_devices(srv, 2)
    kept = api.send("ProfileList", [a.udid])[1]["command_uuid"]
    assert [c["CommandUUID"] for c in a.run()] == [kept]
    waiting = api.send("SecurityInfo", [a.udid, b.udid])[1]["command_uuid"]
    bk = os.path.join(tmpdir_path, "bk")
    db(datadir, "backup", bk)
    # Changes after the backup: a new command, a device deleted.
    later = api.send("DeviceInformation", [a.udid], Queries=["UDID"])[1]["command_uuid"]
    assert api.call("DELETE", "/v1/devices/" + b.udid)[0] == 200
    assert srv.stop() == 0
    store = os.path.join(datadir.path, "db")
    before = open(os.path.join(store, "data.mdb"), "rb").read()

    # An existing store is only replaced with --force.
    p = db(datadir, "restore", bk, check=False)
    assert p.returncode == 1 and "--force" in p.stderr, (p.stdout, p.stderr)
    assert open(os.path.join(store, "data.mdb"), "rb").read() == before
    assert glob.glob(store + ".*") == []

    p = db(datadir, "restore", bk, "--force")
    assert re.search(rf"^check: schema version {SCHEMA} .*consistency ok$", p.stdout, re.M), p.stdout
    aside = re.search(r"^previous store: (.*)$", p.stdout, re.M).group(1)
    assert re.fullmatch(re.escape(store) + r"\.before-restore-\d{8}T\d{6}Z", aside), aside
    assert open(os.path.join(aside, "data.mdb"), "rb").read() == before
    assert sorted(os.listdir(store)) == ["data.mdb"]
    assert glob.glob(store + ".restore-*") == []

    srv = Server(datadir)
    try:
        api = Api(srv)
        repoint([a, b], srv)
        # The API key, both devices, the acknowledged result, the waiting
        # command are back; what came after the backup is not.
        assert api.call("GET", "/v1/devices/" + b.udid)[0] == 200
        c = api.call("GET", "/v1/commands/" + kept)[1]
        assert c["targets"][a.udid]["status"] == "Acknowledged", c
        assert api.call("GET", "/v1/commands/" + later)[0] == 404
        assert [x["CommandUUID"] for x in b.run()] == [waiting]
        assert [x["CommandUUID"] for x in a.run()] == [waiting]
    finally:
        assert srv.stop() == 0
    db(datadir, "check")

    # Disaster recovery: with no store at all, no --force is needed.
    shutil.rmtree(store)
    p = db(datadir, "restore", bk)
    assert "previous store" not in p.stdout
    srv = Server(datadir)
    try:
        assert Api(srv).call("GET", "/v1/devices/" + a.udid)[0] == 200
    finally:
        assert srv.stop() == 0


def test_restore_refuses_while_serving(datadir, tmpdir_path):
    srv = Server(datadir)
    try:
        api = Api(srv)
        (d,) = enrolled_devices(srv, 1)
        bk = os.path.join(tmpdir_path, "bk")
        db(datadir, "backup", bk)
        p = db(datadir, "restore", bk, "--force", check=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert f"process {srv.proc.pid} (" in p.stderr and "has the store" in p.stderr, p.stderr
        assert "stop the server" in p.stderr
        store = os.path.join(datadir.path, "db")
        assert glob.glob(store + ".*") == [], glob.glob(store + ".*")
        # The server did not notice.
        st, r = api.send("ProfileList", [d.udid])
        assert st == 201, r
        assert [c["CommandUUID"] for c in d.run()] == [r["command_uuid"]]
        # db check works beside the server.
        db(datadir, "check")
    finally:
        assert srv.stop() == 0


def test_restore_checks_the_schema_version(datadir, tmpdir_path):
    bk = os.path.join(tmpdir_path, "bk")
    db(datadir, "backup", bk)
    mdb_put(bk, "meta", [(b"schema_version", struct.pack(">Q", 99))])
    p = db(datadir, "restore", bk, "--force", check=False)
    assert p.returncode == 1
    assert "schema version 99" in p.stderr and "newer" in p.stderr, p.stderr
    store = os.path.join(datadir.path, "db")
    assert glob.glob(store + ".*") == []
    p = run("db", "check", bk, check=False)
    assert p.returncode == 1 and "schema version 99" in p.stderr, p.stderr
    # A store without any schema version is not a moonmdm store.
    empty = os.path.join(tmpdir_path, "empty")
    os.mkdir(empty)
    mdb_put(empty, "meta", [(b"other", b"x")])
    p = db(datadir, "restore", empty, "--force", check=False)
    assert p.returncode == 1 and "no schema version" in p.stderr, p.stderr


def test_check_detects_inconsistencies(datadir, tmpdir_path):
    srv = Server(datadir)
    try:
        api = Api(srv)
        d, e = enrolled_devices(srv, 2)
        done = api.send("ProfileList", [d.udid, e.udid])[1]["command_uuid"]
        d.run()
        waiting = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
        broken = api.send("SecurityInfo", [e.udid])[1]["command_uuid"]
        bk = os.path.join(tmpdir_path, "bk")
        db(datadir, "backup", bk)
    finally:
        assert srv.stop() == 0
    good = run("db", "check", bk).stdout
    n = entries(good)
    # Waiting results are kept in their queue entries.
    assert n["queue"] == 3 and n["results"] == 1 and n["certauth"] == 4, good
    assert "checked: 3 queue entries, 4 results (3 waiting), 4 cmdt and 1 rexp index entries, " \
           "2 certificate bindings" in good, good
    queue = dict(mdb_items(bk, "queue"))
    index = dict(mdb_items(bk, "index"))
    e_done = [k for k, v in queue.items() if v.startswith(done.encode())]
    e_broken = [k for k, v in queue.items() if v.startswith(broken.encode())]
    assert len(e_done) == 1 and len(e_broken) == 1, queue
    e_done_pos = e_done[0][len(e.udid) + 1:]
    assert index[b"cmdt\0" + done.encode() + b"\0" + e.udid.encode()] == e_done_pos

    ghost = str(uuidlib.uuid4()).upper()
    orphan = str(uuidlib.uuid4()).upper()
    # A queue entry with no result nor command, beyond the sequence counter.
    mdb_put(bk, "queue", [(d.udid.encode() + b"\0\xff" + struct.pack(">Q", 10 ** 6),
                           ghost.encode() + b"\0" * 8)])
    # A waiting result with no queue entry, no index entry, no command.
    rec = plistlib.dumps({"status": "Queued", "priority": 0, "seq": 4242,
                          "request_type": "ProfileList"}, fmt=plistlib.FMT_BINARY)
    mdb_put(bk, "results", [(e.udid.encode() + b"\0" + orphan.encode(), rec)])
    # A target index entry for an enrollment that has no such result.
    mdb_put(bk, "index", [(b"cmdt\0" + done.encode() + b"\0NOBODY", b"")])
    # A certificate bound one way only, and an undecodable result.
    mdb_put(bk, "certauth", [(b"h:" + bytes(range(32)), b"ghost-enrollment")])
    # (Schema 3 kept waiting results under "\x01" + the usual key; this one
    # is in its queue entry as well.)
    mdb_put(bk, "results", [(b"\x01" + d.udid.encode() + b"\0" + waiting.encode(), b"garbage")])
    # ... and a valid copy under the usual key (schema 2's place) too: one
    # problem, reported once.
    d_waiting = [v for v in queue.values() if v.startswith(waiting.encode())]
    assert len(d_waiting) == 1
    mdb_put(bk, "results", [(d.udid.encode() + b"\0" + waiting.encode(), d_waiting[0][44:])])
    # A queue entry whose waiting result is not a result record.
    mdb_put(bk, "queue", [(e_broken[0], queue[e_broken[0]][:44] + b"garbage")])
    # A target index entry pointing at another queue position.
    mdb_put(bk, "index", [(b"cmdt\0" + done.encode() + b"\0" + e.udid.encode(),
                           b"\xff" + struct.pack(">Q", 999999))])
    # A finished result also kept among the waiting ones.
    fin = plistlib.dumps({"status": "Acknowledged", "request_type": "ProfileList",
                          "completed_at": 5}, fmt=plistlib.FMT_BINARY)
    mdb_put(bk, "results", [(b"\x01" + d.udid.encode() + b"\0" + done.encode(), fin)])

    p = run("db", "check", bk, check=False)
    assert p.returncode == 1, p.stdout
    out = p.stdout
    want = [
        rf"queue {d.udid} #1000000: command {ghost} has no result record",
        rf"queue {d.udid} #1000000: command {ghost} has no command record",
        rf"queue {d.udid} #1000000: sequence number above meta queue_seq \(\d+\)",
        rf"result {e.udid}/{orphan}: status Queued but no queue entry \(priority 0, sequence "
        r"4242\)",
        rf"result {e.udid}/{orphan}: missing from the command's target index \(cmdt\)",
        rf"result {e.udid}/{orphan}: waiting, but the command record is missing",
        rf"index cmdt {done} -> NOBODY: the command's target has no result record",
        r"certauth: certificate 000102[0-9a-f]+ is bound to ghost-enrollment, but that "
        r"enrollment has no binding",
        rf"result {d.udid}/{waiting}: the record is not a valid result record",
        rf"queue {d.udid} #\d+: the result of command {waiting} is kept twice \(in the queue "
        r"entry and among the results\)",
        rf"queue {e.udid} #\d+: command {broken}: the waiting result in the entry is not a "
        r"valid result record",
        rf"queue {e.udid} #\d+: the target index \(cmdt\) of command {done} does not point at "
        r"this entry",
        rf"index cmdt {done} -> {e.udid}: the command's target has no result record",
        rf"result {d.udid}/{done}: finished \(Acknowledged\) but kept among the waiting results",
        rf"result {d.udid}/{done}: kept twice \(waiting and finished\)",
        rf"result {d.udid}/{done}: finished \(Acknowledged\) but missing from the retention "
        r"index \(rexp\)",
        # The index finds the copy among the waiting ones first.
        rf"index rexp {d.udid}/{done}: completed at \d+ in the index, 5 in the result",
    ]
    for w in want:
        assert re.search(w, out), f"missing problem {w!r} in:\n{out}"
    m = re.search(r"^consistency: (\d+) problems$", out, re.M)
    assert m and int(m.group(1)) == len(want), out
    assert f"{len(want)} problems in {bk}" in p.stderr
    # Restore refuses a backup that fails the check, unless forced.
    store = os.path.join(datadir.path, "db")
    shutil.rmtree(store)
    p = db(datadir, "restore", bk, check=False)
    assert p.returncode == 1 and "17 consistency problems" in p.stderr, p.stderr
    assert not os.path.exists(store) and glob.glob(store + "*") == []
    db(datadir, "restore", bk, "--force")
    p = db(datadir, "check", check=False)
    assert p.returncode == 1 and "17 problems" in p.stderr


# A store of schema 3: at start the server moves its waiting results into
# their queue entries (schema 4), and the devices get their commands as
# before. Schema 3 kept them under "\x01" + the usual key, schema 2 under
# the usual key; both are made here from what the server wrote.
def test_start_moves_waiting_results_of_earlier_layouts(datadir):
    srv = Server(datadir)
    try:
        api = Api(srv)
        d, e = enrolled_devices(srv, 2)
        u1 = api.send("ProfileList", [d.udid])[1]["command_uuid"]
        u2 = api.send("SecurityInfo", [d.udid, e.udid])[1]["command_uuid"]
    finally:
        assert srv.stop() == 0
    store = os.path.join(datadir.path, "db")
    queue = mdb_items(store, "queue")
    assert len(queue) == 3 and all(len(v) > 44 for _, v in queue), queue
    qputs, rputs, iputs = [], [], []
    for k, v in queue:
        eid, uuid = k[:k.index(b"\0")], v[:36].rstrip(b"\0")
        qputs.append((k, v[:44]))
        mark = b"\x01" if eid == d.udid.encode() else b""
        rputs.append((mark + eid + b"\0" + uuid, v[44:]))
        iputs.append((b"cmdt\0" + uuid + b"\0" + eid, b""))
    mdb_put(store, "queue", qputs)
    mdb_put(store, "results", rputs)
    mdb_put(store, "index", iputs)
    mdb_put(store, "meta", [(b"schema_version", struct.pack(">Q", 3)),
                            (b"queue_layout", struct.pack(">Q", 3))])
    assert "consistency: ok" in run("db", "check", store).stdout

    srv = Server(datadir)
    try:
        srv.wait_log(rf"event=store.schema_upgraded from=3 to={SCHEMA}")
        srv.wait_log(r"event=mdm.queue_upgraded queue_entries=3 moved=3 ")
        queue = mdb_items(store, "queue")
        assert len(queue) == 3 and all(len(v) > 44 for _, v in queue), queue
        assert not any(k.startswith(b"\x01") for k, _ in mdb_items(store, "results"))
        api = Api(srv)
        st, r = api.call("GET", f"/v1/commands/{u2}")
        assert st == 200 and sorted(t["status"] for t in r["targets"].values()) == ["Queued", "Queued"], r
        repoint([d, e], srv)
        got = [c["CommandUUID"] for c in d.run()]
        assert got == [u1, u2], got
        assert [c["CommandUUID"] for c in e.run()] == [u2]
        st, r = api.call("GET", f"/v1/commands/{u2}")
        assert st == 200 and [t["status"] for t in r["targets"].values()] == ["Acknowledged"] * 2, r
    finally:
        assert srv.stop() == 0
    out = run("db", "check", store).stdout
    assert "consistency: ok" in out and "checked: 0 queue entries, 3 results (0 waiting)" in out, out
    # Later starts find the layout recorded and move nothing.
    srv = Server(datadir)
    try:
        api = Api(srv)
        assert api.call("GET", "/healthz")[0] == 200
        assert "mdm.queue_upgraded" not in srv.log()
    finally:
        assert srv.stop() == 0


def test_db_usage_errors(datadir):
    assert run("db", check=False).returncode == 2
    assert "usage: moonmdm db" in run("db", "--help").stdout
    assert run("db", "frobnicate", check=False).returncode == 2
    assert run("db", "backup", check=False).returncode == 2
    p = db(datadir, "backup", os.path.join(datadir.path, "db"), check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    p = run("db", "check", "/nonexistent/store", check=False)
    assert p.returncode == 1 and "does not exist" in p.stderr, p.stderr
