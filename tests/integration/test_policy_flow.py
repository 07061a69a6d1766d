"""The policy engine wired into the protocols: sign-in at /enroll decided by
authenticate(), SCEP by scep(), commands from checkin()/connect()/result(),
and profiles reconciled from groups()/profiles(): installed encrypted to the
device, removed when no longer wanted. Reload under load, eval, decisions."""
import os
import plistlib
import re
import subprocess
import threading
import time
import uuid as uuidlib

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import Server
from device import TOPIC, Api, Device
from test_enroll import cms_decrypt, cms_verify
from test_scep import ra_fingerprint, scep_datadir, scepclient

POLICY = r'''
local M = { name = "flowtest" }
local users = { alice = { hash = mdm.password.hash("wonderland"), groups = { "staff" } } }
local wanted = require("wanted")

function M.authenticate(req)
  local u = users[req.username or ""]
  if u and mdm.password.verify(req.password or "", u.hash) then
    return { allow = true, user = req.username }
  end
  return { allow = false, reason = "bad credentials" }
end

function M.scep(csr, ctx)
  if csr.cn == "refuse-me" then return { decision = "deny", reason = "cn refused" } end
  return "issue"
end

function M.checkin(device, msg)
  if msg.MessageType == "Authenticate" and device.serial == "BLOCKED1" then
    return { reject = true, reason = "blocked serial" }
  end
  if msg.MessageType == "TokenUpdate" and device.first_checkin then
    return { commands = { mdm.command.DeviceInformation{ Queries = { "SerialNumber", "IsSupervised" } } } }
  end
end

function M.groups(device)
  local g = { "all" }
  if device.facts and device.facts.IsSupervised then g[#g + 1] = "supervised" end
  return g
end

function M.profiles(device, groups)
  return wanted.profiles
end

function M.result(device, result)
  if result.RequestType == "DeviceInformation" and result.QueryResponses then
    return { facts = { checked_by_policy = true } }
  end
end

return M
'''


def write_policy(dirpath, wanted):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "init.lua"), "w") as f:
        f.write(POLICY)
    with open(os.path.join(dirpath, "wanted.lua"), "w") as f:
        f.write("return { profiles = { %s } }\n" % ", ".join(f'"{p}"' for p in wanted))


def make_profile(identifier, name):
    return plistlib.dumps({
        "PayloadType": "Configuration", "PayloadVersion": 1,
        "PayloadIdentifier": identifier, "PayloadUUID": str(uuidlib.uuid4()).upper(),
        "PayloadDisplayName": name,
        "PayloadContent": [{
            "PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1,
            "PayloadIdentifier": identifier + ".wifi", "PayloadUUID": str(uuidlib.uuid4()).upper(),
            "SSID_STR": "Office", "EncryptionType": "WPA2", "Password": "wifi-secret"}],
    })


def test_policy_drives_enrollment_commands_and_profiles(tmpdir_path):
    pdir = os.path.join(tmpdir_path, "policy")
    write_policy(pdir, ["com.example.wifi"])
    d = scep_datadir(tmpdir_path, allow_single_des="true")
    d.write_config('  enroll = { topic = "%s" },\n  policy = { dir = "%s" },' % (TOPIC, pdir))
    srv = Server(d, plain=True)
    try:
        api = Api(srv)
        st, r = api.call("PUT", "/v1/profiles/com.example.wifi",
                         make_profile("com.example.wifi", "Office Wi-Fi"),
                         "application/x-apple-aspen-config")
        assert st == 201, r

        # Sign-in decided by authenticate().
        bad = requests.post(srv.url + "/enroll", data={"username": "alice", "password": "no"},
                            verify=d.ca_crt, timeout=10)
        assert bad.status_code == 403
        good = requests.post(srv.url + "/enroll",
                             data={"username": "alice", "password": "wonderland"},
                             verify=d.ca_crt, timeout=10)
        assert good.status_code == 200
        assert good.headers["Content-Type"] == "application/x-apple-aspen-config"
        profile = plistlib.loads(cms_verify(good.content, d.ca_crt, tmpdir_path))
        challenge = profile["PayloadContent"][1]["PayloadContent"]["Challenge"]

        # SCEP decided by scep(): a refused CN gets no certificate.
        work = os.path.join(tmpdir_path, "scep")
        p = scepclient(srv, os.path.join(tmpdir_path, "refused"), challenge,
                       ["-ca-fingerprint", ra_fingerprint(d), "-cn", "refuse-me"])
        assert p.returncode != 0
        srv.wait_log(r'event=scep.failure .*reason="denied by policy: cn refused"')
        p = scepclient(srv, work, challenge, ["-ca-fingerprint", ra_fingerprint(d)])
        assert p.returncode == 0, p.stdout + p.stderr
        cert_path, key_path = os.path.join(work, "client.pem"), os.path.join(work, "key.pem")
        cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
        key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)

        dev = Device(srv, cert=cert, key=key)
        dev.enroll()
        st, show = api.call("GET", "/v1/devices/" + dev.udid)
        assert show["user"] == "alice" and show["groups"] == ["all"]

        got = {}

        def handler(cmd):
            rt = cmd["Command"]["RequestType"]
            got.setdefault(rt, []).append(cmd)
            if rt == "DeviceInformation":
                return "Acknowledged", {"QueryResponses": {"SerialNumber": dev.serial,
                                                           "IsSupervised": True}}
            return dev.answer(cmd)

        cmds = dev.run(handler)
        types = [c["Command"]["RequestType"] for c in cmds]
        # The profile goes first (reconciliation queues it with priority),
        # then what checkin() asked for.
        assert types[:2] == ["InstallProfile", "DeviceInformation"], types
        payload = got["InstallProfile"][0]["Command"]["Payload"]
        inner = plistlib.loads(cms_verify(payload, d.ca_crt, tmpdir_path))
        assert inner["PayloadIdentifier"] == "com.example.wifi"
        assert "PayloadContent" not in inner
        content = plistlib.loads(cms_decrypt(inner["EncryptedPayloadContent"], cert_path,
                                             key_path, tmpdir_path))
        assert content[0]["SSID_STR"] == "Office"

        st, show = api.call("GET", "/v1/devices/" + dev.udid)
        assert show["facts"]["checked_by_policy"] is True
        assert show["facts"]["IsSupervised"] is True

        # New facts: groups() is asked again at the next Idle.
        dev.run(handler)
        st, show = api.call("GET", "/v1/devices/" + dev.udid)
        assert show["groups"] == ["all", "supervised"], show["groups"]

        # A new revision without the profile: RemoveProfile at the next Idle.
        with open(os.path.join(pdir, "wanted.lua"), "w") as f:
            f.write("return { profiles = {} }\n")
        st, r = api.call("POST", "/v1/policy/reload")
        assert st == 200, r
        cmds = dev.run(handler)
        assert [c["Command"]["RequestType"] for c in cmds] == ["RemoveProfile"]
        assert cmds[0]["Command"]["Identifier"] == "com.example.wifi"
        assert dev.run(handler) == []

        # The decision log and a dry run.
        st, r = api.call("GET", f"/v1/decisions?device={dev.udid}&hook=profiles&limit=5")
        assert st == 200 and len(r["decisions"]) >= 1, r
        st, r = api.call("POST", "/v1/policy/eval", {"device": dev.udid, "hook": "groups"})
        assert st == 200 and r["decision"]["groups"] == ["all", "supervised"], r

        # checkin() may refuse an enrollment.
        blocked = Device(srv, serial="BLOCKED1")
        assert blocked.authenticate() == 403
        srv.wait_log(r'detail="the policy refused Authenticate: blocked serial"')
    finally:
        assert srv.stop() == 0


def test_reload_under_load_drops_no_request(tmpdir_path, datadir):
    pdir = os.path.join(tmpdir_path, "policy")
    write_policy(pdir, [])
    datadir.write_config('  policy = { dir = "%s" },' % pdir)
    srv = Server(datadir)
    try:
        api = Api(srv)
        devices = [Device(srv) for _ in range(6)]
        for dv in devices:
            dv.enroll()
        stop = threading.Event()
        failures = []
        counts = [0]

        def load(dv):
            while not stop.is_set():
                try:
                    st, cmd = dv.idle()
                    while cmd is not None:
                        st, cmd = dv.report("Acknowledged", cmd["CommandUUID"], **dv.answer(cmd)[1])
                    if st != 200:
                        failures.append(st)
                    counts[0] += 1
                except Exception as e:
                    failures.append(repr(e))

        threads = [threading.Thread(target=load, args=(dv,)) for dv in devices]
        for t in threads:
            t.start()
        revisions = set()
        for i in range(100):
            with open(os.path.join(pdir, "wanted.lua"), "w") as f:
                f.write("return { profiles = {} } -- %d\n" % i)
            st, r = api.call("POST", "/v1/policy/reload")
            assert st == 200, r
            revisions.add(r["revision"])
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == [], failures[:5]
        assert counts[0] > 50
        assert len(revisions) == 100
        st, r = api.call("GET", "/v1/policy")
        assert r["reloads"] >= 100 and r["last_error"] is None
    finally:
        assert srv.stop() == 0


# connect() reads the device's facts and its enrollment. On an Idle that
# changes nothing, the server answers from a read-only view and runs the
# hook as a probe over the records read in place (no tree): a decision
# there must still see the same values as on the write path.
FACTS_POLICY = r'''
return {
  connect = function(device, report)
    if report.Status == "Idle" and device.serial == "C0FACT5" and device.type == "device"
       and device.udid == device.id and device.last_seen > 0 then
      return { commands = { mdm.command.SecurityInfo{} } }
    end
  end,
}
'''


def test_connect_on_the_read_only_idle_path_sees_the_records(datadir, tmpdir_path):
    pdir = os.path.join(tmpdir_path, "factspolicy")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(FACTS_POLICY)
    datadir.write_config('  policy = { dir = "%s" },' % pdir)
    srv = Server(datadir)
    try:
        chosen, other = Device(srv, serial="C0FACT5"), Device(srv, serial="C0OTHER")
        for d in (chosen, other):
            d.enroll()
            # The first session runs on the write path (a new enrollment).
            d.run()

        def fast():
            r = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=10)
            m = re.search(r"^moonmdm_mdm_idle_without_write_total (\S+)$", r.text, re.M)
            assert m, r.text[:2000]
            return float(m.group(1))

        # Later sessions: the other device's Idle is answered without a
        # write; the chosen one's probe sees its serial (device record),
        # type, udid and last_seen (enrollment record) and asks for a
        # command each time.
        for _ in range(3):
            before = fast()
            assert other.run() == []
            assert fast() == before + 1
            got = chosen.run()
            assert [c["Command"]["RequestType"] for c in got] == ["SecurityInfo"], got
    finally:
        srv.stop()


# The decision log keeps at most policy.decision_log_max entries even when
# hooks run faster than one tick's pruning batch: a connect hook on every
# request wrote thousands of entries a second, and pruning at 500 per tick
# let the log (and the store) grow without bound under load.
def test_decision_log_stays_within_its_maximum_under_load(datadir, tmpdir_path):
    pdir = os.path.join(tmpdir_path, "policy")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write("return { connect = function(device, report) end }\n")
    datadir.write_config('  policy = { dir = "%s", decision_log_max = 50, decision_log_all = true },'
                         % pdir)
    srv = Server(datadir)
    try:
        api = Api(srv)
        devices = [Device(srv) for _ in range(4)]
        for dv in devices:
            dv.enroll()
        failures, counts = [], [0]

        def load(dv):
            for _ in range(200):
                st, cmd = dv.idle()
                if st != 200 or cmd is not None:
                    failures.append((st, cmd))
                counts[0] += 1

        threads = [threading.Thread(target=load, args=(dv,)) for dv in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert failures == [] and counts[0] == 800, (failures[:3], counts[0])
        # A tick or two (250 ms each): the last entries are written, then
        # pruned.
        deadline = time.time() + 2.5
        while True:
            st, r = api.call("GET", "/v1/decisions?limit=1000")
            assert st == 200, r
            if len(r["decisions"]) <= 50 or time.time() > deadline:
                break
            time.sleep(0.25)
        n = len(r["decisions"])
        assert n == 50, n
        text = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=10).text
        m = re.search(r"^moonmdm_policy_decisions_pruned_total (\d+)$", text, re.M)
        assert m and int(m.group(1)) >= 800 - 50, m and m.group(0)
    finally:
        assert srv.stop() == 0


# Connect and result calls that decide nothing come with every report and
# Idle; they are counted but not recorded unless policy.decision_log_all
# asks for them, so that the decisions that did something stay in the log.
# Those are recorded: a command queued, an mdm.kv write, a failure.
QUIET_POLICY = r'''
return {
  connect = function(device, report)
    if report.Status ~= "Idle" then return end
    local n = (mdm.kv.get("idles:" .. device.id) or 0) + 1
    if n > 2 then return end
    mdm.kv.put("idles:" .. device.id, n)
    if n == 1 then return { commands = { mdm.command.ProfileList{} } } end
  end,
  result = function(device, result) error("no results wanted") end,
}
'''


def test_decision_log_leaves_out_calls_that_decided_nothing(datadir, tmpdir_path):
    from collections import Counter
    for log_all in (False, True):
        pdir = os.path.join(tmpdir_path, "policy-%s" % log_all)
        os.makedirs(pdir)
        with open(os.path.join(pdir, "init.lua"), "w") as f:
            f.write(QUIET_POLICY)
        datadir.write_config('  policy = { dir = "%s", decision_log_all = %s },'
                             % (pdir, "true" if log_all else "false"))
        srv = Server(datadir)
        try:
            api = Api(srv)
            dev = Device(srv)
            dev.enroll()
            # Idle 1 queues ProfileList (recorded); its report fails the
            # result hook (recorded) and runs connect, which decides
            # nothing. Idle 2 writes mdm.kv (recorded); Idles 3-6 decide
            # nothing.
            assert [c["Command"]["RequestType"] for c in dev.run()] == ["ProfileList"]
            for _ in range(5):
                st, cmd = dev.idle()
                assert st == 200 and cmd is None, (st, cmd)
            st, r = api.call("GET", "/v1/decisions?device=%s&limit=100" % dev.udid)
            assert st == 200, r
            got = Counter((d["hook"], d["status"]) for d in r["decisions"]
                          if d["hook"] in ("connect", "result"))
            want = {("connect", "ok"): 7 if log_all else 2, ("result", "failed"): 1}
            assert got == want, (log_all, got)
            first = [d for d in r["decisions"] if d["hook"] == "connect"][-1]
            assert first["decision"]["commands"][0]["RequestType"] == "ProfileList", first
            text = requests.get(srv.url + "/metrics", verify=srv.datadir.ca_crt, timeout=10).text
            calls = sum(int(m.group(1)) for m in re.finditer(
                r'^moonmdm_policy_calls_total\{hook="connect",[^}]*\} (\d+)$', text, re.M))
            # Every call is counted (an Idle whose read-only try wants to
            # write runs the hook again in a transaction).
            assert calls >= 7, calls
        finally:
            assert srv.stop() == 0


ANSWER_POLICY = r'''
local M = { name = "answers" }
-- One network user, "alice"; every other user is declined (410).
function M.checkin(device, msg)
  if msg.MessageType == "UserAuthenticate" then
    if msg.UserID ~= "alice" then return nil end
    if msg.DigestResponse == nil then
      return { respond = { DigestChallenge = "challenge-1" } }
    end
    if msg.DigestResponse == "right" then
      return { respond = { AuthToken = "token-for-alice" } }
    end
    return { respond = { AuthToken = "" } }
  end
  if msg.MessageType == "GetToken" then
    if msg.TokenServiceType == "com.apple.maid" then
      return { respond = { TokenData = "maid-token\0bytes" } }
    end
    return { reject = true, reason = "no such token service" }
  end
end
return M
'''


# The checkin hook may answer UserAuthenticate (the digest challenge, then
# the AuthToken) and GetToken (TokenData, as <data>); without an answer the
# defaults stay (410 and 400), a rejection of GetToken is a 403, and the
# decision log names the answer's keys without their secret values.
def test_policy_answers_user_authenticate_and_get_token(datadir, tmpdir_path):
    pdir = os.path.join(tmpdir_path, "answers")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "init.lua"), "w") as f:
        f.write(ANSWER_POLICY)
    datadir.write_config('  policy = { dir = "%s" },' % pdir)
    srv = Server(datadir)
    try:
        d = Device(srv)
        d.enroll()
        st, body = d.checkin("UserAuthenticate", UserID="alice")
        assert st == 200 and plistlib.loads(body) == {"DigestChallenge": "challenge-1"}, body
        st, body = d.checkin("UserAuthenticate", UserID="alice", DigestResponse="right")
        assert st == 200 and plistlib.loads(body) == {"AuthToken": "token-for-alice"}, body
        st, body = d.checkin("UserAuthenticate", UserID="alice", DigestResponse="wrong")
        assert st == 200 and plistlib.loads(body) == {"AuthToken": ""}, body
        assert d.checkin("UserAuthenticate", UserID="bob")[0] == 410
        st, body = d.checkin("GetToken", TokenServiceType="com.apple.maid")
        assert st == 200 and plistlib.loads(body) == {"TokenData": b"maid-token\0bytes"}, body
        assert d.checkin("GetToken", TokenServiceType="com.apple.watch.pairing")[0] == 403
        srv.wait_log(r"type=GetToken http_status=403 .*no such token service")
        api = Api(srv)
        st, r = api.call("GET", "/v1/decisions?device=%s&limit=100" % d.udid)
        assert st == 200, r
        text = str(r)
        assert "token-for-alice" not in text and "maid-token" not in text, text
        keys = [x["decision"].get("respond_keys") for x in r["decisions"] if x["hook"] == "checkin"]
        assert ["AuthToken"] in keys and ["TokenData"] in keys, keys
        assert "token-for-alice" not in srv.log()
    finally:
        srv.stop()
