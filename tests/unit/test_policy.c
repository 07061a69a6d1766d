/* Tests of the Lua policy engine (lua/): loading and validation, every
 * hook with good and bad decisions, budgets and the sandbox, the mdm module
 * (commands, kv in a real LMDB store, passwords, profiles), reload and the
 * reference counting of revisions, the decision log, eval, the policy test
 * runner, and the Lua samples of docs/POLICY.md. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <crypt.h>
#include <errno.h>
#include <ftw.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/metrics.h"
#include "mdm/cmdschema.h"
#include "mdm/mdm.h"
#include "policy.h"
#include "sandbox_internal.h"
#include "server.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"
#include "util/plistjson.h"

struct fx {
    char dir[64];        /* temporary directory */
    char pol[128];       /* the policy directory in it */
    char db[128];        /* the store directory in it */
    mdm_store_t *store;
};

#define assert_rc(got, want)                                                              \
    do {                                                                                  \
        int g_ = (got), w_ = (want);                                                      \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %d (%s), want %d (%s)", #got, g_, mdm_errname(g_), w_,      \
                     mdm_errname(w_));                                                    \
    } while (0)

#define assert_contains(hay, needle)                                                      \
    do {                                                                                  \
        const char *h_ = (hay), *n_ = (needle);                                           \
        if (h_ == NULL || strstr(h_, n_) == NULL)                                         \
            fail_msg("%s: \"%s\" does not contain \"%s\"", #hay, h_ ? h_ : "(null)", n_); \
    } while (0)

#define assert_status(d, want)                                                            \
    do {                                                                                  \
        if ((int)(d).status != (int)(want))                                               \
            fail_msg("status %s, want %s (error: %s)", mdm_policy_status_name((d).status), \
                     mdm_policy_status_name(want), (d).error);                           \
    } while (0)

static const char *lib_dir(void)
{
    const char *src = getenv("MOONMDM_SOURCE_DIR");
    static char buf[512];
    snprintf(buf, sizeof(buf), "%s/lua/lib", src ? src : MOONMDM_SOURCE_DIR);
    return buf;
}

static const char *source_dir(void)
{
    const char *src = getenv("MOONMDM_SOURCE_DIR");
    return src ? src : MOONMDM_SOURCE_DIR;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state)
{
    struct fx *fx = mdm_calloc(1, sizeof(*fx));
    strcpy(fx->dir, "/tmp/moonmdm-policy-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        mdm_free(fx);
        return -1;
    }
    snprintf(fx->pol, sizeof(fx->pol), "%s/pol", fx->dir);
    snprintf(fx->db, sizeof(fx->db), "%s/db", fx->dir);
    mkdir(fx->pol, 0700);
    mdm_store_config_t sc = {.path = fx->db, .sync = false,
                             .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_err_t err = {0};
    if (mdm_store_open(&mdm_store_lmdb, &sc, &fx->store, &err) != 0) {
        fprintf(stderr, "store: %s\n", err.msg);
        return -1;
    }
    alarm(110);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    alarm(0);
    if (fx->store)
        mdm_store_close(fx->store);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    mdm_free(fx);
    mdm_metrics_reset();
    return 0;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char *path = mdm_sprintf("%s/%s", dir, name);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    mkdir(path, 0700);
    *slash = '/';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    mdm_free(path);
}

static void remove_file(const char *dir, const char *name)
{
    char *path = mdm_sprintf("%s/%s", dir, name);
    unlink(path);
    mdm_free(path);
}

static mdm_policy_settings_t settings(struct fx *fx, bool with_store)
{
    mdm_policy_settings_t s = {.dir = fx->pol, .lib_dir = lib_dir(),
                               .store = with_store ? fx->store : NULL,
                               .decision_log = with_store};
    return s;
}

/* Loads the policy dir (server mode with the store); fails the test with
 * the error when it does not load. */
static mdm_policy_t *load_ok(struct fx *fx, const mdm_policy_settings_t *s)
{
    mdm_policy_t *p = NULL;
    mdm_policy_error_t e;
    int rc = mdm_policy_load(s, &p, &e);
    if (rc != 0) {
        char text[1400];
        mdm_policy_error_format(&e, NULL, text, sizeof(text));
        fail_msg("policy did not load: %s", text);
    }
    (void)fx;
    return p;
}

static mdm_policy_t *load_text(struct fx *fx, const char *init)
{
    write_file(fx->pol, "init.lua", init);
    mdm_policy_settings_t s = settings(fx, true);
    return load_ok(fx, &s);
}

/* Loads and expects failure; returns the formatted error in buf. */
static int load_fail(struct fx *fx, const char *init, mdm_policy_error_t *e)
{
    if (init != NULL)
        write_file(fx->pol, "init.lua", init);
    mdm_policy_settings_t s = settings(fx, true);
    mdm_policy_t *p = NULL;
    int rc = mdm_policy_load(&s, &p, e);
    if (rc == 0) {
        mdm_policy_release(p);
        fail_msg("the policy loaded, but should not have");
    }
    return rc;
}

static plist_t enrollment_record(void)
{
    plist_t e = plist_new_dict();
    mdm_pl_set_str(e, "type", "device");
    mdm_pl_set_str(e, "device_id", "UDID-1");
    mdm_pl_set_str(e, "user", "alice");
    mdm_pl_set_int(e, "enrolled_at", 1700000000000);
    mdm_pl_set_int(e, "last_seen_at", 1700000500000);
    mdm_pl_set_uint(e, "token_updates", 3);
    mdm_pl_set_bool(e, "new_enrollment", false);
    return e;
}

static plist_t device_record(void)
{
    plist_t d = plist_new_dict();
    mdm_pl_set_str(d, "serial", "SERIAL1");
    mdm_pl_set_str(d, "model", "iPad13,1");
    mdm_pl_set_str(d, "os_version", "17.4");
    mdm_pl_set_str(d, "device_name", "Lab iPad");
    plist_t groups = plist_new_array();
    plist_array_append_item(groups, plist_new_string("old-group"));
    plist_dict_set_item(d, "groups", groups);
    plist_t tags = plist_new_array();
    plist_array_append_item(tags, plist_new_string("lab"));
    plist_dict_set_item(d, "tags", tags);
    plist_t facts = plist_new_dict();
    mdm_pl_set_str(facts, "OSVersion", "17.4");
    mdm_pl_set_bool(facts, "IsSupervised", true);
    plist_dict_set_item(d, "facts", facts);
    return d;
}

typedef struct dev_fx {
    plist_t e, d, installed;
    mdm_policy_device_t dev;
} dev_fx_t;

static void dev_init(dev_fx_t *f)
{
    f->e = enrollment_record();
    f->d = device_record();
    f->installed = plist_new_dict();
    unsigned char h[32];
    memset(h, 0xab, sizeof(h));
    plist_dict_set_item(f->installed, "com.example.wifi", plist_new_data((const char *)h, 32));
    f->dev = (mdm_policy_device_t){.eid = "UDID-1", .enrollment = f->e, .device = f->d,
                                   .installed = f->installed};
}

static void dev_free(dev_fx_t *f)
{
    plist_free(f->e);
    plist_free(f->d);
    plist_free(f->installed);
}

static plist_t msg_of(const char *type)
{
    plist_t m = plist_new_dict();
    mdm_pl_set_str(m, "MessageType", type);
    mdm_pl_set_str(m, "UDID", "UDID-1");
    return m;
}

/* A hook call in a write transaction of the store. */
struct txn_call {
    mdm_policy_t *p;
    int hook;
    const mdm_policy_device_t *dev;
    plist_t a;
    mdm_policy_decision_t *out;
    int rc;
};

static int txn_call_fn(mdm_txn_t *txn, void *arg)
{
    struct txn_call *c = arg;
    switch (c->hook) {
    case MDM_POLICY_HOOK_CHECKIN:
        c->rc = mdm_policy_checkin(c->p, txn, "req-1", c->dev, c->a, c->out);
        break;
    case MDM_POLICY_HOOK_RESULT:
        c->rc = mdm_policy_result(c->p, txn, "req-1", c->dev, c->a, c->out);
        break;
    default:
        c->rc = mdm_policy_groups(c->p, txn, "req-1", c->dev, c->out);
        break;
    }
    return c->rc;
}

static int call_in_txn(struct fx *fx, mdm_policy_t *p, int hook, const mdm_policy_device_t *dev,
                       plist_t a, mdm_policy_decision_t *out)
{
    struct txn_call c = {.p = p, .hook = hook, .dev = dev, .a = a, .out = out};
    return mdm_store_update(fx->store, txn_call_fn, &c);
}

static const char *cmd_str(plist_t cmds, uint32_t i, const char *key)
{
    plist_t c = plist_array_get_item(cmds, i);
    return c ? mdm_pl_str(c, key) : NULL;
}

/* ---- loading and validation ------------------------------------------------------ */

static void test_load_errors(void **state)
{
    struct fx *fx = *state;
    mdm_policy_error_t e;

    /* No init.lua. */
    assert_rc(load_fail(fx, NULL, &e), MDM_ENOTFOUND);
    assert_string_equal(e.file, "init.lua");

    /* A syntax error names file and line. */
    assert_rc(load_fail(fx, "local x = 1\n\nreturn {\n  checkin = function(d, m\nend }\n", &e),
              MDM_EPOLICY);
    assert_string_equal(e.file, "init.lua");
    assert_int_equal(e.line, 5);

    /* An error at load time, in a module. */
    write_file(fx->pol, "rules.lua", "local M = {}\nerror('broken rules')\nreturn M\n");
    assert_rc(load_fail(fx, "local r = require('rules')\nreturn {}\n", &e), MDM_EPOLICY);
    assert_string_equal(e.file, "rules.lua");
    assert_int_equal(e.line, 2);
    assert_contains(e.message, "broken rules");
    remove_file(fx->pol, "rules.lua");

    /* A syntax error in a file nothing requires is found too. */
    write_file(fx->pol, "unused.lua", "return {\n\n  x = = 1 }\n");
    assert_rc(load_fail(fx, "return {}\n", &e), MDM_EPOLICY);
    assert_string_equal(e.file, "unused.lua");
    assert_int_equal(e.line, 3);
    remove_file(fx->pol, "unused.lua");

    /* init.lua must return a table of known hooks. */
    assert_rc(load_fail(fx, "return 42\n", &e), MDM_EPOLICY);
    assert_contains(e.message, "must return a table");
    assert_rc(load_fail(fx, "return { checkn = function() end }\n", &e), MDM_EPOLICY);
    assert_contains(e.message, "unknown hook \"checkn\"");
    assert_contains(e.message, "did you mean \"checkin\"");
    assert_rc(load_fail(fx, "return { groups = 'all' }\n", &e), MDM_EPOLICY);
    assert_contains(e.message, "must be a function");
    assert_rc(load_fail(fx, "return { name = 'no spaces allowed' }\n", &e), MDM_EPOLICY);
    assert_contains(e.message, "name must be");

    /* self_test runs at load and must pass. */
    assert_rc(load_fail(fx, "return {\n self_test = function()\n  assert(1 == 2, 'math broke')\n end }\n",
                        &e),
              MDM_EPOLICY);
    assert_contains(e.message, "self_test failed");
    assert_contains(e.message, "math broke");
    assert_int_equal(e.line, 3);
    assert_rc(load_fail(fx, "return { self_test = function() return false end }\n", &e),
              MDM_EPOLICY);
    assert_contains(e.message, "must return true");

    /* A profiles table must name stored profiles. */
    assert_rc(load_fail(fx, "return { profiles = { ['*'] = { 'com.example.missing' } } }\n", &e),
              MDM_EPOLICY);
    assert_contains(e.message, "com.example.missing");
    assert_contains(e.message, "not in the store");
    assert_rc(load_fail(fx, "return { profiles = { sales = 'com.x' } }\n", &e), MDM_EPOLICY);
    assert_contains(e.message, "list of profile identifiers");

    /* A missing directory. */
    mdm_policy_settings_t s = settings(fx, false);
    s.dir = "/nonexistent/moonmdm-policy";
    mdm_policy_t *p = NULL;
    assert_rc(mdm_policy_load(&s, &p, &e), MDM_ENOTFOUND);
    assert_null(p);
    char text[1400];
    mdm_policy_error_format(&e, s.dir, text, sizeof(text));
    assert_contains(text, "no such directory");
}

static void test_revision(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *a = load_text(fx, "return {}\n");
    mdm_policy_t *b = load_text(fx, "return {}\n");
    assert_int_equal(strlen(mdm_policy_revision(a)), 64);
    assert_string_equal(mdm_policy_revision(a), mdm_policy_revision(b));
    mdm_policy_t *c = load_text(fx, "return {} -- changed\n");
    assert_string_not_equal(mdm_policy_revision(a), mdm_policy_revision(c));
    /* Another file counts too; tests/ does not. */
    write_file(fx->pol, "tests/x_test.lua", "-- not part of the set\n");
    mdm_policy_t *d = load_text(fx, "return {} -- changed\n");
    assert_string_equal(mdm_policy_revision(c), mdm_policy_revision(d));
    write_file(fx->pol, "extra.lua", "return 1\n");
    mdm_policy_t *e = load_text(fx, "return {} -- changed\n");
    assert_string_not_equal(mdm_policy_revision(d), mdm_policy_revision(e));
    assert_int_equal(e->files.n, 2);
    assert_string_equal(e->files.v[0], "extra.lua");
    assert_string_equal(e->files.v[1], "init.lua");
    assert_string_equal(mdm_policy_name(e), "default");
    mdm_policy_release(a);
    mdm_policy_release(b);
    mdm_policy_release(c);
    mdm_policy_release(d);
    mdm_policy_release(e);
}

/* ---- hooks --------------------------------------------------------------------------- */

static const char good_policy[] =
    "local M = { name = 'good' }\n"
    "function M.authenticate(req)\n"
    "  if req.username == 'alice' and req.password == 'pw' then\n"
    "    return { allow = true, user = 'alice', groups = { 'staff', 'staff', 'vpn' }, reason = 'ok' }\n"
    "  end\n"
    "  return { allow = false, reason = 'nope' }\n"
    "end\n"
    "function M.scep(csr, ctx)\n"
    "  if csr.cn == 'slow' then return { decision = 'pending', reason = 'manual' } end\n"
    "  if ctx.challenge_ok then return 'issue' end\n"
    "  return 'deny'\n"
    "end\n"
    "function M.checkin(device, msg)\n"
    "  if msg.MessageType == 'Authenticate' then\n"
    "    return { reject = device.serial == 'SERIAL1', reason = 'blocked' }\n"
    "  end\n"
    "  return { commands = { mdm.command.DeviceLock{ PIN = '123456', Message = 'Lost' },\n"
    "                        mdm.command.InstallProfile{ Payload = '\\0\\1binary' },\n"
    "                        mdm.command.DeviceInformation{ Queries = { 'OSVersion' } } } }\n"
    "end\n"
    "function M.groups(device)\n"
    "  return { 'all', device.model:match('^iPad') and 'ipads' or 'phones' }\n"
    "end\n"
    "function M.profiles(device, groups)\n"
    "  local out = {}\n"
    "  for _, g in ipairs(groups) do out[#out + 1] = 'com.example.' .. g end\n"
    "  return out\n"
    "end\n"
    "function M.connect(device, report)\n"
    "  if report.Status == 'Idle' then return { commands = { mdm.command.ProfileList{} } } end\n"
    "end\n"
    "function M.result(device, result)\n"
    "  return { facts = { os = result.QueryResponses.OSVersion, n = 3, ok = true, list = { 1, 2 } },\n"
    "           commands = {} }\n"
    "end\n"
    "return M\n";

/* With a pwcheck (the server), verify of a new pair stops the hook even
 * under pcall; the hash is made by mdm_policy_pwcheck_work and the next
 * call has the result. Without one, verify hashes at once. */
static const char pwcheck_policy[] =
    "local h = mdm.password.hash('secret', 'sha512')\n"
    "return { authenticate = function(req)\n"
    "  local ok, r = pcall(mdm.password.verify, req.password, h)\n"
    "  return { allow = ok and r == true, user = 'u', reason = tostring(ok) }\n"
    "end }\n";

static void test_password_verify_deferred(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx, pwcheck_policy);
    mdm_policy_decision_t d;
    mdm_policy_pwcheck_t *pw = mdm_policy_pwcheck_new();
    mdm_policy_auth_req_t req = {.username = "u", .password = "secret", .pwcheck = pw};
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_FAILED);
    assert_false(d.allow);
    assert_true(mdm_policy_pwcheck_pending(pw));
    mdm_policy_decision_free(&d);
    mdm_policy_pwcheck_work(pw);
    assert_false(mdm_policy_pwcheck_pending(pw));
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_true(d.allow);
    assert_string_equal(d.reason, "true");
    assert_false(mdm_policy_pwcheck_pending(pw));
    mdm_policy_decision_free(&d);
    /* Another password is another pair. */
    req.password = "wrong";
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_FAILED);
    assert_true(mdm_policy_pwcheck_pending(pw));
    mdm_policy_decision_free(&d);
    mdm_policy_pwcheck_work(pw);
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_false(d.allow);
    mdm_policy_decision_free(&d);
    mdm_policy_pwcheck_free(pw);
    /* Without a pwcheck: at once. */
    req.pwcheck = NULL;
    req.password = "secret";
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_true(d.allow);
    mdm_policy_decision_free(&d);
    mdm_policy_release(p);
}

static void test_hooks_good(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx, good_policy);
    assert_string_equal(mdm_policy_name(p), "good");
    mdm_policy_decision_t d;

    mdm_policy_auth_req_t req = {.username = "alice", .password = "pw", .remote_addr = "1.2.3.4:5"};
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_true(d.allow);
    assert_string_equal(d.user, "alice");
    assert_int_equal(d.groups.n, 2); /* duplicates dropped */
    assert_string_equal(d.groups.v[1], "vpn");
    assert_string_equal(d.reason, "ok");
    mdm_policy_decision_free(&d);
    req.password = "wrong";
    assert_rc(mdm_policy_authenticate(p, NULL, "r1", &req, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_false(d.allow);
    assert_null(d.user);
    mdm_policy_decision_free(&d);

    plist_t csr = plist_new_dict(), ctx = plist_new_dict();
    mdm_pl_set_str(csr, "cn", "dev");
    assert_rc(mdm_policy_scep(p, NULL, NULL, csr, ctx, &d), 0);
    assert_int_equal(d.scep, MDM_POLICY_SCEP_DENY);
    mdm_policy_decision_free(&d);
    mdm_pl_set_bool(ctx, "challenge_ok", true);
    mdm_policy_scep(p, NULL, NULL, csr, ctx, &d);
    assert_int_equal(d.scep, MDM_POLICY_SCEP_ISSUE);
    mdm_policy_decision_free(&d);
    mdm_pl_set_str(csr, "cn", "slow");
    mdm_policy_scep(p, NULL, NULL, csr, ctx, &d);
    assert_int_equal(d.scep, MDM_POLICY_SCEP_PENDING);
    assert_string_equal(d.reason, "manual");
    mdm_policy_decision_free(&d);
    plist_free(csr);
    plist_free(ctx);

    dev_fx_t f;
    dev_init(&f);
    plist_t auth = msg_of("Authenticate"), tu = msg_of("TokenUpdate");
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, auth, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_true(d.reject);
    assert_string_equal(d.reason, "blocked");
    assert_int_equal(plist_array_get_size(d.commands), 0);
    mdm_policy_decision_free(&d);
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, tu, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_false(d.reject);
    assert_int_equal(plist_array_get_size(d.commands), 3);
    assert_string_equal(cmd_str(d.commands, 0, "RequestType"), "DeviceLock");
    assert_string_equal(cmd_str(d.commands, 0, "PIN"), "123456");
    assert_string_equal(cmd_str(d.commands, 0, "Message"), "Lost");
    size_t plen = 0;
    const unsigned char *payload = mdm_pl_data(plist_array_get_item(d.commands, 1), "Payload", &plen);
    assert_non_null(payload);
    assert_int_equal(plen, 8);
    assert_memory_equal(payload, "\0\1binary", 8);
    plist_t q = plist_dict_get_item(plist_array_get_item(d.commands, 2), "Queries");
    assert_int_equal(plist_get_node_type(q), PLIST_ARRAY);
    assert_int_equal(mdm_command_validate(plist_array_get_item(d.commands, 2), NULL), 0);
    mdm_policy_decision_free(&d);

    assert_rc(mdm_policy_groups(p, NULL, NULL, &f.dev, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_int_equal(d.names.n, 2);
    assert_string_equal(d.names.v[0], "all");
    assert_string_equal(d.names.v[1], "ipads");
    mdm_strlist_t groups = d.names;
    d.names = (mdm_strlist_t){0};
    mdm_policy_decision_free(&d);
    assert_rc(mdm_policy_profiles(p, NULL, NULL, &f.dev, &groups, &d), 0);
    assert_int_equal(d.names.n, 2);
    assert_string_equal(d.names.v[1], "com.example.ipads");
    mdm_policy_decision_free(&d);
    mdm__strlist_free(&groups);

    plist_t report = plist_new_dict();
    mdm_pl_set_str(report, "Status", "Idle");
    assert_rc(mdm_policy_connect(p, NULL, NULL, &f.dev, report, &d), 0);
    assert_int_equal(plist_array_get_size(d.commands), 1);
    assert_string_equal(cmd_str(d.commands, 0, "RequestType"), "ProfileList");
    mdm_policy_decision_free(&d);
    mdm_pl_set_str(report, "Status", "Acknowledged");
    mdm_policy_connect(p, NULL, NULL, &f.dev, report, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_int_equal(plist_array_get_size(d.commands), 0);
    mdm_policy_decision_free(&d);

    plist_t res = plist_new_dict(), qr = plist_new_dict();
    mdm_pl_set_str(qr, "OSVersion", "17.5");
    plist_dict_set_item(res, "QueryResponses", qr);
    assert_rc(mdm_policy_result(p, NULL, NULL, &f.dev, res, &d), 0);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(mdm_pl_str(d.facts, "os"), "17.5");
    assert_int_equal(mdm_pl_int(d.facts, "n", 0), 3);
    assert_true(mdm_pl_bool(d.facts, "ok", false));
    assert_int_equal(plist_array_get_size(plist_dict_get_item(d.facts, "list")), 2);
    mdm_policy_decision_free(&d);

    plist_free(report);
    plist_free(res);
    plist_free(auth);
    plist_free(tu);
    dev_free(&f);
    mdm_policy_release(p);
}

/* One hook returning something malformed: checks the fail-closed result. */
static void expect_bad(struct fx *fx, const char *hook_src, int hook, const char *msgtype,
                       const char *want)
{
    char *src = mdm_sprintf("return {\n  %s = %s\n}\n", mdm_policy_hook_name(hook), hook_src);
    mdm_policy_t *p = load_text(fx, src);
    mdm_free(src);
    mdm_policy_decision_t d;
    dev_fx_t f;
    dev_init(&f);
    plist_t m = msg_of(msgtype ? msgtype : "TokenUpdate");
    mdm_policy_auth_req_t req = {.username = "u", .password = "p"};
    mdm_strlist_t groups = {0};
    switch (hook) {
    case MDM_POLICY_HOOK_AUTHENTICATE: mdm_policy_authenticate(p, NULL, NULL, &req, &d); break;
    case MDM_POLICY_HOOK_SCEP: mdm_policy_scep(p, NULL, NULL, m, NULL, &d); break;
    case MDM_POLICY_HOOK_CHECKIN: call_in_txn(fx, p, hook, &f.dev, m, &d); break;
    case MDM_POLICY_HOOK_GROUPS: mdm_policy_groups(p, NULL, NULL, &f.dev, &d); break;
    case MDM_POLICY_HOOK_PROFILES: mdm_policy_profiles(p, NULL, NULL, &f.dev, &groups, &d); break;
    case MDM_POLICY_HOOK_CONNECT: mdm_policy_connect(p, NULL, NULL, &f.dev, m, &d); break;
    default: mdm_policy_result(p, NULL, NULL, &f.dev, m, &d); break;
    }
    assert_status(d, MDM_POLICY_FAILED);
    assert_contains(d.error, want);
    assert_contains(d.error, "init.lua:2");
    /* Fail closed. */
    assert_false(d.allow);
    assert_null(d.user);
    assert_int_equal(d.scep, MDM_POLICY_SCEP_DENY);
    assert_int_equal(d.reject, hook == MDM_POLICY_HOOK_CHECKIN && msgtype != NULL &&
                                   strcmp(msgtype, "Authenticate") == 0);
    assert_int_equal(plist_array_get_size(d.commands), 0);
    assert_int_equal(plist_dict_get_size(d.facts), 0);
    assert_int_equal(d.names.n, 0);
    assert_int_equal(d.groups.n, 0);
    mdm_policy_decision_free(&d);
    plist_free(m);
    dev_free(&f);
    mdm_policy_release(p);
}

static void test_hooks_bad_returns(void **state)
{
    struct fx *fx = *state;
    int A = MDM_POLICY_HOOK_AUTHENTICATE, S = MDM_POLICY_HOOK_SCEP, C = MDM_POLICY_HOOK_CHECKIN,
        G = MDM_POLICY_HOOK_GROUPS, P = MDM_POLICY_HOOK_PROFILES, N = MDM_POLICY_HOOK_CONNECT,
        R = MDM_POLICY_HOOK_RESULT;
    expect_bad(fx, "function() return 'yes' end", A, NULL, "returned a bad decision");
    expect_bad(fx, "function() return { allow = 'true' } end", A, NULL, "allow must be true or false");
    expect_bad(fx, "function() return { allow = true, groups = { 1 } } end", A, NULL, "groups[1]");
    expect_bad(fx, "function() return { alow = true } end", A, NULL,
               "unknown field \"alow\" (did you mean \"allow\"?)");
    expect_bad(fx, "function() return { allow = true, user = 7 } end", A, NULL, "user must be a string");
    /* A NUL byte would cut the string where C reads it: "alice" would be
     * allowed for "alice\0admin". */
    expect_bad(fx, "function() return { allow = true, user = 'alice\\0admin' } end", A, NULL,
               "user must not contain a NUL byte");
    expect_bad(fx, "function() return { reject = true, reason = 'no\\0t this' } end", C, NULL,
               "reason must not contain a NUL byte");
    expect_bad(fx, "function() return { decision = 'deny', reason = '\\0' } end", S, NULL,
               "reason must not contain a NUL byte");
    expect_bad(fx, "function() return 'maybe' end", S, NULL, "\"issue\", \"deny\" or \"pending\"");
    expect_bad(fx, "function() return { decision = 42 } end", S, NULL, "decision must be");
    expect_bad(fx, "function() return { commands = { { RequestType = 'DeviceLock' } } } end", C,
               "Authenticate", "commands[1]: expected a command made by mdm.command");
    expect_bad(fx, "function() return { commands = { { RequestType = 'DeviceLock' } } } end", C,
               "TokenUpdate", "made by mdm.command");
    expect_bad(fx, "function() return { commands = mdm.command.ProfileList{} } end", C, NULL,
               "wrap it in { }");
    expect_bad(fx, "function() local c = mdm.command.DeviceLock{ PIN = '1' }; c.PIN = {}\n"
                   "  return { commands = { c } } end",
               C, "Authenticate", "DeviceLock.PIN");
    expect_bad(fx, "function() return { comands = {} } end", C, NULL, "did you mean \"commands\"");
    expect_bad(fx, "function() return true end", C, NULL, "expected nil or");
    expect_bad(fx, "function() end", G, NULL, "must be a list of strings");
    expect_bad(fx, "function() return { 'a', '' } end", G, NULL, "[2] must be a string");
    expect_bad(fx, "function() return 'all' end", P, NULL, "must be a list of strings");
    expect_bad(fx, "function() local c = {}\n  for i = 1, 101 do c[i] = mdm.command.ProfileList{} end\n"
                   "  return { commands = c } end",
               N, NULL, "more than 100 commands");
    expect_bad(fx, "function() return { facts = { 1, 2 } } end", R, NULL, "not a list");
    expect_bad(fx, "function() return { facts = { f = print } } end", R, NULL,
               "facts.f: a function value cannot be converted");
}

static void test_hooks_errors_and_metrics(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx, "return {\n"
                                    "  groups = function(device)\n"
                                    "    error('no group for ' .. device.serial)\n"
                                    "  end,\n"
                                    "  connect = function() local t = nil; return t.x end,\n"
                                    "}\n");
    mdm_metric_t *m_err = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_calls_total",
                                     "hook=\"groups\",outcome=\"error\"", NULL);
    int64_t before = mdm_metric_value(m_err);
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    assert_rc(mdm_policy_groups(p, NULL, "rq", &f.dev, &d), 0);
    assert_status(d, MDM_POLICY_FAILED);
    assert_string_equal(d.error, "init.lua:3: no group for SERIAL1");
    assert_int_equal(d.names.n, 0);
    mdm_policy_decision_free(&d);
    assert_int_equal(mdm_metric_value(m_err), before + 1);
    mdm_policy_connect(p, NULL, NULL, &f.dev, NULL, &d);
    assert_status(d, MDM_POLICY_FAILED);
    assert_contains(d.error, "init.lua:5: attempt to index a nil value");
    mdm_policy_decision_free(&d);

    /* Absent hooks say so, with the fail-closed defaults. */
    plist_t m = msg_of("Authenticate");
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, m, &d), 0);
    assert_status(d, MDM_POLICY_ABSENT);
    assert_false(d.reject);
    mdm_policy_decision_free(&d);
    plist_free(m);
    mdm_policy_auth_req_t req = {.username = "x"};
    mdm_policy_authenticate(p, NULL, NULL, &req, &d);
    assert_status(d, MDM_POLICY_ABSENT);
    assert_false(d.allow);
    mdm_policy_decision_free(&d);

    /* The empty policy (no policy directory) has no hooks at all. */
    mdm_policy_t *empty = mdm_policy_new_empty();
    mdm_policy_groups(empty, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_ABSENT);
    mdm_policy_decision_free(&d);
    assert_string_equal(mdm_policy_revision(empty), "");
    mdm_policy_release(empty);
    dev_free(&f);
    mdm_policy_release(p);
}

static void test_device_view(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(
        fx, "return { result = function(device, result)\n"
            "  local ok, err = pcall(function() device.serial = 'x' end)\n"
            "  local ok2 = pcall(function() device.facts.OSVersion = '1' end)\n"
            "  local ok3 = pcall(table.insert, device.groups, 'x')\n"
            "  local ok4 = pcall(function() result.Status = 'x' end)\n"
            "  local inst = {}\n"
            "  for k, v in pairs(device.installed_profiles) do inst[k] = v end\n"
            "  return { facts = {\n"
            "    udid = device.udid, id = device.id, serial = device.serial, model = device.model,\n"
            "    os_version = device.os_version, device_name = device.device_name,\n"
            "    user = device.user, type = device.type, groups = device.groups, tags = device.tags,\n"
            "    facts_os = device.facts.OSVersion, supervised = device.facts.IsSupervised,\n"
            "    installed = inst, enrolled_at = device.enrolled_at, last_seen = device.last_seen,\n"
            "    token_updates = device.token_updates, first_checkin = device.first_checkin,\n"
            "    write_error = err, nested = not ok2, insert = not ok3, input = not ok4,\n"
            "    ngroups = #device.groups, mt = getmetatable(device) } }\n"
            "end }\n");
    dev_fx_t f;
    dev_init(&f);
    f.dev.first_checkin = true;
    plist_t res = plist_new_dict();
    mdm_pl_set_str(res, "Status", "Acknowledged");
    mdm_policy_decision_t d;
    mdm_policy_result(p, NULL, NULL, &f.dev, res, &d);
    assert_status(d, MDM_POLICY_OK);
    plist_t x = d.facts;
    assert_string_equal(mdm_pl_str(x, "udid"), "UDID-1");
    assert_string_equal(mdm_pl_str(x, "id"), "UDID-1");
    assert_string_equal(mdm_pl_str(x, "serial"), "SERIAL1");
    assert_string_equal(mdm_pl_str(x, "model"), "iPad13,1");
    assert_string_equal(mdm_pl_str(x, "os_version"), "17.4");
    assert_string_equal(mdm_pl_str(x, "device_name"), "Lab iPad");
    assert_string_equal(mdm_pl_str(x, "user"), "alice");
    assert_string_equal(mdm_pl_str(x, "type"), "device");
    assert_string_equal(plist_get_string_ptr(plist_array_get_item(plist_dict_get_item(x, "groups"), 0), NULL),
                        "old-group");
    assert_string_equal(plist_get_string_ptr(plist_array_get_item(plist_dict_get_item(x, "tags"), 0), NULL),
                        "lab");
    assert_string_equal(mdm_pl_str(x, "facts_os"), "17.4");
    assert_true(mdm_pl_bool(x, "supervised", false));
    char hex[65];
    memset(hex, 'a', 64);
    for (int i = 1; i < 64; i += 2)
        hex[i] = 'b';
    hex[64] = '\0';
    assert_string_equal(mdm_pl_str(plist_dict_get_item(x, "installed"), "com.example.wifi"), hex);
    double enrolled = 0;
    plist_get_real_val(plist_dict_get_item(x, "enrolled_at"), &enrolled);
    assert_true(enrolled == 1700000000.0);
    double seen = 0;
    plist_get_real_val(plist_dict_get_item(x, "last_seen"), &seen);
    assert_true(seen == 1700000500.0);
    assert_int_equal(mdm_pl_int(x, "token_updates", 0), 3);
    assert_true(mdm_pl_bool(x, "first_checkin", false));
    assert_contains(mdm_pl_str(x, "write_error"), "read-only");
    assert_true(mdm_pl_bool(x, "nested", false));
    assert_true(mdm_pl_bool(x, "insert", false));
    assert_true(mdm_pl_bool(x, "input", false));
    assert_int_equal(mdm_pl_int(x, "ngroups", 0), 1);
    assert_string_equal(mdm_pl_str(x, "mt"), "read-only");
    mdm_policy_decision_free(&d);

    /* Groups given by the caller win over the device record's. */
    plist_t g = plist_new_array();
    plist_array_append_item(g, plist_new_string("fresh"));
    plist_array_append_item(g, plist_new_string("more"));
    f.dev.groups = g;
    mdm_policy_result(p, NULL, NULL, &f.dev, res, &d);
    assert_int_equal(mdm_pl_int(d.facts, "ngroups", 0), 2);
    mdm_policy_decision_free(&d);
    plist_free(g);
    plist_free(res);
    dev_free(&f);
    mdm_policy_release(p);
}

/* A device record read on first use, counting the reads. */
struct lazy_record {
    plist_t rec;
    int reads;
    bool read;
};

static plist_t lazy_record_fn(void *arg, bool load)
{
    struct lazy_record *l = arg;
    if (load && !l->read) {
        l->read = true;
        l->reads++;
    }
    return l->read ? l->rec : NULL;
}

/* The device view makes its fields on first read: pairs() sees every field
 * with a value, a field read once stays, and a view kept past its call
 * raises a clear error for a field not read during the call. */
static void test_device_view_lazy(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(
        fx, "local kept\n"
            "return { result = function(device, result)\n"
            "  if result.Status == 'Acknowledged' then\n"
            "    local keys = {}\n"
            "    for k, v in pairs(device) do keys[#keys + 1] = k end\n"
            "    table.sort(keys)\n"
            "    local copy = {}\n"
            "    for k, v in pairs(device) do if type(v) ~= 'table' then copy[k] = v end end\n"
            "    return { facts = { keys = table.concat(keys, ','), copy = copy } }\n"
            "  elseif result.Status == 'Idle' then\n"
            "    kept = device\n"
            "    return { facts = { id = device.id } }\n"
            "  elseif result.Status == 'CommandFormatError' then\n"
            "    return { facts = { l = { ('x'):rep(1000), kept } } }\n"
            "  else\n"
            "    local ok_id, id = pcall(function() return kept.id end)\n"
            "    local ok_serial, err = pcall(function() return kept.serial end)\n"
            "    local ok_pairs, err2 = pcall(function() for k in pairs(kept) do end end)\n"
            "    return { facts = { id = ok_id and id or 'error', serial_ok = ok_serial,\n"
            "                       serial_err = tostring(err), pairs_ok = ok_pairs,\n"
            "                       pairs_err = tostring(err2), now_id = device.id } }\n"
            "  end\n"
            "end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t res = plist_new_dict();
    mdm_policy_decision_t d;

    mdm_pl_set_str(res, "Status", "Acknowledged");
    mdm_policy_result(p, NULL, NULL, &f.dev, res, &d);
    assert_status(d, MDM_POLICY_OK);
    /* Every field with a value, none without (the fixture has no
     * build_version, model_name or product). */
    assert_string_equal(mdm_pl_str(d.facts, "keys"),
                        "device_name,enrolled_at,facts,first_checkin,groups,id,installed_profiles,"
                        "last_seen,model,os_version,serial,tags,token_updates,type,udid,user");
    plist_t copy = plist_dict_get_item(d.facts, "copy");
    assert_string_equal(mdm_pl_str(copy, "serial"), "SERIAL1");
    assert_string_equal(mdm_pl_str(copy, "udid"), "UDID-1");
    assert_int_equal(mdm_pl_int(copy, "token_updates", 0), 3);
    mdm_policy_decision_free(&d);

    mdm_pl_set_str(res, "Status", "Idle");
    mdm_policy_result(p, NULL, NULL, &f.dev, res, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(mdm_pl_str(d.facts, "id"), "UDID-1");
    mdm_policy_decision_free(&d);

    /* The next call, with another device: the kept view still has the
     * field it made, and refuses the others instead of reading records
     * that are gone. */
    plist_t e2 = enrollment_record();
    mdm_policy_device_t other = {.eid = "UDID-2", .enrollment = e2, .device = f.d};
    mdm_pl_set_str(res, "Status", "Error");
    mdm_policy_result(p, NULL, NULL, &other, res, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(mdm_pl_str(d.facts, "id"), "UDID-1");
    assert_false(mdm_pl_bool(d.facts, "serial_ok", true));
    assert_contains(mdm_pl_str(d.facts, "serial_err"), "device.serial read after the hook call");
    assert_false(mdm_pl_bool(d.facts, "pairs_ok", true));
    assert_contains(mdm_pl_str(d.facts, "pairs_err"), "valid during its call only");
    assert_string_equal(mdm_pl_str(d.facts, "now_id"), "UDID-2");
    mdm_policy_decision_free(&d);
    /* The kept view in an answer: converting it fails (the view cannot
     * make its fields any more), and what the conversion had made is
     * freed, not left behind by a jump out of it (LeakSanitizer and
     * valgrind runs of this test see that). */
    mdm_pl_set_str(res, "Status", "CommandFormatError");
    mdm_policy_result(p, NULL, NULL, &other, res, &d);
    assert_status(d, MDM_POLICY_FAILED);
    mdm_policy_decision_free(&d);
    plist_free(e2);

    /* A record read on first use: not read for fields of the enrollment,
     * read once for the device facts however many are read. */
    struct lazy_record lr = {.rec = f.d};
    mdm_policy_device_t lazy = {.eid = "UDID-1", .enrollment = f.e, .installed = f.installed,
                                .device_record = lazy_record_fn, .record_arg = &lr};
    mdm_pl_set_str(res, "Status", "Idle");
    mdm_policy_result(p, NULL, NULL, &lazy, res, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(mdm_pl_str(d.facts, "id"), "UDID-1");
    assert_int_equal(lr.reads, 0);
    mdm_policy_decision_free(&d);
    mdm_pl_set_str(res, "Status", "Acknowledged");
    mdm_policy_result(p, NULL, NULL, &lazy, res, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(mdm_pl_str(plist_dict_get_item(d.facts, "copy"), "serial"), "SERIAL1");
    assert_string_equal(mdm_pl_str(plist_dict_get_item(d.facts, "copy"), "model"), "iPad13,1");
    assert_int_equal(lr.reads, 1);
    mdm_policy_decision_free(&d);
    plist_free(res);
    dev_free(&f);
    mdm_policy_release(p);
}

/* ---- budgets ---------------------------------------------------------------------- */

/* Calls the groups hook of p on f's device into d; the milliseconds it
 * took. */
static double groups_timed(mdm_policy_t *p, dev_fx_t *f, mdm_policy_decision_t *d)
{
    uint64_t t0 = mdm_mono_ns();
    mdm_policy_groups(p, NULL, NULL, &f->dev, d);
    return (double)(mdm_mono_ns() - t0) / 1e6;
}

/* stall(ms): the thread sleeps (a stall that is no policy work: the
 * machine busy, a page read from the disk). spin(ms): the thread works in
 * C, without a VM instruction. */
static int lua_stall(lua_State *L)
{
    lua_Integer ms = luaL_checkinteger(L, 1);
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

static int lua_spin(lua_State *L)
{
    uint64_t end = mdm_mono_ns() + (uint64_t)luaL_checkinteger(L, 1) * 1000000ull;
    volatile uint64_t n = 0;
    while (mdm_mono_ns() < end)
        n++;
    return 0;
}

/* Loads src with the stall and spin functions and calls its groups hook
 * into d; the milliseconds the call took. */
static double groups_with_stalls(struct fx *fx, const mdm_policy_settings_t *s, const char *src,
                                 mdm_policy_t **pp, dev_fx_t *f, mdm_policy_decision_t *d)
{
    write_file(fx->pol, "init.lua", src);
    mdm_policy_t *p = load_ok(fx, s);
    lua_pushcfunction(p->sb.L, lua_stall);
    lua_setglobal(p->sb.L, "stall");
    lua_pushcfunction(p->sb.L, lua_spin);
    lua_setglobal(p->sb.L, "spin");
    dev_init(f);
    *pp = p;
    return groups_timed(p, f, d);
}

/* The time budget bounds the policy's work, not the time its thread was
 * not running: a hook that stalls past its deadline without working still
 * decides; work, in Lua or in C, is still stopped. */
static void test_budget_time_stalls(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 50;
    s.instructions = 100000000000ull;
    static const struct {
        const char *src, *want; /* want: NULL for a decision {"ok"} */
        double min_ms, max_ms;
    } cases[] = {
        {"return { groups = function() stall(120) return { 'ok' } end }\n", NULL, 110, 2000},
        {"return { groups = function()\n  for i = 1, 3 do stall(40) end\n  return { 'ok' }\nend }\n",
         NULL, 110, 2000},
        {"return { groups = function() spin(120) return { 'ok' } end }\n", "time budget exceeded",
         110, 2000},
        {"return { groups = function()\n  stall(120)\n  while true do end\nend }\n",
         "init.lua:3: time budget exceeded (50 ms)", 160, 2000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mdm_policy_t *p;
        dev_fx_t f;
        mdm_policy_decision_t d;
        double ms = groups_with_stalls(fx, &s, cases[i].src, &p, &f, &d);
        print_message("case %zu: %.1f ms, %s\n", i, ms, d.error);
        if (cases[i].want == NULL) {
            assert_status(d, MDM_POLICY_OK);
            assert_int_equal(d.names.n, 1);
            assert_string_equal(d.names.v[0], "ok");
        } else {
            assert_status(d, MDM_POLICY_FAILED);
            assert_contains(d.error, cases[i].want);
        }
        if (ms < cases[i].min_ms || ms > cases[i].max_ms)
            fail_msg("case %zu took %.1f ms", i, ms);
        mdm_policy_decision_free(&d);
        mdm_policy_release(p);
        dev_free(&f);
    }
}

/* Runs the groups hook of src and expects a failure naming want; returns
 * the milliseconds the call took. */
static double expect_killed(struct fx *fx, mdm_policy_settings_t *s, const char *src,
                            const char *want)
{
    write_file(fx->pol, "init.lua", src);
    mdm_policy_t *p = load_ok(fx, s);
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    double ms = groups_timed(p, &f, &d);
    assert_status(d, MDM_POLICY_FAILED);
    assert_contains(d.error, want);
    mdm_policy_decision_free(&d);
    /* The state is still good for the next call. */
    lua_State *L = p->sb.L;
    assert_int_equal(lua_gettop(L), 0);
    assert_false(p->sb.b.active);
    mdm_policy_release(p);
    dev_free(&f);
    return ms;
}

/* The hook src is killed with want, within limit_ms (what is run is
 * named by label in the messages); the source string is freed. */
static void expect_killed_soon(struct fx *fx, mdm_policy_settings_t *s, char *src,
                               const char *want, const char *label, double limit_ms)
{
    double ms = expect_killed(fx, s, src, want);
    print_message("%s: stopped after %.1f ms\n", label, ms);
    if (ms > limit_ms)
        fail_msg("%s: stopped only after %.1f ms", label, ms);
    mdm_free(src);
}


/* A time bound of a test in ms: fast on a release build, times
 * MOONMDM_TEST_SLOWDOWN on a sanitizer build, slow under valgrind
 * (MOONMDM_SLOW_TESTS). What the tests check is that the work stops, not
 * how fast the machine is. */
static double time_limit(double fast, double slow)
{
    if (getenv("MOONMDM_SLOW_TESTS"))
        return slow;
    const char *f = getenv("MOONMDM_TEST_SLOWDOWN");
    double x = f ? atof(f) : 1.0;
    return fast * (x > 1.0 ? x : 1.0);
}

static void test_budget_time(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 50;
    /* The instruction budget (20 million by default) must not end the loop
     * first: a fast machine runs that many in less than 50 ms. */
    s.instructions = 100000000000ull;
    /* A slow machine (valgrind) may overshoot; what matters is that the
     * loop ends near the budget and not never. */
    double limit = time_limit(500, 5000);
    double ms = expect_killed(fx, &s, "return { groups = function()\n  while true do end\nend }\n",
                              "init.lua:2: time budget exceeded (50 ms)");
    if (ms < 45 || ms > limit)
        fail_msg("the loop ran %.1f ms with a 50 ms budget", ms);
    print_message("a loop with a 50 ms budget stopped after %.1f ms\n", ms);

    /* pcall cannot swallow the kill, not even a thousand times. */
    ms = expect_killed(fx, &s,
                       "return { groups = function()\n"
                       "  for i = 1, 1000 do pcall(function() while true do end end) end\n"
                       "  return { 'escaped' }\n"
                       "end }\n",
                       "time budget exceeded");
    if (ms > limit)
        fail_msg("pcall loop ran %.1f ms", ms);
    print_message("a loop of pcall(loop) with a 50 ms budget stopped after %.1f ms\n", ms);

    /* Nor can a coroutine: one made while loading, resumed in the hook. */
    expect_killed(fx, &s,
                  "local co = coroutine.create(function() while true do end end)\n"
                  "return { groups = function()\n"
                  "  local ok = coroutine.resume(co)\n"
                  "  return { ok and 'yes' or 'no' }\n"
                  "end }\n",
                  "time budget exceeded");
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  coroutine.wrap(function() while true do end end)()\n"
                  "end }\n",
                  "time budget exceeded");

    /* xpcall's handler and __close handlers run under the budget too. */
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  xpcall(function() while true do end end, function(m) while true do end end)\n"
                  "  return { 'escaped' }\n"
                  "end }\n",
                  "time budget exceeded");
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  do local x <close> = setmetatable({}, { __close = function() while true do end end })\n"
                  "    error('boom') end\n"
                  "end }\n",
                  "budget exceeded");

    /* The instruction budget stops a loop before a generous clock does. */
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    s.instructions = 100000;
    ms = expect_killed(fx, &s,
                       "return { groups = function()\n  local x = 0\n  for i = 1, 1e12 do x = x + i end\nend }\n",
                       "instruction budget exceeded");
    if (ms > 5000)
        fail_msg("100000 instructions took %.1f ms", ms);
}

/* A pattern match is one VM instruction, however long it runs: costly
 * patterns held the loop for minutes. The sandbox's own matcher counts its
 * steps against the instruction budget (and looks at the clock), through
 * string.find and s:find alike, and pcall cannot swallow the stop. */
static void test_budget_patterns(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    static const char *const slow[] = {
        "('a'):rep(30):find(('a?'):rep(30) .. ('a'):rep(30))",
        "S:find('.-b')",
        "string.find(S, '.-b')",
        "S:match('^(.-)%w-b')",
        "S:gsub('a-b', 'x')",
        "(function() for x in S:gmatch('.-b') do end end)()",
        "select(2, pcall(string.find, S, '.-b'))",
    };
    /* A generous clock: the instruction budget (20 million) stops them. A
     * slow machine (valgrind) may take longer; the point is that they stop. */
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    double limit = time_limit(1000, 20000);
    for (size_t i = 0; i < sizeof(slow) / sizeof(slow[0]); i++) {
        char *src = mdm_sprintf("local S = string.rep('a', 1 << 20)\n"
                                "return { groups = function()\n"
                                "  local r = %s\n"
                                "  return { 'done' }\n"
                                "end }\n",
                                slow[i]);
        expect_killed_soon(fx, &s, src, "init.lua:3: pattern matching exceeded its step budget", slow[i], limit);
    }

    /* What a match makes is held in the state, under its memory cap. */
    mdm_policy_settings_t small = settings(fx, false);
    small.memory_max = 16u << 20;
    small.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    expect_killed(fx, &small,
                  "local S, R = string.rep('a', 1 << 16), string.rep('x', 4096)\n"
                  "return { groups = function()\n"
                  "  return { (S:gsub('a', R)) }\n"
                  "end }\n",
                  "memory limit exceeded (16 MiB)");

    /* With the default budgets either budget may end it, quickly; the
     * next call is served as usual. */
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 0;
    mdm_policy_t *p = load_text(fx,
        "local calls = 0\n"
        "return { groups = function(d)\n"
        "  calls = calls + 1\n"
        "  if calls == 1 then ('a'):rep(30):find(('a?'):rep(30) .. ('a'):rep(30)) end\n"
        "  local digits = d.serial:match('^%a+(%d+)$')\n"
        "  return { (d.serial:gsub('%u', string.lower)), digits }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    double ms = groups_timed(p, &f, &d);
    assert_status(d, MDM_POLICY_FAILED);
    assert_contains(d.error, "budget exceeded");
    print_message("default budgets: %s after %.1f ms\n", d.error, ms);
    if (ms > limit)
        fail_msg("stopped only after %.1f ms", ms);
    mdm_policy_decision_free(&d);
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_int_equal(d.names.n, 2);
    assert_string_equal(d.names.v[0], "serial1");
    assert_string_equal(d.names.v[1], "1");
    mdm_policy_decision_free(&d);
    dev_free(&f);
    mdm_policy_release(p);
}

static void run_chunk_ok(mdm_policy_t *p, const char *src);

/* Library calls that loop in C without allocating were one instruction
 * however many times they looped: string.rep of an empty string, and
 * table.move, insert, remove and sort over a length that __len makes up.
 * Their cost is charged before they run. */
static void test_budget_library_calls(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    double limit = time_limit(1000, 20000);
    static const char *const slow[] = {
        "string.rep('', 1e11)",
        "('x'):rep(1e11, '')",
        "table.move({}, 1, 1e12, 1)",
        "table.insert(L, 1, 'x')",
        "table.remove(L, 1)",
        "table.sort(L)",
        "select(2, pcall(table.move, {}, 1, 1e12, 1))",
    };
    for (size_t i = 0; i < sizeof(slow) / sizeof(slow[0]); i++) {
        char *src = mdm_sprintf("local L = setmetatable({}, { __len = function() return 1 << 30 end })\n"
                                "return { groups = function()\n"
                                "  local r = %s\n"
                                "  return { 'done' }\n"
                                "end }\n",
                                slow[i]);
        expect_killed_soon(fx, &s, src, "init.lua:3: instruction budget exceeded", slow[i], limit);
    }

    /* Calls that each take milliseconds, in a loop: the clock is looked at
     * when their cost is charged (a loop of string.rep of 10 MB ran 4 s on
     * a 50 ms budget, one of sorts of 300,000 numbers 21 s). */
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 50;
    static const char *const loops[] = {
        "for i = 1, 1e6 do local x = string.rep('a', 10000000) end",
        "local t = {} for i = 1, 300000 do t[i] = -i end\n  for i = 1, 1e6 do table.sort(t) end",
    };
    for (size_t i = 0; i < sizeof(loops) / sizeof(loops[0]); i++) {
        char *src = mdm_sprintf("return { groups = function()\n  %s\nend }\n", loops[i]);
        expect_killed_soon(fx, &s, src, "budget exceeded", loops[i], limit);
    }

    /* Ordinary use is not affected: appends, pops, sorts, a megabyte. */
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    write_file(fx->pol, "init.lua",
        "return { groups = function()\n"
        "  local t = {}\n"
        "  for i = 1, 10000 do table.insert(t, (i * 7919) % 10007) end\n"
        "  table.sort(t)\n"
        "  table.insert(t, 1, -1)\n"
        "  for i = 1, 1000 do table.remove(t) end\n"
        "  table.remove(t, 1)\n"
        "  local u = table.move(t, 1, 10, 1, {})\n"
        "  local big = string.rep('ab', 1 << 19, ',')\n"
        "  return { tostring(#t), tostring(u[1] <= u[2]), tostring(#big) }\n"
        "end }\n");
    mdm_policy_t *p = load_ok(fx, &s);
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(d.names.v[0], "9000");
    assert_string_equal(d.names.v[1], "true");
    assert_string_equal(d.names.v[2], "1572863");
    mdm_policy_decision_free(&d);
    /* Their errors still name the function and the line. */
    run_chunk_ok(p,
                 "local ok, e = pcall(function() table.insert({}, 10, 'x') end)\n"
                 "assert(e == \"chunk:1: bad argument #2 to 'insert' (position out of bounds)\", e)\n"
                 "ok, e = pcall(function() return ('x'):rep('many') end)\n"
                 "assert(e:find(\"^chunk:3: bad argument #1 to 'rep'\"), e)\n");
    dev_free(&f);
    mdm_policy_release(p);
}

/* More library calls that loop in C as one instruction: over long
 * strings, many arguments or values, a big heap, a big chunk. In a loop,
 * each costing milliseconds, they ran for seconds past a 50 ms budget
 * (the clock was looked at every thousand instructions). Their cost is
 * charged before they run, which looks at the clock. */
static void test_budget_library_loops(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 50;
    s.memory_max = 256u << 20;
    s.load_budget_ms = 20000;
    double limit = time_limit(500, 20000);
    static const char *const big = "local S = string.rep('a', 1 << 23)\n";
    static const char *const mib = "local S = string.rep('a', 1 << 20)\n";
    static const char *const strs = "local T = {} for i = 1, 1e6 do T[i] = 'x' end\n";
    static const char *const ints = "local T = {} for i = 1, 1e6 do T[i] = i end\n";
    static const char *const heap = "local H = {} for i = 1, 1e6 do H[i] = { i } end\n";
    static const char *const fmt4 = "local F = string.rep('x', 1 << 22)\n";
    static const char *const fmt1 = "local F = string.rep('x', 1 << 20)\n";
    static const struct {
        const char *prelude, *body;
    } loops[] = {
        {strs, "for i = 1, 1e6 do local r = table.concat(T) end"},
        {ints, "for i = 1, 1e6 do local r = table.unpack(T, 1, 900000) end"},
        {big, "for i = 1, 1e6 do local r = utf8.len(S) end"},
        {big, "for i = 1, 1e6 do local r = utf8.codepoint(S, 1, 900000) end"},
        {big, "for i = 1, 1e6 do local r = utf8.offset(S, 8000000) end"},
        {"local S = 'a' .. string.rep('\\x80', 1 << 24)\n",
         "local step = utf8.codes(S)\n  for i = 1, 1e6 do local r = step(S, 1) end"},
        {"local S = string.rep('\\x80', 1 << 24)\n",
         "local step = utf8.codes(S)\n  for i = 1, 1e6 do local r = step(S, 0) end"},
        {"local Z = string.rep('0', 1 << 23)\n", "for i = 1, 1e6 do local r = tonumber(Z) end"},
        {"local Z = string.rep('0', 1 << 23)\n", "for i = 1, 1e6 do local r = tonumber(Z, 16) end"},
        {"local Z = string.rep('0', 1 << 23)\n", "for i = 1, 1e6 do local r = Z + i end"},
        {"local Z = string.rep('0', 1 << 23)\n", "for i = 1, 1e6 do local r = -Z end"},
        {mib, "for i = 1, 1e6 do local r = string.format('%q', S) end"},
        {big, "for i = 1, 1e6 do local r = string.byte(S, 1, 900000) end"},
        {big, "for i = 1, 1e6 do local r = S:upper() end"},
        {big, "for i = 1, 1e6 do local r = S:lower() end"},
        {big, "for i = 1, 1e6 do local r = S:reverse() end"},
        {fmt4, "for i = 1, 1e6 do local r = string.packsize(F) end"},
        {fmt1, "for i = 1, 1e6 do local r = string.unpack(F, F) end"},
        {"local F = string.rep('%c', 1 << 16)\n", "for i = 1, 1e6 do local r = os.date(F, 0) end"},
        {heap, "local h = H\n  for i = 1, 1e6 do collectgarbage() end"},
        {heap, "local h = H\n  for i = 1, 1e6 do collectgarbage('step', 1 << 20) end"},
        {"local C = string.rep('x = 1\\n', 200000)\n", "for i = 1, 1e6 do local r = load(C) end"},
        {big, "local n = 0\n  load(function() n = n + 1 return n == 1 and '--' or S end)"},
        {mib, "for i = 1, 1e6 do local r = mdm.crypto.sha256(S) end"},
    };
    for (size_t i = 0; i < sizeof(loops) / sizeof(loops[0]); i++) {
        char *src = mdm_sprintf("%sreturn { groups = function()\n"
                                "  %s\n  return { 'done' }\nend }\n",
                                loops[i].prelude, loops[i].body);
        expect_killed_soon(fx, &s, src, "budget exceeded", loops[i].body, limit);
    }

    /* Many arguments: passing them costs the VM tens of milliseconds
     * before the function runs, so these are about the instruction budget
     * (a generous clock, which they ran into before). */
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    static const char *const arg_loops[] = {
        "each(utf8.char, table.unpack(N))",
        "each(string.char, table.unpack(N))",
        "each(math.max, table.unpack(N))",
        "each(math.min, table.unpack(N))",
        "each(table.pack, table.unpack(N))",
        "each(string.format, string.rep('%d', 200000), table.unpack(N))",
    };
    for (size_t i = 0; i < sizeof(arg_loops) / sizeof(arg_loops[0]); i++) {
        char *src = mdm_sprintf("local N = {} for i = 1, 400000 do N[i] = 65 end\n"
                                "local function each(f, ...) for i = 1, 1e6 do f(...) end end\n"
                                "return { groups = function()\n  %s\n  return { 'done' }\nend }\n",
                                arg_loops[i]);
        expect_killed_soon(fx, &s, src, "init.lua:2: instruction budget exceeded", arg_loops[i],
                           2 * limit);
    }

    /* Ordinary calls give what they gave, and their errors still name the
     * function and the caller's line. */
    mdm_policy_t *p = load_text(fx, "return {}\n");
    run_chunk_ok(p,
                 "local t = { 'a', 'b', 'c' }\n"
                 "assert(table.concat(t, ',') == 'a,b,c' and table.concat(t, '', 2, 3) == 'bc')\n"
                 "assert(select('#', table.unpack(t)) == 3 and table.pack(1, nil, 3).n == 3)\n"
                 "assert(string.char(string.byte('hi', 1, -1)) == 'hi' and ('h'):byte() == 104)\n"
                 "assert(('Ab'):upper() == 'AB' and ('Ab'):lower() == 'ab')\n"
                 "assert(('ab'):reverse() == 'ba')\n"
                 "assert(string.format('%d-%s-%q', 7, 'x', 'y') == '7-x-\"y\"')\n"
                 "assert(string.unpack('i4', string.pack('i4', 42)) == 42)\n"
                 "assert(string.packsize('i4') == 4)\n"
                 "assert(utf8.len('h\\u{e9}llo') == 5 and utf8.codepoint('\\u{e9}') == 233)\n"
                 "assert(utf8.offset('h\\u{e9}llo', 3) == 4 and utf8.char(104, 233) == 'h\\u{e9}')\n"
                 "assert(math.max(1, 5, 3) == 5 and math.min(4, 2) == 2)\n"
                 "local cs = {} for p, c in utf8.codes('h\\u{e9}!') do cs[#cs + 1] = p .. ':' .. c end\n"
                 "assert(table.concat(cs, ' ') == '1:104 2:233 4:33', table.concat(cs, ' '))\n"
                 "assert(tonumber('0x10') == 16 and tonumber('ff', 16) == 255 and tonumber('z') == nil)\n"
                 "assert('10' + 1 == 11 and -'2' == -2 and '7' // '2' == 3 and 2 ^ '3' == 8)\n"
                 "assert(os.date('!%Y', 0) == '1970' and load('return 6 * 7')() == 42)\n"
                 "local parts = { 'return ', '6 * 7' }\n"
                 "assert(load(function() return table.remove(parts, 1) end)() == 42)\n"
                 "assert(collectgarbage('count') > 0 and collectgarbage() == 0)\n"
                 "assert(select(2, load(function() return {} end)):find('reader function must return a string'))\n"
                 "local function err(f) local ok, e = pcall(f) assert(not ok) return e end\n"
                 "local e = err(function() string.upper() end)\n"
                 "assert(e == \"chunk:23: bad argument #1 to 'upper' (string expected, got no value)\", e)\n"
                 "e = err(function() utf8.char(-1) end)\n"
                 "assert(e == \"chunk:25: bad argument #1 to 'char' (value out of range)\", e)\n"
                 "e = err(function() table.concat({ {} }) end)\n"
                 "assert(e == \"chunk:27: invalid value (table) at index 1 in table for 'concat'\", e)\n"
                 "e = err(function() tonumber('10', 99) end)\n"
                 "assert(e == \"chunk:29: bad argument #2 to 'tonumber' (base out of range)\", e)\n"
                 "e = err(function() os.date({}) end)\n"
                 "assert(e == \"chunk:31: bad argument #1 to 'date' (string expected, got table)\", e)\n");
    mdm_policy_release(p);
}

/* Work that allocates as it goes (copying strings) is not charged by
 * the byte: the allocator looks at the clock every few MiB, so that a loop
 * of such instructions, each taking milliseconds, stops soon after the
 * deadline (it ran for seconds: the hook looks at the clock every thousand
 * instructions). */
static void test_budget_allocation_clock(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 50;
    s.memory_max = 256u << 20;
    s.load_budget_ms = 20000;
    /* An instruction here copies 32 MiB (a hundred milliseconds on a busy
     * machine, page faults included); the next allocation after the
     * deadline stops the call, so it ends within two of them. */
    double limit = time_limit(600, 20000);
    static const char *const loops[] = {
        "for i = 1, 1e6 do local r = S .. i end",
        "for i = 1, 1e6 do local r = S:sub(i % 2 + 1) end",
        "for i = 1, 1e6 do local r = table.concat({ S, i }) end",
        "local co = coroutine.wrap(function() for i = 1, 1e6 do local r = S .. i end end)\n  co()",
    };
    for (size_t i = 0; i < sizeof(loops) / sizeof(loops[0]); i++) {
        char *src = mdm_sprintf("local S = string.rep('a', 1 << 25)\n"
                                "return { groups = function()\n  %s\n  return { 'done' }\nend }\n",
                                loops[i]);
        expect_killed_soon(fx, &s, src, "time budget exceeded (50 ms)", loops[i], limit);
    }
}

static void test_budget_memory(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.memory_max = 16u << 20;
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 20000;
    /* A string.rep of a gigabyte is refused by the instruction budget before
     * it allocates: this is about memory. */
    s.instructions = 100000000000ull;
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  local t = {}\n"
                  "  for i = 1, 1e9 do t[i] = tostring(i) .. string.rep('x', 100) end\n"
                  "end }\n",
                  "memory limit exceeded (16 MiB)");
    /* Caught by pcall, the bomb still ends the call. */
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  pcall(function() local t = {} for i = 1, 1e9 do t[i] = {i} end end)\n"
                  "  return { 'survived' }\n"
                  "end }\n",
                  "memory limit exceeded");
    expect_killed(fx, &s, "return { groups = function()\n  local s = string.rep('x', 1 << 30)\nend }\n",
                  "memory limit exceeded");
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  local ok = pcall(string.rep, 'x', 1 << 30)\n"
                  "  return { tostring(ok) }\n"
                  "end }\n",
                  "memory limit exceeded");
    /* Doubling a string until it no longer fits. */
    expect_killed(fx, &s,
                  "return { groups = function()\n"
                  "  local s = 'x'\n  while true do s = s .. s end\n"
                  "end }\n",
                  "memory limit exceeded");

    /* After a memory kill the state is collected and serves the next call. */
    write_file(fx->pol, "init.lua",
               "local big\n"
               "return { groups = function(d)\n"
               "  if d.serial == 'BOMB' then local t = {} for i = 1, 1e9 do t[i] = {i} end end\n"
               "  big = nil\n"
               "  return { 'fine' }\n"
               "end }\n");
    mdm_policy_t *p = load_ok(fx, &s);
    dev_fx_t f;
    dev_init(&f);
    mdm_pl_set_str(f.d, "serial", "BOMB");
    mdm_policy_decision_t d;
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_FAILED);
    mdm_policy_decision_free(&d);
    mdm_pl_set_str(f.d, "serial", "OK");
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(d.names.v[0], "fine");
    mdm_policy_decision_free(&d);
    if (p->sb.mem_used > (8u << 20))
        fail_msg("%zu bytes still held after the bomb was collected", p->sb.mem_used);
    dev_free(&f);
    mdm_policy_release(p);
}

/* ---- sandbox and require ---------------------------------------------------------- */

/* Runs a chunk in a loaded policy; returns its error or "" */
static void run_chunk_ok(mdm_policy_t *p, const char *src)
{
    char err[1024] = "";
    int rc = mdm__policy_run_chunk(p, src, strlen(src), "=chunk", 5000000000ull, err, sizeof(err));
    if (rc != 0)
        fail_msg("chunk failed: %s", err);
}

static void test_sandbox(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx, "return {}\n");
    run_chunk_ok(p,
                 "assert(io == nil, 'io')\n"
                 "assert(debug == nil, 'debug')\n"
                 "assert(package == nil, 'package (and package.loadlib)')\n"
                 "assert(os.execute == nil and os.getenv == nil and os.remove == nil and\n"
                 "       os.exit == nil and os.rename == nil and os.tmpname == nil, 'os')\n"
                 "assert(loadfile == nil and dofile == nil, 'loadfile/dofile')\n"
                 "assert(string.dump == nil, 'string.dump')\n"
                 "assert(type(os.time()) == 'number' and type(os.clock()) == 'number')\n"
                 "assert(os.date('!%Y-%m-%d', 0) == '1970-01-01')\n"
                 "local ok, err = pcall(load, 'return 1', 'x', 'b')\n"
                 "assert(not ok and err:find('binary chunks are not allowed'), err)\n"
                 "local f, err2 = load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n')\n"
                 "assert(f == nil and err2:find('binary'), 'binary chunk: ' .. tostring(err2))\n"
                 "assert(load('return 7')() == 7)\n"
                 "local ok3, err3 = pcall(setmetatable, {}, { __gc = function() end })\n"
                 "assert(not ok3 and err3:find('__gc'), '__gc')\n"
                 "assert(not pcall(collectgarbage, 'stop'), 'collectgarbage stop')\n"
                 "assert(not pcall(collectgarbage, 'generational'))\n"
                 "assert(collectgarbage('count') > 0)\n"
                 "assert(getmetatable(mdm) == 'read-only')\n"
                 "assert(not pcall(function() mdm.now = nil end), 'mdm is read-only')\n"
                 "assert(not pcall(function() mdm.kv.get = nil end), 'mdm.kv is read-only')\n"
                 "assert(not pcall(function() mdm.command.X = 1 end))\n"
                 "assert(not pcall(setmetatable, mdm, {}), 'protected metatable')\n"
                 "assert(xpcall(function() error('x') end, function(m) return 'handled' end) == false)\n"
                 "assert(select(2, xpcall(function() error('x', 0) end, function(m) return m .. '!' end)) == 'x!')\n"
                 "assert(select('#', xpcall(function() return 1, 2 end, print)) == 3)\n"
                 "assert(require('mdm') == mdm)\n");
    /* The wrapped functions' argument errors name the function and the
     * caller's line, as the standard ones do. */
    run_chunk_ok(p,
                 "local function err(f) local ok, e = pcall(f) assert(not ok) return e end\n"
                 "local e = err(function() setmetatable(1) end)\n"
                 "assert(e == \"chunk:2: bad argument #1 to 'setmetatable' (table expected, got number)\", e)\n"
                 "e = err(function() setmetatable({}, 1) end)\n"
                 "assert(e == \"chunk:4: bad argument #2 to 'setmetatable' (nil or table expected, got number)\", e)\n"
                 "e = err(function() collectgarbage('step', 'x') end)\n"
                 "assert(e == \"chunk:6: bad argument #2 to 'collectgarbage' (number expected, got string)\", e)\n"
                 "e = err(function() collectgarbage({}) end)\n"
                 "assert(e == \"chunk:8: bad argument #1 to 'collectgarbage' (string expected, got table)\", e)\n"
                 "e = err(function() load({}) end)\n"
                 "assert(e == \"chunk:10: bad argument #1 to 'load' (function expected, got table)\", e)\n"
                 "e = err(function() load('return 1', {}) end)\n"
                 "assert(e == \"chunk:12: bad argument #2 to 'load' (string expected, got table)\", e)\n"
                 "e = err(function() collectgarbage('stop') end)\n"
                 "assert(e == \"chunk:14: collectgarbage: option 'stop' is not allowed in policies\", e)\n"
                 "e = err(function() setmetatable({}, { __gc = true }) end)\n"
                 "assert(e == 'chunk:16: setmetatable: __gc is not allowed in policies', e)\n");
    mdm_policy_release(p);
}

static void test_require(void **state)
{
    struct fx *fx = *state;
    write_file(fx->pol, "lib/helpers.lua", "return { x = 1 }\n");
    write_file(fx->pol, "pkg/init.lua", "return { pkg = true }\n");
    write_file(fx->pol, "a.lua", "return require('b')\n");
    write_file(fx->pol, "b.lua", "return require('a')\n");
    write_file(fx->dir, "outside.lua", "return 'escaped'\n");
    mdm_policy_t *p = load_text(fx, "local h = require('lib.helpers')\nreturn { name = 'req' }\n");
    run_chunk_ok(p,
                 "assert(require('lib.helpers').x == 1)\n"
                 "assert(require('lib.helpers') == require('lib.helpers'), 'cached')\n"
                 "assert(require('pkg').pkg == true, 'dir/init.lua')\n"
                 "assert(type(require('util').version_at_least) == 'function', 'shipped lib')\n"
                 "assert(type(require('testing').eq) == 'function')\n"
                 "assert(require('init').name == 'req')\n"
                 "local function fails(name, want)\n"
                 "  local ok, err = pcall(require, name)\n"
                 "  assert(not ok, name .. ' loaded')\n"
                 "  assert(err:find(want, 1, true), name .. ': ' .. err)\n"
                 "end\n"
                 "fails('../outside', 'invalid module name')\n"
                 "fails('/etc/passwd', 'invalid module name')\n"
                 "fails('lib/../../outside', 'invalid module name')\n"
                 "fails('.hidden', 'invalid module name')\n"
                 "fails('outside', 'not found')\n"
                 "fails('lib.missing', 'not found')\n"
                 "fails('a', 'requires itself')\n");
    mdm_policy_release(p);
}

/* Calls groups and returns the first name (a copy), or the error. */
static char *groups_first(mdm_policy_t *p)
{
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    char *out = d.status == MDM_POLICY_OK && d.names.n > 0 ? mdm_strdup(d.names.v[0])
                                                           : mdm_sprintf("error: %s", d.error);
    mdm_policy_decision_free(&d);
    dev_free(&f);
    return out;
}

/* The shipped library is read when the set loads: a hook's first require
 * of a library module, long after the load, gets what was loaded, and the
 * revision covers the library. */
static void test_require_lib_at_load(void **state)
{
    struct fx *fx = *state;
    char *lib = mdm_sprintf("%s/lib", fx->dir);
    write_file(lib, "mylib.lua", "return 'old'\n");
    write_file(lib, "sub/deep.lua", "return '-deep'\n");
    write_file(fx->pol, "init.lua",
               "return { groups = function(d) return { require('mylib') .. require('sub.deep') } "
               "end }\n");
    mdm_policy_settings_t s = settings(fx, false);
    s.lib_dir = lib;
    mdm_policy_t *a = load_ok(fx, &s);
    write_file(lib, "mylib.lua", "return 'new'\n");
    char *got = groups_first(a);
    assert_string_equal(got, "old-deep");
    mdm_free(got);

    mdm_policy_t *b = load_ok(fx, &s);
    assert_string_not_equal(mdm_policy_revision(a), mdm_policy_revision(b));
    got = groups_first(b);
    assert_string_equal(got, "new-deep");
    mdm_free(got);
    /* The library is not one of the set's files. */
    assert_int_equal(b->files.n, 1);

    /* A library file the set cannot read fails the load, naming it. */
    write_file(lib, "bad name.lua", "return 1\n");
    mdm_policy_t *bad = NULL;
    mdm_policy_error_t e;
    assert_rc(mdm_policy_load(&s, &bad, &e), MDM_EPOLICY);
    assert_string_equal(e.file, "(lib)/bad name.lua");
    assert_contains(e.message, "file name");
    remove_file(lib, "bad name.lua");

    /* Without a library directory, library modules are not found. */
    s.lib_dir = "/nonexistent/lib";
    mdm_policy_t *c = load_ok(fx, &s);
    got = groups_first(c);
    assert_contains(got, "module \"mylib\" not found");
    mdm_free(got);
    mdm_policy_release(a);
    mdm_policy_release(b);
    mdm_policy_release(c);
    mdm_free(lib);
}

/* ---- the mdm module ------------------------------------------------------------------ */

static void test_commands(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx, "return {}\n");
    run_chunk_ok(p,
                 "local ok, err = pcall(function() return mdm.command.DeviceLock{ Pin = '1' } end)\n"
                 "assert(not ok, 'Pin accepted')\n"
                 "assert(err:find('unknown key \"Pin\"', 1, true) and err:find('\"PIN\"', 1, true), err)\n"
                 "assert(err:find('^chunk:1:'), 'the error names the line: ' .. err)\n"
                 "ok, err = pcall(function() return mdm.command.DeviceLock{ PIN = 123456 } end)\n"
                 "assert(not ok and err:find('expected a string', 1, true), err)\n"
                 "ok, err = pcall(function() return mdm.command.DeviceLok end)\n"
                 "assert(not ok and err:find('did you mean \"DeviceLock\"', 1, true), err)\n"
                 "ok, err = pcall(function() return mdm.command.EraseDevice('x') end)\n"
                 "assert(not ok and err:find('table expected', 1, true), err)\n"
                 "ok, err = pcall(function() return mdm.command.ScheduleOSUpdate{} end)\n"
                 "assert(not ok and err:find('missing required key \"Updates\"', 1, true), err)\n"
                 "ok, err = pcall(function() return mdm.command.DeviceLock{ Message = '\\255' } end)\n"
                 "assert(not ok and err:find('UTF-8', 1, true), err)\n"
                 "local c = mdm.command.DeviceLock{ PIN = '123456', Message = 'Lost' }\n"
                 "assert(c.RequestType == 'DeviceLock' and c.PIN == '123456')\n"
                 "assert(getmetatable(c) == 'mdm.command')\n"
                 "assert(not pcall(setmetatable, {}, getmetatable(c)))\n"
                 "local e = mdm.command.ProfileList()\n"
                 "assert(e.RequestType == 'ProfileList')\n"
                 "local u = mdm.command.ScheduleOSUpdate{ Updates = { { ProductKey = 'x', InstallAction = 'Default' } } }\n"
                 "assert(u.Updates[1].ProductKey == 'x')\n"
                 "local s = mdm.command.Settings{ Settings = { { Item = 'DeviceName', DeviceName = 'x' } } }\n"
                 "assert(s.RequestType == 'Settings')\n"
                 "ok, err = pcall(function() return mdm.command.Settings{ Settings = { { Item = 'DeviceName', DeviceName = 7 } } } end)\n"
                 "assert(not ok and err:find('DeviceName', 1, true), err)\n");
    mdm_policy_release(p);
}

/* ---- kv ---------------------------------------------------------------------------------- */

static const char kv_policy[] =
    "return { name = '%s', checkin = function(device, msg)\n"
    "  if msg.MessageType == 'Read' then return { reason = tostring(mdm.kv.get('count')) } end\n"
    "  if msg.MessageType == 'Delete' then mdm.kv.delete('count') return nil end\n"
    "  local n = (mdm.kv.get('count') or 0) + 1\n"
    "  mdm.kv.put('count', n)\n"
    "  assert(mdm.kv.get('count') == n, 'a hook reads its own writes')\n"
    "  mdm.kv.put('last', { udid = device.udid, type = msg.MessageType, bytes = '\\0\\255' })\n"
    "  if msg.MessageType == 'Fail' then error('after writing') end\n"
    "  return { reason = tostring(n) }\n"
    "end }\n";

static void kv_call(struct fx *fx, mdm_policy_t *p, const char *type, bool txn, int want_status,
                    const char *want_reason)
{
    dev_fx_t f;
    dev_init(&f);
    plist_t m = msg_of(type);
    mdm_policy_decision_t d;
    if (txn)
        call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, m, &d);
    else
        mdm_policy_checkin(p, NULL, NULL, &f.dev, m, &d);
    assert_status(d, want_status);
    if (want_reason != NULL && want_status == MDM_POLICY_OK)
        assert_string_equal(d.reason ? d.reason : "(none)", want_reason);
    if (want_reason != NULL && want_status == MDM_POLICY_FAILED)
        assert_contains(d.error, want_reason);
    mdm_policy_decision_free(&d);
    plist_free(m);
    dev_free(&f);
}

struct kv_raw {
    const char *key;
    size_t klen;
    plist_t value;
};

static int kv_raw_fn(mdm_txn_t *txn, void *arg)
{
    struct kv_raw *r = arg;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_POLICY_KV, MDM_VAL(r->key, r->klen), &v);
    if (rc == 0)
        rc = mdm_plist_load(v.data, v.len, &r->value);
    return rc;
}

/* Loads a kv policy with a checkin budget that holds on a slow machine
 * (valgrind): the test is about the values, not the time they take. */
static mdm_policy_t *kv_load(struct fx *fx, const char *src)
{
    write_file(fx->pol, "init.lua", src);
    mdm_policy_settings_t s = settings(fx, true);
    s.budget_ms[MDM_POLICY_HOOK_CHECKIN] = 20000;
    s.load_budget_ms = 20000;
    return load_ok(fx, &s);
}

static void test_kv_store(void **state)
{
    struct fx *fx = *state;
    char *src = mdm_sprintf(kv_policy, "ns1");
    mdm_policy_t *p = kv_load(fx, src);
    kv_call(fx, p, "TokenUpdate", true, MDM_POLICY_OK, "1");
    kv_call(fx, p, "TokenUpdate", true, MDM_POLICY_OK, "2");
    kv_call(fx, p, "TokenUpdate", true, MDM_POLICY_OK, "3");
    /* A failed hook's writes are not applied. */
    kv_call(fx, p, "Fail", true, MDM_POLICY_FAILED, "after writing");
    kv_call(fx, p, "Read", true, MDM_POLICY_OK, "3");
    /* Without a transaction reads work and writes fail. */
    kv_call(fx, p, "Read", false, MDM_POLICY_OK, "3");
    kv_call(fx, p, "TokenUpdate", false, MDM_POLICY_FAILED, "read-only");

    /* On disk: "<namespace>\0<key>", a binary plist. */
    struct kv_raw r = {.key = "ns1\0last", .klen = 8};
    assert_rc(mdm_store_view(fx->store, kv_raw_fn, &r), 0);
    assert_string_equal(mdm_pl_str(r.value, "udid"), "UDID-1");
    size_t blen = 0;
    const unsigned char *bytes = mdm_pl_data(r.value, "bytes", &blen);
    assert_int_equal(blen, 2);
    assert_memory_equal(bytes, "\0\377", 2);
    plist_free(r.value);

    /* A new state (a reload) sees the values. */
    mdm_policy_release(p);
    p = kv_load(fx, src);
    kv_call(fx, p, "TokenUpdate", true, MDM_POLICY_OK, "4");
    mdm_policy_release(p);
    mdm_free(src);

    /* Another namespace sees nothing of ns1. */
    src = mdm_sprintf(kv_policy, "ns2");
    p = kv_load(fx, src);
    kv_call(fx, p, "Read", true, MDM_POLICY_OK, "nil");
    mdm_policy_release(p);
    mdm_free(src);
    src = mdm_sprintf(kv_policy, "ns1");
    p = kv_load(fx, src);
    kv_call(fx, p, "Delete", true, MDM_POLICY_OK, NULL);
    kv_call(fx, p, "Read", true, MDM_POLICY_OK, "nil");
    mdm_policy_release(p);
    mdm_free(src);

    /* Values and keys are checked and bounded. */
    p = load_text(fx, "return {}\n");
    run_chunk_ok(p,
                 "local function fails(f, want)\n"
                 "  local ok, err = pcall(f)\n"
                 "  assert(not ok and err:find(want, 1, true), tostring(err))\n"
                 "end\n"
                 "fails(function() mdm.kv.put(string.rep('k', 257), 1) end, 'keys are 1 to 256 bytes')\n"
                 "fails(function() mdm.kv.put('', 1) end, 'keys are 1 to 256 bytes')\n"
                 "fails(function() mdm.kv.put('k', string.rep('v', 70000)) end, 'larger than')\n"
                 "fails(function() mdm.kv.put('k', { f = print }) end, 'cannot be converted')\n"
                 "fails(function() mdm.kv.put('k', nil) end, 'mdm.kv.delete')\n"
                 "fails(function() mdm.kv.put('k', { 1, nil, 3 }) end, 'holes')\n"
                 "fails(function() mdm.kv.put('k', { [{}] = 1 }) end, 'keys must be strings')\n"
                 "fails(function() local t = {} t.t = t mdm.kv.put('k', t) end, 'nested deeper')\n"
                 /* A table used twice per level: 2^30 values to convert,
                  * refused at the count instead of stalling the loop. */
                 "fails(function() local x = true for i = 1, 30 do x = { x, x } end\n"
                 "  mdm.kv.put('k', x) end, 'more than 200000 values')\n"
                 "fails(function() return mdm.command.DeviceInformation{ Queries = (function()\n"
                 "  local x = 'a' for i = 1, 30 do x = { x, x } end return x end)() } end,\n"
                 "  'more than 200000 values')\n"
                 /* Small values that encode past the limit: the message
                  * used a format lua_pushfstring does not have. */
                 "fails(function() local t = {} for i = 1, 40000 do t[i] = true end\n"
                 "  mdm.kv.put('k', t) end, 'larger than 65536 bytes')\n"
                 "mdm.kv.put('k', { 1, 2.5, 'three', true, { x = -4 } })\n"
                 "local v = mdm.kv.get('k')\n"
                 "assert(v[1] == 1 and math.type(v[1]) == 'integer' and v[2] == 2.5 and v[3] == 'three')\n"
                 "assert(v[4] == true and v[5].x == -4)\n");
    mdm_policy_release(p);
}

/* ---- passwords and profiles ------------------------------------------------------------ */

static char *make_hash(const char *prefix, unsigned long count, const char *plain)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    assert_non_null(crypt_gensalt_rn(prefix, count, NULL, 0, salt, (int)sizeof(salt)));
    struct crypt_data *cd = mdm_calloc(1, sizeof(*cd));
    const char *h = crypt_rn(plain, salt, cd, (int)sizeof(*cd));
    assert_non_null(h);
    char *out = mdm_strdup(h);
    mdm_free(cd);
    return out;
}

static void auth_with_hash(mdm_policy_t *p, const char *password, const char *hash, bool want,
                           const char *want_reason)
{
    plist_t extra = plist_new_dict();
    mdm_pl_set_str(extra, "hash", hash);
    mdm_policy_auth_req_t req = {.username = "alice", .password = password, .extra = extra};
    mdm_policy_decision_t d;
    mdm_policy_authenticate(p, NULL, NULL, &req, &d);
    assert_status(d, MDM_POLICY_OK);
    if (d.allow != want)
        fail_msg("verify(%s, %s) = %d, want %d (%s)", password, hash, d.allow, want,
                 d.reason ? d.reason : "");
    if (want_reason != NULL)
        assert_contains(d.reason, want_reason);
    mdm_policy_decision_free(&d);
    plist_free(extra);
}

static void test_password(void **state)
{
    struct fx *fx = *state;
    write_file(fx->pol, "init.lua",
               "return { authenticate = function(req)\n"
               "  local ok, why = mdm.password.verify(req.password, req.hash)\n"
               "  return { allow = ok, reason = why }\n"
               "end }\n");
    mdm_policy_settings_t s = settings(fx, true);
    s.budget_ms[MDM_POLICY_HOOK_AUTHENTICATE] = 20000;
    mdm_policy_t *p = load_ok(fx, &s);
    static const struct {
        const char *prefix;
        unsigned long count;
    } kinds[] = {{"$y$", 0}, {"$2b$", 4}, {"$6$", 1000}};
    for (size_t i = 0; i < 3; i++) {
        char *h = make_hash(kinds[i].prefix, kinds[i].count, "correct horse");
        assert_true(strncmp(h, kinds[i].prefix, strlen(kinds[i].prefix)) == 0);
        auth_with_hash(p, "correct horse", h, true, NULL);
        auth_with_hash(p, "correct horsE", h, false, NULL);
        auth_with_hash(p, "", h, false, NULL);
        mdm_free(h);
    }
    char *md5 = make_hash("$1$", 0, "x");
    auth_with_hash(p, "x", md5, false, "unsupported hash");
    mdm_free(md5);
    auth_with_hash(p, "x", "plain-text", false, "unsupported hash");
    /* And hashes made by the policy verify. */
    run_chunk_ok(p, "for _, m in ipairs({ 'yescrypt', 'bcrypt', 'sha512' }) do\n"
                    "  local h = mdm.password.hash('pw', m)\n"
                    "  assert(mdm.password.verify('pw', h), m)\n"
                    "  assert(not mdm.password.verify('pW', h), m)\n"
                    "end\n");
    mdm_policy_release(p);
}

struct profile_put {
    const char *id;
    bool with_payload;
};

static int profile_put_fn(mdm_txn_t *txn, void *arg)
{
    struct profile_put *pp = arg;
    plist_t rec = plist_new_dict();
    mdm_pl_set_str(rec, "identifier", pp->id);
    mdm_pl_set_str(rec, "uuid", "6A1E6E5C-0000-4000-8000-000000000001");
    mdm_pl_set_str(rec, "display_name", "Office Wi-Fi");
    unsigned char h[32];
    memset(h, 0x01, sizeof(h));
    mdm_pl_set_data(rec, "hash", h, sizeof(h));
    if (pp->with_payload) {
        char *big = mdm_calloc(1, 4096);
        mdm_pl_set_data(rec, "payload", big, 4096);
        mdm_free(big);
    }
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(rec, &b);
    plist_free(rec);
    int rc = mdm_txn_put(txn, MDM_T_PROFILES, MDM_VAL_STR(pp->id), MDM_VAL(b.data, b.len), 0);
    mdm_buf_free(&b);
    return rc;
}

static void test_profiles(void **state)
{
    struct fx *fx = *state;
    struct profile_put a = {.id = "com.example.wifi", .with_payload = true};
    struct profile_put b = {.id = "com.example.ipad"};
    assert_rc(mdm_store_update(fx->store, profile_put_fn, &a), 0);
    assert_rc(mdm_store_update(fx->store, profile_put_fn, &b), 0);
    mdm_policy_t *p = load_text(fx, "return {\n"
                                    "  profiles = { ['*'] = { 'com.example.wifi' },\n"
                                    "               ipads = { 'com.example.ipad', 'com.example.wifi' } },\n"
                                    "  result = function()\n"
                                    "    local p = mdm.profile('com.example.wifi')\n"
                                    "    return { facts = { display = p.display_name, hash = p.hash,\n"
                                    "      uuid = p.uuid, payload = p.payload == nil,\n"
                                    "      missing = mdm.profile('com.example.nope') == nil } }\n"
                                    "  end,\n"
                                    "}\n");
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    mdm_strlist_t groups = {0};
    mdm__strlist_push(&groups, "phones");
    mdm_policy_profiles(p, NULL, NULL, &f.dev, &groups, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_int_equal(d.names.n, 1);
    assert_string_equal(d.names.v[0], "com.example.wifi");
    mdm_policy_decision_free(&d);
    mdm__strlist_push(&groups, "ipads");
    mdm_policy_profiles(p, NULL, NULL, &f.dev, &groups, &d);
    assert_int_equal(d.names.n, 2);
    assert_string_equal(d.names.v[1], "com.example.ipad");
    mdm_policy_decision_free(&d);
    mdm__strlist_free(&groups);

    mdm_policy_result(p, NULL, NULL, &f.dev, NULL, &d);
    assert_status(d, MDM_POLICY_OK);
    assert_string_equal(mdm_pl_str(d.facts, "display"), "Office Wi-Fi");
    assert_string_equal(mdm_pl_str(d.facts, "hash"),
                        "0101010101010101010101010101010101010101010101010101010101010101");
    assert_true(mdm_pl_bool(d.facts, "payload", false));
    assert_true(mdm_pl_bool(d.facts, "missing", false));
    mdm_policy_decision_free(&d);
    dev_free(&f);
    mdm_policy_release(p);
}

/* ---- reload on a server --------------------------------------------------------------- */

typedef struct srv {
    uv_loop_t loop;
    mdm_config_t cfg;
    mdm_server_t s;
} srv_t;

static void srv_start(struct fx *fx, srv_t *v, bool watch)
{
    memset(v, 0, sizeof(*v));
    mdm_config_defaults(&v->cfg);
    mdm_config_finish(&v->cfg);
    mdm_free(v->cfg.policy_dir);
    v->cfg.policy_dir = mdm_strdup(fx->pol);
    v->cfg.policy_watch = watch;
    assert_int_equal(uv_loop_init(&v->loop), 0);
    v->s.loop = &v->loop;
    v->s.cfg = &v->cfg;
    v->s.store = fx->store;
    mdm_router_init(&v->s.router);
    mdm_err_t err = {0};
    if (mdm_policy_service_init(&v->s, &err) != 0)
        fail_msg("policy service: %s", err.msg);
}

static void srv_stop(srv_t *v)
{
    mdm_policy_service_free(&v->s);
    uv_run(&v->loop, UV_RUN_DEFAULT);
    mdm_router_free(&v->s.router);
    assert_int_equal(uv_loop_close(&v->loop), 0);
    mdm_config_free(&v->cfg);
}

static const char *reason_of(mdm_policy_t *p)
{
    static char buf[600];
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    plist_t m = msg_of("TokenUpdate");
    mdm_policy_checkin(p, NULL, NULL, &f.dev, m, &d);
    snprintf(buf, sizeof(buf), "%s", d.reason ? d.reason : d.error);
    mdm_policy_decision_free(&d);
    plist_free(m);
    dev_free(&f);
    return buf;
}

static void write_version(struct fx *fx, const char *v)
{
    char *src = mdm_sprintf("return { checkin = function() return { reason = '%s' } end }\n", v);
    write_file(fx->pol, "init.lua", src);
    mdm_free(src);
}

static void test_reload(void **state)
{
    struct fx *fx = *state;
    write_version(fx, "v1");
    srv_t v;
    srv_start(fx, &v, false);
    assert_ptr_equal(v.s.on_reload != NULL, true);
    assert_true(v.s.router.n >= 4);
    mdm_policy_t *h1 = mdm_policy_acquire(&v.s);
    assert_string_equal(reason_of(h1), "v1");
    char rev1[65];
    snprintf(rev1, sizeof(rev1), "%s", mdm_policy_revision(h1));

    /* A broken edit: the old revision keeps running, the error is kept. */
    write_file(fx->pol, "init.lua", "return { checkin = function()\n  return { reason = 'v2' \nend }\n");
    mdm_policy_error_t e;
    bool changed = true;
    assert_rc(mdm_policy_reload(&v.s, &changed, &e), MDM_EPOLICY);
    assert_false(changed);
    assert_string_equal(e.file, "init.lua");
    assert_int_equal(e.line, 3);
    mdm_policy_t *h2 = mdm_policy_acquire(&v.s);
    assert_ptr_equal(h2, h1);
    assert_string_equal(reason_of(h2), "v1");
    mdm_policy_release(h2);
    json_t *st = mdm_policy_status_json(&v.s);
    assert_string_equal(json_string_value(json_object_get(st, "revision")), rev1);
    json_t *le = json_object_get(st, "last_error");
    assert_string_equal(json_string_value(json_object_get(le, "file")), "init.lua");
    assert_int_equal(json_integer_value(json_object_get(le, "line")), 3);
    assert_contains(json_string_value(json_object_get(le, "text")), "init.lua:3:");
    assert_int_equal(json_integer_value(json_object_get(st, "failures")), 1);
    assert_int_equal(json_integer_value(json_object_get(st, "reloads")), 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "hooks"), 0)), "checkin");
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "files"), 0)), "init.lua");
    json_decref(st);
    assert_int_equal(mdm_metric_value(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_reloads_total",
                                                 "result=\"failed\"", NULL)),
                     1);

    /* A good edit swaps; a request holding the old revision keeps it. */
    write_version(fx, "v3");
    assert_rc(mdm_policy_reload(&v.s, &changed, &e), 0);
    assert_true(changed);
    mdm_policy_t *h3 = mdm_policy_acquire(&v.s);
    assert_ptr_not_equal(h3, h1);
    assert_string_equal(reason_of(h3), "v3");
    assert_string_equal(reason_of(h1), "v1");
    assert_int_equal(h1->refs, 1); /* only the request holds it now */
    assert_string_not_equal(mdm_policy_revision(h3), rev1);
    st = mdm_policy_status_json(&v.s);
    assert_true(json_is_null(json_object_get(st, "last_error")));
    assert_int_equal(json_integer_value(json_object_get(st, "reloads")), 1);
    json_decref(st);
    mdm_policy_release(h1); /* the old state goes now (valgrind/ASan check it) */

    /* The same files again: nothing changes. */
    assert_rc(mdm_policy_reload(&v.s, &changed, &e), 0);
    assert_false(changed);
    mdm_policy_t *h4 = mdm_policy_acquire(&v.s);
    assert_ptr_equal(h4, h3);
    mdm_policy_release(h4);

    /* SIGHUP goes through server->on_reload. */
    write_version(fx, "v4");
    v.s.on_reload(&v.s);
    h4 = mdm_policy_acquire(&v.s);
    assert_string_equal(reason_of(h4), "v4");
    mdm_policy_release(h4);
    mdm_policy_release(h3);
    srv_stop(&v);
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

static void test_reload_on_file_change(void **state)
{
    struct fx *fx = *state;
    write_version(fx, "w1");
    write_file(fx->pol, "sub/mod.lua", "return 1\n");
    srv_t v;
    srv_start(fx, &v, true);
    mdm_policy_t *h = mdm_policy_acquire(&v.s);
    char rev[65];
    snprintf(rev, sizeof(rev), "%s", mdm_policy_revision(h));
    mdm_policy_release(h);
    uv_timer_t t;
    uv_timer_init(&v.loop, &t);
    uv_timer_start(&t, tick, 20, 20);

    /* A change in a subdirectory is seen as well. */
    write_file(fx->pol, "sub/mod.lua", "return 2\n");
    uint64_t deadline = mdm_mono_ns() + 5000000000ull;
    bool swapped = false;
    while (!swapped && mdm_mono_ns() < deadline) {
        uv_run(&v.loop, UV_RUN_ONCE);
        h = mdm_policy_acquire(&v.s);
        swapped = strcmp(mdm_policy_revision(h), rev) != 0;
        mdm_policy_release(h);
    }
    assert_true(swapped);
    h = mdm_policy_acquire(&v.s);
    snprintf(rev, sizeof(rev), "%s", mdm_policy_revision(h));
    mdm_policy_release(h);

    write_version(fx, "w2");
    deadline = mdm_mono_ns() + 5000000000ull;
    swapped = false;
    while (!swapped && mdm_mono_ns() < deadline) {
        uv_run(&v.loop, UV_RUN_ONCE);
        h = mdm_policy_acquire(&v.s);
        swapped = strcmp(reason_of(h), "w2") == 0;
        mdm_policy_release(h);
    }
    assert_true(swapped);
    uv_close((uv_handle_t *)&t, NULL);
    srv_stop(&v);
}

static void test_service_start(void **state)
{
    struct fx *fx = *state;
    /* No directory: the server runs with no hooks. */
    nftw(fx->pol, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    srv_t v;
    srv_start(fx, &v, true);
    mdm_policy_t *h = mdm_policy_acquire(&v.s);
    assert_false(mdm_policy_has_hook(h, MDM_POLICY_HOOK_CHECKIN));
    mdm_policy_release(h);
    srv_stop(&v);

    /* A broken policy stops the start with file and line. */
    mkdir(fx->pol, 0700);
    write_file(fx->pol, "init.lua", "return {\n  groups = 'x',\n}\n");
    memset(&v, 0, sizeof(v));
    mdm_config_defaults(&v.cfg);
    mdm_config_finish(&v.cfg);
    mdm_free(v.cfg.policy_dir);
    v.cfg.policy_dir = mdm_strdup(fx->pol);
    uv_loop_init(&v.loop);
    v.s.loop = &v.loop;
    v.s.cfg = &v.cfg;
    v.s.store = fx->store;
    mdm_router_init(&v.s.router);
    mdm_err_t err = {0};
    assert_rc(mdm_policy_service_init(&v.s, &err), MDM_EPOLICY);
    assert_contains(err.msg, "init.lua");
    assert_contains(err.msg, "must be a function");
    assert_null(v.s.policy);
    mdm_policy_service_free(&v.s);
    mdm_router_free(&v.s.router);
    uv_loop_close(&v.loop);
    mdm_config_free(&v.cfg);

    /* A malformed hook budget in the config. */
    mdm_config_t cfg;
    mdm_config_defaults(&cfg);
    mdm__strlist_push(&cfg.policy_hook_budgets, "checkn=5ms");
    mdm_policy_settings_t s;
    assert_rc(mdm_policy_settings_from_config(&s, &cfg, &err), MDM_ECONFIG);
    assert_contains(err.msg, "checkn=5ms");
    mdm_config_free(&cfg);
    mdm_config_defaults(&cfg);
    assert_rc(mdm_policy_settings_from_config(&s, &cfg, &err), 0);
    assert_int_equal(s.budget_ms[MDM_POLICY_HOOK_AUTHENTICATE], 500);
    assert_int_equal(s.budget_ms[MDM_POLICY_HOOK_CHECKIN], 50);
    assert_int_equal(s.memory_max, 64u << 20);
    mdm_config_free(&cfg);
}

/* ---- decision log ------------------------------------------------------------------------ */

struct raw_entries {
    size_t n;
    mdm_buf_t all;   /* every value, concatenated */
};

static int raw_entries_fn(mdm_txn_t *txn, void *arg)
{
    struct raw_entries *r = arg;
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_DECISIONS, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0; rc = mdm_cursor_next(c, &k, &v)) {
        assert_int_equal(k.len, 16);
        r->n++;
        mdm_buf_append(&r->all, v.data, v.len);
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static bool bytes_contain(const mdm_buf_t *b, const char *s)
{
    return memmem(b->data, b->len, s, strlen(s)) != NULL;
}

static int put_old_entry(mdm_txn_t *txn, void *arg)
{
    uint64_t *i = arg;
    unsigned char k[16];
    mdm_be64_put(k, 1000 + *i);
    mdm_be64_put(k + 8, *i);
    plist_t e = plist_new_dict();
    mdm_pl_set_int(e, "time", (int64_t)(1000 + *i));
    mdm_pl_set_str(e, "hook", "groups");
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(e, &b);
    plist_free(e);
    int rc = mdm_txn_put(txn, MDM_T_DECISIONS, MDM_VAL(k, 16), MDM_VAL(b.data, b.len), 0);
    mdm_buf_free(&b);
    return rc;
}

static void test_decision_log(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(
        fx, "return {\n"
            "  authenticate = function(req) return { allow = req.password == 'hunter2', user = req.username } end,\n"
            "  scep = function(csr) return 'issue' end,\n"
            "  checkin = function(d, msg)\n"
            "    if msg.MessageType == 'Boom' then error('kaputt') end\n"
            "    return { commands = { mdm.command.DeviceLock{ PIN = '918273', Message = 'Call us' } } }\n"
            "  end,\n"
            "}\n");
    plist_t extra = plist_new_dict();
    mdm_pl_set_str(extra, "otp_token", "tok-777111");
    mdm_pl_set_str(extra, "note", "from the form");
    mdm_policy_auth_req_t req = {.username = "alice", .password = "hunter2", .extra = extra};
    mdm_policy_decision_t d;
    assert_rc(mdm_policy_authenticate(p, NULL, "rq-auth", &req, &d), 0); /* own transaction */
    assert_true(d.allow);
    mdm_policy_decision_free(&d);
    plist_free(extra);

    plist_t csr = plist_new_dict();
    mdm_pl_set_str(csr, "cn", "device-1");
    mdm_pl_set_str(csr, "challenge", "chal-secret-42");
    mdm_policy_scep(p, NULL, NULL, csr, NULL, &d);
    mdm_policy_decision_free(&d);
    plist_free(csr);

    dev_fx_t f;
    dev_init(&f);
    plist_t m = msg_of("TokenUpdate");
    mdm_pl_set_data(m, "Token", "\x01\x02tokbytes", 10);
    mdm_pl_set_str(m, "PushMagic", "magic-secret-9");
    mdm_pl_set_data(m, "UnlockToken", "unlock-bytes-8", 14);
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, m, &d), 0);
    assert_int_equal(plist_array_get_size(d.commands), 1);
    mdm_policy_decision_free(&d);
    plist_free(m);
    m = msg_of("Boom");
    call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, m, &d);
    assert_status(d, MDM_POLICY_FAILED);
    mdm_policy_decision_free(&d);
    plist_free(m);

    struct raw_entries r = {0};
    assert_rc(mdm_store_view(fx->store, raw_entries_fn, &r), 0);
    assert_int_equal(r.n, 4);
    assert_int_equal(r.all.data[0], '{');
    static const char *const secrets[] = {"hunter2", "tok-777111", "chal-secret-42",
                                          "magic-secret-9", "918273", "tokbytes", "unlock-bytes"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        if (bytes_contain(&r.all, secrets[i]))
            fail_msg("the decision log holds the secret \"%s\"", secrets[i]);
    assert_true(bytes_contain(&r.all, "(masked)"));
    assert_true(bytes_contain(&r.all, "from the form"));
    assert_true(bytes_contain(&r.all, "Call us"));
    mdm_buf_free(&r.all);

    /* Queries: newest first, by device and by hook. */
    json_t *o = NULL;
    assert_rc(mdm_policy_decisions_json(fx->store, "UDID-1", NULL, 10, &o), 0);
    json_t *a = json_object_get(o, "decisions");
    assert_int_equal(json_array_size(a), 2);
    json_t *first = json_array_get(a, 0), *second = json_array_get(a, 1);
    assert_string_equal(json_string_value(json_object_get(first, "status")), "failed");
    assert_contains(json_string_value(json_object_get(first, "error")), "init.lua:5: kaputt");
    assert_string_equal(json_string_value(json_object_get(second, "hook")), "checkin");
    assert_string_equal(json_string_value(json_object_get(second, "revision")), mdm_policy_revision(p));
    assert_string_equal(json_string_value(json_object_get(second, "request")), "req-1");
    json_t *cmd = json_array_get(json_object_get(json_object_get(second, "decision"), "commands"), 0);
    assert_string_equal(json_string_value(json_object_get(cmd, "PIN")), "(masked)");
    json_t *msg = json_object_get(json_object_get(second, "input"), "msg");
    assert_string_equal(json_string_value(json_object_get(msg, "PushMagic")), "(masked)");
    assert_string_equal(json_string_value(json_object_get(msg, "MessageType")), "TokenUpdate");
    assert_true(json_is_integer(json_object_get(second, "duration_us")));
    assert_true(json_is_string(json_object_get(second, "time")));
    json_decref(o);
    assert_rc(mdm_policy_decisions_json(fx->store, NULL, "authenticate", 10, &o), 0);
    a = json_object_get(o, "decisions");
    assert_int_equal(json_array_size(a), 1);
    json_t *in = json_object_get(json_array_get(a, 0), "input");
    assert_string_equal(json_string_value(json_object_get(in, "username")), "alice");
    assert_null(json_object_get(in, "password"));
    json_decref(o);
    assert_rc(mdm_policy_decisions_json(fx->store, NULL, NULL, 3, &o), 0);
    assert_int_equal(json_array_size(json_object_get(o, "decisions")), 3);
    json_decref(o);

    /* Pruning: by count, by age, in batches. */
    size_t n = 0;
    assert_rc(mdm_policy_decisions_prune(fx->store, 2, 86400000, 500, &n), 0);
    assert_int_equal(n, 2);
    for (uint64_t i = 0; i < 10; i++)
        assert_rc(mdm_store_update(fx->store, put_old_entry, &i), 0);
    /* Entries are JSON text now; binary plist ones (earlier versions)
     * still read. */
    assert_rc(mdm_policy_decisions_json(fx->store, NULL, "groups", 100, &o), 0);
    assert_int_equal(json_array_size(json_object_get(o, "decisions")), 10);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(o, "decisions"), 0), "time_ms")),
                     1009);
    json_decref(o);
    assert_rc(mdm_policy_decisions_prune(fx->store, 1000, 86400000, 3, &n), 0);
    assert_int_equal(n, 3);
    assert_rc(mdm_policy_decisions_prune(fx->store, 1000, 86400000, 500, &n), 0);
    assert_int_equal(n, 7);
    assert_rc(mdm_policy_decisions_prune(fx->store, 1000, 86400000, 500, &n), 0);
    assert_int_equal(n, 0);
    memset(&r, 0, sizeof(r));
    assert_rc(mdm_store_view(fx->store, raw_entries_fn, &r), 0);
    assert_int_equal(r.n, 2);
    mdm_buf_free(&r.all);
    dev_free(&f);
    mdm_policy_release(p);
}

/* ---- eval ---------------------------------------------------------------------------------- */

static int save_device_fn(mdm_txn_t *txn, void *arg)
{
    (void)arg;
    plist_t e = enrollment_record(), d = device_record();
    int rc = mdm_enrollment_save(txn, "UDID-1", e);
    if (rc == 0)
        rc = mdm_device_save(txn, "UDID-1", d);
    plist_free(e);
    plist_free(d);
    return rc;
}

/* Every table's entries, concatenated, to tell whether anything changed. */
static int dump_fn(mdm_txn_t *txn, void *arg)
{
    mdm_buf_t *b = arg;
    for (int t = 0; t < MDM_T__COUNT; t++) {
        mdm_cursor_t *c = NULL;
        if (mdm_cursor_open(txn, t, &c) != 0)
            continue;
        mdm_val_t k, v;
        int rc;
        for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0; rc = mdm_cursor_next(c, &k, &v)) {
            mdm_buf_printf(b, "%d:", t);
            mdm_buf_append(b, k.data, k.len);
            mdm_buf_append(b, v.data, v.len);
        }
        mdm_cursor_close(c);
    }
    return 0;
}

static void test_eval(void **state)
{
    struct fx *fx = *state;
    assert_rc(mdm_store_update(fx->store, save_device_fn, NULL), 0);
    mdm_policy_t *p = load_text(
        fx, "return {\n"
            "  groups = function(d) return { 'all', 'model:' .. d.model } end,\n"
            "  profiles = function(d, groups) return { 'com.example.' .. groups[2] } end,\n"
            "  checkin = function(d, msg)\n"
            "    mdm.log('info', 'checkin of', d.serial, msg.MessageType)\n"
            "    local n = (mdm.kv.get('n') or 0) + 1\n"
            "    mdm.kv.put('n', n)\n"
            "    mdm.kv.delete('gone')\n"
            "    return { commands = { mdm.command.DeviceInformation{ Queries = { 'OSVersion' } } } }\n"
            "  end,\n"
            "}\n");
    mdm_buf_t before = MDM_BUF_INIT, after = MDM_BUF_INIT;
    assert_rc(mdm_store_view(fx->store, dump_fn, &before), 0);

    json_t *out = NULL;
    mdm_err_t err = {0};
    json_error_t je;
    json_t *input = json_loads("{\"msg\": {\"MessageType\": \"Authenticate\"}}", 0, &je);
    assert_rc(mdm_policy_eval(p, fx->store, "UDID-1", "checkin", input, &out, &err), 0);
    json_decref(input);
    assert_string_equal(json_string_value(json_object_get(out, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(out, "revision")), mdm_policy_revision(p));
    json_t *cmd = json_array_get(json_object_get(json_object_get(out, "decision"), "commands"), 0);
    assert_string_equal(json_string_value(json_object_get(cmd, "RequestType")), "DeviceInformation");
    json_t *log0 = json_array_get(json_object_get(out, "logs"), 0);
    assert_string_equal(json_string_value(json_object_get(log0, "message")),
                        "checkin of SERIAL1 Authenticate");
    assert_string_equal(json_string_value(json_object_get(log0, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(log0, "where")), "init.lua:5");
    json_t *w = json_object_get(out, "kv_writes");
    assert_int_equal(json_array_size(w), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(w, 0), "op")), "put");
    assert_string_equal(json_string_value(json_object_get(json_array_get(w, 0), "key")), "n");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(w, 0), "value")), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(w, 1), "op")), "delete");
    json_decref(out);

    /* profiles runs groups first, as the server does. */
    assert_rc(mdm_policy_eval(p, fx->store, "UDID-1", "profiles", NULL, &out, &err), 0);
    json_t *g = json_object_get(out, "groups");
    assert_string_equal(json_string_value(json_array_get(json_object_get(g, "groups"), 1)),
                        "model:iPad13,1");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(out, "decision"), "profiles"), 0)),
                        "com.example.model:iPad13,1");
    json_decref(out);

    /* Nothing changed: no kv value, no decision logged, no record touched. */
    assert_rc(mdm_store_view(fx->store, dump_fn, &after), 0);
    assert_int_equal(before.len, after.len);
    assert_memory_equal(before.data, after.data, before.len);
    mdm_buf_free(&before);
    mdm_buf_free(&after);

    assert_rc(mdm_policy_eval(p, fx->store, "NOPE", "checkin", NULL, &out, &err), MDM_ENOTFOUND);
    assert_contains(err.msg, "NOPE");
    assert_rc(mdm_policy_eval(p, fx->store, "UDID-1", "checkn", NULL, &out, &err), MDM_EINVAL);
    assert_rc(mdm_policy_eval(p, fx->store, NULL, "groups", NULL, &out, &err), MDM_EINVAL);
    mdm_policy_release(p);
}

/* ---- policy tests -------------------------------------------------------------------------- */

static char *run_policy_tests(mdm_policy_settings_t *s, const char *tdir, bool tap, int *passed,
                       int *failed, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    mdm_policy_error_t e;
    *rc = mdm_policy_run_tests(s, tdir, tap, out, passed, failed, &e);
    fclose(out);
    if (*rc != 0) {
        char buf[1400];
        mdm_policy_error_format(&e, s->dir, buf, sizeof(buf));
        char *t = mdm_sprintf("%s%s", text, buf);
        free(text);
        return t;
    }
    char *t = mdm_strdup(text);
    free(text);
    return t;
}

static void test_policy_test_runner(void **state)
{
    struct fx *fx = *state;
    /* The fixture set in tests/policy/engine passes all its tests. */
    char *dir = mdm_sprintf("%s/tests/policy/engine", source_dir());
    mdm_policy_settings_t s = {.dir = dir, .lib_dir = lib_dir()};
    int passed = 0, failed = 0, rc = 0;
    char *text = run_policy_tests(&s, NULL, false, &passed, &failed, &rc);
    if (rc != 0 || failed != 0 || passed < 9)
        fail_msg("policy test %s: rc %d, %d passed, %d failed:\n%s", dir, rc, passed, failed, text);
    assert_contains(text, "passed, 0 failed");
    mdm_free(text);
    mdm_free(dir);

    /* Failures, errors, isolation between tests, TAP. */
    write_file(fx->pol, "init.lua", "return { groups = function(d) return { d.serial } end }\n");
    write_file(fx->dir, "t/a_test.lua",
               "local t = require('testing')\n"
               "function test_a_sets_state() X = 1; mdm.kv.put('k', 1) end\n"
               "function test_b_state_is_fresh() t.eq(X, nil); t.eq(mdm.kv.get('k'), nil) end\n"
               "function test_c_fails() t.eq({ 1, { 2 } }, { 1, { 3 } }, 'lists') end\n"
               "function test_d_errors() local x = nil; return x.y end\n"
               "function test_e_hook() t.eq(t.call('groups', t.device{ serial = 'S9' }).groups, { 'S9' }) end\n"
               "return { test_f_returned = function() t.truthy(true) end }\n");
    write_file(fx->dir, "t/broken_test.lua", "this is not lua\n");
    s = settings(fx, false);
    char *tdir = mdm_sprintf("%s/t", fx->dir);
    text = run_policy_tests(&s, tdir, true, &passed, &failed, &rc);
    assert_rc(rc, 0);
    if (passed != 4 || failed != 3)
        fail_msg("%d passed, %d failed:\n%s", passed, failed, text);
    assert_contains(text, "ok 2 - a_test.lua: test_b_state_is_fresh");
    assert_contains(text, "not ok 3 - a_test.lua: test_c_fails");
    assert_contains(text, "t/a_test.lua:4: lists: expected {1, {3}}, got {1, {2}}");
    assert_contains(text, "not ok 4 - a_test.lua: test_d_errors");
    assert_contains(text, "t/a_test.lua:5: attempt to index a nil value");
    assert_contains(text, "not ok 7 - broken_test.lua: cannot load");
    assert_contains(text, "1..7");
    assert_contains(text, "# 4 passed, 3 failed");
    mdm_free(text);
    mdm_free(tdir);

    /* No tests at all is an error. */
    text = run_policy_tests(&s, "/nonexistent", false, &passed, &failed, &rc);
    assert_rc(rc, MDM_ENOTFOUND);
    assert_contains(text, "no *_test.lua files");
    mdm_free(text);
}

/* ---- docs/POLICY.md ------------------------------------------------------------------------ */

/* Every ```lua block of the guide runs: blocks starting with "-- file: NAME"
 * make up a policy set (which must load and whose tests must pass); every
 * other block runs as a chunk in a test-mode state of that set. */
static void test_docs_samples(void **state)
{
    struct fx *fx = *state;
    char *path = mdm_sprintf("%s/docs/POLICY.md", source_dir());
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    typedef struct block {
        int line;
        mdm_buf_t text;
    } block_t;
    block_t *snippets = NULL;
    size_t nsnippets = 0, nfiles = 0;
    char line[4096];
    int lineno = 0, start = 0;
    bool in_block = false;
    mdm_buf_t cur = MDM_BUF_INIT;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        if (!in_block && strncmp(line, "```lua", 6) == 0) {
            in_block = true;
            start = lineno + 1;
            mdm_buf_reset(&cur);
            continue;
        }
        if (in_block && strncmp(line, "```", 3) == 0) {
            in_block = false;
            const char *text = cur.data ? cur.data : "";
            char name[256];
            if (sscanf(text, "-- file: %255s", name) == 1) {
                write_file(fx->pol, name, text);
                nfiles++;
            } else {
                snippets = mdm_realloc(snippets, (nsnippets + 1) * sizeof(*snippets));
                snippets[nsnippets].line = start;
                snippets[nsnippets].text = (mdm_buf_t)MDM_BUF_INIT;
                mdm_buf_append(&snippets[nsnippets].text, text, cur.len);
                nsnippets++;
            }
            continue;
        }
        if (in_block)
            mdm_buf_puts(&cur, line);
    }
    fclose(f);
    mdm_buf_free(&cur);
    assert_false(in_block);
    if (nfiles < 3 || nsnippets < 5)
        fail_msg("%s: only %zu file blocks and %zu other lua blocks", path, nfiles, nsnippets);

    mdm_policy_settings_t s = settings(fx, false);
    /* Password hashes under valgrind take far longer than the default. */
    s.budget_ms[MDM_POLICY_HOOK_AUTHENTICATE] = 20000;
    s.load_budget_ms = 20000;
    mdm_policy_t *p = NULL;
    mdm_policy_error_t e;
    if (mdm__policy_load(&s, MDM__MODE_CHECK, NULL, &p, &e) != 0) {
        char text[1400];
        mdm_policy_error_format(&e, "docs sample", text, sizeof(text));
        fail_msg("the policy set of %s does not load: %s", path, text);
    }
    mdm_policy_release(p);
    int passed = 0, failed = 0, rc = 0;
    char *out = run_policy_tests(&s, NULL, false, &passed, &failed, &rc);
    if (rc != 0 || failed != 0 || passed == 0)
        fail_msg("the tests in %s: %d passed, %d failed:\n%s", path, passed, failed, out);
    mdm_free(out);

    char *tdir = mdm_sprintf("%s/tests", fx->pol);
    for (size_t i = 0; i < nsnippets; i++) {
        assert_rc(mdm__policy_load(&s, MDM__MODE_TEST, tdir, &p, &e), 0);
        char name[64], err[2048];
        snprintf(name, sizeof(name), "=POLICY.md:%d", snippets[i].line);
        /* Lua counts lines from the block's first line. */
        if (mdm__policy_run_chunk(p, snippets[i].text.data, snippets[i].text.len, name,
                                  10000000000ull, err, sizeof(err)) != 0)
            fail_msg("the sample at docs/POLICY.md:%d fails: %s", snippets[i].line, err);
        mdm_policy_release(p);
        mdm_buf_free(&snippets[i].text);
    }
    mdm_free(tdir);
    mdm_free(snippets);
    mdm_free(path);
}

/* ---- edges -------------------------------------------------------------------- */

static void test_readonly_bypass(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "return { checkin = function(d, msg)\n"
        "  local ok1 = pcall(function() local _, real = pairs(msg); real.MessageType = 'Forged' end)\n"
        "  local ok2 = pcall(function() local _, rd = pairs(d); rd.serial = 'FORGED' end)\n"
        "  local ok3 = pcall(function() local _, m = pairs(mdm); m.now = function() return 0 end end)\n"
        "  return { reason = table.concat({ tostring(ok1), tostring(ok2), tostring(ok3),\n"
        "                                   msg.MessageType, d.serial, tostring(mdm.now()) }, ' ') }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t msg = msg_of("TokenUpdate");
    mdm_policy_decision_t d;
    mdm_policy_checkin(p, NULL, NULL, &f.dev, msg, &d);
    assert_status(d, MDM_POLICY_OK);
    print_message("reason: %s\n", d.reason);
    /* Every write must have raised "attempt to change read-only table". */
    assert_int_equal(strncmp(d.reason, "false false false TokenUpdate SERIAL1 ", 38), 0);
    mdm_policy_decision_free(&d);
    plist_free(msg);
    dev_free(&f);
    mdm_policy_release(p);
}

/* One call poisons the shared device metatable; a later call (another
 * device) sees forged fields. */
static void test_device_metatable_shared(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "local done = false\n"
        "return { groups = function(d)\n"
        "  if not done then\n"
        "    done = true\n"
        "    pcall(function() local _, rd = pairs(d)\n"
        "      getmetatable(rd).__index = function() return 'FORGED' end end)\n"
        "    return { 'first' }\n"
        "  end\n"
        "  return { d.serial }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_OK);
    mdm_policy_decision_free(&d);
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    assert_status(d, MDM_POLICY_OK);
    print_message("second call sees device.serial = %s\n", d.names.v[0]);
    assert_string_equal(d.names.v[0], "SERIAL1");
    mdm_policy_decision_free(&d);
    dev_free(&f);
    mdm_policy_release(p);
}

/* ---- time budget ------------------------------------------------------------ */

/* The clock is looked at every 1000 instructions only: a hook made of a
 * few hundred expensive library calls is never stopped and returns "ok"
 * long after its budget. */
static void test_time_budget_overrun(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.budget_ms[MDM_POLICY_HOOK_GROUPS] = 50;
    write_file(fx->pol, "init.lua",
        "local s = string.rep('a', 1 << 20)\n"
        "return { groups = function()\n"
        "  for i = 1, 150 do s:find('[b]') end\n"
        "  return { 'done' }\n"
        "end }\n");
    mdm_policy_t *p = load_ok(fx, &s);
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    double ms = groups_timed(p, &f, &d);
    print_message("hook with a 50 ms budget ran %.1f ms, status %s\n", ms,
                  mdm_policy_status_name(d.status));
    if (ms > 500)
        assert_status(d, MDM_POLICY_FAILED);
    mdm_policy_decision_free(&d);
    dev_free(&f);
    mdm_policy_release(p);
}

/* ---- policy code inside the "never raises" converters ----------------------- */

/* A table with a metatable field __fill (the device view's private hook)
 * has it called by every converter: policy code runs inside
 * mdm__lua_to_plist / l2j, which hold C objects, and an error there
 * longjmps past them: C heap the Lua memory cap does not see leaks on every
 * call. */
static void test_fill_leak(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "local bomb = setmetatable({}, { __fill = function() error('from __fill') end })\n"
        "local big = {}\n"
        "for i = 1, 400 do big[i] = string.rep(string.char(65 + i % 26), 1000) end\n"
        "big[#big + 1] = bomb\n"
        "return { result = function(d, r)\n"
        "  return { facts = { list = big } }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t res = plist_new_dict();
    mdm_pl_set_str(res, "RequestType", "DeviceInformation");
    mdm_policy_decision_t d;
    mdm_policy_result(p, NULL, NULL, &f.dev, res, &d);
    print_message("status %s error %s\n", mdm_policy_status_name(d.status), d.error);
    bool ran_policy_code = strstr(d.error, "from __fill") != NULL;
    mdm_policy_decision_free(&d);
    struct mallinfo2 m0 = mallinfo2();
    for (int i = 0; i < 200; i++) {
        mdm_policy_result(p, NULL, NULL, &f.dev, res, &d);
        mdm_policy_decision_free(&d);
    }
    struct mallinfo2 m1 = mallinfo2();
    long grown = (long)m1.uordblks - (long)m0.uordblks;
    print_message("C heap grew by %ld bytes over 200 calls (Lua state holds %zu)\n", grown,
                  p->sb.mem_used);
    if (grown > (8l << 20))
        fail_msg("%ld bytes of C heap leaked by 200 failed calls", grown);
    /* The converter must not run policy code at all. */
    assert_false(ran_policy_code);
    plist_free(res);
    dev_free(&f);
    mdm_policy_release(p);
}

/* The same hole reaches a use after free: mdm__command_to_plist keeps the
 * RequestType string it found in the command table (a `const char *`) while
 * the converter calls __fill of a nested value; __fill drops the string and
 * collects it, and the freed bytes are then passed to
 * mdm_command_build_json(). Run under valgrind to see the invalid read. */
static void test_fill_uaf(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "return { checkin = function(d, msg)\n"
        "  local cmd = mdm.command.DeviceLock{}\n"
        "  local parts = { 'Restart', 'Device' }\n"
        "  cmd.RequestType = table.concat(parts)  -- a string nothing else holds\n"
        "  cmd.NotifyUser = setmetatable({}, { __fill = function()\n"
        "    cmd.RequestType = nil\n"
        "    collectgarbage(); collectgarbage()\n"
        "    local junk = {}\n"
        "    for i = 1, 64 do junk[i] = string.format('%013d', i) end\n"
        "  end })\n"
        "  return { commands = { cmd } }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t msg = msg_of("TokenUpdate");
    mdm_policy_decision_t d;
    mdm_policy_checkin(p, NULL, NULL, &f.dev, msg, &d);
    print_message("status %s error %s\n", mdm_policy_status_name(d.status), d.error);
    /* The policy only ever set RestartDevice: an error naming another
     * RequestType is read from freed memory. */
    if (strstr(d.error, "unknown RequestType") != NULL)
        fail_msg("RequestType read from freed memory: %s", d.error);
    mdm_policy_decision_free(&d);
    plist_free(msg);
    dev_free(&f);
    mdm_policy_release(p);
}

/* Docs: "Loading (running init.lua and self_test) has policy.load_budget
 * (2 s) and 100 times the instructions." self_test gets 1x. */
static void test_self_test_instructions(void **state)
{
    struct fx *fx = *state;
    mdm_policy_settings_t s = settings(fx, false);
    s.instructions = 100000;
    write_file(fx->pol, "init.lua",
        "local function spin() local x = 0 for i = 1, 200000 do x = x + i end return x end\n"
        "spin() -- init.lua itself: fine, it has 100x\n"
        "return { self_test = function() spin() return true end }\n");
    mdm_policy_t *p = NULL;
    mdm_policy_error_t e;
    int rc = mdm_policy_load(&s, &p, &e);
    if (rc != 0)
        fail_msg("self_test with ~800k instructions (limit 100k x 100 = 10M) failed: %s:%d: %s",
                 e.file, e.line, e.message);
    mdm_policy_release(p);
}

/* A `profiles` table is checked against the stored profiles at load; the
 * policy keeps a reference and can change it afterwards. */
static void test_profiles_table_mutable(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "local P = { ['*'] = {} }\n"
        "return { profiles = P, groups = function(d)\n"
        "  P['*'][1] = 'com.never.uploaded'\n"
        "  return { 'all' }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    mdm_policy_decision_t d;
    mdm_policy_groups(p, NULL, NULL, &f.dev, &d);
    mdm_strlist_t g = d.names;
    d.names = (mdm_strlist_t){0};
    mdm_policy_decision_free(&d);
    mdm_policy_profiles(p, NULL, NULL, &f.dev, &g, &d);
    assert_status(d, MDM_POLICY_OK);
    print_message("profiles: %zu, first %s\n", d.names.n, d.names.n ? d.names.v[0] : "-");
    if (d.names.n > 0)
        fail_msg("profiles table yields \"%s\", never checked against the store", d.names.v[0]);
    mdm_policy_decision_free(&d);
    mdm__strlist_free(&g);
    dev_free(&f);
    mdm_policy_release(p);
}

/* With the real table reachable, a metatable loop through the proxy: must
 * be an error, not a crash. */
static void test_proxy_loop(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "return { checkin = function(d, msg)\n"
        "  local _, real = pairs(msg)\n"
        "  real.MessageType = nil\n"
        "  setmetatable(real, { __index = msg })\n"
        "  return { reason = tostring(msg.Anything) }\n"
        "end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t msg = msg_of("TokenUpdate");
    mdm_policy_decision_t d;
    mdm_policy_checkin(p, NULL, NULL, &f.dev, msg, &d);
    print_message("status %s error %s\n", mdm_policy_status_name(d.status), d.error);
    mdm_policy_decision_free(&d);
    plist_free(msg);
    dev_free(&f);
    mdm_policy_release(p);
}

/* UserAuthenticate's DigestResponse (derived from the user's password) is
 * recorded in the decision log as it is. (Not named in the docs' list.) */
static void test_digest_logged(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx, "return { checkin = function(d, msg) return nil end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t msg = msg_of("UserAuthenticate");
    mdm_pl_set_str(msg, "UserID", "alice");
    mdm_pl_set_str(msg, "DigestResponse", "username=\"alice\",response=\"6629fae49393a05397450978507c4ef1\"");
    mdm_policy_decision_t d;
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, msg, &d), 0);
    mdm_policy_decision_free(&d);
    json_t *o = NULL;
    assert_rc(mdm_policy_decisions_json(fx->store, NULL, NULL, 10, &o), 0);
    char *text = json_dumps(o, 0);
    print_message("%s\n", text);
    bool leaked = strstr(text, "6629fae49393a05397450978507c4ef1") != NULL;
    free(text);
    json_decref(o);
    plist_free(msg);
    dev_free(&f);
    mdm_policy_release(p);
    if (leaked)
        fail_msg("DigestResponse recorded in the decision log");
}

/* Secret keys are matched over their whole length (a device- or form-made
 * key may be long), and the code an ActivationLockBypassCode result carries
 * is a secret too. */
static void test_secret_keys_masked(void **state)
{
    struct fx *fx = *state;
    mdm_policy_t *p = load_text(fx,
        "return { checkin = function(d, msg) return { reason = 'seen' } end,\n"
        "         result = function(d, r) return { facts = { seen = true } } end }\n");
    dev_fx_t f;
    dev_init(&f);
    plist_t msg = msg_of("UserAuthenticate");
    char key[80];
    memset(key, 'x', 60);
    strcpy(key + 60, "Password");
    mdm_pl_set_str(msg, key, "long-key-secret-31");
    mdm_policy_decision_t d;
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_CHECKIN, &f.dev, msg, &d), 0);
    mdm_policy_decision_free(&d);
    plist_t res = plist_new_dict();
    mdm_pl_set_str(res, "RequestType", "ActivationLockBypassCode");
    mdm_pl_set_str(res, "ActivationLockBypassCode", "bypass-code-77");
    assert_rc(call_in_txn(fx, p, MDM_POLICY_HOOK_RESULT, &f.dev, res, &d), 0);
    mdm_policy_decision_free(&d);
    json_t *o = NULL;
    assert_rc(mdm_policy_decisions_json(fx->store, NULL, NULL, 10, &o), 0);
    char *text = json_dumps(o, 0);
    print_message("%s\n", text);
    assert_int_equal(json_array_size(json_object_get(o, "decisions")), 2);
    bool long_key = strstr(text, "long-key-secret-31") != NULL;
    bool bypass = strstr(text, "bypass-code-77") != NULL;
    bool masked = strstr(text, "(masked)") != NULL;
    free(text);
    json_decref(o);
    plist_free(res);
    plist_free(msg);
    dev_free(&f);
    mdm_policy_release(p);
    if (long_key)
        fail_msg("the value of a long key ending in Password is in the decision log");
    if (bypass)
        fail_msg("the ActivationLockBypassCode is in the decision log");
    assert_true(masked);
}

int main(void)
{
    mdm_log_setup(MDM_LOG_ERROR, 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_bypass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_metatable_shared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_time_budget_overrun, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fill_leak, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fill_uaf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_self_test_instructions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_profiles_table_mutable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_proxy_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digest_logged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secret_keys_masked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revision, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_verify_deferred, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_bad_returns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_errors_and_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_view, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_view_lazy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_time_stalls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_patterns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_library_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_library_loops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_allocation_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox, setup, teardown),
        cmocka_unit_test_setup_teardown(test_require, setup, teardown),
        cmocka_unit_test_setup_teardown(test_require_lib_at_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_profiles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_on_file_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decision_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_test_runner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_docs_samples, setup, teardown),
    };
    /* MOONMDM_TEST_FILTER=test_kv_store runs the tests whose names match. */
    const char *only = getenv("MOONMDM_TEST_FILTER");
    if (only != NULL)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
