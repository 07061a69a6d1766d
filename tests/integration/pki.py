"""Certificates for tests, made with python3-cryptography."""
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def load_ca(datadir):
    with open(datadir.ca_crt, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(datadir.ca_key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    return cert, key


def new_key(kind="ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(cn="Other CA"):
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(minutes=5))
            .not_valid_after(now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue_client(ca_cert, ca_key, cn="device", key=None, days=30, not_before=None,
                 not_after=None):
    key = key or new_key()
    nb = not_before or now() - datetime.timedelta(minutes=5)
    na = not_after or now() + datetime.timedelta(days=days)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb).not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def write_pair(directory, name, cert, key):
    """Writes name.crt and name.key (PEM) and returns their paths."""
    c = os.path.join(directory, name + ".crt")
    k = os.path.join(directory, name + ".key")
    with open(c, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(k, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(k, 0o600)
    return c, k


def fingerprint_prefix(cert, n=16):
    return cert.fingerprint(hashes.SHA256()).hex()[:n]
