"""Edges of APNs pushes: a token that changed while a push was on its
way, a 410 for a token registered again, push certificates that cannot work
(a key TLS refuses, not an MDM topic), and an APNs side that misbehaves
(GOAWAY, resets, garbage, silence) or a shutdown with pushes pending."""
import datetime
import os
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from device import TOPIC, Api
from test_apns import (env, server, api, upload, enrolled, tok, push, fingerprint,  # noqa: F401
                       start, stop, metric)


def push_in_flight(api, d, env, token):
    """Pushes d in a thread and returns once the stand-in has the request
    for token: the thread, and the dict its push result goes into."""
    first = {}
    t = threading.Thread(target=lambda: first.update(push(api, d)))
    t.start()
    deadline = time.monotonic() + 10
    while not env.standin.requests(token):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return t, first


def test_push_after_token_change_joins_in_flight_push_to_old_token(server, api, env):
    """A TokenUpdate with a new token arrives while a push to the old token
    is in flight; a command queued after it must be pushed to the NEW
    token. The new push coalesces onto the old one and inherits its 410."""
    upload(api, env.cert, env.key)
    d = enrolled(server)
    old = tok(d)
    env.standin.respond(old, 410, "Unregistered", delay=1.5, times=1)
    t, first = push_in_flight(api, d, env, old)
    # The device re-registers with a new token while the old push is in flight.
    d.token = os.urandom(32)
    assert d.token_update() == 200
    second = push(api, d)       # a command queued for the new token
    t.join(30)
    assert first["status"] == "token_invalid", first
    # The enrollment correctly keeps its (new) token valid...
    assert api.call("GET", "/v1/devices/" + d.udid)[1]["token_invalid"] is False
    # ...but the command queued after the TokenUpdate got the old token's
    # verdict and no push ever went to the new token.
    assert second["status"] == "pushed", second
    assert len(env.standin.requests(tok(d))) == 1


def test_push_after_reenrollment_is_coalesced_with_push_to_old_token(server, api, env):
    """Within apns.coalesce_window, a device re-enrolls (Authenticate +
    TokenUpdate, new token). A command queued then must be pushed to the
    new token; it is answered 'pushed' from the push to the old token."""
    upload(api, env.cert, env.key)
    d = enrolled(server)
    p1 = push(api, d)
    assert p1["status"] == "pushed", p1
    d.token = os.urandom(32)
    d.enroll()                  # re-enrollment: new installation, new token
    p2 = push(api, d)
    assert len(env.standin.requests(tok(d))) == 1, (p2, len(env.standin.requests()))
    assert not p2.get("coalesced"), p2


# ---- a misbehaving APNs -----------------------------------------------------------

def _misbehave(env, mode, count):
    """Makes the stand-in misbehave on the next `count` requests."""
    st = env.standin
    orig = type(st)._request
    left = [count]

    def _request(self, conn, writer, stream_id, rec, fp, conn_id):
        if left[0] <= 0:
            return orig(self, conn, writer, stream_id, rec, fp, conn_id)
        left[0] -= 1
        with self.lock:
            self.records.append({"token": rec["headers"].get(":path", "").rsplit("/", 1)[-1],
                                 "mode": mode, "answered": True, "time": time.time()})
        loop = __import__("asyncio").get_event_loop()
        if mode == "goaway":
            conn.close_connection(error_code=0, last_stream_id=0)
            writer.write(conn.data_to_send())
            loop.call_soon(writer.close)
        elif mode == "rst_refused":
            conn.reset_stream(stream_id, error_code=7)
        elif mode == "headers_then_close":
            conn.send_headers(stream_id, [(":status", "200")], end_stream=False)
            writer.write(conn.data_to_send())
            loop.call_soon(writer.close)
        elif mode == "garbage_frames":
            writer.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00garbage!!" * 3)
        elif mode == "silent":
            pass
        elif mode == "bad_json_410":
            conn.send_headers(stream_id, [(":status", "410")], end_stream=False)
            conn.send_data(stream_id, b'{"reason": [1,2', end_stream=True)
        elif mode == "bad_status":
            conn.send_headers(stream_id, [(":status", "999")], end_stream=True)

    st._request = _request.__get__(st)


@pytest.mark.parametrize("mode", ["goaway", "rst_refused", "headers_then_close",
                                  "garbage_frames", "silent", "bad_json_410", "bad_status"])
def test_misbehaving_apns_then_recovery(datadir, env, mode):
    s = start(datadir, env, timeout='"1s"', retry_max="2")
    try:
        api = Api(s)
        upload(api, env.cert, env.key)
        d = enrolled(s)
        _misbehave(env, mode, 1)
        t0 = time.monotonic()
        p = push(api, d)
        print(mode, p, time.monotonic() - t0)
        # After the misbehaviour, a push to a second device goes through.
        d2 = enrolled(s)
        p2 = push(api, d2)
        assert p2["status"] == "pushed", (mode, p2)
        if mode not in ("bad_json_410",):
            assert p["status"] in ("pushed", "error"), p
    finally:
        stop(s)


# ---- certificate uploads that are accepted but cannot work -------------------------

def _cert(env, topic=TOPIC, key=None, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), ca=False,
          algo=None):
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.USER_ID, topic),
                      x509.NameAttribute(NameOID.COMMON_NAME, "APSP:test")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(env.push_ca.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(pki.now() - datetime.timedelta(minutes=5))
         .not_valid_after(pki.now() + datetime.timedelta(days=365)))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return b.sign(env.push_ca_key, algo or hashes.SHA256()), key


def test_upload_of_a_push_cert_whose_key_tls_refuses_is_accepted(server, api, env):
    """A 1024-bit RSA push certificate: the upload says 200, and then every
    push fails locally (OpenSSL's security level refuses the key) after
    1 + retry_max attempts, with "cannot reach APNs"."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert, key = _cert(env, key=weak)
    st, r = upload(api, cert, key)
    d = enrolled(server)
    p = push(api, d)
    assert p["status"] == "pushed" or st == 400, (st, r, p)


def test_upload_of_a_certificate_that_is_not_an_mdm_push_certificate(server, api, env):
    """Any certificate with a UID attribute is taken as a push certificate:
    here a UID that is not an APNs MDM topic and a TLS *server* certificate.
    It becomes the primary topic, which enrollment profiles then carry."""
    cert, key = _cert(env, topic="hello", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    st, r = upload(api, cert, key)
    assert st == 400, (st, r)


def test_shutdown_with_a_push_waiting_for_apns(datadir, env):
    datadir.write_config(env.config(timeout='"60s"') + '\nhttp = { shutdown_grace = "1s" },')
    from conftest import Server
    s = Server(datadir)
    api = Api(s)
    upload(api, env.cert, env.key)
    d = enrolled(s)
    env.standin.respond(tok(d), 200, delay=20)
    out = {}

    def one():
        try:
            out["r"] = api.call("POST", "/v1/push/" + d.udid)
        except Exception as e:  # noqa: BLE001
            out["e"] = repr(e)

    t = threading.Thread(target=one)
    t.start()
    env.standin.wait_requests(0)
    deadline = time.monotonic() + 10
    while not env.standin.requests(tok(d)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    rc = s.stop(timeout=40)
    took = time.monotonic() - t0
    t.join(30)
    print(out, took, rc)
    assert rc == 0, s.log()[-3000:]
    assert took < 8, took


def test_410_disables_a_token_reregistered_while_the_push_was_in_flight(server, api, env):
    """The device sends a TokenUpdate (same token, as devices do) after the
    push went out and before APNs's 410 comes back: the TokenUpdate is
    newer than the verdict, yet the token ends up marked invalid and every
    later push is refused locally until yet another TokenUpdate."""
    upload(api, env.cert, env.key)
    d = enrolled(server)
    env.standin.respond(tok(d), 410, "Unregistered", delay=1.5, times=1)
    t, first = push_in_flight(api, d, env, tok(d))
    sent_at = time.time()
    assert d.token_update() == 200       # re-registers after the push was sent
    t.join(30)
    assert first["status"] == "token_invalid", first
    show = api.call("GET", "/v1/devices/" + d.udid)[1]
    assert show["token_invalid"] is False, (show, sent_at)


# ---- what APNs and certificates put into logs and metrics ---------------------------

def test_apns_id_from_apns_is_quoted_in_the_log(server, api, env):
    """The apns-id header comes from the peer: spaces and '=' in it must not
    make new fields in the log line."""
    upload(api, env.cert, env.key)
    d = enrolled(server)
    env.standin.respond(tok(d), 200, apns_id="x evil=1", times=1)
    p = push(api, d)
    assert p["status"] == "pushed", p
    # The log reaches the test through a reader thread: wait for the line.
    line = server.wait_log(r"event=apns\.pushed .*").group(0)
    assert 'apns_id="x evil=1"' in line, line


def test_topic_is_escaped_in_metric_labels_and_logs(server, api, env):
    """A topic with a double quote and a backslash (any UID is taken as
    the topic): the /metrics text stays well formed."""
    import requests
    topic = TOPIC + '"x\\y'
    cert, key = env.push_cert(topic=topic)
    st, r = upload(api, cert, key)
    assert st == 200, r
    text = requests.get(server.url + "/metrics", verify=server.datadir.ca_crt, timeout=10).text
    want = 'moonmdm_apns_certificate_expiry_seconds{topic="%s\\"x\\\\y"}' % TOPIC
    assert want in text, [l for l in text.splitlines() if "expiry_seconds" in l]
    lines = [l for l in server.log().splitlines() if "apns.pushcert_installed" in l]
    assert 'topic="%s\\"x\\\\y"' % TOPIC in lines[-1], lines[-1]


def test_topic_with_a_control_character_is_refused(server, api, env):
    """The topic goes into the apns-topic request header: a newline in it
    would end the header."""
    cert, key = env.push_cert(topic=TOPIC + "\nx-evil: 1")
    st, r = upload(api, cert, key)
    assert st == 400 and "control character" in str(r), (st, r)


def test_max_in_flight_has_an_upper_bound(datadir, env):
    """apns.max_in_flight sizes a table allocated at start: an absurd value
    is a config error, not an allocation of terabytes."""
    from conftest import run
    datadir.write_config(env.config(max_in_flight="1000000000000"))
    p = run("config", "check", datadir.config, check=False)
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "apns.max_in_flight" in p.stderr + p.stdout and "at most" in p.stderr + p.stdout, \
        (p.stdout, p.stderr)


def test_403_for_a_certificate_replaced_meanwhile(server, api, env):
    """APNs answers 403 to a request sent with a certificate that a new one
    replaced while the request was out: the topic is not blocked, and the
    push is tried again with the new certificate instead of telling the
    caller that pushes stay off."""
    upload(api, env.cert, env.key)
    d = enrolled(server)
    env.standin.respond(status=403, reason="BadCertificate", fingerprint=fingerprint(env.cert),
                        delay=1.5)
    t, first = push_in_flight(api, d, env, tok(d))
    cert2, key2 = env.push_cert()
    st, r = upload(api, cert2, key2)
    assert st == 200 and r["replaced"] is True, r
    t.join(30)
    assert "stay off" not in first.get("error", ""), first
    assert first["status"] == "pushed", first
    assert env.standin.requests()[-1]["cert_sha256"] == fingerprint(cert2)
    assert metric(server, "moonmdm_apns_topic_blocked", 'topic="%s"' % TOPIC) == 0


# ---- TLS-level refusals of the push certificate ------------------------------------

@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_tls_refusal_of_the_client_certificate_blocks_the_topic(datadir, env, tls):
    """APNs refuses the client certificate in the TLS handshake (a fatal
    alert such as unknown_ca): that is a push-certificate problem like a
    403, not "cannot reach APNs". The topic is blocked at once, without
    retries, and the log names the TLS alert."""
    from apns_standin import TlsRefuser
    import ssl
    version = ssl.TLSVersion.TLSv1_2 if tls == "1.2" else ssl.TLSVersion.TLSv1_3
    refuser = TlsRefuser(env.standin_cert, env.standin_key, client_ca=env.push_ca_path,
                         tls_version=version).start()
    try:
        s = start(datadir, env, retry_max="3", url='"%s"' % refuser.url)
        try:
            api = Api(s)
            other_ca, other_key = pki.make_ca("Not Apple")
            import test_apns
            cert, key = test_apns.make_push_cert(other_ca, other_key)
            st, r = upload(api, cert, key)
            assert st == 200, r
            d = enrolled(s)
            p = push(api, d)
            assert p["status"] == "error", p
            assert "cannot reach" not in p["error"] and "PUT /v1/pushcert" in p["error"], p
            assert "unknown_ca" in p["error"], p
            s.wait_log(r"level=error event=apns.certificate_rejected topic=\S+ "
                       r"reason=tls:unknown_ca")
            labels = 'topic="%s"' % TOPIC
            assert metric(s, "moonmdm_apns_topic_blocked", labels) == 1
            assert metric(s, "moonmdm_apns_retries_total") == 0
            assert refuser.connections == 1, refuser.alerts
            # Blocked: the next push sends nothing.
            p = push(api, d)
            assert p["status"] == "error" and "PUT /v1/pushcert" in p["error"], p
            assert refuser.connections == 1
        finally:
            stop(s)
    finally:
        refuser.stop()
