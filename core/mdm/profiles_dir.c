#include "mdm/profiles_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "mdm/profiles.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"

#define MAX_PROFILE_BYTES (8u << 20)
#define SUFFIX ".mobileconfig"
/* A change in the directory is reloaded once it has been quiet this long
 * (editors and deploy tools write in several steps). */
#define WATCH_QUIET_MS 200

/* One file of the directory, read and validated (in the thread pool). */
typedef struct dir_entry {
    char *file;               /* its name in the directory */
    mdm_profile_meta_t meta;  /* identifier set when known, even on error */
    mdm_buf_t xml;
    char *error;              /* NULL when the file is good */
} dir_entry_t;

typedef struct dir_scan {
    dir_entry_t *v;
    size_t n;
    char *error;              /* the directory itself cannot be read */
} dir_scan_t;

typedef struct waiter {
    mdm_profiles_reload_cb done;
    void *arg;
    struct waiter *next;
} waiter_t;

struct mdm_profiles_dir {
    mdm_server_t *s;
    char *path;
    uv_work_t work;
    dir_scan_t scan;
    bool running;
    waiter_t *current;        /* told when the running reload is done */
    waiter_t *queued;         /* asked meanwhile: the next reload */
    bool again;
    uint64_t started_ns;
    bool watching;            /* watch and quiet are initialised (policy.watch) */
    uv_fs_event_t watch;
    uv_timer_t quiet;
};

/* ---- reading (no store, no log: runs in the thread pool) ----------------- */

/* Opens a file for reading if it is a regular one. The open does not
 * wait: a named pipe nobody writes to would hold a thread of the pool,
 * and every later reload, for ever. */
static char *open_regular(const char *path, FILE **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return mdm_strdup("cannot read");
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mdm_strdup("not a regular file");
    }
    *out = fdopen(fd, "rb");
    if (*out == NULL) {
        close(fd);
        return mdm_strdup("cannot read");
    }
    return NULL;
}

/* Reads a file whole: one over the limit is refused rather than read cut
 * short. */
static char *read_file(const char *path, mdm_buf_t *raw)
{
    FILE *f;
    char *error = open_regular(path, &f);
    if (error != NULL)
        return error;
    char chunk[8192];
    size_t got;
    while (raw->len <= MAX_PROFILE_BYTES && (got = fread(chunk, 1, sizeof(chunk), f)) > 0)
        mdm_buf_append(raw, chunk, got);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed)
        return mdm_strdup("cannot read");
    if (raw->len > MAX_PROFILE_BYTES)
        return mdm_strdup("too large (a profile is at most 8 MiB)");
    return NULL;
}

/* A file name that is not UTF-8, with its bytes past ASCII as \xHH: the
 * report, the store and the JSON answers hold UTF-8 only. */
static char *escaped_name(const char *name)
{
    mdm_buf_t b = MDM_BUF_INIT;
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
        char esc[5];
        if (*p < 0x80)
            mdm_buf_append(&b, p, 1);
        else
            mdm_buf_append(&b, esc, (size_t)snprintf(esc, sizeof(esc), "\\x%02X", *p));
    }
    char *out = mdm_strndup((const char *)b.data, b.len);
    mdm_buf_free(&b);
    return out;
}

static void read_entry(const char *dir, dir_entry_t *e)
{
    if (!mdm_utf8_valid(e->file, strlen(e->file))) {
        char *shown = escaped_name(e->file);
        mdm_free(e->file);
        e->file = shown;
        e->error = mdm_strdup("the file name is not UTF-8 (rename the file)");
        return;
    }
    char *path = mdm_sprintf("%s/%s", dir, e->file);
    mdm_buf_t raw = MDM_BUF_INIT;
    mdm_err_t verr = {0};
    e->error = read_file(path, &raw);
    if (e->error == NULL &&
        mdm_profile_validate(raw.data, raw.len, NULL, &e->xml, &e->meta, &verr) != 0)
        e->error = mdm_strdup(verr.msg);
    mdm_buf_free(&raw);
    mdm_free(path);
}

/* Two files with one identifier: which one wins would depend on the order
 * of the directory, so the later one (by name) is refused. */
static void refuse_duplicate(dir_scan_t *scan, size_t i)
{
    dir_entry_t *e = &scan->v[i];
    for (size_t j = 0; j < i && e->error == NULL; j++) {
        const dir_entry_t *o = &scan->v[j];
        if (o->error == NULL && strcmp(o->meta.identifier, e->meta.identifier) == 0)
            e->error = mdm_sprintf("PayloadIdentifier %s is also in %s, which is kept",
                                   e->meta.identifier, o->file);
    }
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const dir_entry_t *)a)->file, ((const dir_entry_t *)b)->file);
}

/* Hidden files are left alone: editors' lock files (".#a.mobileconfig")
 * and the "._a.mobileconfig" metadata files that macOS leaves on copies
 * are not profiles. */
static bool is_profile_file(const char *name)
{
    size_t n = strlen(name), k = strlen(SUFFIX);
    return name[0] != '.' && n > k && strcasecmp(name + n - k, SUFFIX) == 0;
}

static void scan_dir(const char *dir, dir_scan_t *scan)
{
    memset(scan, 0, sizeof(*scan));
    DIR *d = opendir(dir);
    if (d == NULL) {
        scan->error = mdm_strdup("cannot open the directory");
        return;
    }
    struct dirent *de;
    for (;;) {
        errno = 0;
        if ((de = readdir(d)) == NULL)
            break;
        if (!is_profile_file(de->d_name))
            continue;
        scan->v = mdm_realloc(scan->v, (scan->n + 1) * sizeof(*scan->v));
        memset(&scan->v[scan->n], 0, sizeof(*scan->v));
        scan->v[scan->n++].file = mdm_strdup(de->d_name);
    }
    /* A listing cut short is an error, not a directory with fewer files:
     * the files it did not list must not lose their profiles. */
    if (errno != 0)
        scan->error = mdm_sprintf("cannot list the directory: %s", strerror(errno));
    closedir(d);
    if (scan->n > 1)
        qsort(scan->v, scan->n, sizeof(*scan->v), by_name);
    for (size_t i = 0; i < scan->n; i++) {
        read_entry(dir, &scan->v[i]);
        refuse_duplicate(scan, i);
    }
}

static void scan_free(dir_scan_t *scan)
{
    for (size_t i = 0; i < scan->n; i++) {
        mdm_free(scan->v[i].file);
        mdm_free(scan->v[i].error);
        mdm_buf_free(&scan->v[i].xml);
    }
    mdm_free(scan->v);
    mdm_free(scan->error);
    memset(scan, 0, sizeof(*scan));
}

/* ---- storing (on the loop) ----------------------------------------------- */

/* What a good file needs. Decided in a read transaction, which reads the
 * stored profiles in place: a write transaction copies each value it
 * reads, and profiles can be large. */
enum { KEPT, STORED, UPDATED, REWRITE /* same content, another source or file */ };

struct plan_ctx {
    dir_scan_t *scan;
    int *outcome;             /* per entry */
    bool any_failed;          /* a file failed, to read or to store */
    json_t *gone;             /* identifiers to delete */
};

static bool held_by_scan(const dir_scan_t *scan, bool any_failed, const mdm_profile_meta_t *m)
{
    for (size_t i = 0; i < scan->n; i++) {
        const dir_entry_t *e = &scan->v[i];
        if (strcmp(e->meta.identifier, m->identifier) == 0)
            return true;
        /* A file that failed keeps the profile it held. */
        if (e->error != NULL && strcmp(e->file, m->file) == 0)
            return true;
    }
    /* Stored before file names were: no telling which file failed. */
    return m->file[0] == '\0' && any_failed;
}

static int plan_prune_cb(const mdm_profile_meta_t *m, void *arg)
{
    struct plan_ctx *c = arg;
    if (strcmp(m->source, "dir") == 0 && !held_by_scan(c->scan, c->any_failed, m))
        json_array_append_new(c->gone, json_string(m->identifier));
    return 0;
}

static int plan_fn(mdm_txn_t *txn, void *arg)
{
    struct plan_ctx *c = arg;
    for (size_t i = 0; i < c->scan->n; i++) {
        dir_entry_t *e = &c->scan->v[i];
        mdm_profile_meta_t old;
        if (e->error != NULL)
            continue;
        /* A stored record that does not decode is replaced by the file. */
        int rc = mdm_profile_get(txn, e->meta.identifier, &old, NULL);
        if (rc != 0 && rc != MDM_ENOTFOUND && rc != MDM_EPARSE)
            return rc;
        if (rc == MDM_ENOTFOUND) {
            c->outcome[i] = STORED;
        } else if (rc == MDM_EPARSE || strcmp(old.hash, e->meta.hash) != 0) {
            c->outcome[i] = UPDATED;
        } else if (strcmp(old.source, "dir") != 0 || strcmp(old.file, e->file) != 0) {
            c->outcome[i] = REWRITE;
            e->meta.uploaded_ms = old.uploaded_ms; /* the content is as stored then */
        } else {
            c->outcome[i] = KEPT;
        }
    }
    return 0;
}

/* The profiles to delete, listed once the good files are stored: a file
 * the store could not take is then one that failed, and keeps the profile
 * it held. */
static int plan_prune_fn(mdm_txn_t *txn, void *arg)
{
    struct plan_ctx *c = arg;
    /* Not when the directory could not be read: that would delete them all. */
    if (c->scan->error != NULL)
        return 0;
    c->any_failed = false;
    for (size_t i = 0; i < c->scan->n; i++)
        c->any_failed = c->any_failed || c->scan->v[i].error != NULL;
    return mdm_profile_list(txn, plan_prune_cb, c);
}

static int entry_put_fn(mdm_txn_t *txn, void *arg)
{
    const dir_entry_t *e = arg;
    return mdm_profile_put(txn, &e->meta, e->xml.data, e->xml.len);
}

static int delete_fn(mdm_txn_t *txn, void *arg)
{
    size_t i;
    json_t *id;
    json_array_foreach((json_t *)arg, i, id)
    {
        int rc = mdm_profile_delete(txn, json_string_value(id));
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void log_file_failed(const char *dir, const char *file, const char *error)
{
    char dq[600], fq[600], eq[1200];
    mdm_log(MDM_LOG_ERROR, NULL, "profiles.file_failed", "dir=%s file=%s error=%s",
            mdm_logq(dq, sizeof(dq), dir), mdm_logq(fq, sizeof(fq), file),
            mdm_logq(eq, sizeof(eq), error));
}

static void add_error(json_t *errors, const char *dir, const char *file, const char *error)
{
    log_file_failed(dir, file, error);
    json_array_append_new(errors, json_pack("{s:s?, s:s}", "file", file, "error", error));
}

/* A store failure: an error of the file (NULL: of the directory), and
 * store_failed in the report, so that the answer says to retry later. */
static void add_store_error(json_t *report, const char *dir, const char *file, int rc,
                            const char *effect)
{
    char *msg = mdm_sprintf("store: %s%s", mdm_strerror(rc), effect);
    add_error(json_object_get(report, "errors"), dir, file, msg);
    mdm_free(msg);
    json_object_set_new(report, "store_failed", json_true());
}

/* Stores the good files that differ from the store; a store error is the
 * file's error. */
static void store_entries(mdm_server_t *s, const char *dir, dir_scan_t *scan,
                          const int *outcome, json_t *report)
{
    json_t *lists[] = {NULL, json_object_get(report, "stored"),
                       json_object_get(report, "updated"), NULL};
    size_t kept = 0;
    int64_t now = mdm_now_ms();
    for (size_t i = 0; i < scan->n; i++) {
        dir_entry_t *e = &scan->v[i];
        int rc = 0;
        if (e->error == NULL && outcome[i] != KEPT) {
            /* uploaded_at is when the content was stored (REWRITE keeps it). */
            if (outcome[i] != REWRITE)
                e->meta.uploaded_ms = now;
            snprintf(e->meta.source, sizeof(e->meta.source), "dir");
            snprintf(e->meta.file, sizeof(e->meta.file), "%s", e->file);
            rc = mdm_store_update(s->store, entry_put_fn, e);
        }
        if (rc != 0) {
            e->error = mdm_sprintf("store: %s", mdm_strerror(rc));
            json_object_set_new(report, "store_failed", json_true());
        }
        if (e->error != NULL) {
            add_error(json_object_get(report, "errors"), dir, e->file, e->error);
        } else if (lists[outcome[i]] == NULL) {
            kept++;
        } else {
            json_array_append_new(lists[outcome[i]], json_string(e->meta.identifier));
            char q[300];
            mdm_log(MDM_LOG_INFO, NULL, "profile.stored", "identifier=%s hash=%.16s source=dir "
                    "replaced=%s", mdm_logq(q, sizeof(q), e->meta.identifier), e->meta.hash,
                    outcome[i] == UPDATED ? "true" : "false");
        }
    }
    json_object_set_new(report, "unchanged", json_integer((json_int_t)kept));
}

/* Deletes the profiles loaded from the directory earlier whose file is no
 * longer there (profiles uploaded through the API stay). */
static void prune(mdm_server_t *s, const char *dir, json_t *gone, json_t *report)
{
    int rc = json_array_size(gone) > 0 ? mdm_store_update(s->store, delete_fn, gone) : 0;
    if (rc != 0) {
        add_store_error(report, dir, NULL, rc, " (no profile was removed)");
        return;
    }
    size_t i;
    json_t *id;
    json_array_foreach(gone, i, id)
    {
        char q[300], dq[600];
        json_array_append(json_object_get(report, "removed"), id);
        mdm_log(MDM_LOG_INFO, NULL, "profiles.removed",
                "identifier=%s dir=%s reason=\"no file in profiles.dir holds it any more\"",
                mdm_logq(q, sizeof(q), json_string_value(id)), mdm_logq(dq, sizeof(dq), dir));
    }
}

/* Writes what the scan found to the store and says what changed. */
static json_t *apply_scan(mdm_server_t *s, const char *dir, dir_scan_t *scan)
{
    json_t *report = json_pack("{s:s, s:[], s:[], s:[], s:[]}", "dir", dir, "stored", "updated",
                               "removed", "errors");
    json_t *errors = json_object_get(report, "errors");
    struct plan_ctx plan = {scan, mdm_calloc(scan->n + 1, sizeof(int)), false, json_array()};
    int rc = mdm_store_view(s->store, plan_fn, &plan);
    if (scan->error != NULL)
        add_error(errors, dir, NULL, scan->error);
    if (rc != 0) {
        add_store_error(report, dir, NULL, rc, " (nothing was stored)");
    } else {
        store_entries(s, dir, scan, plan.outcome, report);
        rc = mdm_store_view(s->store, plan_prune_fn, &plan);
        if (rc != 0)
            add_store_error(report, dir, NULL, rc, " (no profile was removed)");
        else
            prune(s, dir, plan.gone, report);
    }
    mdm_free(plan.outcome);
    json_decref(plan.gone);
    return report;
}

static void log_summary(const char *event, const char *dir, const json_t *r, double ms,
                        double store_ms)
{
    char dq[600];
    mdm_log(MDM_LOG_INFO, NULL, event,
            "dir=%s loaded=%zu stored=%zu updated=%zu removed=%zu unchanged=%lld failed=%zu "
            "ms=%.1f store_ms=%.1f",
            mdm_logq(dq, sizeof(dq), dir),
            json_array_size(json_object_get(r, "stored")) +
                json_array_size(json_object_get(r, "updated")) +
                (size_t)json_integer_value(json_object_get(r, "unchanged")),
            json_array_size(json_object_get(r, "stored")),
            json_array_size(json_object_get(r, "updated")),
            json_array_size(json_object_get(r, "removed")),
            (long long)json_integer_value(json_object_get(r, "unchanged")),
            json_array_size(json_object_get(r, "errors")), ms, store_ms);
}

/* ---- start --------------------------------------------------------------- */

static int first_error(const char *dir, const dir_scan_t *scan, mdm_err_t *err)
{
    if (scan->error != NULL)
        return mdm_err_set(err, MDM_ECONFIG, "profiles.dir %s: %s", dir, scan->error);
    for (size_t i = 0; i < scan->n; i++)
        if (scan->v[i].error != NULL)
            return mdm_err_set(err, MDM_ECONFIG, "profiles.dir: %s/%s: %s", dir,
                               scan->v[i].file, scan->v[i].error);
    return 0;
}

/* ---- watching (policy.watch) ---------------------------------------------- */

static void quiet_cb(uv_timer_t *t)
{
    mdm_profiles_dir_t *d = t->data;
    char dq[600];
    mdm_log(MDM_LOG_INFO, NULL, "profiles.changed", "dir=%s action=reload",
            mdm_logq(dq, sizeof(dq), d->path));
    mdm_profiles_reload(d->s, NULL, NULL);
}

static void watch_cb(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)filename;
    (void)events;
    (void)status;
    mdm_profiles_dir_t *d = h->data;
    uv_timer_start(&d->quiet, quiet_cb, WATCH_QUIET_MS, 0);
}

/* Watches the directory (not recursive: only its own files are profiles).
 * A watch that cannot start is logged; SIGHUP and the API still reload. */
static void watch_start(mdm_profiles_dir_t *d)
{
    uv_loop_t *loop = d->s->loop;
    uv_fs_event_init(loop, &d->watch);
    uv_timer_init(loop, &d->quiet);
    d->watch.data = d;
    d->quiet.data = d;
    d->watching = true;
    int rc = uv_fs_event_start(&d->watch, watch_cb, d->path, 0);
    char dq[600];
    if (rc != 0)
        mdm_log(MDM_LOG_WARN, NULL, "profiles.watch_failed", "dir=%s error=\"%s\"",
                mdm_logq(dq, sizeof(dq), d->path), uv_strerror(rc));
    uv_unref((uv_handle_t *)&d->watch);
    uv_unref((uv_handle_t *)&d->quiet);
}

int mdm__profiles_dir_load(mdm_server_t *s, const char *dir, mdm_profiles_dir_t **out,
                           mdm_err_t *err)
{
    uint64_t t0 = mdm_mono_ns();
    dir_scan_t scan;
    scan_dir(dir, &scan);
    int rc = first_error(dir, &scan, err);
    json_t *report = NULL;
    if (rc == 0) {
        report = apply_scan(s, dir, &scan);
        json_t *errors = json_object_get(report, "errors");
        if (json_array_size(errors) > 0)
            rc = mdm_err_set(err, MDM_ECONFIG, "profiles.dir: %s", json_string_value(
                                 json_object_get(json_array_get(errors, 0), "error")));
    }
    if (rc == 0 && (rc = mdm_store_flush(s->store)) != 0)
        mdm_err_set(err, rc, "profiles.dir: store: %s", mdm_strerror(rc));
    double ms = (double)(mdm_mono_ns() - t0) / 1e6;
    if (rc == 0)
        log_summary("profiles.loaded", dir, report, ms, ms);
    json_decref(report);
    scan_free(&scan);
    if (rc != 0)
        return rc;
    mdm_profiles_dir_t *d = mdm_calloc(1, sizeof(*d));
    d->s = s;
    d->path = mdm_strdup(dir);
    d->work.data = d;
    if (s->cfg->policy_watch)
        watch_start(d);
    *out = d;
    return 0;
}

void mdm__profiles_dir_free(mdm_profiles_dir_t *d)
{
    if (d == NULL)
        return;
    if (d->watching) {
        /* The server closes every handle before it frees its parts; a
         * caller that did not gets them closed here. */
        bool open = !uv_is_closing((uv_handle_t *)&d->watch);
        if (open) {
            uv_close((uv_handle_t *)&d->watch, NULL);
            uv_close((uv_handle_t *)&d->quiet, NULL);
            uv_run(d->s->loop, UV_RUN_NOWAIT);
        }
    }
    scan_free(&d->scan);
    mdm_free(d->path);
    mdm_free(d);
}

/* ---- reload -------------------------------------------------------------- */

static void start_reload(mdm_profiles_dir_t *d);

static void reload_work(uv_work_t *w)
{
    mdm_profiles_dir_t *d = w->data;
    scan_dir(d->path, &d->scan);
}

static void tell_waiters(mdm_server_t *s, waiter_t *w, json_t *report)
{
    while (w != NULL) {
        waiter_t *next = w->next;
        w->done(s, report, w->arg);
        mdm_free(w);
        w = next;
    }
}

static void reload_after(uv_work_t *w, int status)
{
    mdm_profiles_dir_t *d = w->data;
    mdm_server_t *s = d->s;
    uint64_t t0 = mdm_mono_ns();
    json_t *report;
    if (status != 0) {
        report = json_pack("{s:s, s:[], s:[], s:[], s:i, s:[{s:n, s:s}]}", "dir", d->path,
                           "stored", "updated", "removed", "unchanged", 0, "errors", "file",
                           "error", uv_strerror(status));
    } else {
        report = apply_scan(s, d->path, &d->scan);
    }
    scan_free(&d->scan);
    /* The answers tell of stored changes: commit them first. */
    int rc = mdm_server_commit(s);
    if (rc != 0)
        add_store_error(report, d->path, NULL, rc, " (this reload's changes were not committed)");
    uint64_t t1 = mdm_mono_ns();
    log_summary("profiles.reloaded", d->path, report, (double)(t1 - d->started_ns) / 1e6,
                (double)(t1 - t0) / 1e6);
    waiter_t *done = d->current;
    d->current = NULL;
    d->running = false;
    if (d->again) {
        d->again = false;
        d->current = d->queued;
        d->queued = NULL;
        start_reload(d);
    }
    tell_waiters(s, done, report);
    json_decref(report);
}

static void start_reload(mdm_profiles_dir_t *d)
{
    d->running = true;
    d->started_ns = mdm_mono_ns();
    int r = uv_queue_work(d->s->loop, &d->work, reload_work, reload_after);
    if (r != 0)
        reload_after(&d->work, r);
}

void mdm_profiles_reload(mdm_server_t *s, mdm_profiles_reload_cb done, void *arg)
{
    const mdm_profiles_t *p = s->profiles;
    mdm_profiles_dir_t *d = p != NULL ? p->dir : NULL;
    if (d == NULL) {
        if (done != NULL)
            done(s, NULL, arg);
        return;
    }
    waiter_t *w = NULL;
    if (done != NULL) {
        w = mdm_calloc(1, sizeof(*w));
        w->done = done;
        w->arg = arg;
    }
    if (d->running) {
        if (w != NULL) {
            w->next = d->queued;
            d->queued = w;
        }
        d->again = true;
        return;
    }
    d->current = w;
    start_reload(d);
}
