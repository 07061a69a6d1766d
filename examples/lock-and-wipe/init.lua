-- Lost devices: an admin tags a device "lost" to lock it with a message, or
-- "wipe" to erase it (PUT /v1/devices/{id}/tags). Each command is sent once
-- per tagging; removing and setting the tag again sends it again.
local util = require("util")

local M = { name = "lock-and-wipe" }

local MESSAGE = "This device was reported lost. Please call +1 555 0100."

function M.connect(device, report)
  if report.Status ~= "Idle" or device.type ~= "device" then return end
  local tags = device.tags or {}
  local cmds = {}
  for _, action in ipairs({ "lost", "wipe" }) do
    local key = action .. ":" .. device.id
    if util.contains(tags, action) then
      if not mdm.kv.get(key) then
        mdm.kv.put(key, mdm.now())
        if action == "lost" then
          cmds[#cmds + 1] = mdm.command.DeviceLock{ Message = MESSAGE, PhoneNumber = "+1 555 0100" }
        else
          mdm.log("warn", "erasing device", device.id, "serial", device.serial or "?")
          cmds[#cmds + 1] = mdm.command.EraseDevice{ PreserveDataPlan = true }
        end
      end
    elseif mdm.kv.get(key) then
      mdm.kv.delete(key)
    end
  end
  return { commands = cmds }
end

return M
