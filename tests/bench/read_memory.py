#!/usr/bin/python3
"""What reading results back through the admin API costs the server.

For each server binary given (one fresh server and data directory each),
either:

  --results N   N devices answer one InstalledApplicationList with --apps
                apps each (20,000 by default: 7.5 MB of XML), then
                GET /v1/commands/{uuid} is read through every page
                (next_cursor) and every report checked whole;
  --commands N  one device gets N ProfileList commands queued, then
                GET /v1/devices/{id}/commands is read unpaged.

It prints the server's peak memory (VmHWM from /proc) before and after the
read, the read's time and the pages, and its resident memory (VmRSS) right
after the read and again --settle seconds later, and the part of it that
is not the store's mapped file (RssAnon). It uses the integration
tests' fixtures (a real server on 127.0.0.1).

usage: MOONMDM_SOURCE_DIR=. /usr/bin/python3 tests/bench/read_memory.py \\
           (--results N | --commands N) BIN [BIN...]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
os.environ.setdefault("MOONMDM_SOURCE_DIR", os.path.join(HERE, "..", ".."))


def memory(pid):
    """(VmRSS, VmHWM, RssAnon) of pid in MiB. RssAnon leaves out the
    store's mapped file pages, which VmRSS counts once read."""
    f = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return tuple(int(f[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM", "RssAnon"))


def read_results(srv, api, n, n_apps):
    from device import Device
    from test_mdm_large import apps
    devs = []
    for _ in range(n):
        d = Device(srv)
        d.enroll()
        d.run()
        devs.append(d)
    st, r = api.send("InstalledApplicationList", [d.udid for d in devs])
    assert st == 201, r
    uuid = r["command_uuid"]
    big = apps(n_apps)
    for d in devs:
        d.run(handler=lambda cmd: ("Acknowledged", {"InstalledApplicationList": big}))
    before = memory(srv.proc.pid)
    t0 = time.monotonic()
    cursor, pages, seen = None, 0, 0
    while pages < 10 * n + 10:
        st, page = api.call("GET", f"/v1/commands/{uuid}" + (f"?cursor={cursor}" if cursor else ""))
        assert st == 200, page
        pages += 1
        for t in page["targets"].values():
            assert len(t["result"]["InstalledApplicationList"]) == n_apps
        seen += len(page["targets"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == n, (seen, n)
    return before, time.monotonic() - t0, pages


def read_commands(srv, api, n):
    import requests
    from device import Device
    d = Device(srv)
    d.enroll()
    d.run()
    s = requests.Session()
    headers = {"Authorization": "Bearer " + api.key}
    body = {"request_type": "ProfileList", "targets": [d.udid]}
    for _ in range(n):
        r = s.post(srv.url + "/v1/commands", json=body, headers=headers,
                   verify=srv.datadir.ca_crt, timeout=60)
        assert r.status_code == 201, r.text
    before = memory(srv.proc.pid)
    t0 = time.monotonic()
    st, page = api.call("GET", f"/v1/devices/{d.udid}/commands")
    assert st == 200 and len(page["commands"]) == n, (st, len(page.get("commands", [])))
    return before, time.monotonic() - t0, 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--results", type=int, metavar="N")
    group.add_argument("--commands", type=int, metavar="N")
    ap.add_argument("--apps", type=int, default=20000)
    ap.add_argument("--settle", type=float, default=4.0,
                    help="seconds to wait after the read before rss_settled_mib "
                         "(the server gives memory back 2 s after large work)")
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()
    from conftest import Server, make_datadir
    from device import Api
    for binary in a.binaries:
        os.environ["MOONMDM_BIN"] = os.path.abspath(binary)
        import conftest
        conftest.BIN = os.path.abspath(binary)
        tmp = tempfile.mkdtemp(prefix="read-memory-")
        srv = None
        try:
            srv = Server(make_datadir(tmp))
            api = Api(srv)
            if a.results:
                before, secs, pages = read_results(srv, api, a.results, a.apps)
            else:
                before, secs, pages = read_commands(srv, api, a.commands)
            after = memory(srv.proc.pid)
            time.sleep(a.settle)
            settled = memory(srv.proc.pid)
            print(f"bin={binary} {'results' if a.results else 'commands'}="
                  f"{a.results or a.commands} read_s={secs:.2f} pages={pages} "
                  f"rss_before_mib={before[0]} hwm_before_mib={before[1]} "
                  f"rss_after_mib={after[0]} hwm_after_mib={after[1]} "
                  f"peak_growth_mib={after[1] - before[1]} "
                  f"rss_settled_mib={settled[0]} anon_before_mib={before[2]} "
                  f"anon_after_mib={after[2]} anon_settled_mib={settled[2]}", flush=True)
        finally:
            if srv is not None:
                srv.stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
