local n = 0
for i = 1, 1000 do n = n + i end
return { http = { max_pipeline = n % 16 + 1 } }
