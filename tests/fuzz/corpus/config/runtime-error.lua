local t = nil
return { data_dir = t.x }
