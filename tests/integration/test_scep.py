"""SCEP (RFC 8894) against the real `moonmdm serve`.

Clients: Debian's `scepclient` (micromdm), and a small SCEP client written
here on python3-cryptography with a hand-rolled DER encoder (cryptography
has no CMS builder with custom signed attributes or EnvelopedData), whose
replies are also checked with the `openssl` CLI.
"""
import base64
import datetime
import hashlib
import os
import re
import subprocess
import threading
import time
import urllib.parse

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import AttributeOID, NameOID

import pki
from conftest import Server, make_datadir, run

# ---- DER -----------------------------------------------------------------


def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag, content):
    return bytes([tag]) + der_len(len(content)) + content


def seq(*items):
    return tlv(0x30, b"".join(items))


def der_set(*items):
    # DER orders the members of a SET OF by their encodings.
    return tlv(0x31, b"".join(sorted(items)))


def oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, out)


def integer(n):
    b = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big")
    return tlv(0x02, b)


def octets(b):
    return tlv(0x04, b)


def printable(s):
    return tlv(0x13, s.encode())


def explicit(n, content):
    return tlv(0xA0 + n, content)


NULL = b"\x05\x00"


def der_parse(b, off=0):
    """One TLV at off: (tag, content, end offset)."""
    tag = b[off]
    n = b[off + 1]
    off += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[off:off + k], "big")
        off += k
    return tag, b[off:off + n], off + n


def der_children(content):
    out, off = [], 0
    while off < len(content):
        start = off
        tag, c, off = der_parse(content, off)
        out.append((tag, c, content[start:off]))
    return out


OID = {
    "data": "1.2.840.113549.1.7.1",
    "signedData": "1.2.840.113549.1.7.2",
    "envelopedData": "1.2.840.113549.1.7.3",
    "rsaEncryption": "1.2.840.113549.1.1.1",
    "contentType": "1.2.840.113549.1.9.3",
    "messageDigest": "1.2.840.113549.1.9.4",
    "signingTime": "1.2.840.113549.1.9.5",
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "aes128": "2.16.840.1.101.3.4.1.2",
    "aes256": "2.16.840.1.101.3.4.1.42",
    "des3": "1.2.840.113549.3.7",
    "des": "1.3.14.3.2.7",
    "messageType": "2.16.840.1.113733.1.9.2",
    "pkiStatus": "2.16.840.1.113733.1.9.3",
    "failInfo": "2.16.840.1.113733.1.9.4",
    "senderNonce": "2.16.840.1.113733.1.9.5",
    "recipientNonce": "2.16.840.1.113733.1.9.6",
    "transactionID": "2.16.840.1.113733.1.9.7",
}
OID_NAME = {oid(v)[2:]: k for k, v in OID.items()}
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}
CIPHERS = {"aes128": (algorithms.AES, 16, 16), "aes256": (algorithms.AES, 32, 16),
           "des3": (algorithms.TripleDES, 24, 8), "des": (algorithms.TripleDES, 8, 8)}

# ---- a SCEP client --------------------------------------------------------


def issuer_and_serial(cert):
    return seq(cert.issuer.public_bytes(), integer(cert.serial_number))


def envelope(data, recipient, cipher="aes128"):
    algo, klen, ivlen = CIPHERS[cipher]
    key, iv = os.urandom(klen), os.urandom(ivlen)
    pad = ivlen - len(data) % ivlen
    enc = Cipher(algo(key), modes.CBC(iv)).encryptor()
    ct = enc.update(data + bytes([pad]) * pad) + enc.finalize()
    ek = recipient.public_key().encrypt(key, padding.PKCS1v15())
    ktri = seq(integer(0), issuer_and_serial(recipient), seq(oid(OID["rsaEncryption"]), NULL),
               octets(ek))
    eci = seq(oid(OID["data"]), seq(oid(OID[cipher]), octets(iv)), tlv(0x80, ct))
    return seq(oid(OID["envelopedData"]), explicit(0, seq(integer(0), der_set(ktri), eci)))


def signed(content, signer, key, attrs, digest="sha256"):
    h = hashlib.new(digest, content).digest()
    now = datetime.datetime.utcnow().strftime("%y%m%d%H%M%SZ").encode()
    attrs = [seq(oid(OID["contentType"]), der_set(oid(OID["data"]))),
             seq(oid(OID["messageDigest"]), der_set(octets(h))),
             seq(oid(OID["signingTime"]), der_set(tlv(0x17, now)))] + [
        seq(oid(OID[name]), der_set(value)) for name, value in attrs]
    sattrs = der_set(*attrs)
    sig = key.sign(sattrs, padding.PKCS1v15(), HASHES[digest]())
    si = seq(integer(1), issuer_and_serial(signer), seq(oid(OID[digest]), NULL),
             b"\xa0" + sattrs[1:], seq(oid(OID["rsaEncryption"]), NULL), octets(sig))
    encap = seq(oid(OID["data"]), explicit(0, octets(content))) if content else seq(
        oid(OID["data"]))
    sd = seq(integer(1), der_set(seq(oid(OID[digest]), NULL)), encap,
             explicit(0, signer.public_bytes(serialization.Encoding.DER)), der_set(si))
    return seq(oid(OID["signedData"]), explicit(0, sd))


def self_signed(key, cn="SCEP SIGNER"):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(pki.now() - datetime.timedelta(minutes=5))
            .not_valid_after(pki.now() + datetime.timedelta(hours=1))
            .sign(key, hashes.SHA256()))


def make_csr(key, cn, challenge=None):
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if challenge is not None:
        b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return b.sign(key, hashes.SHA256())


class Client:
    """A device: an RSA key, its throw-away certificate, and messages."""

    def __init__(self, cn="py-device"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = self_signed(self.key)
        self.cn = cn
        self.txid = hashlib.sha1(os.urandom(16)).hexdigest().upper()

    def message(self, recipient, mtype=19, data=None, challenge=None, cipher="aes128",
                digest="sha256", signer=None, key=None, txid=None):
        if data is None:
            data = make_csr(self.key, self.cn, challenge).public_bytes(
                serialization.Encoding.DER)
        self.nonce = os.urandom(16)
        attrs = [("messageType", printable(str(mtype))),
                 ("transactionID", printable(txid or self.txid)),
                 ("senderNonce", octets(self.nonce))]
        return signed(envelope(data, recipient, cipher), signer or self.cert, key or self.key,
                      attrs, digest)


class Reply:
    """A CertRep as a client reads it."""

    def __init__(self, der):
        self.der = der
        _, ci, _ = der_parse(der)
        kids = der_children(ci)
        assert kids[0][2] == oid(OID["signedData"])
        sd = der_children(der_children(kids[1][1])[0][1])
        encap = der_children(sd[2][1])
        self.content = der_parse(encap[1][1])[1] if len(encap) > 1 else None
        si = der_children(sd[-1][1])[0]
        fields = der_children(si[1])
        self.digest = OID_NAME.get(der_children(fields[2][1])[0][1])
        self.attrs = {}
        for _, attr, _ in der_children(fields[3][1]):
            a = der_children(attr)
            name = OID_NAME.get(a[0][1], a[0][1])
            self.attrs[name] = der_children(a[1][1])[0]
        self.status = int(self.attrs["pkiStatus"][1])
        self.fail_info = int(self.attrs["failInfo"][1]) if "failInfo" in self.attrs else None
        self.txid = self.attrs["transactionID"][1].decode()
        self.recipient_nonce = self.attrs["recipientNonce"][1]
        assert self.attrs["messageType"][1] == b"3"
        assert len(self.attrs["senderNonce"][1]) == 16

    def open(self, client):
        """Decrypts the envelope; returns the issued certificate and the
        content cipher's name."""
        _, ci, _ = der_parse(self.content)
        env = der_children(der_children(der_children(ci)[1][1])[0][1])
        ktri = der_children(der_children(env[1][1])[0][1])
        cek = client.key.decrypt(ktri[3][1], padding.PKCS1v15())
        eci = der_children(env[2][1])
        alg = der_children(eci[1][1])
        cipher = OID_NAME[alg[0][1]]
        algo, _, _ = CIPHERS[cipher]
        dec = Cipher(algo(cek), modes.CBC(alg[1][1])).decryptor()
        plain = dec.update(eci[2][1]) + dec.finalize()
        plain = plain[:-plain[-1]]
        _, dci, _ = der_parse(plain)
        sd = der_children(der_children(der_children(dci)[1][1])[0][1])
        certs = [c for c in sd if c[0] == 0xA0][0]
        first = der_children(certs[1])[0][2]
        return x509.load_der_x509_certificate(first), cipher


# ---- helpers ---------------------------------------------------------------


def scep_datadir(tmp, *init_args, **scep):
    """A data directory with extra scep settings merged into the scep
    table that init wrote (appending a second `scep = {}` would replace
    it)."""
    d = make_datadir(tmp, *init_args)
    text = open(d.config).read()
    extra = "".join(f"    {k} = {v},\n" for k, v in scep.items())
    if "  scep = {\n" in text:
        text = text.replace("  scep = {\n", "  scep = {\n" + extra, 1)
    else:
        text = text.replace("  store = {", "  scep = {\n" + extra + "  },\n  store = {", 1)
    with open(d.config, "w") as f:
        f.write(text)
    d._orig = text
    return d


def base(server):
    return f"http://127.0.0.1:{server.plain_port}"


def pki_op(server, msg, ctype="application/x-pki-message"):
    return requests.post(base(server) + "/scep?operation=PKIOperation", data=msg,
                         headers={"Content-Type": ctype}, timeout=30)


def recipient_of(d):
    ra = os.path.join(d.path, "ra.crt")
    return x509.load_pem_x509_certificate(open(ra if os.path.exists(ra) else d.ca_crt,
                                               "rb").read())


def new_challenge(d, *args):
    return run("challenge", "new", "--config", d.config, *args).stdout.strip()


def openssl_verify_reply(d, tmp, der, detached):
    """Checks a CertRep's signature and chain with `openssl cms`."""
    path = os.path.join(tmp, "rep.der")
    with open(path, "wb") as f:
        f.write(der)
    args = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", path,
            "-CAfile", d.ca_crt, "-out", os.devnull]
    if detached:
        args += ["-content", os.devnull]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def verify_cert(d, tmp, cert, crl=None):
    path = os.path.join(tmp, "issued.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    args = ["openssl", "verify", "-CAfile", d.ca_crt]
    if crl:
        args += ["-crl_check", "-CRLfile", crl]
    return subprocess.run(args + [path], capture_output=True, text=True)


def ra_fingerprint(d):
    der = subprocess.run(["openssl", "x509", "-outform", "DER", "-in",
                          os.path.join(d.path, "ra.crt")], capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def scepclient(server, workdir, challenge=None, extra=()):
    os.makedirs(workdir, exist_ok=True)
    args = ["scepclient", "-private-key", os.path.join(workdir, "key.pem"),
            "-server-url", base(server) + "/scep", "-cn", "scepclient-device"]
    if challenge is not None:
        args += ["-challenge", challenge]
    return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=60)


def stop_clean(server):
    """Stops the server and checks it exited cleanly (under ASan: no leak,
    no error report)."""
    rc = server.stop()
    assert rc == 0 and "Sanitizer" not in server.log(), server.log()[-3000:]


@pytest.fixture
def ra_server(tmpdir_path):
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    s = Server(d, plain=True)
    yield s
    stop_clean(s)


# ---- tests -----------------------------------------------------------------


def test_getcacaps_and_getcacert_with_ra(ra_server, tmpdir_path):
    d = ra_server.datadir
    r = requests.get(base(ra_server) + "/scep?operation=GetCACaps", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    caps = r.text.split()
    for c in ["POSTPKIOperation", "SHA-1", "SHA-256", "SHA-512", "AES", "DES3", "SCEPStandard",
              "Renewal"]:
        assert c in caps, caps
    assert "GetNextCACert" not in caps
    r = requests.get(base(ra_server) + "/scep?operation=GetCACert&message=anything", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-x509-ca-ra-cert"
    path = os.path.join(tmpdir_path, "certs.p7")
    open(path, "wb").write(r.content)
    p = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", path, "-print_certs"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "subject=CN = moonmdm CA SCEP RA" in p.stdout, p.stdout
    assert "subject=O = moonmdm, CN = moonmdm CA" in p.stdout, p.stdout
    # Degenerate: no signers, eContent absent.
    p = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", path],
                       capture_output=True, text=True)
    assert "eContent: <ABSENT>" in p.stdout, p.stdout
    assert re.search(r"signerInfos:\s*<EMPTY>", p.stdout), p.stdout


def test_getcacert_ca_only(tmpdir_path):
    d = make_datadir(tmpdir_path, "--no-ra", "--ca-key", "rsa:2048")
    assert "ra.crt" not in open(d.config).read()
    s = Server(d, plain=True)
    try:
        r = requests.get(base(s) + "/scep?operation=GetCACert", timeout=10)
        assert r.headers["Content-Type"] == "application/x-x509-ca-cert"
        ca = x509.load_pem_x509_certificate(open(d.ca_crt, "rb").read())
        assert r.content == ca.public_bytes(serialization.Encoding.DER)
        # The CA answers itself: requests are encrypted to it, replies
        # signed by it.
        c = Client()
        r = pki_op(s, c.message(ca, challenge=new_challenge(d)))
        rep = Reply(r.content)
        assert rep.status == 0, rep.fail_info
        assert rep.open(c)[0].issuer == ca.subject
        openssl_verify_reply(d, tmpdir_path, r.content, detached=False)
    finally:
        stop_clean(s)


def test_scepclient_enrolls_with_a_one_time_challenge(ra_server, tmpdir_path):
    d = ra_server.datadir
    ch = new_challenge(d, "--user", "alice")
    assert re.fullmatch(r"[0-9a-f]{32}", ch), ch
    fp = ra_fingerprint(d)
    # scepclient encrypts to every certificate of GetCACert; the EC CA
    # cannot be one, so it is pointed at the RA by fingerprint.
    work = os.path.join(tmpdir_path, "c1")
    p = scepclient(ra_server, work, ch, ["-ca-fingerprint", fp])
    assert p.returncode == 0, p.stdout + p.stderr
    cert_path = os.path.join(work, "client.pem")
    v = subprocess.run(["openssl", "verify", "-CAfile", d.ca_crt, cert_path],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    m = ra_server.wait_log(r"event=scep.issued req=(\S+) txid=\S+ type=PKCSReq serial=(\w+) "
                           r".*owner=alice")
    serial = m.group(2)
    ra_server.wait_log(rf"event=scep.request req={m.group(1)} .*digest=sha1 cipher=des-cbc")
    listing = run("cert", "list", "--config", d.config).stdout
    assert serial in listing and "CN=scepclient-device" in listing, listing

    # The same challenge again, with a new key: FAILURE badRequest.
    p = scepclient(ra_server, os.path.join(tmpdir_path, "c2"), ch, ["-ca-fingerprint", fp])
    assert p.returncode != 0 and "badRequest" in p.stdout + p.stderr, p.stdout + p.stderr
    ra_server.wait_log(r"event=scep.failure .*fail_info=badRequest "
                       r'reason="the challenge is wrong or was already used"')
    # A wrong one.
    p = scepclient(ra_server, os.path.join(tmpdir_path, "c3"), "0" * 32,
                   ["-ca-fingerprint", fp])
    assert p.returncode != 0 and "badRequest" in p.stdout + p.stderr
    assert len(re.findall(r"event=scep.issued", ra_server.log())) == 1
    # Never a challenge in the log.
    assert ch not in ra_server.log()

    # scepclient renews with the certificate it got (RenewalReq).
    old = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    p = scepclient(ra_server, work, None, ["-ca-fingerprint", fp, "-certificate", cert_path])
    assert p.returncode == 0, p.stdout + p.stderr
    new = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    assert new.serial_number != old.serial_number
    ra_server.wait_log(r"event=scep.issued .*type=RenewalReq .*owner=alice renewal=true")


def test_scepclient_ca_only_rsa(tmpdir_path):
    d = scep_datadir(tmpdir_path, "--no-ra", "--ca-key", "rsa:2048", allow_single_des="true",
                     static_challenge='"static-pw"')
    s = Server(d, plain=True)
    try:
        work = os.path.join(tmpdir_path, "w")
        p = scepclient(s, work, "static-pw")
        assert p.returncode == 0, p.stdout + p.stderr
        v = subprocess.run(["openssl", "verify", "-CAfile", d.ca_crt,
                            os.path.join(work, "client.pem")], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
        # The static challenge is never consumed.
        p = scepclient(s, os.path.join(tmpdir_path, "w2"), "static-pw")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "static-pw" not in s.log()
    finally:
        stop_clean(s)


@pytest.mark.parametrize("cipher", ["aes128", "aes256", "des3"])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
def test_python_client_ciphers_and_digests(ra_server, tmpdir_path, cipher, digest):
    d = ra_server.datadir
    c = Client()
    ch = new_challenge(d)
    r = pki_op(ra_server, c.message(recipient_of(d), challenge=ch, cipher=cipher,
                                    digest=digest))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/x-pki-message"
    rep = Reply(r.content)
    assert rep.status == 0, (rep.status, rep.fail_info, ra_server.log()[-2000:])
    assert rep.txid == c.txid and rep.recipient_nonce == c.nonce
    assert rep.digest == digest
    cert, used = rep.open(c)
    assert used == cipher
    assert cert.public_key().public_numbers() == c.key.public_key().public_numbers()
    assert verify_cert(d, tmpdir_path, cert).returncode == 0
    openssl_verify_reply(d, tmpdir_path, r.content, detached=False)


def test_get_pkioperation_and_content_types(ra_server, tmpdir_path):
    d = ra_server.datadir
    # GET with message= base64, percent-encoded, '+' kept, with line breaks.
    for attempt in range(20):
        c = Client()
        msg = c.message(recipient_of(d), challenge=new_challenge(d))
        b64 = base64.encodebytes(msg).decode()
        if "+" in b64:
            break
    assert "+" in b64 and "\n" in b64
    url = base(ra_server) + "/scep?operation=PKIOperation&message=" + urllib.parse.quote(
        b64, safe="+/=")
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    rep = Reply(r.content)
    assert rep.status == 0 and rep.txid == c.txid
    # POST as application/octet-stream.
    c = Client()
    r = pki_op(ra_server, c.message(recipient_of(d), challenge=new_challenge(d)),
               "application/octet-stream")
    assert r.status_code == 200 and Reply(r.content).status == 0


def test_failures_are_certrep_failure(ra_server, tmpdir_path):
    d = ra_server.datadir
    rcpt = recipient_of(d)
    c = Client()
    # Encrypted to someone else: badMessageCheck, logged with the txid.
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = pki_op(ra_server, c.message(self_signed(other_key, "not the RA"), challenge="x"))
    rep = Reply(r.content)
    assert r.status_code == 200 and rep.status == 2 and rep.fail_info == 1
    assert rep.content is None
    ra_server.wait_log(rf"event=scep.failure .*txid={c.txid} .*fail_info=badMessageCheck")
    openssl_verify_reply(d, tmpdir_path, r.content, detached=True)
    # A CertPoll (GetCertInitial) for a transaction nobody knows: badCertId.
    ias = seq(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moonmdm CA")]).public_bytes(),
              x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, c.cn)]).public_bytes())
    rep = Reply(pki_op(ra_server, c.message(rcpt, mtype=20, data=ias)).content)
    assert rep.status == 2 and rep.fail_info == 4
    # GetCert is not supported: badRequest.
    rep = Reply(pki_op(ra_server, c.message(rcpt, mtype=21, data=ias)).content)
    assert rep.status == 2 and rep.fail_info == 2
    # An expired challenge.
    ch = new_challenge(d, "--ttl", "1s")
    time.sleep(1.2)
    rep = Reply(pki_op(ra_server, c.message(rcpt, challenge=ch)).content)
    assert rep.status == 2 and rep.fail_info == 2
    ra_server.wait_log(r'reason="the challenge has expired"')
    # Single DES is refused unless allowed (it is on this server, so use
    # another one below); a CSR signed with another key: badMessageCheck.
    other_csr = make_csr(other_key, "x", "pw").public_bytes(serialization.Encoding.DER)
    rep = Reply(pki_op(ra_server, c.message(rcpt, data=other_csr)).content)
    assert rep.status == 2 and rep.fail_info == 1
    assert len(re.findall(r"event=scep.issued", ra_server.log())) == 0


def test_single_des_refused_by_default(tmpdir_path):
    d = make_datadir(tmpdir_path)
    s = Server(d, plain=True)
    try:
        c = Client()
        rep = Reply(pki_op(s, c.message(recipient_of(d), challenge=new_challenge(d),
                                        cipher="des")).content)
        assert rep.status == 2 and rep.fail_info == 0
        s.wait_log(r"fail_info=badAlg reason=.*single DES")
    finally:
        stop_clean(s)


def test_bad_input_is_400_and_never_a_crash(ra_server):
    d = ra_server.datadir
    good = Client().message(recipient_of(d), challenge="x")
    for body in [b"", b"\x30\x82\xff\xff", good[:len(good) // 2], os.urandom(300),
                 b"-----BEGIN PKCS7-----"]:
        r = pki_op(ra_server, body)
        assert r.status_code == 400, (body[:20], r.status_code, r.text)
        assert "bad SCEP message" in r.text
    m = ra_server.wait_log(r"event=scep.bad_message req=\S+ bytes=\d+ reason=")
    assert m
    for q, code in [("", 400), ("?operation=Nope", 400), ("?operation=PKIOperation", 400),
                    ("?operation=PKIOperation&message=%%%", 400),
                    ("?operation=PKIOperation&message=****", 400)]:
        r = requests.get(base(ra_server) + "/scep" + q, timeout=10)
        assert r.status_code == code, (q, r.status_code)
    r = requests.post(base(ra_server) + "/scep?operation=GetCACaps", data=b"x", timeout=10)
    assert r.status_code == 405
    assert requests.get(base(ra_server) + "/healthz", timeout=10).status_code == 200


def enroll(server, d, challenge=None, client=None):
    c = client or Client()
    r = pki_op(server, c.message(recipient_of(d), challenge=challenge or new_challenge(d)))
    rep = Reply(r.content)
    assert rep.status == 0, (rep.status, rep.fail_info)
    return c, rep.open(c)[0]


def test_renewal_with_python_client(ra_server, tmpdir_path):
    d = ra_server.datadir
    c, cert = enroll(ra_server, d, new_challenge(d, "--user", "renee"))
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = make_csr(new_key, "py-device").public_bytes(serialization.Encoding.DER)
    msg = c.message(recipient_of(d), mtype=17, data=csr, signer=cert, key=c.key)
    rep = Reply(pki_op(ra_server, msg).content)
    assert rep.status == 0, rep.fail_info
    new, _ = rep.open(c)  # encrypted to the old certificate's key
    assert new.public_key().public_numbers() == new_key.public_key().public_numbers()
    ra_server.wait_log(r"event=scep.issued .*type=RenewalReq .*owner=renee renewal=true")
    # A certificate from another CA cannot renew.
    other_ca, other_key = pki.make_ca()
    foreign, fkey = pki.issue_client(other_ca, other_key, "x", key=c.key)
    rep = Reply(pki_op(ra_server, c.message(recipient_of(d), mtype=17, data=csr,
                                            signer=foreign, key=c.key)).content)
    assert rep.status == 2 and rep.fail_info == 4


def api(server, method, path, key, body=None):
    return requests.request(method, base(server) + path, json=body, timeout=10,
                            headers={"Authorization": "Bearer " + key})


def test_api_challenges_certs_revocation_and_crl(ra_server, tmpdir_path):
    d = ra_server.datadir
    r = api(ra_server, "POST", "/v1/challenges", d.api_key, {"user": "bob", "ttl": "10m"})
    assert r.status_code == 201, r.text
    j = r.json()
    assert re.fullmatch(r"[0-9a-f]{32}", j["challenge"]) and j["user"] == "bob"
    exp = datetime.datetime.strptime(j["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert datetime.timedelta(minutes=9) < exp - pki.now() <= datetime.timedelta(minutes=10)
    assert requests.post(base(ra_server) + "/v1/challenges", json={}, timeout=10).status_code \
        == 401
    assert api(ra_server, "POST", "/v1/challenges", d.api_key,
               {"ttl": "forever"}).status_code == 400
    ro = run("apikey", "create", "--role", "read", "--config", d.config).stdout.strip()
    assert api(ra_server, "POST", "/v1/challenges", ro, {}).status_code == 403

    c, cert = enroll(ra_server, d, j["challenge"])
    serial = format(cert.serial_number, "X")
    r = api(ra_server, "GET", "/v1/certs", ro)
    assert r.status_code == 200, r.text
    rec = [x for x in r.json()["certs"] if x["serial"] == serial][0]
    assert rec["owner"] == "bob" and rec["revoked"] is False and rec["transaction_id"] == c.txid

    crl0 = requests.get(base(ra_server) + "/ca.crl", timeout=10)
    assert crl0.status_code == 200 and crl0.headers["Content-Type"] == "application/pkix-crl"
    assert api(ra_server, "POST", f"/v1/certs/{serial}/revoke", ro, {}).status_code == 403
    assert api(ra_server, "POST", "/v1/certs/ABCDEF/revoke", d.api_key, {}).status_code == 404
    # removeFromCRL (8) belongs in delta CRLs: in the full CRL it read as
    # "not revoked" to openssl verify.
    for reason in (7, 8, 11, -1, "4"):
        r = api(ra_server, "POST", f"/v1/certs/{serial}/revoke", d.api_key, {"reason": reason})
        assert r.status_code == 400 and "reason" in r.json()["detail"], (reason, r.text)
    assert run("cert", "revoke", serial, "--reason", "8", "--config", d.config,
               check=False).returncode == 2
    r = api(ra_server, "POST", f"/v1/certs/{serial}/revoke", d.api_key, {"reason": 4})
    assert r.status_code == 200 and r.json()["revoked"] is True and r.json()["reason"] == 4
    crl = requests.get(base(ra_server) + "/ca.crl", timeout=10)
    path = os.path.join(tmpdir_path, "ca.crl")
    open(path, "wb").write(crl.content)
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", path, "-text", "-noout"],
                          capture_output=True, text=True).stdout
    assert f"Serial Number: {serial}" in text and "Superseded" in text, text
    pem = os.path.join(tmpdir_path, "ca.crl.pem")
    subprocess.run(["openssl", "crl", "-inform", "DER", "-in", path, "-out", pem], check=True)
    v = verify_cert(d, tmpdir_path, cert, pem)
    assert v.returncode != 0 and "certificate revoked" in v.stdout + v.stderr
    # A revoked certificate cannot renew.
    csr = make_csr(c.key, "py-device").public_bytes(serialization.Encoding.DER)
    rep = Reply(pki_op(ra_server, c.message(recipient_of(d), mtype=17, data=csr, signer=cert,
                                            key=c.key)).content)
    assert rep.status == 2 and rep.fail_info == 4


def crl_number(path_der):
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", path_der, "-text",
                           "-noout"], capture_output=True, text=True).stdout
    return int(re.search(r"CRL Number: \s*(\d+)", text).group(1)), text


def test_cli_revocation_reaches_the_running_servers_crl(tmpdir_path):
    d = make_datadir(tmpdir_path)
    d.write_config('  ca = { cert = "ca.crt", key = "ca.key", '
                   'crl_url = "http://mdm.example.org/pki/moonmdm.crl" },')
    s = Server(d, plain=True)
    try:
        c, cert = enroll(s, d)
        # The CRL distribution point is in the certificate, and served there.
        dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        assert dp.value[0].full_name[0].value == "http://mdm.example.org/pki/moonmdm.crl"
        assert requests.get(base(s) + "/ca.crl", timeout=10).status_code == 404
        p1 = os.path.join(tmpdir_path, "1.crl")
        open(p1, "wb").write(requests.get(base(s) + "/pki/moonmdm.crl", timeout=10).content)
        n1, _ = crl_number(p1)
        serial = format(cert.serial_number, "X")
        p = run("cert", "revoke", serial, "--reason", "1", "--config", d.config)
        assert f"revoked {serial}" in p.stdout
        assert "revoked" in run("cert", "list", "--revoked", "--config", d.config).stdout
        p2 = os.path.join(tmpdir_path, "2.crl")
        open(p2, "wb").write(requests.get(base(s) + "/pki/moonmdm.crl", timeout=10).content)
        n2, text = crl_number(p2)
        assert n2 > n1 and f"Serial Number: {serial}" in text and "Key Compromise" in text
        assert run("cert", "revoke", "00", "--config", d.config, check=False).returncode == 1
        assert run("cert", "revoke", "zz", "--config", d.config, check=False).returncode == 2
        show = run("cert", "show", serial, "--config", d.config).stdout
        assert "BEGIN CERTIFICATE" in show and "reason 1" in show
    finally:
        stop_clean(s)


def test_concurrent_use_of_one_challenge_issues_once(ra_server):
    d = ra_server.datadir
    ch = new_challenge(d)
    clients = [Client() for _ in range(6)]
    msgs = [c.message(recipient_of(d), challenge=ch) for c in clients]
    results = [None] * len(msgs)

    def go(i):
        results[i] = Reply(pki_op(ra_server, msgs[i]).content)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(msgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status for r in results)
    assert statuses == [0] + [2] * (len(msgs) - 1), statuses
    assert all(r.fail_info == 2 for r in results if r.status == 2)
    assert len(re.findall(r"event=scep.issued", ra_server.log())) == 1


def test_certificate_left_by_its_enrollment_cannot_renew(tmpdir_path):
    """A device that authenticated again with a new certificate has left the
    old one (it is not revoked: only a CheckOut revokes). A RenewalReq signed
    by it got SUCCESS and a certificate named after the enrollment."""
    from device import TOPIC, Device
    d = scep_datadir(tmpdir_path)
    d.write_config('  enroll = { topic = "%s" },' % TOPIC)
    s = Server(d, plain=True)
    try:
        ca_, a = enroll(s, d)
        cb, b = enroll(s, d)
        udid = "UDID-LEFT-1"
        Device(s, udid=udid, cert=a, key=ca_.key).enroll()
        Device(s, udid=udid, cert=b, key=cb.key).enroll()
        k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = make_csr(k2, "py-device").public_bytes(serialization.Encoding.DER)
        rep = Reply(pki_op(s, ca_.message(recipient_of(d), mtype=17, data=csr, signer=a,
                                          key=ca_.key)).content)
        assert rep.status == 2 and rep.fail_info == 4, (rep.status, rep.fail_info)
        assert s.wait_log(r"no longer its enrollment's identity")
        certs = api(s, "GET", "/v1/certs", d.api_key).json()["certs"]
        assert len(certs) == 2, certs
        # The certificate in use still renews.
        csr = make_csr(k2, "py-device").public_bytes(serialization.Encoding.DER)
        rep = Reply(pki_op(s, cb.message(recipient_of(d), mtype=17, data=csr, signer=b,
                                         key=cb.key)).content)
        assert rep.status == 0, (rep.status, rep.fail_info)
    finally:
        stop_clean(s)


def test_with_an_ra_a_request_to_the_ca_is_refused(tmpdir_path):
    """GetCACert hands out the RA for encryption; a request encrypted to the
    CA certificate was still decrypted, with the CA's key."""
    d = scep_datadir(tmpdir_path, "--ca-key", "rsa:2048")
    assert os.path.exists(os.path.join(d.path, "ra.crt"))
    s = Server(d, plain=True)
    try:
        ca = x509.load_pem_x509_certificate(open(d.ca_crt, "rb").read())
        c = Client()
        rep = Reply(pki_op(s, c.message(ca, challenge=new_challenge(d))).content)
        assert rep.status == 2, (rep.status, rep.fail_info)
        assert s.wait_log(r"not encrypted to our RA certificate")
        # To the RA it works.
        c = Client()
        rep = Reply(pki_op(s, c.message(recipient_of(d), challenge=new_challenge(d))).content)
        assert rep.status == 0, (rep.status, rep.fail_info)
    finally:
        stop_clean(s)
