"""The command queue at scale: 1,000 devices each drain ten queued commands
in priority order. It asserts no latency, so it runs beside other tests
(test_mdm.py, which times Idles, runs alone). Under a sanitizer build
(MOONMDM_TEST_SLOWDOWN > 1), which is there to find memory errors, 250
devices run the same paths in a quarter of the time."""
import threading

from conftest import SLOWDOWN
from device import Api, Device

N_DEVICES = 1000 if SLOWDOWN <= 1 else 250


def test_thousand_devices_ten_commands_each(server):
    api = Api(server)
    devices = [Device(server) for _ in range(N_DEVICES)]
    errors = []

    def work(chunk, fn):
        try:
            for d in chunk:
                fn(d)
        except Exception as e:  # reported below
            errors.append(repr(e))

    def parallel(fn, n=8):
        threads = [threading.Thread(target=work, args=(devices[i::n], fn)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]

    parallel(lambda d: d.enroll())
    ids = [d.udid for d in devices]
    sent = []
    for i in range(10):
        st, r = api.send("DeviceInformation", ids, Queries=["UDID"], priority=i % 3)
        assert st == 201
        sent.append(r["command_uuid"])
    received = {}

    def drain(d):
        received[d.udid] = [c["CommandUUID"] for c in d.run()]
        d.close()

    parallel(drain)
    # Each device got all ten, by priority (2, 1, 0), then in order.
    want = sorted(sent, key=lambda u: (-(sent.index(u) % 3), sent.index(u)))
    for d in devices:
        assert received[d.udid] == want, (d.udid, received[d.udid])
    for u in sent[:2]:
        st, c = api.call("GET", "/v1/commands/" + u)
        assert len(c["targets"]) == N_DEVICES
        assert {t["status"] for t in c["targets"].values()} == {"Acknowledged"}
