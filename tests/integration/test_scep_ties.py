"""Certificates tied to one device by the challenge they were enrolled with
(`challenge new --udid`, `POST /v1/challenges` with "udid"), what
`cert list` says of a certificate, and OTA phase 1 when the store fails."""
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import Server, run
from device import TOPIC, Device
from test_scep import api, new_challenge, ra_fingerprint, scep_datadir, scepclient, stop_clean
from test_scep_edges import assert_untouched, cert_record, enrolled_with_a_queued_command


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


def test_untied_certificate_shows_owner_and_no_udid_in_cert_list(srv, tmpdir_path):
    cert, _ = scepclient_identity(srv, tmpdir_path, "plain",
                                  new_challenge(srv.datadir, "--user", "olga"))
    line = cert_line(srv.datadir, cert)
    assert "  owner=olga  udid=-  CN=scepclient-device" in line, line
