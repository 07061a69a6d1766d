local ok = pcall(function() return io.open("/etc/passwd") end)
return { data_dir = tostring(ok) .. tostring(os.time ~= nil) }
