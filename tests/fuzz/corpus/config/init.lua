-- moonmdm configuration, written by `moonmdm init`.
return {
  data_dir = "/var/lib/moonmdm",
  listen = { "127.0.0.1:8443" },
  tls = {
    cert = "server.crt",
    key = "server.key",
    client_ca = { "ca.crt" },
  },
  ca = {
    cert = "ca.crt",
    key = "ca.key",
  },
  scep = {
    ra_cert = "ra.crt",
    ra_key = "ra.key",
  },
  store = {
    path = "db",
  },
  log = {
    level = "info",
  },
}
