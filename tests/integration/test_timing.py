"""Latency tests that belong to no other file. Tests that assert
latencies are marked `timing`, wherever they are: ctest runs them all
together in integration/test_timing, alone (RUN_SERIAL in
tests/CMakeLists.txt), so that no test beside them can make them fail."""
import threading
import time

import pytest
import requests

from conftest import SLOWDOWN, Server
from test_scep import Client, Reply, base, recipient_of, scep_datadir, stop_clean


@pytest.mark.timing
def test_a_burst_of_enrollments_does_not_stall_other_requests(tmpdir_path):
    d = scep_datadir(tmpdir_path, static_challenge='"burst-pw"')
    s = Server(d, plain=True)
    try:
        rcpt = recipient_of(d)
        msgs = [Client().message(rcpt, challenge="burst-pw") for _ in range(48)]
        done, lat = [], []
        stop = threading.Event()

        def worker(chunk):
            with requests.Session() as sess:
                for m in chunk:
                    r = sess.post(base(s) + "/scep?operation=PKIOperation", data=m, timeout=60)
                    done.append(Reply(r.content).status)

        def prober():
            with requests.Session() as sess:
                while not stop.is_set():
                    t0 = time.monotonic()
                    assert sess.get(base(s) + "/healthz", timeout=10).status_code == 200
                    lat.append(time.monotonic() - t0)
                    time.sleep(0.005)

        p = threading.Thread(target=prober)
        p.start()
        ws = [threading.Thread(target=worker, args=(msgs[i::8],)) for i in range(8)]
        t0 = time.monotonic()
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        burst = time.monotonic() - t0
        stop.set()
        p.join()
        assert done.count(0) == len(msgs), done
        lat.sort()
        # The loop never waits for private-key work: /healthz stays fast
        # while the pool signs.
        assert lat and lat[-1] < max(0.25 * SLOWDOWN, burst / 4), (lat[-5:], burst)
    finally:
        stop_clean(s)
