/* Tests of the durable command queue (mdm/queue.h) over a real LMDB store
 * in a fresh temporary directory per test, opened with
 * MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH so that every call below commits
 * on its own, the way the CLI and the admin tools use the store.
 *
 * Every queue function takes the caller's transaction; the helpers wrap
 * one call each in mdm_store_update (or mdm_store_view for reads). Times
 * are explicit milliseconds so that expiry and retention are tested
 * without sleeping. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <plist/plist.h>

#include "mdm/queue.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/plist.h"

struct fx {
    char dir[64];
    char path[128];
    mdm_store_t *store;
};

#define assert_rc(got, want)                                                              \
    do {                                                                                  \
        int g_ = (got), w_ = (want);                                                      \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %d (%s), want %d (%s)", #got, g_, mdm_errname(g_), w_,      \
                     mdm_errname(w_));                                                    \
    } while (0)

#define assert_str(got, want)                                                             \
    do {                                                                                  \
        const char *g_ = (got), *w_ = (want);                                             \
        if (strcmp(g_, w_) != 0)                                                          \
            fail_msg("%s: got \"%s\", want \"%s\"", #got, g_, w_);                        \
    } while (0)

#define assert_num(got, want)                                                             \
    do {                                                                                  \
        long long g_ = (long long)(got), w_ = (long long)(want);                          \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %lld, want %lld", #got, g_, w_);                            \
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
    strcpy(fx->dir, "/tmp/moonmdm-queue-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        mdm_free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/db", fx->dir);
    mdm_store_config_t cfg = {.path = fx->path,
                              .sync = false,
                              .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_err_t err = {0};
    int rc = mdm_store_open(&mdm_store_lmdb, &cfg, &fx->store, &err);
    if (rc != 0) {
        fprintf(stderr, "opening %s: %s (%s)\n", fx->path, mdm_errname(rc), err.msg);
        nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        mdm_free(fx);
        return -1;
    }
    /* A hung test fails instead of blocking the suite. */
    alarm(100);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    alarm(0);
    mdm_store_close(fx->store);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    mdm_free(fx);
    return 0;
}

/* ---- one queue call per transaction -------------------------------------- */

enum op {
    OP_PUT,
    OP_GET,
    OP_ADD,
    OP_NEXT,
    OP_REPORT,
    OP_CANCEL,
    OP_CLEAR,
    OP_LENGTH,
    OP_EMPTY,
    OP_RESULT,
    OP_OF_ENROLLMENT,
    OP_OF_COMMAND,
    OP_PRUNE,
    OP_FORGET,
};

struct call {
    enum op op;
    const char *eid, *uuid, *status;
    const mdm_command_info_t *info;
    const void *data;
    size_t len;
    bool dedupe;
    int64_t now, session, cutoff;
    uint64_t notnow_max;
    size_t max;
    mdm_result_fn fn;
    void *arg;
    /* outputs */
    int outcome;
    char uuid_out[MDM_UUID_LEN + 1];
    mdm_buf_t *buf;
    size_t n;
    bool empty;
    char rtype[MDM_RTYPE_MAX];
    mdm_result_t *res;
    mdm_command_info_t *info_out;
};

static int call_fn(mdm_txn_t *t, void *arg)
{
    struct call *c = arg;
    switch (c->op) {
    case OP_PUT:
        return mdm_command_put(t, c->info, c->data, c->len);
    case OP_GET:
        return mdm_command_get(t, c->uuid, c->info_out, c->buf);
    case OP_ADD:
        return mdm_queue_add(t, c->eid, c->info, c->dedupe, &c->outcome, c->uuid_out);
    case OP_NEXT: {
        /* As the server does: nothing due is not a failure, so that the
         * expiries met on the way commit. */
        int rc = mdm_queue_next(t, c->eid, c->now, c->session, c->uuid_out, c->buf);
        c->outcome = rc;
        return rc == MDM_ENOTFOUND ? 0 : rc;
    }
    case OP_REPORT:
        return mdm_queue_report(t, c->eid, c->uuid, c->status, c->data, c->len, c->now,
                                c->session, c->notnow_max, &c->outcome, c->rtype);
    case OP_CANCEL:
        return mdm_queue_cancel(t, c->eid, c->uuid, c->now);
    case OP_CLEAR:
        return mdm_queue_clear(t, c->eid, c->status, c->now, &c->n);
    case OP_LENGTH:
        return mdm_queue_length(t, c->eid, &c->n);
    case OP_EMPTY:
        return mdm_queue_empty(t, c->eid, &c->empty);
    case OP_RESULT:
        return mdm_result_get(t, c->eid, c->uuid, c->res, c->buf);
    case OP_OF_ENROLLMENT:
        return mdm_results_of_enrollment(t, c->eid, c->fn, c->arg);
    case OP_OF_COMMAND:
        return mdm_results_of_command(t, c->uuid, c->fn, c->arg);
    case OP_PRUNE:
        return mdm_results_prune(t, c->cutoff, c->max, &c->n);
    case OP_FORGET:
        return mdm_queue_forget(t, c->eid);
    }
    return MDM_EINVAL;
}

static int update(struct fx *fx, struct call *c)
{
    return mdm_store_update(fx->store, call_fn, c);
}

static int view(struct fx *fx, struct call *c)
{
    return mdm_store_view(fx->store, call_fn, c);
}

/* A command whose plist is a recognisable text and whose de-duplication
 * hash is 32 copies of hash_byte. */
static mdm_command_info_t cmd_info(const char *uuid, const char *rt, int prio, int64_t created,
                                   int64_t expires, unsigned char hash_byte)
{
    mdm_command_info_t i;
    memset(&i, 0, sizeof(i));
    snprintf(i.uuid, sizeof(i.uuid), "%s", uuid);
    snprintf(i.request_type, sizeof(i.request_type), "%s", rt);
    i.priority = prio;
    i.created_ms = created;
    i.expires_ms = expires;
    memset(i.hash, hash_byte, sizeof(i.hash));
    return i;
}

static void plist_text(char *out, size_t n, const char *uuid)
{
    snprintf(out, n, "<plist><dict><key>CommandUUID</key><string>%s</string></dict></plist>",
             uuid);
}

/* Stores a command; the hash byte defaults to the UUID's first char. */
static void put_cmd(struct fx *fx, const mdm_command_info_t *info)
{
    char text[160];
    plist_text(text, sizeof(text), info->uuid);
    struct call c = {.op = OP_PUT, .info = info, .data = text, .len = strlen(text)};
    int rc = update(fx, &c);
    if (rc != 0)
        fail_msg("command_put %s: %s", info->uuid, mdm_errname(rc));
}

/* Stores and queues a command for one enrollment. */
static mdm_command_info_t queue_new(struct fx *fx, const char *eid, const char *uuid, int prio,
                                    int64_t expires)
{
    mdm_command_info_t i = cmd_info(uuid, "ProfileList", prio, 10, expires,
                                    (unsigned char)uuid[0]);
    put_cmd(fx, &i);
    struct call c = {.op = OP_ADD, .eid = eid, .info = &i};
    int rc = update(fx, &c);
    if (rc != 0 || c.outcome != MDM_ENQ_QUEUED)
        fail_msg("queue_add %s for %s: %s outcome %d", uuid, eid, mdm_errname(rc), c.outcome);
    return i;
}

static int add(struct fx *fx, const char *eid, const mdm_command_info_t *i, bool dedupe,
               int *outcome, char dup[MDM_UUID_LEN + 1])
{
    struct call c = {.op = OP_ADD, .eid = eid, .info = i, .dedupe = dedupe};
    int rc = update(fx, &c);
    *outcome = c.outcome;
    if (dup)
        memcpy(dup, c.uuid_out, MDM_UUID_LEN + 1);
    return rc;
}

/* mdm_queue_next; the UUID offered goes to uuid (empty when none). */
static int next(struct fx *fx, const char *eid, int64_t now, int64_t session,
                char uuid[MDM_UUID_LEN + 1], mdm_buf_t *plist)
{
    mdm_buf_t local = MDM_BUF_INIT;
    struct call c = {.op = OP_NEXT, .eid = eid, .now = now, .session = session,
                     .buf = plist ? plist : &local};
    int rc = update(fx, &c);
    if (rc == 0)
        rc = c.outcome;
    memcpy(uuid, rc == 0 ? c.uuid_out : "", rc == 0 ? MDM_UUID_LEN + 1 : 1);
    mdm_buf_free(&local);
    return rc;
}

/* Asserts that next offers want (or nothing, for want NULL). */
static void expect_next(struct fx *fx, const char *eid, int64_t now, int64_t session,
                        const char *want)
{
    char got[MDM_UUID_LEN + 1];
    int rc = next(fx, eid, now, session, got, NULL);
    if (want == NULL) {
        if (rc != MDM_ENOTFOUND)
            fail_msg("next(%s, now %lld, session %lld): %s \"%s\", want nothing", eid,
                     (long long)now, (long long)session, mdm_errname(rc), got);
        return;
    }
    if (rc != 0 || strcmp(got, want) != 0)
        fail_msg("next(%s, now %lld, session %lld): %s \"%s\", want %s", eid, (long long)now,
                 (long long)session, mdm_errname(rc), got, want);
}

/* The last report's RequestType, as mdm_queue_report gave it. */
static char last_rtype[MDM_RTYPE_MAX];

static int report(struct fx *fx, const char *eid, const char *uuid, const char *status,
                  int64_t now, int64_t session, uint64_t notnow_max, int *outcome)
{
    char raw[128];
    snprintf(raw, sizeof(raw), "report %s %s", uuid, status);
    struct call c = {.op = OP_REPORT, .eid = eid, .uuid = uuid, .status = status, .data = raw,
                     .len = strlen(raw), .now = now, .session = session,
                     .notnow_max = notnow_max, .outcome = -1};
    memset(c.rtype, 'x', sizeof(c.rtype));
    int rc = update(fx, &c);
    *outcome = c.outcome;
    memcpy(last_rtype, c.rtype, sizeof(last_rtype));
    last_rtype[sizeof(last_rtype) - 1] = '\0';
    return rc;
}

/* Reports status and asserts the outcome. */
static void expect_report(struct fx *fx, const char *eid, const char *uuid, const char *status,
                          int64_t now, int64_t session, int want)
{
    int outcome = -1;
    int rc = report(fx, eid, uuid, status, now, session, 50, &outcome);
    if (rc != 0 || outcome != want)
        fail_msg("report %s %s for %s: %s outcome %d, want outcome %d", status, uuid, eid,
                 mdm_errname(rc), outcome, want);
}

static size_t length(struct fx *fx, const char *eid)
{
    struct call c = {.op = OP_LENGTH, .eid = eid};
    int rc = view(fx, &c);
    if (rc != 0)
        fail_msg("queue_length %s: %s", eid, mdm_errname(rc));
    return c.n;
}

static bool empty(struct fx *fx, const char *eid)
{
    struct call c = {.op = OP_EMPTY, .eid = eid};
    int rc = view(fx, &c);
    if (rc != 0)
        fail_msg("queue_empty %s: %s", eid, mdm_errname(rc));
    return c.empty;
}

static int result(struct fx *fx, const char *eid, const char *uuid, mdm_result_t *r,
                  mdm_buf_t *raw)
{
    struct call c = {.op = OP_RESULT, .eid = eid, .uuid = uuid, .res = r, .buf = raw};
    return view(fx, &c);
}

static void expect_status(struct fx *fx, const char *eid, const char *uuid, const char *want)
{
    mdm_result_t r;
    int rc = result(fx, eid, uuid, &r, NULL);
    if (rc != 0)
        fail_msg("result %s/%s: %s, want status %s", eid, uuid, mdm_errname(rc), want);
    if (strcmp(r.status, want) != 0)
        fail_msg("result %s/%s: status %s, want %s", eid, uuid, r.status, want);
}

static int command_get(struct fx *fx, const char *uuid, mdm_command_info_t *info, mdm_buf_t *pl)
{
    struct call c = {.op = OP_GET, .uuid = uuid, .info_out = info, .buf = pl};
    return view(fx, &c);
}

static size_t prune(struct fx *fx, int64_t cutoff, size_t max)
{
    struct call c = {.op = OP_PRUNE, .cutoff = cutoff, .max = max};
    int rc = update(fx, &c);
    if (rc != 0)
        fail_msg("prune(cutoff %lld, max %zu): %s", (long long)cutoff, max, mdm_errname(rc));
    return c.n;
}

/* Results collected by the iteration callbacks. */
struct seen {
    size_t n;
    char eid[16][260];
    char uuid[16][MDM_UUID_LEN + 1];
    char status[16][32];
    char request_type[16][96];
    int stop_after; /* non-zero: return 42 after that many */
};

static int collect(const mdm_result_t *r, void *arg)
{
    struct seen *s = arg;
    if (s->n < 16) {
        snprintf(s->eid[s->n], sizeof(s->eid[0]), "%s", r->eid);
        snprintf(s->uuid[s->n], sizeof(s->uuid[0]), "%s", r->uuid);
        snprintf(s->status[s->n], sizeof(s->status[0]), "%s", r->status);
        snprintf(s->request_type[s->n], sizeof(s->request_type[0]), "%s", r->request_type);
    }
    s->n++;
    if (s->stop_after > 0 && (int)s->n == s->stop_after)
        return 42;
    return 0;
}

/* The index of uuid in what was seen, or -1. */
static int seen_uuid(const struct seen *s, const char *uuid)
{
    for (size_t i = 0; i < s->n && i < 16; i++)
        if (strcmp(s->uuid[i], uuid) == 0)
            return (int)i;
    return -1;
}

static int seen_eid(const struct seen *s, const char *eid)
{
    for (size_t i = 0; i < s->n && i < 16; i++)
        if (strcmp(s->eid[i], eid) == 0)
            return (int)i;
    return -1;
}

static int of_enrollment(struct fx *fx, const char *eid, struct seen *s)
{
    struct call c = {.op = OP_OF_ENROLLMENT, .eid = eid, .fn = collect, .arg = s};
    return view(fx, &c);
}

static int of_command(struct fx *fx, const char *uuid, struct seen *s)
{
    struct call c = {.op = OP_OF_COMMAND, .uuid = uuid, .fn = collect, .arg = s};
    return view(fx, &c);
}

#define U(n) "00000000-0000-4000-8000-00000000000" #n
#define UA U(1)
#define UB U(2)
#define UC U(3)
#define UD U(4)
#define UE U(5)
#define UF U(6)
#define E1 "DEVICE-1"
#define E2 "DEVICE-2"
#define E3 "DEVICE-2:user"

/* ---- commands ------------------------------------------------------------ */

static void test_command_put_get(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t in = cmd_info(UA, "DeviceInformation", 7, 1234, 99999, 0xab);
    put_cmd(fx, &in);

    mdm_command_info_t out;
    mdm_buf_t pl = MDM_BUF_INIT;
    assert_rc(command_get(fx, UA, &out, &pl), 0);
    assert_str(out.uuid, UA);
    assert_str(out.request_type, "DeviceInformation");
    assert_num(out.priority, 7);
    assert_num(out.created_ms, 1234);
    assert_num(out.expires_ms, 99999);
    assert_memory_equal(out.hash, in.hash, 32);
    char want[160];
    plist_text(want, sizeof(want), UA);
    assert_str(pl.data, want);
    assert_num(pl.len, strlen(want));

    /* Either output may be left out. */
    mdm_buf_reset(&pl);
    assert_rc(command_get(fx, UA, NULL, &pl), 0);
    assert_str(pl.data, want);
    assert_rc(command_get(fx, UA, &out, NULL), 0);
    assert_str(out.request_type, "DeviceInformation");
    mdm_buf_free(&pl);

    /* A UUID names one command for ever. */
    char text[] = "other";
    struct call c = {.op = OP_PUT, .info = &in, .data = text, .len = 5};
    assert_rc(update(fx, &c), MDM_EEXIST);
    assert_rc(command_get(fx, UB, &out, NULL), MDM_ENOTFOUND);
}

/* ---- ordering ------------------------------------------------------------ */

static void test_order_priority_then_enqueue_order(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E1, UC, 10, 0);
    queue_new(fx, E1, UD, 5, 0);
    queue_new(fx, E1, UE, 255, 0);
    queue_new(fx, E1, UF, 5, 0);
    assert_num(length(fx, E1), 6);
    assert_num(length(fx, E2), 0);

    const char *want[] = {UE, UC, UD, UF, UA, UB};
    for (size_t i = 0; i < 6; i++) {
        expect_next(fx, E1, 100, 1, want[i]);
        /* Unanswered, the same command is offered again. */
        expect_next(fx, E1, 100, 1, want[i]);
        expect_report(fx, E1, want[i], "Acknowledged", 200 + (int64_t)i, 1,
                      MDM_REPORT_RECORDED);
        assert_num(length(fx, E1), 5 - i);
    }
    expect_next(fx, E1, 300, 1, NULL);
    expect_next(fx, E2, 300, 1, NULL);
}

static void test_next_returns_plist_and_marks_sent(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Queued");
    assert_str(r.request_type, "ProfileList");
    assert_num(r.queued_ms, 10);
    assert_num(r.sent_ms, 0);

    mdm_buf_t pl = MDM_BUF_INIT;
    char got[MDM_UUID_LEN + 1];
    assert_rc(next(fx, E1, 555, 1, got, &pl), 0);
    assert_str(got, UA);
    char want[160];
    plist_text(want, sizeof(want), UA);
    assert_str(pl.data, want);
    mdm_buf_free(&pl);

    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Queued");
    assert_num(r.sent_ms, 555);
    assert_num(r.updated_ms, 555);
    assert_str(r.eid, E1);
    assert_str(r.uuid, UA);
}

/* The entries of one enrollment are not offered to another whose id is a
 * prefix or an extension of it. */
static void test_enrollments_are_apart(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, "DEV", UA, 0, 0);
    queue_new(fx, "DEV:u", UB, 0, 0);
    queue_new(fx, "DEVX", UC, 0, 0);
    expect_next(fx, "DEV", 1, 1, UA);
    expect_report(fx, "DEV", UA, "Acknowledged", 2, 1, MDM_REPORT_RECORDED);
    expect_next(fx, "DEV", 3, 1, NULL);
    expect_next(fx, "DEV:u", 3, 1, UB);
    expect_next(fx, "DEVX", 3, 1, UC);
    /* A report for another enrollment's command is not its own. */
    expect_report(fx, "DEV", UB, "Acknowledged", 4, 1, MDM_REPORT_UNKNOWN);
    expect_status(fx, "DEV:u", UB, "Queued");
}

/* ---- NotNow ------------------------------------------------------------- */

static void test_notnow_skipped_in_session_offered_in_next(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);

    expect_next(fx, E1, 100, 1, UA);
    expect_report(fx, E1, UA, "NotNow", 110, 1, MDM_REPORT_NOTNOW);
    /* Same session: A waits, B goes ahead. */
    expect_next(fx, E1, 120, 1, UB);
    expect_report(fx, E1, UB, "Acknowledged", 130, 1, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 140, 1, NULL);
    assert_num(length(fx, E1), 1);

    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "NotNow");
    assert_num(r.notnow_count, 1);
    assert_num(r.notnow_ms, 110);
    assert_num(r.completed_ms, 0);

    /* The next session (the device's next Idle) gets it again. */
    expect_next(fx, E1, 200, 2, UA);
    expect_report(fx, E1, UA, "NotNow", 210, 2, MDM_REPORT_NOTNOW);
    expect_next(fx, E1, 220, 2, NULL);
    expect_next(fx, E1, 300, 3, UA);
    expect_report(fx, E1, UA, "Acknowledged", 310, 3, MDM_REPORT_RECORDED);
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Acknowledged");
    assert_num(r.notnow_count, 2);
    assert_num(r.completed_ms, 310);
    assert_num(length(fx, E1), 0);
}

static void test_notnow_limit_drops_the_command(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    int outcome;
    for (int s = 1; s <= 3; s++) {
        expect_next(fx, E1, 100 * s, s, UA);
        assert_rc(report(fx, E1, UA, "NotNow", 100 * s + 1, s, 3, &outcome), 0);
        assert_num(outcome, MDM_REPORT_NOTNOW);
    }
    expect_next(fx, E1, 400, 4, UA);
    assert_rc(report(fx, E1, UA, "NotNow", 401, 4, 3, &outcome), 0);
    assert_num(outcome, MDM_REPORT_NOTNOW_LIMIT);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "NotNowLimit");
    assert_num(r.notnow_count, 4);
    assert_num(r.completed_ms, 401);
    assert_num(length(fx, E1), 0);
    expect_next(fx, E1, 500, 5, NULL);

    /* notnow_max 0 means no limit. */
    queue_new(fx, E1, UB, 0, 0);
    expect_next(fx, E1, 9, 9, UB);
    for (int s = 10; s < 70; s++) {
        assert_rc(report(fx, E1, UB, "NotNow", s, s, 0, &outcome), 0);
        if (outcome != MDM_REPORT_NOTNOW)
            fail_msg("NotNow %d with no limit: outcome %d", s - 9, outcome);
    }
    expect_status(fx, E1, UB, "NotNow");
}

/* ---- expiry -------------------------------------------------------------- */

static void test_ttl_expiry_marks_expired(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 1000);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E1, UC, 0, 5000);

    /* Before its time it is offered like any other. */
    expect_next(fx, E1, 999, 1, UA);
    expect_status(fx, E1, UA, "Queued");
    /* At expiry it is dropped on the way to the next one. */
    expect_next(fx, E1, 1000, 2, UB);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Expired");
    assert_num(r.completed_ms, 1000);
    assert_num(length(fx, E1), 2);
    /* A report for it now is a duplicate: it is terminal. */
    expect_report(fx, E1, UA, "Acknowledged", 1001, 2, MDM_REPORT_DUPLICATE);
    expect_status(fx, E1, UA, "Expired");

    expect_report(fx, E1, UB, "Acknowledged", 1002, 2, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 6000, 3, NULL);
    expect_status(fx, E1, UC, "Expired");
    assert_num(length(fx, E1), 0);
}

/* ---- reports ------------------------------------------------------------- */

static void test_report_outcomes(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E1, UC, 0, 0);
    queue_new(fx, E2, UD, 0, 0);

    /* recorded, with the device's report kept as the result */
    expect_next(fx, E1, 50, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 100, 1, MDM_REPORT_RECORDED);
    assert_str(last_rtype, "ProfileList");
    mdm_result_t r;
    mdm_buf_t raw = MDM_BUF_INIT;
    assert_rc(result(fx, E1, UA, &r, &raw), 0);
    assert_str(r.status, "Acknowledged");
    assert_num(r.completed_ms, 100);
    assert_num(r.updated_ms, 100);
    assert_num(r.sent_ms, 50);
    assert_null(r.raw);
    assert_str(raw.data, "report " UA " Acknowledged");

    /* duplicate: already terminal; the first result stays */
    expect_report(fx, E1, UA, "Error", 200, 1, MDM_REPORT_DUPLICATE);
    assert_rc(result(fx, E1, UA, &r, &raw), 0);
    assert_str(r.status, "Acknowledged");
    assert_num(r.completed_ms, 100);
    assert_str(raw.data, "report " UA " Acknowledged");
    mdm_buf_free(&raw);

    /* unknown: never queued for this enrollment, or an unusable id */
    expect_report(fx, E1, UD, "Acknowledged", 300, 1, MDM_REPORT_UNKNOWN);
    assert_str(last_rtype, "");
    expect_report(fx, E1, UF, "Acknowledged", 300, 1, MDM_REPORT_UNKNOWN);
    expect_report(fx, "", UA, "Acknowledged", 300, 1, MDM_REPORT_UNKNOWN);
    expect_status(fx, E2, UD, "Queued");

    /* unknown too: queued here but not sent yet (a device cannot have run
     * it on this channel); it stays queued, and no NotNow counts */
    expect_report(fx, E1, UB, "Acknowledged", 350, 1, MDM_REPORT_UNKNOWN);
    expect_report(fx, E1, UB, "NotNow", 350, 1, MDM_REPORT_UNKNOWN);
    expect_status(fx, E1, UB, "Queued");

    /* notnow */
    expect_next(fx, E1, 380, 1, UB);
    expect_report(fx, E1, UB, "NotNow", 400, 1, MDM_REPORT_NOTNOW);
    expect_status(fx, E1, UB, "NotNow");

    /* Error and CommandFormatError are results too. */
    expect_report(fx, E1, UB, "Error", 500, 2, MDM_REPORT_RECORDED);
    expect_status(fx, E1, UB, "Error");
    expect_next(fx, E1, 550, 2, UC);
    expect_report(fx, E1, UC, "CommandFormatError", 600, 2, MDM_REPORT_RECORDED);
    expect_status(fx, E1, UC, "CommandFormatError");
    assert_num(length(fx, E1), 0);
    assert_true(empty(fx, E1));

    /* A status the protocol does not have changes nothing. */
    int outcome;
    assert_rc(report(fx, E2, UD, "Idle", 700, 1, 50, &outcome), MDM_EINVAL);
    assert_rc(report(fx, E2, UD, "Bogus", 700, 1, 50, &outcome), MDM_EINVAL);
    expect_status(fx, E2, UD, "Queued");
    assert_num(length(fx, E2), 1);
}

/* ---- cancel and clear ---------------------------------------------------- */

static void test_cancel(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t a = queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    int outcome;
    assert_rc(add(fx, E2, &a, false, &outcome, NULL), 0);

    struct call c = {.op = OP_CANCEL, .eid = E1, .uuid = UA, .now = 77};
    assert_rc(update(fx, &c), 0);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Canceled");
    assert_num(r.completed_ms, 77);
    assert_num(length(fx, E1), 1);
    expect_next(fx, E1, 80, 1, UB);
    /* The same command for another enrollment is untouched. */
    expect_status(fx, E2, UA, "Queued");
    expect_next(fx, E2, 80, 1, UA);

    /* Not waiting any more, never queued, or a bad id: ENOTFOUND. */
    assert_rc(update(fx, &c), MDM_ENOTFOUND);
    c.uuid = UF;
    assert_rc(update(fx, &c), MDM_ENOTFOUND);
    c.eid = "";
    assert_rc(update(fx, &c), MDM_ENOTFOUND);
    expect_report(fx, E1, UB, "Acknowledged", 90, 1, MDM_REPORT_RECORDED);
    struct call c2 = {.op = OP_CANCEL, .eid = E1, .uuid = UB, .now = 95};
    assert_rc(update(fx, &c2), MDM_ENOTFOUND);
    expect_status(fx, E1, UB, "Acknowledged");

    /* A NotNow command can still be canceled. */
    expect_report(fx, E2, UA, "NotNow", 100, 1, MDM_REPORT_NOTNOW);
    struct call c3 = {.op = OP_CANCEL, .eid = E2, .uuid = UA, .now = 110};
    assert_rc(update(fx, &c3), 0);
    expect_status(fx, E2, UA, "Canceled");
    assert_num(length(fx, E2), 0);
}

static void test_clear(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 3, 0);
    queue_new(fx, E1, UC, 0, 0);
    queue_new(fx, E1, UD, 0, 0);
    queue_new(fx, E2, UE, 0, 0);
    expect_next(fx, E1, 10, 1, UB);
    expect_report(fx, E1, UB, "NotNow", 11, 1, MDM_REPORT_NOTNOW);
    expect_next(fx, E1, 12, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 13, 1, MDM_REPORT_RECORDED);

    struct call c = {.op = OP_CLEAR, .eid = E1, .status = "Cleared", .now = 500};
    assert_rc(update(fx, &c), 0);
    assert_num(c.n, 3);
    assert_num(length(fx, E1), 0);
    expect_status(fx, E1, UA, "Acknowledged");
    mdm_result_t r;
    const char *cleared[] = {UB, UC, UD};
    for (size_t i = 0; i < 3; i++) {
        assert_rc(result(fx, E1, cleared[i], &r, NULL), 0);
        assert_str(r.status, "Cleared");
        assert_num(r.completed_ms, 500);
    }
    expect_next(fx, E1, 600, 2, NULL);
    expect_status(fx, E2, UE, "Queued");
    assert_num(length(fx, E2), 1);

    /* Nothing left: zero, not an error. */
    assert_rc(update(fx, &c), 0);
    assert_num(c.n, 0);
}

/* ---- de-duplication ------------------------------------------------------ */

static void test_dedupe(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t a = cmd_info(UA, "ProfileList", 0, 1, 0, 0x11);
    mdm_command_info_t b = cmd_info(UB, "ProfileList", 0, 2, 0, 0x11);
    mdm_command_info_t c = cmd_info(UC, "SecurityInfo", 0, 3, 0, 0x22);
    put_cmd(fx, &a);
    put_cmd(fx, &b);
    put_cmd(fx, &c);

    int outcome;
    char dup[MDM_UUID_LEN + 1] = "";
    assert_rc(add(fx, E1, &a, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    /* The same hash waits: nothing is queued, and the waiting UUID is told. */
    assert_rc(add(fx, E1, &b, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_DUPLICATE);
    assert_str(dup, UA);
    assert_num(length(fx, E1), 1);
    assert_rc(result(fx, E1, UB, &(mdm_result_t){0}, NULL), MDM_ENOTFOUND);
    /* Another hash, another enrollment, or no dedupe asked: queued. */
    assert_rc(add(fx, E1, &c, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    assert_rc(add(fx, E2, &b, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    assert_num(length(fx, E1), 2);

    /* Once A is answered it no longer counts. */
    expect_next(fx, E1, 10, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 11, 1, MDM_REPORT_RECORDED);
    assert_rc(add(fx, E1, &b, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    assert_num(length(fx, E1), 2);
    /* Without dedupe the same hash is queued twice. */
    mdm_command_info_t d = cmd_info(UD, "ProfileList", 0, 4, 0, 0x11);
    put_cmd(fx, &d);
    assert_rc(add(fx, E1, &d, false, &outcome, NULL), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    assert_num(length(fx, E1), 3);
    /* dup_uuid may be NULL. */
    mdm_command_info_t e = cmd_info(UE, "ProfileList", 0, 5, 0, 0x11);
    put_cmd(fx, &e);
    assert_rc(add(fx, E1, &e, true, &outcome, NULL), 0);
    assert_num(outcome, MDM_ENQ_DUPLICATE);
}

/* A command past its time to live still waits in the queue until the
 * device's next connection drops it; it duplicates nothing, or the command
 * sent again to a device that was away would never reach it. */
static void test_dedupe_ignores_expired(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t a = cmd_info(UA, "DeviceLock", 0, 1000, 61000, 0x33);
    mdm_command_info_t b = cmd_info(UB, "DeviceLock", 0, 3601000, 0, 0x33);
    put_cmd(fx, &a);
    put_cmd(fx, &b);
    int outcome;
    char dup[MDM_UUID_LEN + 1] = "";
    assert_rc(add(fx, E1, &a, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    assert_rc(add(fx, E1, &b, true, &outcome, dup), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    expect_next(fx, E1, 3602000, 1, UB);
    expect_status(fx, E1, UA, "Expired");
}

static int damage_command(mdm_txn_t *t, void *arg)
{
    return mdm_txn_put(t, MDM_T_COMMANDS, MDM_VAL_STR((const char *)arg), MDM_VAL("\x07junk", 5),
                       0);
}

/* A command record that does not decode can never be sent: it is finished
 * as Error, and the commands behind it still go out. */
static void test_damaged_command_does_not_block(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 5, 0);
    queue_new(fx, E1, UB, 0, 0);
    assert_rc(mdm_store_update(fx->store, damage_command, (void *)UA), 0);
    expect_next(fx, E1, 10, 1, UB);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Error");
    assert_num(length(fx, E1), 1);
}

static void test_queue_length_and_bad_ids(void **state)
{
    struct fx *fx = *state;
    assert_num(length(fx, E1), 0);
    for (int i = 0; i < 40; i++) {
        char uuid[MDM_UUID_LEN + 1];
        snprintf(uuid, sizeof(uuid), "00000000-0000-4000-8000-%012d", 100 + i);
        queue_new(fx, i % 2 ? E1 : E2, uuid, i % 3, 0);
    }
    assert_num(length(fx, E1), 20);
    assert_num(length(fx, E2), 20);
    assert_false(empty(fx, E1));
    assert_true(empty(fx, "no-such-enrollment"));

    /* Empty or over-long enrollment ids are refused, not stored. */
    struct call c = {.op = OP_LENGTH, .eid = ""};
    assert_rc(view(fx, &c), MDM_EINVAL);
    char longid[300];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    mdm_command_info_t i = cmd_info(UF, "ProfileList", 0, 1, 0, 1);
    int outcome;
    assert_rc(add(fx, longid, &i, false, &outcome, NULL), MDM_EINVAL);
    assert_rc(add(fx, "", &i, false, &outcome, NULL), MDM_EINVAL);
    /* A control character first would put its results among the waiting
     * results' keys. */
    assert_rc(add(fx, "\x01" E1, &i, false, &outcome, NULL), MDM_EINVAL);
    assert_rc(add(fx, "\t" E1, &i, false, &outcome, NULL), MDM_EINVAL);
    char got[MDM_UUID_LEN + 1];
    assert_rc(next(fx, "", 1, 1, got, NULL), MDM_EINVAL);
}

/* A queue entry whose command record is gone is answered for with Error
 * and the next one is offered. */
static void test_missing_command_becomes_error(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t ghost = cmd_info(UA, "ProfileList", 9, 1, 0, 1);
    int outcome;
    assert_rc(add(fx, E1, &ghost, false, &outcome, NULL), 0);
    queue_new(fx, E1, UB, 0, 0);
    expect_next(fx, E1, 10, 1, UB);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), 0);
    assert_str(r.status, "Error");
    assert_num(r.completed_ms, 10);
    assert_num(length(fx, E1), 1);
}

/* ---- result listings ----------------------------------------------------- */

static void test_results_of_enrollment_and_command(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t x = cmd_info(UA, "DeviceInformation", 0, 1, 0, 1);
    put_cmd(fx, &x);
    int outcome;
    const char *targets[] = {E1, E2, E3};
    for (size_t i = 0; i < 3; i++)
        assert_rc(add(fx, targets[i], &x, false, &outcome, NULL), 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E2, UC, 0, 0);
    expect_next(fx, E1, 10, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 11, 1, MDM_REPORT_RECORDED);

    struct seen s = {0};
    assert_rc(of_command(fx, UA, &s), 0);
    assert_num(s.n, 3);
    for (size_t i = 0; i < 3; i++) {
        int k = seen_eid(&s, targets[i]);
        if (k < 0)
            fail_msg("results_of_command %s: target %s missing", UA, targets[i]);
        assert_str(s.uuid[k], UA);
        assert_str(s.request_type[k], "DeviceInformation");
        assert_str(s.status[k], i == 0 ? "Acknowledged" : "Queued");
    }

    memset(&s, 0, sizeof(s));
    assert_rc(of_enrollment(fx, E1, &s), 0);
    assert_num(s.n, 2);
    int a = seen_uuid(&s, UA), b = seen_uuid(&s, UB);
    if (a < 0 || b < 0)
        fail_msg("results_of_enrollment %s: A at %d, B at %d", E1, a, b);
    assert_str(s.status[a], "Acknowledged");
    assert_str(s.status[b], "Queued");
    assert_str(s.eid[a], E1);
    assert_str(s.request_type[b], "ProfileList");

    /* E2's listing does not include E3 = "E2:user", and vice versa. */
    memset(&s, 0, sizeof(s));
    assert_rc(of_enrollment(fx, E2, &s), 0);
    assert_num(s.n, 2);
    assert_true(seen_uuid(&s, UA) >= 0 && seen_uuid(&s, UC) >= 0);
    memset(&s, 0, sizeof(s));
    assert_rc(of_enrollment(fx, E3, &s), 0);
    assert_num(s.n, 1);
    assert_str(s.uuid[0], UA);

    /* Nothing known: no calls. */
    memset(&s, 0, sizeof(s));
    assert_rc(of_enrollment(fx, "NOBODY", &s), 0);
    assert_rc(of_command(fx, UF, &s), 0);
    assert_num(s.n, 0);

    /* The callback's non-zero return stops the walk and is returned. */
    memset(&s, 0, sizeof(s));
    s.stop_after = 1;
    assert_rc(of_command(fx, UA, &s), 42);
    assert_num(s.n, 1);
    memset(&s, 0, sizeof(s));
    s.stop_after = 1;
    assert_rc(of_enrollment(fx, E1, &s), 42);
    assert_num(s.n, 1);
}

/* ---- retention ----------------------------------------------------------- */

static void test_prune_only_completed_before_cutoff(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E1, UC, 0, 0);
    queue_new(fx, E1, UD, 0, 0); /* stays waiting */
    expect_next(fx, E1, 90, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 100, 1, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 190, 1, UB);
    expect_report(fx, E1, UB, "Error", 200, 1, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 290, 1, UC);
    expect_report(fx, E1, UC, "Acknowledged", 300, 1, MDM_REPORT_RECORDED);

    assert_num(prune(fx, 100, 10), 0); /* strictly before the cutoff */
    assert_num(prune(fx, 250, 10), 2);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), MDM_ENOTFOUND);
    assert_rc(result(fx, E1, UB, &r, NULL), MDM_ENOTFOUND);
    expect_status(fx, E1, UC, "Acknowledged");
    expect_status(fx, E1, UD, "Queued");
    /* Commands nobody needs any more are deleted with their last result. */
    assert_rc(command_get(fx, UA, NULL, NULL), MDM_ENOTFOUND);
    assert_rc(command_get(fx, UB, NULL, NULL), MDM_ENOTFOUND);
    assert_rc(command_get(fx, UC, NULL, NULL), 0);

    /* A waiting result is never pruned, however old. */
    assert_num(prune(fx, INT64_MAX, 10), 1);
    expect_status(fx, E1, UD, "Queued");
    assert_rc(command_get(fx, UD, NULL, NULL), 0);
    expect_next(fx, E1, 1000, 2, UD);
    assert_num(prune(fx, INT64_MAX, 10), 0);
}

static void test_prune_in_batches(void **state)
{
    struct fx *fx = *state;
    char uuids[7][MDM_UUID_LEN + 1];
    for (int i = 0; i < 7; i++) {
        snprintf(uuids[i], sizeof(uuids[i]), "00000000-0000-4000-8000-%012d", 500 + i);
        queue_new(fx, i % 2 ? E1 : E2, uuids[i], 0, 0);
        expect_next(fx, i % 2 ? E1 : E2, 1000 + i, 1, uuids[i]);
        expect_report(fx, i % 2 ? E1 : E2, uuids[i], "Acknowledged", 1000 + i, 1,
                      MDM_REPORT_RECORDED);
    }
    assert_num(prune(fx, 2000, 3), 3);
    /* Oldest first. */
    for (int i = 0; i < 7; i++) {
        mdm_result_t r;
        int rc = result(fx, i % 2 ? E1 : E2, uuids[i], &r, NULL);
        if (rc != (i < 3 ? MDM_ENOTFOUND : 0))
            fail_msg("after one batch of 3, result %d: %s", i, mdm_errname(rc));
    }
    assert_num(prune(fx, 2000, 3), 3);
    assert_num(prune(fx, 2000, 3), 1);
    assert_num(prune(fx, 2000, 3), 0);
    struct seen s = {0};
    assert_rc(of_enrollment(fx, E1, &s), 0);
    assert_rc(of_enrollment(fx, E2, &s), 0);
    assert_num(s.n, 0);
}

static void test_prune_keeps_command_while_a_target_remains(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t x = cmd_info(UA, "ProfileList", 0, 1, 0, 1);
    put_cmd(fx, &x);
    int outcome;
    assert_rc(add(fx, E1, &x, false, &outcome, NULL), 0);
    assert_rc(add(fx, E2, &x, false, &outcome, NULL), 0);
    expect_next(fx, E1, 90, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 100, 1, MDM_REPORT_RECORDED);

    assert_num(prune(fx, 1000, 10), 1);
    assert_rc(result(fx, E1, UA, &(mdm_result_t){0}, NULL), MDM_ENOTFOUND);
    assert_rc(command_get(fx, UA, NULL, NULL), 0);
    struct seen s = {0};
    assert_rc(of_command(fx, UA, &s), 0);
    assert_num(s.n, 1);
    assert_str(s.eid[0], E2);
    /* E2 still gets it. */
    expect_next(fx, E2, 200, 1, UA);
    expect_report(fx, E2, UA, "Acknowledged", 500, 1, MDM_REPORT_RECORDED);
    assert_num(prune(fx, 1000, 10), 1);
    assert_rc(command_get(fx, UA, NULL, NULL), MDM_ENOTFOUND);
}

/* ---- forget -------------------------------------------------------------- */

static void test_forget(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t shared = cmd_info(UA, "ProfileList", 0, 1, 0, 1);
    put_cmd(fx, &shared);
    int outcome;
    assert_rc(add(fx, E1, &shared, false, &outcome, NULL), 0);
    assert_rc(add(fx, E2, &shared, false, &outcome, NULL), 0);
    queue_new(fx, E1, UB, 0, 0); /* E1 only, completed */
    queue_new(fx, E1, UC, 0, 0); /* E1 only, waiting */
    queue_new(fx, E2, UD, 0, 0);
    expect_next(fx, E1, 90, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 110, 1, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 95, 1, UB);
    expect_report(fx, E1, UB, "Acknowledged", 100, 1, MDM_REPORT_RECORDED);

    struct call c = {.op = OP_FORGET, .eid = E1};
    assert_rc(update(fx, &c), 0);
    assert_num(length(fx, E1), 0);
    struct seen s = {0};
    assert_rc(of_enrollment(fx, E1, &s), 0);
    assert_num(s.n, 0);
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, NULL), MDM_ENOTFOUND);
    assert_rc(result(fx, E1, UC, &r, NULL), MDM_ENOTFOUND);
    /* The shared command stays for E2; E1's own commands are gone. */
    assert_rc(command_get(fx, UA, NULL, NULL), 0);
    assert_rc(command_get(fx, UB, NULL, NULL), MDM_ENOTFOUND);
    assert_rc(command_get(fx, UC, NULL, NULL), MDM_ENOTFOUND);
    memset(&s, 0, sizeof(s));
    assert_rc(of_command(fx, UA, &s), 0);
    assert_num(s.n, 1);
    assert_str(s.eid[0], E2);
    /* Nothing of E1 is left in the retention index either. */
    assert_num(prune(fx, INT64_MAX, 100), 0);
    /* E2 is untouched. */
    assert_num(length(fx, E2), 2);
    expect_next(fx, E2, 200, 1, UA);

    /* Forgetting an enrollment with nothing is fine. */
    c.eid = "NOBODY";
    assert_rc(update(fx, &c), 0);
}

static void test_status_terminal(void **state)
{
    (void)state;
    assert_false(mdm_status_terminal("Queued"));
    assert_false(mdm_status_terminal("NotNow"));
    const char *terminal[] = {"Acknowledged", "Error", "CommandFormatError", "Expired",
                              "Canceled", "NotNowLimit", "Cleared"};
    for (size_t i = 0; i < sizeof(terminal) / sizeof(terminal[0]); i++)
        if (!mdm_status_terminal(terminal[i]))
            fail_msg("%s should be terminal", terminal[i]);
}

/* ---- the stored result record ---------------------------------------------- */

static void test_result_record_codec(void **state)
{
    (void)state;
    mdm_result_rec_t r, d;
    memset(&r, 0, sizeof(r));
    r.has_status = true;
    snprintf(r.status, sizeof(r.status), "Acknowledged");
    snprintf(r.request_type, sizeof(r.request_type), "DeviceInformation");
    r.queued_at = 1;
    r.updated_at = -2;
    r.sent_at = 3;
    r.completed_at = INT64_MAX;
    r.notnow_at = 5;
    r.notnow_session = -1;
    r.notnow_count = UINT64_MAX;
    r.priority = 255;
    r.seq = 1234567890123ull;
    r.has_raw = true;
    mdm_buf_append(&r.raw, "report\0bytes", 12);
    mdm_buf_t enc = MDM_BUF_INIT;
    mdm_result_rec_encode(&r, &enc);
    assert_rc(mdm_result_rec_decode(enc.data, enc.len, &d), 0);
    assert_true(d.has_status);
    assert_str(d.status, "Acknowledged");
    assert_str(d.request_type, "DeviceInformation");
    assert_num(d.queued_at, 1);
    assert_num(d.updated_at, -2);
    assert_num(d.sent_at, 3);
    assert_true(d.completed_at == INT64_MAX);
    assert_num(d.notnow_at, 5);
    assert_num(d.notnow_session, -1);
    assert_true(d.notnow_count == UINT64_MAX);
    assert_num(d.priority, 255);
    assert_true(d.seq == 1234567890123ull);
    assert_true(d.has_raw);
    assert_int_equal(d.raw.len, 12);
    assert_memory_equal(d.raw.data, "report\0bytes", 12);
    mdm_result_rec_free(&d);

    /* Every cut short, one byte too many, an unknown flag: refused. */
    for (size_t n = 0; n < enc.len; n++) {
        if (mdm_result_rec_decode(enc.data, n, &d) != MDM_EPARSE)
            fail_msg("a record cut to %zu of %zu bytes decoded", n, enc.len);
        mdm_result_rec_free(&d);
    }
    mdm_buf_putc(&enc, 'x');
    assert_rc(mdm_result_rec_decode(enc.data, enc.len, &d), MDM_EPARSE);
    mdm_result_rec_free(&d);
    enc.len--;
    ((unsigned char *)enc.data)[4] |= 0x80;
    assert_rc(mdm_result_rec_decode(enc.data, enc.len, &d), MDM_EPARSE);
    mdm_result_rec_free(&d);

    /* Without a report. */
    r.has_raw = false;
    mdm_result_rec_encode(&r, &enc);
    assert_rc(mdm_result_rec_decode(enc.data, enc.len, &d), 0);
    assert_false(d.has_raw);
    assert_int_equal(d.raw.len, 0);
    mdm_result_rec_free(&d);
    mdm_result_rec_free(&r);
    mdm_buf_free(&enc);
}

/* A result record under its stored key: the finished results' key
 * (eid NUL uuid), or with live the waiting results' ("\x01" first). */
struct raw_rec {
    const char *eid, *uuid;
    mdm_buf_t *val; /* in: the bytes to put (put); out: the stored bytes (get) */
    bool put, del, live;
};

static int raw_rec_fn(mdm_txn_t *t, void *arg)
{
    struct raw_rec *a = arg;
    mdm_buf_t k = MDM_BUF_INIT;
    if (a->live)
        mdm_buf_putc(&k, '\x01');
    mdm_buf_append(&k, a->eid, strlen(a->eid) + 1);
    mdm_buf_puts(&k, a->uuid);
    int rc;
    if (a->del) {
        rc = mdm_txn_del(t, MDM_T_RESULTS, MDM_VAL(k.data, k.len));
    } else if (a->put) {
        rc = mdm_txn_put(t, MDM_T_RESULTS, MDM_VAL(k.data, k.len), MDM_VAL(a->val->data, a->val->len),
                         0);
    } else {
        mdm_val_t v;
        rc = mdm_txn_get(t, MDM_T_RESULTS, MDM_VAL(k.data, k.len), &v);
        if (rc == 0) {
            mdm_buf_reset(a->val);
            mdm_buf_append(a->val, v.data, v.len);
        }
    }
    mdm_buf_free(&k);
    return rc;
}

/* Whether the result of (eid, uuid) is stored under the finished results'
 * key, or with live under the waiting results' key of schema 3. */
static bool stored_at(struct fx *fx, const char *eid, const char *uuid, bool live)
{
    mdm_buf_t val = MDM_BUF_INIT;
    struct raw_rec get = {.eid = eid, .uuid = uuid, .val = &val, .live = live};
    int rc = mdm_store_view(fx->store, raw_rec_fn, &get);
    mdm_buf_free(&val);
    assert_true(rc == 0 || rc == MDM_ENOTFOUND);
    return rc == 0;
}

#define QHDR (MDM_UUID_LEN + 8)

/* The queue entry of (eid, uuid) and its command's target index entry
 * (cmdt): read them (or, with put, write val and pos instead). */
struct raw_q {
    const char *eid, *uuid;
    mdm_buf_t *val, *pos; /* the entry's value; the index entry's value */
    bool put;
    bool found;
};

static int raw_q_fn(mdm_txn_t *t, void *arg)
{
    struct raw_q *a = arg;
    a->found = false;
    mdm_buf_t k = MDM_BUF_INIT;
    mdm_buf_append(&k, a->eid, strlen(a->eid) + 1);
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(t, MDM_T_QUEUE, &c);
    mdm_val_t prefix = MDM_VAL(k.data, k.len), ck, cv;
    mdm_buf_t key = MDM_BUF_INIT;
    for (rc = rc ? rc : mdm_cursor_seek(c, prefix, &ck, &cv);
         rc == 0 && mdm_val_has_prefix(ck, prefix); rc = mdm_cursor_next(c, &ck, &cv)) {
        if (cv.len >= QHDR && memcmp(cv.data, a->uuid, strlen(a->uuid)) == 0) {
            a->found = true;
            mdm_buf_append(&key, ck.data, ck.len);
            if (!a->put) {
                mdm_buf_reset(a->val);
                mdm_buf_append(a->val, cv.data, cv.len);
            }
            break;
        }
    }
    mdm_cursor_close(c);
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    if (rc == 0 && a->found && a->put)
        rc = mdm_txn_put(t, MDM_T_QUEUE, MDM_VAL(key.data, key.len),
                         MDM_VAL(a->val->data, a->val->len), 0);
    mdm_buf_reset(&k);
    mdm_buf_append(&k, "cmdt", 5);
    mdm_buf_puts(&k, a->uuid);
    mdm_buf_putc(&k, '\0');
    mdm_buf_puts(&k, a->eid);
    if (rc == 0 && a->put) {
        rc = mdm_txn_put(t, MDM_T_INDEX, MDM_VAL(k.data, k.len),
                         MDM_VAL(a->pos->data, a->pos->len), 0);
    } else if (rc == 0) {
        mdm_val_t v;
        mdm_buf_reset(a->pos);
        if (mdm_txn_get(t, MDM_T_INDEX, MDM_VAL(k.data, k.len), &v) == 0)
            mdm_buf_append(a->pos, v.data, v.len);
    }
    mdm_buf_free(&k);
    mdm_buf_free(&key);
    return rc;
}

/* The length of the queue entry of (eid, uuid), 0 without one; and the
 * length of its index entry's value in *pos_len. */
static size_t qent_len(struct fx *fx, const char *eid, const char *uuid, size_t *pos_len)
{
    mdm_buf_t val = MDM_BUF_INIT, pos = MDM_BUF_INIT;
    struct raw_q q = {.eid = eid, .uuid = uuid, .val = &val, .pos = &pos};
    assert_rc(mdm_store_view(fx->store, raw_q_fn, &q), 0);
    size_t n = q.found ? val.len : 0;
    if (pos_len)
        *pos_len = pos.len;
    mdm_buf_free(&val);
    mdm_buf_free(&pos);
    return n;
}

/* A waiting result is kept in its queue entry while it is queued, sent and
 * put off, and the index entry points at it; it moves to the finished
 * results when it finishes. Every reader finds both, and forgetting
 * removes both. */
static void test_waiting_results_kept_in_queue_entries(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    size_t pos = 0;
    assert_true(qent_len(fx, E1, UA, &pos) > QHDR);
    assert_num(pos, 9);
    for (int live = 0; live <= 1; live++)
        assert_false(stored_at(fx, E1, UA, live));
    expect_status(fx, E1, UA, "Queued");
    expect_next(fx, E1, 50, 1, UA);
    assert_true(qent_len(fx, E1, UA, NULL) > QHDR);
    expect_report(fx, E1, UA, "NotNow", 55, 1, MDM_REPORT_NOTNOW);
    assert_true(qent_len(fx, E1, UA, NULL) > QHDR);
    assert_false(stored_at(fx, E1, UA, false));
    expect_status(fx, E1, UA, "NotNow");
    expect_next(fx, E1, 60, 2, UA);
    expect_report(fx, E1, UA, "Acknowledged", 70, 2, MDM_REPORT_RECORDED);
    assert_num(qent_len(fx, E1, UA, &pos), 0);
    assert_num(pos, 9); /* names no entry any more */
    assert_true(stored_at(fx, E1, UA, false));
    assert_false(stored_at(fx, E1, UA, true));
    expect_status(fx, E1, UA, "Acknowledged");
    expect_status(fx, E1, UB, "Queued");
    /* A duplicate report finds the finished result. */
    expect_report(fx, E1, UA, "Acknowledged", 75, 2, MDM_REPORT_DUPLICATE);
    /* Another enrollment's report of the command is not E1's. */
    expect_report(fx, E2, UB, "Acknowledged", 75, 2, MDM_REPORT_UNKNOWN);

    struct seen s = {0};
    assert_rc(of_enrollment(fx, E1, &s), 0);
    assert_num(s.n, 2);
    assert_true(seen_uuid(&s, UA) >= 0 && seen_uuid(&s, UB) >= 0);
    struct seen t = {0};
    assert_rc(of_command(fx, UB, &t), 0);
    assert_num(t.n, 1);
    assert_true(seen_eid(&t, E1) >= 0);

    struct call c = {.op = OP_FORGET, .eid = E1};
    assert_rc(update(fx, &c), 0);
    assert_num(qent_len(fx, E1, UB, NULL), 0);
    for (int live = 0; live <= 1; live++) {
        assert_false(stored_at(fx, E1, UA, live));
        assert_false(stored_at(fx, E1, UB, live));
    }
    assert_num(length(fx, E1), 0);
}

/* The waiting result record kept in the queue entry of (eid, uuid). */
static void entry_record(struct fx *fx, const char *eid, const char *uuid, mdm_buf_t *rec)
{
    mdm_buf_t q = MDM_BUF_INIT, pos = MDM_BUF_INIT;
    struct raw_q get = {.eid = eid, .uuid = uuid, .val = &q, .pos = &pos};
    assert_rc(mdm_store_view(fx->store, raw_q_fn, &get), 0);
    assert_true(get.found && q.len > QHDR);
    mdm_buf_reset(rec);
    mdm_buf_append(rec, (const char *)q.data + QHDR, q.len - QHDR);
    mdm_buf_free(&q);
    mdm_buf_free(&pos);
}

/* Turns the queue entry of (eid, uuid) into an earlier layout's: its
 * header alone, an index entry without a position, and the result record
 * in val under the finished results' key (schema 2) or the waiting ones'
 * (live, schema 3). Returns the entry's sequence number. */
static uint64_t make_legacy(struct fx *fx, const char *eid, const char *uuid, mdm_buf_t *val,
                            bool live)
{
    mdm_buf_t q = MDM_BUF_INIT, pos = MDM_BUF_INIT;
    struct raw_q get = {.eid = eid, .uuid = uuid, .val = &q, .pos = &pos};
    assert_rc(mdm_store_view(fx->store, raw_q_fn, &get), 0);
    assert_true(get.found && q.len > QHDR);
    mdm_result_rec_t cur;
    assert_rc(mdm_result_rec_decode((const char *)q.data + QHDR, q.len - QHDR, &cur), 0);
    uint64_t seq = cur.seq;
    mdm_result_rec_free(&cur);
    q.len = QHDR;
    mdm_buf_reset(&pos);
    struct raw_q put = {.eid = eid, .uuid = uuid, .val = &q, .pos = &pos, .put = true};
    assert_rc(mdm_store_update(fx->store, raw_q_fn, &put), 0);
    struct raw_rec rec = {.eid = eid, .uuid = uuid, .val = val, .put = true, .live = live};
    assert_rc(mdm_store_update(fx->store, raw_rec_fn, &rec), 0);
    mdm_buf_free(&q);
    mdm_buf_free(&pos);
    return seq;
}

/* A result written as a plist by an earlier version and kept, waiting,
 * under the finished results' key as schema 2 did, is offered, answered
 * and rewritten in the binary layout, moving to where it belongs at each
 * step. */
static void test_legacy_plist_result_record(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    mdm_buf_t val = MDM_BUF_INIT;
    mdm_buf_t probe = MDM_BUF_INIT;
    mdm_result_rec_t cur;
    entry_record(fx, E1, UA, &probe);
    assert_rc(mdm_result_rec_decode(probe.data, probe.len, &cur), 0);
    /* As the earlier version wrote it. */
    plist_t d = plist_new_dict();
    mdm_pl_set_str(d, "status", "Queued");
    mdm_pl_set_str(d, "request_type", "ProfileList");
    mdm_pl_set_int(d, "queued_at", 10);
    mdm_pl_set_int(d, "updated_at", 10);
    mdm_pl_set_uint(d, "priority", 0);
    mdm_pl_set_uint(d, "seq", cur.seq);
    mdm_result_rec_free(&cur);
    mdm_plist_to_bin_buf(d, &val);
    plist_free(d);
    make_legacy(fx, E1, UA, &val, false);
    assert_num(qent_len(fx, E1, UA, NULL), QHDR);
    expect_status(fx, E1, UA, "Queued");
    struct seen s = {0};
    assert_rc(of_enrollment(fx, E1, &s), 0);
    assert_num(s.n, 1);

    expect_next(fx, E1, 50, 1, UA);
    size_t pos = 0;
    assert_true(qent_len(fx, E1, UA, &pos) > QHDR);
    assert_num(pos, 9);
    assert_false(stored_at(fx, E1, UA, false));
    assert_false(stored_at(fx, E1, UA, true));
    expect_report(fx, E1, UA, "Acknowledged", 60, 1, MDM_REPORT_RECORDED);
    assert_str(last_rtype, "ProfileList");
    assert_num(length(fx, E1), 0);
    struct raw_rec get = {.eid = E1, .uuid = UA, .val = &probe};
    assert_rc(mdm_store_view(fx->store, raw_rec_fn, &get), 0);
    assert_true(probe.len > 4 && memcmp(probe.data, "mdR\x01", 4) == 0);
    assert_rc(mdm_result_rec_decode(probe.data, probe.len, &cur), 0);
    assert_str(cur.status, "Acknowledged");
    assert_num(cur.queued_at, 10);
    assert_num(cur.sent_at, 50);
    assert_num(cur.completed_at, 60);
    assert_true(cur.has_raw);
    mdm_result_rec_free(&cur);
    mdm_buf_free(&val);
    mdm_buf_free(&probe);
}

/* A waiting result that schema 3 kept under "\x01" + its key moves into
 * its queue entry on its next change (a NotNow here), and is reported and
 * answered from there; another left in the old place is cancelled from
 * there. */
static void test_schema3_waiting_result_moves_into_its_entry(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    for (int i = 0; i < 2; i++) {
        const char *u = i ? UB : UA;
        mdm_buf_t val = MDM_BUF_INIT;
        entry_record(fx, E1, u, &val);
        make_legacy(fx, E1, u, &val, true);
        mdm_buf_free(&val);
    }
    assert_true(stored_at(fx, E1, UA, true));
    expect_next(fx, E1, 50, 1, UA);
    /* Sent: moved. */
    assert_false(stored_at(fx, E1, UA, true));
    assert_true(qent_len(fx, E1, UA, NULL) > QHDR);
    expect_report(fx, E1, UA, "NotNow", 55, 1, MDM_REPORT_NOTNOW);
    expect_status(fx, E1, UA, "NotNow");
    struct seen s = {0};
    assert_rc(of_enrollment(fx, E1, &s), 0);
    assert_num(s.n, 2);
    /* UB, still in the old place, is cancelled from there. */
    struct call c = {.op = OP_CANCEL, .eid = E1, .uuid = UB, .now = 60};
    assert_rc(update(fx, &c), 0);
    assert_false(stored_at(fx, E1, UB, true));
    assert_true(stored_at(fx, E1, UB, false));
    expect_status(fx, E1, UB, "Canceled");
    assert_num(length(fx, E1), 1);
    expect_next(fx, E1, 70, 2, UA);
    expect_report(fx, E1, UA, "Acknowledged", 75, 2, MDM_REPORT_RECORDED);
    assert_num(length(fx, E1), 0);
    expect_status(fx, E1, UA, "Acknowledged");
}

/* A command is queued once per enrollment: naming the same enrollment
 * again (targets ["E1", "E1"]) queues nothing more. Two entries under one
 * index entry made the device get the command after every answer. */
static void test_same_command_twice_is_queued_once(void **state)
{
    struct fx *fx = *state;
    mdm_command_info_t i = cmd_info(UA, "ProfileList", 0, 10, 0, 'a');
    put_cmd(fx, &i);
    int outcome = -1;
    assert_rc(add(fx, E1, &i, false, &outcome, NULL), 0);
    assert_num(outcome, MDM_ENQ_QUEUED);
    assert_rc(add(fx, E1, &i, false, &outcome, NULL), 0);
    assert_num(outcome, MDM_ENQ_ALREADY);
    assert_rc(add(fx, E1, &i, true, &outcome, NULL), 0);
    assert_num(outcome, MDM_ENQ_ALREADY);
    assert_num(length(fx, E1), 1);
    expect_next(fx, E1, 50, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 55, 1, MDM_REPORT_RECORDED);
    assert_num(length(fx, E1), 0);
    char got[MDM_UUID_LEN + 1];
    assert_rc(next(fx, E1, 60, 2, got, NULL), MDM_ENOTFOUND);
    /* Once finished, the same command is not queued again either. */
    assert_rc(add(fx, E1, &i, false, &outcome, NULL), 0);
    assert_num(outcome, MDM_ENQ_ALREADY);
    assert_num(length(fx, E1), 0);
}

/* Clearing a queue ends whatever its entries hold: here a second entry
 * that holds the UUID and result of the first (the state that queueing a
 * command twice used to leave). Each pass removes the first entry. Run in
 * a child with a 5 s alarm, as the old code never returned. The child
 * tells its verdict through a pipe, not its exit status: under valgrind
 * that is the leak check's (the child never closes the parent's store). */
static void test_clear_ends_with_an_entry_kept_twice(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    mdm_buf_t va = MDM_BUF_INIT, pa = MDM_BUF_INIT, vb = MDM_BUF_INIT, pb = MDM_BUF_INIT;
    struct raw_q ga = {.eid = E1, .uuid = UA, .val = &va, .pos = &pa};
    struct raw_q gb = {.eid = E1, .uuid = UB, .val = &vb, .pos = &pb};
    assert_rc(mdm_store_view(fx->store, raw_q_fn, &ga), 0);
    assert_rc(mdm_store_view(fx->store, raw_q_fn, &gb), 0);
    assert_true(ga.found && gb.found);
    /* UB's entry now holds UA's value; UA's index still points at its own. */
    struct raw_q put = {.eid = E1, .uuid = UB, .val = &va, .pos = &pb, .put = true};
    assert_rc(mdm_store_update(fx->store, raw_q_fn, &put), 0);
    assert_num(length(fx, E1), 2);
    mdm_buf_free(&va);
    mdm_buf_free(&pa);
    mdm_buf_free(&vb);
    mdm_buf_free(&pb);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(5);
        struct call c = {.op = OP_CLEAR, .eid = E1, .status = "Cleared", .now = 100};
        int rc = update(fx, &c);
        char verdict = rc == 0 && c.n == 2 && length(fx, E1) == 0 ? 'y' : 'n';
        _exit(write(fds[1], &verdict, 1) == 1 ? 0 : 1);
    }
    close(fds[1]);
    char verdict = 0;
    ssize_t got = read(fds[0], &verdict, 1);
    close(fds[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (got != 1 || verdict != 'y')
        fail_msg("clear: %s %d", WIFSIGNALED(st) ? "killed by signal" : "wrong outcome, exit",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

/* A step whose transaction is rolled back after it ran, as the store does
 * before running it again when the map was full. */
static int upgrade_rolled_back_fn(mdm_txn_t *t, void *arg)
{
    int rc = mdm_queue_upgrade_txn(t, arg);
    return rc != 0 ? rc : MDM_EMAPFULL;
}

/* The upgrade moves every waiting result of schemas 2 and 3 into its queue
 * entry, a bounded number of entries per step, resuming where the last
 * step ended; it leaves what it cannot move (a queue entry without a
 * result), and once done, later runs stop at once. */
static void test_upgrade_moves_every_waiting_result(void **state)
{
    struct fx *fx = *state;
    const char *uuids[] = {UA, UB, UC, UD};
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E2, UC, 0, 0);
    queue_new(fx, E2, UD, 0, 0);
    /* UA, UB of schema 3, UC of schema 2; UD stays as it is. */
    for (int i = 0; i < 3; i++) {
        const char *eid = i < 2 ? E1 : E2;
        mdm_buf_t val = MDM_BUF_INIT;
        entry_record(fx, eid, uuids[i], &val);
        make_legacy(fx, eid, uuids[i], &val, i < 2);
        mdm_buf_free(&val);
    }
    /* A queue entry of the header alone whose result is gone. */
    queue_new(fx, E3, UE, 0, 0);
    {
        mdm_buf_t q = MDM_BUF_INIT, pos = MDM_BUF_INIT;
        struct raw_q get = {.eid = E3, .uuid = UE, .val = &q, .pos = &pos};
        assert_rc(mdm_store_view(fx->store, raw_q_fn, &get), 0);
        q.len = QHDR;
        mdm_buf_reset(&pos);
        struct raw_q put = {.eid = E3, .uuid = UE, .val = &q, .pos = &pos, .put = true};
        assert_rc(mdm_store_update(fx->store, raw_q_fn, &put), 0);
        mdm_buf_free(&q);
        mdm_buf_free(&pos);
    }
    assert_num(qent_len(fx, E1, UA, NULL), QHDR);

    mdm_queue_upgrade_t u = {.scan_max = 2, .from = MDM_BUF_INIT, .step_from = MDM_BUF_INIT};
    /* A step that does not go through counts for nothing: the next one
     * starts where the last kept step ended (here, at the beginning). */
    assert_rc(mdm_store_update(fx->store, upgrade_rolled_back_fn, &u), MDM_EMAPFULL);
    assert_num(u.scanned, 0);
    assert_num(u.from.len, 0);
    int steps = 0;
    while (!u.done && steps < 10) {
        assert_rc(mdm_queue_upgrade_step(fx->store, &u), 0);
        steps++;
        if (steps == 1) {
            /* Rolled back mid-way, too. */
            size_t from = u.from.len;
            u.scan_max = 5;
            assert_rc(mdm_store_update(fx->store, upgrade_rolled_back_fn, &u), MDM_EMAPFULL);
            assert_num(u.scanned, 2);
            assert_num(u.from.len, from);
            assert_false(u.done);
            u.scan_max = 2;
        }
    }
    assert_true(u.done);
    assert_num(steps, 3); /* five entries, two a step */
    assert_num(u.scanned, 5);
    assert_num(u.moved, 3);
    mdm_queue_upgrade_free(&u);
    for (int i = 0; i < 4; i++) {
        const char *eid = i < 2 ? E1 : E2;
        size_t pos = 0;
        assert_true(qent_len(fx, eid, uuids[i], &pos) > QHDR);
        assert_num(pos, 9);
        assert_false(stored_at(fx, eid, uuids[i], true));
        assert_false(stored_at(fx, eid, uuids[i], false));
        expect_status(fx, eid, uuids[i], "Queued");
    }
    assert_num(qent_len(fx, E3, UE, NULL), QHDR);
    /* Done before: one read. */
    mdm_queue_upgrade_t again = {.from = MDM_BUF_INIT, .step_from = MDM_BUF_INIT};
    assert_rc(mdm_queue_upgrade_step(fx->store, &again), 0);
    assert_true(again.done);
    assert_num(again.scanned, 0);
    mdm_queue_upgrade_free(&again);
    /* The moved ones are offered and answered as usual. */
    expect_next(fx, E1, 50, 1, UA);
    expect_report(fx, E1, UA, "Acknowledged", 60, 1, MDM_REPORT_RECORDED);
    expect_status(fx, E1, UA, "Acknowledged");
}

/* Replaces the result record kept in the queue entry of (eid, uuid) with
 * rec (the entry's header and index entry stay). */
static void rewrite_entry_record(struct fx *fx, const char *eid, const char *uuid,
                                 const void *rec, size_t len)
{
    mdm_buf_t q = MDM_BUF_INIT, pos = MDM_BUF_INIT;
    struct raw_q get = {.eid = eid, .uuid = uuid, .val = &q, .pos = &pos};
    assert_rc(mdm_store_view(fx->store, raw_q_fn, &get), 0);
    assert_true(get.found && q.len > QHDR);
    q.len = QHDR;
    mdm_buf_append(&q, rec, len);
    struct raw_q put = {.eid = eid, .uuid = uuid, .val = &q, .pos = &pos, .put = true};
    assert_rc(mdm_store_update(fx->store, raw_q_fn, &put), 0);
    mdm_buf_free(&q);
    mdm_buf_free(&pos);
}

/* A queue entry whose result is already finished (which no legal sequence
 * leaves) is not offered again: next skips and drops the entry, and the
 * result stays readable. */
static void test_next_drops_an_entry_whose_result_finished(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    mdm_buf_t rec = MDM_BUF_INIT;
    entry_record(fx, E1, UA, &rec);
    mdm_result_rec_t r;
    assert_rc(mdm_result_rec_decode(rec.data, rec.len, &r), 0);
    snprintf(r.status, sizeof(r.status), "Acknowledged");
    r.completed_at = 40;
    mdm_result_rec_encode(&r, &rec);
    mdm_result_rec_free(&r);
    rewrite_entry_record(fx, E1, UA, rec.data, rec.len);
    mdm_buf_free(&rec);
    expect_next(fx, E1, 50, 1, UB);
    assert_num(qent_len(fx, E1, UA, NULL), 0);
    assert_num(length(fx, E1), 1);
    expect_status(fx, E1, UA, "Acknowledged");
    expect_report(fx, E1, UB, "Acknowledged", 55, 1, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 60, 1, NULL);
}

/* A queue entry whose result does not decode blocks nothing: next offers
 * the commands after it (the entry stays for a person to look at), and
 * clearing the queue (a re-enrollment) removes it with the others. */
static void test_undecodable_entry_is_skipped_and_cleared(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E1, UC, 0, 0);
    queue_new(fx, E1, UD, 0, 0);
    rewrite_entry_record(fx, E1, UA, "damaged", 7);
    /* The same kept where schema 3 kept a waiting result. */
    mdm_buf_t bad = MDM_BUF_INIT;
    mdm_buf_append(&bad, "damaged", 7);
    make_legacy(fx, E1, UD, &bad, true);
    mdm_buf_free(&bad);
    expect_next(fx, E1, 50, 1, UB);
    expect_report(fx, E1, UB, "Acknowledged", 55, 1, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 60, 1, UC);
    expect_report(fx, E1, UC, "NotNow", 65, 1, MDM_REPORT_NOTNOW);
    expect_next(fx, E1, 70, 2, UC);
    assert_num(length(fx, E1), 3);
    struct call c = {.op = OP_CLEAR, .eid = E1, .status = "Cleared", .now = 100};
    assert_rc(update(fx, &c), 0);
    assert_num(c.n, 3);
    assert_num(length(fx, E1), 0);
    expect_status(fx, E1, UC, "Cleared");
    expect_next(fx, E1, 110, 2, NULL);
}

/* The device's final report for a command whose stored result does not
 * decode is recorded over it, as for a readable one, and the queue entry
 * goes; a NotNow for it is ignored. Either way the report succeeds, so
 * the device is not refused over and over. */
static void test_report_over_an_undecodable_result(void **state)
{
    struct fx *fx = *state;
    queue_new(fx, E1, UA, 0, 0);
    queue_new(fx, E1, UB, 0, 0);
    queue_new(fx, E1, UC, 0, 0);
    rewrite_entry_record(fx, E1, UA, "damaged", 7);
    /* The same kept where schema 3 kept a waiting result. */
    mdm_buf_t bad = MDM_BUF_INIT;
    mdm_buf_append(&bad, "damaged", 7);
    make_legacy(fx, E1, UC, &bad, true);
    mdm_buf_free(&bad);
    assert_num(length(fx, E1), 3);

    expect_report(fx, E1, UA, "NotNow", 40, 1, MDM_REPORT_UNKNOWN);
    assert_num(length(fx, E1), 3);
    expect_report(fx, E1, UA, "Acknowledged", 50, 1, MDM_REPORT_RECORDED);
    assert_str(last_rtype, "ProfileList");
    mdm_buf_t raw = MDM_BUF_INIT;
    mdm_result_t r;
    assert_rc(result(fx, E1, UA, &r, &raw), 0);
    assert_str(r.status, "Acknowledged");
    assert_str(r.request_type, "ProfileList");
    assert_num(r.completed_ms, 50);
    mdm_buf_putc(&raw, '\0');
    assert_str(raw.data, "report " UA " Acknowledged");
    mdm_buf_free(&raw);
    assert_num(length(fx, E1), 2);
    /* Sent again, it is a duplicate, as for any finished command. */
    expect_report(fx, E1, UA, "Acknowledged", 55, 1, MDM_REPORT_DUPLICATE);

    expect_report(fx, E1, UC, "Error", 60, 1, MDM_REPORT_RECORDED);
    expect_status(fx, E1, UC, "Error");
    assert_num(length(fx, E1), 1);
    expect_next(fx, E1, 70, 2, UB);
    expect_report(fx, E1, UB, "Acknowledged", 75, 2, MDM_REPORT_RECORDED);
    expect_next(fx, E1, 80, 2, NULL);
    /* Both are pruned with the other finished results. */
    assert_num(prune(fx, 1000, 10), 3);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_command_put_get),
        T(test_order_priority_then_enqueue_order),
        T(test_next_returns_plist_and_marks_sent),
        T(test_enrollments_are_apart),
        T(test_notnow_skipped_in_session_offered_in_next),
        T(test_notnow_limit_drops_the_command),
        T(test_ttl_expiry_marks_expired),
        T(test_report_outcomes),
        T(test_cancel),
        T(test_clear),
        T(test_dedupe),
        T(test_dedupe_ignores_expired),
        T(test_damaged_command_does_not_block),
        T(test_queue_length_and_bad_ids),
        T(test_missing_command_becomes_error),
        T(test_results_of_enrollment_and_command),
        T(test_prune_only_completed_before_cutoff),
        T(test_prune_in_batches),
        T(test_prune_keeps_command_while_a_target_remains),
        T(test_forget),
        T(test_status_terminal),
        T(test_result_record_codec),
        T(test_legacy_plist_result_record),
        T(test_waiting_results_kept_in_queue_entries),
        T(test_schema3_waiting_result_moves_into_its_entry),
        T(test_upgrade_moves_every_waiting_result),
        T(test_same_command_twice_is_queued_once),
        T(test_clear_ends_with_an_entry_kept_twice),
        T(test_next_drops_an_entry_whose_result_finished),
        T(test_undecodable_entry_is_skipped_and_cleared),
        T(test_report_over_an_undecodable_result),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
