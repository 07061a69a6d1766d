"""SCEP and the OTA profile service at their edges: phase 3 takes
only a live certificate this server issued and keeps the enrolling user; a
renewed certificate is superseded; the scep hook gets what POLICY.md
promises. Each test failed on b896aa4."""
import os
import plistlib

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

import pki
from conftest import Server, run
from device import TOPIC, Api, Device
from test_enroll import cms_decrypt, cms_verify, ota_server
from test_scep import (Client, Reply, api, enroll, make_csr, new_challenge, pki_op,
                       recipient_of, scep_datadir, stop_clean)


def phase_body(attrs, cert, key):
    return (pkcs7.PKCS7SignatureBuilder().set_data(plistlib.dumps(attrs))
            .add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))


def final_profile_challenge(srv, d, tmp, body, cert, key, name):
    """POSTs a phase-3 body; returns the SCEP challenge of the (encrypted)
    final profile."""
    r = requests.post(srv.url + "/ota/profile", data=body, verify=d.ca_crt, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    final = plistlib.loads(cms_verify(r.content, d.ca_crt, tmp))
    c, k = pki.write_pair(tmp, name, cert, key)
    content = plistlib.loads(cms_decrypt(final["EncryptedPayloadContent"], c, k, tmp))
    scep = [p for p in content if p["PayloadType"] == "com.apple.security.scep"][0]
    return scep["PayloadContent"]["Challenge"]


def cert_record(srv, d, cert):
    serial = format(cert.serial_number, "X")
    r = api(srv, "GET", "/v1/certs?limit=1000", d.api_key)
    assert r.status_code == 200, r.text
    return [x for x in r.json()["certs"] if x["serial"] == serial][0]


@pytest.fixture
def esrv(tmpdir_path):
    d = scep_datadir(tmpdir_path)
    d.write_config('  enroll = { topic = "%s" },' % TOPIC)
    s = Server(d, plain=True)
    yield s
    stop_clean(s)


def scep_server_with_policy(tmpdir_path, policy, extra=""):
    """A plain-HTTP SCEP server whose policy set is the one file policy;
    extra is more of the config. Returns the server and its data dir."""
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(policy)
    d = scep_datadir(tmpdir_path)
    d.write_config('%s\n  policy = { dir = "%s" },' % (extra, pdir))
    return Server(d, plain=True), d


# ---- 1. OTA phase 3 accepts a revoked identity ------------------------------


def test_ota_phase3_refuses_a_revoked_identity(esrv, tmpdir_path):
    d = esrv.datadir
    client, identity = enroll(esrv, d, new_challenge(d, "--user", "mallory"))
    serial = format(identity.serial_number, "X")
    r = api(esrv, "POST", f"/v1/certs/{serial}/revoke", d.api_key, {"reason": 1})
    assert r.status_code == 200 and r.json()["revoked"] is True
    # SCEP refuses to renew it (sanity: the revocation is recorded) ...
    csr = make_csr(client.key, "py-device").public_bytes(serialization.Encoding.DER)
    rep = Reply(pki_op(esrv, client.message(recipient_of(d), mtype=17, data=csr,
                                            signer=identity, key=client.key)).content)
    assert rep.status == 2 and rep.fail_info == 4
    # ... but the OTA phase 3 takes it as a valid identity and hands out a
    # fresh one-time SCEP challenge (and the MDM payload).
    body = phase_body({"UDID": "REVOKED-UDID", "SERIAL": "C0REVOKED"}, identity, client.key)
    r = requests.post(esrv.url + "/ota/profile", data=body, verify=d.ca_crt, timeout=30)
    if r.status_code == 200:
        ch = final_profile_challenge(esrv, d, tmpdir_path, body, identity, client.key, "rev")
        # which gets the holder of the revoked identity a brand-new one
        c2, fresh = enroll(esrv, d, ch)
        pytest.fail("phase 3 accepted a revoked identity (HTTP 200) and its challenge "
                    f"issued a new certificate {format(fresh.serial_number, 'X')}")
    assert r.status_code in (400, 403)


# ---- 2. OTA phase 3 drops the user ------------------------------------------


def test_ota_final_identity_keeps_the_enrolling_user(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        r = requests.get(srv.url + "/enroll?ota=1", auth=("alice", "wonderland"),
                         verify=d.ca_crt, timeout=30)
        assert r.status_code == 200, r.text
        svc = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        attrs = {"UDID": "OTA-UDID-OWNER", "SERIAL": "OTA-SERIAL-1", "PRODUCT": "iPhone15,2",
                 "VERSION": "21F79", "CHALLENGE": svc["PayloadContent"]["Challenge"]}
        dcert, dkey = pki.issue_client(apple_ca, apple_key, "Apple device",
                                       key=pki.new_key("rsa"))
        r = requests.post(srv.url + "/ota/profile", data=phase_body(attrs, dcert, dkey),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 200, r.text
        p2 = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        ch2 = p2["PayloadContent"][-1]["PayloadContent"]["Challenge"]
        c2, identity = enroll(srv, d, ch2)
        # The phase-2 identity belongs to alice.
        assert cert_record(srv, d, identity)["owner"] == "alice"
        del attrs["CHALLENGE"]
        ch3 = final_profile_challenge(srv, d, tmpdir_path, phase_body(attrs, identity, c2.key),
                                      identity, c2.key, "p3")
        # The final profile's SCEP identity is the one the MDM payload uses
        # (IdentityCertificateUUID): it should still be alice's.
        c3, final_identity = enroll(srv, d, ch3)
        owner = cert_record(srv, d, final_identity)["owner"]
        assert owner == "alice", f"the OTA-enrolled MDM identity has owner {owner!r}"
    finally:
        stop_clean(srv)


# ---- 3. a renewed (superseded) certificate renews again ---------------------


def test_superseded_certificate_cannot_renew_after_the_new_one_is_revoked(esrv):
    d = esrv.datadir
    c, old = enroll(esrv, d, new_challenge(d, "--user", "renee"))
    # Renew old -> new (the device binding and owner move to new).
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = make_csr(k2, "py-device").public_bytes(serialization.Encoding.DER)
    rep = Reply(pki_op(esrv, c.message(recipient_of(d), mtype=17, data=csr, signer=old,
                                       key=c.key)).content)
    assert rep.status == 0, rep.fail_info
    new, _ = rep.open(c)
    # The admin revokes the device's current identity.
    r = api(esrv, "POST", f"/v1/certs/{format(new.serial_number, 'X')}/revoke", d.api_key,
            {"reason": 1})
    assert r.status_code == 200
    # The superseded certificate (still "valid", never revoked) renews again.
    k3 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = make_csr(k3, "py-device").public_bytes(serialization.Encoding.DER)
    c.txid = "RENEW-AGAIN-" + os.urandom(4).hex()
    rep = Reply(pki_op(esrv, c.message(recipient_of(d), mtype=17, data=csr, signer=old,
                                       key=c.key)).content)
    if rep.status == 0:
        third, _ = rep.open(c)
        rec = cert_record(esrv, d, third)
        pytest.fail("a certificate that was already renewed renewed again after its "
                    f"successor was revoked: new serial {rec['serial']}, owner {rec['owner']!r}")
    assert rep.status == 2


# ---- 4. the scep hook does not get what POLICY.md promises -------------------

SCEP_POLICY = '''
return {
  scep = function(csr, ctx)
    if ctx.remote_addr == nil then
      return { decision = "deny", reason = "ctx.remote_addr missing" }
    end
    if csr.challenge == nil then
      return { decision = "deny", reason = "csr.challenge missing" }
    end
    return "issue"
  end,
}
'''


def test_scep_hook_gets_remote_addr_and_challenge(tmpdir_path):
    s, d = scep_server_with_policy(tmpdir_path, SCEP_POLICY)
    try:
        c = Client()
        rep = Reply(pki_op(s, c.message(recipient_of(d), challenge=new_challenge(d))).content)
        if rep.status != 0:
            m = s.wait_log(r"event=scep.failure .*reason=(.*)")
            pytest.fail("docs/POLICY.md promises csr.challenge and ctx.remote_addr to the "
                        "scep hook; the request was denied: " + m.group(1))
    finally:
        stop_clean(s)


def ca_under(d, issuer_name, issuer_key):
    """moonmdm's CA (its subject, key and key identifier) re-issued by
    another CA."""
    import datetime
    from cryptography import x509
    ca_cert, ca_key = pki.load_ca(d)
    return (x509.CertificateBuilder().subject_name(ca_cert.subject).issuer_name(issuer_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(pki.now() - datetime.timedelta(minutes=5))
            .not_valid_after(ca_cert.not_valid_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value,
                           critical=True)
            .add_extension(ca_cert.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier).value, critical=False)
            .sign(issuer_key, hashes.SHA256()))


# ---- 5. phase 3 trusts everything under the CA's chain -----------------------


def test_ota_phase3_refuses_a_certificate_our_ca_did_not_issue(tmpdir_path):
    """With ca.chain (moonmdm's CA is an intermediate under an organisation
    root), a certificate the root issued (not moonmdm's CA) is taken as a
    phase-3 identity."""
    import datetime
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    d = scep_datadir(tmpdir_path)
    ca_cert, ca_key = pki.load_ca(d)
    root_key = pki.new_key()
    rname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Organisation Root")])
    root = (x509.CertificateBuilder().subject_name(rname).issuer_name(rname)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(pki.now() - datetime.timedelta(minutes=5))
            .not_valid_after(pki.now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(root_key, hashes.SHA256()))
    # The same CA (subject, key, key identifier) re-issued under the root.
    inter = ca_under(d, root.subject, root_key)
    with open(os.path.join(d.path, "inter.crt"), "wb") as f:
        f.write(inter.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(d.path, "root.crt"), "wb") as f:
        f.write(root.public_bytes(serialization.Encoding.PEM))
    d.write_config('  ca = { cert = "inter.crt", key = "ca.key", chain = "root.crt" },\n'
                   '  enroll = { topic = "%s" },' % TOPIC)
    s = Server(d, plain=True)
    try:
        base = f"http://127.0.0.1:{s.plain_port}"
        # Sanity: an identity our CA issued (over SCEP) is accepted.
        client, own = enroll(s, d, new_challenge(d))
        r = requests.post(base + "/ota/profile", timeout=30,
                          data=phase_body({"UDID": "OURS"}, own, client.key))
        assert r.status_code == 200, r.text
        # A certificate of the organisation root (e.g. its Wi-Fi or VPN CA's
        # users): not an identity moonmdm's CA issued.
        other, other_key = pki.issue_client(root, root_key, "someone else",
                                            key=pki.new_key("rsa"))
        r = requests.post(base + "/ota/profile", timeout=30,
                          data=phase_body({"UDID": "FOREIGN"}, other, other_key))
        assert r.status_code in (400, 403), \
            f"phase 3 accepted a certificate issued by the root, not our CA: {r.status_code}"
    finally:
        stop_clean(s)


# ---- /v1/challenges: an integer ttl that would overflow -------------------------


def test_challenge_api_refuses_a_ttl_whose_milliseconds_overflow(esrv):
    d = esrv.datadir
    # 18446744073709552 s * 1000 wraps around 2^64 to 384 ms.
    for ttl in (18446744073709552, 2 ** 62, 365 * 86400 + 1):
        r = api(esrv, "POST", "/v1/challenges", d.api_key, {"ttl": ttl})
        assert r.status_code == 400, (ttl, r.status_code, r.text)
        assert "ttl" in r.text
    # The largest allowed number of seconds still works.
    r = api(esrv, "POST", "/v1/challenges", d.api_key, {"ttl": 365 * 86400})
    assert r.status_code == 201, r.text


# ---- challenges are bound to their purpose ----------------------------------


def ota_service_challenge(srv, d, tmp):
    r = requests.get(srv.url + "/enroll?ota=1", auth=("alice", "wonderland"),
                     verify=d.ca_crt, timeout=30)
    assert r.status_code == 200, r.text
    return plistlib.loads(cms_verify(r.content, d.ca_crt, tmp))["PayloadContent"]["Challenge"]


def phase1_body(apple_ca, apple_key, challenge):
    dcert, dkey = pki.issue_client(apple_ca, apple_key, "Apple device", key=pki.new_key("rsa"))
    attrs = {"UDID": "PURPOSE-UDID", "SERIAL": "OTA-SERIAL-1", "PRODUCT": "iPhone15,2",
             "VERSION": "21F79", "CHALLENGE": challenge}
    return phase_body(attrs, dcert, dkey)


def test_profile_service_challenge_is_no_scep_challenge(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        ch = ota_service_challenge(srv, d, tmpdir_path)
        # Straight to SCEP, skipping phase 1 (and its authenticate hook).
        rep = Reply(pki_op(srv, Client().message(recipient_of(d), challenge=ch)).content)
        assert rep.status == 2 and rep.fail_info == 2
        srv.wait_log(r"event=scep.failure .*reason=\"the challenge is for the OTA profile "
                     r"service")
        # It is still good for what it was made for.
        r = requests.post(srv.url + "/ota/profile", data=phase1_body(apple_ca, apple_key, ch),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        stop_clean(srv)


def test_scep_challenge_does_not_pass_ota_phase1(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        ch = new_challenge(d, "--user", "alice")
        r = requests.post(srv.url + "/ota/profile", data=phase1_body(apple_ca, apple_key, ch),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 403, r.text
        srv.wait_log(r"event=enroll.ota_refused .*phase=1 .*reason=\"the challenge is not for "
                     r"the OTA profile service")
        # It was not consumed: SCEP still takes it.
        enroll(srv, d, ch)
    finally:
        stop_clean(srv)


# ---- phase 3 does not pile up challenges ------------------------------------


def live_challenges(d):
    out = run("challenge", "list", "--config", d.config).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_phase3_keeps_one_live_challenge_per_identity(esrv, tmpdir_path):
    d = esrv.datadir
    client, identity = enroll(esrv, d, new_challenge(d, "--user", "pia"))
    body = phase_body({"UDID": "P3-LOOP"}, identity, client.key)
    before = len(live_challenges(d))
    for i in range(200):
        r = requests.post(esrv.url + "/ota/profile", data=body, verify=d.ca_crt, timeout=30)
        assert r.status_code == 200, (i, r.status_code, r.text)
    after = live_challenges(d)
    assert len(after) - before <= 1, f"{len(after) - before} challenges after 200 phase-3 calls"
    # The last one handed out works; an earlier one was replaced.
    first = final_profile_challenge(esrv, d, tmpdir_path, body, identity, client.key, "p3a")
    last = final_profile_challenge(esrv, d, tmpdir_path, body, identity, client.key, "p3b")
    rep = Reply(pki_op(esrv, Client().message(recipient_of(d), challenge=first)).content)
    assert rep.status == 2 and rep.fail_info == 2
    c3, final_identity = enroll(esrv, d, last)
    assert cert_record(esrv, d, final_identity)["owner"] == "pia"
    # Another identity has its own.
    client2, identity2 = enroll(esrv, d, new_challenge(d))
    other = final_profile_challenge(esrv, d, tmpdir_path,
                                    phase_body({"UDID": "P3-OTHER"}, identity2, client2.key),
                                    identity2, client2.key, "p3c")
    enroll(esrv, d, other)


# ---- the scep hook sees what will be issued ---------------------------------

SHOW_POLICY = '''
return {
  scep = function(csr, ctx)
    if csr.cn == "show" then
      return { decision = "deny", reason = "sans=" .. table.concat(csr.sans, "|") }
    end
    return "issue"
  end,
}
'''


@pytest.fixture
def show_srv(tmpdir_path):
    s, d = scep_server_with_policy(tmpdir_path, SHOW_POLICY)
    yield s
    stop_clean(s)


def csr_with(key, names, sans=None, challenge=None):
    from cryptography import x509
    from cryptography.x509.oid import AttributeOID
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def send_csr(srv, d, names, sans=None):
    c = Client()
    der = csr_with(c.key, names, sans, new_challenge(d))
    return c, Reply(pki_op(srv, c.message(recipient_of(d), data=der)).content)


def cn(value):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def test_scep_hook_sees_every_san_with_its_type_and_value(show_srv):
    from cryptography import x509
    from cryptography.x509.oid import NameOID, ObjectIdentifier
    d = show_srv.datadir
    upn = "alice@example.com".encode()
    sans = [x509.DNSName("dev.example.org"),
            x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
                           b"\x0c" + bytes([len(upn)]) + upn),
            x509.OtherName(ObjectIdentifier("1.2.3.4.5"), b"\x04\x02\xab\xcd"),
            x509.DirectoryName(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inner Org"),
                x509.NameAttribute(NameOID.COMMON_NAME, "inner")])),
            x509.RegisteredID(ObjectIdentifier("1.2.3.99")),
            x509.IPAddress(__import__("ipaddress").ip_address("192.0.2.7"))]
    _, rep = send_csr(show_srv, d, [cn("show")], sans)
    assert rep.status == 2
    m = show_srv.wait_log(r"event=scep.failure .*reason=\"denied by policy: sans=([^\"]*)\"")
    shown = m.group(1).split("|")
    assert shown == ["DNS:dev.example.org", "upn:alice@example.com",
                     "othername:1.2.3.4.5:0402abcd", "dirname:CN=inner,O=Inner Org",
                     "rid:1.2.3.99", "IP:192.0.2.7"], shown


@pytest.mark.parametrize("case", ["nul_cn", "nul_dns", "nul_upn", "two_cns", "long_subject"])
def test_scep_refuses_a_csr_the_hook_could_not_see_whole(show_srv, case):
    from cryptography import x509
    from cryptography.x509.oid import NameOID, ObjectIdentifier
    d = show_srv.datadir
    names, sans = [cn("device")], None
    if case == "nul_cn":
        names = [cn("good\x00evil")]
    elif case == "nul_dns":
        sans = [x509.DNSName("ok.example\x00.evil.example")]
    elif case == "nul_upn":
        upn = b"alice@example.com\x00bob@example.com"
        sans = [x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
                               b"\x0c" + bytes([len(upn)]) + upn)]
    elif case == "two_cns":
        names = [cn("device"), cn("admin")]
    else:
        names = [cn("device")] + [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                      "u%02d" % i + "x" * 57)
                                  for i in range(10)]
    _, rep = send_csr(show_srv, d, names, sans)
    assert (rep.status, rep.fail_info) == (2, 2), case
    show_srv.wait_log(r"event=scep.failure .*fail_info=badRequest reason=\"the CSR")
    assert "event=scep.issued" not in show_srv.log()


# ---- a request sent again after SUCCESS gets the same certificate -------------


def test_resent_pkcsreq_gets_the_certificate_already_issued(esrv):
    d = esrv.datadir
    c = Client()
    der = make_csr(c.key, "py-device", new_challenge(d)).public_bytes(serialization.Encoding.DER)
    first = Reply(pki_op(esrv, c.message(recipient_of(d), data=der)).content)
    assert first.status == 0
    cert, _ = first.open(c)
    # The reply was lost: the client sends the request again (new nonce).
    again = Reply(pki_op(esrv, c.message(recipient_of(d), data=der)).content)
    assert (again.status, again.fail_info) == (0, None)
    assert again.open(c)[0] == cert
    esrv.wait_log(r"event=scep.resent .*txid=%s .*serial=%X" % (c.txid, cert.serial_number))
    assert len([x for x in api(esrv, "GET", "/v1/certs", d.api_key).json()["certs"]]) == 1
    # Another key under the same transactionID gets nothing.
    other = Client()
    other.txid = c.txid
    der2 = make_csr(other.key, "py-device", new_challenge(d)).public_bytes(
        serialization.Encoding.DER)
    rep = Reply(pki_op(esrv, other.message(recipient_of(d), data=der2)).content)
    assert rep.status != 0 or rep.open(other)[0] != cert
    # A renewal under the same transactionID and key (as scepclient does) is
    # no resend: it gets a new certificate.
    rep = Reply(pki_op(esrv, c.message(recipient_of(d), mtype=17, data=der, signer=cert,
                                       key=c.key)).content)
    assert rep.status == 0, rep.fail_info
    assert rep.open(c)[0].serial_number != cert.serial_number


def test_resent_renewalreq_gets_the_certificate_already_issued(esrv):
    d = esrv.datadir
    c, old = enroll(esrv, d)
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = make_csr(k2, "py-device").public_bytes(serialization.Encoding.DER)
    c.txid = "RENEW-RESEND-" + os.urandom(4).hex()
    rep = Reply(pki_op(esrv, c.message(recipient_of(d), mtype=17, data=csr, signer=old,
                                       key=c.key)).content)
    assert rep.status == 0, rep.fail_info
    new, _ = rep.open(c)
    rep = Reply(pki_op(esrv, c.message(recipient_of(d), mtype=17, data=csr, signer=old,
                                       key=c.key)).content)
    assert (rep.status, rep.fail_info) == (0, None)
    assert rep.open(c)[0] == new


# ---- phase 3 under an intermediate CA whose root is not configured -----------


def test_ota_phase3_works_under_an_intermediate_ca_without_its_root(tmpdir_path):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    d = scep_datadir(tmpdir_path)
    root_key = pki.new_key()
    rname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Organisation Root")])
    # moonmdm's CA (its subject, key and key identifier) issued by a root
    # that the configuration does not hold (no ca.chain).
    inter = ca_under(d, rname, root_key)
    with open(os.path.join(d.path, "inter.crt"), "wb") as f:
        f.write(inter.public_bytes(serialization.Encoding.PEM))
    d.write_config('  ca = { cert = "inter.crt", key = "ca.key" },\n'
                   '  enroll = { topic = "%s" },' % TOPIC)
    s = Server(d, plain=True)
    try:
        client, own = enroll(s, d, new_challenge(d))
        r = requests.post(f"http://127.0.0.1:{s.plain_port}/ota/profile", timeout=30,
                          data=phase_body({"UDID": "INTER"}, own, client.key))
        assert r.status_code == 200, r.text
    finally:
        stop_clean(s)


# ---- a pending renewal is checked again when it completes -------------------

RENEW_LATER_POLICY = '''
return {
  scep = function(csr, ctx)
    if ctx.message_type == "RenewalReq" and not ctx.poll then
      return "pending"
    end
    return "issue"
  end,
}
'''


def test_pending_renewal_of_a_certificate_that_expired_meanwhile_fails(tmpdir_path):
    import time
    from test_scep import seq
    s, d = scep_server_with_policy(tmpdir_path, RENEW_LATER_POLICY,
                                   '  ca = { validity = "4s" },')
    try:
        c, old = enroll(s, d)
        k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = make_csr(k2, "py-device")
        c.txid = "RENEW-LATER-" + os.urandom(4).hex()
        rep = Reply(pki_op(s, c.message(recipient_of(d), mtype=17, signer=old, key=c.key,
                                        data=csr.public_bytes(serialization.Encoding.DER)))
                    .content)
        assert rep.status == 3, (rep.status, rep.fail_info)  # PENDING
        # The certificate being renewed expires while the request waits.
        delay = (old.not_valid_after - pki.now().replace(tzinfo=None)).total_seconds() + 1
        time.sleep(max(delay, 0))
        ias = seq(pki.load_ca(d)[0].subject.public_bytes(), csr.subject.public_bytes())
        rep = Reply(pki_op(s, c.message(recipient_of(d), mtype=20, data=ias, signer=old,
                                        key=c.key)).content)
        assert (rep.status, rep.fail_info) == (2, 3), (rep.status, rep.fail_info)
        s.wait_log(r"event=scep.failure .*type=CertPoll fail_info=badTime reason=\"the "
                   r"certificate being renewed has expired")
        # The transaction is over.
        rep = Reply(pki_op(s, c.message(recipient_of(d), mtype=20, data=ias, signer=old,
                                        key=c.key)).content)
        assert (rep.status, rep.fail_info) == (2, 4)
    finally:
        stop_clean(s)


# ---- an OTA identity authenticates only as its own device (failed on 9eff923)


def ota_identities(srv, d, tmp, apple_ca, apple_key, udid):
    """Runs the three OTA phases for udid; returns (client, phase-2 identity,
    client, final MDM identity)."""
    ch = ota_service_challenge(srv, d, tmp)
    attrs = {"UDID": udid, "SERIAL": "OTA-SERIAL-1", "PRODUCT": "iPhone15,2",
             "VERSION": "21F79", "CHALLENGE": ch}
    dcert, dkey = pki.issue_client(apple_ca, apple_key, "Apple device", key=pki.new_key("rsa"))
    r = requests.post(srv.url + "/ota/profile", data=phase_body(attrs, dcert, dkey),
                      verify=d.ca_crt, timeout=30)
    assert r.status_code == 200, r.text
    p2 = plistlib.loads(cms_verify(r.content, d.ca_crt, tmp))
    c2, identity = enroll(srv, d, p2["PayloadContent"][-1]["PayloadContent"]["Challenge"])
    del attrs["CHALLENGE"]
    ch3 = final_profile_challenge(srv, d, tmp, phase_body(attrs, identity, c2.key), identity,
                                  c2.key, "p3-" + udid)
    c3, final_identity = enroll(srv, d, ch3)
    return c2, identity, c3, final_identity


def enrolled_with_a_queued_command(srv):
    """Device B, enrolled with a certificate of its own, with one command
    queued for it."""
    b = Device(srv, udid="VICTIM-" + os.urandom(4).hex().upper())
    b.enroll()
    st, r = Api(srv).send("ProfileList", [b.udid], nopush=True)
    assert st in (200, 201), r
    return b


def assert_untouched(srv, b):
    st, info = Api(srv).call("GET", "/v1/devices/" + b.udid)
    assert st == 200, info
    assert info["enabled"] is True, info
    assert info["queue_length"] == 1, info


def test_ota_identity_cannot_authenticate_as_another_device(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        b = enrolled_with_a_queued_command(srv)
        c2, identity, c3, final_identity = ota_identities(srv, d, tmpdir_path, apple_ca,
                                                          apple_key, "OTA-UDID-A")
        assert cert_record(srv, d, final_identity)["udid"] == "OTA-UDID-A"
        assert cert_record(srv, d, identity)["udid"] == "OTA-UDID-A"
        show = run("cert", "show", format(final_identity.serial_number, "X"),
                   "--config", d.config).stdout
        assert "issued for:      OTA-UDID-A" in show, show
        # The final identity names device B: refused, B as it was.
        thief = Device(srv, udid=b.udid, cert=final_identity, key=c3.key)
        assert thief.authenticate() == 403
        srv.wait_log(r"event=mdm\.checkin .*http_status=403 .*the certificate was issued for "
                     r"device OTA-UDID-A")
        assert_untouched(srv, b)
        # So does the phase-2 identity.
        thief2 = Device(srv, udid=b.udid, cert=identity, key=c2.key)
        assert thief2.authenticate() == 403
        assert_untouched(srv, b)
        # The final identity enrolls as its own device.
        own = Device(srv, udid="OTA-UDID-A", cert=final_identity, key=c3.key)
        own.enroll()
        st, info = Api(srv).call("GET", "/v1/devices/OTA-UDID-A")
        assert st == 200 and info["enabled"] is True, info
    finally:
        stop_clean(srv)


def test_ota_phase3_refuses_another_udid_than_phase1s(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        ch = ota_service_challenge(srv, d, tmpdir_path)
        dcert, dkey = pki.issue_client(apple_ca, apple_key, "Apple device",
                                       key=pki.new_key("rsa"))
        attrs = {"UDID": "P1-UDID", "SERIAL": "OTA-SERIAL-1", "CHALLENGE": ch}
        r = requests.post(srv.url + "/ota/profile", data=phase_body(attrs, dcert, dkey),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 200, r.text
        p2 = plistlib.loads(cms_verify(r.content, d.ca_crt, tmpdir_path))
        c2, identity = enroll(srv, d, p2["PayloadContent"][-1]["PayloadContent"]["Challenge"])
        # The phase-2 identity asks for a final profile for another device.
        before = len(live_challenges(d))
        r = requests.post(srv.url + "/ota/profile",
                          data=phase_body({"UDID": "OTHER-UDID"}, identity, c2.key),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 403, (r.status_code, r.text)
        srv.wait_log(r"event=enroll\.ota_refused .*phase=3 .*issued for device P1-UDID")
        assert len(live_challenges(d)) == before
        # A phase 3 without a UDID gets nothing either.
        r = requests.post(srv.url + "/ota/profile", data=phase_body({}, identity, c2.key),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 400, (r.status_code, r.text)
    finally:
        stop_clean(srv)


def test_certificate_from_a_cli_challenge_still_reenrolls_any_udid(esrv):
    d = esrv.datadir
    b = enrolled_with_a_queued_command(esrv)
    client, cert = enroll(esrv, d, new_challenge(d))
    assert cert_record(esrv, d, cert)["udid"] == ""
    # Not tied to a device: it takes B over (a re-enrollment), as before.
    assert Device(esrv, udid=b.udid, cert=cert, key=client.key).authenticate() == 200
    st, info = Api(esrv).call("GET", "/v1/devices/" + b.udid)
    assert info["enabled"] is False and info["queue_length"] == 0, info


def test_renewed_ota_identity_stays_tied_to_its_device(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    try:
        b = enrolled_with_a_queued_command(srv)
        _, _, c3, final_identity = ota_identities(srv, d, tmpdir_path, apple_ca, apple_key,
                                                  "OTA-UDID-R")
        k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = make_csr(k2, "py-device").public_bytes(serialization.Encoding.DER)
        rep = Reply(pki_op(srv, c3.message(recipient_of(d), mtype=17, data=csr,
                                           signer=final_identity, key=c3.key)).content)
        assert rep.status == 0, rep.fail_info
        renewed, _ = rep.open(c3)
        assert cert_record(srv, d, renewed)["udid"] == "OTA-UDID-R"
        assert Device(srv, udid=b.udid, cert=renewed, key=k2).authenticate() == 403
        assert_untouched(srv, b)
        assert Device(srv, udid="OTA-UDID-R", cert=renewed, key=k2).authenticate() == 200
    finally:
        stop_clean(srv)


PENDING_POLICY = '''
return {
  scep = function(csr, ctx)
    if ctx.message_type == "PKCSReq" and not ctx.poll then return "pending" end
    return "issue"
  end,
}
'''


def test_a_key_that_cannot_be_certified_is_refused_before_pending(tmpdir_path):
    """The key was checked only when issuing: a policy that answered
    "pending" consumed the challenge for an RSA-1024 request and left a
    pending record that every poll failed on for seven days."""
    from test_scep import self_signed
    s, d = scep_server_with_policy(tmpdir_path, PENDING_POLICY)
    try:
        c = Client()
        c.key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        c.cert = self_signed(c.key)
        ch = new_challenge(d)
        rep = Reply(pki_op(s, c.message(recipient_of(d), challenge=ch)).content)
        assert rep.status == 2 and rep.fail_info == 2, (rep.status, rep.fail_info)
        assert s.wait_log(r"RSA keys must have 2048 to 8192 bits")
        # The challenge was not used up: a good request with it goes pending.
        c2 = Client()
        rep = Reply(pki_op(s, c2.message(recipient_of(d), challenge=ch)).content)
        assert rep.status == 3, (rep.status, rep.fail_info)
    finally:
        stop_clean(s)
