"""Rules of the MDM protocols and the admin API that no other file proves:
the enabled filter of the device list, the order of a device's command
history, User Enrollment ids, the binding moved by a SCEP renewal, an
expired signer certificate, API keys kept only as hashes, the topic of a
TokenUpdate, the bootstrap token's deletion, the plain 403 of a refused
binding, the configured paths, the pruning of results, the proxy header
identity, and binding on first sight."""
import datetime
import os
import plistlib
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import pki
from conftest import Server
from device import TOPIC, Api, Device
from test_scep import (Reply, enroll, make_csr, new_challenge, pki_op, recipient_of,
                       scep_datadir, stop_clean)


def write_policy(tmpdir_path, datadir, text):
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(text)
    # A budget that holds under valgrind too (MOONMDM_VALGRIND=1).
    datadir.write_config('  policy = { dir = "%s", budget = "5s" },' % pdir)


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
        assert r["next_cursor"] is None
        # In pages (the six share one millisecond: the cursor holds the
        # enqueue order too), each page as the whole listing had it.
        whole = {c["command_uuid"]: c for c in r["commands"]}
        for limit in (1, 4):
            seen, cursor = [], None
            for _ in range(7):
                q = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
                st, page = api.call("GET", f"/v1/devices/{d.udid}/commands{q}")
                assert st == 200 and 1 <= len(page["commands"]) <= limit, page
                assert all(whole[c["command_uuid"]] == c for c in page["commands"])
                seen += [c["command_uuid"] for c in page["commands"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == history, (limit, seen)
        for q in ("?limit=-1", "?limit=two", "?cursor=abc", "?cursor=1.x.y", "?cursor=-5"):
            st, e = api.call("GET", f"/v1/devices/{d.udid}/commands{q}")
            assert st == 400 and e["error"] == "bad_query", (q, st, e)
    finally:
        assert srv.stop() == 0


class UserEnrolledDevice(Device):
    """A device in User Enrollment: no UDID, a per-enrollment EnrollmentID,
    and on the user channel (macOS) an EnrollmentUserID."""

    def __init__(self, server):
        super().__init__(server, udid="UE-" + os.urandom(8).hex().upper())
        self.enrollment_user = None

    def ids(self):
        d = {"EnrollmentID": self.udid}
        if self.enrollment_user:
            d["EnrollmentUserID"] = self.enrollment_user
        return d


def test_user_enrollment_ids_have_their_own_queues(server):
    api = Api(server)
    d = UserEnrolledDevice(server)
    d.enroll()
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert st == 200 and show["enabled"] is True and show["serial"] == d.serial, show
    d.enrollment_user = "UE-USER-1"
    assert d.token_update() == 200
    user_eid = d.udid + ":UE-USER-1"
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert [u["id"] for u in show["user_channels"]] == [user_eid], show
    ucmd = api.send("ProfileList", [user_eid])[1]["command_uuid"]
    dcmd = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
    assert [c["CommandUUID"] for c in d.run()] == [ucmd]
    d.enrollment_user = None
    assert [c["CommandUUID"] for c in d.run()] == [dcmd]
    # Another certificate cannot speak for the enrollment.
    other = UserEnrolledDevice(server)
    other.udid = d.udid
    assert other.idle()[0] == 403
    # A re-enrollment (a new Authenticate) clears both queues.
    api.send("ProfileList", [d.udid])
    api.send("ProfileList", [user_eid])
    assert d.authenticate() == 200
    for eid in (d.udid, user_eid):
        st, show = api.call("GET", "/v1/devices/" + eid)
        assert st == 200 and show["queue_length"] == 0 and show["enabled"] is False, show


def test_scep_renewal_moves_the_binding(tmpdir_path):
    d = scep_datadir(tmpdir_path)
    d.write_config('  enroll = { topic = "%s" },' % TOPIC)
    srv = Server(d, plain=True)
    try:
        api = Api(srv)
        c, old = enroll(srv, d, new_challenge(d))
        dev = Device(srv, cert=old, key=c.key)
        dev.enroll()
        cmd = api.send("ProfileList", [dev.udid])[1]["command_uuid"]
        k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = make_csr(k2, "py-device").public_bytes(serialization.Encoding.DER)
        rep = Reply(pki_op(srv, c.message(recipient_of(d), mtype=17, data=csr, signer=old,
                                          key=c.key)).content)
        assert rep.status == 0, rep.fail_info
        new, _ = rep.open(c)
        # The renewed identity speaks for the device at once, without a new
        # Authenticate, and gets what was queued.
        renewed = Device(srv, udid=dev.udid, cert=new, key=k2)
        assert [x["CommandUUID"] for x in renewed.run()] == [cmd]
        st, show = api.call("GET", "/v1/devices/" + dev.udid)
        assert show["identity_certificate"]["serial"] == format(new.serial_number, "X"), show
        assert show["enabled"] is True, show
        # The superseded certificate no longer does.
        dev.close()
        assert dev.idle()[0] == 403
        assert renewed.idle()[0] == 200
    finally:
        stop_clean(srv)


def test_signed_messages_refuse_an_expired_signer(server):
    ca_cert, ca_key = pki.load_ca(server.datadir)
    # Expired already: refused before anything else.
    past = pki.now() - datetime.timedelta(hours=1)
    cert, key = pki.issue_client(ca_cert, ca_key, "expired", not_before=past
                                 - datetime.timedelta(days=1), not_after=past)
    d = Device(server, cert=cert, key=key, sign=True)
    assert d.authenticate() == 400
    server.wait_log(r"event=mdm\.checkin .*http_status=400 detail=\"certificate has expired")
    # Expires while its verified chain is kept: refused once it expired.
    na = pki.now().replace(microsecond=0) + datetime.timedelta(seconds=4)
    cert, key = pki.issue_client(ca_cert, ca_key, "short-lived", not_after=na)
    d = Device(server, cert=cert, key=key, sign=True)
    d.enroll()
    assert d.idle()[0] == 200
    while pki.now() < na + datetime.timedelta(seconds=2):
        time.sleep(0.5)
    st, _ = d.idle()
    assert st in (400, 403), f"expired signer accepted from the cache: {st}"


def test_api_keys_are_stored_hashed(server):
    key = server.datadir.api_key
    secret = key.rsplit("_", 1)[1]
    assert len(secret) == 64
    assert Api(server).call("GET", "/v1/devices")[0] == 200
    import subprocess
    subprocess.run(["sync"], check=True)
    db = open(os.path.join(server.datadir.path, "db", "data.mdb"), "rb").read()
    assert secret.encode() not in db and key.encode() not in db
    assert bytes.fromhex(secret) not in db
    assert key not in server.log()


# Authenticate refuses a topic this server does not push to (the device
# could never be woken); a TokenUpdate naming such a topic must not slip it
# into the enrollment either.
def test_token_update_checks_the_topic(datadir):
    datadir.write_config('  enroll = { topic = "%s" },' % TOPIC)
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = Device(srv)
        d.enroll()
        assert d.token_update(Topic="com.apple.mgmt.External.other") == 403
        srv.wait_log(r"type=TokenUpdate http_status=403 .*com.apple.mgmt.External.other")
        st, show = api.call("GET", "/v1/devices/" + d.udid)
        assert show["topic"] == TOPIC and show["token_updates"] == 1, show
        # Nor on a user channel.
        d.user = ("U-1", "alice")
        assert d.token_update(Topic="com.apple.mgmt.External.other") == 403
        assert api.call("GET", "/v1/devices/" + d.udid + ":U-1")[0] == 404
        assert d.token_update() == 200
        d.user = None
        assert d.token_update() == 200
        assert d.run() == []
    finally:
        assert srv.stop() == 0


def test_set_bootstrap_token_deletes_only_when_absent_or_empty(server):
    d = Device(server)
    d.enroll()

    def stored():
        st, body = d.checkin("GetBootstrapToken")
        assert st == 200
        return plistlib.loads(body).get("BootstrapToken")

    assert d.checkin("SetBootstrapToken", BootstrapToken=b"token-1")[0] == 200
    assert stored() == b"token-1"
    # A BootstrapToken that is not <data> is bad input: refused, and the
    # stored token stays.
    for bad in ["token-2", 5, [b"x"]]:
        assert d.checkin("SetBootstrapToken", BootstrapToken=bad)[0] == 400, bad
        assert stored() == b"token-1"
    server.wait_log(r"type=SetBootstrapToken http_status=400 .*BootstrapToken")
    # Absent or empty: the device deletes it.
    assert d.checkin("SetBootstrapToken", BootstrapToken=b"")[0] == 200
    assert stored() is None
    assert d.checkin("SetBootstrapToken", BootstrapToken=b"token-3")[0] == 200
    assert d.checkin("SetBootstrapToken", AwaitingConfiguration=False)[0] == 200
    assert stored() is None


def test_refused_binding_is_a_plain_403(server):
    a, b = Device(server), Device(server)
    a.enroll()
    b.enroll()
    spoof = Device(server, udid=b.udid, cert=a.cert, key=a.key)
    for path, body, ct in [
            ("/mdm/connect", {"Status": "Idle", "UDID": b.udid}, "application/x-apple-aspen-mdm"),
            ("/mdm/checkin", {"MessageType": "TokenUpdate", "UDID": b.udid, "Topic": TOPIC,
                              "Token": b"t" * 32, "PushMagic": "m"},
             "application/x-apple-aspen-mdm-checkin")]:
        st, headers, data = spoof.put(path, plistlib.dumps(body), ct)
        # No error document: com.apple.unrecognized.device would make the
        # real device B unenroll.
        assert st == 403 and data == b"" and "content-type" not in headers, (st, headers, data)


def test_configured_paths(datadir):
    datadir.write_config('  mdm = { checkin_path = "/dev/in", connect_path = "/dev/out", '
                         'path = "/dev/both" },')
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = Device(srv)
        st, _ = d.checkin("Authenticate", path="/dev/in", Topic=TOPIC, SerialNumber=d.serial)
        assert st == 200
        st, _ = d.checkin("TokenUpdate", path="/dev/both", Topic=TOPIC, Token=d.token,
                          PushMagic=d.push_magic)
        assert st == 200
        cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
        assert [c["CommandUUID"] for c in d.run(path="/dev/out")] == [cmd]
        # The default paths are not served any more.
        assert d.checkin("TokenUpdate", Topic=TOPIC, Token=d.token,
                         PushMagic=d.push_magic)[0] == 404
        assert d.idle()[0] == 404
    finally:
        assert srv.stop() == 0


# One path for both kinds (a profile whose CheckInURL is its ServerURL, or
# the combined path configured as one of the others): the messages are told
# apart by their Content-Type, as on mdm.path.
def test_one_path_configured_for_check_ins_and_reports(datadir):
    for extra, paths in [('checkin_path = "/one", connect_path = "/one"', ["/one"]),
                         ('checkin_path = "/mdm", connect_path = "/mdm/out"', ["/mdm"]),
                         ('connect_path = "/mdm"', ["/mdm"])]:
        datadir.write_config('  mdm = { %s },' % extra)
        srv = Server(datadir)
        try:
            api = Api(srv)
            for path in paths:
                d = Device(srv)
                st, _ = d.checkin("Authenticate", path=path, Topic=TOPIC, SerialNumber=d.serial)
                assert st == 200, (extra, path)
                st, _ = d.checkin("TokenUpdate", path=path, Topic=TOPIC, Token=d.token,
                                  PushMagic=d.push_magic)
                assert st == 200, (extra, path)
                cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
                assert [c["CommandUUID"] for c in d.run(path=path)] == [cmd], (extra, path)
        finally:
            assert srv.stop() == 0


# Finished results older than mdm.result_retention are pruned in the
# background (every 10 s, in small batches); a command still waiting is not.
def test_results_are_pruned_after_the_retention(datadir):
    datadir.write_config('  mdm = { result_retention = "1s" },')
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = Device(srv)
        d.enroll()
        done = api.send("ProfileList", [d.udid])[1]["command_uuid"]
        assert [c["CommandUUID"] for c in d.run()] == [done]
        waiting = api.send("SecurityInfo", [d.udid])[1]["command_uuid"]
        srv.wait_log(r"event=mdm\.pruned results=1 ", timeout=25)
        assert api.call("GET", "/v1/commands/" + done)[0] == 404
        st, r = api.call("GET", f"/v1/devices/{d.udid}/commands")
        assert [c["command_uuid"] for c in r["commands"]] == [waiting], r
        assert [c["CommandUUID"] for c in d.run()] == [waiting]
    finally:
        assert srv.stop() == 0


def test_proxy_header_identity_speaks_the_protocol(datadir):
    datadir.write_config('  proxy = { cert_header = "X-Client-Cert" },')
    srv = Server(datadir, plain=True)
    try:
        api = Api(srv)
        d = Device(srv, plain=True, proxy_header="X-Client-Cert")
        d.enroll()
        cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
        assert [c["CommandUUID"] for c in d.run()] == [cmd]
        # A certificate of another CA in the header is no identity.
        other_ca, other_key = pki.make_ca()
        cert, key = pki.issue_client(other_ca, other_key, "forged")
        forged = Device(srv, udid=d.udid, cert=cert, key=key, plain=True,
                        proxy_header="X-Client-Cert")
        assert forged.idle()[0] == 403
        # Without the header the plain listener knows no one.
        assert Device(srv, udid=d.udid, plain=True).idle()[0] == 403
    finally:
        assert srv.stop() == 0


# Binding on first sight adopts devices that have no binding here; it never
# lets a new certificate take over an enrollment bound to another one.
def test_binding_on_first_sight_takes_over_no_bound_enrollment(datadir):
    datadir.write_config('  mdm = { bind_on_first_sight = true },')
    srv = Server(datadir)
    try:
        api = Api(srv)
        b = Device(srv)
        b.enroll()
        cmd = api.send("DeviceLock", [b.udid], Message="for b only")[1]["command_uuid"]
        stranger = Device(srv, udid=b.udid)  # our CA, never bound
        assert stranger.idle()[0] == 403
        assert stranger.token_update() == 403
        assert stranger.checkin("CheckOut", Topic=TOPIC)[0] == 403
        srv.wait_log(r"http_status=403 .*not bound to any enrollment")
        st, show = api.call("GET", "/v1/devices/" + b.udid)
        assert show["enabled"] is True and show["queue_length"] == 1, show
        assert [c["CommandUUID"] for c in b.run()] == [cmd]
        # The stranger's certificate stayed unbound: it may still adopt a
        # device this server has never seen.
        stranger.udid = "MIGRATED-" + os.urandom(4).hex().upper()
        assert stranger.token_update() == 200
        assert stranger.idle()[0] == 200
    finally:
        assert srv.stop() == 0
