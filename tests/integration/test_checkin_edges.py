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


def test_user_keys_that_name_no_channel_are_refused(server):
    """A TokenUpdate with user keys that name no user channel (a UserID that
    is not a string, a UserShortName without UserID, an EnrollmentUserID
    beside a UDID) was taken for the device channel's: the user's push
    token and PushMagic replaced the device's. It is refused (400) and
    changes nothing."""
    api = Api(server)
    d = Device(server)
    d.enroll()
    before = api.call("GET", "/v1/devices/" + d.udid)[1]
    assert before["token_updates"] == 1
    for extra in ({"UserID": 5, "UserShortName": "alice"},
                  {"UserShortName": "alice", "UserLongName": "Alice Example"},
                  {"EnrollmentUserID": "E4A5F9E1-0000-4000-8000-00000000AAAA"}):
        assert d.token_update(Token=os.urandom(32), PushMagic="other-magic", **extra) == 400, extra
    assert server.wait_log(r"mdm\.checkin .*http_status=400 .*user channel keys that name no user channel")
    after = api.call("GET", "/v1/devices/" + d.udid)[1]
    assert after["token_updates"] == 1, after
    assert after["user_channels"] == []


def test_token_update_needs_topic_and_data_unlock_token(server):
    api = Api(server)
    d = Device(server)
    d.enroll()
    st, _ = d.checkin("TokenUpdate", Token=d.token, PushMagic=d.push_magic)
    assert st == 400
    assert server.wait_log(r"mdm\.checkin .*type=TokenUpdate http_status=400 .*without Topic")
    assert d.token_update(Topic=5) == 400
    assert d.token_update(UnlockToken="not data") == 400
    assert server.wait_log(r"UnlockToken is not <data>")
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["token_updates"] == 1
    assert d.token_update() == 200


def test_bootstrap_token_refused_on_a_user_channel(server):
    """The bootstrap token is the device's (Apple's schemas: not on user
    channels); on a user channel it was stored in, and read from, the
    device's record."""
    api = Api(server)
    d = Device(server)
    d.enroll()
    d.user = USER
    assert d.token_update() == 200
    assert d.checkin("SetBootstrapToken", BootstrapToken=os.urandom(48))[0] == 400
    assert d.checkin("GetBootstrapToken")[0] == 400
    assert server.wait_log(r"SetBootstrapToken on a user channel")
    d.user = None
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["bootstrap_token"] is False
    st, body = d.checkin("GetBootstrapToken")
    assert st == 200 and "BootstrapToken" not in plistlib.loads(body)


def test_profiles_reach_a_device_bound_on_first_sight(tmpdir_path, datadir):
    """With mdm.bind_on_first_sight a device that never authenticated here
    enrolls by its TokenUpdate; its certificate was not recorded, so no
    profile could be encrypted to it, and it was marked reconciled anyway:
    it never got its profiles."""
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"],
                        " mdm = { bind_on_first_sight = true },")
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        d = Device(srv)
        assert d.token_update() == 200
        assert "InstallProfile" in types(d.run())
        assert "no identity certificate" not in srv.log()
    finally:
        assert srv.stop() == 0


def test_user_channel_unlock_token_goes_with_the_installation(server):
    """A new Authenticate of the device (a new installation) dropped the
    device channel's unlock token but kept the user channels'."""
    api = Api(server)
    d = Device(server)
    d.enroll()
    d.user = USER
    assert d.token_update() == 200
    assert user_channels(api, d.udid)[0]["unlock_token"] is True
    d.user = None
    assert d.authenticate() == 200
    [u] = user_channels(api, d.udid)
    assert u["unlock_token"] is False and u["push_token"] is False, u


def test_first_sight_binding_rolled_back_is_not_logged(tmpdir_path, datadir):
    """The binding log line was written before the request's later checks;
    a TokenUpdate refused after them (no Token) logged a binding that its
    rollback undid."""
    datadir.write_config("  mdm = { bind_on_first_sight = true },")
    srv = Server(datadir)
    try:
        d = Device(srv)
        st, _ = d.checkin("TokenUpdate", Topic=TOPIC, PushMagic=d.push_magic)
        assert st == 400
        assert srv.wait_log(r"mdm\.checkin .*http_status=400 .*without Token")
        assert "mdm.bound_on_first_sight" not in srv.log()
        assert d.token_update() == 200
        assert srv.wait_log(r"mdm\.bound_on_first_sight .*device=" + d.udid)
    finally:
        assert srv.stop() == 0
