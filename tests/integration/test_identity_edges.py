"""Identity checks that must refuse: a revoked certificate on every check-in
message (GetToken, UserAuthenticate, CheckOut), and an expired TLS client
certificate on a kept-alive connection or a resumed TLS session."""
import datetime
import os
import plistlib
import socket
import ssl
import time

import pytest
import requests

import pki
from conftest import Server, http_request, read_response
from device import CONNECT_CT, TOPIC, Api, Device
from test_scep import base, enroll, new_challenge, scep_datadir, stop_clean

POLICY = """
return {
  checkin = function(device, msg)
    if msg.MessageType == "GetToken" then
      return { respond = { TokenData = "secret-token-for-" .. (msg.UDID or "?") } }
    end
    if msg.MessageType == "UserAuthenticate" then
      return { respond = { DigestChallenge = "" } }
    end
    return nil
  end,
}
"""


@pytest.fixture
def scep_srv(tmpdir_path):
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(POLICY)
    d.write_config('  policy = { dir = "%s" },' % pdir)
    s = Server(d, plain=True)
    yield s
    stop_clean(s)


def revoke(srv, cert):
    serial = format(cert.serial_number, "X")
    r = requests.post(base(srv) + f"/v1/certs/{serial}/revoke", json={"reason": 1}, timeout=10,
                      headers={"Authorization": "Bearer " + srv.datadir.api_key})
    assert r.status_code == 200, r.text


def scep_device(srv):
    d = srv.datadir
    c, cert = enroll(srv, d, new_challenge(d))
    return Device(srv, cert=cert, key=c.key)


def test_revoked_certificate_cannot_get_token(scep_srv):
    dev = scep_device(scep_srv)
    dev.enroll()
    st, body = dev.checkin("GetToken", TokenServiceType="com.apple.maid")
    assert st == 200 and plistlib.loads(body)["TokenData"].startswith(b"secret-token")
    revoke(scep_srv, dev.cert)
    assert dev.idle()[0] == 403  # reports are refused...
    st, body = dev.checkin("GetToken", TokenServiceType="com.apple.maid")
    # ...and so must every other check-in be.
    assert st == 403, (st, body)


def test_revoked_certificate_cannot_user_authenticate(scep_srv):
    dev = scep_device(scep_srv)
    dev.enroll()
    revoke(scep_srv, dev.cert)
    st, body = dev.checkin("UserAuthenticate", UserID="E4A5F9E1-0000-4000-8000-00000000AAAA")
    assert st == 403, (st, body)


def test_revoked_certificate_cannot_check_out(scep_srv):
    dev = scep_device(scep_srv)
    dev.enroll()
    revoke(scep_srv, dev.cert)
    st, body = dev.checkin("CheckOut", Topic=TOPIC)
    assert st == 403, (st, body)
    st, show = Api(scep_srv).call("GET", "/v1/devices/" + dev.udid)
    assert show.get("checked_out_at") in (None, 0), show


def test_expired_certificate_through_tls_session_resumption(server, tmpdir_path):
    ca_cert, ca_key = pki.load_ca(server.datadir)
    na = pki.now().replace(microsecond=0) + datetime.timedelta(seconds=6)
    cert, key = pki.issue_client(ca_cert, ca_key, "short-lived", not_after=na)
    c, k = pki.write_pair(tmpdir_path, "short", cert, key)
    dev = Device(server, cert=cert, key=key)
    dev.enroll()
    dev.close()
    ctx = server.ssl_context(c, k)
    body = plistlib.dumps({"Status": "Idle", "UDID": dev.udid})
    hdrs = {"Content-Type": CONNECT_CT}
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        http_request(s, "PUT", "/mdm/connect", hdrs, body)
        assert read_response(s).status == 200
        sess = s.session
    # Wait until the certificate has expired.
    while pki.now() < na + datetime.timedelta(seconds=2):
        time.sleep(0.5)
    # A fresh handshake is refused.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            http_request(s, "PUT", "/mdm/connect", hdrs, body)
            read_response(s)
    # A resumed session must be refused too.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=sess) as s:
        assert s.session_reused
        http_request(s, "PUT", "/mdm/connect", hdrs, body)
        st = read_response(s).status
    assert st == 403, f"expired certificate accepted through a resumed session: {st}"


def test_expired_certificate_on_a_kept_alive_connection(server, tmpdir_path):
    ca_cert, ca_key = pki.load_ca(server.datadir)
    na = pki.now().replace(microsecond=0) + datetime.timedelta(seconds=5)
    cert, key = pki.issue_client(ca_cert, ca_key, "short-lived", not_after=na)
    dev = Device(server, cert=cert, key=key)
    dev.enroll()
    assert dev.idle()[0] == 200
    while pki.now() < na + datetime.timedelta(seconds=2):
        time.sleep(0.5)
    st, _ = dev.idle()  # same keep-alive connection
    assert st == 403, f"expired certificate accepted on a kept-alive connection: {st}"



def foreign_device(srv, ca, serial, name):
    """A device whose certificate comes from another CA the server trusts,
    with the given serial number."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    ca_cert, ca_key = ca
    key = pki.new_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(pki.now() - datetime.timedelta(minutes=5))
            .not_valid_after(pki.now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Device(srv, cert=cert, key=key)


# tls.client_ca may trust another CA (devices migrated from another
# server). A certificate of that CA can carry the serial number of one this
# server issued: its CheckOut must not revoke ours, and ours being revoked
# must not refuse it.
def test_revocation_tells_certificates_of_two_cas_apart(tmpdir_path):
    from cryptography.hazmat.primitives import serialization
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    other = pki.make_ca("Migrated devices CA")
    other_pem = os.path.join(tmpdir_path, "other-ca.pem")
    with open(other_pem, "wb") as f:
        f.write(other[0].public_bytes(serialization.Encoding.PEM))
    d.write_config('  tls = { client_ca = { "%s", "%s" } },' % (d.ca_crt, other_pem))
    srv = Server(d, plain=True)
    try:
        ours = scep_device(srv)
        ours.enroll()
        serial = ours.cert.serial_number
        twin = foreign_device(srv, other, serial, "twin")
        twin.enroll()
        assert twin.checkin("CheckOut", Topic=TOPIC)[0] == 200
        assert ours.idle()[0] == 200  # our certificate was not revoked
        revoke(srv, ours.cert)
        assert ours.idle()[0] == 403
        twin2 = foreign_device(srv, other, serial, "twin2")
        assert twin2.authenticate() == 200  # not taken for the revoked one
    finally:
        stop_clean(srv)


def corrupt_signer_serial(sig_b64, cert):
    """The Mdm-Signature with the last byte of the SignerInfo's serial
    number (the sid) flipped; the signed attributes and signature stay."""
    import base64
    der = bytearray(base64.b64decode(sig_b64))
    n = cert.serial_number
    value = n.to_bytes((n.bit_length() + 8) // 8, "big")  # DER INTEGER, with a sign byte
    value = value[1:] if len(value) > 1 and value[0] == 0 and value[1] < 0x80 else value
    tlv = bytes([0x02, len(value)]) + value
    at = der.rfind(tlv)  # the certificate comes first, the SignerInfo last
    assert at > der.find(tlv) >= 0, "serial not found twice"
    der[at + len(tlv) - 1] ^= 0x01
    return base64.b64encode(bytes(der)).decode()


def test_signature_whose_signer_id_names_another_certificate(server):
    """The signature verifies with the certificate in the set, but its
    SignerInfo names another certificate (issuer and serial number). Both
    the full verification and the cached fast path must refuse it."""
    d = Device(server, sign=True)
    d.enroll()                      # the certificate is in the signature cache now
    body = plistlib.dumps({"Status": "Idle", "UDID": d.udid})
    bad = corrupt_signer_serial(d.signature(body), d.cert)
    for _ in range(2):
        st, _, _ = d.put("/mdm/connect", body, CONNECT_CT, extra_headers={"Mdm-Signature": bad})
        assert st == 400, st
    assert d.idle()[0] == 200       # the genuine signature still works


def test_reenrollment_names_the_new_certificates_owner(tmpdir_path):
    """The enrollment's user is the owner of the challenge its identity
    came from: a re-enrollment with a certificate nobody owns (a static
    challenge, a certificate of another CA) names no user, not the
    previous one (the policy sees it as the device's user)."""
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    srv = Server(d, plain=True)
    try:
        api = Api(srv)
        c, cert = enroll(srv, d, new_challenge(d, "--user", "alice"))
        first = Device(srv, cert=cert, key=c.key)
        first.enroll()
        assert api.call("GET", "/v1/devices/" + first.udid)[1]["user"] == "alice"
        c, cert = enroll(srv, d, new_challenge(d, "--user", "bob"))
        Device(srv, udid=first.udid, cert=cert, key=c.key).enroll()
        assert api.call("GET", "/v1/devices/" + first.udid)[1]["user"] == "bob"
        c, cert = enroll(srv, d, new_challenge(d))
        Device(srv, udid=first.udid, cert=cert, key=c.key).enroll()
        st, show = api.call("GET", "/v1/devices/" + first.udid)
        assert st == 200 and show["user"] is None, show
    finally:
        stop_clean(srv)


def test_checked_out_enrollment_is_not_revived_by_binding_on_first_sight(datadir, tmpdir_path):
    """mdm.bind_on_first_sight with a certificate of another CA (a device
    migrated from another server): CheckOut cannot revoke it, only unbind
    it. Its next message must not bind it again and bring the checked-out
    enrollment back; that takes a new Authenticate."""
    from cryptography.hazmat.primitives import serialization
    other_cert, other_key = pki.make_ca("Migrated devices CA")
    other_pem = os.path.join(tmpdir_path, "other-ca.pem")
    with open(other_pem, "wb") as f:
        f.write(other_cert.public_bytes(serialization.Encoding.PEM))
    datadir.write_config('  tls = { client_ca = { "%s", "%s" } },\n'
                         '  mdm = { bind_on_first_sight = true },' % (datadir.ca_crt, other_pem))
    srv = Server(datadir)
    try:
        api = Api(srv)
        cert, key = pki.issue_client(other_cert, other_key, "migrated device")
        d = Device(srv, cert=cert, key=key)
        assert d.token_update() == 200          # bound on first sight, no Authenticate
        assert d.idle()[0] == 200
        assert d.checkin("CheckOut", Topic=TOPIC)[0] == 200
        assert d.token_update() == 403
        assert d.idle()[0] == 403
        srv.wait_log(r"mdm\.checkin .*type=TokenUpdate http_status=403 .*checked out")
        st, show = api.call("GET", "/v1/devices/" + d.udid)
        assert st == 200 and show["enabled"] is False and show["checked_out_at"], show
        d.enroll()                              # a new Authenticate enrolls it again
        st, show = api.call("GET", "/v1/devices/" + d.udid)
        assert show["enabled"] is True and show["checked_out_at"] is None, show
        assert d.idle()[0] == 200
    finally:
        stop_clean(srv)
