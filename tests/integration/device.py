"""A device simulator: an Apple device as the MDM protocol sees it.

It holds a key and an identity certificate, checks in (Authenticate,
TokenUpdate, ...), polls for commands and answers them, over mTLS or with
Mdm-Signature, on a keep-alive connection like a real device.
"""
import base64
import http.client
import json
import os
import plistlib
import socket
import ssl
import threading
import time
import uuid as uuidlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

import pki

CHECKIN_CT = "application/x-apple-aspen-mdm-checkin"
CONNECT_CT = "application/x-apple-aspen-mdm"
TOPIC = "com.apple.mgmt.External.7b1f6b46-2f5c-4d4e-9d4f-000000000001"


def new_udid():
    return "00008030-" + os.urandom(8).hex().upper()


class Device:
    def __init__(self, server, udid=None, cert=None, key=None, sign=False, plain=False,
                 proxy_header=None, serial=None, tmpdir=None):
        self.server = server
        self.udid = udid or new_udid()
        self.serial = serial or ("C0" + os.urandom(5).hex().upper())
        if cert is None:
            ca_cert, ca_key = pki.load_ca(server.datadir)
            cert, key = pki.issue_client(ca_cert, ca_key, "device " + self.udid, key=key)
        self.cert, self.key = cert, key
        self.sign = sign
        self.plain = plain
        self.proxy_header = proxy_header
        self.token = os.urandom(32)
        self.push_magic = str(uuidlib.uuid4()).upper()
        self._tmp = tmpdir or server.datadir.path
        self._conn = None
        self.user = None  # (UserID, UserShortName) for user-channel requests

    # -- transport -----------------------------------------------------------
    def _paths(self):
        name = "dev-" + self.udid
        return pki.write_pair(self._tmp, name, self.cert, self.key)

    def connection(self):
        if self._conn is None:
            if self.plain:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.server.plain_port,
                                                        timeout=30)
            else:
                ctx = ssl.create_default_context(cafile=self.server.datadir.ca_crt)
                if not self.sign:
                    c, k = self._paths()
                    ctx.load_cert_chain(c, k)
                self._conn = http.client.HTTPSConnection("127.0.0.1", self.server.port,
                                                         context=ctx, timeout=30)
        return self._conn

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def signature(self, body):
        sig = (pkcs7.PKCS7SignatureBuilder().set_data(body)
               .add_signer(self.cert, self.key, hashes.SHA256())
               .sign(serialization.Encoding.DER,
                     [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))
        return base64.b64encode(sig).decode()

    def put(self, path, body, content_type, extra_headers=None):
        """PUTs raw bytes; returns (status, headers dict, body bytes)."""
        headers = {"Content-Type": content_type, "User-Agent": "MDM/1.0"}
        if self.sign:
            headers["Mdm-Signature"] = self.signature(body)
        if self.proxy_header:
            headers[self.proxy_header] = ":" + base64.b64encode(
                self.cert.public_bytes(serialization.Encoding.DER)).decode() + ":"
        if extra_headers:
            headers.update(extra_headers)
        for attempt in range(2):
            conn = self.connection()
            try:
                conn.request("PUT", path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ssl.SSLEOFError, ssl.SSLZeroReturnError):
                # A kept-alive connection the server closed: reconnect once.
                self.close()
                if attempt == 1:
                    raise

    def ids(self):
        d = {"UDID": self.udid}
        if self.user:
            d["UserID"], d["UserShortName"] = self.user
        return d

    # -- check-in ------------------------------------------------------------
    def checkin(self, message_type, path="/mdm/checkin", **keys):
        msg = {"MessageType": message_type}
        msg.update(self.ids())
        msg.update(keys)
        status, _, body = self.put(path, plistlib.dumps(msg), CHECKIN_CT)
        return status, body

    def authenticate(self, **extra):
        keys = {"Topic": TOPIC, "SerialNumber": self.serial, "ProductName": "iPhone15,2",
                "OSVersion": "17.5", "BuildVersion": "21F79", "DeviceName": "Test iPhone",
                "Model": "iPhone15,2", "ModelName": "iPhone"}
        keys.update(extra)
        status, _ = self.checkin("Authenticate", **keys)
        return status

    def token_update(self, **extra):
        keys = {"Topic": TOPIC, "Token": self.token, "PushMagic": self.push_magic,
                "UnlockToken": b"unlock-" + os.urandom(8)}
        keys.update(extra)
        status, _ = self.checkin("TokenUpdate", **keys)
        return status

    def enroll(self):
        assert self.authenticate() == 200
        assert self.token_update() == 200

    # -- commands ------------------------------------------------------------
    def report(self, status, command_uuid=None, path="/mdm/connect", **keys):
        """Sends a report; returns (http status, next command dict or None)."""
        msg = {"Status": status}
        msg.update(self.ids())
        if command_uuid:
            msg["CommandUUID"] = command_uuid
        msg.update(keys)
        st, headers, body = self.put(path, plistlib.dumps(msg), CONNECT_CT)
        if st != 200 or not body:
            return st, None
        return st, plistlib.loads(body)

    def idle(self, path="/mdm/connect"):
        return self.report("Idle", path=path)

    def answer(self, cmd):
        """A plausible Acknowledged answer to a command."""
        rt = cmd["Command"]["RequestType"]
        if rt == "DeviceInformation":
            return "Acknowledged", {"QueryResponses": {
                "SerialNumber": self.serial, "OSVersion": "17.5", "DeviceName": "Test iPhone",
                "ModelName": "iPhone", "IsSupervised": False, "BatteryLevel": 0.8}}
        if rt == "ProfileList":
            return "Acknowledged", {"ProfileList": []}
        if rt == "SecurityInfo":
            return "Acknowledged", {"SecurityInfo": {"PasscodePresent": True}}
        return "Acknowledged", {}

    def run(self, handler=None, limit=1000, path="/mdm/connect"):
        """One session: Idle, then answer every command until none is left.
        handler(cmd) -> (status, extra keys); defaults to answer(). Returns
        the list of commands received."""
        got = []
        st, cmd = self.idle(path=path)
        assert st == 200, st
        while cmd is not None and len(got) < limit:
            got.append(cmd)
            status, extra = (handler or self.answer)(cmd)
            st, cmd = self.report(status, cmd["CommandUUID"], path=path, **extra)
            assert st == 200, st
        return got


class Api:
    """The admin API with a key."""

    def __init__(self, server, key=None):
        self.server = server
        self.key = key or server.datadir.api_key

    def call(self, method, path, body=None, content_type="application/json", key=None):
        import requests
        headers = {"Authorization": "Bearer " + (key or self.key)}
        data = None
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = body
            else:
                data = json.dumps(body)
            headers["Content-Type"] = content_type
        r = requests.request(method, self.server.url + path, data=data, headers=headers,
                             verify=self.server.datadir.ca_crt, timeout=60)
        try:
            payload = r.json()
        except ValueError:
            payload = r.text
        return r.status_code, payload

    def send(self, request_type, targets, **keys):
        body = {"request_type": request_type, "targets": list(targets)}
        body.update(keys)
        return self.call("POST", "/v1/commands", body)


class IdlePinger:
    """Sends Idle after Idle for a device on a thread of its own, recording
    each round trip (seconds) in .latencies and any status but 200 in
    .errors, from start() until stop()."""

    def __init__(self, device):
        self.device = device
        self.latencies, self.errors = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            st, _ = self.device.idle()
            self.latencies.append(time.monotonic() - t0)
            if st != 200:
                self.errors.append(st)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
