"""apns.max_in_flight shared by several topics: a topic whose requests
stall (APNs slow or silent for its certificate) holds at most its share of
the slots, so the pushes of the other topics still go out at once."""
import threading
import time

import pytest

from conftest import SLOWDOWN
from device import TOPIC, Api, Device
from test_apns import (OTHER_TOPIC, env, fingerprint, start, stop,  # noqa: F401
                       upload)

MAX_IN_FLIGHT = 8
STALL_S = 4


def enrolled_on(server, topic):
    d = Device(server)
    assert d.authenticate(Topic=topic) == 200
    assert d.token_update(Topic=topic) == 200
    return d


class TwoTopics:
    """A server with two topics, the first of which APNs answers only after
    STALL_S seconds; stalled pushes are started in a thread."""

    def __init__(self, datadir, env, n_stalled):
        self.env = env
        self.s = start(datadir, env, max_in_flight=str(MAX_IN_FLIGHT), connections="2",
                       retry_max="0", timeout='"30s"')
        self.api = Api(self.s)
        stalled_cert, stalled_key = env.push_cert()
        other_cert, other_key = env.push_cert(OTHER_TOPIC)
        assert upload(self.api, stalled_cert, stalled_key)[0] == 200
        assert upload(self.api, other_cert, other_key)[0] == 200
        self.stalled = [enrolled_on(self.s, TOPIC)
                        for _ in range(n_stalled)]
        self.other = enrolled_on(self.s, OTHER_TOPIC)
        self.stalled_fp = fingerprint(stalled_cert)
        env.standin.respond(status=200, delay=STALL_S, fingerprint=self.stalled_fp)
        self.answer = {}
        self.thread = None

    def push_stalled(self):
        ids = ",".join(d.udid for d in self.stalled)

        def run():
            self.answer.update(zip(("code", "body"), self.api.call("POST", "/v1/push/" + ids)))

        self.thread = threading.Thread(target=run)
        self.thread.start()
        self.wait_stalled_requests(1)

    def wait_stalled_requests(self, n):
        deadline = time.monotonic() + 10 * SLOWDOWN
        while len(self.stalled_requests()) < n:
            assert time.monotonic() < deadline, self.stalled_requests()
            time.sleep(0.02)

    def stalled_requests(self):
        return [r for r in self.env.standin.requests() if r["cert_sha256"] == self.stalled_fp]

    def push_other(self):
        t0 = time.monotonic()
        st, r = self.api.call("POST", "/v1/push/" + self.other.udid)
        return st, r, time.monotonic() - t0

    def close(self):
        if self.thread is not None:
            self.thread.join(60)
        stop(self.s)


def test_a_stalled_topic_holds_at_most_its_share(datadir, env):
    """Two topics share 8 slots: the stalled one gets at most 4 of them
    while its other pushes wait; they all go out once it answers, and the
    other topic is pushed meanwhile."""
    t = TwoTopics(datadir, env, n_stalled=10)
    try:
        t.push_stalled()
        t.wait_stalled_requests(MAX_IN_FLIGHT // 2)
        time.sleep(1)
        assert len(t.stalled_requests()) == MAX_IN_FLIGHT // 2, len(t.stalled_requests())
        st, r, _ = t.push_other()
        assert st == 200 and "push_result" in r["status"][t.other.udid], r
        assert len(t.stalled_requests()) == MAX_IN_FLIGHT // 2
        t.thread.join(60)
        assert t.answer.get("code") == 200, t.answer
        assert all("push_result" in v for v in t.answer["body"]["status"].values()), t.answer
        assert len(t.stalled_requests()) == 10
    finally:
        t.close()


@pytest.mark.timing
def test_other_topics_are_pushed_while_one_stalls(datadir, env):
    """Every slot a stalled topic could take is taken (more pushes for it
    than apns.max_in_flight); a push for the other topic is still answered
    by APNs within a second, not after the stall."""
    t = TwoTopics(datadir, env, n_stalled=MAX_IN_FLIGHT + 1)
    try:
        t.push_stalled()
        time.sleep(0.5)
        st, r, took = t.push_other()
        assert st == 200 and "push_result" in r["status"][t.other.udid], r
        assert took < 1.0 * SLOWDOWN, took
    finally:
        t.close()


# ---- a retry that ends without an APNs answer ------------------------------------------

def pushable_device(s, env):
    """Uploads env's push certificate to s and enrolls a device: (Api, Device)."""
    api = Api(s)
    upload(api, env.cert, env.key)
    d = Device(s)
    d.enroll()
    return api, d


def raw_result(s, d):
    """The push result of d's last push as moonmdm's own API shows it."""
    api = Api(s)
    st, r = api.send("ProfileList", [d.udid])
    assert st == 201, r
    return r["push"][d.udid]


def test_retry_that_times_out_shows_no_earlier_apns_status(datadir, env):
    """503, then the retry gets no answer before apns.timeout: the result
    says the request timed out and carries no APNs status or reason (those
    of the 503 are not how the push ended)."""
    s = start(datadir, env, retry_max="1", timeout='"1s"', coalesce_window="0")
    try:
        _, d = pushable_device(s, env)
        env.standin.respond(d.token.hex(), 503, "ServiceUnavailable", times=1)
        env.standin.respond(d.token.hex(), 200, delay=5)
        p = raw_result(s, d)
        assert p["status"] == "error" and "gave up after 2 attempts" in p["error"], p
        assert "apns_status" not in p and "apns_reason" not in p, p
    finally:
        stop(s)


def test_retry_of_a_checked_out_device_shows_no_earlier_apns_status(datadir, env):
    """503, then the device checks out before the retry: the push ends as
    disabled, without the 503's status and reason."""
    s = start(datadir, env, retry_max="1", retry_delay='"2s"', coalesce_window="0")
    try:
        _, d = pushable_device(s, env)
        env.standin.respond(d.token.hex(), 503, "ServiceUnavailable", times=1)
        out = {}
        t = threading.Thread(target=lambda: out.update(raw_result(s, d)))
        t.start()
        env.standin.wait_requests(1, d.token.hex())
        assert d.checkin("CheckOut", Topic=TOPIC)[0] == 200
        t.join(30)
        assert out.get("status") == "disabled", out
        assert "apns_status" not in out and "apns_reason" not in out, out
    finally:
        stop(s)


# ---- push answers for ids that are not text ---------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
def test_push_answer_keeps_an_id_that_is_not_utf8(datadir, env, method):
    """An enrollment id in the path that is not UTF-8 (%FF) cannot be a
    JSON key as it is: the push answer still has an entry for it, under
    the id as written in the path, and counts it (207, not 200)."""
    s = start(datadir, env)
    try:
        api, d = pushable_device(s, env)
        st, r = api.call(method, "/v1/push/%FF," + d.udid + ",a%C3%28b%25")
        assert st == 207, (st, r)
        got = r["status"]
        assert set(got) == {d.udid, "%FF", "a%C3(b%25"}, got
        assert "push_result" in got[d.udid], got
        assert "no enrollment" in got["%FF"]["push_error"], got
        assert "no enrollment" in got["a%C3(b%25"]["push_error"], got
    finally:
        stop(s)


def test_enqueue_answer_keeps_an_id_that_is_not_utf8(datadir, env):
    """The NanoMDM enqueue answer too: the id that is not UTF-8 has its
    entry (its enqueue failed), beside the one that was queued and pushed."""
    import plistlib
    s = start(datadir, env)
    try:
        api, d = pushable_device(s, env)
        st, r = api.call("PUT", "/v1/enqueue/" + d.udid + ",%FF",
                         plistlib.dumps({"Command": {"RequestType": "ProfileList"}}),
                         "application/x-apple-plist")
        assert st == 207, (st, r)
        assert set(r["status"]) == {d.udid, "%FF"}, r
        assert r["status"][d.udid]["push_result"], r
        assert "command_error" in r["status"]["%FF"], r
    finally:
        stop(s)
