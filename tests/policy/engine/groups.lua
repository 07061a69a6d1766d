-- Group rules of the fixture policy.
local names = require("lib.names")
local M = {}

function M.of(device)
  local g = { names.ALL }
  if device.model and device.model:match("^iPad") then g[#g + 1] = "ipads" end
  for _, tag in ipairs(device.tags or {}) do g[#g + 1] = "tag:" .. tag end
  return g
end

return M
