"""Edges of the check-in state: the bootstrap token after a new
Authenticate, user channels after the device re-enrolls or checks out, and a
user channel that checks out and comes back. Each failed on b2150bc."""
import os
import plistlib

from conftest import Server
from device import TOPIC, Api, Device
from test_profile_edges import profile, put_profile, start, types

USER = ("E4A5F9E1-0000-4000-8000-00000000AAAA", "alice")


def test_bootstrap_token_not_given_to_a_new_identity_of_the_udid(server):
    """Authenticate drops the unlock token of the old installation but keeps
    its bootstrap token: the next identity that authenticates as that UDID
    (a re-enrollment after a wipe, or the UDID takeover of THREAT_MODEL.md)
    gets the old device's bootstrap token back, before any TokenUpdate."""
    victim = Device(server)
    victim.enroll()
    token = os.urandom(48)
    assert victim.checkin("SetBootstrapToken", BootstrapToken=token)[0] == 200
    other = Device(server, udid=victim.udid)       # a different identity certificate
    assert other.authenticate() == 200
    st, body = other.checkin("GetBootstrapToken")
    assert st == 200
    assert plistlib.loads(body).get("BootstrapToken") != token


def test_user_channel_of_checked_out_device_is_not_shown_enrolled(server):
    api = Api(server)
    d = Device(server)
    d.enroll()
    d.user = USER
    assert d.token_update() == 200
    d.user = None
    assert d.checkin("CheckOut", Topic=TOPIC)[0] == 200
    st, show = api.call("GET", "/v1/devices/" + d.udid)
    assert st == 200 and show["enrolled"] is False
    u = show["user_channels"][0]
    assert u["enabled"] is False
    assert u["enrolled"] is False, u


def test_user_channel_checkout_then_token_update(server):
    api = Api(server)
    d = Device(server)
    d.enroll()
    d.user = USER
    assert d.token_update() == 200
    assert d.checkin("CheckOut", Topic=TOPIC)[0] == 200
    eid = d.udid + ":" + USER[0]
    st, u = api.call("GET", "/v1/devices/" + eid)
    assert u["enabled"] is False and u["enrolled"] is False
    # The user enrolls again on the same device.
    assert d.token_update() == 200
    st, u = api.call("GET", "/v1/devices/" + eid)
    assert u["enabled"] is True
    assert u["enrolled"] is True, u
    assert u["checked_out_at"] is None, u


def test_user_channel_gets_profiles_again_after_reenrollment(tmpdir_path, datadir):
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        d = Device(srv)
        d.enroll()
        assert types(d.run()) == ["InstallProfile"]
        d.user = USER
        assert d.token_update() == 200
        first = types(d.run())
        assert first == ["InstallProfile"], first
        # The device enrolls again (a new MDM profile: every managed
        # profile, the user's included, went with the old one).
        d.user = None
        d.enroll()
        assert types(d.run()) == ["InstallProfile"]
        d.user = USER
        assert d.token_update() == 200
        again = types(d.run())
        assert again == ["InstallProfile"], again
    finally:
        assert srv.stop() == 0


def user_channels(api, udid):
    st, show = api.call("GET", "/v1/devices/" + udid)
    assert st == 200, show
    return show["user_channels"]


def test_user_token_update_refused_while_the_device_is_pending(server):
    """Between Authenticate and the device channel's first TokenUpdate the
    enrollment is pending: a user channel must not be enrolled (and get
    commands) under it. The refusal keeps no state."""
    api = Api(server)
    d = Device(server)
    assert d.authenticate() == 200
    d.user = USER
    assert d.token_update() == 409
    assert server.wait_log(r"mdm\.checkin .*type=TokenUpdate http_status=409 .*"
                           r"device channel is not enabled")
    assert user_channels(api, d.udid) == []
    d.user = None
    assert d.token_update() == 200
    d.user = USER
    assert d.token_update() == 200
    [u] = user_channels(api, d.udid)
    assert u["enabled"] is True and u["enrolled"] is True, u


def test_user_token_update_refused_after_the_device_checked_out(tmpdir_path, datadir):
    """After the device's CheckOut (which unbinds its certificate) a user
    channel must not come back to life, even with mdm.bind_on_first_sight:
    the certificate is not bound again to a checked-out enrollment (403)."""
    datadir.write_config("  mdm = { bind_on_first_sight = true },")
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = Device(srv)
        d.enroll()
        d.user = USER
        assert d.token_update() == 200
        d.user = None
        assert d.checkin("CheckOut", Topic=TOPIC)[0] == 200
        d.user = USER
        assert d.token_update() == 403
        [u] = user_channels(api, d.udid)
        assert u["enabled"] is False and u["enrolled"] is False, u
    finally:
        assert srv.stop() == 0
