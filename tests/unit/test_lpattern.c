/* Tests of lua/lpattern.c, the policy sandbox's pattern matching: every
 * case of tests/unit/lpattern_diff.lua (hand-written edges and thousands of
 * random patterns and subjects from a fixed seed) runs through the standard
 * library and through lpattern.c in a plain Lua state, and the results
 * (values, or error messages) must be the same. Also: costly patterns stop
 * at the step budget. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "sandbox_internal.h"
#include "util/misc.h"

static const char *source_dir(void)
{
    const char *src = getenv("MOONMDM_SOURCE_DIR");
    return src ? src : MOONMDM_SOURCE_DIR;
}

/* A plain state with lpattern.c's functions in the global table lp. */
static lua_State *state_with_lp(const mdm__lpattern_meter_t *meter)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    lua_newtable(L);
    mdm__lpattern_install(L, -1, meter);
    lua_setglobal(L, "lp");
    return L;
}

static void run_diff(lua_State *L, int rounds)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tests/unit/lpattern_diff.lua", source_dir());
    lua_pushinteger(L, rounds);
    lua_setglobal(L, "ROUNDS");
    if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 2, 0) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    lua_Integer cases = lua_tointeger(L, -2);
    lua_Integer ndiff = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= ndiff; i++) {
        lua_rawgeti(L, -1, i);
        print_message("%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    print_message("%lld cases, %lld differences\n", (long long)cases, (long long)ndiff);
    assert_true(cases > 60000);
    assert_int_equal(ndiff, 0);
}

static void test_same_as_lua(void **state)
{
    (void)state;
    lua_State *L = state_with_lp(NULL);
    run_diff(L, 4000);
    lua_close(L);
}

/* Runs chunk (which returns a number of seconds it may take, then a
 * function) and expects the function to fail with want. */
static void expect_stopped(lua_State *L, const char *chunk, const char *want)
{
    if (luaL_loadstring(L, chunk) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    uint64_t t0 = mdm_mono_ns();
    int status = lua_pcall(L, 0, 1, 0);
    double s = (double)(mdm_mono_ns() - t0) / 1e9;
    const char *msg = lua_tostring(L, -1);
    print_message("%.3f s: %s\n", s, msg ? msg : "(no message)");
    if (status == LUA_OK)
        fail_msg("%s: ran to the end", chunk);
    assert_non_null(strstr(msg, want));
    /* A slow build (valgrind; a sanitizer, MOONMDM_TEST_SLOWDOWN) may take
     * longer; the point is that it stops. */
    const char *slowdown = getenv("MOONMDM_TEST_SLOWDOWN");
    double limit = getenv("MOONMDM_SLOW_TESTS") ? 20.0 : 1.0 * (slowdown ? atof(slowdown) : 1.0);
    if (limit < 1.0)
        limit = 1.0;
    if (s > limit)
        fail_msg("%s: stopped only after %.3f s", chunk, s);
    lua_pop(L, 1);
}

/* Without a meter a call may take MDM__LPATTERN_STEPS_MAX steps: the
 * exponential and the quadratic patterns stop there, in well under a
 * second, with the budget error. */
static void test_costly_patterns_stop(void **state)
{
    (void)state;
    lua_State *L = state_with_lp(NULL);
    const char *text = MDM__LPATTERN_BUDGET_TEXT;
    expect_stopped(L, "return lp.find(('a'):rep(30), ('a?'):rep(30) .. ('a'):rep(30))", text);
    expect_stopped(L, "return lp.find(('a'):rep(1 << 20), '.-b')", text);
    expect_stopped(L, "return lp.match(('a'):rep(1 << 20), '(.-)%1b')", text);
    expect_stopped(L, "return lp.gsub(('a'):rep(1 << 20), 'a-b', '')", text);
    expect_stopped(L, "for x in lp.gmatch(('a'):rep(1 << 20), '.-b') do end", text);
    /* A cheap pattern over the same subject is fine. */
    if (luaL_dostring(L, "assert(lp.find(('a'):rep(1 << 20) .. 'b', 'b') == (1 << 20) + 1)\n"
                         "assert(select(2, lp.gsub(('ab'):rep(1 << 16), 'a(b)', '%1')) == 1 << 16)\n") !=
        LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    lua_close(L);
}

struct meter_log {
    uint64_t charged;
    int calls;
};
static struct meter_log mlog;

static uint64_t test_charge(lua_State *L, uint64_t used)
{
    mlog.charged += used;
    mlog.calls++;
    if (mlog.charged > 5000)
        luaL_error(L, "spent");
    return 100;
}

/* The meter is told of every step and can stop the matching. */
static void test_meter(void **state)
{
    (void)state;
    static const mdm__lpattern_meter_t meter = {.charge = test_charge};
    lua_State *L = state_with_lp(&meter);
    memset(&mlog, 0, sizeof(mlog));
    if (luaL_dostring(L, "assert(lp.find('xxxxxxxxab', 'ab') == 9)\n"
                         "assert(lp.find('xxxxxxxxab', 'a(b)') == 9)") != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    print_message("%d calls, %llu steps\n", mlog.calls, (unsigned long long)mlog.charged);
    assert_true(mlog.charged >= 10);
    assert_true(mlog.charged < 100);
    memset(&mlog, 0, sizeof(mlog));
    assert_int_not_equal(luaL_dostring(L, "return lp.find(('a'):rep(100), '.-b')"), LUA_OK);
    assert_non_null(strstr(lua_tostring(L, -1), "spent"));
    assert_true(mlog.charged > 5000 && mlog.charged < 5200);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_as_lua),
        cmocka_unit_test(test_costly_patterns_stop),
        cmocka_unit_test(test_meter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
