-- Who may enroll devices: user name -> { hash = crypt(3) hash, groups = {...} }.
--
-- Make a hash with `mkpasswd -m yescrypt` (Debian package whois), or in a
-- policy test with mdm.password.hash("the password"). yescrypt ($y$),
-- bcrypt ($2b$) and sha512-crypt ($6$) hashes are understood.
--
-- Nobody is listed here: until you add someone, nobody can enroll through
-- /enroll. Example (the password of this hash is "change me"; do not use it):
--
--   alice = {
--     hash = "$y$j9T$...",
--     groups = { "staff" },
--   },
--
-- Set `disabled = true` to keep an entry but refuse it.

return {
}
