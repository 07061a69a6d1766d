local t = require("testing")

function test_listed_serial_enrolls_over_ota()
  local d = t.call("authenticate", { device = { SERIAL = "C02XL0AAJGH5", UDID = "U1" } })
  t.eq(d.allow, true)
  t.eq(d.user, "serial:C02XL0AAJGH5")
end

function test_other_serials_are_refused()
  t.eq(t.call("authenticate", { device = { SERIAL = "NOPE" } }).allow, false)
  t.eq(t.call("authenticate", { username = "alice", password = "x" }).allow, false)
end

function test_authenticate_of_an_unlisted_device_is_rejected()
  t.eq(t.call("checkin", t.device{ serial = "NOPE" }, { MessageType = "Authenticate" }).reject, true)
  t.eq(t.call("checkin", t.device{ serial = "DMPXK2ABCDEF" },
              { MessageType = "Authenticate" }).reject, false)
end
