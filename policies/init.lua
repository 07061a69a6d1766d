-- The policy set moonmdm ships with. Read it top to bottom, then copy the
-- directory, edit it, point `policy.dir` at your copy and run
-- `moonmdm policy test <dir>` before the server picks it up.
--
-- It decides four things:
--   1. who may enroll: people listed in users.lua, checked against crypt(3)
--      password hashes;
--   2. which groups a device is in: its model family and its OS major
--      version (plus the tags an admin sets with PUT /v1/devices/{id}/tags);
--   3. which profiles each group gets (the table `by_group` below);
--   4. which commands to queue: DeviceInformation on a device's first
--      check-in, and a ProfileList once every 24 hours.
--
-- The server does the work: it issues certificates, queues the commands,
-- and installs or removes the profiles (it compares what `profiles` returns
-- with what it installed before). Nothing here can act on its own.

local users = require("users")
local util = require("util")

local M = { name = "default" }

-- 1. Enrollment ----------------------------------------------------------

-- A person signs in at /enroll (a form, HTTP Basic, or OTA). Only users
-- in users.lua whose password matches their hash may enroll. Anything
-- else, and any error in this function, denies.
--
-- The password is checked even for a name that is not listed (against a
-- hash of a random password, of the kind `mkpasswd` makes by default), so
-- that an unknown name takes as long to refuse as a wrong password: the
-- time of the answer does not tell which names exist.
local decoy = mdm.password.hash(mdm.uuid())

function M.authenticate(req)
  local u = users[req.username or ""]
  local ok = mdm.password.verify(req.password or "", u and u.hash or decoy)
  if u == nil then
    return { allow = false, reason = "unknown user" }
  end
  if u.disabled then
    return { allow = false, reason = "account disabled" }
  end
  if not ok then
    return { allow = false, reason = "wrong password" }
  end
  return { allow = true, user = req.username, groups = u.groups or {} }
end

-- 2. Groups --------------------------------------------------------------

-- The model family from the model identifier ("iPhone15,2" -> "iphone").
local families = {
  { prefix = "iPhone", group = "iphone" },
  { prefix = "iPad", group = "ipad" },
  { prefix = "iPod", group = "ipod" },
  { prefix = "AppleTV", group = "appletv" },
  { prefix = "Watch", group = "watch" },
  { prefix = "Mac", group = "mac" },
  { prefix = "iMac", group = "mac" },
}

local function family(device)
  -- Authenticate sends ProductName on iOS and Model on macOS: try both.
  for _, model in ipairs({ device.product or "", device.model or "" }) do
    for _, f in ipairs(families) do
      if util.starts_with(model, f.prefix) then return f.group end
    end
  end
  return nil
end

function M.groups(device)
  local g = { "all" }
  local fam = family(device)
  if fam then g[#g + 1] = fam end
  -- "os:17" for iOS/macOS 17.x: lets the profile map target OS versions.
  local major = (device.os_version or ""):match("^(%d+)")
  if major then g[#g + 1] = "os:" .. major end
  for _, tag in ipairs(device.tags or {}) do g[#g + 1] = "tag:" .. tag end
  return g
end

-- 3. Profiles ------------------------------------------------------------

-- Group -> profile identifiers. Upload each profile first:
--   curl -X PUT --data-binary @wifi.mobileconfig \
--        -H "Authorization: Bearer $KEY" https://mdm:8443/v1/profiles/com.example.wifi
-- A profile that is not uploaded is skipped (and logged) until it is.
local by_group = {
  all = {},
  iphone = {},
  ipad = {},
  mac = {},
}

function M.profiles(device, groups)
  local out, seen = {}, {}
  for _, g in ipairs(groups) do
    for _, id in ipairs(by_group[g] or {}) do
      if not seen[id] then
        seen[id] = true
        out[#out + 1] = id
      end
    end
  end
  return out
end

-- 4. Commands ------------------------------------------------------------

-- The facts the groups and later decisions need.
local FIRST_QUERIES = {
  "DeviceName", "OSVersion", "BuildVersion", "ModelName", "Model", "ProductName",
  "SerialNumber", "IsSupervised", "IsActivationLockEnabled",
}

-- A new enrollment's first TokenUpdate: ask the device who it is.
function M.checkin(device, msg)
  if msg.MessageType == "TokenUpdate" and device.first_checkin and device.type == "device" then
    return { commands = { mdm.command.DeviceInformation{ Queries = FIRST_QUERIES } } }
  end
end

-- Every Idle: a ProfileList when the last one is more than a day old, so
-- that the server notices profiles removed on the device by hand (and puts
-- managed ones back).
local DAY = 24 * 3600

function M.connect(device, report)
  if report.Status ~= "Idle" or device.type ~= "device" then return end
  local key = "profilelist:" .. device.id
  local last = mdm.kv.get(key)
  if last == nil or mdm.now() - last >= DAY then
    mdm.kv.put(key, mdm.now())
    return { commands = { mdm.command.ProfileList{ ManagedOnly = true } } }
  end
end

-- The facts of DeviceInformation are stored by the server itself
-- (device.facts); nothing to add here.

function M.self_test()
  local t = require("testing")
  t.eq(M.groups({ product = "iPad13,1", os_version = "17.5", tags = {} }),
       { "all", "ipad", "os:17" })
  return true
end

return M
