"""Edges of profiles.dir reloads, SCEP phase-3 slots and MDM reports: files
that are not plain files, names that are not UTF-8, reloads around a stop."""
import os
import signal
import subprocess
import threading
import time

import requests

from conftest import Server, run
from device import Api
from test_faults import _shrink_map
from test_profile_edges import profile, write_policy


def _start(tmpdir_path, datadir, watch=False, pdir_name="profiles"):
    pdir = os.path.join(tmpdir_path, pdir_name)
    os.makedirs(pdir, exist_ok=True)
    poldir = os.path.join(tmpdir_path, "policy")
    write_policy(poldir, [])
    datadir.write_config('  policy = { dir = "%s", watch = %s },\n  profiles = { dir = "%s" },'
                         % (poldir, "true" if watch else "false",
                            pdir.replace("\\", "\\\\").replace('"', '\\"')))
    return pdir, Server(datadir)


def _write(pdir, name, identifier, ssid="Office"):
    with open(os.path.join(pdir, name), "wb") as f:
        f.write(profile(identifier, ssid))


def _stored(api):
    st, r = api.call("GET", "/v1/profiles")
    assert st == 200, r
    return {p["identifier"]: p for p in r["profiles"]}


def _reload(srv, timeout=15):
    """POST /v1/policy/reload with a deadline: a reload that never ends is
    a failure, not a hung test."""
    r = requests.post(srv.url + "/v1/policy/reload",
                      headers={"Authorization": "Bearer " + srv.datadir.api_key},
                      verify=srv.datadir.ca_crt, timeout=timeout)
    return r.status_code, r.json()


# ---- profiles.dir ------------------------------------------------------------

def test_reload_with_a_fifo_in_the_directory_answers(tmpdir_path, datadir):
    """A named pipe called x.mobileconfig (nobody writes to it) is refused
    as not a plain file: the reload answers 422 naming it, the other files
    load, and a second reload is not held up behind the first."""
    a = "com.example.a"
    pdir, srv = _start(tmpdir_path, datadir)
    try:
        api = Api(srv)
        os.mkfifo(os.path.join(pdir, "pipe.mobileconfig"))
        _write(pdir, "a.mobileconfig", a)
        st, r = _reload(srv)
        assert st == 422, r
        errs = r["profiles"]["errors"]
        assert [e["file"] for e in errs] == ["pipe.mobileconfig"], r
        assert "not a regular file" in errs[0]["error"], r
        assert r["profiles"]["stored"] == [a], r
        st, r = _reload(srv)
        assert st == 422 and r["profiles"]["unchanged"] == 1, r
        assert sorted(_stored(api)) == [a]
    finally:
        assert srv.stop() == 0


def test_start_with_a_fifo_in_the_directory_fails_at_once(tmpdir_path, datadir):
    """At start the same pipe stops the start with a message naming it,
    rather than hanging before the server listens."""
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    os.mkfifo(os.path.join(pdir, "pipe.mobileconfig"))
    t0 = time.monotonic()
    _, srv = _start(tmpdir_path, datadir)
    try:
        assert srv.proc.wait(20) == 1, srv.log()
        assert time.monotonic() - t0 < 20
        srv.wait_log(r"event=server.start_failed .*pipe.mobileconfig: not a regular file")
    finally:
        srv.kill()


def test_file_name_not_utf8_is_reported_not_lost(tmpdir_path, datadir):
    """A file whose name is not UTF-8 (a Latin-1 name) is refused with an
    error that the answer carries: it is not dropped from the report (which
    would answer 200), and GET /v1/profiles still lists every profile."""
    a = "com.example.a"
    pdir, srv = _start(tmpdir_path, datadir)
    try:
        api = Api(srv)
        _write(pdir, "a.mobileconfig", a)
        _write(os.fsencode(pdir), b"caf\xe9.mobileconfig", "com.example.latin1")
        st, r = _reload(srv)
        assert st == 422, r
        errs = r["profiles"]["errors"]
        assert len(errs) == 1, r
        assert errs[0]["file"] == "caf\\xE9.mobileconfig", r
        assert "not UTF-8" in errs[0]["error"], r
        assert r["profiles"]["stored"] == [a], r
        assert sorted(_stored(api)) == [a]
    finally:
        assert srv.stop() == 0


def _big_dir(pdir, n, size):
    for i in range(n):
        _write(pdir, "p%02d.mobileconfig" % i, "com.example.big%02d" % i,
               ("%02d" % i) * (size // 2))


def test_stop_while_a_reload_runs(tmpdir_path, datadir):
    """SIGTERM while a reload reads a large directory, with another asked
    meanwhile: both requests are answered (or their connection closed),
    the server exits 0, and what the reload stored is there at the next
    start."""
    pdir, srv = _start(tmpdir_path, datadir)
    try:
        _big_dir(pdir, 24, 1 << 20)
        answers = []

        def reload():
            try:
                answers.append(_reload(srv, timeout=60)[0])
            except requests.RequestException as e:
                answers.append(type(e).__name__)

        threads = [threading.Thread(target=reload) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        assert srv.proc.wait(60) == 0, srv.log()[-3000:]
        assert len(answers) == 2, answers
    finally:
        assert srv.stop() == 0
    srv = Server(datadir)
    try:
        assert len(_stored(Api(srv))) == 24
    finally:
        assert srv.stop() == 0


# ---- log lines ---------------------------------------------------------------

def test_log_lines_quote_a_path_and_a_udid(tmpdir_path, datadir):
    """Values that may hold a quote or '=' are written as quoted log values
    (the line stays one key=value list): the watched directory's path in
    profiles.changed, a challenge's UDID in scep.challenge_created."""
    pdir, srv = _start(tmpdir_path, datadir, watch=True, pdir_name='pro"files')
    try:
        _write(pdir, "a.mobileconfig", "com.example.a")
        srv.wait_log(r'event=profiles.changed dir="[^ ]*/pro\\"files" action=reload')
        st, r = Api(srv).call("POST", "/v1/challenges", {"udid": 'dev"x=1'})
        assert st == 201, r
        srv.wait_log(r'event=scep.challenge_created .*udid="dev\\"x=1" expires=')
    finally:
        assert srv.stop() == 0


def test_policy_error_answer_carries_profiles_beside_kept(tmpdir_path, datadir):
    """A reload whose policy does not load answers 422 "policy", with the
    profiles.dir report at the top level (as API.md shows), not in kept;
    what the directory stored stays."""
    a = "com.example.a"
    pdir, srv = _start(tmpdir_path, datadir)
    try:
        _write(pdir, "a.mobileconfig", a)
        with open(os.path.join(tmpdir_path, "policy", "init.lua"), "w") as f:
            f.write("return {\n")
        st, r = _reload(srv)
        assert st == 422 and r["error"] == "policy", r
        assert r["profiles"]["stored"] == [a], r
        assert "profiles" not in r["kept"], r
        assert sorted(_stored(Api(srv))) == [a]
    finally:
        assert srv.stop() == 0



def _put_raw(datadir, table, key, value):
    """Stores value under key in a table with LMDB's own tool (the server
    is stopped)."""
    esc = lambda b: "".join("\\%02x" % x for x in b)  # noqa: E731
    p = subprocess.run(["mdb_load", "-T", "-s", table, os.path.join(datadir.path, "db")],
                       input=("%s\n%s\n" % (esc(key), esc(value))).encode(),
                       capture_output=True)
    assert p.returncode == 0, p.stderr


def test_unreadable_stored_profile_is_rewritten_by_its_file(tmpdir_path, datadir):
    """A stored profile record that does not decode (damage, a later
    layout) under the identifier a file of profiles.dir holds: the file
    rewrites it at start and on reload, rather than failing every load
    ("nothing was stored") and, at start, the start itself."""
    a, b = "com.example.a", "com.example.b"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    _write(pdir, "a.mobileconfig", a)
    _put_raw(datadir, "profiles", a.encode(), b"\xff not a plist")
    _, srv = _start(tmpdir_path, datadir)
    try:
        assert srv.port is not None, srv.log()
        api = Api(srv)
        assert _stored(api)[a]["source"] == "dir"
        srv.stop()
        _put_raw(datadir, "profiles", b.encode(), b"\xff not a plist")
        srv = Server(datadir)
        _write(pdir, "b.mobileconfig", b)
        st, r = _reload(srv)
        assert st == 200 and r["profiles"]["updated"] == [b], r
        assert sorted(_stored(Api(srv))) == [a, b]
    finally:
        assert srv.stop() == 0



def test_renamed_file_keeps_uploaded_at(tmpdir_path, datadir):
    """A file renamed with its content unchanged: the profile now names the
    new file, and keeps uploaded_at (when the content now stored was
    stored, as OPERATIONS.md says); devices get nothing new."""
    a = "com.example.a"
    pdir, srv = _start(tmpdir_path, datadir)
    try:
        api = Api(srv)
        _write(pdir, "a.mobileconfig", a)
        assert _reload(srv)[0] == 200
        before = _stored(api)[a]
        time.sleep(1.1)                             # uploaded_at has whole seconds
        os.rename(os.path.join(pdir, "a.mobileconfig"), os.path.join(pdir, "b.mobileconfig"))
        st, r = _reload(srv)
        assert st == 200 and r["profiles"]["unchanged"] == 1, r
        now = _stored(api)[a]
        assert now["file"] == "b.mobileconfig", now
        assert now["uploaded_at"] == before["uploaded_at"], (before, now)
    finally:
        assert srv.stop() == 0

def _small_store(tmpdir_path, datadir):
    """A config with profiles.dir and a store whose map cannot grow past
    2 MiB; returns the (empty) profiles directory."""
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    poldir = os.path.join(tmpdir_path, "policy")
    write_policy(poldir, [])
    _shrink_map(datadir, 2 << 20)
    datadir.write_config('  store = { path = "db", map_size = "2MiB", map_max = "2MiB" },\n'
                         '  policy = { dir = "%s", watch = false },\n  profiles = { dir = "%s" },'
                         % (poldir, pdir))
    return pdir


def test_reload_into_a_full_store_answers_503(tmpdir_path, datadir):
    """Profiles that do not fit in the store (LMDB map at map_max): the
    reload answers 503 storage_unavailable with Retry-After, as other
    writes do, not 422 as if a file were bad; the profiles report says
    which files were not stored, and the server goes on."""
    pdir = _small_store(tmpdir_path, datadir)
    srv = Server(datadir)
    try:
        _big_dir(pdir, 6, 1 << 20)
        r = requests.post(srv.url + "/v1/policy/reload",
                          headers={"Authorization": "Bearer " + srv.datadir.api_key},
                          verify=srv.datadir.ca_crt, timeout=30)
        body = r.json()
        assert r.status_code == 503, (r.status_code, body)
        assert body["error"] == "storage_unavailable", body
        assert r.headers.get("Retry-After") == "5", r.headers
        assert body["profiles"]["errors"], body
        assert all("store" in e["error"] for e in body["profiles"]["errors"]), body
        st, _ = Api(srv).call("GET", "/v1/profiles")
        assert st == 200
        # The CLI says what the policy did and which files were not stored.
        p = run("policy", "reload", "--config", datadir.config, "--url", srv.url,
                "--api-key", datadir.api_key, "--cacert", datadir.ca_crt, check=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "policy reloaded" in p.stdout, (p.stdout, p.stderr)
        assert "p05.mobileconfig: store: storage full" in p.stderr, (p.stdout, p.stderr)
    finally:
        assert srv.stop() == 0


def test_file_not_stored_keeps_the_profile_it_held(tmpdir_path, datadir):
    """A file whose new content (a new identifier) the store cannot take:
    the profile the file held before is not removed (a file that fails
    never removes a profile), although its identifier is in no file."""
    old, new = "com.example.old", "com.example.new"
    pdir = _small_store(tmpdir_path, datadir)
    _write(pdir, "a.mobileconfig", old)
    _write(pdir, "big.mobileconfig", "com.example.big", "x" * (1 << 20))
    srv = Server(datadir)
    try:
        api = Api(srv)
        assert sorted(_stored(api)) == ["com.example.big", old]
        _write(pdir, "a.mobileconfig", new, "y" * (1 << 20))
        st, r = _reload(srv)
        assert st == 503, r
        assert [e["file"] for e in r["profiles"]["errors"]] == ["a.mobileconfig"], r
        assert r["profiles"]["removed"] == [], r
        assert sorted(_stored(api)) == ["com.example.big", old]
    finally:
        assert srv.stop() == 0
