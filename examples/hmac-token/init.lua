-- Enrollment with a signed token instead of a password: another system
-- (an intranet page, a ticketing tool) hands the person a link whose token
-- it signed with a secret shared with this policy. The token is
--   base64(user .. ":" .. expiry) .. "." .. hex(HMAC-SHA256(secret, user .. ":" .. expiry))
-- and is sent as `Authorization: Bearer <token>` to /enroll.
local secret = require("secret")

local M = { name = "hmac-token" }

local function check(token)
  if type(token) ~= "string" then return nil, "no token" end
  local b64, sig = token:match("^([%w+/=]+)%.(%x+)$")
  if not b64 then return nil, "malformed token" end
  local payload = mdm.crypto.base64_decode(b64)
  if not payload then return nil, "malformed token" end
  local want = mdm.crypto.hmac_sha256(secret.key, payload)
  if not mdm.crypto.equal(want, sig:lower()) then return nil, "bad signature" end
  local user, expiry = payload:match("^([^:]+):(%d+)$")
  if not user then return nil, "malformed payload" end
  if tonumber(expiry) < mdm.now() then return nil, "token expired" end
  return user
end

function M.authenticate(req)
  local user, why = check(req.token)
  if not user then return { allow = false, reason = why } end
  return { allow = true, user = user }
end

return M
