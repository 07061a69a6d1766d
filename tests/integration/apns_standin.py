"""A local APNs stand-in: HTTP/2 over TLS with client-certificate checks.

Built on python3-h2 and ssl with asyncio. It answers POST /3/device/<token>
like APNs: 200 with an apns-id header by default, or what a rule says for a
token or a client certificate (status, reason, delay, how many times). It
records every request (method, path, headers, body, the SHA-256 of the
client certificate) for the tests to look at.

In a test, run it in a thread:

    s = ApnsStandin(cert, key, client_ca=ca_path).start()
    s.respond(token_hex, 410, "Unregistered")
    ... s.records, s.wait_requests(1) ...
    s.stop()

As a program (the benchmark runs it so), it serves until stdin closes or it
gets SIGTERM, with --workers N processes sharing the port (SO_REUSEPORT):

    python3 apns_standin.py --cert c.pem --key k.pem [--client-ca ca.pem]
                            [--port 0] [--workers 1] [--no-record]
    -> prints "port=<n>" once listening
"""
import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import uuid

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class Rule:
    """An answer for requests that match a token and/or a client cert."""

    def __init__(self, status, reason=None, delay=0.0, times=None, token=None,
                 fingerprint=None, apns_id=None):
        self.status = status
        self.reason = reason
        self.delay = delay
        self.times = times
        self.token = token.lower() if token else None
        self.fingerprint = fingerprint
        self.apns_id = apns_id

    def matches(self, token, fingerprint):
        return ((self.token is None or self.token == token) and
                (self.fingerprint is None or self.fingerprint == fingerprint))


class ApnsStandin:
    def __init__(self, certfile, keyfile, client_ca=None, host="127.0.0.1", port=0,
                 require_client_cert=True, max_streams=1000, record=True, sock=None):
        self.host = host
        self.port = port
        self.record = record
        self.max_streams = max_streams
        self.records = []
        self.rules = []
        self.default_delay = 0.0
        self.answered = 0
        self.connections = 0
        self.on_request = None  # called (in the stand-in's thread) with each record
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._sock = sock
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ctx.load_cert_chain(certfile, keyfile)
        self._ctx.set_alpn_protocols(["h2"])
        if client_ca:
            self._ctx.load_verify_locations(client_ca)
            self._ctx.verify_mode = (ssl.CERT_REQUIRED if require_client_cert
                                     else ssl.CERT_OPTIONAL)
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()
        self._conn_ids = 0

    # -- control (any thread) --------------------------------------------------
    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def respond(self, token=None, status=200, reason=None, delay=0.0, times=None,
                fingerprint=None, apns_id=None):
        """Adds a rule; the first matching rule answers. token is lowercase
        hex; fingerprint the client certificate's SHA-256 in hex."""
        with self.lock:
            self.rules.append(Rule(status, reason, delay, times, token, fingerprint, apns_id))

    def clear_rules(self):
        with self.lock:
            self.rules = []

    def reset(self):
        with self.lock:
            self.rules = []
            self.records = []

    def requests(self, token=None):
        with self.lock:
            return [r for r in self.records if token is None or r["token"] == token.lower()]

    def wait_requests(self, n, token=None, timeout=15):
        """Waits until at least n requests (for token) were answered."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r for r in self.records
                       if r.get("answered") and (token is None or r["token"] == token.lower())]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"stand-in: {len(got)} answered requests, wanted {n}: {self.records!r}")
                self.cond.wait(left)

    # -- lifecycle ---------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("APNs stand-in did not start")
        return self

    def stop(self):
        """Stops serving (a second call does nothing)."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self):
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._serve())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for t in asyncio.all_tasks(loop):
                t.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _serve(self):
        if self._sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=self._sock,
                                                      ssl=self._ctx)
        else:
            self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                      ssl=self._ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    # -- the protocol ------------------------------------------------------------
    async def _handle(self, reader, writer):
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is None or sslobj.selected_alpn_protocol() != "h2":
            writer.close()
            return
        der = sslobj.getpeercert(binary_form=True)
        fingerprint = hashlib.sha256(der).hexdigest() if der else None
        self._conn_ids += 1
        conn_id = self._conn_ids
        with self.lock:
            self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                              self.max_streams})
        writer.write(conn.data_to_send())
        streams = {}
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": dict(ev.headers), "body": b""}
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.stream_id in streams:
                            streams[ev.stream_id]["body"] += ev.data
                    elif isinstance(ev, h2.events.StreamEnded):
                        st = streams.pop(ev.stream_id, None)
                        if st is not None:
                            self._request(conn, writer, ev.stream_id, st, fingerprint, conn_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        streams.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        writer.write(conn.data_to_send())
                        writer.close()
                        return
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    def _request(self, conn, writer, stream_id, st, fingerprint, conn_id):
        headers = st["headers"]
        path = headers.get(":path", "")
        token = path.rsplit("/", 1)[-1].lower() if path.startswith("/3/device/") else ""
        rule = None
        with self.lock:
            for r in self.rules:
                if r.matches(token, fingerprint):
                    rule = r
                    if r.times is not None:
                        r.times -= 1
                        if r.times <= 0:
                            self.rules.remove(r)
                    break
        status = rule.status if rule else 200
        reason = rule.reason if rule else None
        delay = rule.delay if rule else self.default_delay
        apns_id = (rule.apns_id if rule and rule.apns_id else None) or headers.get(
            "apns-id") or str(uuid.uuid4()).upper()
        rec = None
        if self.record:
            body = st["body"]
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            rec = {"method": headers.get(":method"), "path": path, "token": token,
                   "headers": {k: v for k, v in headers.items() if not k.startswith(":")},
                   "body": body, "json": parsed, "cert_sha256": fingerprint,
                   "conn_id": conn_id, "stream_id": stream_id, "time": time.time(),
                   "status": status, "reason": reason, "apns_id": apns_id, "answered": False}
            with self.lock:
                self.records.append(rec)
            if self.on_request is not None:
                self.on_request(rec)

        def answer(flush):
            try:
                resp_headers = [(":status", str(status)), ("apns-id", apns_id)]
                payload = b""
                if reason:
                    doc = {"reason": reason}
                    if status == 410:
                        doc["timestamp"] = int(time.time() * 1000)
                    payload = json.dumps(doc).encode()
                    resp_headers.append(("content-type", "application/json"))
                conn.send_headers(stream_id, resp_headers, end_stream=not payload)
                if payload:
                    conn.send_data(stream_id, payload, end_stream=True)
                # Answers given while reading go out with the rest of that
                # read's frames, in one write.
                if flush:
                    writer.write(conn.data_to_send())
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError,
                    ConnectionError):
                return
            with self.cond:
                self.answered += 1
                if rec is not None:
                    rec["answered"] = True
                self.cond.notify_all()

        if delay > 0:
            asyncio.get_event_loop().call_later(delay, answer, True)
        else:
            answer(False)


class TlsRefuser:
    """A TLS server that refuses client certificates its CA did not issue
    the way a TLS server does it: the handshake fails with a fatal alert
    (unknown_ca, bad_certificate, ...) that reaches the client, then the
    connection closes gracefully. (asyncio drops the alert: it aborts the
    connection when a handshake fails.) Requests that pass get no answer.

        r = TlsRefuser(cert, key, client_ca=ca_path).start()
        ... r.url, r.connections, r.alerts ...
        r.stop()
    """

    def __init__(self, certfile, keyfile, client_ca, host="127.0.0.1", tls_version=None):
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if tls_version is not None:
            self._ctx.minimum_version = self._ctx.maximum_version = tls_version
        self._ctx.load_cert_chain(certfile, keyfile)
        self._ctx.set_alpn_protocols(["h2"])
        self._ctx.load_verify_locations(client_ca)
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self.alerts = []          # the handshake errors, one per refused connection
        self._stop = False
        self._thread = None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    def _run(self):
        while not self._stop:
            conn, _ = self._sock.accept()
            if self._stop:
                conn.close()
                break
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        conn.settimeout(5)
        raw = conn.dup()      # wrap_socket takes conn over
        tls = self._ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
            # TLS 1.3: the client certificate is checked when it is read.
            tls.recv(65536)
        except ssl.SSLError as e:
            self.alerts.append(str(e))
        except OSError:
            pass
        # Close gracefully (no reset that could drop the alert): stop
        # writing, read what the client still sends, then close.
        try:
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(65536):
                pass
        except OSError:
            pass
        tls.close()
        raw.close()


def _serve_forever(args, sock):
    s = ApnsStandin(args.cert, args.key, client_ca=args.client_ca,
                    require_client_cert=not args.optional_client_cert,
                    record=not args.no_record, max_streams=args.max_streams, sock=sock)
    s.start()
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--client-ca")
    ap.add_argument("--optional-client-cert", action="store_true",
                    help="ask for a client certificate but accept clients without one")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-streams", type=int, default=1000)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--until-signal", action="store_true",
                    help="serve until SIGTERM (default: until stdin closes)")
    args = ap.parse_args()

    def listener(port):
        sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sk.bind((args.host, port))
        sk.listen(1024)
        sk.setblocking(False)
        return sk

    first = listener(args.port)
    port = first.getsockname()[1]
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            first.close()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            _serve_forever(args, listener(port))
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
            os._exit(0)
        children.append(pid)
    s = _serve_forever(args, first)
    print(f"port={port}", flush=True)

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        s.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.until_signal:
        while True:
            signal.pause()
    try:
        sys.stdin.read()
    except (OSError, ValueError):
        pass
    stop()


if __name__ == "__main__":
    main()
