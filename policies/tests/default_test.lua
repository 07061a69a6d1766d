-- Tests of the shipped policy set: `moonmdm policy test policies`.
local t = require("testing")

-- users.lua ships empty; each test adds who it needs (every test runs in a
-- fresh state, so nothing leaks between them).
local function add_user(name, password, extra)
  local u = extra or {}
  u.hash = mdm.password.hash(password)
  require("users")[name] = u
end

function test_nobody_may_enroll_by_default()
  local d = t.call("authenticate", { username = "alice", password = "x" })
  t.eq(d.allow, false)
  t.eq(d.reason, "unknown user")
end

function test_listed_user_with_the_right_password_enrolls()
  add_user("alice", "correct horse", { groups = { "staff" } })
  local d = t.call("authenticate", { username = "alice", password = "correct horse" })
  t.eq(d.status, "ok")
  t.eq(d.allow, true)
  t.eq(d.user, "alice")
  t.eq(d.groups, { "staff" })
end

function test_wrong_password_and_disabled_accounts_are_refused()
  add_user("bob", "pw1")
  add_user("carol", "pw2", { disabled = true })
  t.eq(t.call("authenticate", { username = "bob", password = "pw2" }).reason, "wrong password")
  t.eq(t.call("authenticate", { username = "carol", password = "pw2" }).reason, "account disabled")
  t.eq(t.call("authenticate", { username = "bob" }).allow, false)
end

-- An unknown name is refused after a password check too, as long as a
-- wrong password takes: the answer's time does not tell which names exist.
-- (Processor time: a yescrypt check costs tens of milliseconds, a refusal
-- without one a few microseconds.)
function test_unknown_names_cost_a_password_check()
  add_user("bob", "pw1")
  local function cpu(name)
    local t0 = os.clock()
    local d = t.call("authenticate", { username = name, password = "pw2" })
    return os.clock() - t0, d.reason
  end
  local unknown, why = cpu("mallory")
  t.eq(why, "unknown user")
  local wrong, why2 = cpu("bob")
  t.eq(why2, "wrong password")
  t.truthy(unknown > wrong / 3, string.format("unknown %.4f s, wrong %.4f s", unknown, wrong))
end

function test_bcrypt_and_sha512_hashes_work_too()
  require("users").dave = { hash = mdm.password.hash("s3cret", "bcrypt") }
  require("users").erin = { hash = mdm.password.hash("s3cret", "sha512") }
  t.eq(t.call("authenticate", { username = "dave", password = "s3cret" }).allow, true)
  t.eq(t.call("authenticate", { username = "erin", password = "s3cret" }).allow, true)
end

function test_groups_by_family_os_and_tags()
  t.eq(t.call("groups", t.device{ product = "iPhone15,2", os_version = "17.5", tags = {} }).groups,
       { "all", "iphone", "os:17" })
  t.eq(t.call("groups", t.device{ product = "iPad13,1", os_version = "16.7.8",
                                  tags = { "kiosk" } }).groups,
       { "all", "ipad", "os:16", "tag:kiosk" })
  t.eq(t.call("groups", t.device{ product = "", model = "MacBookPro18,3", os_version = "14.4",
                                  tags = {} }).groups,
       { "all", "mac", "os:14" })
end

function test_profiles_follow_the_group_map()
  -- The shipped map is empty: no profile for anyone.
  t.eq(t.call("profiles", t.device{}, { "all", "iphone" }).profiles, {})
end

function test_device_information_on_first_checkin_only()
  local new = t.device{ first_checkin = true, type = "device" }
  local d = t.call("checkin", new, { MessageType = "TokenUpdate" })
  t.eq(#d.commands, 1)
  t.eq(d.commands[1].RequestType, "DeviceInformation")
  t.contains(d.commands[1].Queries, "SerialNumber")
  local again = t.call("checkin", t.device{ first_checkin = false }, { MessageType = "TokenUpdate" })
  t.eq(again.commands, {})
  -- Not on Authenticate, and not for user channels.
  t.eq(t.call("checkin", new, { MessageType = "Authenticate" }).commands, {})
  t.eq(t.call("checkin", t.device{ first_checkin = true, type = "user" },
              { MessageType = "TokenUpdate" }).commands, {})
end

function test_profile_list_once_a_day()
  local dev = t.device{ id = "UDID-1", type = "device" }
  local first = t.call("connect", dev, { Status = "Idle" })
  t.eq(first.commands[1].RequestType, "ProfileList")
  t.eq(t.call("connect", dev, { Status = "Idle" }).commands, {})
  t.advance(23 * 3600)
  t.eq(t.call("connect", dev, { Status = "Idle" }).commands, {})
  t.advance(3600)
  t.eq(t.call("connect", dev, { Status = "Idle" }).commands[1].RequestType, "ProfileList")
  -- Not in answer to a result, only on Idle.
  t.advance(2 * 24 * 3600)
  t.eq(t.call("connect", dev, { Status = "Acknowledged", CommandUUID = "x" }).commands, {})
end
