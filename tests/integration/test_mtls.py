"""Client certificates: mTLS against the device CA, and a proxy header."""
import base64
import ssl
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization

import pki
from conftest import Server, get, http_request, read_response


def test_client_certificate_from_our_ca_is_verified(server, tmpdir_path):
    ca_cert, ca_key = pki.load_ca(server.datadir)
    cert, key = pki.issue_client(ca_cert, ca_key, "device-1")
    c, k = pki.write_pair(tmpdir_path, "dev", cert, key)
    r = get(server, "/healthz", cert=c, key=k)
    assert r.status == 200
    rid = r.header("x-request-id")
    fp = pki.fingerprint_prefix(cert)
    server.wait_log(rf"req={rid} .*client_cert={fp} cert_source=tls")


def test_certificate_from_another_ca_is_rejected(server, tmpdir_path):
    other_cert, other_key = pki.make_ca()
    cert, key = pki.issue_client(other_cert, other_key, "intruder")
    c, k = pki.write_pair(tmpdir_path, "bad", cert, key)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with server.connect(c, k) as s:
            # TLS 1.3: the server's verdict arrives after the client's Finished.
            http_request(s, "GET", "/healthz")
            read_response(s)
    server.wait_log(r"event=tls.client_cert_rejected")
    server.wait_log(r"event=tls.handshake_failed")


def test_expired_certificate_is_rejected(server, tmpdir_path):
    import datetime
    ca_cert, ca_key = pki.load_ca(server.datadir)
    cert, key = pki.issue_client(
        ca_cert, ca_key, "old", not_before=pki.now() - datetime.timedelta(days=10),
        not_after=pki.now() - datetime.timedelta(days=1))
    c, k = pki.write_pair(tmpdir_path, "old", cert, key)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with server.connect(c, k) as s:
            http_request(s, "GET", "/healthz")
            read_response(s)
    server.wait_log(r'event=tls.client_cert_rejected reason="certificate has expired"')


def test_no_client_certificate_is_allowed_where_the_route_allows(server):
    r = get(server, "/healthz")
    assert r.status == 200
    server.wait_log(rf"req={r.header('x-request-id')} .*client_cert=- cert_source=-")


def test_proxy_header_certificate(datadir, tmpdir_path):
    datadir.write_config('  proxy = { cert_header = "X-Client-Cert" },')
    srv = Server(datadir, plain=True)
    try:
        ca_cert, ca_key = pki.load_ca(datadir)
        cert, key = pki.issue_client(ca_cert, ca_key, "behind-proxy")
        der = cert.public_bytes(serialization.Encoding.DER)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        import socket
        forms = [":" + base64.b64encode(der).decode() + ":",        # RFC 9440
                 urllib.parse.quote(pem, safe=""),                  # nginx escaped PEM
                 base64.b64encode(der).decode()]                    # bare base64 DER
        fp = pki.fingerprint_prefix(cert)
        for form in forms:
            with socket.create_connection(("127.0.0.1", srv.plain_port), timeout=10) as s:
                http_request(s, "GET", "/healthz", {"X-Client-Cert": form})
                r = read_response(s)
                assert r.status == 200
                srv.wait_log(rf"req={r.header('x-request-id')} .*client_cert={fp} "
                             r"cert_source=header")
        other_cert, other_key = pki.make_ca()
        bad, _ = pki.issue_client(other_cert, other_key, "forged")
        with socket.create_connection(("127.0.0.1", srv.plain_port), timeout=10) as s:
            http_request(s, "GET", "/healthz", {
                "X-Client-Cert": ":" + base64.b64encode(
                    bad.public_bytes(serialization.Encoding.DER)).decode() + ":"})
            r = read_response(s)
            srv.wait_log(rf"req={r.header('x-request-id')} .*client_cert=- cert_source=-")
        srv.wait_log(r"event=proxy.cert_header_rejected")
        # Over TLS the header is ignored: only the proxy side is trusted.
        r = get(srv, "/healthz", {"X-Client-Cert": forms[0]})
        srv.wait_log(rf"req={r.header('x-request-id')} .*client_cert=- cert_source=-")
    finally:
        srv.stop()
