"""Password checks of the enrollment page: mdm.password.verify in the
authenticate hook hashes in the thread pool, and the hook runs again with
the result, so that a slow hash never holds the event loop."""
import base64
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
import requests

from conftest import SLOWDOWN, Server, http_request, read_response, run
from device import TOPIC, Api
from test_scep import scep_datadir

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def bcrypt_hash(password, cost):
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << cost))


POLICY = '''
local H = { alice = "%(alice)s", bob = "%(bob)s" }
local ABSURD = "$2b$31$" .. string.rep("a", 53)
return {
  authenticate = function(req)
    local u, pw = req.username, req.password or ""
    if u == "alice" then
      return { allow = mdm.password.verify(pw, H.alice), user = u, reason = "alice" }
    elseif u == "either" then
      -- two hashes: the hook runs again once for each
      if mdm.password.verify(pw, H.alice) or mdm.password.verify(pw, H.bob) then
        return { allow = true, user = u }
      end
      return { allow = false, reason = "neither" }
    elseif u == "wrapped" then
      local ok, r = pcall(mdm.password.verify, pw, H.alice)
      return { allow = ok and r == true, user = u, reason = "pcall " .. tostring(ok) }
    elseif u == "counter" then
      mdm.kv.put("before", (mdm.kv.get("before") or 0) + 1)
      local good = mdm.password.verify(pw, H.alice)
      mdm.kv.put("after", (mdm.kv.get("after") or 0) + 1)
      return { allow = good, user = u }
    elseif u == "kv" then
      return { allow = false, reason = "before=" .. tostring(mdm.kv.get("before")) ..
               " after=" .. tostring(mdm.kv.get("after")) }
    elseif u == "many" then
      for i = 1, 6 do
        if mdm.password.verify(pw .. i, H.alice) then return { allow = true } end
      end
      return { allow = false, reason = "none of six" }
    elseif u == "absurd" then
      local ok, why = mdm.password.verify(pw, ABSURD)
      return { allow = ok, reason = "absurd: " .. tostring(why) }
    end
    return { allow = false, reason = "unknown user" }
  end,
}
'''


def password_server(tmpdir_path, cost=5, threshold=1000, in_flight=64):
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(pdir, exist_ok=True)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(POLICY % {"alice": bcrypt_hash("wonderland", cost),
                          "bob": bcrypt_hash("builder", cost)})
    d = scep_datadir(tmpdir_path)
    d.write_config('  enroll = { topic = "%s", max_in_flight = %d },\n  policy = { dir = "%s" },\n'
                   '  security = { auth_fail_threshold = %d },'
                   % (TOPIC, in_flight, pdir, threshold))
    return Server(d, plain=True)


def sign_in(srv, user, password):
    return requests.get(srv.url + "/enroll", auth=(user, password),
                        verify=srv.datadir.ca_crt, timeout=60)


@pytest.fixture
def psrv(tmpdir_path):
    s = password_server(tmpdir_path)
    yield s
    assert s.stop() == 0


def test_right_password_gets_the_profile_and_wrong_one_403(psrv):
    r = sign_in(psrv, "alice", "wonderland")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-apple-aspen-config"
    r = sign_in(psrv, "alice", "wrong")
    assert r.status_code == 403 and r.json()["detail"] == "alice"
    # One enroll.authenticate line and one decision per sign-in.
    psrv.wait_log(r"event=enroll.authenticate .*user=alice allow=false")
    log = psrv.log()
    assert log.count("event=enroll.authenticate") == 2, log
    assert "wonderland" not in log
    st = requests.get(psrv.url + "/metrics", verify=psrv.datadir.ca_crt, timeout=10).text
    assert 'moonmdm_enroll_auth_total{result="allowed"} 1' in st
    assert 'moonmdm_enroll_auth_total{result="denied"} 1' in st
    assert 'moonmdm_policy_calls_total{hook="authenticate",outcome="ok"} 2' in st, st
    # Each sign-in ran the hook twice (stopped, then with the hash known)
    # and recorded one decision.
    code, r = Api(psrv).call("GET", "/v1/decisions?hook=authenticate&limit=50")
    assert code == 200 and len(r["decisions"]) == 2, r
    assert {d["decision"]["allow"] for d in r["decisions"]} == {True, False}, r


def test_a_hook_that_verifies_two_passwords(psrv):
    assert sign_in(psrv, "either", "wonderland").status_code == 200
    assert sign_in(psrv, "either", "builder").status_code == 200
    r = sign_in(psrv, "either", "nobody")
    assert r.status_code == 403 and r.json()["detail"] == "neither"


def test_a_hook_that_wraps_verify_in_pcall_gets_the_answer(psrv):
    assert sign_in(psrv, "wrapped", "wonderland").status_code == 200
    r = sign_in(psrv, "wrapped", "bad")
    assert r.status_code == 403 and r.json()["detail"] == "pcall true"


def test_only_the_final_run_writes_kv(psrv):
    assert sign_in(psrv, "counter", "wonderland").status_code == 200
    r = sign_in(psrv, "kv", "x")
    assert r.json()["detail"] == "before=1 after=1", r.text
    assert sign_in(psrv, "counter", "wrong").status_code == 403
    assert sign_in(psrv, "kv", "x").json()["detail"] == "before=2 after=2"


def test_too_many_passwords_in_one_call_fail_closed(psrv):
    r = sign_in(psrv, "many", "wonderland")
    assert r.status_code == 403
    assert "more than 4 passwords" in r.json()["detail"], r.text
    psrv.wait_log(r"event=policy.hook_failed .*hook=authenticate .*more than 4 passwords")


def test_an_absurd_cost_is_refused_with_a_reason(psrv):
    t0 = time.monotonic()
    r = sign_in(psrv, "absurd", "x")
    assert time.monotonic() - t0 < 5
    assert r.status_code == 403
    assert "bcrypt cost 31 is above 16" in r.json()["detail"], r.text
    psrv.wait_log(r"event=policy.password_refused .*bcrypt cost 31 is above 16")


def test_the_guard_counts_wrong_passwords(tmpdir_path):
    s = password_server(tmpdir_path, threshold=3)
    try:
        for _ in range(3):
            assert sign_in(s, "alice", "wrong").status_code == 403
        r = sign_in(s, "alice", "wonderland")
        assert r.status_code == 429 and r.headers["Retry-After"]
        s.wait_log(r"event=guard.lockout endpoint=enroll")
    finally:
        assert s.stop() == 0


def test_policy_test_verifies_synchronously(tmpdir_path):
    pdir = os.path.join(tmpdir_path, "pol")
    os.makedirs(os.path.join(pdir, "tests"))
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(POLICY % {"alice": bcrypt_hash("wonderland", 5), "bob": bcrypt_hash("b", 5)})
    with open(os.path.join(pdir, "tests", "auth_test.lua"), "w") as f:
        f.write('''
return {
  test_right = function()
    local d = mdm.test.call("authenticate", { username = "either", password = "wonderland" })
    assert(d.status == "ok" and d.allow == true, d.error)
  end,
  test_wrong = function()
    local d = mdm.test.call("authenticate", { username = "alice", password = "nope" })
    assert(d.status == "ok" and d.allow == false, d.error)
  end,
}
''')
    p = run("policy", "test", pdir)
    assert "2 passed, 0 failed" in p.stdout, p.stdout + p.stderr


# Polls /healthz over one keep-alive connection until a line comes on
# stdin, then prints the round-trip times.
PROBER = r"""
import http.client, select, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
lat = []
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.005)[0]:
    t = time.monotonic()
    c.request("GET", "/healthz")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    lat.append(time.monotonic() - t)
print(" ".join("%.6f" % x for x in lat))
"""


@pytest.mark.timing
def test_slow_hashes_do_not_stall_the_loop(tmpdir_path):
    # bcrypt cost 14: about 1 s a hash, well above what a loaded machine
    # adds to a /healthz round trip by itself.
    s = password_server(tmpdir_path, cost=14)
    prober = None
    try:
        t0 = time.monotonic()
        assert sign_in(s, "alice", "wonderland").status_code == 200
        one = time.monotonic() - t0
        codes = []
        # The prober is a process of its own, so that the signers' threads
        # (and Python's lock) do not delay its requests.
        prober = subprocess.Popen(
            [sys.executable, "-c", PROBER, str(s.plain_port)], stdout=subprocess.PIPE,
            stdin=subprocess.PIPE, text=True)
        assert prober.stdout.readline().strip() == "ready"

        def signer(pw):
            codes.append(sign_in(s, "alice", pw).status_code)

        time.sleep(0.1)
        ws = [threading.Thread(target=signer, args=(pw,))
              for pw in ["wonderland", "wrong"] * 3]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        out, _ = prober.communicate("stop\n", timeout=60)
        lat = [float(x) for x in out.split()]
        print(f"healthz max {max(lat):.4f} s over {len(lat)} probes; one sign-in {one:.3f} s")
        assert sorted(codes) == [200] * 3 + [403] * 3, codes
        # The hashes run in the thread pool: /healthz never waits for one.
        assert lat and max(lat) < one / 3 * SLOWDOWN, (sorted(lat)[-5:], one)
    finally:
        if prober is not None and prober.poll() is None:
            prober.kill()
            prober.wait()
        assert s.stop() == 0


def test_stopping_while_a_hash_is_pending_answers_and_exits_cleanly(tmpdir_path):
    s = password_server(tmpdir_path, cost=13)
    try:
        with s.connect() as sock:
            cred = base64.b64encode(b"alice:wonderland").decode()
            http_request(sock, "GET", "/enroll", {"Authorization": "Basic " + cred})
            time.sleep(0.1)
            s.proc.send_signal(signal.SIGTERM)
            r = read_response(sock)
        assert r.status == 200
        assert s.proc.wait(30) == 0, s.log()[-3000:]
        log = s.log()
        # The stop came while the hash was being made.
        assert log.index("event=server.stopping") < log.index("event=enroll.authenticate"), log
    finally:
        s.stop()


def log_count_settles(s, text, timeout=10.0, quiet=0.5):
    """How often text is in s's log once the count has not changed for
    quiet seconds (at most timeout seconds in all)."""
    deadline = time.monotonic() + timeout
    n, since = s.log().count(text), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.05)
        m = s.log().count(text)
        if m != n:
            n, since = m, time.monotonic()
    return n


def test_a_burst_of_wrong_passwords_gets_no_more_tries_than_the_threshold(tmpdir_path):
    # Sign-ins wait for their hash in parallel: those in flight count
    # against the threshold, as if they had been made one after another.
    s = password_server(tmpdir_path, cost=11, threshold=3)
    try:
        codes = []
        ws = [threading.Thread(target=lambda: codes.append(sign_in(s, "alice", "wrong").status_code))
              for _ in range(8)]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        assert sorted(codes) == [403] * 3 + [429] * 5, codes
        # The log reaches the test through a reader thread: wait for the
        # third line, and see that no fourth follows.
        assert log_count_settles(s, "event=enroll.authenticate") == 3
    finally:
        assert s.stop() == 0


def test_sign_ins_beyond_max_in_flight_get_503(tmpdir_path):
    in_flight = 2
    s = password_server(tmpdir_path, cost=12, in_flight=in_flight)
    try:
        got = []

        def one(i):
            r = sign_in(s, "either", "wonderland")
            got.append((r.status_code, r.headers.get("Retry-After")))

        ws = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        codes = sorted(c for c, _ in got)
        assert codes.count(200) >= in_flight and codes.count(503) >= 1, got
        assert all(ra == "1" for c, ra in got if c == 503), got
        s.wait_log(r"event=enroll.busy .*in_flight=2")
        # A refused sign-in decided nothing.
        assert log_count_settles(s, "event=enroll.authenticate") == codes.count(200)
        assert sign_in(s, "alice", "wonderland").status_code == 200
    finally:
        assert s.stop() == 0


def test_own_sign_in_does_not_reset_the_address_lockout(tmpdir_path):
    """A good sign-in cleared the address's failures: with one account of
    its own, a client could try other users' passwords without end (two
    failures, one sign-in, two more, ...). Only the user's are cleared."""
    s = password_server(tmpdir_path, threshold=3)
    try:
        codes = []
        for i in range(4):
            for name in ("victim%d" % i, "other%d" % i):
                codes.append(sign_in(s, name, "guess").status_code)
            codes.append(sign_in(s, "alice", "wonderland").status_code)
        assert 429 in codes, codes
        assert codes[:3] == [403, 403, 200], codes
    finally:
        assert s.stop() == 0


ANY_USER = '''
return {
  authenticate = function(req)
    if req.password == "pw" then return { allow = true, user = req.username } end
    return { allow = false, reason = "no" }
  end,
}
'''


def test_user_name_with_control_characters_is_refused(tmpdir_path):
    """The name goes into the enrollment profile's XML and the SCEP
    subject: with a control character the device got a profile it cannot
    parse (200). Such a name is now refused, and the log line quoted."""
    from test_scep_edges import scep_server_with_policy
    s, _ = scep_server_with_policy(tmpdir_path, ANY_USER, '  enroll = { topic = "%s" },' % TOPIC)
    try:
        assert sign_in(s, "a\x01b", "pw").status_code == 403
        assert s.wait_log(r"enroll\.authenticate .*allow=false .*control characters")
        assert sign_in(s, "alice", "pw").status_code == 200
    finally:
        assert s.stop() == 0
