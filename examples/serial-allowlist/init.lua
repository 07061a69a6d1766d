-- Enrollment limited to known serial numbers (the devices the organisation
-- bought). Works with the OTA profile service, where the device itself
-- reports its serial number (req.device.SERIAL), and refuses the MDM
-- Authenticate of any other device.
local util = require("util")

local allowed = util.set(require("serials"))

local M = { name = "serial-allowlist" }

function M.authenticate(req)
  local dev = req.device
  if dev == nil then
    return { allow = false, reason = "enroll through the OTA profile service" }
  end
  if allowed[dev.SERIAL or ""] then
    return { allow = true, user = "serial:" .. dev.SERIAL }
  end
  return { allow = false, reason = "serial number not on the allow-list" }
end

function M.checkin(device, msg)
  if msg.MessageType == "Authenticate" and not allowed[device.serial or ""] then
    return { reject = true, reason = "serial number not on the allow-list" }
  end
end

return M
