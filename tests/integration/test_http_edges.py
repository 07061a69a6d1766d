"""HTTP edges found from the outside: an upgrade request with trailing bytes,
half-close with responses still being written, a TLS request with its
close_notify, a stale write deadline, Connection: close at shutdown, and
whitespace in the header limit.

Each failed on f82c119, before the fixes."""
import json
import signal
import socket
import ssl
import time

import pytest

from conftest import Server, http_request, read_response


@pytest.fixture
def plain_server(datadir):
    s = Server(datadir, plain=True)
    yield s
    rc = s.stop()
    assert rc == 0, f"server exited {rc}:\n" + s.log()[-5000:]


def plain_connect(srv, timeout=10, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", srv.plain_port))
    return s


def table_count(srv, table):
    with plain_connect(srv) as s:
        http_request(s, "GET", "/v1/status", {"Authorization": "Bearer " + srv.datadir.api_key})
        r = read_response(s)
        assert r.status == 200, r.body
        return json.loads(r.body)["store"]["tables"][table]


def read_until_eof(sock, limit=10):
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            d = sock.recv(65536)
        except (ConnectionError, socket.timeout):
            break
        if not d:
            break
        out += d
    return out


# 1. An Upgrade request followed by any byte is dispatched twice
#    (core/net/http.c:1000-1010): the handler runs again, a write happens twice.
def test_upgrade_request_with_trailing_bytes_runs_its_handler_once(plain_server):
    srv = plain_server
    assert table_count(srv, "challenges") == 0
    with plain_connect(srv) as s:
        s.sendall(b"POST /v1/challenges HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + srv.datadir.api_key.encode() + b"\r\n"
                  b"Connection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 0\r\n\r\nXYZ")
        r = read_response(s)
        assert r.status == 201
        read_until_eof(s)
    # One request, one challenge.
    assert table_count(srv, "challenges") == 1


# 2. A client that half-closes (FIN) after its requests loses the responses
#    still being written: on_peer_eof (core/net/http.c:1053) closes the
#    connection when npipe == 0 even though writes are pending.
def test_half_close_after_pipelined_requests_gets_every_response(plain_server):
    srv = plain_server
    n = 600  # ~8 KB each (/metrics): more than the socket buffers take at once
    s = plain_connect(srv, timeout=20, rcvbuf=4096)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * n)
    s.shutdown(socket.SHUT_WR)
    time.sleep(1)
    buf = bytearray()
    got = 0
    try:
        for _ in range(n):
            assert read_response(s, buf).status == 200
            got += 1
    except (ConnectionError, socket.timeout):
        pass
    s.close()
    assert got == n, f"only {got} of {n} responses before the server closed"


# 3. TLS: a request and the client's close_notify arriving in one read: the
#    request is dropped unanswered (read_cb calls on_peer_eof before parsing
#    what was decrypted, core/net/http.c:1098-1105).
def test_tls_request_followed_by_close_notify_is_answered(server):
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = server.ssl_context().wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(out.read())
            d = raw.recv(65536)
            assert d, "closed during the handshake"
            inc.write(d)
    raw.sendall(out.read())
    obj.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        obj.unwrap()  # queues close_notify; the server's own one is not awaited
    except ssl.SSLWantReadError:
        pass
    raw.sendall(out.read())  # the request and close_notify in one segment
    plain = b""
    inc.write(read_until_eof(raw, 5))
    try:
        while True:
            x = obj.read(65536)
            if not x:
                break
            plain += x
    except ssl.SSLError:
        pass
    raw.close()
    assert plain.startswith(b"HTTP/1.1 200"), plain


# 4. The write deadline outlives the write: update_idle_deadline
#    (core/net/http.c:453-459) keeps DL_WRITE when a request is in progress,
#    so the next request is cut off with http.write_timeout although nothing
#    is being written and its read timeout has not expired.
def test_write_deadline_does_not_cut_off_the_next_request(datadir):
    datadir.write_config('http = { write_timeout = "1s", read_timeout = "20s" },')
    srv = Server(datadir, plain=True)
    try:
        n = 1000
        s = plain_connect(srv, timeout=20)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * n +
                  b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the last one unfinished
        time.sleep(0.3)
        buf = bytearray()
        for _ in range(n):
            assert read_response(s, buf).status == 200
        # Every response is read: nothing is left to write.
        time.sleep(2.5)
        s.sendall(b"\r\n")
        try:
            r = read_response(s, buf)
            status = r.status
        except ConnectionError:
            status = "closed"
        s.close()
        assert status == 200, (status, [l for l in srv.log().splitlines() if "timeout" in l])
    finally:
        srv.stop()


# 5. During shutdown the server sends "Connection: close" and then goes on
#    reading, running and answering the next request on that connection
#    (serialize_response core/net/http.c:422 vs. conn_flush :702 and
#    mdm__conn_close_when_done :1221-1224). A client retrying the request it
#    believes unanswered runs a write twice.
def test_nothing_is_processed_after_a_connection_close_response_at_shutdown(datadir):
    srv = Server(datadir, plain=True)
    try:
        s = plain_connect(srv, timeout=15)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # in progress
        srv.wait_log(r"event=server.listening .*tls=false")
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_log(r"event=server.stopping")
        s.sendall(b"\r\nPOST /v1/challenges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + datadir.api_key.encode() + b"\r\nContent-Length: 0\r\n")
        buf = bytearray()
        r = read_response(s, buf)
        assert r.status == 200 and r.header("connection") == "close"
        time.sleep(0.3)
        try:
            s.sendall(b"\r\n")
            second = read_response(s, buf).status
        except (ConnectionError, OSError):
            second = None
        s.close()
        assert srv.proc.wait(20) == 0
        assert second is None, f"answered {second} after Connection: close"
    finally:
        srv.kill()


# 6. http.max_header_bytes is not enforced on whitespace before a header value
#    (on_header_value counts only llhttp's value span, core/net/http.c:829-832):
#    a 1 MB request head passes a 4 KiB limit.
def test_max_header_bytes_counts_whitespace(datadir):
    datadir.write_config('http = { max_header_bytes = "4KiB" },')
    srv = Server(datadir, plain=True)
    try:
        with plain_connect(srv, timeout=20) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b" " * 1_000_000
                      + b"v\r\n\r\n")
            r = read_response(s)
        assert r.status == 431, r.status
    finally:
        srv.stop()


def raw_exchange(srv, data, timeout=10):
    """Sends data on a new plain connection; returns the first response and
    whether the server closed the connection after it."""
    with plain_connect(srv, timeout=timeout) as s:
        s.sendall(data)
        buf = bytearray()
        r = read_response(s, buf)
        rest = read_until_eof(s, 3)
        return r, rest


# A transfer coding other than chunked cannot be decoded: 501, and the
# connection is closed (the body's framing is unknown).
def test_unknown_transfer_coding_is_501(plain_server):
    key = plain_server.datadir.api_key.encode()
    for te in [b"gzip, chunked", b"deflate,chunked", b"identity, chunked", b"x-custom, chunked"]:
        r, rest = raw_exchange(plain_server,
                               b"POST /v1/challenges HTTP/1.1\r\nHost: x\r\n"
                               b"Authorization: Bearer " + key + b"\r\n"
                               b"Transfer-Encoding: " + te + b"\r\n\r\n"
                               b"5\r\nhello\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert r.status == 501, (te, r.status, r.body)
        assert json.loads(r.body)["error"] == "not_implemented", r.body
        assert r.header("connection") == "close"
        assert b"HTTP/1.1" not in rest, rest  # nothing after it is answered
    # chunked not last: the body's end cannot be found at all (400).
    r, _ = raw_exchange(plain_server, b"POST /healthz HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked, gzip\r\n\r\n")
    assert r.status == 400 and r.header("connection") == "close", r.status
    # Nothing was created by those requests.
    assert table_count(plain_server, "challenges") == 0
    # Plain chunked still works.
    r, _ = raw_exchange(plain_server, b"POST /healthz HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n")
    assert r.status == 405


# After an error answer that closes the connection, the server drains what
# the client still sends (so that its close does not reset the connection
# before the client has read the answer), but its own side ends at once:
# the client sees the end right after the answer, not after the drain
# (2 s). Before, a client reading to the end waited those 2 s.
def test_error_answer_ends_our_side_at_once_and_still_drains(plain_server):
    with plain_connect(plain_server) as s:
        s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                  b"5\r\nhello\r\n")
        r = read_response(s, bytearray())
        assert r.status == 501 and r.header("connection") == "close", r.status
        t0 = time.monotonic()
        assert read_until_eof(s, 5) == b""
        ended = time.monotonic() - t0
        assert ended < 1.0, ended
        # The server still reads (drains) for a while: more of the body is
        # taken without a reset.
        s.sendall(b"x" * 65536)
        time.sleep(0.1)
        s.sendall(b"y" * 1024)
    # The server is fine afterwards.
    r, _ = raw_exchange(plain_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200


# Only HTTP/1.x is served: any other version gets 505. A later 1.x minor
# version is served as 1.1 (RFC 9112 section 2.3).
def test_other_http_versions_are_505(plain_server):
    for version in [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/9.9"]:
        r, _ = raw_exchange(plain_server, b"GET /healthz " + version + b"\r\nHost: x\r\n\r\n")
        assert r.status == 505, (version, r.status, r.body)
        assert r.header("connection") == "close"
    for version in [b"HTTP/1.0", b"HTTP/1.1", b"HTTP/1.2", b"HTTP/1.9"]:
        with plain_connect(plain_server) as s:
            s.sendall(b"GET /healthz " + version + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = read_until_eof(s, 3)
        assert head.startswith(b"HTTP/1.1 200 "), (version, head[:60])


# When the batch commit fails, held answers become 503: the access log and
# the request counter must show the 503 the client got, not the answer that
# was prepared before the commit.
def test_commit_failure_is_logged_and_counted_as_503(datadir):
    import re
    import shutil
    import os
    import requests
    from device import Api, Device
    from test_faults import _mount_tmpfs, _umount
    mnt = os.path.join(datadir.path, "smalldb")
    os.mkdir(mnt)
    _mount_tmpfs(mnt, "6m")
    srv = None
    try:
        shutil.copy(os.path.join(datadir.path, "db", "data.mdb"), mnt)
        datadir.write_config('  store = { path = "smalldb", map_size = "64MiB" },')
        with open(os.path.join(mnt, "filler"), "wb") as f:
            f.write(b"\0" * (3 << 20))
        srv = Server(datadir)
        api = Api(srv)
        d = Device(srv)
        d.enroll()
        created, refused = 0, None
        for i in range(200):
            r = requests.post(srv.url + "/v1/commands",
                              headers={"Authorization": "Bearer " + api.key},
                              json={"request_type": "DeviceLock", "targets": [d.udid],
                                    "nopush": True, "Message": f"{i} " + "x" * 65536},
                              verify=datadir.ca_crt, timeout=60)
            if r.status_code == 201:
                created += 1
                continue
            refused = r
            break
        assert refused is not None and created > 0, created
        assert refused.status_code == 503, (refused.status_code, refused.text)
        rid = refused.headers["X-Request-Id"]
        srv.wait_log(r"event=store.commit_failed")
        lines = [l for l in srv.log().splitlines()
                 if "event=http.request" in l and rid in l]
        assert len(lines) == 1, lines
        assert " status=503 " in lines[0], lines[0]
        text = requests.get(srv.url + "/metrics", verify=datadir.ca_crt, timeout=30).text

        def count(status):
            m = re.search(r'^moonmdm_http_requests_total\{route="v1_commands",status="%d"\} (\d+)$'
                          % status, text, re.M)
            return int(m.group(1)) if m else 0
        assert count(503) >= 1 and count(201) == created, (count(201), count(503), created)
    finally:
        if srv is not None:
            srv.kill()
        _umount(mnt)


# Expect: 100-continue invites the body only when the request can succeed:
# a request that gets 404/405/401 is answered at once, before its body, and
# the connection is closed (the body it may still send is not read).
def test_expect_100_continue_only_for_requests_that_can_succeed(plain_server):
    srv = plain_server
    key = srv.datadir.api_key
    cases = [(b"POST /nope HTTP/1.1", {}, 404),
             (b"POST /healthz HTTP/1.1", {}, 405),
             (b"POST /v1/challenges HTTP/1.1", {}, 401),
             (b"POST /v1/challenges HTTP/1.1", {"Authorization": "Bearer mdm_0_bad"}, 401),
             (b"POST /v1/challenges?ttl=1&ttl=2 HTTP/1.1",
              {"Authorization": "Bearer " + key}, 400)]
    for line, headers, want in cases:
        with plain_connect(srv) as s:
            head = line + b"\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n"
            for k, v in headers.items():
                head += f"{k}: {v}\r\n".encode()
            s.sendall(head + b"\r\n")
            r = read_response(s)
            assert r.status == want, (line, r.status, r.body)
            assert r.header("connection") == "close", (line, r.headers)
    # The bad key was counted once, not once at the head and again later.
    bad = [l for l in srv.log().splitlines() if "event=api.auth_failed" in l]
    assert len(bad) == 1, bad
    # A request that can succeed gets 100 Continue, then its answer, and the
    # connection stays usable.
    with plain_connect(srv) as s:
        buf = bytearray()
        s.sendall(b"POST /v1/challenges HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                  b"Authorization: Bearer " + key.encode() + b"\r\n"
                  b"Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n")
        assert read_response(s, buf).status == 100
        s.sendall(b"{}")
        r = read_response(s, buf)
        assert r.status == 201, r.body
        http_request(s, "GET", "/healthz")
        assert read_response(s, buf).status == 200
    assert table_count(srv, "challenges") == 1


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# At shutdown a connection that still has answers to write is closed once
# they are out; it must stop reading meanwhile. It used to read on (until
# the grace period ended), buffering whatever the client sent.
def test_shutdown_stops_reading_a_connection_that_closes_when_done(datadir):
    import select
    # The answers must outgrow the kernel's buffers (so that the server
    # still has some to write) and stay under the 4 MiB after which the
    # server stops reading on its own: try larger amounts if they fit.
    for n in (450, 520, 600):
        srv = Server(datadir, plain=True)
        try:
            s = plain_connect(srv, timeout=15, rcvbuf=4096)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * n)
            time.sleep(0.5)
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_log(r"event=server.stopping")
            time.sleep(0.2)
            before = rss_kb(srv.proc.pid)
            s.setblocking(False)
            chunk = b"X" * 65536
            sent = 0
            deadline = time.monotonic() + 3
            try:
                while sent < (96 << 20) and time.monotonic() < deadline:
                    select.select([], [s], [], 0.1)
                    try:
                        sent += s.send(chunk)
                    except BlockingIOError:
                        pass
            except ConnectionError:
                s.close()
                continue  # every answer fit in the kernel's buffers: more
            grown = rss_kb(srv.proc.pid) - before
            s.close()
            assert srv.proc.wait(20) == 0
            # Kernel buffers take some (tens of MiB at most); the server
            # itself must not have taken it in.
            assert grown < 16 << 10, (f"server RSS grew {grown} KiB while the client sent "
                                      f"{sent >> 20} MiB after shutdown began")
            return
        finally:
            srv.kill()
    pytest.fail("the server never had answers left to write at shutdown")
