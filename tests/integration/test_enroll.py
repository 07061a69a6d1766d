"""Enrollment: the page, the signed enrollment profile checked against
Apple's schemas, SCEP with its challenge (Debian's scepclient), the device
checking in with the issued identity, and the OTA profile service."""
import base64
import os
import plistlib
import re
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
from test_scep import ra_fingerprint, scep_datadir, scepclient


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
    ca_cert, ca_key = pki.load_ca(d)
    cert, key = pki.issue_client(ca_cert, ca_key, "ota device", key=pki.new_key("rsa"))
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
