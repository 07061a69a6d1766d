-- Differential cases for lua/lpattern.c, run by test_lpattern.c in a plain
-- Lua state where `string` is the standard library and `lp` holds find,
-- match, gmatch and gsub of lpattern.c. Every case runs through both; the
-- script returns the number of cases and a list of the differences.
local real, mine = string, lp
local pack, unpack, concat = table.pack, table.unpack, table.concat

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return type(v) .. ":" .. tostring(v)
end

-- The results of f(...) (or its error) as text. Errors name the function
-- they come from differently ("string.find" or "?"), so that part goes.
local function outcome(f, ...)
  local r = pack(pcall(f, ...))
  if not r[1] then
    local msg = tostring(r[2]):gsub("to '[^']*'", "to '?'")
    return "error: " .. msg
  end
  local parts = {}
  for i = 2, r.n do parts[#parts + 1] = show(r[i]) end
  return "(" .. concat(parts, ", ") .. ")"
end

-- gmatch: every value of every round (at most 200 rounds).
local function gmatch_all(gm)
  return function(s, p, init)
    local out = {}
    for a, b, c in gm(s, p, init) do
      out[#out + 1] = show(a) .. "," .. show(b) .. "," .. show(c)
      if #out >= 200 then break end
    end
    return concat(out, " ")
  end
end

local cases, diffs = 0, {}

local function compare(what, fr, fm, ...)
  cases = cases + 1
  local a, b = outcome(fr, ...), outcome(fm, ...)
  if a ~= b and #diffs < 50 then
    local args = pack(...)
    local shown = {}
    for i = 1, args.n do shown[i] = show(args[i]) end
    diffs[#diffs + 1] = string.format("%s(%s): lua %s, lpattern %s", what,
      concat(shown, ", "), a, b)
  end
end

local replacements = {
  "<%0>", "%1", "[%2|%1]", "x%%y", "%", "%x", "", "%9", 7, 2.5,
  { a = "A", b = false, ab = "AB", [1] = "one" },
  function(...) return select("#", ...) > 1 and (...) .. "!" or nil end,
  function(x) return x end,
  function() return false end,
  function() return {} end,
  function(x) return #tostring(x) end,
}

local function run(s, p, init)
  compare("find", real.find, mine.find, s, p, init)
  compare("find plain", real.find, mine.find, s, p, init, true)
  compare("match", real.match, mine.match, s, p, init)
  compare("gmatch", gmatch_all(real.gmatch), gmatch_all(mine.gmatch), s, p, init)
  for i = 1, #replacements do
    compare("gsub", real.gsub, mine.gsub, s, p, replacements[i], init)
  end
end

-- Hand-written cases: the manual's examples and the edges of every feature.
local fixed = {
  { "hello world from Lua", "%a+" }, { "hello world", "o", 6 }, { "hello", "l+" },
  { "hello", "" }, { "", "" }, { "", "a*" }, { "abc", "", 10 }, { "abc", "", 4 },
  { "abc", "b", -1 }, { "abc", "b", -2 }, { "abc", "b", -100 }, { "abc", "b", 0 },
  { "abc", "^b" }, { "abc", "^a" }, { "abc", "c$" }, { "abc", "b$" }, { "a$b", "$b" },
  { "a^b", "a^b" }, { "^ab", "^^a" }, { "x = 1, y = 2", "(%w+) = (%w+)" },
  { "THE (quick) fox", "%((%a+)%)" }, { "f(a(b)c)d", "%b()" }, { "abba", "%bab" },
  { "aaa", "%baa" }, { "THE (quick) fox", "%f[%a]%a+" }, { "hello", "%f[%l]" },
  { "x", "%f[%z]" }, { "ab", "%f[^a]" }, { "hello hello", "(h%a+) %1" },
  { "abab", "(ab)%1" }, { "aa", "(a)%2" }, { "aa", "%1(a)" }, { "aa", "(a%1)" },
  { "aa", "%0" }, { "abc", "()b()" }, { "abc", "(a)(b)(c)" }, { "abc", "((a)(b))" },
  { "abc", "(a" }, { "abc", "a)" }, { "abc", "%" }, { "abc", "[a" }, { "abc", "[]" },
  { "]", "[]]" }, { "a]", "[^]]" }, { "abc", "[^]" }, { "a-z", "[a-]" }, { "-", "[-a]" },
  { "b", "[a-c]" }, { "b", "[c-a]" }, { "%", "[%%]" }, { "]", "[%]]" }, { "a5_", "[%d_]+" },
  { "x", "%bx" }, { "x", "%b" }, { "x", "%f" }, { "x", "%fx" }, { "x", "%f[x" },
  { "a.b", "%." }, { "a.b", "." }, { "a+b", "a%+b" }, { "q", "%q" }, { "Q", "%Q" },
  { "z", "%z" }, { "\0a", "%z" }, { "a\0b", "\0" }, { "a\0b", "a%zb" }, { "a\0b", "[\0]" },
  { "  trim  ", "^%s*(.-)%s*$" }, { "key=val", "(%w+)=(%w+)" }, { "1.2.3", "%d+" },
  { "aaa", "a-b" }, { "aaab", "a-b" }, { "aaa", "a*" }, { "aaa", "a?a?a?aaa" },
  { "aaa", "a+" }, { "aaa", "^a-$" }, { "ab", "a?b?c?" }, { "abc", ".-" }, { "abc", ".-$" },
  { "aXb", "%u" }, { "aXb", "%U+" }, { "\t\n x", "%c+" }, { "!?,", "%p+" }, { "a b", "%S+" },
  { "deadBEEF", "%x+" }, { "ab12", "%W" }, { "a\128\255", "[\128-\255]+" },
  { "a\128\255", "%A+" }, { "#", "%#" }, { "(", "(" }, { ")", "%)" }, { "x", "*" },
  { "**", "**" }, { "+x", "+" }, { "a", "a**" }, { "-", "-" }, { "a-", "a-" },
  { "aaa", "(a*(.)%w(%s*))" }, { "hello", "(l)(l)" }, { "hello", "()ll()" },
  { "abc", ("(a)"):rep(33) }, { ("a"):rep(40), ("(a)"):rep(32) },
  { ("a"):rep(40), ("(a)"):rep(33) }, { "x", ("x?"):rep(250) },
  { "key = value", "^(%w+)%s*=%s*(%w+)$" }, { "one two", "(%w+) (%w+)" },
  { "abc", "%f[%w]%w+", 2 }, { "a,b,,c", "([^,]*)" }, { "abc", "b*" },
  { "hello world", "%w+", 3 }, { "hello world", "%w+", -5 }, { "hello", "l", 10 },
}
for _, c in ipairs(fixed) do run(c[1], c[2], c[3]) end
-- Nesting: the matcher's depth limit ("pattern too complex").
for k = 190, 210, 2 do
  compare("depth", real.find, mine.find, ("a"):rep(k), ("a?"):rep(k))
  compare("depth", real.find, mine.find, ("a"):rep(k), ("a-"):rep(k) .. "$")
  compare("depth", real.find, mine.find, ("a"):rep(k), ("()a"):rep(k // 2) .. "$")
end
assert(not pcall(real.find, ("a"):rep(210), ("a?"):rep(210)), "the depth cases reach the limit")
-- gsub's n, and bad arguments.
for _, n in ipairs({ -1, 0, 1, 2, 100 }) do
  compare("gsub n", real.gsub, mine.gsub, "abcabc", "b", "X", n)
  compare("gsub n", real.gsub, mine.gsub, "abcabc", "", "-", n)
end
compare("gsub n", real.gsub, mine.gsub, "abc", "b", "X", 1.5)
compare("gsub n", real.gsub, mine.gsub, "abc", "b", "X", "2")
compare("gsub bad", real.gsub, mine.gsub, "abc", "b")
compare("gsub bad", real.gsub, mine.gsub, "abc", "b", true)
compare("gsub bad", real.gsub, mine.gsub, "abc", "(b", "%1")
compare("gsub table", real.gsub, mine.gsub, "abc", "()b", { [2] = "two" })
compare("gsub table", real.gsub, mine.gsub, "abc", "%w",
  setmetatable({}, { __index = function(_, k) return k:upper() end }))
compare("find bad", real.find, mine.find, nil, "a")
compare("find bad", real.find, mine.find, "a", nil)
compare("find bad", real.find, mine.find, "a", "a", "x")
compare("find bad", real.find, mine.find, "a", "a", 1.5)
compare("find num", real.find, mine.find, 12345, 3)
compare("find num", real.find, mine.find, 12345, "%d", 2.0)
compare("find big", real.find, mine.find, "abc", "c", math.maxinteger)
compare("find big", real.find, mine.find, "abc", "c", math.mininteger)
compare("match big", real.match, mine.match, "abc", "c", math.mininteger)
compare("gmatch big", gmatch_all(real.gmatch), gmatch_all(mine.gmatch), "abc", ".",
  math.mininteger)
compare("gmatch big", gmatch_all(real.gmatch), gmatch_all(mine.gmatch), "abc", ".",
  math.maxinteger)

-- Random patterns from a small alphabet, with a fixed seed.
local atoms = {
  "a", "b", "c", ".", "%a", "%d", "%s", "%w", "%A", "%l", "%x", "%p", "%u", "%c", "%g",
  "[ab]", "[^a]", "[a-c]", "[%d_]", "[]a]", "[^]b]", "[a-]", "(", ")", "()", "%1", "%2",
  "%0", "%b()", "%bab", "%f[%w]", "%f[a]", "%f[^a]", "^", "$", "*", "+", "-", "?", "%",
  "[", "]", "%f", "%b", "%%", "%.", "%(", "%)", "%]", "1", "_", " ",
}
local quant = { "", "", "", "*", "+", "-", "?" }
local subject_chars = { "a", "b", "c", "a", "b", "(", ")", "1", "2", "_", " ", "]", "%", "." }
math.randomseed(20261207)
local function random_pattern()
  local parts = {}
  for _ = 1, math.random(0, 6) do
    parts[#parts + 1] = atoms[math.random(#atoms)] .. quant[math.random(#quant)]
  end
  return concat(parts)
end
local function random_subject()
  local parts = {}
  for _ = 1, math.random(0, 12) do
    parts[#parts + 1] = subject_chars[math.random(#subject_chars)]
  end
  return concat(parts)
end
for _ = 1, ROUNDS or 3000 do
  local init = nil
  if math.random(3) == 1 then init = math.random(-15, 15) end
  run(random_subject(), random_pattern(), init)
end
-- Raw bytes: any special, NUL and high bytes anywhere, for the edges of
-- the pattern's end.
local raw = { "%", "[", "]", "^", "$", "(", ")", ".", "*", "+", "-", "?", "a", "b", "f",
  "1", "\0", "\255", "z" }
local function random_raw(max)
  local parts = {}
  for _ = 1, math.random(0, max) do parts[#parts + 1] = raw[math.random(#raw)] end
  return concat(parts)
end
for _ = 1, (ROUNDS or 3000) // 4 do
  run(random_raw(8), random_raw(8), math.random(-10, 10))
end
return cases, diffs
