-- A helper module of the tests (require("helpers") works in policy tests).
local t = require("testing")
local M = {}
function M.ipad(fields)
  fields = fields or {}
  fields.model = "iPad13,1"
  return t.device(fields)
end
return M
