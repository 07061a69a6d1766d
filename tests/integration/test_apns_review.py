"""APNs answers that must not leak into the API or the store as they are:
an apns-id header that is not text."""
import pytest  # noqa: F401

from device import TOPIC
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
