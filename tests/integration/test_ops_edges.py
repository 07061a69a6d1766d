"""Operations edges found in review: a truncated backup, a retention that
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
