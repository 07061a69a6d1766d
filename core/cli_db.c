/* moonmdm db: backup, restore and check of the store.
 *
 * backup  copies the store while a server may be serving from it: LMDB lets
 *         several processes open one environment, and mdm_store_backup
 *         copies one snapshot (a read transaction), compacted, so the copy
 *         is consistent however busy the server is. The copy is then opened
 *         and checked like `db check` does.
 * restore puts a backup in place of a stopped server's store. The backup is
 *         copied next to the store, opened and checked there (schema
 *         version, consistency), and only then swapped in with two renames;
 *         the old store is kept as <store>.before-restore-<UTC time>.
 * check   prints the schema version and the entries of every table, and
 *         verifies the invariants between tables that the code keeps (see
 *         mdm/queue.h and mdm/certauth.h for the key layouts).
 *
 * Whether a process has the store open is read from LMDB's own lock: every
 * process that opens an environment holds a shared fcntl lock on the first
 * byte of lock.mdb for as long as it has it open. A write-lock probe
 * (F_GETLK) on that byte conflicts with any holder and names one of them. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <plist/plist.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "cli.h"
#include "config.h"
#include "mdm/certauth.h"
#include "mdm/queue.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

static const char db_usage[] =
    "usage: moonmdm db backup DIR [--no-verify] [-c FILE] [-d DIR] [--store DIR]\n"
    "       moonmdm db restore PATH [--force] [-c FILE] [-d DIR]\n"
    "       moonmdm db check [DIR] [-c FILE] [-d DIR] [--store DIR]\n"
    "\n"
    "backup   writes a consistent, compacted copy of the store to DIR/data.mdb\n"
    "         (DIR must not hold one yet). The server may be running. The copy\n"
    "         is then opened and checked (--no-verify skips that).\n"
    "restore  replaces the store with the backup PATH (a backup directory or its\n"
    "         data.mdb). The server must be stopped. An existing store is only\n"
    "         replaced with --force; it is kept as <store>.before-restore-<time>.\n"
    "         A backup that fails the consistency check is refused unless --force.\n"
    "check    prints the schema version and the entries of every table and\n"
    "         checks that the tables agree (queue, results, indexes, certificate\n"
    "         bindings). Exits 1 and lists the problems if they do not. Works on\n"
    "         a running server's store, or on a backup: db check DIR.\n"
    "\n"
    "options:\n"
    "  -c, --config FILE  config file (default: $MOONMDM_CONFIG, then\n"
    "                     <data-dir>/moonmdm.conf.lua, else the defaults)\n"
    "  -d, --data-dir DIR data directory when no config file sets it\n"
    "      --store DIR    the store directory to read, instead of the config's\n"
    "      --force        restore: replace an existing store\n"
    "      --no-verify    backup: do not open and check the copy\n"
    "  -h, --help         this help\n"
    "\n"
    "Exit status: 0 success, 1 failure or problems found, 2 usage error.\n";

/* Problems beyond this many are counted, not listed. */
#define MAX_LISTED 100

/* ---- small helpers ------------------------------------------------------- */

/* Formats a byte count for people: "1.2 MiB". */
static const char *human(char out[32], uint64_t n)
{
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    if (n < 1024) {
        snprintf(out, 32, "%llu bytes", (unsigned long long)n);
        return out;
    }
    double v = (double)n;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    snprintf(out, 32, "%.1f %s", v, units[u]);
    return out;
}

/* A printable form of bytes (non-printable ones as \xNN), cut at 120
 * characters. The last eight results stay valid. */
static const char *show(const void *p, size_t n)
{
    static char ring[8][512];
    static int next;
    char *out = ring[next];
    next = (next + 1) % 8;
    const unsigned char *b = p;
    size_t o = 0;
    for (size_t i = 0; i < n && o < 480; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\')
            out[o++] = (char)b[i];
        else
            o += (size_t)snprintf(out + o, 8, "\\x%02x", b[i]);
        if (o >= 120 && i + 1 < n) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
    }
    out[o] = '\0';
    return out;
}

static const char *show_hex(const void *p, size_t n)
{
    static char ring[2][80];
    static int next;
    char *out = ring[next];
    next = (next + 1) % 2;
    if (n > 32)
        n = 32;
    mdm_hex_encode(out, p, n);
    return out;
}

static double seconds_since(uint64_t start_ns)
{
    return (double)(mdm_mono_ns() - start_ns) / 1e9;
}

static void utc_stamp(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y%m%dT%H%M%SZ", &tm);
}

/* The directory that holds path (path without its last component). */
static char *parent_dir(const char *path)
{
    char *p = mdm_strdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    char *slash = strrchr(p, '/');
    if (slash == NULL) {
        mdm_free(p);
        return mdm_strdup(".");
    }
    if (slash == p)
        slash[1] = '\0';
    else
        *slash = '\0';
    return p;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* The pid of a process that has the LMDB environment in dir open (from
 * LMDB's lock on lock.mdb), 0 when none has, or a negative error. Never
 * call it while this process has that environment open: closing the
 * probe's descriptor releases every fcntl lock of the process on the file,
 * LMDB's included. */
static int store_holder(const char *dir, pid_t *pid, mdm_err_t *err)
{
    *pid = 0;
    char *lock = mdm_sprintf("%s/lock.mdb", dir);
    int rc = 0;
    int fd = open(lock, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            rc = mdm_err_set(err, MDM_EIO, "cannot open %s to see whether a server uses it: %s",
                             lock, strerror(errno));
        goto out;
    }
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 1;
    if (fcntl(fd, F_GETLK, &fl) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot probe the lock of %s: %s", lock, strerror(errno));
        goto out;
    }
    if (fl.l_type != F_UNLCK)
        *pid = fl.l_pid > 0 ? fl.l_pid : 1;
out:
    if (fd >= 0)
        close(fd);
    mdm_free(lock);
    return rc;
}

/* The command name of a process, for messages ("moonmdm"), or "?". */
static void process_name(pid_t pid, char out[64])
{
    snprintf(out, 64, "?");
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    if (fgets(out, 64, f) != NULL)
        out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

/* ---- where the store is --------------------------------------------------- */

typedef struct db_target {
    mdm_config_t cfg;
    bool have_cfg;
    const char *path;
    size_t map_size, map_max;
    const mdm_store_ops_t *ops;
} db_target_t;

static int target_resolve(db_target_t *t, const char *config_path, const char *data_dir,
                          const char *store_dir)
{
    memset(t, 0, sizeof(*t));
    if (store_dir != NULL) {
        t->path = store_dir;
        t->ops = &mdm_store_lmdb;
        return 0;
    }
    if (mdm__cli_load_config(&t->cfg, config_path, data_dir) != 0)
        return 1;
    t->have_cfg = true;
    t->path = t->cfg.store_path;
    t->map_size = t->cfg.store_map_size;
    t->map_max = t->cfg.store_map_max;
    t->ops = mdm_store_backend(t->cfg.store_backend);
    if (t->ops == NULL) {
        fprintf(stderr, "moonmdm db: unknown store backend \"%s\"\n", t->cfg.store_backend);
        return 1;
    }
    return 0;
}

static void target_free(db_target_t *t)
{
    if (t->have_cfg)
        mdm_config_free(&t->cfg);
}

static int open_rdonly(const mdm_store_ops_t *ops, const char *path, size_t map_size,
                       size_t map_max, mdm_store_t **out, mdm_err_t *err)
{
    mdm_store_config_t sc = {
        .path = path,
        .map_size = map_size,
        .map_max = map_max,
        .sync = true,
        .flags = MDM_STORE_RDONLY | MDM_STORE_AUTOFLUSH,
    };
    return mdm_store_open(ops, &sc, out, err);
}

/* ---- check --------------------------------------------------------------- */

typedef struct check {
    uint64_t schema;
    bool have_schema;
    uint64_t queue_seq;
    bool have_seq;
    uint64_t entries[MDM_T__COUNT];
    uint64_t n_queue, n_results, n_waiting, n_cmdt, n_rexp, n_bindings;
    struct {
        char name[24];
        uint64_t n;
    } other_index[16];
    size_t n_other_index;
    size_t problems;
    mdm_buf_t listed; /* the first MAX_LISTED problems, one per line */
} check_t;

static void problem(check_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(check_t *c, const char *fmt, ...)
{
    c->problems++;
    if (c->problems > MAX_LISTED)
        return;
    va_list ap;
    va_start(ap, fmt);
    mdm_buf_puts(&c->listed, "  - ");
    mdm_buf_vprintf(&c->listed, fmt, ap);
    mdm_buf_putc(&c->listed, '\n');
    va_end(ap);
}

/* The fields of a result record that the checks need. */
typedef struct result_rec {
    char status[32];
    bool has_status;
    uint64_t priority, seq;
    int64_t completed;
} result_rec_t;

static int result_decode(mdm_val_t v, result_rec_t *r)
{
    memset(r, 0, sizeof(*r));
    mdm_result_rec_t rec;
    if (mdm_result_rec_decode(v.data, v.len, &rec) != 0)
        return MDM_EPARSE;
    r->has_status = rec.has_status;
    snprintf(r->status, sizeof(r->status), "%s", rec.status);
    r->priority = rec.priority;
    r->seq = rec.seq;
    r->completed = rec.completed_at;
    mdm_result_rec_free(&rec);
    return 0;
}

static bool waiting(const char *status)
{
    return strcmp(status, "Queued") == 0 || strcmp(status, "NotNow") == 0;
}

/* live: the key of a waiting result ("\x01" + the usual key, schema 3). */
static void key_result(mdm_buf_t *k, const void *eid, size_t el, const void *uuid, size_t ul,
                       bool live)
{
    mdm_buf_reset(k);
    if (live)
        mdm_buf_putc(k, '\x01');
    mdm_buf_append(k, eid, el);
    mdm_buf_putc(k, '\0');
    mdm_buf_append(k, uuid, ul);
}

static void key_queue(mdm_buf_t *k, const void *eid, size_t el, uint64_t prio, uint64_t seq)
{
    unsigned char b[9];
    b[0] = (unsigned char)(255 - (prio & 255));
    mdm_be64_put(b + 1, seq);
    mdm_buf_reset(k);
    mdm_buf_append(k, eid, el);
    mdm_buf_putc(k, '\0');
    mdm_buf_append(k, b, 9);
}

static void key_cmdt(mdm_buf_t *k, const void *uuid, size_t ul, const void *eid, size_t el)
{
    mdm_buf_reset(k);
    mdm_buf_append(k, "cmdt", 5);
    mdm_buf_append(k, uuid, ul);
    mdm_buf_putc(k, '\0');
    mdm_buf_append(k, eid, el);
}

static void key_rexp(mdm_buf_t *k, int64_t completed, const void *eid, size_t el,
                     const void *uuid, size_t ul)
{
    unsigned char b[8];
    mdm_be64_put(b, (uint64_t)completed);
    mdm_buf_reset(k);
    mdm_buf_append(k, "rexp", 5);
    mdm_buf_append(k, b, 8);
    mdm_buf_append(k, eid, el);
    mdm_buf_putc(k, '\0');
    mdm_buf_append(k, uuid, ul);
}

static int exists(mdm_txn_t *txn, int table, const mdm_buf_t *k, mdm_val_t *v)
{
    if (k->len == 0 || k->len > MDM_STORE_MAX_KEY)
        return MDM_ENOTFOUND;
    return mdm_txn_get(txn, table, MDM_VAL(k->data, k->len), v);
}

#define QHDR (MDM_UUID_LEN + 8)
#define QPOS 9

/* Whether a queue entry's value names the command uuid. */
static bool qent_is(mdm_val_t v, const void *uuid, size_t ul)
{
    return v.len >= QHDR && strnlen(v.data, MDM_UUID_LEN) == ul && memcmp(v.data, uuid, ul) == 0;
}

/* The waiting result of (eid, uuid) kept in its queue entry, found through
 * the position in the command's target index (schema 4); v is the record. */
static int find_in_queue(mdm_txn_t *txn, mdm_buf_t *k, const void *eid, size_t el,
                         const void *uuid, size_t ul, mdm_val_t *v)
{
    mdm_val_t pos;
    key_cmdt(k, uuid, ul, eid, el);
    int g = exists(txn, MDM_T_INDEX, k, &pos);
    if (g != 0)
        return g;
    if (pos.len != QPOS)
        return MDM_ENOTFOUND;
    mdm_buf_reset(k);
    mdm_buf_append(k, eid, el);
    mdm_buf_putc(k, '\0');
    mdm_buf_append(k, pos.data, QPOS);
    g = exists(txn, MDM_T_QUEUE, k, v);
    if (g != 0)
        return g;
    if (v->len <= QHDR || !qent_is(*v, uuid, ul))
        return MDM_ENOTFOUND;
    *v = MDM_VAL((const char *)v->data + QHDR, v->len - QHDR);
    return 0;
}

/* The result of (eid, uuid): in its queue entry, among the waiting ones of
 * schema 3, or among the finished ones. */
static int find_result(mdm_txn_t *txn, mdm_buf_t *k, const void *eid, size_t el,
                       const void *uuid, size_t ul, mdm_val_t *v)
{
    int g = find_in_queue(txn, k, eid, el, uuid, ul, v);
    if (g != MDM_ENOTFOUND)
        return g;
    key_result(k, eid, el, uuid, ul, true);
    g = exists(txn, MDM_T_RESULTS, k, v);
    if (g != MDM_ENOTFOUND)
        return g;
    key_result(k, eid, el, uuid, ul, false);
    return exists(txn, MDM_T_RESULTS, k, v);
}

/* Whether a result of (eid, uuid) is kept under a results key: the
 * finished one, or the waiting one of schema 3. */
static int kept_in_results(mdm_txn_t *txn, mdm_buf_t *k, const void *eid, size_t el,
                           const void *uuid, size_t ul)
{
    mdm_val_t v;
    for (int live = 0; live <= 1; live++) {
        key_result(k, eid, el, uuid, ul, live);
        int g = exists(txn, MDM_T_RESULTS, k, &v);
        if (g != MDM_ENOTFOUND)
            return g;
    }
    return MDM_ENOTFOUND;
}

static int command_exists(mdm_txn_t *txn, const char *uuid, size_t ul)
{
    mdm_val_t v;
    if (ul == 0)
        return MDM_ENOTFOUND;
    return mdm_txn_get(txn, MDM_T_COMMANDS, MDM_VAL(uuid, ul), &v);
}

/* Every queue entry: a command record, and a waiting result that names
 * the entry's priority and sequence, kept in the entry (with the command's
 * target index pointing at it) or, from schema 2 and 3, under a results
 * key. */
static int check_queue(mdm_txn_t *txn, check_t *c)
{
    mdm_cursor_t *cur = NULL;
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = mdm_cursor_open(txn, MDM_T_QUEUE, &cur);
    mdm_val_t ck, cv, v;
    for (rc = rc ? rc : mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &ck, &cv); rc == 0;
         rc = mdm_cursor_next(cur, &ck, &cv)) {
        c->n_queue++;
        const char *kp = ck.data;
        const char *nul = memchr(kp, '\0', ck.len);
        if (nul == NULL || nul == kp || ck.len - (size_t)(nul - kp) - 1 != 9) {
            problem(c, "queue: malformed key %s", show(ck.data, ck.len));
            continue;
        }
        size_t el = (size_t)(nul - kp);
        const unsigned char *pb = (const unsigned char *)nul + 1;
        uint64_t prio = 255u - pb[0];
        uint64_t seq = mdm_be64_get(pb + 1);
        const char *eid = show(kp, el);
        if (cv.len < QHDR) {
            problem(c, "queue %s #%llu: malformed value (%zu bytes, want at least %d)", eid,
                    (unsigned long long)seq, cv.len, QHDR);
            continue;
        }
        const char *uuid = cv.data;
        size_t ul = strnlen(uuid, MDM_UUID_LEN);
        if (c->have_seq && seq > c->queue_seq)
            problem(c,
                    "queue %s #%llu: sequence number above meta queue_seq (%llu); a new "
                    "command could take its key",
                    eid, (unsigned long long)seq, (unsigned long long)c->queue_seq);
        int g;
        bool inside = cv.len > QHDR;
        if (inside) {
            v = MDM_VAL((const char *)cv.data + QHDR, cv.len - QHDR);
            g = 0;
            mdm_val_t pos;
            key_cmdt(&k, uuid, ul, kp, el);
            int p = exists(txn, MDM_T_INDEX, &k, &pos);
            if (p == MDM_ENOTFOUND) {
                problem(c, "queue %s #%llu: command %s is missing from its target index (cmdt)",
                        eid, (unsigned long long)seq, show(uuid, ul));
            } else if (p != 0) {
                rc = p;
                break;
            } else if (pos.len != QPOS || memcmp(pos.data, pb, QPOS) != 0) {
                problem(c,
                        "queue %s #%llu: the target index (cmdt) of command %s does not point at "
                        "this entry: its report would not find the waiting result",
                        eid, (unsigned long long)seq, show(uuid, ul));
            }
            p = kept_in_results(txn, &k, kp, el, uuid, ul);
            if (p == 0)
                problem(c, "queue %s #%llu: the result of command %s is kept twice (in the "
                        "queue entry and among the results)",
                        eid, (unsigned long long)seq, show(uuid, ul));
            else if (p != MDM_ENOTFOUND) {
                rc = p;
                break;
            }
        } else {
            g = find_result(txn, &k, kp, el, uuid, ul, &v);
        }
        if (g == MDM_ENOTFOUND) {
            problem(c, "queue %s #%llu: command %s has no result record", eid,
                    (unsigned long long)seq, show(uuid, ul));
        } else if (g != 0) {
            rc = g;
            break;
        } else {
            result_rec_t r;
            /* An undecodable record is reported by the results pass; one in
             * the entry, here. */
            int d = result_decode(v, &r);
            if (d != 0 && inside)
                problem(c, "queue %s #%llu: command %s: the waiting result in the entry is not a "
                        "valid result record",
                        eid, (unsigned long long)seq, show(uuid, ul));
            if (inside) {
                c->n_results++;
                if (d == 0)
                    c->n_waiting++;
            }
            if (d == 0) {
                if (!r.has_status || !waiting(r.status))
                    problem(c,
                            "queue %s #%llu: command %s is queued but its result has status %s",
                            eid, (unsigned long long)seq, show(uuid, ul),
                            r.has_status ? show(r.status, strlen(r.status)) : "(none)");
                else if (r.priority != prio || r.seq != seq)
                    problem(c,
                            "queue %s #%llu: command %s: its result record names priority %llu "
                            "sequence %llu, the queue key priority %llu",
                            eid, (unsigned long long)seq, show(uuid, ul),
                            (unsigned long long)r.priority, (unsigned long long)r.seq,
                            (unsigned long long)prio);
            }
        }
        g = command_exists(txn, uuid, ul);
        if (g == MDM_ENOTFOUND)
            problem(c, "queue %s #%llu: command %s has no command record", eid,
                    (unsigned long long)seq, show(uuid, ul));
        else if (g != 0) {
            rc = g;
            break;
        }
    }
    mdm_cursor_close(cur);
    mdm_buf_free(&k);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Every result: decodable, in the command's target index (cmdt); a waiting
 * one has its queue entry and command, a finished one its retention index
 * entry (rexp). */
static int check_results(mdm_txn_t *txn, check_t *c)
{
    mdm_cursor_t *cur = NULL;
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = mdm_cursor_open(txn, MDM_T_RESULTS, &cur);
    mdm_val_t ck, cv, v;
    for (rc = rc ? rc : mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &ck, &cv); rc == 0;
         rc = mdm_cursor_next(cur, &ck, &cv)) {
        c->n_results++;
        const char *kp = ck.data;
        size_t klen = ck.len;
        bool live = klen > 0 && kp[0] == '\x01';
        if (live) {
            kp++;
            klen--;
        }
        const char *nul = memchr(kp, '\0', klen);
        size_t el = nul ? (size_t)(nul - kp) : 0;
        size_t ul = nul ? klen - el - 1 : 0;
        if (nul == NULL || el == 0 || ul == 0 || ul > MDM_UUID_LEN ||
            (unsigned char)kp[0] < 0x20) {
            problem(c, "results: malformed key %s", show(ck.data, ck.len));
            continue;
        }
        const char *uuid = nul + 1;
        const char *eid = show(kp, el), *us = show(uuid, ul);
        result_rec_t r;
        if (result_decode(cv, &r) != 0) {
            problem(c, "result %s/%s: the record is not a valid result record", eid, us);
            continue;
        }
        if (!r.has_status) {
            problem(c, "result %s/%s: the record has no status", eid, us);
            continue;
        }
        if (live) {
            /* Finished results move out of the waiting range, and a result
             * is kept in one place. */
            if (!waiting(r.status))
                problem(c, "result %s/%s: finished (%s) but kept among the waiting results",
                        eid, us, r.status);
            key_result(&k, kp, el, uuid, ul, false);
            int g = exists(txn, MDM_T_RESULTS, &k, &v);
            if (g == 0)
                problem(c, "result %s/%s: kept twice (waiting and finished)", eid, us);
            else if (g != MDM_ENOTFOUND) {
                rc = g;
                break;
            }
        }
        key_cmdt(&k, uuid, ul, kp, el);
        int g = exists(txn, MDM_T_INDEX, &k, &v);
        if (g == MDM_ENOTFOUND)
            problem(c, "result %s/%s: missing from the command's target index (cmdt)", eid, us);
        else if (g != 0) {
            rc = g;
            break;
        }
        if (waiting(r.status)) {
            c->n_waiting++;
            key_queue(&k, kp, el, r.priority, r.seq);
            g = exists(txn, MDM_T_QUEUE, &k, &v);
            if (g == MDM_ENOTFOUND) {
                problem(c,
                        "result %s/%s: status %s but no queue entry (priority %llu, sequence "
                        "%llu): it would never be sent",
                        eid, us, r.status, (unsigned long long)r.priority,
                        (unsigned long long)r.seq);
            } else if (g != 0) {
                rc = g;
                break;
            } else if (!qent_is(v, uuid, ul)) {
                problem(c, "result %s/%s: its queue entry (sequence %llu) holds another command %s",
                        eid, us, (unsigned long long)r.seq,
                        show(v.data, v.len < MDM_UUID_LEN ? v.len : MDM_UUID_LEN));
            } /* a copy in the entry as well: check_queue reports it */
            g = command_exists(txn, uuid, ul);
            if (g == MDM_ENOTFOUND)
                problem(c, "result %s/%s: waiting, but the command record is missing", eid, us);
            else if (g != 0) {
                rc = g;
                break;
            }
        } else {
            key_rexp(&k, r.completed, kp, el, uuid, ul);
            g = exists(txn, MDM_T_INDEX, &k, &v);
            if (g == MDM_ENOTFOUND)
                problem(c,
                        "result %s/%s: finished (%s) but missing from the retention index "
                        "(rexp): it would never be pruned",
                        eid, us, r.status);
            else if (g != 0) {
                rc = g;
                break;
            }
        }
    }
    mdm_cursor_close(cur);
    mdm_buf_free(&k);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static void count_other_index(check_t *c, mdm_val_t k)
{
    const char *nul = memchr(k.data, '\0', k.len);
    size_t n = nul ? (size_t)(nul - (const char *)k.data) : k.len;
    char name[24];
    snprintf(name, sizeof(name), "%s", show(k.data, n < 20 ? n : 20));
    size_t cap = sizeof(c->other_index) / sizeof(c->other_index[0]);
    size_t i;
    for (i = 0; i < c->n_other_index; i++) {
        if (strcmp(c->other_index[i].name, name) == 0) {
            c->other_index[i].n++;
            return;
        }
    }
    /* The last slot collects the names that do not fit. */
    if (c->n_other_index + 1 < cap) {
        i = c->n_other_index++;
        snprintf(c->other_index[i].name, sizeof(c->other_index[i].name), "%s", name);
    } else {
        i = cap - 1;
        if (c->n_other_index < cap) {
            c->n_other_index = cap;
            snprintf(c->other_index[i].name, sizeof(c->other_index[i].name), "(other)");
        }
    }
    c->other_index[i].n++;
}

/* Every cmdt entry points at an existing result and command; every rexp
 * entry at a finished result completed at the time in its key. */
static int check_index(mdm_txn_t *txn, check_t *c)
{
    mdm_cursor_t *cur = NULL;
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &cur);
    mdm_val_t ck, cv, v;
    for (rc = rc ? rc : mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &ck, &cv); rc == 0;
         rc = mdm_cursor_next(cur, &ck, &cv)) {
        const char *kp = ck.data;
        if (mdm_val_has_prefix(ck, MDM_VAL("cmdt", 5))) {
            c->n_cmdt++;
            const char *uuid = kp + 5;
            const char *nul = memchr(uuid, '\0', ck.len - 5);
            size_t ul = nul ? (size_t)(nul - uuid) : 0;
            size_t el = nul ? ck.len - 5 - ul - 1 : 0;
            if (nul == NULL || ul == 0 || el == 0) {
                problem(c, "index: malformed cmdt key %s", show(ck.data, ck.len));
                continue;
            }
            const char *eid = nul + 1;
            if (cv.len != 0 && cv.len != QPOS)
                problem(c, "index cmdt %s -> %s: malformed value (%zu bytes, want 0 or %d)",
                        show(uuid, ul), show(eid, el), cv.len, QPOS);
            int g = find_result(txn, &k, eid, el, uuid, ul, &v);
            if (g == MDM_ENOTFOUND)
                problem(c, "index cmdt %s -> %s: the command's target has no result record",
                        show(uuid, ul), show(eid, el));
            else if (g != 0) {
                rc = g;
                break;
            }
            g = command_exists(txn, uuid, ul);
            if (g == MDM_ENOTFOUND)
                problem(c, "index cmdt %s -> %s: the command record is missing", show(uuid, ul),
                        show(eid, el));
            else if (g != 0) {
                rc = g;
                break;
            }
        } else if (mdm_val_has_prefix(ck, MDM_VAL("rexp", 5))) {
            c->n_rexp++;
            const char *rest = kp + 13;
            const char *nul = ck.len > 13 ? memchr(rest, '\0', ck.len - 13) : NULL;
            size_t el = nul ? (size_t)(nul - rest) : 0;
            size_t ul = nul ? ck.len - 13 - el - 1 : 0;
            if (nul == NULL || el == 0 || ul == 0) {
                problem(c, "index: malformed rexp key %s", show(ck.data, ck.len));
                continue;
            }
            int64_t completed = (int64_t)mdm_be64_get((const unsigned char *)kp + 5);
            const char *uuid = nul + 1;
            int g = find_result(txn, &k, rest, el, uuid, ul, &v);
            if (g == MDM_ENOTFOUND) {
                problem(c, "index rexp %s/%s: no such result", show(rest, el), show(uuid, ul));
            } else if (g != 0) {
                rc = g;
                break;
            } else {
                result_rec_t r;
                if (result_decode(v, &r) == 0 && r.has_status) {
                    if (waiting(r.status))
                        problem(c, "index rexp %s/%s: the result is still waiting (%s)",
                                show(rest, el), show(uuid, ul), r.status);
                    else if (r.completed != completed)
                        problem(c,
                                "index rexp %s/%s: completed at %lld in the index, %lld in the "
                                "result",
                                show(rest, el), show(uuid, ul), (long long)completed,
                                (long long)r.completed);
                }
            }
        } else {
            count_other_index(c, ck);
        }
    }
    mdm_cursor_close(cur);
    mdm_buf_free(&k);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* The two directions of certauth agree: "h:"+hash -> eid and "e:"+eid ->
 * hash name each other. */
static int check_certauth(mdm_txn_t *txn, check_t *c)
{
    mdm_cursor_t *cur = NULL;
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = mdm_cursor_open(txn, MDM_T_CERTAUTH, &cur);
    mdm_val_t ck, cv, v;
    for (rc = rc ? rc : mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &ck, &cv); rc == 0;
         rc = mdm_cursor_next(cur, &ck, &cv)) {
        const char *kp = ck.data;
        if (ck.len == 34 && kp[0] == 'h' && kp[1] == ':') {
            c->n_bindings++;
            const char *hash = show_hex(kp + 2, 32);
            if (cv.len == 0 || cv.len > MDM_ENROLLMENT_ID_MAX) {
                problem(c, "certauth: certificate %s maps to a malformed enrollment id %s", hash,
                        show(cv.data, cv.len));
                continue;
            }
            mdm_buf_reset(&k);
            mdm_buf_append(&k, "e:", 2);
            mdm_buf_append(&k, cv.data, cv.len);
            int g = exists(txn, MDM_T_CERTAUTH, &k, &v);
            if (g == MDM_ENOTFOUND)
                problem(c,
                        "certauth: certificate %s is bound to %s, but that enrollment has no "
                        "binding",
                        hash, show(cv.data, cv.len));
            else if (g != 0) {
                rc = g;
                break;
            } else if (v.len != 32 || memcmp(v.data, kp + 2, 32) != 0)
                problem(c,
                        "certauth: certificate %s is bound to %s, but that enrollment is bound "
                        "to %s",
                        hash, show(cv.data, cv.len), v.len == 32 ? show_hex(v.data, 32) : "?");
        } else if (ck.len > 2 && kp[0] == 'e' && kp[1] == ':') {
            const char *eid = show(kp + 2, ck.len - 2);
            if (cv.len != 32) {
                problem(c, "certauth: enrollment %s has a malformed binding (%zu bytes)", eid,
                        cv.len);
                continue;
            }
            mdm_buf_reset(&k);
            mdm_buf_append(&k, "h:", 2);
            mdm_buf_append(&k, cv.data, 32);
            int g = exists(txn, MDM_T_CERTAUTH, &k, &v);
            if (g == MDM_ENOTFOUND)
                problem(c, "certauth: enrollment %s is bound to certificate %s, which maps to "
                           "nothing", eid, show_hex(cv.data, 32));
            else if (g != 0) {
                rc = g;
                break;
            } else if (v.len != ck.len - 2 || memcmp(v.data, kp + 2, v.len) != 0)
                problem(c,
                        "certauth: enrollment %s is bound to certificate %s, which maps to %s",
                        eid, show_hex(cv.data, 32), show(v.data, v.len));
        } else {
            problem(c, "certauth: unknown key %s", show(ck.data, ck.len));
        }
    }
    mdm_cursor_close(cur);
    mdm_buf_free(&k);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static int check_fn(mdm_txn_t *txn, void *arg)
{
    check_t *c = arg;
    int rc = mdm_meta_get_u64(txn, "schema_version", &c->schema);
    if (rc == 0)
        c->have_schema = true;
    else if (rc == MDM_ENOTFOUND || rc == MDM_EPARSE)
        problem(c, "meta: %s schema version", rc == MDM_EPARSE ? "malformed" : "no");
    else
        return rc;
    rc = mdm_meta_get_u64(txn, "queue_seq", &c->queue_seq);
    if (rc == 0)
        c->have_seq = true;
    else if (rc == MDM_EPARSE)
        problem(c, "meta: malformed queue_seq");
    else if (rc != MDM_ENOTFOUND)
        return rc;
    for (int t = 0; t < MDM_T__COUNT; t++) {
        rc = mdm_txn_count(txn, t, &c->entries[t]);
        if (rc != 0)
            return rc;
    }
    if ((rc = check_queue(txn, c)) != 0 || (rc = check_results(txn, c)) != 0 ||
        (rc = check_index(txn, c)) != 0 || (rc = check_certauth(txn, c)) != 0)
        return rc;
    return 0;
}

static int run_check(mdm_store_t *st, check_t *c)
{
    memset(c, 0, sizeof(*c));
    return mdm_store_view(st, check_fn, c);
}

static uint64_t total_entries(const check_t *c)
{
    uint64_t n = 0;
    for (int t = 0; t < MDM_T__COUNT; t++)
        n += c->entries[t];
    return n;
}

/* Prints the full report of a check. */
static void print_check(const check_t *c, const char *path, const mdm_store_stats_t *st)
{
    char a[32], b[32];
    printf("store: %s\n", path);
    if (c->have_schema)
        printf("schema version: %llu (this moonmdm writes %d)\n", (unsigned long long)c->schema,
               MDM_STORE_SCHEMA_VERSION);
    else
        printf("schema version: none\n");
    printf("size: %s used, map %s\n", human(a, st->used_bytes), human(b, st->map_size));
    printf("entries:\n");
    for (int t = 0; t < MDM_T__COUNT; t++)
        printf("  %-12s %10llu\n", mdm_store_table_name(t), (unsigned long long)c->entries[t]);
    printf("  %-12s %10llu\n", "total", (unsigned long long)total_entries(c));
    printf("index: cmdt %llu, rexp %llu", (unsigned long long)c->n_cmdt,
           (unsigned long long)c->n_rexp);
    for (size_t i = 0; i < c->n_other_index; i++)
        printf(", %s %llu", c->other_index[i].name, (unsigned long long)c->other_index[i].n);
    printf("\n");
    printf("checked: %llu queue entries, %llu results (%llu waiting), %llu cmdt and %llu rexp "
           "index entries, %llu certificate bindings\n",
           (unsigned long long)c->n_queue, (unsigned long long)c->n_results,
           (unsigned long long)c->n_waiting, (unsigned long long)c->n_cmdt,
           (unsigned long long)c->n_rexp, (unsigned long long)c->n_bindings);
}

static void print_problems(const check_t *c, FILE *f)
{
    if (c->problems == 0)
        return;
    fprintf(f, "consistency: %zu problem%s\n", c->problems, c->problems == 1 ? "" : "s");
    if (c->listed.len)
        fwrite(c->listed.data, 1, c->listed.len, f);
    if (c->problems > MAX_LISTED)
        fprintf(f, "  ... and %zu more\n", c->problems - MAX_LISTED);
}

static int cmd_check(db_target_t *t)
{
    mdm_err_t err = {0};
    mdm_store_t *st = NULL;
    check_t c;
    memset(&c, 0, sizeof(c));
    int exit_code = 1;
    uint64_t t0 = mdm_mono_ns();
    if (open_rdonly(t->ops, t->path, t->map_size, t->map_max, &st, &err) != 0) {
        fprintf(stderr, "moonmdm db check: cannot open the store %s: %s\n", t->path, err.msg);
        goto out;
    }
    mdm_store_stats_t stats;
    int rc = mdm_store_stats(st, &stats);
    if (rc == 0)
        rc = run_check(st, &c);
    if (rc != 0) {
        fprintf(stderr, "moonmdm db check: reading %s failed: %s\n", t->path, mdm_strerror(rc));
        goto out;
    }
    print_check(&c, t->path, &stats);
    if (c.problems) {
        print_problems(&c, stdout);
        fflush(stdout);
        fprintf(stderr, "moonmdm db check: %zu problem%s in %s\n", c.problems,
                c.problems == 1 ? "" : "s", t->path);
        goto out;
    }
    printf("consistency: ok (%.2f s)\n", seconds_since(t0));
    exit_code = 0;
out:
    mdm_buf_free(&c.listed);
    mdm_store_close(st);
    return exit_code;
}

/* ---- backup -------------------------------------------------------------- */

typedef struct backup_job {
    mdm_store_t *store;
    const char *dir;
    mdm_err_t err;
    int rc;
    atomic_int done;
} backup_job_t;

static void backup_thread(void *arg)
{
    backup_job_t *j = arg;
    j->rc = mdm_store_backup(j->store, j->dir, &j->err);
    atomic_store(&j->done, 1);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Shows how far a copy into path is: redrawn in place on a terminal, a line
 * a second otherwise. */
typedef struct progress {
    const char *what;
    uint64_t total;
    bool tty;
    uint64_t start_ns, last_ns;
    bool drew;
} progress_t;

static void progress_init(progress_t *p, const char *what, uint64_t total)
{
    memset(p, 0, sizeof(*p));
    p->what = what;
    p->total = total;
    p->tty = isatty(2) == 1;
    p->start_ns = p->last_ns = mdm_mono_ns();
}

static void progress_show(progress_t *p, uint64_t done, bool final)
{
    uint64_t now = mdm_mono_ns();
    uint64_t every = p->tty ? 100000000ull : 1000000000ull;
    if (!final && now - p->last_ns < every)
        return;
    if (final && !p->drew)
        return;
    p->last_ns = now;
    char a[32], b[32];
    unsigned pct = p->total ? (unsigned)(done * 100 / p->total) : 0;
    if (pct > 100)
        pct = 100;
    fprintf(stderr, "%s%s: %s of at most %s (%u%%), %.1f s%s", p->tty ? "\r" : "", p->what,
            human(a, done), human(b, p->total), pct, seconds_since(p->start_ns),
            p->tty && !final ? "   " : "\n");
    p->drew = true;
}

/* Opens the copy in dir and checks it; prints one line. Removes the lock
 * file the open made, so that the backup directory holds only data.mdb. */
static int verify_copy(const char *dir, const char *label, check_t *c, bool *opened)
{
    mdm_err_t err = {0};
    mdm_store_t *st = NULL;
    *opened = false;
    memset(c, 0, sizeof(*c));
    int rc = open_rdonly(&mdm_store_lmdb, dir, 0, 0, &st, &err);
    if (rc != 0) {
        fprintf(stderr, "moonmdm db: %s: the copy does not open: %s\n", label, err.msg);
        goto out;
    }
    *opened = true;
    rc = run_check(st, c);
    if (rc != 0)
        fprintf(stderr, "moonmdm db: %s: reading the copy failed: %s\n", label,
                mdm_strerror(rc));
out:
    mdm_store_close(st);
    char *lock = mdm_sprintf("%s/lock.mdb", dir);
    unlink(lock);
    mdm_free(lock);
    return rc;
}

static int cmd_backup(db_target_t *t, const char *dir, bool verify)
{
    mdm_err_t err = {0};
    mdm_store_t *st = NULL;
    char *dst = mdm_sprintf("%s/data.mdb", dir);
    check_t c;
    memset(&c, 0, sizeof(c));
    int exit_code = 1;
    char a[32], b[32];

    if (t->ops != &mdm_store_lmdb) {
        fprintf(stderr, "moonmdm db backup: the %s backend has its own backup tools\n",
                t->ops->name);
        goto out;
    }
    if (access(dst, F_OK) == 0) {
        fprintf(stderr, "moonmdm db backup: %s already exists; choose a new directory\n", dst);
        goto out;
    }
    /* Probe for a server before opening the store: closing the probe's
     * descriptor would drop the fcntl locks this process's LMDB
     * environment holds on lock.mdb. */
    pid_t holder = 0;
    mdm_err_t perr = {0};
    (void)store_holder(t->path, &holder, &perr);
    if (open_rdonly(t->ops, t->path, t->map_size, t->map_max, &st, &err) != 0) {
        fprintf(stderr, "moonmdm db backup: cannot open the store %s: %s\n", t->path, err.msg);
        goto out;
    }
    mdm_store_stats_t stats;
    int rc = mdm_store_stats(st, &stats);
    if (rc != 0) {
        fprintf(stderr, "moonmdm db backup: cannot read %s: %s\n", t->path, mdm_strerror(rc));
        goto out;
    }
    uint64_t n = 0;
    for (int i = 0; i < MDM_T__COUNT; i++)
        n += stats.entries[i];
    printf("source: %s (%llu entries, %s used, map %s)\n", t->path, (unsigned long long)n,
           human(a, stats.used_bytes), human(b, stats.map_size));
    fflush(stdout);

    /* The copy runs in a thread so that this one can show its progress:
     * LMDB's copy gives no callback. Nothing else touches st meanwhile. */
    backup_job_t job;
    memset(&job, 0, sizeof(job));
    job.store = st;
    job.dir = dir;
    atomic_init(&job.done, 0);
    uint64_t t0 = mdm_mono_ns();
    uv_thread_t th;
    if (uv_thread_create(&th, backup_thread, &job) != 0) {
        backup_thread(&job);
    } else {
        progress_t p;
        progress_init(&p, "copying", stats.used_bytes);
        while (!atomic_load(&job.done)) {
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
            progress_show(&p, file_size(dst), false);
        }
        uv_thread_join(&th);
        progress_show(&p, file_size(dst), true);
    }
    double secs = seconds_since(t0);
    if (job.rc != 0) {
        fprintf(stderr, "moonmdm db backup: %s\n", job.err.msg[0] ? job.err.msg
                                                                  : mdm_strerror(job.rc));
        goto out;
    }
    mdm_store_close(st);
    st = NULL;
    uint64_t size = file_size(dst);
    char during[64] = "";
    if (holder)
        snprintf(during, sizeof(during), " while process %d had the store open", (int)holder);
    printf("backup: %s, %s (%llu bytes), compacted from %s used, in %.2f s%s\n", dst,
           human(a, size), (unsigned long long)size, human(b, stats.used_bytes), secs, during);
    fflush(stdout);
    if (!verify) {
        exit_code = 0;
        goto out;
    }
    bool opened;
    if (verify_copy(dir, "backup", &c, &opened) != 0)
        goto out;
    printf("verify: the backup opens; schema version %llu, %llu entries, consistency %s\n",
           (unsigned long long)c.schema, (unsigned long long)total_entries(&c),
           c.problems ? "FAILED" : "ok");
    if (c.problems) {
        print_problems(&c, stdout);
        fflush(stdout);
        fprintf(stderr, "moonmdm db backup: the copy in %s has %zu consistency problem%s (the "
                        "store itself has them too: run `moonmdm db check`)\n",
                dir, c.problems, c.problems == 1 ? "" : "s");
        goto out;
    }
    exit_code = 0;
out:
    mdm_buf_free(&c.listed);
    mdm_store_close(st);
    mdm_free(dst);
    return exit_code;
}

/* ---- restore ------------------------------------------------------------- */

/* Copies src to dst (created, mode 0600) and syncs it. */
static int copy_file(const char *src, const char *dst, mdm_err_t *err)
{
    int in = -1, out = -1, rc = 0;
    char *buf = NULL;
    in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot open %s: %s", src, strerror(errno));
        goto out;
    }
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot create %s: %s", dst, strerror(errno));
        goto out;
    }
    progress_t p;
    progress_init(&p, "copying", file_size(src));
    size_t cap = 1 << 20;
    buf = mdm_malloc(cap);
    uint64_t done = 0;
    for (;;) {
        ssize_t n = read(in, buf, cap);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = mdm_err_set(err, MDM_EIO, "cannot read %s: %s", src, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = mdm_err_set(err, errno == ENOSPC ? MDM_ENOSPACE : MDM_EIO,
                                 "cannot write %s: %s", dst, strerror(errno));
                goto out;
            }
            off += w;
        }
        done += (uint64_t)n;
        progress_show(&p, done, false);
    }
    progress_show(&p, done, true);
    if (fsync(out) != 0)
        rc = mdm_err_set(err, errno == ENOSPC ? MDM_ENOSPACE : MDM_EIO, "cannot sync %s: %s", dst,
                         strerror(errno));
out:
    mdm_free(buf);
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) != 0 && rc == 0)
        rc = mdm_err_set(err, MDM_EIO, "cannot write %s: %s", dst, strerror(errno));
    return rc;
}

static void remove_dir_files(const char *dir)
{
    static const char *const names[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < 2; i++) {
        char *p = mdm_sprintf("%s/%s", dir, names[i]);
        unlink(p);
        mdm_free(p);
    }
    rmdir(dir);
}

/* Refuses (prints, returns true) when a process has the store open. */
static bool refuse_if_open(const char *store, const char *when)
{
    pid_t pid = 0;
    mdm_err_t err = {0};
    if (store_holder(store, &pid, &err) != 0) {
        fprintf(stderr, "moonmdm db restore: %s\n", err.msg);
        return true;
    }
    if (pid == 0)
        return false;
    char name[64];
    process_name(pid, name);
    fprintf(stderr,
            "moonmdm db restore: %s: process %d (%s) has the store %s open; stop the server "
            "(e.g. systemctl stop moonmdm) and any other moonmdm command using it, then run the "
            "restore again\n",
            when, (int)pid, name, store);
    return true;
}

/* The store's real path: a symbolic link (to a bigger disk, say) is
 * followed, so that the copy is staged, and the previous store set aside,
 * beside the real store and the rename replaces it, not the link. A store
 * that does not exist yet goes into its parent's real directory. NULL
 * (after a message) for a link whose target is missing. */
static char *real_store_path(const char *store)
{
    char *r = realpath(store, NULL);
    if (r != NULL) {
        char *q = mdm_strdup(r);
        free(r);
        return q;
    }
    struct stat st;
    if (lstat(store, &st) == 0 && S_ISLNK(st.st_mode)) {
        fprintf(stderr,
                "moonmdm db restore: the store path %s is a symbolic link whose target does "
                "not exist; create the target directory or change store.path\n",
                store);
        return NULL;
    }
    char *parent = parent_dir(store);
    char *rp = realpath(parent, NULL);
    const char *slash = strrchr(store, '/');
    char *out = rp != NULL ? mdm_sprintf("%s/%s", strcmp(rp, "/") == 0 ? "" : rp,
                                         slash ? slash + 1 : store)
                           : mdm_strdup(store);
    free(rp);
    mdm_free(parent);
    return out;
}

static int cmd_restore(db_target_t *t, const char *from, bool force)
{
    mdm_err_t err = {0};
    char *src = NULL, *parent = NULL, *staging = NULL, *staged = NULL, *aside = NULL,
         *store = NULL;
    check_t c;
    memset(&c, 0, sizeof(c));
    int exit_code = 1;
    bool staged_made = false;
    char a[32], b[32];
    struct stat sst, dst_st;

    if (t->ops != &mdm_store_lmdb) {
        fprintf(stderr, "moonmdm db restore: the %s backend has its own restore tools\n",
                t->ops->name);
        goto out;
    }
    char *given = mdm_strdup(t->path);
    for (size_t n = strlen(given); n > 1 && given[n - 1] == '/';)
        given[--n] = '\0';
    store = real_store_path(given);
    if (store != NULL && strcmp(store, given) != 0)
        printf("store: %s (the real path of %s)\n", store, given);
    mdm_free(given);
    if (store == NULL)
        goto out;
    if (stat(from, &sst) != 0) {
        fprintf(stderr, "moonmdm db restore: cannot access %s: %s\n", from, strerror(errno));
        goto out;
    }
    src = S_ISDIR(sst.st_mode) ? mdm_sprintf("%s/data.mdb", from) : mdm_strdup(from);
    if (stat(src, &sst) != 0 || !S_ISREG(sst.st_mode)) {
        fprintf(stderr, "moonmdm db restore: %s is not a backup (no data.mdb file)\n", from);
        goto out;
    }

    /* 1. Nobody may have the store open. */
    if (refuse_if_open(store, "refused"))
        goto out;
    bool have_store = stat(store, &dst_st) == 0;
    char *cur = mdm_sprintf("%s/data.mdb", store);
    struct stat cst;
    bool have_data = stat(cur, &cst) == 0;
    mdm_free(cur);
    if (have_data && cst.st_dev == sst.st_dev && cst.st_ino == sst.st_ino) {
        fprintf(stderr, "moonmdm db restore: %s is the store itself\n", src);
        goto out;
    }
    if (have_data && !force) {
        fprintf(stderr,
                "moonmdm db restore: the store %s exists (%s); restoring replaces it. Add "
                "--force to go on (the current store is kept as %s.before-restore-<time>)\n",
                store, human(a, (uint64_t)cst.st_size), store);
        goto out;
    }

    /* 2. Copy the backup next to the store, then open and check the copy:
     * what is checked is exactly what is put in place. */
    char stamp[32];
    utc_stamp(stamp);
    parent = parent_dir(store);
    if (access(parent, W_OK) != 0) {
        fprintf(stderr, "moonmdm db restore: cannot write in %s: %s\n", parent, strerror(errno));
        goto out;
    }
    staging = mdm_sprintf("%s.restore-%s-%d", store, stamp, (int)getpid());
    if (mkdir(staging, 0700) != 0) {
        fprintf(stderr, "moonmdm db restore: cannot create %s: %s\n", staging, strerror(errno));
        goto out;
    }
    staged_made = true;
    staged = mdm_sprintf("%s/data.mdb", staging);
    printf("backup: %s (%s)\n", src, human(a, (uint64_t)sst.st_size));
    fflush(stdout);
    if (copy_file(src, staged, &err) != 0) {
        fprintf(stderr, "moonmdm db restore: %s\n", err.msg);
        goto out;
    }
    bool opened;
    if (verify_copy(staging, "restore", &c, &opened) != 0) {
        if (opened)
            goto out;
        fprintf(stderr, "moonmdm db restore: %s is not a store this moonmdm can use\n", src);
        goto out;
    }
    printf("check: schema version %llu (this moonmdm writes %d%s), %llu entries, consistency "
           "%s\n",
           (unsigned long long)c.schema, MDM_STORE_SCHEMA_VERSION,
           c.schema < MDM_STORE_SCHEMA_VERSION ? "; the server migrates it when it starts" : "",
           (unsigned long long)total_entries(&c), c.problems ? "FAILED" : "ok");
    if (c.problems) {
        print_problems(&c, stdout);
        fflush(stdout);
        if (!force) {
            fprintf(stderr,
                    "moonmdm db restore: the backup has %zu consistency problem%s; nothing was "
                    "changed (--force restores it anyway)\n",
                    c.problems, c.problems == 1 ? "" : "s");
            goto out;
        }
    }
    /* Keep the owner of the store (the service user) when run as root. */
    if (geteuid() == 0) {
        struct stat own;
        if ((have_store && stat(store, &own) == 0) || stat(parent, &own) == 0) {
            if (chown(staging, own.st_uid, own.st_gid) != 0 ||
                chown(staged, own.st_uid, own.st_gid) != 0)
                fprintf(stderr, "moonmdm db restore: warning: cannot give %s to uid %d: %s\n",
                        staging, (int)own.st_uid, strerror(errno));
        }
    }

    /* 3. Swap: the store aside, the copy in. Look once more for a server
     * started meanwhile. */
    if (refuse_if_open(store, "refused"))
        goto out;
    if (have_store) {
        aside = mdm_sprintf("%s.before-restore-%s", store, stamp);
        for (int i = 1; access(aside, F_OK) == 0 && i < 100; i++) {
            mdm_free(aside);
            aside = mdm_sprintf("%s.before-restore-%s-%d", store, stamp, i);
        }
        if (rename(store, aside) != 0) {
            fprintf(stderr,
                    "moonmdm db restore: cannot move %s aside to %s: %s%s; nothing was changed\n",
                    store, aside, strerror(errno),
                    errno == EBUSY || errno == EXDEV
                        ? " (the store directory and its parent must be on one file system, "
                          "and the store directory must not be a mount point)"
                        : "");
            goto out;
        }
    }
    if (rename(staging, store) != 0) {
        int e = errno;
        if (aside != NULL && rename(aside, store) != 0)
            fprintf(stderr, "moonmdm db restore: cannot put %s back to %s: %s\n", aside, store,
                    strerror(errno));
        fprintf(stderr, "moonmdm db restore: cannot move %s to %s: %s; nothing was changed\n",
                staging, store, strerror(e));
        goto out;
    }
    staged_made = false;
    fsync_dir(parent);
    printf("restored: %s -> %s (%llu entries, %s)\n", src, store,
           (unsigned long long)total_entries(&c), human(b, (uint64_t)sst.st_size));
    if (aside)
        printf("previous store: %s\n", aside);
    fflush(stdout);
    /* A server that started between the last look and the renames has the
     * previous store open. */
    if (aside != NULL) {
        pid_t pid = 0;
        if (store_holder(aside, &pid, &err) == 0 && pid != 0) {
            fprintf(stderr,
                    "moonmdm db restore: process %d started during the restore and has the "
                    "previous store (%s) open; stop it and start the server again\n",
                    (int)pid, aside);
            goto out;
        }
    }
    exit_code = 0;
out:
    if (staged_made)
        remove_dir_files(staging);
    mdm_buf_free(&c.listed);
    mdm_free(src);
    mdm_free(parent);
    mdm_free(staging);
    mdm_free(staged);
    mdm_free(aside);
    mdm_free(store);
    return exit_code;
}

/* ---- dispatch ------------------------------------------------------------ */

int mdm_cmd_db(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"store", required_argument, NULL, 's'},  {"force", no_argument, NULL, 'f'},
        {"no-verify", no_argument, NULL, 'V'},    {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *data_dir = NULL, *store_dir = NULL;
    bool force = false, verify = true;
    if (argc < 2) {
        fputs(db_usage, stderr);
        return 2;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "-h") == 0 || strcmp(verb, "--help") == 0 || strcmp(verb, "help") == 0) {
        fputs(db_usage, stdout);
        return 0;
    }
    int c;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "c:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 's': store_dir = optarg; break;
        case 'f': force = true; break;
        case 'V': verify = false; break;
        case 'h': fputs(db_usage, stdout); return 0;
        default: fputs(db_usage, stderr); return 2;
        }
    }
    int nargs = argc - 1 - optind;
    char **args = argv + 1 + optind;
    bool is_backup = strcmp(verb, "backup") == 0, is_restore = strcmp(verb, "restore") == 0,
         is_check = strcmp(verb, "check") == 0;
    if ((is_backup || is_restore) && nargs != 1) {
        fprintf(stderr, "moonmdm db %s: give one path\n\n%s", verb, db_usage);
        return 2;
    }
    if (is_check && nargs > 1) {
        fprintf(stderr, "moonmdm db check: give at most one store directory\n\n%s", db_usage);
        return 2;
    }
    if (!is_backup && !is_restore && !is_check) {
        fprintf(stderr, "moonmdm db: unknown subcommand \"%s\"\n\n%s", verb, db_usage);
        return 2;
    }
    if (is_restore && store_dir != NULL) {
        fprintf(stderr, "moonmdm db restore: the target is the config's store.path; --store is "
                        "not taken\n");
        return 2;
    }
    if (is_check && nargs == 1)
        store_dir = args[0];
    /* The store's own info lines would repeat what is printed here. */
    mdm_log_setup(MDM_LOG_WARN, 2);

    db_target_t t;
    if (target_resolve(&t, config_path, data_dir, store_dir) != 0) {
        target_free(&t);
        return 1;
    }
    int rc;
    if (is_backup)
        rc = cmd_backup(&t, args[0], verify);
    else if (is_restore)
        rc = cmd_restore(&t, args[0], force);
    else
        rc = cmd_check(&t);
    target_free(&t);
    return rc;
}
