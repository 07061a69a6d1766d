/* The sandbox of policy code: a Lua state with only harmless libraries, an
 * accounting allocator with a cap, and budgets of time and instructions per
 * call.
 *
 * Budgets: a count hook fires every HOOK_STEP instructions and checks the
 * instruction count and the monotonic clock. Once a budget is spent the
 * hook fires on every instruction and raises an error each time, so that a
 * pcall in the policy cannot swallow the kill and carry on (Redis #8661).
 * The memory cap works the same way: an allocation past the cap fails, and
 * the call is marked as killed so that a pcall that catches "not enough
 * memory" is stopped at its next instruction.
 *
 * What could run without a budget is taken away: xpcall's message handler
 * runs with hooks off when the error comes from the hook, so xpcall is
 * replaced by a version that calls the handler after unwinding; Lua runs
 * finalizers with hooks off, so setmetatable refuses __gc; collectgarbage
 * cannot stop the collector. Pattern matching, which the standard library
 * does in one instruction however long it takes, is done by lpattern.c,
 * which charges its steps to the budgets. Other library calls that loop in
 * C are charged their cost before they run (costly[]), and the allocator
 * looks at the clock every few MiB, so that C work which allocates as it
 * goes cannot overrun the time budget either. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "sandbox_internal.h"
#include "util/alloc.h"
#include "util/misc.h"

#define HOOK_STEP 1000

/* Steps of library work (pattern matching) between two looks at the clock. */
#define CLOCK_EVERY (1u << 16)

static void hook(lua_State *L, lua_Debug *ar);

/* ---- the time budget -------------------------------------------------------------- */

/* The time budget bounds the processor time a call takes from the event
 * loop. Its deadline is on the monotonic clock, which is cheap to read; a
 * thread that was not running meanwhile (the machine busy, the virtual
 * machine's processor taken away, a page of the store read from the disk)
 * did no policy work, though, and must not fail a call that did almost
 * none (an Authenticate refused because the machine stalled). So once the
 * deadline has passed, the thread's processor time decides: reading it
 * takes microseconds here, so it is read only then, and at the start of a
 * call at most every CPU_REF_AGE (a reading of this thread kept between
 * calls: the call's own time is what has been used since, less the at
 * most CPU_REF_AGE of work before the call began). */
#define CPU_REF_AGE 2000000ull

static _Thread_local uint64_t ref_cpu_ns, ref_wall_ns;

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return UINT64_MAX; /* cannot tell: the wall clock decides */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sets b's reading of the processor time for a call starting at now. */
static void cpu_ref_take(mdm__budget_t *b, uint64_t now)
{
    if (ref_wall_ns == 0 || now - ref_wall_ns > CPU_REF_AGE) {
        ref_cpu_ns = thread_cpu_ns();
        ref_wall_ns = now;
    }
    b->cpu_ref_ns = ref_cpu_ns;
    b->cpu_slack_ns = now - ref_wall_ns;
}

/* Whether the call of b has spent its time: its deadline has passed and so
 * has, surely, its processor time. When the thread was not running for
 * part of the time, the deadline moves by what is left of the processor
 * time, and the call goes on. */
static bool out_of_time(mdm__budget_t *b)
{
    if (b->deadline_ns == 0)
        return false;
    uint64_t now = mdm_mono_ns();
    if (now < b->deadline_ns)
        return false;
    uint64_t cpu = thread_cpu_ns();
    if (cpu == UINT64_MAX || b->cpu_ref_ns == UINT64_MAX || cpu < b->cpu_ref_ns)
        return true;
    uint64_t since = cpu - b->cpu_ref_ns;
    uint64_t used = since > b->cpu_slack_ns ? since - b->cpu_slack_ns : 0;
    if (used >= b->cpu_allow_ns)
        return true;
    uint64_t left = b->cpu_allow_ns - used;
    b->waited_ns += now + left - b->deadline_ns;
    b->deadline_ns = now + left;
    return false;
}

bool mdm__sandbox_out_of_time(mdm__sandbox_t *sb)
{
    return sb->b.active && out_of_time(&sb->b);
}

/* Marks the running call as stopped (the first reason counts) and makes
 * the hook fire at the next instruction of thread L and of the main one. */
static void stop_call(mdm__sandbox_t *sb, lua_State *L, int kill)
{
    if (sb->b.kill == MDM__KILL_NONE)
        sb->b.kill = kill;
    if (L != NULL)
        lua_sethook(L, hook, LUA_MASKCOUNT, 1);
    if (sb->L != NULL && sb->L != L)
        lua_sethook(sb->L, hook, LUA_MASKCOUNT, 1);
}

/* Bytes allocated between two looks at the clock in the allocator. */
#define ALLOC_CLOCK_EVERY ((size_t)4 << 20)

/* Once the time budget is spent, allocations this big fail. */
#define ALLOC_REFUSED_FROM ((size_t)64 << 10)

/* Work that allocates as it goes (a concatenation, string.sub, the bytes
 * table.concat copies) is not charged by the byte: the allocator looks at
 * the clock every ALLOC_CLOCK_EVERY bytes, and a call past its deadline is
 * stopped. The kill reaches the main thread at its next instruction; a
 * coroutine's hook (which the allocator cannot reach) only at its next
 * count, so big allocations fail from then on, which ends the C work of
 * either at once. Returns false for an allocation that must fail. */
static bool alloc_in_time(mdm__sandbox_t *sb, size_t grown)
{
    mdm__budget_t *b = &sb->b;
    if (!b->active)
        return true;
    sb->alloc_unclocked += grown;
    if (sb->alloc_unclocked >= ALLOC_CLOCK_EVERY) {
        sb->alloc_unclocked = 0;
        if (b->kill == MDM__KILL_NONE && out_of_time(b))
            stop_call(sb, NULL, MDM__KILL_TIME);
    }
    return b->kill != MDM__KILL_TIME || grown < ALLOC_REFUSED_FROM;
}

/* The allocator: plain allocation with a cap. */
static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mdm__sandbox_t *sb = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        mdm_free(ptr);
        sb->mem_used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > sb->mem_max - sb->mem_used) {
        /* Stop the running call for good (see the comment at the top). */
        if (sb->b.active && sb->b.kill == MDM__KILL_NONE)
            stop_call(sb, NULL, MDM__KILL_MEMORY);
        return NULL;
    }
    if (nsize > old && !alloc_in_time(sb, nsize - old))
        return NULL;
    void *p = mdm_realloc(ptr, nsize);
    sb->mem_used = sb->mem_used - old + nsize;
    if (sb->mem_used > sb->mem_peak)
        sb->mem_peak = sb->mem_used;
    return p;
}

static mdm__sandbox_t *sandbox_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

static const char *kill_text(int kill)
{
    switch (kill) {
    case MDM__KILL_TIME: return "time budget exceeded";
    case MDM__KILL_INSNS: return "instruction budget exceeded";
    case MDM__KILL_MEMORY: return "memory limit exceeded";
    case MDM__KILL_PATTERN: return MDM__LPATTERN_BUDGET_TEXT;
    case MDM__KILL_DEFER: return "stopped to hash a password off the event loop";
    case MDM__KILL_PASSWORDS:
        return "mdm.password.verify: more than 4 passwords in one authenticate call";
    }
    return "stopped";
}

static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    mdm__sandbox_t *sb = sandbox_of(L);
    mdm__budget_t *b = &sb->b;
    if (!b->active)
        return;
    if (b->kill == MDM__KILL_NONE) {
        int step = lua_gethookcount(L);
        b->insns += (uint64_t)(step > 0 ? step : 1);
        if (b->insn_limit != 0 && b->insns >= b->insn_limit)
            b->kill = MDM__KILL_INSNS;
        else if (out_of_time(b))
            b->kill = MDM__KILL_TIME;
        else
            return;
    }
    lua_sethook(L, hook, LUA_MASKCOUNT, 1);
    /* Name the line that was running: luaL_error would name its caller. */
    lua_Debug d;
    char where[160] = "";
    if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0)
        snprintf(where, sizeof(where), "%s:%d: ", d.short_src, d.currentline);
    lua_pushfstring(L, "%s%s", where, kill_text(b->kill));
    lua_error(L);
}

/* Work done outside the VM (the steps of a pattern match, the cost of a
 * library call charged before it runs) counts as instructions of the
 * running call, and the clock is looked at every CLOCK_EVERY of them.
 * Raises the error of the budget that is spent, for good (kill names the
 * reason when it is the instruction budget). */
static void charge_work(lua_State *L, uint64_t used, int kill)
{
    mdm__sandbox_t *sb = sandbox_of(L);
    mdm__budget_t *b = &sb->b;
    if (!b->active)
        return;
    b->insns = used > UINT64_MAX - b->insns ? UINT64_MAX : b->insns + used;
    if (b->kill == MDM__KILL_NONE && b->insn_limit != 0 && b->insns >= b->insn_limit)
        stop_call(sb, L, kill);
    if (b->kill == MDM__KILL_NONE && b->insns >= b->clock_at) {
        if (out_of_time(b))
            stop_call(sb, L, MDM__KILL_TIME);
        b->clock_at = b->insns > UINT64_MAX - CLOCK_EVERY ? UINT64_MAX : b->insns + CLOCK_EVERY;
    }
    if (b->kill != MDM__KILL_NONE)
        luaL_error(L, "%s", kill_text(b->kill));
}

/* The meter of pattern matching (lpattern.c), so that one match cannot
 * run past either budget. */
static uint64_t pattern_charge(lua_State *L, uint64_t used)
{
    charge_work(L, used, MDM__KILL_PATTERN);
    const mdm__budget_t *b = &sandbox_of(L)->b;
    uint64_t allow = b->active ? b->clock_at - b->insns : CLOCK_EVERY;
    if (b->active && b->insn_limit != 0 && b->insn_limit - b->insns < allow)
        allow = b->insn_limit - b->insns;
    return allow > 0 ? allow : 1;
}

static const mdm__lpattern_meter_t pattern_meter = {.charge = pattern_charge};

/* Library calls that loop in C: their cost, in instructions, is charged
 * before they run. string.rep of an empty string loops n times without
 * allocating, the table functions loop over a length that __len may make
 * up, and the others loop over the bytes of a string, their arguments or
 * the values they return. One instruction is about a nanosecond of work
 * (what a VM instruction takes); the rates below are measured. */

static lua_Unsigned add_sat(lua_Unsigned a, lua_Unsigned b)
{
    return a > (lua_Unsigned)-1 - b ? (lua_Unsigned)-1 : a + b;
}

static lua_Unsigned mul_sat(lua_Unsigned a, lua_Unsigned b)
{
    return b != 0 && a > (lua_Unsigned)-1 / b ? (lua_Unsigned)-1 : a * b;
}

static lua_Integer int_arg(lua_State *L, int i, bool *ok)
{
    int isnum = 0;
    lua_Integer v = lua_tointegerx(L, i, &isnum);
    *ok = isnum != 0;
    return v;
}

/* The length of argument i when it is a string (numbers are short). */
static lua_Unsigned str_len(lua_State *L, int i)
{
    return lua_type(L, i) == LUA_TSTRING ? lua_rawlen(L, i) : 0;
}

/* string.rep(s, n, sep): n rounds, and copying 4 bytes is a step. */
static lua_Unsigned rep_cost(lua_State *L)
{
    bool ok = false;
    lua_Integer n = int_arg(L, 2, &ok);
    if (!ok || n <= 0)
        return 0;
    lua_Unsigned piece = str_len(L, 1) + str_len(L, 3);
    return add_sat((lua_Unsigned)n, mul_sat((lua_Unsigned)n, piece) / 4);
}

/* table.move(a1, f, e, t): e - f + 1 elements. */
static lua_Unsigned move_cost(lua_State *L)
{
    bool okf = false, oke = false;
    lua_Integer f = int_arg(L, 2, &okf), e = int_arg(L, 3, &oke);
    return okf && oke && e >= f ? add_sat((lua_Unsigned)e - (lua_Unsigned)f, 1) : 0;
}

/* The length table functions use (__len included), or 0 for a value they
 * will refuse. */
static lua_Integer table_len(lua_State *L)
{
    return lua_istable(L, 1) ? luaL_len(L, 1) : 0;
}

/* table.insert(t, pos, v) and table.remove(t, pos) shift the elements
 * after pos; appending and removing the last are one step. */
static lua_Unsigned shift_cost(lua_State *L, bool insert)
{
    bool ok = false;
    lua_Integer pos = int_arg(L, 2, &ok);
    if (!ok || lua_gettop(L) != (insert ? 3 : 2))
        return 1;
    lua_Integer n = table_len(L) + insert;
    return n > pos ? (lua_Unsigned)n - (lua_Unsigned)pos : 1;
}

static lua_Unsigned insert_cost(lua_State *L)
{
    return shift_cost(L, true);
}

static lua_Unsigned remove_cost(lua_State *L)
{
    return shift_cost(L, false);
}

/* table.sort(t): n log n comparisons. */
static lua_Unsigned sort_cost(lua_State *L)
{
    lua_Integer n = table_len(L);
    if (n < 2)
        return 0;
    lua_Unsigned bits = 0;
    for (lua_Unsigned x = (lua_Unsigned)n; x != 0; x >>= 1)
        bits++;
    return (lua_Unsigned)n * bits;
}

/* The number of arguments (string.char, utf8.char, math.max, ...). */
static lua_Unsigned args_units(lua_State *L)
{
    return (lua_Unsigned)lua_gettop(L);
}

/* The length of the first argument (a string worked on byte by byte, a
 * format). */
static lua_Unsigned len_units(lua_State *L)
{
    return str_len(L, 1);
}

/* The bytes of all the string arguments (string.pack). */
static lua_Unsigned strings_units(lua_State *L)
{
    lua_Unsigned n = 0;
    for (int i = 1; i <= lua_gettop(L); i++)
        n = add_sat(n, str_len(L, i));
    return n;
}

/* A position in a string of len bytes as the library resolves it
 * (negative counts from the end), not yet clamped. */
static lua_Integer str_pos(lua_Integer pos, lua_Integer len)
{
    if (pos >= 0)
        return pos;
    return pos < -len ? 0 : len + pos + 1;
}

/* The bytes of s[i..j] (arguments 1, 2 and 3), i defaulting to 1 and j
 * to i or to the end. */
static lua_Unsigned span_units(lua_State *L, bool j_is_i)
{
    lua_Integer len = (lua_Integer)str_len(L, 1);
    bool ok = true;
    lua_Integer i = lua_isnoneornil(L, 2) ? 1 : int_arg(L, 2, &ok);
    if (!ok)
        return 0;
    lua_Integer j = lua_isnoneornil(L, 3) ? (j_is_i ? i : -1) : int_arg(L, 3, &ok);
    if (!ok)
        return 0;
    i = str_pos(i, len);
    j = str_pos(j, len);
    if (i < 1)
        i = 1;
    if (j > len)
        j = len;
    return i <= j ? (lua_Unsigned)(j - i) + 1 : 0;
}

/* string.byte and utf8.codepoint: one value per byte of s[i..j]. */
static lua_Unsigned values_units(lua_State *L)
{
    return span_units(L, true);
}

/* utf8.len(s, i, j): the bytes it decodes. */
static lua_Unsigned utf8_len_units(lua_State *L)
{
    return span_units(L, false);
}

/* t[i..j] of table.unpack(t, i, j) (arguments ia and ia + 1), j
 * defaulting to #t. */
static lua_Unsigned elements(lua_State *L, int ia)
{
    bool ok = true;
    lua_Integer i = lua_isnoneornil(L, ia) ? 1 : int_arg(L, ia, &ok);
    if (!ok)
        return 0;
    lua_Integer j = lua_isnoneornil(L, ia + 1) ? table_len(L) : int_arg(L, ia + 1, &ok);
    return ok && j >= i ? add_sat((lua_Unsigned)j - (lua_Unsigned)i, 1) : 0;
}

static lua_Unsigned unpack_units(lua_State *L)
{
    return elements(L, 2);
}

/* table.concat(t, sep, i, j): converting and adding an element (128), and
 * copying the separator after it (the elements' own bytes are allocated,
 * which looks at the clock too). */
static lua_Unsigned concat_cost(lua_State *L)
{
    return mul_sat(elements(L, 3), add_sat(128, str_len(L, 2)));
}

/* string.format: a conversion per argument (64), and 4 per byte of the
 * strings it reads (the format, %s and %q). */
static lua_Unsigned format_cost(lua_State *L)
{
    return add_sat(mul_sat(args_units(L), 64), mul_sat(strings_units(L), 4));
}

#define GLOBALS LUA_GNAME
#define STRING_MT NULL /* the metatable of strings */

/* cost(L) counts units (of per instructions each) from the arguments. */
static const struct {
    const char *lib, *name;
    lua_Unsigned (*cost)(lua_State *L);
    lua_Unsigned per;
} costly[] = {
    {LUA_STRLIBNAME, "rep", rep_cost, 1},           {LUA_TABLIBNAME, "move", move_cost, 1},
    {LUA_TABLIBNAME, "insert", insert_cost, 1},     {LUA_TABLIBNAME, "remove", remove_cost, 1},
    {LUA_TABLIBNAME, "sort", sort_cost, 1},         {LUA_TABLIBNAME, "concat", concat_cost, 1},
    {LUA_TABLIBNAME, "unpack", unpack_units, 8},    {LUA_TABLIBNAME, "pack", args_units, 16},
    {LUA_STRLIBNAME, "byte", values_units, 4},      {LUA_STRLIBNAME, "char", args_units, 16},
    {LUA_STRLIBNAME, "upper", len_units, 8},        {LUA_STRLIBNAME, "lower", len_units, 8},
    {LUA_STRLIBNAME, "reverse", len_units, 8},      {LUA_STRLIBNAME, "format", format_cost, 1},
    {LUA_STRLIBNAME, "pack", strings_units, 4},     {LUA_STRLIBNAME, "packsize", len_units, 4},
    {LUA_STRLIBNAME, "unpack", len_units, 16},      {LUA_UTF8LIBNAME, "len", utf8_len_units, 4},
    {LUA_UTF8LIBNAME, "codepoint", values_units, 8}, {LUA_UTF8LIBNAME, "offset", len_units, 1},
    {LUA_UTF8LIBNAME, "char", args_units, 64},      {LUA_MATHLIBNAME, "max", args_units, 16},
    {LUA_MATHLIBNAME, "min", args_units, 16},       {GLOBALS, "tonumber", len_units, 1},
    /* Arithmetic on strings ("10" + 1) converts them in the string
     * metatable's metamethods. */
    {STRING_MT, "__add", strings_units, 1},         {STRING_MT, "__sub", strings_units, 1},
    {STRING_MT, "__mul", strings_units, 1},         {STRING_MT, "__div", strings_units, 1},
    {STRING_MT, "__mod", strings_units, 1},         {STRING_MT, "__pow", strings_units, 1},
    {STRING_MT, "__idiv", strings_units, 1},        {STRING_MT, "__unm", strings_units, 1},
};

/* The library functions behind the wrappers (the same in every state). */
static lua_CFunction costly_fn[sizeof(costly) / sizeof(costly[0])];

/* Upvalue: the index in costly[]. The library function runs in this
 * frame, so that its errors name the function and the caller's line. */
static int sb_costly(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(1));
    charge_work(L, mul_sat(costly[i].cost(L), costly[i].per), MDM__KILL_INSNS);
    return costly_fn[i](L);
}

static void wrap_costly(lua_State *L)
{
    for (size_t i = 0; i < sizeof(costly) / sizeof(costly[0]); i++) {
        if (costly[i].lib == STRING_MT) {
            lua_pushliteral(L, "");
            lua_getmetatable(L, -1);
            lua_remove(L, -2);
        } else {
            lua_getglobal(L, costly[i].lib);
        }
        lua_getfield(L, -1, costly[i].name);
        costly_fn[i] = lua_tocfunction(L, -1);
        lua_pop(L, 1);
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, sb_costly, 1);
        lua_setfield(L, -2, costly[i].name);
        lua_pop(L, 1);
    }
}

/* The wrappers below run the library function (upvalue 1) in their own
 * frame, so that its argument errors name the function and the caller's
 * line, as they do without the wrapper. */
static int call_library(lua_State *L)
{
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* setmetatable without finalizers: Lua runs __gc with hooks off, so a
 * looping finalizer could not be stopped. Lua 5.4 only marks objects for
 * finalization when the metatable already has __gc, so checking here is
 * enough. */
static int sb_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        if (lua_getfield(L, 2, "__gc") != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc is not allowed in policies");
        lua_pop(L, 1);
    }
    return call_library(L);
}

/* A full collection visits the whole heap: 1 instruction per 8 bytes. A
 * step of n KiB does that much work, at most a full cycle. */
static lua_Unsigned gc_cost(lua_State *L, const char *opt)
{
    lua_Unsigned heap = sandbox_of(L)->mem_used / 8;
    if (strcmp(opt, "collect") == 0)
        return heap;
    bool ok = false;
    lua_Integer kib = strcmp(opt, "step") == 0 ? int_arg(L, 2, &ok) : 0;
    if (!ok || kib <= 0)
        return 0;
    lua_Unsigned step = mul_sat((lua_Unsigned)kib, 1024 / 8);
    return step < heap ? step : heap;
}

/* collectgarbage with the options that cannot turn the collector off. */
static int sb_collectgarbage(lua_State *L)
{
    static const char *const allowed[] = {"collect", "count", "step", "isrunning", NULL};
    const char *opt = luaL_optstring(L, 1, "collect");
    for (size_t i = 0; allowed[i]; i++) {
        if (strcmp(opt, allowed[i]) == 0) {
            charge_work(L, gc_cost(L, opt), MDM__KILL_INSNS);
            return call_library(L);
        }
    }
    return luaL_error(L, "collectgarbage: option '%s' is not allowed in policies", opt);
}

/* Compiling a chunk: 32 instructions per byte of source. */
#define LOAD_PER_BYTE 32

/* The reader function given to load (upvalue 1), whose pieces are charged
 * before the compiler reads them. */
static int charged_reader(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_call(L, 0, 1);
    charge_work(L, mul_sat(str_len(L, -1), LOAD_PER_BYTE), MDM__KILL_INSNS);
    return 1;
}

/* load for text only: binary chunks could break the VM's invariants. */
static int sb_load(lua_State *L)
{
    const char *mode = luaL_optstring(L, 3, "t");
    if (strchr(mode, 'b') != NULL)
        return luaL_error(L, "load: binary chunks are not allowed in policies");
    if (lua_gettop(L) < 3)
        lua_settop(L, 3);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    if (lua_type(L, 1) == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
        lua_pushcclosure(L, charged_reader, 1);
        lua_replace(L, 1);
    }
    charge_work(L, mul_sat(str_len(L, 1), LOAD_PER_BYTE), MDM__KILL_INSNS);
    return call_library(L);
}

/* The continuation bytes utf8.codes' iterator skips after the character
 * at position (argument 2; 0 before the first) of s (argument 1): all of
 * them, however many. A long run is charged as the rest of the string. */
static lua_Unsigned codes_skip_cost(lua_State *L)
{
    size_t len = 0;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    bool ok = false;
    lua_Integer pos = int_arg(L, 2, &ok);
    if (s == NULL || !ok || pos < 0 || (lua_Unsigned)pos >= len)
        return 0;
    size_t i = (size_t)pos;
    for (size_t n = 0; i < len && ((unsigned char)s[i] & 0xC0) == 0x80; i++, n++) {
        if (n == 64)
            return len - (size_t)pos;
    }
    return i - (size_t)pos;
}

/* The iterator of utf8.codes, charged (upvalue 1: the library's). */
static int charged_codes_step(lua_State *L)
{
    charge_work(L, codes_skip_cost(L), MDM__KILL_INSNS);
    return call_library(L);
}

/* utf8.codes, whose iterator is charged. */
static int sb_codes(lua_State *L)
{
    int n = call_library(L);
    lua_pushvalue(L, -n);
    lua_pushcclosure(L, charged_codes_step, 1);
    lua_replace(L, -n - 1);
    return n;
}

int mdm__sandbox_stop(lua_State *L, int kill)
{
    mdm__sandbox_t *sb = sandbox_of(L);
    stop_call(sb, L, kill);
    return luaL_error(L, "%s", kill_text(sb->b.kill != MDM__KILL_NONE ? sb->b.kill : kill));
}

void mdm__sandbox_charge(lua_State *L, uint64_t insns)
{
    charge_work(L, insns, MDM__KILL_INSNS);
}

/* xpcall that runs the message handler after the stack has unwound, with
 * the hook active (the handler cannot see the failed frames, which nothing
 * in the sandbox could inspect anyway). */
static const char xpcall_src[] =
    "local pcall, pack, unpack = pcall, table.pack, table.unpack\n"
    "return function(f, msgh, ...)\n"
    "  local r = pack(pcall(f, ...))\n"
    "  if r[1] then return unpack(r, 1, r.n) end\n"
    "  return false, msgh(r[2])\n"
    "end\n";

static int sandbox_setup(lua_State *L)
{
    static const struct {
        const char *name;
        lua_CFunction open;
    } libs[] = {
        {LUA_GNAME, luaopen_base},           {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table},     {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},     {LUA_COLIBNAME, luaopen_coroutine},
        {LUA_OSLIBNAME, luaopen_os},
    };
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
        luaL_requiref(L, libs[i].name, libs[i].open, 1);
        lua_pop(L, 1);
    }
    /* Nothing that reads files or runs code outside the budgets. */
    static const char *const removed[] = {"dofile", "loadfile", "require"};
    for (size_t i = 0; i < sizeof(removed) / sizeof(removed[0]); i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, sb_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_getglobal(L, "collectgarbage");
    lua_pushcclosure(L, sb_collectgarbage, 1);
    lua_setglobal(L, "collectgarbage");
    lua_getglobal(L, "load");
    lua_pushcclosure(L, sb_load, 1);
    lua_setglobal(L, "load");
    lua_getglobal(L, LUA_UTF8LIBNAME);
    lua_getfield(L, -1, "codes");
    lua_pushcclosure(L, sb_codes, 1);
    lua_setfield(L, -2, "codes");
    lua_pop(L, 1);

    if (luaL_loadbufferx(L, xpcall_src, sizeof(xpcall_src) - 1, "=xpcall", "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);
    lua_setglobal(L, "xpcall");

    /* string.dump makes bytecode, which nothing may load. Pattern matching
     * counts its steps (the library's is one instruction however long it
     * runs). The string metatable's __index is this table, so s:find is
     * the same function. */
    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    mdm__lpattern_install(L, -1, &pattern_meter);
    lua_pop(L, 1);
    wrap_costly(L);

    /* os: time and dates only. */
    lua_getglobal(L, LUA_OSLIBNAME);
    lua_createtable(L, 0, 3);
    static const char *const os_kept[] = {"time", "clock", "date"};
    for (size_t i = 0; i < 3; i++) {
        lua_getfield(L, -2, os_kept[i]);
        lua_setfield(L, -2, os_kept[i]);
    }
    lua_setglobal(L, LUA_OSLIBNAME);
    lua_pop(L, 1);
    return 0;
}

int mdm__sandbox_open(mdm__sandbox_t *sb, size_t mem_max, char *err, size_t errlen)
{
    memset(sb, 0, sizeof(*sb));
    sb->mem_max = mem_max;
    lua_State *L = lua_newstate(sandbox_alloc, sb);
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state (memory limit %zu bytes)", mem_max);
        return MDM_ENOMEM;
    }
    sb->L = L;
    /* Installed before any code runs, so that every coroutine inherits it. */
    lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_STEP);
    lua_pushcfunction(L, sandbox_setup);
    mdm__budget_t saved;
    mdm__sandbox_begin(sb, L, 1000000000ull, 0, &saved);
    int status = lua_pcall(L, 0, 0, 0);
    int kill = mdm__sandbox_end(sb, L, &saved);
    if (status != LUA_OK) {
        mdm__sandbox_error(sb, L, status, kill, err, errlen);
        mdm__sandbox_close(sb);
        return MDM_ENOMEM;
    }
    return 0;
}

void mdm__sandbox_close(mdm__sandbox_t *sb)
{
    if (sb->L != NULL)
        lua_close(sb->L);
    sb->L = NULL;
}

void mdm__sandbox_begin(mdm__sandbox_t *sb, lua_State *L, uint64_t limit_ns, uint64_t insn_limit,
                        mdm__budget_t *saved)
{
    *saved = sb->b;
    uint64_t now = mdm_mono_ns();
    mdm__budget_t b = {.active = true, .start_ns = now, .limit_ns = limit_ns,
                       .insn_limit = insn_limit};
    b.deadline_ns = limit_ns ? now + limit_ns : 0;
    /* A nested budget never outlasts the one it runs in. */
    if (saved->active && saved->deadline_ns != 0 &&
        (b.deadline_ns == 0 || saved->deadline_ns < b.deadline_ns))
        b.deadline_ns = saved->deadline_ns;
    if (b.deadline_ns != 0) {
        b.cpu_allow_ns = b.deadline_ns > now ? b.deadline_ns - now : 0;
        cpu_ref_take(&b, now);
    }
    sb->b = b;
    lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_STEP);
}

int mdm__sandbox_end(mdm__sandbox_t *sb, lua_State *L, const mdm__budget_t *saved)
{
    int kill = sb->b.kill;
    uint64_t insns = sb->b.insns;
    sb->last_limit_ns = sb->b.limit_ns;
    sb->b = *saved;
    sb->b.insns += insns;
    /* A kill switched the hooks to every instruction; calm them down. */
    lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_STEP);
    if (L != sb->L)
        lua_sethook(sb->L, hook, LUA_MASKCOUNT, HOOK_STEP);
    return kill;
}

void mdm__sandbox_error(mdm__sandbox_t *sb, lua_State *L, int status, int kill, char *buf,
                        size_t len)
{
    /* A budget can be spent with the code still ending normally (a
     * coroutine that was killed, a pcall around an allocation): then there
     * is no error value. */
    const char *msg = status != LUA_OK && lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                          : NULL;
    /* Past the time budget big allocations fail, so a memory error
     * with that kill is about time. */
    if (kill == MDM__KILL_MEMORY || (status == LUA_ERRMEM && kill != MDM__KILL_TIME)) {
        /* The hook's own message names the line; "not enough memory" from
         * an allocation does not. */
        if (msg != NULL && strstr(msg, kill_text(MDM__KILL_MEMORY)) != NULL)
            snprintf(buf, len, "%s (%zu MiB)", msg, sb->mem_max >> 20);
        else
            snprintf(buf, len, "%s (%zu MiB)", kill_text(MDM__KILL_MEMORY), sb->mem_max >> 20);
    } else if (kill == MDM__KILL_TIME) {
        const char *m = msg && strstr(msg, kill_text(kill)) ? msg : kill_text(kill);
        snprintf(buf, len, "%s (%llu ms)", m, (unsigned long long)(sb->last_limit_ns / 1000000));
    } else if (kill != MDM__KILL_NONE) {
        const char *m = msg && strstr(msg, kill_text(kill)) ? msg : kill_text(kill);
        snprintf(buf, len, "%s", m);
    } else if (msg != NULL) {
        snprintf(buf, len, "%s", msg);
    } else if (status == LUA_OK) {
        snprintf(buf, len, "stopped");
    } else {
        snprintf(buf, len, "error object is a %s value", luaL_typename(L, -1));
    }
}
