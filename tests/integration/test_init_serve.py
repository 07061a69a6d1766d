"""`moonmdm init` makes a working data directory; `serve` answers on it."""
import json
import os
import re
import stat
import subprocess

import requests

from conftest import BIN, Server, get, make_datadir, run


def test_init_creates_a_working_data_directory(tmpdir_path):
    d = make_datadir(tmpdir_path)
    for name, mode in [("ca.key", 0o600), ("server.key", 0o600), ("moonmdm.conf.lua", 0o600)]:
        st = os.stat(os.path.join(d.path, name))
        assert stat.S_IMODE(st.st_mode) == mode, (name, oct(st.st_mode))
    assert os.path.exists(os.path.join(d.path, "db", "data.mdb"))
    assert d.api_key is not None, d.init_stdout
    # The CA verifies the server certificate, which names localhost and 127.0.0.1.
    v = subprocess.run(["openssl", "verify", "-CAfile", d.ca_crt,
                        os.path.join(d.path, "server.crt")], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in",
                           os.path.join(d.path, "server.crt")],
                          capture_output=True, text=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text, text
    run("config", "check", d.config)


def test_init_refuses_to_overwrite(tmpdir_path):
    d = make_datadir(tmpdir_path)
    before = open(d.ca_key).read()
    p = run("init", "--data-dir", d.path, check=False)
    assert p.returncode != 0
    assert "already holds" in p.stderr and "--force" in p.stderr
    assert open(d.ca_key).read() == before
    run("init", "--data-dir", d.path, "--ca-key", "ec:P-256", "--force")
    assert open(d.ca_key).read() != before


def test_init_sans_and_key_types(tmpdir_path):
    path = os.path.join(tmpdir_path, "d2")
    run("init", "--data-dir", path, "--san", "DNS:mdm.example.org", "--san", "IP:10.1.2.3",
        "--ca-key", "rsa:2048", "--server-key", "rsa:2048")
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in",
                           os.path.join(path, "server.crt")],
                          capture_output=True, text=True).stdout
    assert "DNS:mdm.example.org" in text and "IP Address:10.1.2.3" in text
    assert "Subject: CN = mdm.example.org" in text or "CN=mdm.example.org" in text
    bad = run("init", "--data-dir", os.path.join(tmpdir_path, "d3"), "--ca-key", "dsa:1024",
              check=False)
    assert bad.returncode != 0 and "dsa" in bad.stderr.lower()


def test_every_subcommand_has_help():
    for cmd in ["serve", "init", "config", "apikey", "version"]:
        p = run(cmd, "--help")
        assert "usage: moonmdm" in p.stdout, (cmd, p.stdout)
    p = run("help")
    assert "serve" in p.stdout and "init" in p.stdout
    p = run("nonsense", check=False)
    assert p.returncode == 2 and "unknown command" in p.stderr
    assert re.match(r"moonmdm \d+\.\d+\.\d+", run("version").stdout)


def test_serve_answers_healthz_over_verified_tls(server):
    r = requests.get(server.url + "/healthz", verify=server.datadir.ca_crt, timeout=10)
    assert r.status_code == 200 and r.text == "ok\n"
    assert r.headers["X-Request-Id"]
    r = requests.get(server.url + "/version", verify=server.datadir.ca_crt, timeout=10)
    assert r.json()["name"] == "moonmdm"
    assert r.json()["schema"] >= 1
    # The request id of the response is on the request's log line.
    rid = r.headers["X-Request-Id"]
    server.wait_log(rf"event=http.request req={rid} .*path=/version status=200")


def test_metrics_are_prometheus_text(server):
    for _ in range(3):
        assert get(server, "/healthz").status == 200
    assert get(server, "/nope").status == 404
    r = get(server, "/metrics")
    text = r.body.decode()
    assert r.status == 200
    assert 'moonmdm_http_requests_total{route="healthz",status="200"} 3' in text, text
    assert 'moonmdm_http_requests_total{route="none",status="404"} 1' in text
    assert "moonmdm_http_open_connections" in text
    assert "moonmdm_tls_handshake_failures_total" in text
    assert re.search(r'moonmdm_http_request_duration_seconds_bucket\{le="\+Inf"\} \d+', text)
    assert "# TYPE moonmdm_http_request_duration_seconds histogram" in text


def test_api_needs_a_key_and_keys_have_roles(server):
    d = server.datadir
    assert get(server, "/v1/status").status == 401
    bad = get(server, "/v1/status", {"Authorization": "Bearer mdm_" + "0" * 16 + "_" + "1" * 64})
    assert bad.status == 401 and json.loads(bad.body)["error"] == "unauthorized"
    ok = get(server, "/v1/status", {"Authorization": "Bearer " + d.api_key})
    assert ok.status == 200, ok.body
    st = json.loads(ok.body)
    assert st["store"]["backend"] == "lmdb" and st["store"]["tables"]["apikeys"] >= 1
    # HTTP Basic with the key as password (NanoMDM tools) works too.
    import base64
    basic = base64.b64encode(b"nanomdm:" + d.api_key.encode()).decode()
    assert get(server, "/v1/status", {"Authorization": "Basic " + basic}).status == 200

    # A read-only key, created and revoked with the CLI while the server runs.
    p = run("apikey", "create", "--role", "read", "--name", "monitor", "--config", d.config)
    ro = p.stdout.strip()
    assert re.fullmatch(r"mdm_[0-9a-f]{16}_[0-9a-f]{64}", ro)
    assert get(server, "/v1/status", {"Authorization": "Bearer " + ro}).status == 200
    listing = run("apikey", "list", "--config", d.config).stdout
    assert "monitor" in listing and ro[:20] in listing and ro[21:] not in listing
    run("apikey", "revoke", ro[:20], "--config", d.config)
    assert get(server, "/v1/status", {"Authorization": "Bearer " + ro}).status == 401
    # No key material in the log.
    assert d.api_key[21:] not in server.log()
    assert ro[21:] not in server.log()


def test_data_survives_a_restart(datadir):
    s = Server(datadir)
    key = run("apikey", "create", "--config", datadir.config).stdout.strip()
    assert get(s, "/v1/status", {"Authorization": "Bearer " + key}).status == 200
    assert s.stop() == 0
    s2 = Server(datadir)
    try:
        assert get(s2, "/v1/status", {"Authorization": "Bearer " + key}).status == 200
        assert get(s2, "/v1/status", {"Authorization": "Bearer " + datadir.api_key}).status == 200
    finally:
        s2.stop()


def test_newer_schema_is_refused(datadir):
    db = os.path.join(datadir.path, "db")
    # Write schema_version = 99 (big-endian u64) with LMDB's own tool.
    p = subprocess.run(["mdb_load", "-T", "-s", "meta", db],
                       input=b"schema_version\n\\00\\00\\00\\00\\00\\00\\00\\63\n",
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([BIN, "serve", "--config", datadir.config, "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "schema version 99" in p.stderr and "newer" in p.stderr, p.stderr


def test_config_error_names_key_file_and_line(datadir):
    datadir.write_config('  http = {\n    max_body_bytes = true,\n  },')
    p = subprocess.run([BIN, "serve", "--config", datadir.config, "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    lines = open(datadir.config).read().split("\n")
    line = next(i + 1 for i, l in enumerate(lines) if "max_body_bytes" in l)
    assert f"moonmdm.conf.lua:{line}: http.max_body_bytes" in p.stderr, p.stderr
    datadir.write_config('  htpp = {},')
    p = subprocess.run([BIN, "serve", "--config", datadir.config, "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "htpp" in p.stderr and "unknown key" in p.stderr, p.stderr


def test_readable_private_keys_are_refused_unless_told(datadir):
    for name in ("server.key", "ca.key"):
        path = os.path.join(datadir.path, name)
        os.chmod(path, 0o644)
        p = subprocess.run([BIN, "serve", "--config", datadir.config, "--listen", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0, name
        assert name in p.stderr and "chmod 600" in p.stderr, p.stderr
        os.chmod(path, 0o600)
    os.chmod(os.path.join(datadir.path, "server.key"), 0o640)
    datadir.write_config('  tls = { cert = "server.crt", key = "server.key", client_ca = { "ca.crt" },'
                         ' allow_insecure_key_mode = true },')
    s = Server(datadir)
    try:
        assert get(s, "/healthz").status == 200
    finally:
        assert s.stop() == 0


def test_tls_versions_and_ciphers(server):
    import ssl
    import socket
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(server.datadir.ca_crt)
        ctx.minimum_version = version
        ctx.maximum_version = version
        try:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    assert False, f"{version} was accepted"
            except ssl.SSLError:
                pass
    # TLS 1.2 without forward secrecy (plain RSA key exchange) is refused.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(server.datadir.ca_crt)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-GCM-SHA256")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                assert False, "a non-ECDHE cipher was accepted"
        except ssl.SSLError:
            pass
    for maxv in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(server.datadir.ca_crt)
        ctx.maximum_version = maxv
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.version() == ("TLSv1.2" if maxv == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
                assert s.selected_alpn_protocol() == "http/1.1"
