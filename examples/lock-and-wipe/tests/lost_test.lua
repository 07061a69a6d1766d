local t = require("testing")

function test_lost_tag_locks_once()
  local d = t.device{ id = "L1", type = "device", tags = { "lost" } }
  local first = t.call("connect", d, { Status = "Idle" })
  t.eq(#first.commands, 1)
  t.eq(first.commands[1].RequestType, "DeviceLock")
  t.matches(first.commands[1].Message, "reported lost")
  t.eq(t.call("connect", d, { Status = "Idle" }).commands, {})
end

function test_wipe_tag_erases_and_retagging_repeats()
  local tagged = t.device{ id = "W1", type = "device", tags = { "wipe" } }
  t.eq(t.call("connect", tagged, { Status = "Idle" }).commands[1].RequestType, "EraseDevice")
  t.eq(t.call("connect", tagged, { Status = "Idle" }).commands, {})
  t.eq(t.call("connect", t.device{ id = "W1", type = "device", tags = {} }, { Status = "Idle" }).commands, {})
  t.eq(t.call("connect", tagged, { Status = "Idle" }).commands[1].RequestType, "EraseDevice")
end

function test_untagged_devices_get_nothing()
  t.eq(t.call("connect", t.device{ id = "N", type = "device", tags = {} }, { Status = "Idle" }).commands, {})
end
