"""A policy that loops forever or allocates without bound: every call is
cut off at its budget and fails closed; a hook that keeps overrunning is
paused; the rest of the server goes on serving (devices get their queued
commands, /healthz stays fast)."""
import os
import re
import statistics
import threading
import time

import pytest
import requests

from conftest import SLOWDOWN, Server, get
from device import Api, Device

BAD_POLICY = r'''
return {
  connect = function(device, report)
    while true do end
  end,
  groups = function(device)
    local t = {}
    for i = 1, 1e12 do t[i] = string.rep("x", 1024) .. i end
  end,
  profiles = function(device, groups) return {} end,
}
'''


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


@pytest.mark.timing
def test_looping_and_allocating_policy_does_not_stop_the_server(datadir, tmpdir_path):
    pdir = os.path.join(tmpdir_path, "badpolicy")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(BAD_POLICY)
    datadir.write_config('  policy = { dir = "%s", budget = "50ms", memory_max = "32MiB" },'
                         % pdir)
    srv = Server(datadir)
    try:
        api = Api(srv)
        devices = [Device(srv) for _ in range(4)]
        for d in devices:
            d.enroll()
        sent = {d.udid: api.send("ProfileList", [d.udid])[1]["command_uuid"] for d in devices}
        rss_before = rss_kb(srv.proc.pid)

        stop = threading.Event()
        errors, sessions = [], [0]

        def device_load(d):
            while not stop.is_set():
                try:
                    got = d.run()
                    if got:
                        assert [c["CommandUUID"] for c in got] == [sent[d.udid]]
                    sessions[0] += 1
                except Exception as e:
                    errors.append(repr(e))
                    return

        threads = [threading.Thread(target=device_load, args=(d,)) for d in devices]
        for t in threads:
            t.start()
        lat = []
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            r = get(srv, "/healthz")
            lat.append(time.monotonic() - t0)
            assert r.status == 200
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == [], errors[:3]
        assert sessions[0] >= 8, sessions[0]
        # Every device still got its queued command (the connect hook fails
        # closed: it adds nothing and takes nothing away).
        for d in devices:
            st, c = api.call("GET", "/v1/commands/" + sent[d.udid])
            assert c["targets"][d.udid]["status"] == "Acknowledged"
        lat.sort()
        p99 = lat[int(len(lat) * 0.99) - 1]
        median = statistics.median(lat)
        # A stuck hook holds the loop for at most its budget (50 ms) per
        # call, and after three overruns in a row it is paused (fails closed
        # without running), so the loop is free again.
        assert p99 < 0.2 * SLOWDOWN, (median, p99)
        rss_after = rss_kb(srv.proc.pid)
        # The state's memory is capped (32 MiB): the process does not grow
        # past the cap and a margin. (Under ASan freed memory sits in its
        # quarantine and shadow memory grows with it: a looser bound.)
        margin = 512 * 1024 if os.environ.get("ASAN_OPTIONS") else 64 * 1024
        assert rss_after - rss_before < margin, (rss_before, rss_after)
        m = get(srv, "/metrics").body.decode()
        timeouts = re.search(r'moonmdm_policy_calls_total\{hook="connect",outcome="timeout"\} (\d+)',
                             m)
        memory = re.search(r'moonmdm_policy_calls_total\{hook="groups",outcome="(memory|timeout)"\} (\d+)',
                           m)
        paused = re.search(r'moonmdm_policy_paused_calls_total\{hook="connect"\} (\d+)', m)
        assert timeouts and int(timeouts.group(1)) >= 3, m[-2000:]
        assert memory and int(memory.group(2)) >= 1
        assert paused and int(paused.group(1)) >= 1
        srv.wait_log(r"event=policy.hook_paused .*hook=connect")
        print(f"\nhealthz under a stuck policy: {len(lat)} requests, median "
              f"{median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; {sessions[0]} device sessions; "
              f"RSS {rss_before} -> {rss_after} KiB")
        srv.wait_log(r"event=policy.hook_failed .*hook=connect")
    finally:
        assert srv.stop() == 0
