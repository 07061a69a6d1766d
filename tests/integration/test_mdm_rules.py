"""Rules of the MDM protocols and the admin API that no other file proves:
the enabled filter of the device list, the order of a device's command
history, User Enrollment ids, the binding moved by a SCEP renewal, an
expired signer certificate, and API keys kept only as hashes."""
import datetime
import os
import plistlib
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import pki
from conftest import Server
from device import TOPIC, Api, Device


def write_policy(tmpdir_path, datadir, text):
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(text)
    datadir.write_config('  policy = { dir = "%s" },' % pdir)


def test_device_list_enabled_filter(server):
    api = Api(server)
    on, pending, out = Device(server), Device(server), Device(server)
    on.enroll()
    assert pending.authenticate() == 200  # no TokenUpdate yet: not enabled
    out.enroll()
    assert out.checkin("CheckOut", Topic=TOPIC)[0] == 200
    st, r = api.call("GET", "/v1/devices?enabled=true")
    assert st == 200 and [x["id"] for x in r["devices"]] == [on.udid], r
    st, r = api.call("GET", "/v1/devices?enabled=false")
    assert st == 200 and {x["id"] for x in r["devices"]} == {pending.udid, out.udid}, r
    assert all(x["enabled"] is False for x in r["devices"]), r
    # Both filters at once: enabled=false and enrolled=false leaves the
    # pending one (never enrolled) and the one that checked out.
    st, r = api.call("GET", "/v1/devices?enabled=false&enrolled=true")
    assert st == 200 and r["devices"] == [], r


# Six commands queued by the policy in the TokenUpdate's transaction: they
# share one enqueue time, to the millisecond.
SIX_COMMANDS = """
return {
  checkin = function(device, msg)
    if msg.MessageType == "TokenUpdate" and device.first_checkin then
      local c = {}
      for i = 1, 6 do c[i] = mdm.command.ProfileList{} end
      return { commands = c }
    end
  end,
}
"""


def test_device_command_history_is_newest_first_within_one_millisecond(datadir, tmpdir_path):
    write_policy(tmpdir_path, datadir, SIX_COMMANDS)
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = Device(srv)
        d.enroll()
        st, r = api.call("GET", f"/v1/devices/{d.udid}/commands")
        assert st == 200 and len(r["commands"]) == 6, r
        queued = {c["queued_at"] for c in r["commands"]}
        assert len(queued) == 1, queued  # one enqueue time for all six
        history = [c["command_uuid"] for c in r["commands"]]
        # The device gets them in the order they were queued; the history
        # lists the last queued first.
        delivered = [c["CommandUUID"] for c in d.run()]
        assert history == delivered[::-1], (history, delivered)
        st, r = api.call("GET", f"/v1/devices/{d.udid}/commands")
        assert [c["command_uuid"] for c in r["commands"]] == history, r
    finally:
        assert srv.stop() == 0
