return { htpp = { max_body_bytes = "1KiB" } }
