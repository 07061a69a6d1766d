-- testing: assertions and fixtures for policy tests.
--
-- The assertions work anywhere (self_test may use them too); the fixtures
-- (devices, hook calls, the clock, profiles, kv) need `moonmdm policy test`.
-- See docs/POLICY.md, "Testing policies".
local M = {}

local test = mdm.test
local fmt = string.format

-- A readable rendering of a value for failure messages (keys sorted).
local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then
    return fmt("%q", v)
  elseif type(v) ~= "table" then
    return tostring(v)
  elseif depth > 4 then
    return "{...}"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then
      return a < b
    end
    return type(a) < type(b)
  end)
  local parts, n = {}, #v
  for _, k in ipairs(keys) do
    if math.type(k) == "integer" and k >= 1 and k <= n then
      parts[#parts + 1] = show(v[k], depth + 1)
    elseif type(k) == "string" and k:match("^[%a_][%w_]*$") then
      parts[#parts + 1] = k .. " = " .. show(v[k], depth + 1)
    else
      parts[#parts + 1] = "[" .. show(k, depth + 1) .. "] = " .. show(v[k], depth + 1)
    end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
M.show = show

-- Deep equality through pairs(), so read-only tables compare by content.
local function deep_eq(a, b, depth)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or depth > 32 then return false end
  local count = 0
  for k, v in pairs(a) do
    count = count + 1
    if not deep_eq(v, b[k], depth + 1) then return false end
  end
  for _ in pairs(b) do count = count - 1 end
  return count == 0
end

local function prefix(msg)
  return msg and (tostring(msg) .. ": ") or ""
end

-- eq(got, want [, msg]): deep equality.
function M.eq(got, want, msg)
  if not deep_eq(got, want, 0) then
    error(fmt("%sexpected %s, got %s", prefix(msg), show(want), show(got)), 2)
  end
end

-- ne(got, other [, msg]): deep inequality.
function M.ne(got, other, msg)
  if deep_eq(got, other, 0) then
    error(fmt("%sexpected something other than %s", prefix(msg), show(other)), 2)
  end
end

-- truthy(v [, msg]) and falsy(v [, msg]).
function M.truthy(v, msg)
  if not v then error(fmt("%sexpected a true value, got %s", prefix(msg), show(v)), 2) end
end

function M.falsy(v, msg)
  if v then error(fmt("%sexpected false or nil, got %s", prefix(msg), show(v)), 2) end
end

-- matches(s, pattern [, msg]): s contains pattern (plain text or a Lua pattern).
function M.matches(s, pattern, msg)
  if type(s) ~= "string" or not (s:find(pattern, 1, true) or s:find(pattern)) then
    error(fmt("%sexpected %s to contain %s", prefix(msg), show(s), show(pattern)), 2)
  end
end

-- error_matches(fn, pattern [, msg]): fn() raises an error containing
-- pattern; returns the error message.
function M.error_matches(fn, pattern, msg)
  local ok, err = pcall(fn)
  if ok then
    error(fmt("%sexpected an error matching %s, but there was none", prefix(msg), show(pattern)), 2)
  end
  err = tostring(err)
  if not (err:find(pattern, 1, true) or err:find(pattern)) then
    error(fmt("%sexpected an error matching %s, got %s", prefix(msg), show(pattern), show(err)), 2)
  end
  return err
end

-- contains(list, value [, msg]): some element of list equals value.
function M.contains(list, value, msg)
  for _, v in ipairs(list or {}) do
    if deep_eq(v, value, 0) then return end
  end
  error(fmt("%sexpected %s in %s", prefix(msg), show(value), show(list)), 2)
end

-- The first command of a request type in a decision (or a list), or nil.
function M.find_command(decision, request_type)
  local list = decision and (decision.commands or decision) or {}
  for _, c in ipairs(list) do
    if c.RequestType == request_type then return c end
  end
  return nil
end

-- ---- fixtures (moonmdm policy test) ----------------------------------------

local function need(what)
  if not test then
    error("testing." .. what .. " works only in `moonmdm policy test`", 3)
  end
end

-- call(hook, ...): runs a hook the way the server does and returns its
-- decision with status ("ok", "absent", "failed") and error.
function M.call(hook, ...)
  need("call")
  return test.call(hook, ...)
end

-- policy(): the table init.lua returned (to call a hook directly).
function M.policy()
  need("policy")
  return test.policy()
end

-- The clock: frozen at 2024-01-01T00:00:00Z when a test starts.
function M.freeze(seconds)
  need("freeze")
  test.set_now(seconds)
end

function M.advance(seconds)
  need("advance")
  test.set_now(mdm.now() + seconds)
end

-- profile(identifier, metadata): what mdm.profile(identifier) returns
-- (nil removes it).
function M.profile(identifier, meta)
  need("profile")
  test.set_profile(identifier, meta)
end

-- kv(): everything in the in-memory mdm.kv, as key -> value.
function M.kv()
  need("kv")
  return test.kv()
end

local device_defaults = {
  udid = "00008101-000A1234ABCD001E",
  serial = "F2LXK0AAAAAA",
  model = "iPhone14,2",
  model_name = "iPhone",
  product = "iPhone14,2",
  os_version = "17.4",
  build_version = "21E219",
  device_name = "Test iPhone",
  type = "device",
  token_updates = 1,
  first_checkin = false,
}

-- device(fields): a device table as hooks see it (read-only), with
-- plausible defaults for every field not given.
function M.device(fields)
  need("device")
  fields = fields or {}
  local d = {}
  for k, v in pairs(device_defaults) do d[k] = v end
  d.enrolled_at = mdm.now() - 86400
  d.last_seen = mdm.now()
  d.groups, d.tags, d.facts, d.installed_profiles = {}, {}, {}, {}
  for k, v in pairs(fields) do d[k] = v end
  d.id = d.id or d.udid
  return test.readonly(d)
end

local message_fields = {
  UDID = "udid", SerialNumber = "serial", Model = "model", ModelName = "model_name",
  ProductName = "product", OSVersion = "os_version", BuildVersion = "build_version",
  DeviceName = "device_name", UserShortName = "user",
}

-- device_from_plist(path [, fields]): a device from a recorded check-in
-- message (Authenticate, TokenUpdate) or DeviceInformation result, read
-- from a plist file relative to the tests' directory. Returns the device
-- and the plist as a table.
function M.device_from_plist(path, fields)
  need("device_from_plist")
  local msg = test.read_plist(path)
  local d = {}
  local facts = msg.QueryResponses
  for key, field in pairs(message_fields) do
    local v = msg[key] or (facts and facts[key])
    if v ~= nil then d[field] = v end
  end
  if facts then d.facts = facts end
  if msg.MessageType == "Authenticate" then d.first_checkin = true end
  for k, v in pairs(fields or {}) do d[k] = v end
  return M.device(d), msg
end

return M
