local t = require("testing")

function test_tagged_ipads_are_kiosks()
  local ipad = t.device{ product = "iPad13,1", tags = { "kiosk" } }
  local g = t.call("groups", ipad).groups
  t.eq(g, { "all", "kiosk" })
  t.eq(t.call("profiles", ipad, g).profiles,
       { "com.example.kiosk.applock", "com.example.kiosk.restrictions" })
end

function test_untagged_ipads_and_iphones_are_not()
  t.eq(t.call("groups", t.device{ product = "iPad13,1", tags = {} }).groups, { "all" })
  t.eq(t.call("groups", t.device{ product = "iPhone15,2", tags = { "kiosk" } }).groups, { "all" })
  t.eq(t.call("profiles", t.device{}, { "all" }).profiles, {})
end

function test_kiosk_is_renamed_once()
  local ipad = t.device{ id = "K1", product = "iPad13,1", serial = "DMPXK2", tags = { "kiosk" } }
  local d = t.call("connect", ipad, { Status = "Idle" })
  t.eq(d.commands[1].RequestType, "Settings")
  t.eq(d.commands[1].Settings[1].DeviceName, "Kiosk DMPXK2")
  t.eq(t.call("connect", ipad, { Status = "Idle" }).commands, {})
end
