#!/usr/bin/python3
"""Builds the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

The messages are made by the same code paths as the integration tests:
device check-ins and command reports with plistlib like
tests/integration/device.py, SCEP pkiMessages with the Python SCEP client of
tests/integration/test_scep.py, Mdm-Signature and OTA bodies with
cryptography's PKCS7 builder, and raw HTTP requests like the ones
tests/integration/test_http.py writes to its sockets. The keys are the fixed
ones of tests/fuzz/fuzz_keys.h (read from that file), so that the fuzz
targets, which load the same keys, accept the seeds as valid input.

    /usr/bin/python3 tests/fuzz/make_seeds.py [--force] [--only TARGET ...]

(Debian's python3, which has the packages of scripts/deps.sh --test.)

Files that exist are kept unless --force is given: plists, JSON, configs and
HTTP framing come out the same on every run, but CMS and SCEP messages hold
random padding, IVs and nonces (and ECDSA signatures are randomised), so a
re-run would otherwise rewrite committed files for nothing.
"""
import argparse
import base64
import datetime
import ipaddress
import os
import plistlib
import re
import sys
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import test_scep  # noqa: E402  (the SCEP client of the integration tests)

CORPUS = os.path.join(HERE, "corpus")
CHECKIN_CT = "application/x-apple-aspen-mdm-checkin"
CONNECT_CT = "application/x-apple-aspen-mdm"
TOPIC = "com.apple.mgmt.External.f022"
# The API keys fuzz_http.c stores (admin and read-only).
KEY_SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
ADMIN_KEY = "mdm_f022f022f022f022_" + KEY_SECRET
READ_KEY = "mdm_f022f022f022f0ad_" + KEY_SECRET
# fuzz_mdm.c binds its identity to this UDID; fuzz_http's device uses another.
MDM_UDID = "FUZZ-UDID"
HTTP_UDID = "00008030-F022F022F022F022"
CMD_UUID = "5EED0000-0000-4000-8000-000000000001"


# ---- keys ------------------------------------------------------------------

def pem_blocks():
    """The PEM strings of fuzz_keys.h by their C names."""
    text = open(os.path.join(HERE, "fuzz_keys.h")).read()
    out = {}
    for m in re.finditer(r"static const char (\w+)\[\] =\n((?:\s*\".*\"\n?)+);", text):
        lines = re.findall(r'"(.*)\\n"', m.group(2))
        out[m.group(1)] = ("\n".join(lines) + "\n").encode()
    return out


PEM = pem_blocks()
CA_CERT = x509.load_pem_x509_certificate(PEM["FUZZ_CA_CERT_PEM"])
CA_KEY = serialization.load_pem_private_key(PEM["FUZZ_CA_KEY_PEM"], None)
RA_CERT = x509.load_pem_x509_certificate(PEM["FUZZ_RA_CERT_PEM"])
DEV_CERT = x509.load_pem_x509_certificate(PEM["FUZZ_DEVICE_CERT_PEM"])
DEV_KEY = serialization.load_pem_private_key(PEM["FUZZ_DEVICE_KEY_PEM"], None)
DEV_DER = DEV_CERT.public_bytes(serialization.Encoding.DER)


def issue(cn, key, not_before, not_after, ca_cert=CA_CERT, ca_key=CA_KEY):
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(0x2002).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))


def other_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(datetime.datetime(2025, 1, 1))
            .not_valid_after(datetime.datetime(2125, 1, 1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def cms_sign(data, cert=DEV_CERT, key=DEV_KEY, detached=False, attributes=False):
    opts = [pkcs7.PKCS7Options.Binary]
    if detached:
        opts.append(pkcs7.PKCS7Options.DetachedSignature)
    if not attributes:
        opts.append(pkcs7.PKCS7Options.NoAttributes)
    return (pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, opts))


# ---- writing -----------------------------------------------------------------

class Writer:
    def __init__(self, force, only):
        self.force, self.only = force, only
        self.written = self.kept = 0

    def __call__(self, target, name, data, deterministic=True):
        if self.only and target not in self.only:
            return
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        if isinstance(data, str):
            data = data.encode()
        if os.path.exists(path) and not self.force:
            if deterministic and open(path, "rb").read() != data:
                with open(path, "wb") as f:
                    f.write(data)
                self.written += 1
            else:
                self.kept += 1
            return
        with open(path, "wb") as f:
            f.write(data)
        self.written += 1


# ---- device messages (as tests/integration/device.py sends them) --------------

def checkins(udid):
    ids = {"UDID": udid}
    token = bytes(range(32))
    user = {"UserID": "F022F022-0000-4000-8000-00000000B0B0", "UserShortName": "bob",
            "UserLongName": "Bob Example"}
    return {
        "authenticate": dict(MessageType="Authenticate", Topic=TOPIC, SerialNumber="C0F022F022",
                             ProductName="iPhone15,2", OSVersion="17.5", BuildVersion="21F79",
                             DeviceName="Test iPhone", Model="iPhone15,2", ModelName="iPhone",
                             IMEI="35 000000 000000 0", MEID="35000000000000", **ids),
        "token-update": dict(MessageType="TokenUpdate", Topic=TOPIC, Token=token,
                             PushMagic="F022F022-1111-4000-8000-000000000001",
                             UnlockToken=b"unlock-" + bytes(8), AwaitingConfiguration=False,
                             **ids),
        "token-update-user": dict(MessageType="TokenUpdate", Topic=TOPIC, Token=token[::-1],
                                  PushMagic="F022F022-2222-4000-8000-000000000002", **ids,
                                  **user),
        "user-authenticate": dict(MessageType="UserAuthenticate", DigestResponse="", **ids,
                                  **user),
        "checkout": dict(MessageType="CheckOut", Topic=TOPIC, **ids),
        "get-bootstrap-token": dict(MessageType="GetBootstrapToken", **ids),
        "set-bootstrap-token": dict(MessageType="SetBootstrapToken", BootstrapToken=b"bt" * 20,
                                    AwaitingConfiguration=True, **ids),
        "declarative-management": dict(MessageType="DeclarativeManagement", Endpoint="tokens",
                                       Data=b'{"SyncTokens":{}}', **ids),
        "get-token": dict(MessageType="GetToken", TokenServiceType="com.apple.maid",
                          TokenParameters={"PhoneUDID": udid}, **ids),
        "user-enrollment-authenticate": dict(
            MessageType="Authenticate", Topic=TOPIC, EnrollmentID="F022F022ENROLLMENTID",
            EnrollmentUserID="F022F022USERID", OSVersion="17.5", ProductName="iPhone15,2"),
        "unknown-type": dict(MessageType="Frobnicate", **ids),
    }


def reports(udid):
    ids = {"UDID": udid}
    return {
        "idle": dict(Status="Idle", **ids),
        "ack-device-information": dict(
            Status="Acknowledged", CommandUUID=CMD_UUID, **ids, QueryResponses={
                "SerialNumber": "C0F022F022", "OSVersion": "17.5", "DeviceName": "Test iPhone",
                "ModelName": "iPhone", "IsSupervised": False, "BatteryLevel": 0.8,
                "DeviceCapacity": 119.2, "WiFiMAC": "00:11:22:33:44:55",
                "ServiceSubscriptions": [{"CarrierSettingsVersion": "57.0",
                                          "Slot": "CTSubscriptionSlotOne"}],
                "LastCloudBackupDate": datetime.datetime(2024, 5, 1, 12, 0, 0),
                "OSUpdateSettings": {"AutoCheckEnabled": True, "PerformPeriodicCheck": True}}),
        "ack-profile-list": dict(Status="Acknowledged", CommandUUID=CMD_UUID, **ids,
                                 ProfileList=[{"PayloadIdentifier": "com.example.wifi",
                                               "PayloadUUID": "F022F022-3333-4000-8000-000000000003",
                                               "PayloadVersion": 1, "IsManaged": True,
                                               "PayloadContent": [{"PayloadType": "com.apple.wifi.managed"}]}]),
        "ack-security-info": dict(Status="Acknowledged", CommandUUID=CMD_UUID, **ids,
                                  SecurityInfo={"PasscodePresent": True, "HardwareEncryptionCaps": 3}),
        "ack-installed-apps": dict(Status="Acknowledged", CommandUUID=CMD_UUID, **ids,
                                   InstalledApplicationList=[{"Identifier": "com.example.app",
                                                              "Version": "1.0", "BundleSize": 12345}]),
        "ack-certificate-list": dict(Status="Acknowledged", CommandUUID=CMD_UUID, **ids,
                                     CertificateList=[{"CommonName": "x", "Data": DEV_DER,
                                                       "IsIdentity": True}]),
        "error": dict(Status="Error", CommandUUID=CMD_UUID, **ids, ErrorChain=[
            {"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain",
             "LocalizedDescription": "Unknown command", "USEnglishDescription": "Unknown command"}]),
        "command-format-error": dict(Status="CommandFormatError", CommandUUID=CMD_UUID, **ids),
        "notnow": dict(Status="NotNow", CommandUUID=CMD_UUID, **ids),
        "idle-user-channel": dict(Status="Idle", UserID="F022F022-0000-4000-8000-00000000B0B0",
                                  **ids),
    }


def plist_forms(msg):
    return {"xml": plistlib.dumps(msg), "bin": plistlib.dumps(msg, fmt=plistlib.FMT_BINARY)}


def mdm_seeds(w):
    for name, msg in checkins(MDM_UDID).items():
        for form, data in plist_forms(msg).items():
            w("mdm", f"dev-checkin-{name}.{form}", b"\x00" + data)
    for name, msg in reports(MDM_UDID).items():
        for form, data in plist_forms(msg).items():
            w("mdm", f"dev-report-{name}.{form}", b"\x01" + data)


# ---- plists --------------------------------------------------------------------

def plist_seeds(w):
    n = 0
    for msg in list(checkins(MDM_UDID).values()) + list(reports(MDM_UDID).values()):
        for form, data in plist_forms(msg).items():
            w("plist", f"device-{n:02d}.{form}", data)
        n += 1
    special = {
        "scalars": {"s": "text", "u": "ünïcødé ✓", "i": 42, "neg": -7, "big": 2 ** 63 - 1,
                    "r": 3.25, "b": True, "f": False, "d": b"\x00\x01\xff",
                    "date": datetime.datetime(2001, 1, 1), "old": datetime.datetime(1950, 6, 1),
                    "empty-dict": {}, "empty-array": [], "empty-string": ""},
        "nested": {"a": [[[{"b": [1, [2, [3, {"c": {}}]]]}]]]},
        "ota-attrs": {"UDID": "OTA-UDID-1", "SERIAL": "C0OTA", "PRODUCT": "iPhone15,2",
                      "VERSION": "21F79", "CHALLENGE": "fuzz-challenge", "IMEI": "x"},
        "array-root": [1, "two", 3.0, {"four": 4}],
        "string-root": "just a string",
    }
    for name, v in special.items():
        for form, data in plist_forms(v).items():
            w("plist", f"{name}.{form}", data)
    w("plist", "uid.bin", plistlib.dumps({"$objects": [plistlib.UID(1), "x"], "root": plistlib.UID(0)},
                                         fmt=plistlib.FMT_BINARY))
    # Hand-written XML the way other tools write it.
    w("plist", "handwritten.xml",
      '<?xml version="1.0"?>\n<plist version="1.0"><dict><key>A</key><string>a &amp; b &lt;c&gt;'
      '</string><key>B</key><integer>-0x10</integer><key>C</key><real>1e308</real>'
      '<key>D</key><date>2069-01-19T03:14:07Z</date><key>E</key><data>  AAEC\n AwQ= </data>'
      '<key>F</key><array><true/><false/></array><!-- comment --><key>G</key>'
      '<string><![CDATA[<raw>]]></string></dict></plist>\n')


# ---- commands (admin input) ------------------------------------------------------

def schema_request_types():
    text = open(os.path.join(ROOT, "core", "mdm", "cmdschema_data.c")).read()
    return sorted(set(re.findall(r'request_type = "([A-Za-z]+)"', text)))


def api_json_seeds(w):
    for rt in schema_request_types():
        w("api_json", f"empty-{rt}", f"{rt}\n{{}}")
    profile = base64.b64encode(plistlib.dumps(mobileconfig())).decode()
    hand = {
        "device-information": 'DeviceInformation\n{"Queries":["UDID","SerialNumber","OSVersion"]}',
        "device-lock": 'DeviceLock\n{"Message":"<Lost> & found","PIN":"123456","PhoneNumber":"+1 555 0100"}',
        "rt-from-params": '\n{"RequestType":"ProfileList","ManagedOnly":true}',
        "install-profile": 'InstallProfile\n{"Payload":"%s"}' % profile,
        "remove-profile": 'RemoveProfile\n{"Identifier":"com.example.wifi"}',
        "settings": 'Settings\n{"Settings":[{"Item":"DeviceName","DeviceName":"Fuzz"},'
                    '{"Item":"Bluetooth","Enabled":true},{"Item":"ApplicationAttributes",'
                    '"Identifier":"com.example.app","Attributes":{"VPNUUID":"x"}}]}',
        "erase-device": 'EraseDevice\n{"PIN":"123456","PreserveDataPlan":true,'
                        '"DisallowProximitySetup":false}',
        "schedule-os-update": 'ScheduleOSUpdate\n{"Updates":[{"ProductKey":"iOS17.5",'
                              '"InstallAction":"InstallASAP","ProductVersion":"17.5"}]}',
        "install-application": 'InstallApplication\n{"iTunesStoreID":361309726,'
                               '"ManagementFlags":5,"Configuration":{"k":[1,2.5,{"x":null}]},'
                               '"Attributes":{"Removable":false}}',
        "clear-passcode": 'ClearPasscode\n{"UnlockToken":"dW5sb2Nr"}',
        "mismatch": 'DeviceLock\n{"RequestType":"ProfileList"}',
        "misspelt": 'DeviceInfromation\n{}',
        "wrong-type": 'DeviceLock\n{"PIN":123456}',
        "not-object": 'ProfileList\n[1,2,3]',
    }
    for name, text in hand.items():
        w("api_json", name, text)
    cmds = {
        "raw-device-information": {"CommandUUID": CMD_UUID, "Command": {
            "RequestType": "DeviceInformation", "Queries": ["UDID", "DeviceName"]}},
        "raw-device-lock": {"Command": {"RequestType": "DeviceLock", "PIN": "123456"}},
        "raw-install-profile": {"CommandUUID": CMD_UUID, "Command": {
            "RequestType": "InstallProfile", "Payload": plistlib.dumps(mobileconfig())}},
        "raw-settings": {"CommandUUID": CMD_UUID, "Command": {
            "RequestType": "Settings", "Settings": [{"Item": "DeviceName", "DeviceName": "x"}]}},
        "raw-schedule-os-update": {"Command": {"RequestType": "ScheduleOSUpdate", "Updates": [
            {"ProductKey": "iOS17.5", "InstallAction": "Default"}]}},
    }
    for name, v in cmds.items():
        for form, data in plist_forms(v).items():
            w("api_json", f"{name}.{form}", data)


# ---- configs ---------------------------------------------------------------------

def config_seeds(w):
    seeds = {
        "init.lua": '''-- moonmdm configuration, written by `moonmdm init`.
return {
  data_dir = "/var/lib/moonmdm",
  listen = { "127.0.0.1:8443" },
  tls = {
    cert = "server.crt",
    key = "server.key",
    client_ca = { "ca.crt" },
  },
  ca = {
    cert = "ca.crt",
    key = "ca.key",
  },
  scep = {
    ra_cert = "ra.crt",
    ra_key = "ra.key",
  },
  store = {
    path = "db",
  },
  log = {
    level = "info",
  },
}
''',
        "full.lua": '''#!/usr/bin/env moonmdm
local base = "/srv/mdm"
local function dur(n) return tostring(n) .. "s" end
return {
  data_dir = base,
  listen = { "0.0.0.0:8443", "[::1]:8443" },
  listen_plain = { "127.0.0.1:8080" },
  tls = { min_version = "1.3", request_client_cert = false, allow_insecure_key_mode = true,
          ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256", chain = "chain.pem" },
  http = { max_header_bytes = "64KiB", max_body_bytes = 1048576, read_timeout = dur(10),
           idle_timeout = "2m", write_timeout = "1500ms", max_connections = 100,
           max_pipeline = 8, shutdown_grace = "1h" },
  proxy = { cert_header = "X-SSL-Client-Cert" },
  log = { level = "debug", requests = false },
  store = { backend = "lmdb", map_size = "1GiB", map_max = "64GB", sync = false },
  policy = { dir = "policies", memory_max = "32MiB", budget = "20ms",
             hook_budgets = { "authenticate=1s", "scep=100ms" }, instructions = 1000000,
             load_budget = "5s", watch = false, decision_log_max = 0, decision_log_age = "7d" },
  ca = { validity = "30d", crl_url = "http://crl.example.org/ca.crl" },
  scep = { path = "/pki/scep", static_challenge = os.getenv("SCEP_CHALLENGE") or "x",
           challenge_ttl = "10m", allow_single_des = true },
  mdm = { checkin_path = "/checkin", connect_path = "/connect", path = "/mdm",
          bind_on_first_sight = true, result_retention = "1d", notnow_max = 5 },
  enroll = { base_url = "https://mdm.example.org", topic = "com.apple.mgmt.External.x",
             sign_message = true, access_rights = 8191, ota_trust = { "apple-device-ca.pem" },
             install_ca = false, organization = "Example \\"Org\\"" },
  profiles = { dir = "profiles", sign = true, encrypt = false },
  apns = { url = "sandbox", expiration = 0, timeout = "10s", max_in_flight = 10,
           connections = 1, coalesce_window = "500ms", retry_max = 0, retry_delay = "2s",
           sweep_interval = 0, sweep_after = "2h" },
  api = { enabled = false },
}
''',
        "syntax-error.lua": 'return { listen = { "127.0.0.1:8443" }\n',
        "runtime-error.lua": 'local t = nil\nreturn { data_dir = t.x }\n',
        "unknown-key.lua": 'return { htpp = { max_body_bytes = "1KiB" } }\n',
        "wrong-types.lua": 'return { http = { max_body_bytes = "lots", read_timeout = -1 },'
                           ' listen = "127.0.0.1:1", log = { requests = "yes" } }\n',
        "not-a-table.lua": 'return 42\n',
        "loop.lua": 'local n = 0\nfor i = 1, 1000 do n = n + i end\n'
                    'return { http = { max_pipeline = n % 16 + 1 } }\n',
        "strings.lua": 'local s = string.rep("a", 10) .. string.format("%d", 5)\n'
                       'return { log = { level = ("INFO"):lower() }, data_dir = "/tmp/" .. s }\n',
        "sandbox.lua": 'local ok = pcall(function() return io.open("/etc/passwd") end)\n'
                       'return { data_dir = tostring(ok) .. tostring(os.time ~= nil) }\n',
        "empty.lua": 'return {}\n',
    }
    for name, text in seeds.items():
        w("config", name, text)


# ---- CMS (OTA bodies and Mdm-Signature) ---------------------------------------

def ota_attrs(challenge=None):
    d = {"UDID": "OTA-UDID-1", "SERIAL": "C0OTA", "PRODUCT": "iPhone15,2", "VERSION": "21F79"}
    if challenge:
        d["CHALLENGE"] = challenge
    return plistlib.dumps(d)


def cms_seeds(w, expired, foreign):
    attrs = ota_attrs()
    w("cms", "ota-phase3.der", cms_sign(attrs))
    w("cms", "ota-phase3-attributes.der", cms_sign(attrs, attributes=True), False)
    w("cms", "ota-phase1-expired-signer.der", cms_sign(ota_attrs("fuzz-challenge"), *expired), False)
    w("cms", "ota-foreign-signer.der", cms_sign(attrs, *foreign), False)
    w("cms", "ota-not-plist.der", cms_sign(b"not a plist"))
    for name, msg in list(checkins(HTTP_UDID).items())[:3] + list(reports(HTTP_UDID).items())[:2]:
        body = plistlib.dumps(msg)
        sig = base64.b64encode(cms_sign(body, detached=True)).decode()
        w("cms", f"mdm-signature-{name}", sig.encode() + b"\n" + body)
    body = plistlib.dumps(reports(HTTP_UDID)["idle"])
    sig = base64.b64encode(cms_sign(body, detached=True, attributes=True)).decode()
    w("cms", "mdm-signature-attributes", sig.encode() + b"\n" + body, False)
    sig = base64.b64encode(cms_sign(body, *foreign, detached=True)).decode()
    w("cms", "mdm-signature-foreign", sig.encode() + b"\n" + body, False)


# ---- SCEP ----------------------------------------------------------------------

def scep_seeds(w):
    client = test_scep.Client("fuzz-device")
    ias = test_scep.issuer_and_serial(CA_CERT)
    get_crl = client.message(RA_CERT, mtype=22, data=ias)
    w("scep", "python-getcrl.der", get_crl, False)
    w("scep", "python-pkcsreq-nochallenge.der", client.message(RA_CERT), False)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    csr = test_scep.make_csr(ec_key, "ec device", "fuzz-challenge").public_bytes(
        serialization.Encoding.DER)
    w("scep", "python-pkcsreq-ec-csr.der", client.message(RA_CERT, data=csr), False)
    w("scep", "stage-csr-ec.bin", b"\x02" + csr, False)
    san = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "san device"),
                                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("device.example.org"),
                                                       x509.RFC822Name("a@example.org")]),
                          critical=False)
           .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                        False), critical=True)
           .add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, b"fuzz-challenge")
           .sign(client.key, hashes.SHA256()))
    w("scep", "stage-csr-san.bin", b"\x02" + san.public_bytes(serialization.Encoding.DER), False)
    w("scep", "python-pkcsreq-san.der",
      client.message(RA_CERT, data=san.public_bytes(serialization.Encoding.DER)), False)
    # Every kind of subjectAltName the policy hook is shown (scep/csrview.c).
    upn = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
    utf8 = b"\x0c\x11alice@example.org"
    kinds = (x509.CertificateSigningRequestBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "all sans")]))
             .add_extension(x509.SubjectAlternativeName([
                 x509.OtherName(upn, utf8),
                 x509.OtherName(x509.ObjectIdentifier("1.2.3.4"), b"\x04\x02\x00\x01"),
                 x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                  "Dir")])),
                 x509.RegisteredID(x509.ObjectIdentifier("1.2.3.5")),
                 x509.UniformResourceIdentifier("https://example.org/d"),
                 x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]), critical=False)
             .sign(client.key, hashes.SHA256()))
    w("scep", "stage-csr-all-sans.bin", b"\x02" + kinds.public_bytes(serialization.Encoding.DER),
      False)
    w("scep", "stage-issuer-and-serial.bin", b"\x03" + ias)
    w("scep", "stage-envelope-getcrl.bin", b"\x01" + test_scep.envelope(ias, RA_CERT), False)


# ---- HTTP ----------------------------------------------------------------------

def request(method, target, headers=(), body=b"", length=True, version="HTTP/1.1"):
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def bearer(key=ADMIN_KEY):
    return ("Authorization", "Bearer " + key)


def client_cert_header(der=DEV_DER):
    return ("X-Client-Cert", ":" + base64.b64encode(der).decode() + ":")


def mobileconfig():
    return {"PayloadType": "Configuration", "PayloadVersion": 1,
            "PayloadIdentifier": "com.example.wifi",
            "PayloadUUID": "F022F022-3333-4000-8000-000000000003",
            "PayloadDisplayName": "Wi-Fi", "PayloadContent": [{
                "PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1,
                "PayloadIdentifier": "com.example.wifi.payload",
                "PayloadUUID": "F022F022-4444-4000-8000-000000000004",
                "SSID_STR": "Example", "EncryptionType": "WPA2"}]}


def http_seeds(w, expired):
    h = {}
    # The HTTP core (tests/integration/test_http.py).
    h["get-healthz"] = request("GET", "/healthz")
    h["head-healthz"] = request("HEAD", "/healthz")
    h["get-version-http10"] = request("GET", "/version", version="HTTP/1.0")
    h["get-metrics"] = request("GET", "/metrics", [("Connection", "close")])
    h["pipelined"] = b"".join(request(m, p) for m, p in [
        ("GET", "/healthz"), ("GET", "/nope"), ("GET", "/version"), ("HEAD", "/healthz"),
        ("POST", "/healthz"), ("GET", "/healthz")])
    h["chunked"] = (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    h["expect-100"] = (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                       b"Expect: 100-continue\r\n\r\nhello" + request("GET", "/healthz"))
    h["expect-bad"] = request("POST", "/healthz", [("Expect", "200-ok")], b"x")
    h["header-too-large"] = request("GET", "/healthz", [("X-Big", "a" * 5000)])
    h["body-too-large"] = request("POST", "/healthz", [("Content-Length", "99999999")],
                                  length=False)
    h["malformed"] = b"THIS IS NOT HTTP\r\n\r\n"
    h["two-lengths"] = b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    h["incomplete"] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    h["upgrade"] = request("GET", "/healthz", [("Connection", "Upgrade"), ("Upgrade", "h2c")])
    h["keep-alive-many"] = request("GET", "/healthz") * 6
    # The admin API (tests/integration/test_mdm.py, test_scep.py, test_init_serve.py).
    h["api-status-bearer"] = request("GET", "/v1/status", [bearer()])
    h["api-status-basic"] = request("GET", "/v1/status", [
        ("Authorization", "Basic " + base64.b64encode(b"nanomdm:" + ADMIN_KEY.encode()).decode())])
    h["api-status-bad-key"] = request("GET", "/v1/status", [bearer("mdm_" + "0" * 16 + "_" + "1" * 64)])
    h["api-status-no-key"] = request("GET", "/v1/status")
    h["api-devices"] = request("GET", "/v1/devices", [bearer(READ_KEY)])
    h["api-device"] = request("GET", "/v1/devices/" + HTTP_UDID, [bearer()])
    h["api-device-commands"] = request("GET", f"/v1/devices/{HTTP_UDID}/commands", [bearer()])
    h["api-device-delete"] = request("DELETE", "/v1/devices/" + HTTP_UDID, [bearer()])
    # Path parameters that do not decode (these once reached the handler
    # without their parameter).
    h["api-device-bad-escape"] = request("GET", "/v1/devices/%zz", [bearer()])
    h["api-device-nul"] = request("DELETE", f"/v1/devices/{HTTP_UDID}%00:x", [bearer()])
    h["api-cancel"] = request("DELETE", f"/v1/devices/{HTTP_UDID}/commands/{CMD_UUID}", [bearer()])
    h["api-command"] = request("GET", "/v1/commands/" + CMD_UUID, [bearer()])
    h["api-commands-post"] = request("POST", "/v1/commands", [bearer(), ("Content-Type", "application/json")],
                                     b'{"request_type":"DeviceInformation","targets":["%s"],'
                                     b'"Queries":["UDID"],"priority":5,"ttl":"1h","nopush":true}'
                                     % HTTP_UDID.encode())
    h["api-commands-post-read-only"] = request("POST", "/v1/commands", [bearer(READ_KEY)],
                                               b'{"request_type":"ProfileList","targets":["x"]}')
    h["api-commands-bad-json"] = request("POST", "/v1/commands", [bearer()], b"{not json")
    raw = plistlib.dumps({"CommandUUID": CMD_UUID, "Command": {"RequestType": "ProfileList"}})
    h["api-commands-raw"] = request("POST", f"/v1/commands?targets={HTTP_UDID}&priority=5&dedupe=1",
                                    [bearer(), ("Content-Type", "application/x-apple-plist")], raw)
    h["api-enqueue"] = request("PUT", f"/v1/enqueue/{HTTP_UDID},nobody?nopush=1",
                               [bearer(), ("Content-Type", "application/x-apple-plist")], raw)
    h["api-push"] = request("POST", f"/v1/push/{HTTP_UDID}", [bearer()])
    h["api-challenge"] = request("POST", "/v1/challenges", [bearer()], b'{"user":"bob","ttl":"10m"}')
    h["api-certs"] = request("GET", "/v1/certs", [bearer(READ_KEY)])
    h["api-cert-revoke"] = request("POST", "/v1/certs/1001/revoke", [bearer()], b'{"reason":4}')
    h["api-profile-put"] = request("PUT", "/v1/profiles/com.example.wifi", [bearer()],
                                   plistlib.dumps(mobileconfig()))
    h["api-profile-get"] = request("GET", "/v1/profiles/com.example.wifi", [bearer()])
    h["api-profiles"] = request("GET", "/v1/profiles", [bearer()])
    h["api-profile-delete"] = request("DELETE", "/v1/profiles/com.example.wifi", [bearer()])
    h["crl"] = request("GET", "/ca.crl")
    # SCEP (tests/integration/test_scep.py).
    h["scep-getcacaps"] = request("GET", "/scep?operation=GetCACaps")
    h["scep-getcacert"] = request("GET", "/scep?operation=GetCACert&message=anything")
    h["scep-bad-operation"] = request("GET", "/scep?operation=Frobnicate")
    h["scep-post-getcacaps"] = request("POST", "/scep?operation=GetCACaps", body=b"x")
    scep_dir = os.path.join(CORPUS, "scep")
    for name in sorted(os.listdir(scep_dir)):
        msg = open(os.path.join(scep_dir, name), "rb").read()
        if not msg.startswith(b"\x30") or "certrep" in name or "getcacert" in name:
            continue
        stem = name.rsplit(".", 1)[0]
        h["scep-post-" + stem] = request("POST", "/scep?operation=PKIOperation",
                                         [("Content-Type", "application/x-pki-message")], msg)
        if stem == "python-pkcsreq-aes128-sha256":
            q = urllib.parse.quote(base64.b64encode(msg).decode(), safe="")
            h["scep-get-" + stem] = request("GET", "/scep?operation=PKIOperation&message=" + q)
    # MDM (tests/integration/test_mdm.py via device.py), identity in the proxy header.
    session = []
    for name, msg in checkins(HTTP_UDID).items():
        body = plistlib.dumps(msg)
        h["mdm-checkin-" + name] = request("PUT", "/mdm/checkin", [
            ("Content-Type", CHECKIN_CT), ("User-Agent", "MDM/1.0"), client_cert_header()], body)
        if name in ("authenticate", "token-update"):
            session.append(h["mdm-checkin-" + name])
    for name, msg in reports(HTTP_UDID).items():
        body = plistlib.dumps(msg)
        h["mdm-connect-" + name] = request("PUT", "/mdm/connect", [
            ("Content-Type", CONNECT_CT), client_cert_header()], body)
    session.append(h["mdm-connect-idle"])
    h["mdm-session"] = b"".join(session)
    idle = plistlib.dumps(reports(HTTP_UDID)["idle"])
    h["mdm-combined-checkin"] = request("PUT", "/mdm", [("Content-Type", CHECKIN_CT),
                                                        client_cert_header()],
                                        plistlib.dumps(checkins(HTTP_UDID)["authenticate"]))
    h["mdm-combined-report"] = request("PUT", "/mdm", [("Content-Type", CONNECT_CT),
                                                       client_cert_header()], idle)
    h["mdm-no-identity"] = request("PUT", "/mdm/connect", [("Content-Type", CONNECT_CT)], idle)
    pem = DEV_CERT.public_bytes(serialization.Encoding.PEM).decode()
    escaped = urllib.parse.quote(pem, safe="")
    h["mdm-cert-header-pem-escaped"] = request("PUT", "/mdm/connect", [
        ("X-Client-Cert", escaped)], idle)
    h["mdm-cert-header-bare-base64"] = request("PUT", "/mdm/connect", [
        ("X-Client-Cert", base64.b64encode(DEV_DER).decode())], idle)
    sig = base64.b64encode(cms_sign(idle, detached=True)).decode()
    h["mdm-signature-idle"] = request("PUT", "/mdm/connect", [("Content-Type", CONNECT_CT),
                                                              ("Mdm-Signature", sig)], idle)
    auth = plistlib.dumps(checkins(HTTP_UDID)["authenticate"])
    sig = base64.b64encode(cms_sign(auth, detached=True)).decode()
    h["mdm-signature-authenticate"] = request("PUT", "/mdm/checkin", [
        ("Content-Type", CHECKIN_CT), ("Mdm-Signature", sig)], auth)
    # Enrollment (tests/integration/test_enroll.py).
    h["enroll-page"] = request("GET", "/enroll")
    h["enroll-form"] = request("POST", "/enroll", [("Content-Type", "application/x-www-form-urlencoded")],
                               b"username=alice&password=s3cret%21+pass")
    h["enroll-basic"] = request("GET", "/enroll?ota=1", [
        ("Authorization", "Basic " + base64.b64encode(b"alice:s3cret").decode())])
    h["ota-phase3"] = request("POST", "/ota/profile", [("Content-Type", "application/pkcs7-signature")],
                              cms_sign(ota_attrs()))
    h["ota-phase1"] = request("POST", "/ota/profile", [("Content-Type", "application/pkcs7-signature")],
                              cms_sign(ota_attrs("fuzz-challenge"), *expired))
    h["ota-garbage"] = request("POST", "/ota/profile", body=b"\x30\x03\x02\x01\x00")
    random_parts = {"ota-phase1"}
    for name, data in h.items():
        signed = name.startswith(("mdm-signature", "ota-phase")) or name.startswith("scep-")
        w("http", name, data, deterministic=not signed and name not in random_parts)


# ---- policy pattern matching (lua/lpattern.c) -----------------------------------

def lpattern_seeds(w):
    """Byte 0: the function (0 find, 1 plain find, 2 match, 3 gmatch, 4 gsub;
    for gsub, byte 0 // 5 picks the replacement), byte 1: init, then the
    pattern, a NUL byte and the subject."""
    cases = {
        "os-version": (2, 0, b"^(%d+)", b"17.4.1"),
        "email": (2, 0, b"^([^@]+)@(.+)$", b"alice@example.org"),
        "gsub-space": (4, 0, b"%s+", b"a  b\tc\n d"),
        "gmatch-words": (3, 0, b"(%w+)=(%w+)", b"a=1, b=2, c=3"),
        "balanced": (0, 0, b"%b()", b"f(a(b)c) d"),
        "frontier": (3, 0, b"%f[%a]%a+", b"THE (quick) fox"),
        "backref": (2, 0, b"([\"'])(.-)%1", b"say \"hi\" now"),
        "position": (2, 3, b"()a+()", b"xxaaay"),
        "negative-init": (0, 0xfe, b"a.", b"banana"),
        "plain": (1, 0, b"a.[", b"xa.[y"),
        "costly": (0, 0, b"a?a?a?a?a?a?a?a?a?a?a?a?aaaaaaaaaaaa", b"aaaaaaaaaaaa"),
        "set-ranges": (4 + 5 * 2, 0, b"([a-c%d])([^%s]?)", b"a1 b2 zz c"),
        "malformed": (0, 0, b"%f", b"x"),
    }
    for name, (fn, init, pattern, subject) in cases.items():
        w("lpattern", name + ".bin", bytes([fn, init]) + pattern + b"\0" + subject)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    ap.add_argument("--only", nargs="*", default=[], help="targets to write (default: all)")
    args = ap.parse_args()
    w = Writer(args.force, set(args.only))
    expired_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expired = (issue("expired device", expired_key, datetime.datetime(2015, 1, 1),
                     datetime.datetime(2016, 1, 1)), expired_key)
    oca, okey = other_ca()
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = (issue("foreign device", foreign_key, datetime.datetime(2025, 1, 1),
                     datetime.datetime(2125, 1, 1), oca, okey), foreign_key)
    mdm_seeds(w)
    plist_seeds(w)
    api_json_seeds(w)
    config_seeds(w)
    cms_seeds(w, expired, foreign)
    scep_seeds(w)
    http_seeds(w, expired)
    lpattern_seeds(w)
    print(f"make_seeds: {w.written} written, {w.kept} kept")


if __name__ == "__main__":
    main()
