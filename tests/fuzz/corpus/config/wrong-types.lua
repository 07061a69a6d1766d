return { http = { max_body_bytes = "lots", read_timeout = -1 }, listen = "127.0.0.1:1", log = { requests = "yes" } }
