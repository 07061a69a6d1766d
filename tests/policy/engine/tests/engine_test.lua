local t = require("testing")
local helpers = require("helpers")

function test_authenticate()
  local ok = t.call("authenticate", { username = "alice", password = "wonderland" })
  t.eq(ok.status, "ok")
  t.eq(ok.allow, true)
  t.eq(ok.groups, { "staff" })
  local no = t.call("authenticate", { username = "alice", password = "rabbit" })
  t.eq(no.allow, false)
  t.matches(no.reason, "wrong password")
end

function test_scep()
  t.eq(t.call("scep", {}, { challenge_ok = true }).decision, "issue")
  t.eq(t.call("scep", {}, {}).decision, "deny")
end

function test_checkin_blocked_serial()
  local d = t.call("checkin", t.device{ serial = "BLOCKED" }, { MessageType = "Authenticate" })
  t.eq(d.reject, true)
end

function test_first_token_update_asks_for_information()
  local dev = t.device{ first_checkin = true }
  local d = t.call("checkin", dev, { MessageType = "TokenUpdate" })
  local cmd = t.find_command(d, "DeviceInformation")
  t.truthy(cmd, "a DeviceInformation command")
  t.eq(cmd.Queries, { "OSVersion", "SerialNumber" })
  t.eq(t.kv()["seen:" .. dev.udid], mdm.now())
end

function test_groups_and_profiles()
  local ipad = helpers.ipad{ tags = { "lab" } }
  local g = t.call("groups", ipad)
  t.eq(g.groups, { "all", "ipads", "tag:lab" })
  local p = t.call("profiles", ipad, g.groups)
  t.eq(p.profiles, { "com.example.wifi", "com.example.ipad-restrictions" })
end

function test_connect_old_os()
  local d = t.call("connect", t.device{ os_version = "16.7" }, { Status = "Idle" })
  t.truthy(t.find_command(d, "AvailableOSUpdates"))
  d = t.call("connect", t.device{ os_version = "17.4" }, { Status = "Idle" })
  t.eq(#d.commands, 0)
end

function test_recorded_authenticate()
  local dev, msg = t.device_from_plist("authenticate.plist")
  t.eq(msg.MessageType, "Authenticate")
  t.eq(dev.serial, "C02XL0AAJGH5")
  t.eq(dev.first_checkin, true)
end

function test_result_facts()
  local dev = t.device_from_plist("device_information.plist")
  t.eq(dev.os_version, "17.5.1")
  local d = t.call("result", dev, { RequestType = "DeviceInformation",
                                     QueryResponses = { OSVersion = "17.5.1" } })
  t.eq(d.facts, { os_version = "17.5.1" })
end

function test_clock_is_frozen()
  t.eq(mdm.now(), 1704067200)
  t.eq(os.time(), 1704067200)
  t.advance(60)
  t.eq(mdm.now(), 1704067260)
  -- os.date without a time reads the same clock.
  t.eq(os.date("!%Y-%m-%d %H:%M:%S"), "2024-01-01 00:01:00")
  t.eq(os.date("!*t").min, 1)
  t.eq(os.date(), os.date("%c", os.time()))
  t.eq(os.date("!%Y", 0), "1970")
end
