"""Fixtures that run the real moonmdm binary on 127.0.0.1.

Every test gets its own data directory made by `moonmdm init` and a server on
a free port (port 0; the port is read from the server's `server.listening`
log line). Readiness is a log line, never a sleep.
"""
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

SOURCE_DIR = os.environ.get(
    "MOONMDM_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BIN = os.environ.get("MOONMDM_BIN", os.path.join(SOURCE_DIR, "build", "moonmdm"))
# MOONMDM_VALGRIND=1 runs every server under valgrind (leaks and errors make
# it exit 99, which the fixtures report).
WRAPPER = (["valgrind", "--quiet", "--leak-check=full", "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99"]
           if os.environ.get("MOONMDM_VALGRIND") else [])
READY_TIMEOUT = 120 if WRAPPER else 30
# How much slower than a release build the server is (a sanitizer build:
# 3, set by tests/CMakeLists.txt). Latency bounds of the tests marked
# `timing` are multiplied by it.
SLOWDOWN = float(os.environ.get("MOONMDM_TEST_SLOWDOWN", "1"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timing: asserts latencies; ctest runs these alone (integration/test_timing)")


def pytest_sessionfinish(session, exitstatus):
    # A file whose tests are all marked `timing` has none left to run
    # under -m "not timing": that is not a failure.
    if exitstatus == 5 and session.config.getoption("markexpr") == "not timing":
        session.exitstatus = 0


def run(*args, check=True, input=None, timeout=120, env=None):
    """Runs `moonmdm args...` and returns the CompletedProcess."""
    p = subprocess.run([BIN, *args], capture_output=True, text=True,
                       input=input, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(
            f"moonmdm {' '.join(args)} exited {p.returncode}\n"
            f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


class DataDir:
    """A data directory created by `moonmdm init`."""

    def __init__(self, path, init_stdout):
        self.path = path
        self.config = os.path.join(path, "moonmdm.conf.lua")
        self.ca_crt = os.path.join(path, "ca.crt")
        self.ca_key = os.path.join(path, "ca.key")
        m = re.search(r"^\s+(mdm_[0-9a-f]{16}_[0-9a-f]{64})\s*$", init_stdout, re.M)
        self.api_key = m.group(1) if m else None
        self.init_stdout = init_stdout

    def write_config(self, extra_lua):
        """Rewrites the config: the init defaults plus `extra_lua`, a string
        of table fields (e.g. 'http = { read_timeout = "1s" },')."""
        if not hasattr(self, "_orig"):
            with open(self.config) as f:
                self._orig = f.read()
        text = self._orig
        if re.search(r"^\s*policy\s*=", extra_lua, re.M):
            # The test brings its own policy: drop the empty default.
            text = text.replace(NO_POLICY_LINE.format(self.path), "")
        idx = text.rstrip().rfind("}")
        text = text[:idx] + extra_lua + "\n}\n"
        with open(self.config, "w") as f:
            f.write(text)


# Protocol tests run without a policy (an empty policy directory: no hooks),
# so that what they see is the core's behaviour; the shipped policy has its
# own tests (policy/shipped) and test_policy_flow.py runs policies end to end.
NO_POLICY_LINE = '  policy = {{ dir = "{}/no-policy" }},\n'


def make_datadir(tmp, *extra_args):
    path = os.path.join(tmp, "data")
    p = run("init", "--data-dir", path, "--ca-key", "ec:P-256", *extra_args)
    os.makedirs(os.path.join(path, "no-policy"), exist_ok=True)
    with open(os.path.join(path, "moonmdm.conf.lua")) as f:
        text = f.read()
    idx = text.rstrip().rfind("}")
    text = text[:idx] + NO_POLICY_LINE.format(path) + "}\n"
    with open(os.path.join(path, "moonmdm.conf.lua"), "w") as f:
        f.write(text)
    return DataDir(path, p.stdout)


class Server:
    """A running `moonmdm serve`, with its log captured."""

    def __init__(self, datadir, args=(), plain=False, env=None):
        self.datadir = datadir
        self.log_lines = []
        self.log_lock = threading.Lock()
        self.ports = {}
        cmd = WRAPPER + [BIN, "serve", "--config", datadir.config, "--listen", "127.0.0.1:0"]
        if plain:
            cmd += ["--listen-plain", "127.0.0.1:0"]
        cmd += list(args)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=full_env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.ready = threading.Event()
        self.reader.start()
        if not self.ready.wait(READY_TIMEOUT):
            self.kill()
            raise AssertionError("server did not become ready:\n" + self.log())
        if self.proc.poll() is not None:
            raise AssertionError("server exited:\n" + self.log())
        self.port = self.ports.get("tls")
        self.plain_port = self.ports.get("plain")

    def _read(self):
        for line in self.proc.stdout:
            with self.log_lock:
                self.log_lines.append(line.rstrip("\n"))
            m = re.search(r"event=server.listening .*port=(\d+) tls=(true|false)", line)
            if m:
                self.ports["tls" if m.group(2) == "true" else "plain"] = int(m.group(1))
            if "event=server.ready" in line or "event=server.start_failed" in line:
                self.ready.set()
        self.ready.set()

    def log(self):
        with self.log_lock:
            return "\n".join(self.log_lines)

    def wait_log(self, pattern, timeout=20):
        """Waits for a log line matching the regex; returns the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            with self.log_lock:
                for line in self.log_lines:
                    m = rx.search(line)
                    if m:
                        return m
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line matches {pattern!r}:\n{self.log()}")

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self, cert=None, key=None):
        ctx = ssl.create_default_context(cafile=self.datadir.ca_crt)
        ctx.check_hostname = True
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    def connect(self, cert=None, key=None, timeout=10):
        """A TLS socket to the server, handshake done."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return self.ssl_context(cert, key).wrap_socket(raw, server_hostname="localhost")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("server did not stop in time:\n" + self.log())
        self.reader.join(5)
        if WRAPPER and self.proc.returncode != 0:
            # Show what valgrind found (its lines start with ==pid==).
            print("\n".join(l for l in self.log_lines if l.startswith("==")))
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)


def http_request(sock, method, path, headers=None, body=b""):
    """Sends one HTTP/1.1 request on sock."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding")
                        for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())


def read_response(sock, buf=None, head=False):
    """Reads one HTTP/1.1 response (Content-Length framed) from sock.
    buf is a bytearray carrying bytes already read past earlier responses."""
    if buf is None:
        buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; got {bytes(buf)!r}")
        buf += chunk
    idx = buf.index(b"\r\n\r\n")
    head_text = bytes(buf[:idx]).decode("latin-1")
    del buf[:idx + 4]
    lines = head_text.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if status == 100:
        return Response(status, headers, b"")
    n = 0 if head else int(headers.get("content-length", "0"))
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed in body")
        buf += chunk
    body = bytes(buf[:n])
    del buf[:n]
    return Response(status, headers, body)


def get(server, path, headers=None, cert=None, key=None):
    with server.connect(cert, key) as s:
        http_request(s, "GET", path, headers)
        return read_response(s)


@pytest.fixture
def tmpdir_path():
    d = tempfile.mkdtemp(prefix="moonmdm-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def datadir(tmpdir_path):
    return make_datadir(tmpdir_path)


@pytest.fixture
def server(datadir):
    s = Server(datadir)
    yield s
    rc = s.stop(timeout=120 if WRAPPER else 30)
    # A clean exit also means no leak (ASan builds) and no valgrind error.
    assert rc == 0, f"server exited {rc}:\n" + s.log()[-5000:]
