"""Fault injection: kill -9 under load (repeated), a full disk and a full LMDB
map (the soak run is in test_soak.py).

Every load here goes to 127.0.0.1 only, is bounded in time and count, and
stops by itself.
"""
import os
import random
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from conftest import BIN, Server, run
from device import Api, Device


# ---- load ---------------------------------------------------------------------

class Load:
    """Steady traffic against one server: each device runs sessions (Idle,
    then answers every command), enqueuers send commands to all devices
    through the API, readers poll read-only routes.

    `enqueued` holds the UUIDs the API answered 201 to, `acked` the
    (udid, uuid) reports answered 200: both are what the server promised
    to have stored. With tolerate_errors (a server about to be killed), a
    thread ends quietly at its first transport error; otherwise errors and
    unexpected statuses are collected in `errors`."""

    def __init__(self, srv, devices, enqueuers=1, readers=0, tolerate_errors=True,
                 request_type="ProfileList", idle_pause=0.02, enqueue_interval=0.0):
        self.srv = srv
        self.api = Api(srv)
        self.devices = devices
        self.ids = [d.udid for d in devices]
        self.nenq = enqueuers
        self.nread = readers
        self.tolerate = tolerate_errors
        self.request_type = request_type
        self.idle_pause = idle_pause
        self.enqueue_interval = enqueue_interval
        self.enqueued = []
        self.acked = []
        self.reads = 0
        self.sessions = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = []

    def _fail(self, what):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(what)

    def _guard(self, fn):
        def body():
            while not self.stop_ev.is_set():
                try:
                    fn()
                except Exception as e:  # a killed server ends the thread
                    if self.tolerate:
                        return
                    self._fail(repr(e))
                    time.sleep(0.05)
        return body

    def _device_round(self, d):
        st, cmd = d.idle()
        if st != 200:
            self._fail(f"idle {d.udid}: {st}")
            if self.tolerate:
                raise RuntimeError("idle failed")
            return
        got = 0
        while cmd is not None and not self.stop_ev.is_set():
            u = cmd["CommandUUID"]
            status, extra = d.answer(cmd)
            st, cmd = d.report(status, u, **extra)
            if st != 200:
                self._fail(f"report {d.udid} {u}: {st}")
                if self.tolerate:
                    raise RuntimeError("report failed")
                return
            got += 1
            with self.lock:
                self.acked.append((d.udid, u))
        with self.lock:
            self.sessions += 1
        if got == 0:
            time.sleep(self.idle_pause)

    def _enqueue_round(self):
        st, r = self.api.send(self.request_type, self.ids)
        if st == 201:
            with self.lock:
                self.enqueued.append(r["command_uuid"])
        else:
            self._fail(f"enqueue: {st} {r}")
        if self.enqueue_interval:
            # A fixed rate: wait for the next slot; a late round does not
            # make the next ones come faster.
            now = time.monotonic()
            self._next_enqueue = max(getattr(self, "_next_enqueue", now) + self.enqueue_interval,
                                     now)
            time.sleep(max(0.0, self._next_enqueue - now))

    def _read_round(self):
        for path in ("/v1/devices", "/v1/status"):
            st, _ = self.api.call("GET", path)
            if st != 200:
                self._fail(f"GET {path}: {st}")
        r = requests.get(self.srv.url + "/healthz", verify=self.srv.datadir.ca_crt, timeout=30)
        if r.status_code != 200:
            self._fail(f"healthz: {r.status_code}")
        with self.lock:
            self.reads += 3
        time.sleep(0.05)

    def start(self):
        fns = [self._guard(lambda d=d: self._device_round(d)) for d in self.devices]
        fns += [self._guard(self._enqueue_round) for _ in range(self.nenq)]
        fns += [self._guard(self._read_round) for _ in range(self.nread)]
        self.threads = [threading.Thread(target=f, daemon=True) for f in fns]
        for t in self.threads:
            t.start()
        return self

    def counts(self):
        with self.lock:
            return len(self.enqueued), len(self.acked)

    def wait_progress(self, min_seconds, min_enqueued, min_acked, timeout=60):
        """Runs at least min_seconds and until the counts are reached."""
        t0 = time.monotonic()
        while True:
            e, a = self.counts()
            el = time.monotonic() - t0
            if el >= min_seconds and e >= min_enqueued and a >= min_acked:
                return el
            if el > timeout:
                raise AssertionError(f"no progress in {timeout}s: enqueued={e} acked={a} "
                                     f"errors={self.errors[:5]}\n" + self.srv.log()[-3000:])
            time.sleep(0.02)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(60)
        for d in self.devices:
            d.close()


def enrolled_devices(srv, n):
    devices = [Device(srv) for _ in range(n)]
    for d in devices:
        d.enroll()
    return devices


def repoint(devices, srv):
    for d in devices:
        d.close()
        d.server = srv


def device_commands(api, udid):
    st, body = api.call("GET", f"/v1/devices/{udid}/commands")
    assert st == 200, (udid, st, body)
    return {c["command_uuid"]: c["status"] for c in body["commands"]}


def assert_nothing_lost(api, ids, enqueued, acked):
    """Every enqueued command is known for every target; every acknowledged
    report is recorded as Acknowledged."""
    acked_by = {}
    for udid, u in acked:
        acked_by.setdefault(udid, set()).add(u)
    for udid in ids:
        have = device_commands(api, udid)
        missing = [u for u in enqueued if u not in have]
        assert not missing, f"{udid}: {len(missing)} enqueued commands lost, e.g. {missing[:3]}"
        lost = [u for u in acked_by.get(udid, ()) if have.get(u) != "Acknowledged"]
        assert not lost, (f"{udid}: {len(lost)} acknowledged results lost or changed, e.g. "
                          f"{[(u, have.get(u)) for u in lost[:3]]}")


def db_check(datadir, *extra):
    p = run("db", "check", "--config", datadir.config, *extra, check=False)
    assert p.returncode == 0, f"db check failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def metric(srv, name):
    r = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=30)
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", r.text, re.M)
    assert m, f"no metric {name} in:\n{r.text[:3000]}"
    return float(m.group(1))


def asan_build():
    try:
        with open(BIN, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# ---- kill -9, repeated ------------------------------------------------------------

def test_kill9_repeated_under_load(datadir, capsys):
    rounds = int(os.environ.get("MOONMDM_KILL_ROUNDS", "20"))
    seed = int(os.environ.get("MOONMDM_FAULT_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    srv = Server(datadir)
    devices = enrolled_devices(srv, 10)
    ids = [d.udid for d in devices]
    all_enqueued, all_acked = [], []
    figures = []
    try:
        for rnd in range(rounds):
            load = Load(srv, devices, enqueuers=2).start()
            # ~1-2 s of load; the kill lands at a random point of it.
            ran = load.wait_progress(1.0 + rng.random(), min_enqueued=3, min_acked=10)
            srv.proc.kill()
            srv.proc.wait()
            load.stop()
            srv.kill()
            e, a = load.counts()
            all_enqueued += load.enqueued
            all_acked += load.acked
            # The store opens cleanly and its tables agree, before any
            # server has touched it again.
            t0 = time.monotonic()
            db_check(datadir)
            check_s = time.monotonic() - t0
            srv = Server(datadir)
            repoint(devices, srv)
            t0 = time.monotonic()
            assert_nothing_lost(Api(srv), ids, all_enqueued, all_acked)
            figures.append((rnd + 1, ran, e, a, check_s, time.monotonic() - t0))
    finally:
        with capsys.disabled():
            print(f"\nkill -9 rounds (seed {seed}): round, load s, enqueued, acked, "
                  "db check s, verify s")
            for f in figures:
                print("  %2d  %.2f  %4d  %5d  %.2f  %.2f" % f)
            print(f"  total: {len(all_enqueued)} enqueued commands x {len(ids)} devices, "
                  f"{len(all_acked)} acknowledged results, all present after each restart")
        rc = srv.stop()
    assert len(figures) == rounds
    assert rc == 0, srv.log()[-3000:]
    db_check(datadir)


# ---- disk full ----------------------------------------------------------------------

def _mount_tmpfs(path, size):
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} ({p.stderr.strip() or p.returncode}); "
                    "the disk-full test needs root (CI runs as root)")


def _umount(path):
    subprocess.run(["umount", path], capture_output=True)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], capture_output=True)


def _fill(api, ids, message_bytes, limit):
    """Enqueues DeviceLock commands with a large message until one is
    refused; returns (accepted uuids, the refusing (status, body, headers))."""
    import json as _json
    ok = []
    msg = "x" * message_bytes
    for i in range(limit):
        r = requests.post(api.server.url + "/v1/commands",
                          headers={"Authorization": "Bearer " + api.key,
                                   "Content-Type": "application/json"},
                          data=_json.dumps({"request_type": "DeviceLock", "targets": ids,
                                            "Message": f"{i} {msg}"}),
                          verify=api.server.datadir.ca_crt, timeout=60)
        if r.status_code == 201:
            ok.append(r.json()["command_uuid"])
            continue
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return ok, (r.status_code, body, r.headers)
    return ok, None


def _assert_reads_work(srv, api, some_uuid):
    assert requests.get(srv.url + "/healthz", verify=srv.datadir.ca_crt,
                        timeout=30).status_code == 200
    st, body = api.call("GET", "/v1/devices")
    assert st == 200 and len(body["devices"]) >= 1, (st, body)
    st, body = api.call("GET", "/v1/commands/" + some_uuid)
    assert st == 200, (st, body)
    assert api.call("GET", "/v1/status")[0] == 200


def test_disk_full_answers_503_keeps_reads_and_recovers(datadir, capsys):
    mnt = os.path.join(datadir.path, "smalldb")
    os.mkdir(mnt)
    _mount_tmpfs(mnt, "8m")
    srv = None
    try:
        shutil.copy(os.path.join(datadir.path, "db", "data.mdb"), mnt)
        # The map (64 MiB) is far larger than the file system (8 MiB): the
        # disk fills first.
        datadir.write_config('  store = { path = "smalldb", map_size = "64MiB" },')
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (2 << 20))
        srv = Server(datadir)
        api = Api(srv)
        devices = enrolled_devices(srv, 3)
        ids = [d.udid for d in devices]
        ok, refused = _fill(api, ids, 64 * 1024, 400)
        assert refused is not None, f"8 MiB never filled up after {len(ok)} enqueues"
        st, body, headers = refused
        assert ok, "the very first write failed"
        # The clear error: 503 storage_unavailable with Retry-After, and a
        # log line that says what happened.
        assert st == 503, (st, body)
        assert isinstance(body, dict) and body["error"] == "storage_unavailable", body
        assert headers.get("Retry-After"), headers
        m = srv.wait_log(r"event=store_commit_failed .*error=(\"[^\"]*\"|\S+)")
        commit_error = m.group(1)
        srv.wait_log(r"event=store.commit_failed .*responses of this batch answered 503")
        assert metric(srv, "moonmdm_store_commit_failures_total") >= 1
        # Writes that do not fit keep failing while the disk is full (small
        # ones may still find room); reads keep working.
        again, refused2 = _fill(api, ids, 64 * 1024, 1)
        assert not again and refused2[0] == 503, (again, refused2)
        _assert_reads_work(srv, api, ok[0])
        st, show = api.call("GET", "/v1/devices/" + ids[0])
        assert st == 200 and show["queue_length"] == len(ok), (len(ok), show.get("queue_length"))
        # Nothing is corrupted, even while the server runs on the full disk.
        db_check(datadir)
        df_full = shutil.disk_usage(mnt)
        # Space comes back: writes go through again, nothing was lost.
        os.unlink(filler)
        st, r = api.send("ProfileList", ids)
        assert st == 201, (st, r)
        after = device_commands(api, ids[0])
        assert all(u in after for u in ok) and r["command_uuid"] in after
        got = devices[0].run()
        assert len(got) == len(ok) + 1
        rc = srv.stop()
        assert rc == 0, srv.log()[-3000:]
        out = db_check(datadir)
        with capsys.disabled():
            print(f"\ndisk full: {len(ok)} enqueues of 64 KiB x {len(ids)} targets fit in 8 MiB "
                  f"(2 MiB filler); then 503 {body['error']}; commit error {commit_error}; "
                  f"tmpfs used {df_full.used >> 10} KiB of {df_full.total >> 10} KiB; "
                  f"recovered after deleting the filler")
            print("  " + next(line for line in out.splitlines() if line.startswith("size:")))
    finally:
        if srv is not None:
            srv.kill()
        _umount(mnt)


# ---- LMDB map full ------------------------------------------------------------------

def _shrink_map(datadir, size):
    """Rebuilds the store with a map of `size` bytes recorded in it: LMDB
    keeps the largest map size a store ever had, and moonmdm adopts it."""
    db = os.path.join(datadir.path, "db")
    dump = subprocess.run(["mdb_dump", "-a", db], capture_output=True, check=True).stdout
    dump = re.sub(rb"(?m)^mapsize=\d+$", b"mapsize=%d" % size, dump)
    dump = re.sub(rb"(?m)^db_pagesize=\d+\n", b"", dump)
    new = db + ".new"
    os.mkdir(new)
    subprocess.run(["mdb_load", "-f", "/dev/stdin", new], input=dump, check=True,
                   capture_output=True)
    shutil.rmtree(db)
    os.rename(new, db)


def test_map_grows_automatically(datadir, capsys):
    _shrink_map(datadir, 1 << 20)
    datadir.write_config('  store = { path = "db", map_size = "1MiB", map_max = "64MiB" },')
    srv = Server(datadir)
    try:
        api = Api(srv)
        ids = [d.udid for d in enrolled_devices(srv, 2)]
        map0 = metric(srv, "moonmdm_store_map_bytes")
        grows0 = metric(srv, "moonmdm_store_map_grows_total")
        ok, refused = _fill(api, ids, 64 * 1024, 60)
        assert refused is None, f"after {len(ok)} enqueues: {refused[:2]}"
        grows = metric(srv, "moonmdm_store_map_grows_total")
        map1 = metric(srv, "moonmdm_store_map_bytes")
        assert map0 == 1 << 20, map0
        assert grows >= grows0 + 2 and map1 >= 4 << 20, (grows0, grows, map0, map1)
        srv.wait_log(r"event=store_map_grow from=1048576 to=2097152")
        assert metric(srv, "moonmdm_store_commit_failures_total") == 0
        have = device_commands(api, ids[1])
        assert all(u in have for u in ok)
    finally:
        rc = srv.stop()
    assert rc == 0, srv.log()[-3000:]
    db_check(datadir)
    # A restart keeps the grown map rather than starting small again.
    srv = Server(datadir)
    try:
        assert metric(srv, "moonmdm_store_map_bytes") == map1
    finally:
        srv.stop()
    with capsys.disabled():
        print(f"\nmap growth: {len(ok)} enqueues of 64 KiB; map {int(map0) >> 10} KiB -> "
              f"{int(map1) >> 10} KiB in {int(grows - grows0)} grows, no failure")


def test_map_full_at_map_max_answers_503_and_reads_work(datadir, capsys):
    _shrink_map(datadir, 2 << 20)
    datadir.write_config('  store = { path = "db", map_size = "2MiB", map_max = "2MiB" },')
    srv = Server(datadir)
    try:
        api = Api(srv)
        ids = [d.udid for d in enrolled_devices(srv, 2)]
        ok, refused = _fill(api, ids, 64 * 1024, 200)
        assert refused is not None, f"a 2 MiB map took {len(ok)} enqueues of 64 KiB"
        st, body, headers = refused
        assert ok and st == 503, (len(ok), st, body)
        # The error names the cause. (A full map is found while the
        # request's own update runs, so the handler answers; a full disk is
        # found at the batch commit, where the HTTP layer answers
        # storage_unavailable.)
        assert isinstance(body, dict) and body["error"] in ("storage_unavailable", "store"), body
        assert "full" in body.get("detail", "") or body["error"] == "storage_unavailable", body
        srv.wait_log(r"event=store_map_limit map_size=2097152 map_max=2097152")
        assert metric(srv, "moonmdm_store_map_grows_total") == 0
        assert api.send("ProfileList", ids)[0] in (201, 503)
        _assert_reads_work(srv, api, ok[0])
        db_check(datadir)
    finally:
        rc = srv.stop()
    assert rc == 0, srv.log()[-3000:]
    db_check(datadir)
    with capsys.disabled():
        print(f"\nmap full at map_max = 2 MiB: {len(ok)} enqueues of 64 KiB accepted, then "
              f"{st} {body}")
