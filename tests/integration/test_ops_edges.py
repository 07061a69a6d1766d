"""Operations at their edges: a truncated backup, a retention that
wrapped around, listen addresses checked before serve, and db check after
ordinary check-in flows. The first three failed on b2150bc."""
import glob
import os

from conftest import Server, run
from device import TOPIC, Api, Device


def db(datadir, *args, check=True):
    return run("db", *args, "--config", datadir.config, check=check)


def test_truncated_backup_is_refused_not_a_crash(datadir, tmpdir_path):
    """A backup cut short (an interrupted `db backup`, a partial copy) makes
    `db check` and `db restore` die of SIGBUS; restore leaves its staging
    directory behind."""
    for i in range(30):
        run("apikey", "create", "--name", "k%d" % i, "-c", datadir.config)
    bk = os.path.join(tmpdir_path, "bk")
    db(datadir, "backup", bk)
    data = os.path.join(bk, "data.mdb")
    os.truncate(data, os.path.getsize(data) // 2)
    p = run("db", "check", bk, check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    p = db(datadir, "restore", bk, "--force", check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    store = os.path.join(datadir.path, "db")
    assert glob.glob(store + ".*") == [], glob.glob(store + ".*")


def test_check_after_ordinary_checkin_flows(datadir):
    srv = Server(datadir)
    try:
        api = Api(srv)
        a, b, c = Device(srv), Device(srv), Device(srv)
        for d in (a, b, c):
            d.enroll()
        a.user = ("E4A5F9E1-0000-4000-8000-00000000AAAA", "alice")
        assert a.token_update() == 200
        a.user = None
        api.send("ProfileList", [a.udid, b.udid, c.udid])
        a.run()
        api.send("SecurityInfo", [b.udid])
        assert b.checkin("CheckOut", Topic=TOPIC)[0] == 200
        b2 = Device(srv, udid=b.udid)
        b2.enroll()
        b2.run()
        assert api.call("DELETE", "/v1/devices/" + c.udid)[0] in (200, 204)
        api.send("DeviceInformation", [a.udid])
        a.enroll()   # re-enrollment, queue cleared
        a.run()
        p = db(datadir, "check", check=False)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        assert srv.stop() == 0
    p = db(datadir, "check", check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_huge_result_retention_does_not_prune_everything(datadir):
    """mdm.result_retention is accepted up to UINT64_MAX ms but used as
    int64: a value past INT64_MAX ms turns the prune cutoff into the far
    future, and every finished result is deleted at the first prune tick."""
    datadir.write_config('  mdm = { result_retention = "36500d" },')  # the most allowed
    assert run("config", "check", datadir.config, check=False).returncode == 0
    srv = Server(datadir)
    try:
        api = Api(srv)
        d = Device(srv)
        d.enroll()
        cmd = api.send("ProfileList", [d.udid])[1]["command_uuid"]
        d.run()
        st, r = api.call("GET", "/v1/commands/" + cmd)
        assert st == 200 and r["targets"][d.udid]["status"] == "Acknowledged", r
        try:
            srv.wait_log(r"event=mdm\.pruned", timeout=13)
        except AssertionError:
            pass
        st, r = api.call("GET", "/v1/commands/" + cmd)
        assert st == 200 and r["targets"].get(d.udid, {}).get("status") == "Acknowledged", (st, r)
    finally:
        assert srv.stop() == 0


def test_listen_address_is_checked_before_serve(tmpdir_path, datadir):
    """A listen address serve cannot bind (a host name, a port out of range)
    is refused by init and by config check, not only when serve starts."""
    path = os.path.join(tmpdir_path, "fresh")
    for bad in ["localhost:8443", "127.0.0.1:99999", "127.0.0.1"]:
        p = run("init", "--data-dir", path, "--ca-key", "ec:P-256", "--listen", bad,
                check=False)
        assert p.returncode == 2 and "not an IP address and port" in p.stderr, (bad, p.stderr)
        assert not os.path.exists(os.path.join(path, "moonmdm.conf.lua"))
    datadir.write_config('  listen = { "localhost:8443" },')
    c = run("config", "check", datadir.config, check=False)
    assert c.returncode != 0 and "localhost:8443" in c.stdout + c.stderr, (c.stdout, c.stderr)
    datadir.write_config('  mdm = { result_retention = "200000000000d" },')
    c = run("config", "check", datadir.config, check=False)
    assert c.returncode != 0 and "at most 36500d" in c.stdout + c.stderr, (c.stdout, c.stderr)


def test_init_refuses_any_part_of_a_data_directory(tmpdir_path):
    """A directory holding only part of a data directory (the store, the
    server key, the secret that seals tokens) is not silently added to or
    overwritten: init names what it found and changes nothing."""
    for name, is_dir in [("db", True), ("server.key", False), ("secret.key", False),
                         ("ra.crt", False)]:
        path = os.path.join(tmpdir_path, "part-" + name)
        os.makedirs(path)
        target = os.path.join(path, name)
        if is_dir:
            os.makedirs(target)
        else:
            with open(target, "w") as f:
                f.write("keep me\n")
        p = run("init", "--data-dir", path, check=False)
        assert p.returncode == 1, (name, p.returncode, p.stderr)
        assert name in p.stderr and "already holds" in p.stderr and "--force" in p.stderr, \
            p.stderr
        assert sorted(os.listdir(path)) == [name], os.listdir(path)
        if not is_dir:
            assert open(target).read() == "keep me\n"


def test_init_config_mode_with_a_leftover_temporary_file(tmpdir_path):
    """A `moonmdm.conf.lua.tmp` left by an interrupted init (or put there)
    does not give the config its mode: the config is 0600."""
    path = os.path.join(tmpdir_path, "leftover")
    os.makedirs(path)
    tmp = os.path.join(path, "moonmdm.conf.lua.tmp")
    with open(tmp, "w") as f:
        f.write("-- left over\n")
    os.chmod(tmp, 0o666)
    run("init", "--data-dir", path, "--ca-key", "ec:P-256", "--no-api-key")
    mode = os.stat(os.path.join(path, "moonmdm.conf.lua")).st_mode & 0o777
    assert mode == 0o600, oct(mode)
    assert not os.path.exists(tmp)


def test_restore_through_a_symlinked_store_path(datadir, tmpdir_path):
    """store.path may be a symbolic link to another file system (a bigger
    disk). A restore puts the data at the link's target, keeps the link and
    sets the previous store aside beside the target."""
    store = os.path.join(datadir.path, "db")
    elsewhere = os.path.join(tmpdir_path, "bigdisk")
    os.makedirs(elsewhere)
    real = os.path.join(elsewhere, "moonmdm-db")
    os.rename(store, real)
    os.symlink(real, store)
    bk = os.path.join(tmpdir_path, "bk")
    db(datadir, "backup", bk)
    run("apikey", "create", "--name", "after-backup", "-c", datadir.config)
    assert "after-backup" in run("apikey", "list", "-c", datadir.config).stdout
    db(datadir, "restore", bk, "--force")
    assert os.path.islink(store) and os.readlink(store) == real
    assert sorted(os.listdir(datadir.path)).count("db") == 1
    assert glob.glob(store + ".*") == [], glob.glob(store + ".*")
    aside = glob.glob(real + ".before-restore-*")
    assert len(aside) == 1 and os.path.isdir(aside[0]) and not os.path.islink(aside[0]), aside
    assert "after-backup" not in run("apikey", "list", "-c", datadir.config).stdout


def test_restore_refuses_a_store_link_to_nowhere(datadir, tmpdir_path):
    bk = os.path.join(tmpdir_path, "bk")
    db(datadir, "backup", bk)
    store = os.path.join(datadir.path, "db")
    os.rename(store, os.path.join(tmpdir_path, "moved"))
    missing = os.path.join(tmpdir_path, "unmounted", "db")
    os.symlink(missing, store)
    p = db(datadir, "restore", bk, "--force", check=False)
    assert p.returncode == 1 and "symbolic link" in p.stderr, (p.returncode, p.stderr)
    assert os.path.islink(store) and not os.path.exists(missing)
    assert glob.glob(store + ".*") == [], glob.glob(store + ".*")
