local t = require("testing")
local secret = require("secret")

-- How the other system makes a token (the same algorithm, in Lua).
local function token(user, expiry, key)
  local payload = user .. ":" .. math.floor(expiry)
  return mdm.crypto.base64_encode(payload) .. "." ..
         mdm.crypto.hmac_sha256(key or secret.key, payload)
end

function test_a_valid_token_enrolls()
  local d = t.call("authenticate", { token = token("alice", mdm.now() + 600) })
  t.eq(d.allow, true)
  t.eq(d.user, "alice")
end

function test_expired_forged_and_malformed_tokens_are_refused()
  t.eq(t.call("authenticate", { token = token("alice", mdm.now() - 1) }).reason, "token expired")
  t.eq(t.call("authenticate", { token = token("alice", mdm.now() + 600, "other-key") }).reason,
       "bad signature")
  local good = token("alice", mdm.now() + 600)
  local b64 = good:match("^([^.]+)")
  local forged = mdm.crypto.base64_encode("mallory:" .. math.floor(mdm.now() + 600)) ..
                 good:sub(#b64 + 1)
  t.eq(t.call("authenticate", { token = forged }).reason, "bad signature")
  t.eq(t.call("authenticate", { token = "junk" }).reason, "malformed token")
  t.eq(t.call("authenticate", {}).reason, "no token")
end
