"""Enrollment: the page, the signed enrollment profile checked against
Apple's schemas, SCEP with its challenge (Debian's scepclient), the device
checking in with the issued identity, and the OTA profile service."""
import os
import plistlib
import subprocess

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

import pki
import schema_check
from conftest import Server, run
from device import TOPIC, Api, Device
from test_scep import enroll as scep_enroll
from test_scep import new_challenge, ra_fingerprint, scep_datadir, scepclient


def cms_verify(der, ca_file, tmpdir):
    """Verifies a signed profile with openssl; returns the signed content."""
    path = os.path.join(tmpdir, "signed.der")
    with open(path, "wb") as f:
        f.write(der)
    p = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", path,
                        "-CAfile", ca_file, "-purpose", "any"], capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def cms_decrypt(der, cert_path, key_path, tmpdir):
    path = os.path.join(tmpdir, "enc.der")
    with open(path, "wb") as f:
        f.write(der)
    p = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", path,
                        "-recip", cert_path, "-inkey", key_path], capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


@pytest.fixture
def esrv(tmpdir_path):
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    d.write_config('  enroll = { topic = "%s" },' % TOPIC)
    s = Server(d, plain=True)
    yield s
    assert s.stop() == 0


def test_enrollment_page_is_accessible_and_safe(esrv):
    r = requests.get(esrv.url + "/enroll", verify=esrv.datadir.ca_crt, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert 'name="username"' in r.text and 'type="password"' in r.text
    assert '<label for="username">' in r.text and 'lang="en"' in r.text
    assert "<script" not in r.text
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert r.headers["Cache-Control"] == "no-store"


def test_enrollment_page_form_keeps_ota(esrv):
    """The page of /enroll?ota=1 posted its form to /enroll: a person who
    signed in there got the configuration profile, not the OTA profile
    service the link asked for."""
    r = requests.get(esrv.url + "/enroll?ota=1", verify=esrv.datadir.ca_crt, timeout=10)
    assert 'action="/enroll?ota=1"' in r.text, r.text
    r = requests.get(esrv.url + "/enroll", verify=esrv.datadir.ca_crt, timeout=10)
    assert 'action="/enroll"' in r.text, r.text


def test_no_authenticate_hook_means_no_profile(esrv):
    secret = "s3cret-pass-" + os.urandom(4).hex()
    r = requests.post(esrv.url + "/enroll", data={"username": "alice", "password": secret},
                      verify=esrv.datadir.ca_crt, timeout=10)
    assert r.status_code == 403 and "Sign-in failed" in r.text
    assert r.headers["Content-Type"].startswith("text/html")
    r = requests.get(esrv.url + "/enroll", auth=("alice", secret), verify=esrv.datadir.ca_crt,
                     timeout=10)
    assert r.status_code == 403 and "no authenticate hook" in r.json()["detail"]
    esrv.wait_log(r"event=enroll.authenticate .*user=alice allow=false "
                  r'reason="no authenticate hook')
    assert secret not in esrv.log()


def test_enroll_profile_end_to_end_with_scepclient(esrv, tmpdir_path):
    d = esrv.datadir
    out = os.path.join(tmpdir_path, "enroll.mobileconfig")
    run("enroll-profile", "--config", d.config, "--user", "alice", "--out", out)
    signed = open(out, "rb").read()
    profile = plistlib.loads(cms_verify(signed, d.ca_crt, tmpdir_path))
    assert schema_check.check_profile(profile) == []
    types = [p["PayloadType"] for p in profile["PayloadContent"]]
    assert types == ["com.apple.security.root", "com.apple.security.scep", "com.apple.mdm"]
    ca, scep, mdm = profile["PayloadContent"]
    assert x509.load_der_x509_certificate(ca["PayloadContent"]) == \
        x509.load_pem_x509_certificate(open(d.ca_crt, "rb").read())
    sc = scep["PayloadContent"]
    assert sc["Keysize"] == 2048 and sc["Key Type"] == "RSA" and sc["Key Usage"] == 5
    assert ["CN", "alice's device"] in [rdn[0] for rdn in sc["Subject"]]
    assert mdm["IdentityCertificateUUID"] == scep["PayloadUUID"]
    assert mdm["Topic"] == TOPIC and mdm["AccessRights"] == 8191
    assert mdm["CheckOutWhenRemoved"] is True and mdm["SignMessage"] is False
    assert mdm["ServerURL"].endswith("/mdm/connect") and mdm["CheckInURL"].endswith("/mdm/checkin")
    uuids = [p["PayloadUUID"] for p in profile["PayloadContent"]] + [profile["PayloadUUID"]]
    assert len(set(uuids)) == len(uuids)

    # The device gets its identity over SCEP with the profile's challenge.
    work = os.path.join(tmpdir_path, "scep")
    p = scepclient(esrv, work, sc["Challenge"], ["-ca-fingerprint", ra_fingerprint(d)])
    assert p.returncode == 0, p.stdout + p.stderr
    cert = x509.load_pem_x509_certificate(open(os.path.join(work, "client.pem"), "rb").read())
    key = serialization.load_pem_private_key(open(os.path.join(work, "key.pem"), "rb").read(),
                                             None)
    # ... and checks in with it; the enrolled user comes with the challenge.
    dev = Device(esrv, cert=cert, key=key)
    dev.enroll()
    st, show = Api(esrv).call("GET", "/v1/devices/" + dev.udid)
    assert show["user"] == "alice"
    assert show["identity_certificate"]["serial"] == format(cert.serial_number, "X")
    # The challenge was used once.
    p = scepclient(esrv, os.path.join(tmpdir_path, "again"), sc["Challenge"],
                   ["-ca-fingerprint", ra_fingerprint(d)])
    assert p.returncode != 0
    assert sc["Challenge"] not in esrv.log()

    # CheckOut revokes the identity; the revoked certificate is refused.
    st, _ = dev.checkin("CheckOut", Topic=TOPIC)
    assert st == 200
    listing = run("cert", "list", "--config", d.config).stdout
    line = next(l for l in listing.splitlines() if format(cert.serial_number, "X") in l)
    assert "revoked" in line.lower(), listing
    dev.close()
    assert dev.authenticate() == 403
    esrv.wait_log(r"detail=\"the identity certificate is revoked\"")


def test_ota_phase3_profile_is_encrypted_to_the_device(esrv, tmpdir_path):
    d = esrv.datadir
    # An identity this server issued over SCEP (phase 3 takes no other).
    client, cert = scep_enroll(esrv, d, new_challenge(d))
    key = client.key
    attrs = plistlib.dumps({"UDID": "OTA-UDID-1", "SERIAL": "C0OTA", "PRODUCT": "iPhone15,2",
                            "VERSION": "21F79"})
    body = (pkcs7.PKCS7SignatureBuilder().set_data(attrs).add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    r = requests.post(esrv.url + "/ota/profile", data=body, verify=d.ca_crt, timeout=10,
                      headers={"Content-Type": "application/pkcs7-signature"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-apple-aspen-config"
    profile = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
    assert "PayloadContent" not in profile
    c, k = pki.write_pair(tmpdir_path, "ota", cert, key)
    content = plistlib.loads(cms_decrypt(profile["EncryptedPayloadContent"], c, k, tmpdir_path))
    assert [p["PayloadType"] for p in content][-1] == "com.apple.mdm"
    profile["PayloadContent"] = content
    del profile["EncryptedPayloadContent"]
    assert schema_check.check_profile(profile) == []
    esrv.wait_log(r"event=enroll.ota_phase3 .*udid=OTA-UDID-1 encrypted=true")

    # Tampered or truncated bodies, or a signer from another CA: refused.
    for bad in [body[:-40], body[:100], b"\x30\x03\x02\x01\x00", os.urandom(300)]:
        r = requests.post(esrv.url + "/ota/profile", data=bad, verify=d.ca_crt, timeout=10)
        assert r.status_code in (400, 403), r.status_code
    other_ca, other_key = pki.make_ca()
    ocert, okey = pki.issue_client(other_ca, other_key, "x", key=pki.new_key("rsa"))
    obody = (pkcs7.PKCS7SignatureBuilder().set_data(attrs).add_signer(ocert, okey, hashes.SHA256())
             .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    r = requests.post(esrv.url + "/ota/profile", data=obody, verify=d.ca_crt, timeout=10)
    assert r.status_code == 403


def test_enroll_profile_needs_a_topic(tmpdir_path):
    d = scep_datadir(tmpdir_path)
    p = run("enroll-profile", "--config", d.config, check=False)
    assert p.returncode != 0 and "no APNs topic" in p.stderr


def _profile_bytes(identifier="com.example.vpn"):
    import uuid as uuidlib
    return plistlib.dumps({
        "PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuidlib.uuid4()).upper(), "PayloadDisplayName": "VPN",
        "PayloadContent": [{"PayloadType": "com.apple.security.pem", "PayloadVersion": 1,
                            "PayloadIdentifier": identifier + ".cert",
                            "PayloadUUID": str(uuidlib.uuid4()).upper(),
                            "PayloadContent": b"-----BEGIN CERTIFICATE-----\n"}]})


def test_profile_cli_signs_and_encrypts(esrv, tmpdir_path):
    d = esrv.datadir
    src = os.path.join(tmpdir_path, "vpn.mobileconfig")
    with open(src, "wb") as f:
        f.write(_profile_bytes())
    signed_path = os.path.join(tmpdir_path, "signed.mobileconfig")
    run("profile", "sign", src, "--out", signed_path, "--config", d.config)
    signed = plistlib.loads(cms_verify(open(signed_path, "rb").read(), d.ca_crt, tmpdir_path))
    assert signed == plistlib.loads(open(src, "rb").read())

    ca_cert, ca_key = pki.load_ca(d)
    cert, key = pki.issue_client(ca_cert, ca_key, "laptop", key=pki.new_key("rsa"))
    c, k = pki.write_pair(tmpdir_path, "laptop", cert, key)
    enc_path = os.path.join(tmpdir_path, "enc.mobileconfig")
    run("profile", "encrypt", src, "--cert", c, "--out", enc_path, "--config", d.config)
    enc = plistlib.loads(cms_verify(open(enc_path, "rb").read(), d.ca_crt, tmpdir_path))
    assert "PayloadContent" not in enc and enc["PayloadIdentifier"] == "com.example.vpn"
    content = plistlib.loads(cms_decrypt(enc["EncryptedPayloadContent"], c, k, tmpdir_path))
    assert content == plistlib.loads(open(src, "rb").read())["PayloadContent"]
    enc["PayloadContent"] = content
    del enc["EncryptedPayloadContent"]
    assert schema_check.check_profile(enc) == []
    # Unsigned output is plain XML.
    p = run("profile", "encrypt", src, "--cert", c, "--no-sign", "--config", d.config)
    assert p.stdout.startswith("<?xml")
    # An EC device certificate: ECDH key agreement.
    ec, eck = pki.issue_client(ca_cert, ca_key, "ec")
    ecp, eckp = pki.write_pair(tmpdir_path, "ec", ec, eck)
    run("profile", "encrypt", src, "--cert", ecp, "--out", enc_path, "--config", d.config)
    enc = plistlib.loads(cms_verify(open(enc_path, "rb").read(), d.ca_crt, tmpdir_path))
    assert enc["IsEncrypted"] is True
    content = plistlib.loads(cms_decrypt(enc["EncryptedPayloadContent"], ecp, eckp, tmpdir_path))
    assert content == plistlib.loads(open(src, "rb").read())["PayloadContent"]
    # Bad input: not a profile, a key CMS cannot encrypt to, a missing --cert.
    with open(os.path.join(tmpdir_path, "junk"), "wb") as f:
        f.write(b"junk")
    bad = run("profile", "sign", os.path.join(tmpdir_path, "junk"), "--config", d.config,
              check=False)
    assert bad.returncode == 1 and "not a property list" in bad.stderr
    from cryptography.hazmat.primitives.asymmetric import ed25519
    ed, edk = pki.issue_client(ca_cert, ca_key, "ed", key=ed25519.Ed25519PrivateKey.generate())
    edp, _ = pki.write_pair(tmpdir_path, "ed", ed, edk)
    bad = run("profile", "encrypt", src, "--cert", edp, "--config", d.config, check=False)
    assert bad.returncode == 1 and "RSA or EC" in bad.stderr, bad.stderr
    assert run("profile", "encrypt", src, check=False).returncode == 2


AUTH_POLICY = '''
local users = { alice = mdm.password.hash("wonderland") }
return {
  authenticate = function(req)
    if req.username and users[req.username] and mdm.password.verify(req.password or "", users[req.username]) then
      return { allow = true, user = req.username }
    end
    if req.device and req.device.SERIAL == "OTA-SERIAL-1" then
      return { allow = true, user = req.username or "ota" }
    end
    return { allow = false, reason = "denied by the test policy" }
  end,
}
'''


def ota_server(tmpdir_path):
    """A server for the OTA profile service: AUTH_POLICY decides sign-ins,
    and a made-up Apple device CA is enroll.ota_trust. Returns the server,
    its data directory and that CA's certificate and key."""
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(AUTH_POLICY)
    apple_ca, apple_key = pki.make_ca("Test Apple iPhone Device CA")
    apple_ca_path = os.path.join(tmpdir_path, "apple-device-ca.pem")
    with open(apple_ca_path, "wb") as f:
        f.write(apple_ca.public_bytes(serialization.Encoding.PEM))
    d = scep_datadir(tmpdir_path)
    d.write_config('  enroll = { topic = "%s", ota_trust = { "%s" } },\n  policy = { dir = "%s" },'
                   % (TOPIC, apple_ca_path, pdir))
    return Server(d, plain=True), d, apple_ca, apple_key


def test_python_device_enrolls_end_to_end_and_over_ota(tmpdir_path):
    from test_scep import enroll as scep_enroll
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        # Scripted enrollment with HTTP Basic; the profile's challenge goes
        # to the Python SCEP client; the identity checks in.
        r = requests.get(srv.url + "/enroll", auth=("alice", "wonderland"), verify=d.ca_crt,
                         timeout=30)
        assert r.status_code == 200, r.text
        prof = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        challenge = prof["PayloadContent"][1]["PayloadContent"]["Challenge"]
        client, cert = scep_enroll(srv, d, challenge)
        dev = Device(srv, cert=cert, key=client.key)
        dev.enroll()
        assert Api(srv).call("GET", "/v1/devices/" + dev.udid)[1]["user"] == "alice"
        # The challenge was one-time.
        from test_scep import Client, Reply, pki_op, recipient_of
        again = Client()
        rep = Reply(pki_op(srv, again.message(recipient_of(d), challenge=challenge)).content)
        assert rep.status == 2 and rep.fail_info == 2
        assert requests.get(srv.url + "/enroll", auth=("alice", "nope"), verify=d.ca_crt,
                            timeout=30).status_code == 403

        # OTA: phase 1 profile service, signed device attributes, SCEP, phase 3.
        r = requests.get(srv.url + "/enroll?ota=1", auth=("alice", "wonderland"),
                         verify=d.ca_crt, timeout=30)
        svc = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        assert svc["PayloadType"] == "Profile Service"
        assert svc["PayloadContent"]["URL"].endswith("/ota/profile")
        ota_challenge = svc["PayloadContent"]["Challenge"]
        dcert, dkey = pki.issue_client(apple_ca, apple_key, "Apple device", key=pki.new_key("rsa"))
        attrs = plistlib.dumps({"UDID": "OTA-UDID-2", "SERIAL": "OTA-SERIAL-1",
                                "PRODUCT": "iPhone15,2", "VERSION": "21F79",
                                "CHALLENGE": ota_challenge})
        phase1 = (pkcs7.PKCS7SignatureBuilder().set_data(attrs)
                  .add_signer(dcert, dkey, hashes.SHA256())
                  .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
        r = requests.post(srv.url + "/ota/profile", data=phase1, verify=d.ca_crt, timeout=30)
        assert r.status_code == 200, r.text
        p2 = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        assert [p["PayloadType"] for p in p2["PayloadContent"]][-1] == "com.apple.security.scep"
        assert schema_check.check_profile(p2) == []
        srv.wait_log(r"event=enroll.ota_phase1 .*udid=OTA-UDID-2")
        # The phase-1 challenge is spent: replaying the request fails.
        r = requests.post(srv.url + "/ota/profile", data=phase1, verify=d.ca_crt, timeout=30)
        assert r.status_code == 403
        scep_challenge = p2["PayloadContent"][-1]["PayloadContent"]["Challenge"]
        ota_client, identity = scep_enroll(srv, d, scep_challenge)
        phase3 = (pkcs7.PKCS7SignatureBuilder().set_data(attrs)
                  .add_signer(identity, ota_client.key, hashes.SHA256())
                  .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
        r = requests.post(srv.url + "/ota/profile", data=phase3, verify=d.ca_crt, timeout=30)
        assert r.status_code == 200
        final = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        c, k = pki.write_pair(tmpdir_path, "ota-id", identity, ota_client.key)
        content = plistlib.loads(cms_decrypt(final["EncryptedPayloadContent"], c, k, tmpdir_path))
        assert content[-1]["PayloadType"] == "com.apple.mdm" and content[-1]["Topic"] == TOPIC
        # A phase-1 body signed by a CA that is not the configured device CA.
        other_ca, other_key = pki.make_ca()
        ocert, okey = pki.issue_client(other_ca, other_key, "fake", key=pki.new_key("rsa"))
        fake = (pkcs7.PKCS7SignatureBuilder().set_data(attrs).add_signer(ocert, okey, hashes.SHA256())
                .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
        assert requests.post(srv.url + "/ota/profile", data=fake, verify=d.ca_crt,
                             timeout=30).status_code == 400
        assert ota_challenge not in srv.log() and scep_challenge not in srv.log()
    finally:
        assert srv.stop() == 0


def test_ota_phase3_with_a_full_store_is_503_with_its_cause(tmpdir_path):
    """A store that is full when phase 3 stores its challenge: 503 with
    Retry-After (the device may retry later), not a 500."""
    from test_faults import _fill, _shrink_map
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    _shrink_map(d, 2 << 20)
    d.write_config('  enroll = { topic = "%s" },\n'
                   '  store = { path = "db", map_size = "2MiB", map_max = "2MiB" },' % TOPIC)
    srv = Server(d, plain=True)
    try:
        client, cert = scep_enroll(srv, d, new_challenge(d))
        dev = Device(srv)
        dev.enroll()
        api = Api(srv)
        for size in (64 * 1024, 4096, 256, 1):
            ok, refused = _fill(api, [dev.udid], size, 2000)
            assert refused is not None and refused[0] == 503, (size, len(ok), refused)
        # The last pages go to challenges, the records phase 3 writes.
        for i in range(5000):
            st, _ = api.call("POST", "/v1/challenges", {})
            if st == 503:
                break
            assert st in (200, 201), st
        assert st == 503
        attrs = plistlib.dumps({"UDID": "OTA-FULL-1", "PRODUCT": "iPhone15,2"})
        body = (pkcs7.PKCS7SignatureBuilder().set_data(attrs)
                .add_signer(cert, client.key, hashes.SHA256())
                .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
        r = requests.post(srv.url + "/ota/profile", data=body, verify=d.ca_crt, timeout=30,
                          headers={"Content-Type": "application/pkcs7-signature"})
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers.get("Retry-After"), r.headers
    finally:
        assert srv.stop() == 0
