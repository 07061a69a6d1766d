local t = require("testing")

function test_rings_from_tags()
  t.eq(t.call("groups", t.device{ tags = { "pilot" } }).groups, { "all", "ring:pilot" })
  t.eq(t.call("groups", t.device{ tags = {} }).groups, { "all", "ring:broad" })
end

function test_pilot_first_then_broad_a_week_later()
  local pilot = t.device{ id = "P", os_version = "17.4", groups = { "all", "ring:pilot" } }
  local broad = t.device{ id = "B", os_version = "17.4", groups = { "all", "ring:broad" } }
  t.freeze(1704067200 + 3600)
  t.eq(t.call("connect", pilot, { Status = "Idle" }).commands[1].RequestType, "ScheduleOSUpdate")
  t.eq(t.call("connect", broad, { Status = "Idle" }).commands, {})
  t.advance(7 * 24 * 3600)
  t.eq(t.call("connect", broad, { Status = "Idle" }).commands[1].Updates[1].ProductKey,
       "iOSUpdate21F90")
end

function test_up_to_date_devices_and_repeats()
  local done = t.device{ id = "D", os_version = "17.5.1", groups = { "ring:pilot" } }
  t.freeze(1704067200 + 3600)
  t.eq(t.call("connect", done, { Status = "Idle" }).commands, {})
  local p = t.device{ id = "P2", os_version = "17.0", groups = { "ring:pilot" } }
  t.eq(#t.call("connect", p, { Status = "Idle" }).commands, 1)
  t.eq(t.call("connect", p, { Status = "Idle" }).commands, {})
  t.advance(24 * 3600)
  t.eq(#t.call("connect", p, { Status = "Idle" }).commands, 1)
end
