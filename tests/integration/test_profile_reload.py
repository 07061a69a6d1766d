"""profiles.dir reloaded while the server runs (SIGHUP, POST
/v1/policy/reload), and failed installs retried at later
reconciliations."""
import os
import signal
import threading
import time

from conftest import Server, run
from device import Api, Device
from test_mdm import preload_env
from test_profile_edges import profile, start, types, write_policy


def write_profile(pdir, name, identifier, ssid="Office"):
    with open(os.path.join(pdir, name + ".mobileconfig"), "wb") as f:
        f.write(profile(identifier, ssid))


def stored(api):
    st, r = api.call("GET", "/v1/profiles")
    assert st == 200, r
    return {p["identifier"]: p for p in r["profiles"]}


def start_with_dir(tmpdir_path, datadir, wanted, watch=False, env=None):
    """The server with profiles.dir. The directory is not watched unless
    asked, so that a test that reloads by SIGHUP or the API does not race
    the watch's own reload (each would see the other's change)."""
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir, exist_ok=True)
    poldir = os.path.join(tmpdir_path, "policy")
    write_policy(poldir, wanted)
    datadir.write_config('  policy = { dir = "%s", watch = %s },\n  profiles = { dir = "%s" },'
                         % (poldir, "true" if watch else "false", pdir))
    srv = Server(datadir, env=env)
    return pdir, (srv, Api(srv), poldir)


def count(srv, event):
    with srv.log_lock:
        return sum(("event=%s " % event) in l for l in srv.log_lines)


def sighup_and_wait(srv):
    """SIGHUP; waits for the profiles.dir reload and then the policy's."""
    before = (count(srv, "profiles.reloaded"), count(srv, "policy.reload_unchanged") +
              count(srv, "policy.reloaded"))
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = (count(srv, "profiles.reloaded"), count(srv, "policy.reload_unchanged") +
               count(srv, "policy.reloaded"))
        if now[0] > before[0] and now[1] > before[1]:
            return
        time.sleep(0.02)
    raise AssertionError("no reload after SIGHUP:\n" + srv.log()[-3000:])


def test_sighup_reloads_profiles_dir_and_devices_follow(tmpdir_path, datadir):
    """A file changed, one deleted, one added, then SIGHUP: the store and
    the devices' reconciliation follow; a second SIGHUP with nothing
    changed changes nothing."""
    a, b, c = "com.example.a", "com.example.b", "com.example.c"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a", a, "Old")
    write_profile(pdir, "b", b)
    pdir, (srv, api, poldir) = start_with_dir(tmpdir_path, datadir, [a, b, c])
    try:
        before = stored(api)
        assert sorted(before) == [a, b]
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run()) == ["InstallProfile"] * 2
        write_profile(pdir, "a", a, "New")
        os.unlink(os.path.join(pdir, "b.mobileconfig"))
        write_profile(pdir, "c", c)
        write_policy(poldir, [a, c])               # the same SIGHUP reloads the policy
        sighup_and_wait(srv)
        now = stored(api)
        assert sorted(now) == [a, c], now
        assert now[a]["hash"] != before[a]["hash"]
        assert now[c]["source"] == "dir"
        srv.wait_log(r"event=profiles.removed .*identifier=com.example.b")
        got = dev.run()
        assert sorted(types(got)) == ["InstallProfile", "InstallProfile", "RemoveProfile"], \
            types(got)
        removed = [cmd["Command"]["Identifier"] for cmd in got
                   if cmd["Command"]["RequestType"] == "RemoveProfile"]
        assert removed == [b]
        sighup_and_wait(srv)
        again = stored(api)
        assert again == now, (again, now)          # uploaded_at kept: nothing rewritten
        assert dev.run() == []
    finally:
        assert srv.stop() == 0


def test_bad_file_on_reload_keeps_its_profile_and_the_others_load(tmpdir_path, datadir):
    """A file broken by an edit: the profile it held stays as stored (it
    is not pruned either), the other files load, and the reload API
    answers 422 naming the file."""
    a, c = "com.example.a", "com.example.c"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a", a)
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [a, c])
    try:
        before = stored(api)
        with open(os.path.join(pdir, "a.mobileconfig"), "wb") as f:
            f.write(b"<plist>broken")
        write_profile(pdir, "c", c)
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 422, r
        assert r["error"] == "profiles", r
        errs = r["profiles"]["errors"]
        assert [e["file"] for e in errs] == ["a.mobileconfig"], r
        assert "not a property list" in errs[0]["error"], r
        assert r["profiles"]["stored"] == [c], r
        assert r["profiles"]["removed"] == [], r
        assert r["revision"], r                    # the policy itself reloaded
        now = stored(api)
        assert sorted(now) == [a, c], now
        assert now[a] == before[a]
        srv.wait_log(r"event=profiles.file_failed .*file=a.mobileconfig")
        # The CLI says so and exits 1.
        p = run("policy", "reload", "--config", datadir.config, "--url", srv.url,
                "--api-key", datadir.api_key, "--cacert", datadir.ca_crt, check=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "a.mobileconfig" in p.stderr and "policy reloaded" in p.stdout, (p.stdout, p.stderr)
        # Fixed: the next reload takes it and answers 200.
        write_profile(pdir, "a", a, "Fixed")
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200, r
        assert r["profiles"]["updated"] == [a] and r["profiles"]["errors"] == [], r
        assert stored(api)[a]["hash"] != before[a]["hash"]
    finally:
        assert srv.stop() == 0


def test_two_files_with_one_identifier_are_an_error(tmpdir_path, datadir):
    """Which file would win depends on directory order: the second (by
    name) is refused and the first is kept."""
    a = "com.example.a"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a1", a, "One")
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [a])
    try:
        before = stored(api)
        write_profile(pdir, "a2", a, "Two")
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 422, r
        errs = r["profiles"]["errors"]
        assert [e["file"] for e in errs] == ["a2.mobileconfig"], r
        assert "a1.mobileconfig" in errs[0]["error"], r
        assert stored(api) == before
    finally:
        assert srv.stop() == 0


# ---- failed installs ---------------------------------------------------------

def _error(code):
    return lambda c: ("Error", {"ErrorChain": [  # noqa: E731
        {"ErrorCode": code, "ErrorDomain": "MCInstallationErrorDomain",
         "LocalizedDescription": "refused", "USEnglishDescription": "refused"}]})


def _profiles_of(api, udid):
    st, r = api.call("GET", "/v1/devices/" + udid)
    assert st == 200, r
    return {p["identifier"]: p for p in r["profiles"]}


def test_failed_install_is_retried_at_later_reconciliations(tmpdir_path, datadir):
    """InstallProfile answered with Error: queued again at later
    reconciliations, 3 times in all unless forced, like a failed removal;
    GET /v1/devices/{id} shows the state and the count."""
    wifi = "com.example.wifi"
    srv, api, poldir = start(tmpdir_path, datadir, [wifi])

    def new_revision(n):
        with open(os.path.join(poldir, "wanted.lua"), "w") as f:
            f.write('-- revision %d\nreturn { profiles = { "%s" } }\n' % (n, wifi))
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200, r

    try:
        st, r = api.call("PUT", "/v1/profiles/" + wifi, profile(wifi),
                         "application/x-apple-aspen-config")
        assert st == 201, r
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run(_error(4001))) == ["InstallProfile"]
        p = _profiles_of(api, dev.udid)[wifi]
        assert p["state"] == "failed" and p["install_failures"] == 1, p
        for n in range(2):
            new_revision(n)
            assert types(dev.run(_error(4001))) == ["InstallProfile"], n
        srv.wait_log(r"event=reconcile.install_failed .*identifier=com.example.wifi failures=3 "
                     r"retry=when_forced")
        new_revision(2)
        assert dev.run() == []                      # given up until forced
        p = _profiles_of(api, dev.udid)[wifi]
        assert p["state"] == "failed" and p["install_failures"] == 3, p
        st, r = api.call("POST", "/v1/devices/%s/reconcile" % dev.udid)
        assert st == 202, r
        assert types(dev.run()) == ["InstallProfile"]
        p = _profiles_of(api, dev.udid)[wifi]
        assert p["state"] == "installed" and "install_failures" not in p, p
        new_revision(3)
        assert dev.run() == []
    finally:
        assert srv.stop() == 0


def test_new_content_resets_the_install_tries(tmpdir_path, datadir):
    """Three failed installs of one version; a new version is sent at
    once (its own tries)."""
    wifi = "com.example.wifi"
    srv, api, poldir = start(tmpdir_path, datadir, [wifi])
    try:
        put = lambda ssid: api.call("PUT", "/v1/profiles/" + wifi,  # noqa: E731
                                    profile(wifi, ssid), "application/x-apple-aspen-config")
        assert put("One")[0] == 201
        dev = Device(srv)
        dev.enroll()
        assert types(dev.run(_error(4001))) == ["InstallProfile"]
        for n in range(2):
            write_policy(poldir, [wifi, "com.example.other%d" % n])
            assert api.call("POST", "/v1/policy/reload")[0] == 200
            assert types(dev.run(_error(4001))) == ["InstallProfile"]
        assert put("Two")[0] == 200
        assert types(dev.run(_error(4001))) == ["InstallProfile"]
        assert _profiles_of(api, dev.udid)[wifi]["install_failures"] == 1
        write_policy(poldir, [wifi])
        assert api.call("POST", "/v1/policy/reload")[0] == 200
        assert types(dev.run()) == ["InstallProfile"]
        assert _profiles_of(api, dev.udid)[wifi]["state"] == "installed"
    finally:
        assert srv.stop() == 0


def test_reloads_asked_together_all_answer(tmpdir_path, datadir):
    """Reloads asked while one runs wait for it and run again: each
    request is answered, and the last state of the directory is stored."""
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    for i in range(40):
        write_profile(pdir, "p%02d" % i, "com.example.p%02d" % i)
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [])
    try:
        for i in range(40):
            write_profile(pdir, "p%02d" % i, "com.example.p%02d" % i, "New")
        answers = []

        def reload():
            answers.append(api.call("POST", "/v1/policy/reload"))

        threads = [threading.Thread(target=reload) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [st for st, _ in answers] == [200] * 6, answers
        updated = sum(len(r["profiles"]["updated"]) for _, r in answers)
        assert updated == 40, [r["profiles"] for _, r in answers]
        assert len(stored(api)) == 40
    finally:
        assert srv.stop() == 0


def test_directory_gone_on_reload_removes_nothing(tmpdir_path, datadir):
    """A profiles.dir that cannot be read (moved away, a mount gone) is an
    error, not a directory without files: no profile is removed."""
    a = "com.example.a"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a", a)
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [a])
    try:
        before = stored(api)
        os.rename(pdir, pdir + ".moved")
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 422, r
        assert r["profiles"]["removed"] == [] and r["profiles"]["errors"][0]["file"] is None, r
        assert "cannot open the directory" in r["detail"], r
        assert stored(api) == before
    finally:
        assert srv.stop() == 0


# While the file MOONMDM_TEST_READDIR_EIO names exists, a directory listing
# fails with EIO right after its first *.mobileconfig entry (a listing cut
# short by a network or FUSE file system).
READDIR_EIO_C = r'''
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
struct dirent *readdir(DIR *d)
{
    static __thread DIR *cut;
    struct dirent *(*real)(DIR *) = (struct dirent *(*)(DIR *))dlsym(RTLD_NEXT, "readdir");
    const char *flag = getenv("MOONMDM_TEST_READDIR_EIO");
    int saved = errno; /* the caller's: readdir leaves it alone at the end */
    int on = flag != NULL && access(flag, F_OK) == 0;
    errno = saved;
    if (!on)
        return real(d);
    if (cut == d) {
        cut = NULL;
        errno = EIO;
        return NULL;
    }
    struct dirent *e = real(d);
    size_t n = e != NULL ? strlen(e->d_name) : 0;
    if (n > 13 && strcmp(e->d_name + n - 13, ".mobileconfig") == 0)
        cut = d;
    return e;
}
'''


def test_listing_cut_short_removes_nothing(tmpdir_path, datadir):
    """A listing that fails part way is an error: the profiles of the files
    it did not list stay. Before, they were removed from the store and
    from devices."""
    a, b = "com.example.a", "com.example.b"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a", a)
    write_profile(pdir, "b", b)
    flag = os.path.join(tmpdir_path, "readdir_eio")
    env = preload_env(tmpdir_path, "readdir_eio", READDIR_EIO_C)
    env["MOONMDM_TEST_READDIR_EIO"] = flag
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [a, b], env=env)
    try:
        before = stored(api)
        assert sorted(before) == [a, b]
        open(flag, "w").close()
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 422, r
        assert r["profiles"]["removed"] == [], r
        assert "cannot list the directory" in r["detail"], r
        assert stored(api) == before
        os.unlink(flag)
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200 and r["profiles"]["removed"] == [], r
    finally:
        assert srv.stop() == 0


def test_hidden_files_are_not_profiles(tmpdir_path, datadir):
    """Editors' lock files and the "._" files macOS leaves on copies end in
    .mobileconfig too: they are passed over, not reported as bad files."""
    a = "com.example.a"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a", a)
    with open(os.path.join(pdir, "._a.mobileconfig"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 AppleDouble")
    os.symlink("user@host.1234:1700000000", os.path.join(pdir, ".#a.mobileconfig"))
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [a])
    try:
        assert sorted(stored(api)) == [a]
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200 and r["profiles"]["errors"] == [], r
    finally:
        assert srv.stop() == 0


def test_profiles_dir_is_watched(tmpdir_path, datadir):
    """With policy.watch (the default) a change in profiles.dir is reloaded
    by itself once the directory is quiet: no SIGHUP, no API call."""
    a, b = "com.example.wa", "com.example.wb"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    write_profile(pdir, "a", a, "Old")
    pdir, (srv, api, _) = start_with_dir(tmpdir_path, datadir, [a, b], watch=True)
    try:
        before = stored(api)
        assert sorted(before) == [a]
        reloads = count(srv, "profiles.reloaded")
        write_profile(pdir, "a", a, "New")
        write_profile(pdir, "b", b)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sorted(stored(api)) != [a, b]:
            time.sleep(0.05)
        now = stored(api)
        assert sorted(now) == [a, b], now
        assert now[a]["hash"] != before[a]["hash"]
        srv.wait_log(r"event=profiles.changed ")
        assert count(srv, "profiles.reloaded") > reloads
        os.unlink(os.path.join(pdir, "b.mobileconfig"))
        srv.wait_log(r"event=profiles.removed .*identifier=com.example.wb")
        assert sorted(stored(api)) == [a]
    finally:
        assert srv.stop() == 0


def test_profiles_dir_is_not_watched_without_policy_watch(tmpdir_path, datadir):
    a = "com.example.na"
    pdir = os.path.join(tmpdir_path, "profiles")
    os.makedirs(pdir)
    poldir = os.path.join(tmpdir_path, "policy")
    write_policy(poldir, [a])
    datadir.write_config('  policy = { dir = "%s", watch = false },\n'
                         '  profiles = { dir = "%s" },' % (poldir, pdir))
    srv = Server(datadir)
    try:
        api = Api(srv)
        write_profile(pdir, "a", a)
        time.sleep(1.0)  # five times the quiet period of a watched directory
        assert stored(api) == {}
        sighup_and_wait(srv)
        assert sorted(stored(api)) == [a]
    finally:
        assert srv.stop() == 0
