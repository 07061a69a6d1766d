-- The serial numbers that may enroll, one string each.
return {
  "C02XL0AAJGH5",
  "DMPXK2ABCDEF",
}
