-- util: small helpers for policies. require("util").
local M = {}

-- contains(list, value): true when value is an element of list.
function M.contains(list, value)
  for _, v in ipairs(list or {}) do
    if v == value then return true end
  end
  return false
end

-- set(list): {value = true, ...}.
function M.set(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v] = true end
  return s
end

-- union(...): the elements of every list, each once, in order.
function M.union(...)
  local out, seen = {}, {}
  for i = 1, select("#", ...) do
    for _, v in ipairs(select(i, ...) or {}) do
      if not seen[v] then
        seen[v] = true
        out[#out + 1] = v
      end
    end
  end
  return out
end

-- starts_with(s, prefix).
function M.starts_with(s, prefix)
  return type(s) == "string" and s:sub(1, #prefix) == prefix
end

-- split(s, sep): the parts of s between the (plain) separator sep.
function M.split(s, sep)
  local out, pos = {}, 1
  while true do
    local i, j = s:find(sep, pos, true)
    if not i then
      out[#out + 1] = s:sub(pos)
      return out
    end
    out[#out + 1] = s:sub(pos, i - 1)
    pos = j + 1
  end
end

-- version_compare(a, b): -1, 0 or 1 comparing dotted versions numerically
-- ("17.10" > "17.9"; missing parts count as 0; nil sorts first).
function M.version_compare(a, b)
  if a == nil or b == nil then
    return a == b and 0 or (a == nil and -1 or 1)
  end
  local pa, pb = M.split(tostring(a), "."), M.split(tostring(b), ".")
  for i = 1, math.max(#pa, #pb) do
    local x, y = tonumber(pa[i]) or 0, tonumber(pb[i]) or 0
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

-- version_at_least(v, min): v >= min (false when v is nil).
function M.version_at_least(v, min)
  return v ~= nil and M.version_compare(v, min) >= 0
end

return M
