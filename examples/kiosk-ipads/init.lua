-- iPads tagged "kiosk" by an admin (PUT /v1/devices/{id}/tags) run one app:
-- they get the kiosk profiles, and a name that says what they are.
local util = require("util")

local M = { name = "kiosk-ipads" }

local function is_kiosk(device)
  return util.starts_with(device.product or device.model or "", "iPad")
     and util.contains(device.tags or {}, "kiosk")
end

function M.groups(device)
  local g = { "all" }
  if is_kiosk(device) then g[#g + 1] = "kiosk" end
  return g
end

-- The profiles: app lock (single app mode) and a locked-down home screen.
local kiosk_profiles = { "com.example.kiosk.applock", "com.example.kiosk.restrictions" }

function M.profiles(device, groups)
  if util.contains(groups, "kiosk") then return kiosk_profiles end
  return {}
end

-- Once per device: rename it after its serial number.
function M.connect(device, report)
  if report.Status ~= "Idle" or not is_kiosk(device) then return end
  local key = "named:" .. device.id
  if mdm.kv.get(key) then return end
  mdm.kv.put(key, true)
  return { commands = {
    mdm.command.Settings{ Settings = { { Item = "DeviceName", DeviceName = "Kiosk " .. (device.serial or "?") } } },
  } }
end

return M
