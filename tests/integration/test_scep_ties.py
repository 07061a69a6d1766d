"""Certificates tied to one device by the challenge they were enrolled with
(`challenge new --udid`, `POST /v1/challenges` with "udid"), what
`cert list` says of a certificate, and OTA phase 1 when the store fails."""
import hashlib
import os
import subprocess

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import Server, run
from device import TOPIC, Device
from test_scep import api, new_challenge, ra_fingerprint, scep_datadir, scepclient, stop_clean
from test_enroll import ota_server
from test_scep_edges import (assert_untouched, cert_record, enrolled_with_a_queued_command,
                             phase1_body)


@pytest.fixture
def srv(tmpdir_path):
    # scepclient speaks single DES to the RA.
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    d.write_config('  enroll = { topic = "%s" },' % TOPIC)
    s = Server(d, plain=True)
    yield s
    stop_clean(s)


def scepclient_identity(srv, tmp, name, challenge):
    """Enrolls with the real scepclient; returns its certificate and key."""
    work = os.path.join(tmp, name)
    p = scepclient(srv, work, challenge, ["-ca-fingerprint", ra_fingerprint(srv.datadir)])
    assert p.returncode == 0, p.stdout + p.stderr
    with open(os.path.join(work, "client.pem"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(work, "key.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    return cert, key


def cert_line(d, cert):
    serial = format(cert.serial_number, "X")
    out = run("cert", "list", "--config", d.config).stdout
    return next(line for line in out.splitlines() if line.startswith(serial + " "))


def assert_tied(srv, tmp, name, challenge, udid, owner):
    """A certificate from challenge authenticates as udid only."""
    d = srv.datadir
    b = enrolled_with_a_queued_command(srv)
    cert, key = scepclient_identity(srv, tmp, name, challenge)
    rec = cert_record(srv, d, cert)
    assert rec["udid"] == udid and rec["owner"] == owner, rec
    assert f"udid={udid} " in cert_line(d, cert)
    assert Device(srv, udid=b.udid, cert=cert, key=key).authenticate() == 403
    srv.wait_log(rf"detail=\"the certificate was issued for device {udid}\"")
    assert_untouched(srv, b)
    dev = Device(srv, udid=udid, cert=cert, key=key)
    assert dev.authenticate() == 200
    assert dev.token_update() == 200


def test_cli_challenge_with_udid_ties_the_certificate(srv, tmpdir_path):
    ch = new_challenge(srv.datadir, "--udid", "TIED-CLI-1", "--user", "tina")
    assert_tied(srv, tmpdir_path, "cli", ch, "TIED-CLI-1", "tina")


def test_api_challenge_with_udid_ties_the_certificate(srv, tmpdir_path):
    d = srv.datadir
    r = api(srv, "POST", "/v1/challenges", d.api_key, {"udid": "TIED-API-1"})
    assert r.status_code == 201, r.text
    assert r.json()["udid"] == "TIED-API-1" and r.json()["user"] == ""
    srv.wait_log(r"event=scep.challenge_created .*udid=TIED-API-1 ")
    assert_tied(srv, tmpdir_path, "api", r.json()["challenge"], "TIED-API-1", "")


def live_challenges(d):
    return run("challenge", "list", "--config", d.config).stdout.splitlines()


BAD_UDIDS = ["", "has space", "a:b", "x" * 129, "tab\there", "caf\u00e9"]


def test_challenge_udid_is_validated(srv):
    d = srv.datadir
    before = live_challenges(d)
    for bad in BAD_UDIDS:
        p = run("challenge", "new", "--config", d.config, "--udid", bad, check=False)
        assert p.returncode == 2 and "--udid" in p.stderr, (bad, p.stderr)
        assert p.stdout == ""
        r = api(srv, "POST", "/v1/challenges", d.api_key, {"udid": bad})
        assert r.status_code == 400 and "udid" in r.text, (bad, r.status_code, r.text)
    for bad in (5, True, ["U"], {"u": 1}):
        r = api(srv, "POST", "/v1/challenges", d.api_key, {"udid": bad})
        assert r.status_code == 400 and "udid" in r.text, (bad, r.status_code, r.text)
    assert live_challenges(d) == before
    # The longest UDID that is allowed, and null for none.
    assert run("challenge", "new", "--config", d.config, "--udid", "U" * 128).stdout.strip()
    r = api(srv, "POST", "/v1/challenges", d.api_key, {"udid": None})
    assert r.status_code == 201 and r.json()["udid"] == "", r.text
    assert len(live_challenges(d)) == len(before) + 2
    assert any("udid=" + "U" * 128 in line for line in live_challenges(d))


def test_untied_certificate_shows_owner_and_no_udid_in_cert_list(srv, tmpdir_path):
    cert, _ = scepclient_identity(srv, tmpdir_path, "plain",
                                  new_challenge(srv.datadir, "--user", "olga"))
    line = cert_line(srv.datadir, cert)
    assert "  owner=olga  udid=-  CN=scepclient-device" in line, line


# ---- OTA phase 1 when the challenge cannot be read ---------------------------


def put_raw_challenge(d, text, value):
    """Stores value under the challenge text's key with LMDB's own tool
    (the server is stopped)."""
    key = hashlib.sha256(text.encode()).digest()
    esc = lambda b: "".join(f"\\{x:02x}" for x in b)  # noqa: E731
    p = subprocess.run(["mdb_load", "-T", "-s", "challenges", os.path.join(d.path, "db")],
                       input=f"{esc(key)}\n{esc(value)}\n".encode(), capture_output=True)
    assert p.returncode == 0, p.stderr


def test_ota_phase1_store_failure_is_500_not_a_bad_challenge(tmpdir_path):
    srv, d, apple_ca, apple_key = ota_server(tmpdir_path)
    stop_clean(srv)
    # A challenge record this server cannot read (a later layout version):
    # the challenge cannot be checked, which is the server's fault.
    unreadable = "0123456789abcdef0123456789abcdef"
    put_raw_challenge(d, unreadable, bytes([9]) + bytes(30))
    srv = Server(d, plain=True)
    try:
        r = requests.post(srv.url + "/ota/profile",
                          data=phase1_body(apple_ca, apple_key, unreadable),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 500, (r.status_code, r.text)
        srv.wait_log(r"level=error event=enroll.ota_failed .*phase=1 udid=PURPOSE-UDID "
                     r"error=\"the challenge could not be checked: ")
        assert "enroll.ota_refused" not in srv.log()
        # A bad challenge is still a 403.
        r = requests.post(srv.url + "/ota/profile",
                          data=phase1_body(apple_ca, apple_key, "f" * 32),
                          verify=d.ca_crt, timeout=30)
        assert r.status_code == 403, (r.status_code, r.text)
        srv.wait_log(r"event=enroll.ota_refused .*phase=1 .*reason=\"unknown or already used")
    finally:
        stop_clean(srv)


def test_expired_challenges_are_swept_without_scep_traffic(tmpdir_path):
    """The sweep of expired challenges comes from the server's pruning
    timer too: a server that gets no SCEP request still drops them."""
    from test_mdm import CLOCK_SHIFT_C, preload_env
    d = scep_datadir(tmpdir_path)
    new_challenge(d, "--ttl", "1m")
    new_challenge(d, "--ttl", "1h")
    env = preload_env(tmpdir_path, "clock_shift", CLOCK_SHIFT_C)
    shift_file = os.path.join(tmpdir_path, "clock_shift")
    with open(shift_file, "w") as f:
        f.write("120\n")  # the 1-minute challenge has expired, the other has not
    env["MOONMDM_TEST_CLOCK_SHIFT"] = shift_file
    s = Server(d, plain=True, env=env)
    try:
        # The pruning timer ticks every 10 s; its first tick sweeps.
        s.wait_log(r"event=scep\.pruned challenges=1 ", timeout=30)
    finally:
        stop_clean(s)
    assert len([line for line in live_challenges(d) if "scep" in line]) == 1


def test_cert_list_escapes_the_owner(srv, tmpdir_path):
    """An owner name is shown as one quoted value with its control bytes
    escaped: it cannot split the line nor send escapes to a terminal."""
    ch = new_challenge(srv.datadir, "--user", "ann lee\x1b[2J\nx")
    cert, _ = scepclient_identity(srv, tmpdir_path, "esc", ch)
    line = cert_line(srv.datadir, cert)
    assert 'owner="ann lee\\x1b[2J\\x0ax"  udid=-  ' in line, line
    assert "\x1b" not in line
