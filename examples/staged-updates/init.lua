-- Staged OS updates: devices tagged "pilot" get an OS update as soon as it
-- is released here; everybody else a week later. Change `release` when a
-- new version is to be rolled out.
local util = require("util")

local release = {
  version = "17.5.1",
  product_key = "iOSUpdate21F90",
  pilot_from = 1704067200,               -- 2024-01-01T00:00:00Z
  broad_from = 1704067200 + 7 * 24 * 3600,
}

local M = { name = "staged-updates" }

function M.groups(device)
  local ring = util.contains(device.tags or {}, "pilot") and "ring:pilot" or "ring:broad"
  return { "all", ring }
end

local function ring_of(device)
  return util.contains(device.groups or {}, "ring:pilot") and "pilot" or "broad"
end

function M.connect(device, report)
  if report.Status ~= "Idle" then return end
  if util.version_at_least(device.os_version or "0", release.version) then return end
  local from = ring_of(device) == "pilot" and release.pilot_from or release.broad_from
  if mdm.now() < from then return end
  -- Ask at most once a day, so a device that cannot update now is not
  -- asked at every check-in.
  local key = "update:" .. release.version .. ":" .. device.id
  local last = mdm.kv.get(key)
  if last and mdm.now() - last < 24 * 3600 then return end
  mdm.kv.put(key, mdm.now())
  return { commands = {
    mdm.command.ScheduleOSUpdate{ Updates = { { ProductKey = release.product_key,
                                                 InstallAction = "InstallASAP" } } },
  } }
end

return M
