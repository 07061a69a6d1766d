/* Fuzzes lua/lpattern.c, the policy sandbox's pattern matching, against
 * the standard Lua string library: the patterns come from policy authors,
 * the subjects from devices (facts, user names, command results).
 *
 * Input: byte 0 picks the function (find, plain find, match, gmatch, gsub)
 * and, for gsub, the replacement; byte 1 is init (a signed byte; 0 means
 * none); the rest is the pattern, a NUL byte, then the subject. Each input
 * runs through lpattern.c first, under a meter that stops it after a fixed
 * number of steps, and, if it finished, through the standard library. Any
 * difference in results or in failing is a crash (abort). The standard
 * library runs only on inputs lpattern.c finished within its budget, whose
 * backtracking does the same work, so it finishes too. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../lua/sandbox_internal.h"

#define PATTERN_MAX 48
#define SUBJECT_MAX 256
#define STEPS_MAX 400000u

/* Runs both and returns nil when they agree, else a description. Errors
 * name the function they come from differently, so that part goes. */
static const char driver[] =
    "local real, mine = string, lp\n"
    "local pack, concat = table.pack, table.concat\n"
    "local function show(v)\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  return type(v) .. ':' .. tostring(v)\n"
    "end\n"
    "local function outcome(f, ...)\n"
    "  local r = pack(pcall(f, ...))\n"
    "  if not r[1] then\n"
    "    return 'error: ' .. tostring(r[2]):gsub(\"to '[^']*'\", \"to '?'\")\n"
    "  end\n"
    "  local parts = {}\n"
    "  for i = 2, r.n do parts[#parts + 1] = show(r[i]) end\n"
    "  return '(' .. concat(parts, ', ') .. ')'\n"
    "end\n"
    "local function gmatch_all(gm)\n"
    "  return function(s, p, init)\n"
    "    local out = {}\n"
    "    for a, b, c in gm(s, p, init) do\n"
    "      out[#out + 1] = show(a) .. ',' .. show(b) .. ',' .. show(c)\n"
    "      if #out >= 64 then break end\n"
    "    end\n"
    "    return concat(out, ' ')\n"
    "  end\n"
    "end\n"
    "local repls = { '<%0>', '%1', '[%2|%1]', 'x%%y', '%', '',\n"
    "  { a = 'A', b = false, ab = 'AB' },\n"
    "  function(...) return select('#', ...) > 1 and (...) .. '!' or nil end }\n"
    "local function call(lib, which, s, p, init, r)\n"
    "  if which == 0 then return outcome(lib.find, s, p, init)\n"
    "  elseif which == 1 then return outcome(lib.find, s, p, init, true)\n"
    "  elseif which == 2 then return outcome(lib.match, s, p, init)\n"
    "  elseif which == 3 then return outcome(gmatch_all(lib.gmatch), s, p, init)\n"
    "  else return outcome(lib.gsub, s, p, repls[r % #repls + 1], init) end\n"
    "end\n"
    "return function(which, s, p, init, r)\n"
    "  local b = call(mine, which, s, p, init, r)\n"
    "  if b:find('fuzz step budget', 1, true) then return nil end\n"
    "  local a = call(real, which, s, p, init, r)\n"
    "  if a == b then return nil end\n"
    "  return string.format('fn %d pattern %q subject %q init %s: lua %s, lpattern %s',\n"
    "                       which, p, s, tostring(init), a, b)\n"
    "end\n";

static uint64_t steps;

static uint64_t fuzz_charge(lua_State *L, uint64_t used)
{
    steps += used;
    if (steps > STEPS_MAX)
        luaL_error(L, "fuzz step budget");
    return 1000;
}

static const mdm__lpattern_meter_t fuzz_meter = {.charge = fuzz_charge};
static lua_State *L;
static int compare_ref = LUA_NOREF;

static void fuzz_init(void)
{
    if (L != NULL)
        return;
    L = luaL_newstate();
    if (L == NULL)
        abort();
    luaL_openlibs(L);
    lua_newtable(L);
    mdm__lpattern_install(L, -1, &fuzz_meter);
    lua_setglobal(L, "lp");
    if (luaL_loadstring(L, driver) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_lpattern: %s\n", lua_tostring(L, -1));
        abort();
    }
    compare_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 2)
        return 0;
    const char *rest = (const char *)data + 2;
    size_t n = size - 2;
    const char *nul = memchr(rest, '\0', n);
    size_t plen = nul ? (size_t)(nul - rest) : n;
    const char *subject = nul ? nul + 1 : "";
    size_t slen = nul ? n - plen - 1 : 0;
    if (plen > PATTERN_MAX || slen > SUBJECT_MAX)
        return 0;
    int8_t init = (int8_t)data[1];
    steps = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, compare_ref);
    lua_pushinteger(L, data[0] % 5);
    lua_pushlstring(L, subject, slen);
    lua_pushlstring(L, rest, plen);
    if (init != 0)
        lua_pushinteger(L, init);
    else
        lua_pushnil(L);
    lua_pushinteger(L, data[0] / 5);
    if (lua_pcall(L, 5, 1, 0) != LUA_OK || !lua_isnil(L, -1)) {
        fprintf(stderr, "fuzz_lpattern: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_pop(L, 1);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
