-- The shared secret. Replace it with at least 32 random bytes (for
-- example `openssl rand -hex 32`) and keep this file readable only by the
-- server's user.
return { key = "replace-me-with-openssl-rand-hex-32" }
