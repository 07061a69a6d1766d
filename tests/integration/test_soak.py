"""A bounded soak run that watches the server's memory and descriptors
under steady load (MOONMDM_SOAK_SECONDS, default 60). It asserts no
latency, so it runs beside other tests; the kill -9, full disk and full
map faults are in test_faults.py, which runs alone.

Every load here goes to 127.0.0.1 only, is bounded in time and count, and
stops by itself.
"""
import os
import re
import time

import pytest

from conftest import WRAPPER, Server
from test_faults import Load, asan_build, db_check, enrolled_devices, metric


def _proc_sample(pid):
    status = open(f"/proc/{pid}/status").read()

    def kb(field):
        m = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) if m else 0
    return kb("VmRSS"), kb("RssAnon"), len(os.listdir(f"/proc/{pid}/fd"))


def test_soak_memory_and_descriptors_stay_flat(datadir, capsys):
    if WRAPPER:
        pytest.skip("the soak measures the server process itself, not valgrind")
    seconds = float(os.environ.get("MOONMDM_SOAK_SECONDS", "60"))
    env = {}
    asan = asan_build()
    if asan:
        # ASan holds freed memory in a quarantine (256 MiB by default) that
        # fills for minutes and looks like growth; keep it small.
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                               ":quarantine_size_mb=8:malloc_context_size=5").lstrip(":")
    # Results are pruned after 5 s, so the store reaches a steady size too.
    datadir.write_config('  mdm = { result_retention = "5s" },')
    srv = Server(datadir, env=env)
    pid = srv.proc.pid
    samples = []
    load = None
    try:
        devices = enrolled_devices(srv, 8)
        # A steady rate, below what the server does even in an ASan build on
        # a busy machine: memory that tracks the rate (the store's pages,
        # batch sizes) then stays put, and what still grows is a leak.
        load = Load(srv, devices, enqueuers=1, readers=1, tolerate_errors=False,
                    enqueue_interval=1.0 if asan else 0.5).start()
        interval = max(1.0, seconds / 40)
        t0 = time.monotonic()
        while True:
            el = time.monotonic() - t0
            rss, anon, fds = _proc_sample(pid)
            e, a = load.counts()
            used = int(metric(srv, "moonmdm_store_used_bytes")) >> 10
            samples.append((el, rss, anon, fds, used, e, a))
            if el >= seconds:
                break
            time.sleep(min(interval, max(0.0, seconds - el)))
    finally:
        if load is not None:
            load.stop()
        rc = srv.stop()
    e, a = load.counts()
    # Drop the warm-up, then compare the last third with the first third.
    # In the warm-up the pools and caches fill, and the store grows until
    # pruning (every 10 s, results older than 5 s) balances the new
    # results: on this machine its size stops moving after about 25 s.
    warm = min(30.0, seconds / 2)
    steady = [s for s in samples if s[0] >= warm] or samples[-1:]
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    rss1, rss3 = max(s[1] for s in first), max(s[1] for s in last)
    anon1, anon3 = max(s[2] for s in first), max(s[2] for s in last)
    fd1, fd3 = max(s[3] for s in first), max(s[3] for s in last)
    with capsys.disabled():
        print(f"\nsoak {seconds:.0f} s{' (ASan build)' if asan else ''}: {e} enqueues x "
              f"{len(devices)} devices, {a} results acknowledged, {load.sessions} device "
              f"sessions, {load.reads} API reads, {len(load.errors)} errors")
        print("  t(s)  VmRSS(KiB)  RssAnon(KiB)  fds  store used(KiB)  enqueued  acked")
        for s in samples:
            print("  %5.1f  %9d  %11d  %4d  %14d  %8d  %6d" % s)
        print(f"  after a {warm:.0f} s warm-up: VmRSS max {rss1} -> {rss3} KiB "
              f"({(rss3 / rss1 - 1) * 100:+.1f}%), RssAnon max {anon1} -> {anon3} KiB, "
              f"fds max {fd1} -> {fd3}")
    assert rc == 0, srv.log()[-3000:]
    assert not load.errors, load.errors[:10]
    assert e > 0 and a > 0
    assert rss3 <= rss1 * 1.15, f"VmRSS grew from {rss1} to {rss3} KiB"
    assert fd3 <= fd1 + 20, f"open descriptors grew from {fd1} to {fd3}"
    db_check(datadir)
