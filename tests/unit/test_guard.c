/* Tests of the failed sign-in guard (core/api/guard.c): the address key of
 * a client, and lockouts shared by the addresses that key together. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "api/guard.h"

static void assert_key(const char *remote, const char *want)
{
    char key[80];
    mdm_guard_addr_key(remote, key, sizeof(key));
    if (strcmp(key, want) != 0)
        fail_msg("key of %s: got %s, want %s", remote, key, want);
}

static void test_keys(void **state)
{
    (void)state;
    assert_key("192.0.2.7:5000", "addr:192.0.2.7");
    assert_key("192.0.2.7", "addr:192.0.2.7");
    assert_key("[2001:db8:1:2::5]:443", "addr:2001:db8:1:2::/64");
    assert_key("[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443", "addr:2001:db8:1:2::/64");
    assert_key("[2001:0DB8:0001:0002:0:0:0:5]:1", "addr:2001:db8:1:2::/64");
    assert_key("[::ffff:192.0.2.7]:5000", "addr:192.0.2.7");
    assert_key("[::1]:80", "addr:::/64");
    assert_key("[fe80::1%eth0]:80", "addr:fe80::/64");
    assert_key("2001:db8:1:2::5", "addr:2001:db8:1:2::/64");
    assert_key("not an address:1", "addr:not an address");
}

static mdm_guard_t *guard(void)
{
    mdm_guard_opts_t o = {.name = "test", .threshold = 3, .backoff_ms = 1000,
                          .backoff_max_ms = 60000, .window_ms = 60000};
    return mdm_guard_new(&o);
}

/* Fails once from each remote address; returns the lock of the key of
 * probe afterwards. */
static uint64_t fail_from(const char *const *remotes, size_t n, const char *probe)
{
    mdm_guard_t *g = guard();
    char key[80];
    for (size_t i = 0; i < n; i++) {
        mdm_guard_addr_key(remotes[i], key, sizeof(key));
        mdm_guard_fail(g, key, 1000);
    }
    mdm_guard_addr_key(probe, key, sizeof(key));
    uint64_t locked = mdm_guard_locked(g, key, 1001);
    mdm_guard_free(g);
    return locked;
}

static void test_ipv6_prefix_shares_lockout(void **state)
{
    (void)state;
    static const char *const rotating[] = {"[2001:db8:5:6::1]:1000", "[2001:db8:5:6::2]:1001",
                                           "[2001:db8:5:6:ffff::3]:1002"};
    assert_true(fail_from(rotating, 3, "[2001:db8:5:6::99]:2000") > 0);
    /* Another /64 is not locked. */
    assert_int_equal(fail_from(rotating, 3, "[2001:db8:5:7::1]:2000"), 0);
}

static void test_spellings_share_lockout(void **state)
{
    (void)state;
    static const char *const spellings[] = {"[2001:db8::1]:1", "[2001:0db8:0:0::1]:2",
                                            "[2001:DB8:0:0:0:0:0:1]:3"};
    assert_true(fail_from(spellings, 3, "[2001:db8::1]:4") > 0);
    static const char *const mapped[] = {"[::ffff:198.51.100.4]:1", "198.51.100.4:2",
                                         "[::ffff:c633:6404]:3"};
    assert_true(fail_from(mapped, 3, "198.51.100.4:9") > 0);
}

static void test_ipv4_unchanged(void **state)
{
    (void)state;
    static const char *const two[] = {"203.0.113.1:1", "203.0.113.2:1", "203.0.113.3:1"};
    assert_int_equal(fail_from(two, 3, "203.0.113.4:1"), 0);
    static const char *const one[] = {"203.0.113.1:1", "203.0.113.1:2", "203.0.113.1:3"};
    assert_true(fail_from(one, 3, "203.0.113.1:4") > 0);
}

/* Attempts in flight count as failures until they end: a burst gets no
 * more tries than attempts made one after another. */
static void test_attempts_in_flight(void **state)
{
    (void)state;
    mdm_guard_t *g = guard();
    const char *k = "addr:192.0.2.1";
    assert_true(mdm_guard_begin(g, k, 1000));
    assert_true(mdm_guard_begin(g, k, 1000));
    assert_true(mdm_guard_begin(g, k, 1000));
    assert_false(mdm_guard_begin(g, k, 1000));
    /* Two fail, one succeeds: the key is clear again. */
    mdm_guard_end(g, k);
    mdm_guard_fail(g, k, 1001);
    assert_false(mdm_guard_begin(g, k, 1001));
    mdm_guard_end(g, k);
    mdm_guard_fail(g, k, 1002);
    /* Two failures and one in flight: full. */
    assert_false(mdm_guard_begin(g, k, 1002));
    mdm_guard_end(g, k);
    mdm_guard_success(g, k);
    assert_int_equal(mdm_guard_locked(g, k, 1003), 0);
    assert_true(mdm_guard_begin(g, k, 1003));
    mdm_guard_end(g, k);
    /* A locked key whose lock has run out gets one try at a time. */
    const char *u = "user:bob";
    for (int i = 0; i < 3; i++)
        mdm_guard_fail(g, u, 2000);
    assert_true(mdm_guard_locked(g, u, 2001) > 0);
    assert_int_equal(mdm_guard_locked(g, u, 3001), 0);
    assert_true(mdm_guard_begin(g, u, 3001));
    assert_false(mdm_guard_begin(g, u, 3001));
    mdm_guard_end(g, u);
    /* Another key is not affected. */
    assert_true(mdm_guard_begin(g, "addr:192.0.2.2", 1000));
    mdm_guard_free(g);
}

/* Successful sign-ins of users u<from> .. u<to - 1>, one a millisecond
 * from t0. */
static void sign_ins_succeed(mdm_guard_t *g, int from, int to, int64_t t0)
{
    for (int i = from; i < to; i++) {
        char user[32];
        snprintf(user, sizeof(user), "user:u%d", i);
        assert_true(mdm_guard_begin(g, user, t0 + i - from));
        mdm_guard_end(g, user);
        mdm_guard_success(g, user);
    }
}

/* A full table makes room by dropping the keys that hold nothing (no
 * failure in the window, no lock, no attempt in flight), not the lockouts:
 * a site where many users sign in successfully must not forget that an
 * address is locked. (Before, a full table was cleared.) */
static void test_full_table_keeps_lockouts(void **state)
{
    (void)state;
    mdm_guard_opts_t o = {.name = "test", .threshold = 3, .backoff_ms = 60000,
                          .backoff_max_ms = 600000, .window_ms = 60000, .max_keys = 8};
    mdm_guard_t *g = mdm_guard_new(&o);
    for (int i = 0; i < 3; i++)
        mdm_guard_fail(g, "addr:192.0.2.66", 1000);
    assert_true(mdm_guard_locked(g, "addr:192.0.2.66", 1001) > 0);
    /* 100 sign-ins of other users and addresses that succeed. */
    sign_ins_succeed(g, 0, 100, 2000);
    assert_true(mdm_guard_locked(g, "addr:192.0.2.66", 3000) > 0);
    /* A key with failures in its window is kept too. */
    mdm_guard_fail(g, "user:mallory", 3000);
    mdm_guard_fail(g, "user:mallory", 3000);
    sign_ins_succeed(g, 100, 200, 3000);
    assert_int_equal(mdm_guard_locked(g, "user:mallory", 4000), 0);
    mdm_guard_fail(g, "user:mallory", 4000);
    assert_true(mdm_guard_locked(g, "user:mallory", 4001) > 0);
    /* Once only live keys fill the table, it is cleared as before. */
    for (int i = 0; i < 20; i++) {
        char addr[32];
        snprintf(addr, sizeof(addr), "addr:198.51.100.%d", i);
        mdm_guard_fail(g, addr, 5000);
    }
    mdm_guard_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_ipv6_prefix_shares_lockout),
        cmocka_unit_test(test_spellings_share_lockout),
        cmocka_unit_test(test_ipv4_unchanged),
        cmocka_unit_test(test_attempts_in_flight),
        cmocka_unit_test(test_full_table_keeps_lockouts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
