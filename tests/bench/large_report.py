#!/usr/bin/python3
"""How long other devices wait while one device sends a large report.

One device answers InstalledApplicationList with --apps applications
(20,000 make about 7.5 MB of XML), --reports times, while a second device
sends Idle after Idle on its own connection. Prints, per server binary and
round, the report's round trips and the second device's Idle latencies
(count, p50, p99, max) over that time, and the server's event loop
iterations of more than 0.1 s (moonmdm_loop_busy_seconds). With --read N
the admin then reads the last result back N times (GET /v1/commands/{uuid}). Several binaries are run in turn,
round by round, so that their figures are side by side in one run:

    /usr/bin/python3 tests/bench/large_report.py build/moonmdm /tmp/old/moonmdm

Uses the integration tests' fixtures (a real server on 127.0.0.1, its own
data directory). A release build gives the figures worth comparing."""
import argparse
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import conftest  # noqa: E402
import requests  # noqa: E402
from device import Api, Device, IdlePinger  # noqa: E402


def apps(n):
    return [{"Identifier": f"com.example.app{i}", "Name": f"App {i}", "Version": f"1.{i}",
             "ShortVersion": "1.0", "BundleSize": 1000 + i, "DynamicSize": i,
             "IsValidated": True} for i in range(n)]


def slow_iterations(srv):
    """Event loop iterations of the server that worked more than 0.1 s."""
    t = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=30).text
    count = re.search(r"^moonmdm_loop_busy_seconds_count (\d+)$", t, re.M)
    le = re.search(r'^moonmdm_loop_busy_seconds_bucket\{le="0.1"\} (\d+)$', t, re.M)
    return int(count.group(1)) - int(le.group(1))


def one_round(binary, n_apps, reports, read, policy):
    conftest.BIN = os.path.abspath(binary)
    tmp = tempfile.mkdtemp(prefix="moonmdm-bench-")
    srv = None
    try:
        dd = conftest.make_datadir(tmp)
        if policy:
            dd.write_config('  policy = { dir = "%s" },' % os.path.abspath(policy))
        srv = conftest.Server(dd)
        d, e = Device(srv), Device(srv)
        for x in (d, e):
            x.enroll()
            x.run()
        api = Api(srv)
        big = apps(n_apps)

        def handler(cmd):
            if cmd["Command"]["RequestType"] == "InstalledApplicationList":
                return "Acknowledged", {"InstalledApplicationList": big}
            return d.answer(cmd)

        pinger = IdlePinger(e).start()
        time.sleep(0.3)
        first = len(pinger.latencies)
        trips, reads = [], []
        slow0 = slow_iterations(srv)
        try:
            for _ in range(reports):
                uuid = api.send("InstalledApplicationList", [d.udid])[1]["command_uuid"]
                t0 = time.monotonic()
                d.run(handler=handler)
                trips.append(time.monotonic() - t0)
            for _ in range(read):  # the admin reads the last result back
                t0 = time.monotonic()
                st, _ = api.call("GET", "/v1/commands/" + uuid)
                reads.append(time.monotonic() - t0)
                assert st == 200, st
        finally:
            pinger.stop()
        w = sorted(pinger.latencies[first:])
        return {"report_round_trips_s": ",".join(f"{t:.3f}" for t in trips),
                "read_s": ",".join(f"{t:.3f}" for t in reads) or "-",
                "loop_iterations_over_100ms": slow_iterations(srv) - slow0,
                "idle_n": len(w), "idle_p50_ms": f"{w[len(w) // 2] * 1e3:.2f}",
                "idle_p99_ms": f"{w[min(len(w) - 1, int(len(w) * 0.99))] * 1e3:.1f}",
                "idle_max_ms": f"{w[-1] * 1e3:.1f}", "errors": len(pinger.errors)}
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--apps", type=int, default=20000)
    ap.add_argument("--reports", type=int, default=3, help="large reports per round")
    ap.add_argument("--read", type=int, default=0,
                    help="then read the last result back this many times (GET /v1/commands/{uuid})")
    ap.add_argument("--policy", metavar="DIR",
                    help="policy directory (e.g. policies/, the shipped one); none by default")
    a = ap.parse_args()
    for r in range(1, a.rounds + 1):
        for b in a.binaries:
            res = one_round(b, a.apps, a.reports, a.read, a.policy)
            print(f"round={r} bin={b} apps={a.apps} policy={a.policy or '-'} " +
                  " ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
