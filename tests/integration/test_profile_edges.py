"""Managed profiles at their edges: profiles.dir, Apple's required
keys, re-enrollment, commands that end without a report, refused updates,
and updated profiles reaching devices. Each failed on 6fe05d5."""
import os
import plistlib
import uuid as uuidlib

import pytest

import pki
from conftest import Server
from device import Api, Device

POLICY = r'''
local wanted = require("wanted")
return {
  groups = function(device) return { "all" } end,
  profiles = function(device, groups) return wanted.profiles end,
}
'''


def write_policy(pdir, wanted):
    os.makedirs(pdir, exist_ok=True)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(POLICY)
    with open(os.path.join(pdir, "wanted.lua"), "w") as f:
        f.write("return { profiles = { %s } }\n" % ", ".join(f'"{p}"' for p in wanted))


def uid():
    return str(uuidlib.uuid4()).upper()


def profile_dict(identifier, ssid="Office"):
    return {
        "PayloadType": "Configuration", "PayloadVersion": 1,
        "PayloadIdentifier": identifier, "PayloadUUID": uid(),
        "PayloadDisplayName": "Wi-Fi",
        "PayloadContent": [{
            "PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1,
            "PayloadIdentifier": identifier + ".wifi", "PayloadUUID": uid(),
            "SSID_STR": ssid, "EncryptionType": "WPA2", "Password": "wifi-secret"}],
    }


def profile(identifier, ssid="Office"):
    return plistlib.dumps(profile_dict(identifier, ssid))


def start(tmpdir_path, datadir, wanted, extra=""):
    pdir = os.path.join(tmpdir_path, "policy")
    write_policy(pdir, wanted)
    datadir.write_config('  policy = { dir = "%s" },%s' % (pdir, extra))
    srv = Server(datadir)
    return srv, Api(srv), pdir


def types(cmds):
    return [c["Command"]["RequestType"] for c in cmds]


def put_profile(api, identifier, body):
    return api.call("PUT", "/v1/profiles/" + identifier, body, "application/x-apple-aspen-config")


# ---- profiles.dir ----------------------------------------------------------

def test_profiles_dir_loads_mobileconfig_files(tmpdir_path, datadir):
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "wifi.mobileconfig"), "wb") as f:
        f.write(profile("com.example.dirwifi"))
    datadir.write_config('  profiles = { dir = "%s" },' % pdir)
    srv = Server(datadir)
    try:
        st, r = Api(srv).call("GET", "/v1/profiles")
        assert st == 200
        ids = [p["identifier"] for p in r["profiles"]]
        assert ids == ["com.example.dirwifi"], (ids, [l for l in srv.log_lines
                                                         if "profiles.loaded" in l])
    finally:
        assert srv.stop() == 0


def test_profile_removed_from_profiles_dir_leaves_the_store(tmpdir_path, datadir):
    """A file taken out of profiles.dir: at the next start its profile is
    deleted (it was loaded from there), and a profile uploaded through the
    API stays."""
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    for name in ("keep", "gone"):
        with open(os.path.join(pdir, name + ".mobileconfig"), "wb") as f:
            f.write(profile("com.example." + name))
    datadir.write_config('  profiles = { dir = "%s" },' % pdir)
    srv = Server(datadir)
    try:
        assert put_profile(Api(srv), "com.example.api", profile("com.example.api"))[0] == 201
    finally:
        assert srv.stop() == 0
    os.unlink(os.path.join(pdir, "gone.mobileconfig"))
    srv = Server(datadir)
    try:
        st, r = Api(srv).call("GET", "/v1/profiles")
        assert st == 200
        ids = sorted(p["identifier"] for p in r["profiles"])
        assert ids == ["com.example.api", "com.example.keep"], ids
        srv.wait_log(r"event=profiles.removed .*identifier=com.example.gone")
    finally:
        assert srv.stop() == 0


def test_too_large_file_in_profiles_dir_says_too_large(tmpdir_path, datadir):
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    d = profile_dict("com.example.big")
    d["PayloadDescription"] = "x" * (9 << 20)
    with open(os.path.join(pdir, "big.mobileconfig"), "wb") as f:
        f.write(plistlib.dumps(d))
    datadir.write_config('  profiles = { dir = "%s" },' % pdir)
    try:
        srv = Server(datadir)
    except AssertionError as e:
        log = str(e)
    else:
        rc = srv.proc.wait(30)
        log = srv.log()
        assert rc != 0 and "event=server.start_failed" in log, (rc, log[-2000:])
    assert "big.mobileconfig" in log and "too large" in log and "8 MiB" in log, log[-2000:]


# ---- upload validation (Apple's TopLevel / CommonPayloadKeys) -------------

def _upload_status(srv, d):
    st, r = put_profile(Api(srv), d["PayloadIdentifier"], plistlib.dumps(d))
    return st, r


def test_upload_without_top_level_payload_version_is_refused(server):
    d = profile_dict("com.example.nover")
    del d["PayloadVersion"]
    st, r = _upload_status(server, d)
    assert st == 400, (st, r)


def test_upload_with_string_payload_version_is_refused(server):
    d = profile_dict("com.example.strver")
    d["PayloadVersion"] = "1"
    st, r = _upload_status(server, d)
    assert st == 400, (st, r)


def test_upload_with_payload_missing_payload_version_is_refused(server):
    d = profile_dict("com.example.innernover")
    del d["PayloadContent"][0]["PayloadVersion"]
    st, r = _upload_status(server, d)
    assert st == 400, (st, r)


def test_upload_with_duplicate_payload_uuid_is_refused(server):
    d = profile_dict("com.example.dupuuid")
    second = dict(d["PayloadContent"][0])
    second["PayloadIdentifier"] = "com.example.dupuuid.wifi2"
    d["PayloadContent"].append(second)        # same PayloadUUID as the first payload
    st, r = _upload_status(server, d)
    assert st == 400, (st, r)


def _set(d, path, value):
    """Sets d[path] where path is "Key" or "0.Key" (a payload in PayloadContent)."""
    if "." in path:
        i, key = path.split(".", 1)
        d["PayloadContent"][int(i)][key] = value
    else:
        d[path] = value


def test_upload_with_wrong_key_types_is_refused_naming_the_key(server):
    """TopLevel.yaml / CommonPayloadKeys.yaml: the types of the top-level
    and common payload keys, and non-empty PayloadType/PayloadIdentifier."""
    bad = {
        "PayloadDisplayName": 5,
        "PayloadDescription": ["x"],
        "PayloadOrganization": True,
        "PayloadRemovalDisallowed": "yes",
        "PayloadScope": 1,
        "ConsentText": "read me",
        "0.PayloadType": "",
        "0.PayloadIdentifier": "",
        "0.PayloadDisplayName": 1.5,
        "0.PayloadDescription": {"a": 1},
        "0.PayloadOrganization": 7,
    }
    for path, value in bad.items():
        d = profile_dict("com.example.types")
        _set(d, path, value)
        st, r = _upload_status(server, d)
        key = path.split(".")[-1]
        assert st == 400, (path, st, r)
        msg = r["error"]["message"] if isinstance(r.get("error"), dict) else str(r)
        assert key in msg, (path, msg)
        if path.startswith("0."):
            assert "PayloadContent[0]" in msg, (path, msg)
    # The same keys with the right types are accepted.
    d = profile_dict("com.example.types")
    for path, value in {"PayloadDescription": "d", "PayloadOrganization": "o",
                        "PayloadRemovalDisallowed": False, "PayloadScope": "System",
                        "0.PayloadDisplayName": "w", "0.PayloadOrganization": "o"}.items():
        _set(d, path, value)
    st, r = _upload_status(server, d)
    assert st == 201, r


# ---- reconciliation ---------------------------------------------------------

def test_reenrolled_device_gets_its_profiles_again(tmpdir_path, datadir):
    """CheckOut (the device removes every MDM profile), then the same device
    enrolls again: the installed table still says "installed"."""
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"]
        assert dev.run() == []
        st, _ = dev.checkin("CheckOut")
        assert st == 200
        dev.close()
        again = Device(srv, udid=dev.udid, serial=dev.serial)   # a new identity after the wipe
        again.enroll()
        assert types(again.run()) == ["InstallProfile"]
    finally:
        assert srv.stop() == 0


def test_reenrollment_with_install_still_queued(tmpdir_path, datadir):
    """Authenticate clears the queue ("Cleared"): the InstallProfile that was
    waiting is gone but the installed table keeps it "pending" forever."""
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv)
        dev.enroll()                      # InstallProfile queued, never fetched
        dev.enroll()                      # re-enrollment: queue cleared
        st, r = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202, r
        assert types(dev.run()) == ["InstallProfile"]
    finally:
        assert srv.stop() == 0


def test_cancelled_install_is_queued_again(tmpdir_path, datadir):
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv)
        dev.enroll()
        st, r = api.call("GET", "/v1/devices/%s/commands" % dev.udid)
        assert st == 200, r
        uuids = [c["command_uuid"] for c in r["commands"]
                 if c.get("request_type") == "InstallProfile"]
        assert len(uuids) == 1, r
        st, r = api.call("DELETE", "/v1/devices/%s/commands/%s" % (dev.udid, uuids[0]))
        assert st == 200, r
        assert dev.run() == []
        # Even an explicit (forced) reconciliation does not queue it again.
        st, r = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202, r
        assert types(dev.run()) == ["InstallProfile"]
    finally:
        assert srv.stop() == 0


def test_install_given_up_after_notnow_limit_is_queued_again(tmpdir_path, datadir):
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"],
                        extra="\n  mdm = { notnow_max = 1 },")
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv)
        dev.enroll()
        for _ in range(2):                # NotNow twice: the second exceeds the limit
            got = dev.run(lambda c: ("NotNow", {}))
            assert types(got) == ["InstallProfile"]
        assert dev.run() == []
        st, r = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202, r
        assert types(dev.run()) == ["InstallProfile"]
    finally:
        assert srv.stop() == 0


def test_profile_update_is_sent_to_devices_that_have_it(tmpdir_path, datadir):
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi", "Old"))[0] == 201
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"]
        st, r = put_profile(api, "com.example.wifi", profile("com.example.wifi", "New"))
        assert st == 200, r
        assert types(dev.run()) == ["InstallProfile"]
    finally:
        assert srv.stop() == 0


def test_failed_update_still_removes_the_installed_version(tmpdir_path, datadir):
    """v1 installed; the update to v2 is refused by the device (v1 stays on
    it); then the policy no longer wants the profile: v1 must be removed."""
    srv, api, pdir = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi", "Old"))[0] == 201
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"]
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi", "New"))[0] == 200
        st, r = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202, r
        got = dev.run(lambda c: ("Error", {"ErrorChain": [
            {"ErrorCode": 4001, "ErrorDomain": "MCProfileErrorDomain",
             "LocalizedDescription": "refused", "USEnglishDescription": "refused"}]}))
        assert types(got) == ["InstallProfile"]
        write_policy(pdir, [])
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200, r
        got = dev.run()
        assert types(got) == ["RemoveProfile"], types(got)
    finally:
        assert srv.stop() == 0


def test_failed_removal_is_retried_at_later_reconciliations(tmpdir_path, datadir):
    """RemoveProfile answered with Error: the profile is still on the
    device. The entry stays and RemoveProfile is queued again at later
    reconciliations, at most 3 times in all unless forced; a success or a
    ProfileList without it ends it."""
    srv, api, pdir = start(tmpdir_path, datadir, ["com.example.wifi"])
    error = lambda c: ("Error", {"ErrorChain": [  # noqa: E731
        {"ErrorCode": 4002, "ErrorDomain": "MCProfileErrorDomain",
         "LocalizedDescription": "busy", "USEnglishDescription": "busy"}]})

    def new_revision(n):
        with open(os.path.join(pdir, "wanted.lua"), "w") as f:
            f.write("-- revision %d\nreturn { profiles = { } }\n" % n)
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200, r

    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"]
        for n in range(3):
            new_revision(n)
            got = dev.run(error)
            assert types(got) == ["RemoveProfile"], (n, types(got))
        st, show = api.call("GET", "/v1/devices/" + dev.udid)
        srv.wait_log(r"event=reconcile.remove_failed .*identifier=com.example.wifi failures=3")
        new_revision(3)
        assert dev.run() == []               # given up until forced
        st, r = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202, r
        got = dev.run()
        assert types(got) == ["RemoveProfile"], types(got)
        new_revision(4)
        assert dev.run() == []               # removed: nothing left to do
    finally:
        assert srv.stop() == 0


# ---- malformed uploads (run with MOONMDM_VALGRIND=1 for leaks) -------------

def test_malformed_uploads_are_refused_cleanly(server):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7
    ca_cert, ca_key = pki.make_ca("Uploader")
    cert, key = pki.issue_client(ca_cert, ca_key, "signer")

    def signed(data, detached=False):
        opts = [pkcs7.PKCS7Options.Binary]
        if detached:
            opts.append(pkcs7.PKCS7Options.DetachedSignature)
        return (pkcs7.PKCS7SignatureBuilder().set_data(data)
                .add_signer(cert, key, hashes.SHA256())
                .sign(serialization.Encoding.DER, opts))

    api = Api(server)
    good = profile("com.example.bad")
    bad = {
        "one byte 0x30": b"0",
        "truncated DER": b"\x30\x82\xff\xff\x06\x09",
        "signed, detached": signed(good, detached=True),
        "signed, not a plist": signed(b"hello"),
        "signed, signed inside": signed(signed(good)),
        "top array": plistlib.dumps([1, 2]),
        "binary top array": plistlib.dumps([1, 2], fmt=plistlib.FMT_BINARY),
        "content dict": plistlib.dumps(dict(profile_dict("com.example.bad"), PayloadContent={})),
        "content item string": plistlib.dumps(dict(profile_dict("com.example.bad"),
                                                   PayloadContent=["x"])),
        "deep": b"<plist><array>" * 2000 + b"</array></plist>" * 2000,
        "id too long": plistlib.dumps(dict(profile_dict("a" * 300))),
    }
    for name, body in bad.items():
        st, r = put_profile(api, "com.example.bad", body)
        assert st == 400, (name, st, r)
    st, r = put_profile(api, "com.example.bad", signed(good))
    assert st == 201, r
    st, r = put_profile(api, "com.example.bad",
                        plistlib.dumps(profile_dict("com.example.bad"), fmt=plistlib.FMT_BINARY))
    assert st == 200, r


# ---- encrypted profiles ------------------------------------------------------

def _installed_profile(srv, api, dev, tmpdir_path):
    """Enrolls dev, takes the InstallProfile it gets and returns the
    profile dictionary inside the server's signature."""
    from test_enroll import cms_verify
    assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
    dev.enroll()
    got = dev.run()
    assert types(got) == ["InstallProfile"], types(got)
    payload = got[0]["Command"]["Payload"]
    return plistlib.loads(cms_verify(payload, srv.datadir.ca_crt, tmpdir_path))


def _decrypt_with(dev, der, tmpdir_path):
    from test_enroll import cms_decrypt
    cert_path, key_path = pki.write_pair(tmpdir_path, "recip-" + dev.udid, dev.cert, dev.key)
    return plistlib.loads(cms_decrypt(der, cert_path, key_path, tmpdir_path))


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_encrypted_profile_says_is_encrypted(tmpdir_path, datadir, key_type):
    """TopLevel: PayloadContent is required unless IsEncrypted is true. A
    device whose identity key is EC gets its profile encrypted too (ECDH
    key agreement), not in the clear."""
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        dev = Device(srv, key=pki.new_key(key_type))
        inner = _installed_profile(srv, api, dev, tmpdir_path)
        assert "PayloadContent" not in inner, inner
        assert inner.get("IsEncrypted") is True, inner
        content = _decrypt_with(dev, inner["EncryptedPayloadContent"], tmpdir_path)
        assert content[0]["SSID_STR"] == "Office", content
        assert content[0]["Password"] == "wifi-secret", content
    finally:
        assert srv.stop() == 0


def test_user_channel_profile_is_encrypted_to_the_device_identity(tmpdir_path, datadir):
    """A user channel has no identity certificate of its own: its profiles
    are encrypted to the device's, which decrypts them."""
    from test_enroll import cms_verify
    from test_checkin_edges import USER
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv, key=pki.new_key("rsa"))
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"]
        dev.user = USER
        assert dev.token_update() == 200
        got = dev.run()
        assert types(got) == ["InstallProfile"], (types(got), srv.log()[-2000:])
        inner = plistlib.loads(cms_verify(got[0]["Command"]["Payload"], srv.datadir.ca_crt,
                                          tmpdir_path))
        assert inner.get("IsEncrypted") is True and "PayloadContent" not in inner, inner
        content = _decrypt_with(dev, inner["EncryptedPayloadContent"], tmpdir_path)
        assert content[0]["Password"] == "wifi-secret", content
    finally:
        assert srv.stop() == 0


def test_profile_for_a_key_cms_cannot_encrypt_to_is_not_sent_in_the_clear(tmpdir_path, datadir):
    """An Ed25519 identity: CMS has no encryption to it. The profile is not
    sent (an error naming the enrollment is logged) rather than sent in
    the clear."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    srv, api, _ = start(tmpdir_path, datadir, ["com.example.wifi"])
    try:
        assert put_profile(api, "com.example.wifi", profile("com.example.wifi"))[0] == 201
        dev = Device(srv, key=ed25519.Ed25519PrivateKey.generate())
        dev.enroll()
        got = dev.run()
        assert "InstallProfile" not in types(got), types(got)
        srv.wait_log(r"event=reconcile.render_failed .*identifier=com.example.wifi")
    finally:
        assert srv.stop() == 0
