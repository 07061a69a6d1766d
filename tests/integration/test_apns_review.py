"""APNs answers and push certificate uploads at their edges: an apns-id
that is not text, a 410 for a token read by a retry, a replace parameter
that cannot guard anything, a subject too long to keep whole."""
import datetime
import threading
import time

import pytest  # noqa: F401
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki

from device import TOPIC
from device import Api
from test_apns import (env, server, api, upload, enrolled, tok, push,  # noqa: F401
                       start, stop)


def test_apns_id_that_is_not_utf8_is_not_passed_on(server, api, env):
    """An apns-id header with bytes that are not UTF-8: the push result
    still carries an apns_id (the one moonmdm sent), and the answer stays
    valid JSON with every field."""
    upload(api, env.cert, env.key)
    d = enrolled(server)
    env.standin.respond(tok(d), 200, apns_id=b"\xff\xfe-not-text", times=1)
    p = push(api, d)
    assert p["status"] == "pushed", p
    sent = env.standin.requests(tok(d))[-1]["headers"]["apns-id"]
    assert p.get("apns_id") == sent, (p, sent)


@pytest.mark.parametrize("query", ["?replace=", "?replace=" + TOPIC + "%00x"])
def test_pushcert_upload_with_an_unusable_replace_is_refused(server, api, env, query):
    """?replace=<topic> guards against installing a certificate for another
    topic; a replace value that is empty or holds a NUL
    must not turn the guard off: 400, and nothing is installed."""
    st, r = upload(api, env.cert, env.key, query=query)
    assert st == 400, (st, r)
    assert "replace" in r.get("detail", ""), r
    st, r = api.call("GET", "/v1/pushcert")
    assert st == 200 and r["pushcerts"] == [], r


def test_410_for_the_token_a_retry_read_is_stored(datadir, env):
    """A push fails with 503; while it waits for its retry the device sends
    a TokenUpdate with a new token; the retry goes to the new token and
    APNs answers 410. The caller is told token_invalid, and the record
    says so too (no push goes to that token until its next TokenUpdate)."""
    s = start(datadir, env, retry_delay='"2s"')
    try:
        api = Api(s)
        upload(api, env.cert, env.key)
        d = enrolled(s)
        old = tok(d)
        env.standin.respond(old, 503, "ServiceUnavailable", times=1)
        out = {}
        t = threading.Thread(target=lambda: out.update(push(api, d)))
        t.start()
        deadline = time.monotonic() + 10
        while not [r for r in env.standin.requests(old) if r["answered"]]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        d.token = bytes(32 * [7])
        env.standin.respond(tok(d), 410, "Unregistered")
        assert d.token_update() == 200
        t.join(30)
        assert out.get("status") == "token_invalid", out
        assert len(env.standin.requests(tok(d))) == 1
        show = api.call("GET", "/v1/devices/" + d.udid)[1]
        assert show["token_invalid"] is True, show
    finally:
        stop(s)


def test_pushcert_with_a_long_non_ascii_subject_keeps_its_subject(server, api, env):
    """A subject longer than moonmdm keeps, cut in the middle of a UTF-8
    character: PUT and GET /v1/pushcert still show a subject (JSON strings
    are UTF-8), the cut one without half a character."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Printed as "O=éé...é,UID=<topic>": the cut after 255 bytes falls
    # between the two bytes of an é.
    name = x509.Name([x509.NameAttribute(NameOID.USER_ID, TOPIC),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "\u00e9" * 200)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(env.push_ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(pki.now() - datetime.timedelta(minutes=5))
            .not_valid_after(pki.now() + datetime.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(env.push_ca_key, hashes.SHA256()))
    st, r = upload(api, cert, key)
    assert st == 200, r
    assert r.get("subject", "").startswith("O=\u00e9\u00e9"), r
    st, r = api.call("GET", "/v1/pushcert")
    subject = r["pushcerts"][0].get("subject")
    assert subject is not None and subject == "O=" + "\u00e9" * 126, r["pushcerts"][0]


def test_apns_url_is_quoted_in_the_ready_log_line(datadir, env):
    """apns.url is any https:// URL: a space and '=' in it must not make
    new fields in the apns.ready log line."""
    s = start(datadir, env, url='"https://127.0.0.1:1/a evil=1"')
    try:
        lines = [ln for ln in s.log().splitlines() if "apns.ready" in ln]
        assert lines, s.log()[-2000:]
        assert 'url="https://127.0.0.1:1/a evil=1"' in lines[-1], lines[-1]
    finally:
        stop(s)
