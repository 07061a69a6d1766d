local s = string.rep("a", 10) .. string.format("%d", 5)
return { log = { level = ("INFO"):lower() }, data_dir = "/tmp/" .. s }
