"""APNs answers that must not leak into the API or the store as they are:
an apns-id header that is not text."""
import pytest  # noqa: F401

from test_apns import env, server, api, upload, enrolled, tok, push  # noqa: F401


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
