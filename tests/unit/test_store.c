/* Tests of the store interface over its LMDB backend (store/lmdb.c), with a
 * real LMDB environment in a fresh temporary directory per test. Several
 * tests fork a second process, which is how the CLI shares the environment
 * with a running server. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "store/store.h"
#include "util/alloc.h"

struct fx {
    char dir[64];   /* the temporary directory */
    char path[128]; /* the store's directory inside it */
};

#define assert_rc(got, want)                                                              \
    do {                                                                                  \
        int g_ = (got), w_ = (want);                                                      \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %d (%s), want %d (%s)", #got, g_, mdm_errname(g_), w_,      \
                     mdm_errname(w_));                                                    \
    } while (0)

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
    strcpy(fx->dir, "/tmp/moonmdm-store-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        mdm_free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/db", fx->dir);
    /* A hung test (a lock never released) fails instead of blocking. */
    alarm(110);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    alarm(0);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    mdm_free(fx);
    return 0;
}

static mdm_store_config_t config(const char *path, unsigned flags)
{
    return (mdm_store_config_t){.path = path, .sync = true, .flags = flags};
}

static mdm_store_t *open_cfg(const mdm_store_config_t *cfg)
{
    mdm_store_t *s = NULL;
    mdm_err_t err = {0};
    int rc = mdm_store_open(&mdm_store_lmdb, cfg, &s, &err);
    if (rc != 0)
        fail_msg("opening %s: %s (%s)", cfg->path, mdm_errname(rc), err.msg);
    return s;
}

static mdm_store_t *open_store(const char *path, unsigned flags)
{
    mdm_store_config_t cfg = config(path, flags);
    return open_cfg(&cfg);
}

/* --- transaction functions ----------------------------------------------- */

struct kv {
    int table;
    const char *key;
    const void *val;
    size_t len;
    unsigned flags;
    int ret; /* returned after a successful put */
};

static int put_fn(mdm_txn_t *t, void *arg)
{
    struct kv *kv = arg;
    int rc = mdm_txn_put(t, kv->table, MDM_VAL_STR(kv->key), MDM_VAL(kv->val, kv->len),
                         kv->flags);
    return rc ? rc : kv->ret;
}

static int put_str(mdm_store_t *s, const char *key, const char *val)
{
    struct kv kv = {.table = MDM_T_DEVICES, .key = key, .val = val, .len = strlen(val)};
    return mdm_store_update(s, put_fn, &kv);
}

struct getter {
    int table;
    const char *key;
    char buf[256];
    size_t len;
};

static int get_fn(mdm_txn_t *t, void *arg)
{
    struct getter *g = arg;
    mdm_val_t v;
    int rc = mdm_txn_get(t, g->table, MDM_VAL_STR(g->key), &v);
    if (rc != 0)
        return rc;
    g->len = v.len < sizeof(g->buf) - 1 ? v.len : sizeof(g->buf) - 1;
    memcpy(g->buf, v.data, g->len);
    g->buf[g->len] = '\0';
    return 0;
}

/* Reads key of the devices table into out; returns the view's code. */
static int get_str(mdm_store_t *s, const char *key, char *out, size_t n)
{
    struct getter g = {.table = MDM_T_DEVICES, .key = key};
    int rc = mdm_store_view(s, get_fn, &g);
    if (rc == 0 && out)
        snprintf(out, n, "%s", g.buf);
    return rc;
}

static void assert_value(mdm_store_t *s, const char *key, const char *want)
{
    char got[256];
    int rc = get_str(s, key, got, sizeof(got));
    if (rc != 0)
        fail_msg("get %s: %s, want \"%s\"", key, mdm_errname(rc), want);
    if (strcmp(got, want) != 0)
        fail_msg("get %s: \"%s\", want \"%s\"", key, got, want);
}

static void assert_absent(mdm_store_t *s, const char *key)
{
    char got[256] = "";
    int rc = get_str(s, key, got, sizeof(got));
    if (rc != MDM_ENOTFOUND)
        fail_msg("get %s: %s (\"%s\"), want ENOTFOUND", key, mdm_errname(rc), got);
}

static int schema_get_fn(mdm_txn_t *t, void *arg)
{
    return mdm_meta_get_u64(t, "schema_version", arg);
}

static int schema_set_fn(mdm_txn_t *t, void *arg)
{
    return mdm_meta_put_u64(t, "schema_version", *(uint64_t *)arg);
}

/* --- a second process ---------------------------------------------------- */

/* Children report a result byte through a pipe and wait to be killed by
 * the parent with SIGKILL: no exit handlers, no leak check (valgrind would
 * count the parent's open store, inherited by the child, as leaked, and it
 * checks on exit and on a signal the process sends itself), and a real
 * crash for the tests that want one. */
enum { CHILD_FOUND = 0, CHILD_ABSENT = 1, CHILD_OPEN_FAILED = 2, CHILD_ERROR = 3 };

static int child_result_fd = -1;

struct child {
    pid_t pid;
    int result_fd;
};

/* Forks; returns true in the child. */
static bool child_start(struct child *ch)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    ch->pid = fork();
    assert_true(ch->pid >= 0);
    if (ch->pid == 0) {
        close(p[0]);
        child_result_fd = p[1];
        return true;
    }
    close(p[1]);
    ch->result_fd = p[0];
    return false;
}

static _Noreturn void child_exit(int code)
{
    unsigned char c = (unsigned char)code;
    if (write(child_result_fd, &c, 1) != 1)
        _exit(100);
    for (;;)
        pause();
}

static int child_wait(struct child *ch)
{
    unsigned char c = 0;
    ssize_t n;
    while ((n = read(ch->result_fd, &c, 1)) < 0 && errno == EINTR)
        ;
    close(ch->result_fd);
    kill(ch->pid, SIGKILL);
    int status = 0;
    while (waitpid(ch->pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (n != 1)
        fail_msg("child %d ended without a result (status 0x%x)", (int)ch->pid, status);
    return c;
}

/* Looks key up from another process that opens the store read-only:
 * CHILD_FOUND when it holds want, CHILD_ABSENT when it is missing. */
static int child_lookup(const char *path, const char *key, const char *want)
{
    struct child ch;
    if (child_start(&ch)) {
        mdm_store_config_t cfg = config(path, MDM_STORE_RDONLY);
        mdm_store_t *s = NULL;
        mdm_err_t err = {0};
        if (mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err) != 0) {
            fprintf(stderr, "child: open: %s\n", err.msg);
            child_exit(CHILD_OPEN_FAILED);
        }
        char got[256];
        int rc = get_str(s, key, got, sizeof(got));
        mdm_store_close(s);
        if (rc == MDM_ENOTFOUND)
            child_exit(CHILD_ABSENT);
        if (rc != 0 || strcmp(got, want) != 0) {
            fprintf(stderr, "child: get %s: %s \"%s\"\n", key, mdm_errname(rc), got);
            child_exit(CHILD_ERROR);
        }
        child_exit(CHILD_FOUND);
    }
    return child_wait(&ch);
}

/* --- tests --------------------------------------------------------------- */

static void test_schema_version(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = NULL;
    mdm_err_t err = {0};
    mdm_store_config_t cfg = config(fx->path, 0);

    /* No store yet and no CREATE: a clear refusal. */
    int rc = mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err);
    assert_rc(rc, MDM_ENOTFOUND);
    if (strstr(err.msg, fx->path) == NULL)
        fail_msg("the message does not name the directory: %s", err.msg);

    s = open_store(fx->path, MDM_STORE_CREATE);
    struct stat st;
    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char data[200];
    snprintf(data, sizeof(data), "%s/data.mdb", fx->path);
    assert_int_equal(stat(data, &st), 0);
    if ((st.st_mode & 0077) != 0)
        fail_msg("data.mdb has mode %o, want no group/other access", st.st_mode & 0777);
    uint64_t v = 0;
    assert_rc(mdm_store_view(s, schema_get_fn, &v), 0);
    assert_int_equal(v, MDM_STORE_SCHEMA_VERSION);
    mdm_store_close(s);

    /* Reopened without CREATE, it reads the version it wrote. */
    s = open_store(fx->path, 0);
    v = 0;
    assert_rc(mdm_store_view(s, schema_get_fn, &v), 0);
    assert_int_equal(v, MDM_STORE_SCHEMA_VERSION);

    /* An older schema is read as it is when opened read-only, and
     * upgraded when opened for writing. */
    uint64_t older = 1;
    assert_rc(mdm_store_update(s, schema_set_fn, &older), 0);
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);
    s = open_store(fx->path, MDM_STORE_RDONLY);
    assert_rc(mdm_store_view(s, schema_get_fn, &v), 0);
    assert_int_equal(v, 1);
    mdm_store_close(s);
    s = open_store(fx->path, 0);
    assert_rc(mdm_store_view(s, schema_get_fn, &v), 0);
    assert_int_equal(v, MDM_STORE_SCHEMA_VERSION);
    assert_true(MDM_STORE_SCHEMA_VERSION > 1);

    /* A newer schema is refused, read-write and read-only. */
    uint64_t newer = MDM_STORE_SCHEMA_VERSION + 1;
    assert_rc(mdm_store_update(s, schema_set_fn, &newer), 0);
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);
    s = NULL;
    rc = mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err);
    assert_rc(rc, MDM_ESCHEMA);
    assert_null(s);
    if (strstr(err.msg, "newer") == NULL)
        fail_msg("the message does not say the store is newer: %s", err.msg);
    memset(&err, 0, sizeof(err));
    cfg.flags = MDM_STORE_RDONLY;
    rc = mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err);
    assert_rc(rc, MDM_ESCHEMA);
    if (strstr(err.msg, "newer") == NULL)
        fail_msg("the message does not say the store is newer: %s", err.msg);
}

static int misuse_fn(mdm_txn_t *t, void *arg)
{
    char longkey[MDM_STORE_MAX_KEY + 2];
    memset(longkey, 'k', sizeof(longkey));
    mdm_val_t v;
    /* No key that long can be stored, so none is found. */
    assert_rc(mdm_txn_get(t, MDM_T_DEVICES, MDM_VAL(longkey, MDM_STORE_MAX_KEY + 1), &v),
              MDM_ENOTFOUND);
    assert_rc(mdm_txn_get(t, MDM_T_DEVICES, MDM_VAL("", 0), &v), MDM_EINVAL);
    assert_rc(mdm_txn_get(t, MDM_T__COUNT, MDM_VAL_STR("a"), &v), MDM_EINVAL);
    assert_rc(mdm_txn_get(t, -1, MDM_VAL_STR("a"), &v), MDM_EINVAL);
    if (arg) { /* a write transaction */
        assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL(longkey, MDM_STORE_MAX_KEY + 1),
                              MDM_VAL("x", 1), 0),
                  MDM_EINVAL);
        assert_rc(mdm_txn_del(t, MDM_T_DEVICES, MDM_VAL(longkey, MDM_STORE_MAX_KEY + 1)),
                  MDM_ENOTFOUND);
        assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL(longkey, MDM_STORE_MAX_KEY),
                              MDM_VAL("max", 3), 0),
                  0);
        assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR("empty"), MDM_VAL(NULL, 0), 0), 0);
        assert_rc(mdm_txn_get(t, MDM_T_DEVICES, MDM_VAL_STR("empty"), &v), 0);
        assert_int_equal(v.len, 0);
    } else {
        assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR("a"), MDM_VAL("x", 1), 0),
                  MDM_ESTATE);
        assert_rc(mdm_txn_del(t, MDM_T_DEVICES, MDM_VAL_STR("a")), MDM_ESTATE);
    }
    return 0;
}

static int del_fn(mdm_txn_t *t, void *arg)
{
    return mdm_txn_del(t, MDM_T_DEVICES, MDM_VAL_STR((const char *)arg));
}

static int count_fn(mdm_txn_t *t, void *arg)
{
    return mdm_txn_count(t, MDM_T_DEVICES, arg);
}

static void test_put_get_del(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE);

    assert_absent(s, "a");
    assert_rc(put_str(s, "a", "one"), 0);
    assert_value(s, "a", "one");
    assert_rc(put_str(s, "a", "two"), 0);
    assert_value(s, "a", "two");

    struct kv kv = {.table = MDM_T_DEVICES, .key = "a", .val = "three", .len = 5,
                    .flags = MDM_PUT_NOOVERWRITE};
    assert_rc(mdm_store_update(s, put_fn, &kv), MDM_EEXIST);
    assert_value(s, "a", "two");
    kv.key = "b";
    assert_rc(mdm_store_update(s, put_fn, &kv), 0);
    assert_value(s, "b", "three");

    assert_rc(mdm_store_update(s, del_fn, "b"), 0);
    assert_absent(s, "b");
    assert_rc(mdm_store_update(s, del_fn, "b"), MDM_ENOTFOUND);

    /* The same key in another table is another entry. */
    kv = (struct kv){.table = MDM_T_COMMANDS, .key = "a", .val = "cmd", .len = 3};
    assert_rc(mdm_store_update(s, put_fn, &kv), 0);
    assert_value(s, "a", "two");

    assert_rc(mdm_store_update(s, misuse_fn, "write"), 0);
    assert_rc(mdm_store_view(s, misuse_fn, NULL), 0);
    uint64_t n = 0;
    assert_rc(mdm_store_view(s, count_fn, &n), 0);
    assert_int_equal(n, 3); /* a, the longest key, empty */

    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);

    s = open_store(fx->path, 0);
    assert_value(s, "a", "two");
    assert_value(s, "empty", "");
    assert_absent(s, "b");
    n = 0;
    assert_rc(mdm_store_view(s, count_fn, &n), 0);
    assert_int_equal(n, 3);
    mdm_store_close(s);
}

/* A process that dies before flush leaves nothing of its batch behind. */
static void test_unflushed_writes_are_lost(void **state)
{
    struct fx *fx = *state;
    mdm_store_close(open_store(fx->path, MDM_STORE_CREATE));

    struct child ch;
    if (child_start(&ch)) {
        mdm_store_config_t cfg = config(fx->path, 0);
        mdm_store_t *s = NULL;
        if (mdm_store_open(&mdm_store_lmdb, &cfg, &s, NULL) != 0)
            child_exit(2);
        if (put_str(s, "flushed", "yes") != 0 || mdm_store_flush(s) != 0)
            child_exit(3);
        if (put_str(s, "unflushed", "no") != 0 || !mdm_store_pending(s))
            child_exit(4);
        child_exit(0); /* dies holding the batch: no flush, no close */
    }
    assert_int_equal(child_wait(&ch), 0);

    mdm_store_t *s = open_store(fx->path, 0);
    assert_value(s, "flushed", "yes");
    assert_absent(s, "unflushed");
    /* The dead writer's lock is gone: this process can write. */
    assert_rc(put_str(s, "after", "ok"), 0);
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);
}

static void test_group_commit(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE);
    mdm_store_stats_t st0, st1;
    assert_rc(mdm_store_stats(s, &st0), 0);

    assert_false(mdm_store_pending(s));
    assert_rc(put_str(s, "first", "1"), 0);
    assert_true(mdm_store_pending(s));

    /* The second update writes, then fails: only its own write goes. */
    struct kv kv = {.table = MDM_T_DEVICES, .key = "second", .val = "2", .len = 1,
                    .ret = MDM_EPOLICY};
    assert_rc(mdm_store_update(s, put_fn, &kv), MDM_EPOLICY);
    assert_true(mdm_store_pending(s));

    /* A view in the open batch sees its writes; another process does not. */
    assert_value(s, "first", "1");
    assert_absent(s, "second");
    assert_int_equal(child_lookup(fx->path, "first", "1"), CHILD_ABSENT);

    assert_rc(mdm_store_flush(s), 0);
    assert_false(mdm_store_pending(s));
    assert_rc(mdm_store_flush(s), 0); /* nothing open: a no-op */
    assert_int_equal(child_lookup(fx->path, "first", "1"), CHILD_FOUND);
    assert_int_equal(child_lookup(fx->path, "second", ""), CHILD_ABSENT);
    assert_value(s, "first", "1");
    assert_absent(s, "second");

    /* Both updates went out in one commit. */
    assert_rc(mdm_store_stats(s, &st1), 0);
    assert_int_equal(st1.commits - st0.commits, 1);
    assert_int_equal(st1.commit_failures, 0);
    assert_int_equal(st1.entries[MDM_T_DEVICES], 1);
    assert_int_equal(st1.entries[MDM_T_META], 1);

    /* An update that only fails leaves nothing pending. */
    assert_rc(mdm_store_update(s, put_fn, &kv), MDM_EPOLICY);
    assert_false(mdm_store_pending(s));
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);

    s = open_store(fx->path, 0);
    assert_value(s, "first", "1");
    assert_absent(s, "second");
    mdm_store_close(s);
}

/* A value read in a write transaction stays valid after later writes. */
static int stable_fn(mdm_txn_t *t, void *arg)
{
    (void)arg;
    assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR("m"), MDM_VAL_STR("hello"), 0), 0);
    mdm_val_t v;
    assert_rc(mdm_txn_get(t, MDM_T_DEVICES, MDM_VAL_STR("m"), &v), 0);
    char big[300];
    for (int i = 0; i < 200; i++) {
        char k[16];
        snprintf(k, sizeof(k), "a%03d", i);
        memset(big, 'a' + i % 26, sizeof(big));
        assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR(k), MDM_VAL(big, sizeof(big)), 0),
                  0);
    }
    assert_rc(mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR("m"), MDM_VAL_STR("HELLO"), 0), 0);
    if (v.len != 5 || memcmp(v.data, "hello", 5) != 0)
        fail_msg("the value read earlier changed: \"%.*s\"", (int)v.len, (const char *)v.data);
    return 0;
}

static void test_values_stay_valid_in_write_txn(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE);
    assert_rc(mdm_store_update(s, stable_fn, NULL), 0);
    assert_value(s, "m", "HELLO");
    mdm_store_close(s);
}

struct scan {
    const char *prefix;
    char seen[512];
    int n;
};

static void scan_add(struct scan *sc, mdm_val_t k)
{
    size_t len = strlen(sc->seen);
    snprintf(sc->seen + len, sizeof(sc->seen) - len, "%s%.*s", sc->n ? "," : "", (int)k.len,
             (const char *)k.data);
    sc->n++;
}

static int scan_prefix_fn(mdm_txn_t *t, void *arg)
{
    struct scan *sc = arg;
    mdm_cursor_t *c;
    assert_rc(mdm_cursor_open(t, MDM_T_QUEUE, &c), 0);
    mdm_val_t p = MDM_VAL_STR(sc->prefix), k, v;
    int rc;
    for (rc = mdm_cursor_seek(c, p, &k, &v); rc == 0 && mdm_val_has_prefix(k, p);
         rc = mdm_cursor_next(c, &k, &v))
        scan_add(sc, k);
    mdm_cursor_close(c);
    return rc == 0 || rc == MDM_ENOTFOUND ? 0 : rc;
}

static int scan_reverse_fn(mdm_txn_t *t, void *arg)
{
    struct scan *sc = arg;
    mdm_cursor_t *c;
    assert_rc(mdm_cursor_open(t, MDM_T_QUEUE, &c), 0);
    mdm_val_t k, v;
    int rc;
    for (rc = mdm_cursor_last(c, &k, &v); rc == 0; rc = mdm_cursor_prev(c, &k, &v))
        scan_add(sc, k);
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static int delete_prefix_fn(mdm_txn_t *t, void *arg)
{
    mdm_cursor_t *c;
    assert_rc(mdm_cursor_open(t, MDM_T_QUEUE, &c), 0);
    mdm_val_t p = MDM_VAL_STR((const char *)arg), k, v;
    int rc = mdm_cursor_seek(c, p, &k, &v);
    while (rc == 0 && mdm_val_has_prefix(k, p)) {
        assert_rc(mdm_cursor_del(c), 0);
        rc = mdm_cursor_next(c, &k, &v);
    }
    mdm_cursor_close(c);
    return rc == 0 || rc == MDM_ENOTFOUND ? 0 : rc;
}

static int fill_queue_fn(mdm_txn_t *t, void *arg)
{
    (void)arg;
    const char *keys[] = {"b:2", "a:1", "c:1", "b:1", "a:3", "a:2", "b:3", "ab"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        int rc = mdm_txn_put(t, MDM_T_QUEUE, MDM_VAL_STR(keys[i]), MDM_VAL_STR("v"), 0);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int cursor_edges_fn(mdm_txn_t *t, void *arg)
{
    mdm_cursor_t *c;
    mdm_val_t k, v;
    /* An empty table. */
    assert_rc(mdm_cursor_open(t, MDM_T_DECISIONS, &c), 0);
    assert_rc(mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v), MDM_ENOTFOUND);
    assert_rc(mdm_cursor_last(c, &k, &v), MDM_ENOTFOUND);
    mdm_cursor_close(c);
    /* Past the end, and before the start. */
    assert_rc(mdm_cursor_open(t, MDM_T_QUEUE, &c), 0);
    assert_rc(mdm_cursor_seek(c, MDM_VAL_STR("z"), &k, &v), MDM_ENOTFOUND);
    assert_rc(mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v), 0);
    assert_int_equal(k.len, 3);
    assert_memory_equal(k.data, "a:1", 3);
    assert_rc(mdm_cursor_prev(c, &k, &v), MDM_ENOTFOUND);
    assert_rc(mdm_cursor_last(c, &k, &v), 0);
    assert_memory_equal(k.data, "c:1", 3);
    assert_rc(mdm_cursor_next(c, &k, &v), MDM_ENOTFOUND);
    if (arg == NULL) /* a view */
        assert_rc(mdm_cursor_del(c), MDM_ESTATE);
    /* Left open on purpose: the store closes it when the function returns. */
    return 0;
}

static int put_u64_fn(mdm_txn_t *t, void *arg)
{
    const uint64_t *vals = arg;
    for (int i = 0; vals[i] != 42; i++) {
        unsigned char k[8];
        mdm_be64_put(k, vals[i]);
        int rc = mdm_txn_put(t, MDM_T_DECISIONS, MDM_VAL(k, 8), MDM_VAL("", 0), 0);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int scan_u64_fn(mdm_txn_t *t, void *arg)
{
    uint64_t *out = arg;
    mdm_cursor_t *c;
    assert_rc(mdm_cursor_open(t, MDM_T_DECISIONS, &c), 0);
    mdm_val_t k, v;
    int n = 0, rc;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(c, &k, &v)) {
        assert_int_equal(k.len, 8);
        out[n++] = mdm_be64_get(k.data);
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static void test_cursors(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE);
    assert_rc(mdm_store_update(s, fill_queue_fn, NULL), 0);

    /* Scans in the open batch and after the flush agree. */
    for (int round = 0; round < 2; round++) {
        struct scan sc = {.prefix = "a:"};
        assert_rc(mdm_store_view(s, scan_prefix_fn, &sc), 0);
        assert_string_equal(sc.seen, "a:1,a:2,a:3");
        sc = (struct scan){.prefix = "b:"};
        assert_rc(mdm_store_view(s, scan_prefix_fn, &sc), 0);
        assert_string_equal(sc.seen, "b:1,b:2,b:3");
        sc = (struct scan){.prefix = "x"};
        assert_rc(mdm_store_view(s, scan_prefix_fn, &sc), 0);
        assert_string_equal(sc.seen, "");
        sc = (struct scan){0};
        assert_rc(mdm_store_view(s, scan_reverse_fn, &sc), 0);
        assert_string_equal(sc.seen, "c:1,b:3,b:2,b:1,ab,a:3,a:2,a:1");
        assert_rc(mdm_store_view(s, cursor_edges_fn, NULL), 0);
        assert_rc(mdm_store_update(s, cursor_edges_fn, "write"), 0);
        assert_rc(mdm_store_flush(s), 0);
    }

    /* Deleting through a cursor, in the same update as the scan. */
    assert_rc(mdm_store_update(s, delete_prefix_fn, "b:"), 0);
    struct scan sc = {0};
    assert_rc(mdm_store_view(s, scan_reverse_fn, &sc), 0);
    assert_string_equal(sc.seen, "c:1,ab,a:3,a:2,a:1");
    assert_rc(mdm_store_flush(s), 0);
    assert_rc(mdm_store_update(s, delete_prefix_fn, "a"), 0);
    assert_rc(mdm_store_flush(s), 0);
    sc = (struct scan){0};
    assert_rc(mdm_store_view(s, scan_reverse_fn, &sc), 0);
    assert_string_equal(sc.seen, "c:1");

    /* Big-endian u64 keys sort numerically. */
    const uint64_t vals[] = {1 << 20, 255, UINT64_MAX, 256, 0, (uint64_t)1 << 40, 1, 65535, 42};
    assert_rc(mdm_store_update(s, put_u64_fn, (void *)vals), 0);
    assert_rc(mdm_store_flush(s), 0);
    uint64_t got[16] = {0};
    assert_rc(mdm_store_view(s, scan_u64_fn, got), 0);
    const uint64_t want[] = {0, 1, 255, 256, 65535, 1 << 20, (uint64_t)1 << 40, UINT64_MAX};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (got[i] != want[i])
            fail_msg("key %zu: %llu, want %llu", i, (unsigned long long)got[i],
                     (unsigned long long)want[i]);
    mdm_store_close(s);
}

/* Values of the growth tests: a header with the index, then filler. */
struct blob {
    int i;
    size_t len;
    unsigned char *buf;
};

static void blob_key(char *k, size_t n, int i)
{
    snprintf(k, n, "blob-%05d", i);
}

static int blob_put_fn(mdm_txn_t *t, void *arg)
{
    struct blob *b = arg;
    char k[32];
    blob_key(k, sizeof(k), b->i);
    memset(b->buf, (unsigned char)b->i, b->len);
    memcpy(b->buf, &b->i, sizeof(b->i));
    return mdm_txn_put(t, MDM_T_PROFILES, MDM_VAL_STR(k), MDM_VAL(b->buf, b->len), 0);
}

struct blob_check {
    int n;
    int bad; /* the first index that is missing or wrong, or -1 */
    int rc;
};

static int blob_check_fn(mdm_txn_t *t, void *arg)
{
    struct blob_check *bc = arg;
    bc->bad = -1;
    for (int i = 0; i < bc->n; i++) {
        char k[32];
        blob_key(k, sizeof(k), i);
        mdm_val_t v;
        int rc = mdm_txn_get(t, MDM_T_PROFILES, MDM_VAL_STR(k), &v);
        int head = -1;
        if (rc == 0 && v.len >= sizeof(int))
            memcpy(&head, v.data, sizeof(int));
        if (rc != 0 || head != i ||
            ((const unsigned char *)v.data)[v.len - 1] != (unsigned char)i) {
            bc->bad = i;
            bc->rc = rc;
            return 0;
        }
    }
    uint64_t n = 0;
    int rc = mdm_txn_count(t, MDM_T_PROFILES, &n);
    if (rc != 0)
        return rc;
    if (n != (uint64_t)bc->n)
        fail_msg("%llu blobs, want %d", (unsigned long long)n, bc->n);
    return 0;
}

static void assert_blobs(mdm_store_t *s, int n)
{
    struct blob_check bc = {.n = n};
    assert_rc(mdm_store_view(s, blob_check_fn, &bc), 0);
    if (bc.bad >= 0)
        fail_msg("blob %d of %d is missing or wrong (%s)", bc.bad, n, mdm_errname(bc.rc));
}

static void test_map_growth(void **state)
{
    struct fx *fx = *state;
    mdm_store_config_t cfg = config(fx->path, MDM_STORE_CREATE);
    cfg.map_size = 1 << 20;
    cfg.map_max = 64 << 20;
    cfg.sync = false;
    mdm_store_t *s = open_cfg(&cfg);

    /* About 20 MiB in values of 16 to 48 KiB, flushed every 10 updates. */
    struct blob b = {.buf = mdm_malloc(48 << 10)};
    size_t total = 0;
    int n = 0;
    while (total < (20u << 20)) {
        b.i = n;
        b.len = (16u << 10) + (size_t)(n % 33) * 1024;
        int rc = mdm_store_update(s, blob_put_fn, &b);
        if (rc != 0)
            fail_msg("update %d (%zu bytes written): %s", n, total, mdm_errname(rc));
        total += b.len;
        n++;
        if (n % 10 == 0)
            assert_rc(mdm_store_flush(s), 0);
    }
    assert_rc(mdm_store_flush(s), 0);
    mdm_free(b.buf);
    assert_blobs(s, n);

    mdm_store_stats_t st;
    assert_rc(mdm_store_stats(s, &st), 0);
    if (st.grows == 0 || st.map_size <= cfg.map_size || st.map_size > cfg.map_max ||
        st.used_bytes < total || st.used_bytes > st.map_size)
        fail_msg("grows=%llu map_size=%zu used=%zu written=%zu", (unsigned long long)st.grows,
                 st.map_size, st.used_bytes, total);
    assert_int_equal(st.entries[MDM_T_PROFILES], n);
    assert_int_equal(st.commit_failures, 0);
    mdm_store_close(s);

    /* Reopened with the small initial size, it keeps the grown map. */
    cfg.flags = 0;
    s = open_cfg(&cfg);
    mdm_store_stats_t st2;
    assert_rc(mdm_store_stats(s, &st2), 0);
    if (st2.map_size < st.map_size)
        fail_msg("map_size after reopen %zu, before %zu", st2.map_size, st.map_size);
    assert_blobs(s, n);
    mdm_store_close(s);
}

static void test_map_limit(void **state)
{
    struct fx *fx = *state;
    mdm_store_config_t cfg = config(fx->path, MDM_STORE_CREATE);
    cfg.map_size = 1 << 20;
    cfg.map_max = 1 << 20;
    mdm_store_t *s = open_cfg(&cfg);

    struct blob b = {.buf = mdm_malloc(8 << 10), .len = 8 << 10};
    int n = 0, rc = 0;
    for (; n < 1000; n++) {
        b.i = n;
        rc = mdm_store_update(s, blob_put_fn, &b);
        if (rc != 0)
            break;
        if (n % 4 == 3)
            assert_rc(mdm_store_flush(s), 0);
    }
    mdm_free(b.buf);
    assert_rc(rc, MDM_ENOSPACE);
    if (n < 10)
        fail_msg("only %d values of 8 KiB fit in 1 MiB", n);
    assert_rc(mdm_store_flush(s), 0);
    assert_blobs(s, n);

    /* The store still works: small writes fit in the pages left. */
    assert_rc(mdm_store_update(s, del_fn, "nothing"), MDM_ENOTFOUND);
    mdm_store_stats_t st;
    assert_rc(mdm_store_stats(s, &st), 0);
    assert_int_equal(st.grows, 0);
    assert_int_equal(st.map_size, 1 << 20);
    mdm_store_close(s);

    cfg.flags = 0;
    s = open_cfg(&cfg);
    assert_blobs(s, n);
    mdm_store_close(s);
}

/* Another process grows the map past this one's: the next transaction
 * follows the new size (MDB_MAP_RESIZED). */
static void test_map_resized_by_other_process(void **state)
{
    struct fx *fx = *state;
    mdm_store_config_t cfg = config(fx->path, MDM_STORE_CREATE);
    cfg.map_size = 1 << 20;
    cfg.map_max = 64 << 20;
    cfg.sync = false;
    mdm_store_t *s = open_cfg(&cfg);
    assert_rc(put_str(s, "mine", "1"), 0);
    assert_rc(mdm_store_flush(s), 0);
    assert_value(s, "mine", "1"); /* leaves a cached read transaction */

    int n = 100;
    struct child ch;
    if (child_start(&ch)) {
        mdm_store_config_t ccfg = cfg;
        ccfg.flags = 0;
        mdm_store_t *w = NULL;
        if (mdm_store_open(&mdm_store_lmdb, &ccfg, &w, NULL) != 0)
            child_exit(2);
        struct blob b = {.buf = mdm_malloc(64 << 10), .len = 64 << 10};
        int rc = 0;
        for (int i = 0; i < n && rc == 0; i++) {
            b.i = i;
            rc = mdm_store_update(w, blob_put_fn, &b);
            if (rc == 0)
                rc = mdm_store_flush(w);
        }
        mdm_free(b.buf);
        mdm_store_close(w);
        child_exit(rc == 0 ? 0 : 3);
    }
    assert_int_equal(child_wait(&ch), 0);

    assert_blobs(s, n);
    mdm_store_stats_t st;
    assert_rc(mdm_store_stats(s, &st), 0);
    if (st.map_size < (size_t)n * (64 << 10) || st.grows != 0)
        fail_msg("map_size=%zu grows=%llu after another process wrote %d KiB", st.map_size,
                 (unsigned long long)st.grows, n * 64);
    assert_rc(put_str(s, "mine", "2"), 0);
    assert_rc(mdm_store_flush(s), 0);
    assert_value(s, "mine", "2");
    mdm_store_close(s);
}

/* The disk refuses a commit (a file size limit stands in for a full disk):
 * the whole batch is lost and reported, the store goes on. */
static int commit_failure_child(const char *path)
{
    signal(SIGXFSZ, SIG_IGN);
    mdm_store_config_t cfg = config(path, 0);
    cfg.map_size = 1 << 20;
    cfg.map_max = 64 << 20;
    mdm_store_t *s = NULL;
    if (mdm_store_open(&mdm_store_lmdb, &cfg, &s, NULL) != 0)
        return 2;
    char data[200];
    snprintf(data, sizeof(data), "%s/data.mdb", path);
    struct stat st;
    if (stat(data, &st) != 0)
        return 3;
    struct rlimit rl = {.rlim_cur = (rlim_t)st.st_size, .rlim_max = RLIM_INFINITY};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
        return 4;

    /* A batch whose commit fails. */
    int rc = put_str(s, "lost1", "x");
    if (rc != 0)
        return 10;
    rc = mdm_store_flush(s);
    if (rc != MDM_ENOSPACE) {
        fprintf(stderr, "child: flush: %s, want ENOSPACE\n", mdm_errname(rc));
        return 11;
    }
    mdm_store_stats_t sst;
    if (mdm_store_stats(s, &sst) != 0 || sst.commit_failures != 1 || mdm_store_pending(s))
        return 12;

    /* A batch lost while the map grows: the update that needed room and
     * the next flush both say so. */
    if (put_str(s, "lost2", "x") != 0)
        return 20;
    struct blob b = {.i = 1, .len = 2 << 20, .buf = mdm_malloc(2 << 20)};
    rc = mdm_store_update(s, blob_put_fn, &b);
    mdm_free(b.buf);
    if (rc != MDM_ENOSPACE) {
        fprintf(stderr, "child: big update: %s, want ENOSPACE\n", mdm_errname(rc));
        return 21;
    }
    if (!mdm_store_pending(s))
        return 22;
    rc = mdm_store_flush(s);
    if (rc != MDM_ENOSPACE) {
        fprintf(stderr, "child: flush after lost batch: %s, want ENOSPACE\n", mdm_errname(rc));
        return 23;
    }
    if (mdm_store_pending(s) || mdm_store_flush(s) != 0)
        return 24;
    if (get_str(s, "before", NULL, 0) != 0 || get_str(s, "lost1", NULL, 0) != MDM_ENOTFOUND ||
        get_str(s, "lost2", NULL, 0) != MDM_ENOTFOUND)
        return 25;
    mdm_store_close(s);
    return 0;
}

static void test_commit_failure(void **state)
{
    struct fx *fx = *state;
    mdm_store_config_t cfg = config(fx->path, MDM_STORE_CREATE);
    cfg.map_size = 1 << 20; /* so that the child's big update has to grow it */
    mdm_store_t *s = open_cfg(&cfg);
    assert_rc(put_str(s, "before", "ok"), 0);
    mdm_store_close(s);

    struct child ch;
    if (child_start(&ch))
        child_exit(commit_failure_child(fx->path));
    assert_int_equal(child_wait(&ch), 0);

    s = open_store(fx->path, 0);
    assert_value(s, "before", "ok");
    assert_absent(s, "lost1");
    assert_absent(s, "lost2");
    assert_rc(put_str(s, "after", "ok"), 0);
    assert_rc(mdm_store_flush(s), 0);
    assert_value(s, "after", "ok");
    mdm_store_close(s);
}

static int fill_fn(mdm_txn_t *t, void *arg)
{
    int n = *(int *)arg;
    for (int i = 0; i < n; i++) {
        char k[32], v[64];
        snprintf(k, sizeof(k), "dev-%04d", i);
        snprintf(v, sizeof(v), "value of device %d", i);
        int rc = mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR(k), MDM_VAL_STR(v), 0);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int del_some_fn(mdm_txn_t *t, void *arg)
{
    (void)arg;
    for (int i = 0; i < 500; i += 2) {
        char k[32];
        snprintf(k, sizeof(k), "dev-%04d", i);
        int rc = mdm_txn_del(t, MDM_T_DEVICES, MDM_VAL_STR(k));
        if (rc != 0)
            return rc;
    }
    return 0;
}

struct dump {
    char *text;
    size_t len;
};

static int dump_fn(mdm_txn_t *t, void *arg)
{
    struct dump *d = arg;
    mdm_cursor_t *c;
    int rc = mdm_cursor_open(t, MDM_T_DEVICES, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(c, &k, &v)) {
        d->text = mdm_realloc(d->text, d->len + k.len + v.len + 2);
        memcpy(d->text + d->len, k.data, k.len);
        d->len += k.len;
        d->text[d->len++] = '=';
        memcpy(d->text + d->len, v.data, v.len);
        d->len += v.len;
        d->text[d->len++] = '\n';
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static void assert_same_contents(mdm_store_t *a, mdm_store_t *b)
{
    struct dump da = {0}, db = {0};
    assert_rc(mdm_store_view(a, dump_fn, &da), 0);
    assert_rc(mdm_store_view(b, dump_fn, &db), 0);
    if (da.len != db.len || memcmp(da.text, db.text, da.len) != 0)
        fail_msg("the backup differs: %zu bytes of entries, the store %zu", db.len, da.len);
    mdm_free(da.text);
    mdm_free(db.text);
}

/* Holds a read transaction open in another process while the parent
 * backs up: the child says "in" on one pipe and waits on the other. */
struct reader_pipes {
    int in_w, go_r;
};

static int hold_fn(mdm_txn_t *t, void *arg)
{
    struct reader_pipes *p = arg;
    mdm_val_t v;
    (void)mdm_txn_get(t, MDM_T_DEVICES, MDM_VAL_STR("dev-0001"), &v);
    char c = 'i';
    if (write(p->in_w, &c, 1) != 1 || read(p->go_r, &c, 1) != 1)
        return MDM_EIO;
    return 0;
}

static void test_backup(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE);
    int n = 500;
    assert_rc(mdm_store_update(s, fill_fn, &n), 0);
    assert_rc(mdm_store_flush(s), 0);
    /* Free pages for the compaction to leave out. */
    assert_rc(mdm_store_update(s, del_some_fn, NULL), 0);
    assert_rc(mdm_store_flush(s), 0);

    int in[2], go[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(go), 0);
    struct child ch;
    if (child_start(&ch)) {
        close(in[0]);
        close(go[1]);
        mdm_store_config_t cfg = config(fx->path, MDM_STORE_RDONLY);
        mdm_store_t *r = NULL;
        if (mdm_store_open(&mdm_store_lmdb, &cfg, &r, NULL) != 0)
            child_exit(2);
        struct reader_pipes p = {in[1], go[0]};
        int rc = mdm_store_view(r, hold_fn, &p);
        mdm_store_close(r);
        child_exit(rc == 0 ? 0 : 3);
    }
    close(in[1]);
    close(go[0]);
    char c;
    assert_int_equal(read(in[0], &c, 1), 1);

    char bk[200];
    snprintf(bk, sizeof(bk), "%s/backup/one", fx->dir);
    mdm_err_t err = {0};
    int rc = mdm_store_backup(s, bk, &err);
    if (rc != 0)
        fail_msg("backup: %s: %s", mdm_errname(rc), err.msg);
    assert_int_equal(write(go[1], "g", 1), 1);
    assert_int_equal(child_wait(&ch), 0);
    close(in[0]);
    close(go[1]);

    char data[240];
    struct stat st;
    snprintf(data, sizeof(data), "%s/data.mdb", bk);
    assert_int_equal(stat(data, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(bk, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    mdm_store_t *b = open_store(bk, 0);
    assert_same_contents(s, b);
    mdm_store_close(b);

    /* A directory that holds a store is refused. */
    memset(&err, 0, sizeof(err));
    assert_rc(mdm_store_backup(s, bk, &err), MDM_EEXIST);
    if (strstr(err.msg, "data.mdb") == NULL)
        fail_msg("the message does not say why: %s", err.msg);

    /* With a batch open, the backup includes it. */
    assert_rc(put_str(s, "late", "in the batch"), 0);
    assert_true(mdm_store_pending(s));
    snprintf(bk, sizeof(bk), "%s/two", fx->dir);
    rc = mdm_store_backup(s, bk, &err);
    if (rc != 0)
        fail_msg("backup: %s: %s", mdm_errname(rc), err.msg);
    assert_false(mdm_store_pending(s));
    b = open_store(bk, MDM_STORE_RDONLY);
    assert_value(b, "late", "in the batch");
    assert_same_contents(s, b);
    mdm_store_close(b);
    mdm_store_close(s);
}

static void test_autoflush(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH);
    mdm_store_stats_t st0, st1;
    assert_rc(mdm_store_stats(s, &st0), 0);

    assert_rc(put_str(s, "one", "1"), 0);
    assert_false(mdm_store_pending(s));
    assert_int_equal(child_lookup(fx->path, "one", "1"), CHILD_FOUND);
    assert_rc(put_str(s, "two", "2"), 0);
    assert_int_equal(child_lookup(fx->path, "two", "2"), CHILD_FOUND);
    struct kv kv = {.table = MDM_T_DEVICES, .key = "three", .val = "3", .len = 1,
                    .ret = MDM_EPOLICY};
    assert_rc(mdm_store_update(s, put_fn, &kv), MDM_EPOLICY);
    assert_false(mdm_store_pending(s));
    assert_rc(mdm_store_stats(s, &st1), 0);
    assert_int_equal(st1.commits - st0.commits, 2);

    /* No write lock is left held: another process can write. */
    struct child ch;
    if (child_start(&ch)) {
        mdm_store_config_t cfg = config(fx->path, MDM_STORE_AUTOFLUSH);
        mdm_store_t *w = NULL;
        if (mdm_store_open(&mdm_store_lmdb, &cfg, &w, NULL) != 0)
            child_exit(2);
        int rc = put_str(w, "four", "4");
        mdm_store_close(w);
        child_exit(rc == 0 ? 0 : 3);
    }
    assert_int_equal(child_wait(&ch), 0);
    assert_value(s, "four", "4");
    assert_absent(s, "three");
    mdm_store_close(s);
}

static void test_kill9_durability(void **state)
{
    struct fx *fx = *state;
    mdm_store_close(open_store(fx->path, MDM_STORE_CREATE));
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        mdm_store_config_t cfg = config(fx->path, 0);
        mdm_store_t *s = NULL;
        if (mdm_store_open(&mdm_store_lmdb, &cfg, &s, NULL) != 0)
            _exit(2);
        for (int i = 0; i < 200; i++) {
            char k[32], v[32];
            snprintf(k, sizeof(k), "key-%03d", i);
            snprintf(v, sizeof(v), "value-%d", i);
            if (put_str(s, k, v) != 0 || mdm_store_flush(s) != 0)
                _exit(3);
            int done = i + 1;
            if (write(fds[1], &done, sizeof(done)) != sizeof(done))
                _exit(4);
        }
        /* Wait for the kill (an exit would run valgrind's leak check). */
        for (;;)
            pause();
    }
    close(fds[1]);
    int reported = 0, done;
    while (reported < 60 && read(fds[0], &done, sizeof(done)) == sizeof(done))
        reported = done;
    assert_int_equal(kill(pid, SIGKILL), 0);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    /* What the child wrote before it died counts too. */
    while (read(fds[0], &done, sizeof(done)) == sizeof(done))
        reported = done;
    close(fds[0]);
    if (reported < 60)
        fail_msg("the child reported only %d flushes (status %d)", reported, status);
    print_message("child killed after %d reported flushes\n", reported);

    mdm_store_t *s = open_store(fx->path, 0);
    for (int i = 0; i < reported; i++) {
        char k[32], v[32];
        snprintf(k, sizeof(k), "key-%03d", i);
        snprintf(v, sizeof(v), "value-%d", i);
        assert_value(s, k, v);
    }
    assert_rc(put_str(s, "after", "ok"), 0);
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);
}

/* Pages that one transaction allocates at the end of the file and frees
 * again (LMDB's "loose" pages) go to the freelist without ever being
 * written: the file of a healthy store can end before its last page. */
static int churn_fn(mdm_txn_t *t, void *arg)
{
    int n = *(int *)arg;
    static char big[200];
    memset(big, 'x', sizeof(big));
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            char k[32];
            snprintf(k, sizeof(k), "churn-%04d", i);
            int rc = pass == 0 ? mdm_txn_put(t, MDM_T_DEVICES, MDM_VAL_STR(k),
                                             MDM_VAL(big, sizeof(big)), 0)
                               : mdm_txn_del(t, MDM_T_DEVICES, MDM_VAL_STR(k));
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

static off_t file_size(const char *dir)
{
    char data[300];
    struct stat st;
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    assert_int_equal(stat(data, &st), 0);
    return st.st_size;
}

static void test_short_tail_of_free_pages(void **state)
{
    struct fx *fx = *state;
    mdm_store_t *s = open_store(fx->path, MDM_STORE_CREATE);
    int n = 300;
    assert_rc(mdm_store_update(s, fill_fn, &n), 0);
    assert_rc(mdm_store_flush(s), 0);
    n = 2000;
    assert_rc(mdm_store_update(s, churn_fn, &n), 0);
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);

    /* The condition itself: the file ends before the last page. */
    MDB_env *env;
    MDB_envinfo info;
    MDB_stat mst;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, fx->path, MDB_RDONLY, 0600), 0);
    assert_int_equal(mdb_env_info(env, &info), 0);
    assert_int_equal(mdb_env_stat(env, &mst), 0);
    mdb_env_close(env);
    off_t size = file_size(fx->path);
    off_t need = (off_t)(info.me_last_pgno + 1) * mst.ms_psize;
    if (size >= need)
        fail_msg("the file is not short (%lld >= %lld): the test does not test", (long long)size,
                 (long long)need);

    /* Such a store opens, read-write and read-only, and keeps its data. */
    s = open_store(fx->path, 0);
    assert_value(s, "dev-0299", "value of device 299");
    assert_absent(s, "churn-0000");
    assert_rc(put_str(s, "after", "reopened"), 0);
    assert_rc(mdm_store_flush(s), 0);
    mdm_store_close(s);
    s = open_store(fx->path, MDM_STORE_RDONLY);
    assert_value(s, "after", "reopened");
    mdm_store_close(s);

    /* A file cut inside its used pages is still refused, with a reason:
     * cut in half, and cut to its two meta pages, where the freelist's own
     * pages are gone too (reading them faults). */
    char data[300];
    snprintf(data, sizeof(data), "%s/data.mdb", fx->path);
    off_t cuts[] = {file_size(fx->path) / 2, 2 * (off_t)mst.ms_psize};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        assert_int_equal(truncate(data, cuts[i]), 0);
        for (int rw = 0; rw < 2; rw++) {
            mdm_store_config_t cfg = config(fx->path, rw ? 0 : MDM_STORE_RDONLY);
            mdm_err_t err = {0};
            s = NULL;
            assert_rc(mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err), MDM_EIO);
            assert_null(s);
            if (strstr(err.msg, "truncated") == NULL)
                fail_msg("the message does not say why: %s", err.msg);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_schema_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_get_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unflushed_writes_are_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_stay_valid_in_write_txn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_resized_by_other_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_autoflush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_durability, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_tail_of_free_pages, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
