-- A policy set used by the engine's own tests (tests/unit/test_policy.c runs
-- `policy test` on it). It exercises every hook once.
local groups = require("groups")
local util = require("util")

local M = { name = "engine-fixture" }

function M.authenticate(req)
  if req.username == "alice" and req.password == "wonderland" then
    return { allow = true, user = "alice", groups = { "staff" } }
  end
  return { allow = false, reason = "unknown user or wrong password" }
end

function M.scep(csr, ctx)
  if ctx.challenge_ok then return "issue" end
  return { decision = "deny", reason = "no valid challenge" }
end

function M.checkin(device, msg)
  if msg.MessageType == "Authenticate" and device.serial == "BLOCKED" then
    return { reject = true, reason = "serial is blocked" }
  end
  if msg.MessageType == "TokenUpdate" and device.first_checkin then
    mdm.kv.put("seen:" .. device.udid, mdm.now())
    return { commands = { mdm.command.DeviceInformation{ Queries = { "OSVersion", "SerialNumber" } } } }
  end
  return nil
end

M.groups = function(device)
  return groups.of(device)
end

M.profiles = {
  ["*"] = { "com.example.wifi" },
  ipads = { "com.example.ipad-restrictions" },
}

function M.connect(device, report)
  if report.Status == "Idle" and not util.version_at_least(device.os_version, "17.0") then
    return { commands = { mdm.command.AvailableOSUpdates{} } }
  end
end

function M.result(device, result)
  if result.RequestType == "DeviceInformation" and result.QueryResponses then
    return { facts = { os_version = result.QueryResponses.OSVersion } }
  end
end

function M.self_test()
  assert(groups.of({ model = "iPad13,1" })[2] == "ipads")
  return true
end

return M
