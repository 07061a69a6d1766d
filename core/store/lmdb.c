/* The LMDB backend of the store (store.h).
 *
 * One MDB_env per store, one named database per table, all opened at open
 * time. Writes are grouped: the first update of a loop iteration begins a
 * long-lived "batch" write transaction, every update runs in a transaction
 * nested in it (so a failing request rolls back only its own changes), and
 * flush commits the batch with one fsync. While a batch is open this process
 * holds LMDB's writer lock; other processes (the CLI) wait for the flush.
 *
 * Views run in a read-only transaction, except while the batch holds
 * changes: then they run in a child of the batch that is aborted afterwards,
 * so that they see what earlier requests of the same batch wrote. The
 * read-only transaction is cached and reset/renewed between views, so that
 * views do not claim and release a reader slot each time.
 *
 * Neither view nor update nests: a transaction function must not call
 * update, view, flush, backup or close on its store (asserted). The server
 * calls all of these from its single loop thread; other processes may open
 * the same environment at the same time (LMDB locks across processes).
 *
 * LMDB keeps values valid only until the next write of the transaction
 * (a put may change the dirty page a value lies in). store.h promises them
 * until the transaction ends, so values and keys read in a write
 * transaction are copied into a per-transaction arena. LMDB gives no way to
 * tell a dirty page from a clean one (mdb_env_info's me_mapaddr is not the
 * map's address), so every one is copied. Views cannot write and return
 * pointers into the map or the batch. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"
#include "util/alloc.h"
#include "util/arena.h"
#include "util/log.h"

#define DEFAULT_MAP_SIZE ((size_t)256 << 20)
#define DEFAULT_MAP_MAX ((size_t)64 << 30)
#define MAX_READERS 256
/* Each retry of a full update either grows the map or gives up, so this
 * bound is only a guard: 1 MiB doubles to 64 GiB in 16 steps. */
#define MAX_UPDATE_ATTEMPTS 64

struct lmdb_store;
struct lmdb_cursor;

/* The transaction handed to a transaction function. There is at most one
 * at a time (transactions do not nest), so the store keeps it inline. */
struct lmdb_txn {
    const mdm_store_ops_t *ops;
    struct lmdb_store *s;
    MDB_txn *txn;
    bool write;                  /* update (true) or view (false) */
    int full;                    /* MDB_MAP_FULL or MDB_TXN_FULL seen by a write */
    struct lmdb_cursor *cursors; /* still open, closed when fn returns */
};

struct lmdb_cursor {
    const mdm_store_ops_t *ops;
    struct lmdb_txn *t;
    MDB_cursor *mc; /* NULL: the table does not exist (read-only store) */
    struct lmdb_cursor *prev, *next;
};

struct lmdb_store {
    const mdm_store_ops_t *ops;
    MDB_env *env;
    char *path;
    unsigned flags;
    size_t map_max;
    MDB_dbi dbi[MDM_T__COUNT];
    bool have[MDM_T__COUNT]; /* false: missing in a store opened read-only */

    MDB_txn *batch;          /* the open batch, or NULL */
    unsigned batch_children; /* updates committed into the batch */
    int deferred;            /* a batch lost outside flush, reported by flush */
    MDB_txn *rtxn;           /* the cached read-only transaction (reset), or NULL */

    struct lmdb_txn utxn;
    bool in_fn;
    mdm_arena_t arena; /* copies of what write transactions read */

    uint64_t commits, committed_updates, commit_failures, grows;
};

static int map_err(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return MDM_ENOTFOUND;
    case MDB_KEYEXIST:
        return MDM_EEXIST;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
        return MDM_EMAPFULL;
    case MDB_BAD_VALSIZE:
    case EINVAL:
        return MDM_EINVAL;
    case ENOMEM:
        return MDM_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return MDM_ENOSPACE;
    case EACCES:
    case EROFS:
        return MDM_ESTATE;
    case MDB_READERS_FULL:
    case EAGAIN:
    case EBUSY:
        return MDM_EBUSY;
    default:
        return MDM_EIO;
    }
}

/* A failed commit loses the whole batch; the caller answers every request
 * of the batch with an error. */
static int map_commit_err(int rc)
{
    switch (rc) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
        return MDM_ENOSPACE;
    case ENOMEM:
        return MDM_ENOMEM;
    default:
        return MDM_EIO;
    }
}

static void log_lmdb_error(int level, const char *event, const struct lmdb_store *s, int rc)
{
    char q1[256], q2[256];
    mdm_log(level, NULL, event, "path=%s error=%s", mdm_logq(q1, sizeof(q1), s->path),
            mdm_logq(q2, sizeof(q2), mdb_strerror(rc)));
}

/* Drops the cached read transaction: the map may only be resized when no
 * transaction of this process refers to it. */
static void drop_read_txn(struct lmdb_store *s)
{
    if (s->rtxn) {
        mdb_txn_abort(s->rtxn);
        s->rtxn = NULL;
    }
}

/* Adopts the map size another process grew the environment to. */
static int adopt_foreign_map_size(struct lmdb_store *s)
{
    drop_read_txn(s);
    return mdb_env_set_mapsize(s->env, 0);
}

/* Begins a top-level transaction, following a map resized by another
 * process. */
static int begin_top(struct lmdb_store *s, unsigned flags, MDB_txn **out)
{
    int rc = 0;
    for (int i = 0; i < 4; i++) {
        rc = mdb_txn_begin(s->env, NULL, flags, out);
        if (rc != MDB_MAP_RESIZED)
            return rc;
        rc = adopt_foreign_map_size(s);
        if (rc != 0)
            return rc;
    }
    return rc;
}

static int read_begin(struct lmdb_store *s, MDB_txn **out)
{
    if (s->rtxn) {
        int rc = mdb_txn_renew(s->rtxn);
        if (rc == 0) {
            *out = s->rtxn;
            return 0;
        }
        /* A failed renew leaves the transaction ended but allocated. */
        drop_read_txn(s);
        if (rc == MDB_MAP_RESIZED) {
            rc = adopt_foreign_map_size(s);
            if (rc != 0)
                return rc;
        }
    }
    int rc = begin_top(s, MDB_RDONLY, &s->rtxn);
    if (rc != 0) {
        s->rtxn = NULL;
        return rc;
    }
    *out = s->rtxn;
    return 0;
}

/* Commits the batch. Returns 0 when there is none or it holds nothing. */
static int grow_map(struct lmdb_store *s);

static int commit_batch(struct lmdb_store *s)
{
    if (s->batch == NULL)
        return 0;
    MDB_txn *b = s->batch;
    unsigned n = s->batch_children;
    s->batch = NULL;
    s->batch_children = 0;
    if (n == 0) {
        /* Nothing to write: release the writer lock without a commit. */
        mdb_txn_abort(b);
        return 0;
    }
    int rc = mdb_txn_commit(b);
    if (rc != 0) {
        s->commit_failures++;
        log_lmdb_error(MDM_LOG_ERROR, "store_commit_failed", s, rc);
        /* The commit itself needed more pages than the map has: make room
         * now, or every later batch would fail the same way. */
        if (rc == MDB_MAP_FULL)
            (void)grow_map(s);
        return map_commit_err(rc);
    }
    s->commits++;
    s->committed_updates += n;
    /* Grow ahead of need: a map that is 80% used doubles before a commit
     * can find it full. */
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(s->env, &info) == 0 && mdb_env_stat(s->env, &st) == 0 &&
        (double)(info.me_last_pgno + 1) * st.ms_psize > 0.8 * (double)info.me_mapsize &&
        info.me_mapsize < s->map_max)
        (void)grow_map(s);
    return 0;
}

/* Throws the batch away; the updates it held are reported lost by the next
 * flush. */
static void abort_batch(struct lmdb_store *s)
{
    if (s->batch == NULL)
        return;
    if (s->batch_children > 0) {
        s->commit_failures++;
        if (s->deferred == 0)
            s->deferred = MDM_EIO;
        mdm_log(MDM_LOG_ERROR, NULL, "store_batch_lost", "updates=%u", s->batch_children);
    }
    mdb_txn_abort(s->batch);
    s->batch = NULL;
    s->batch_children = 0;
}

/* Doubles the map, up to map_max. */
static int grow_map(struct lmdb_store *s)
{
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    size_t cur = info.me_mapsize;
    if (cur >= s->map_max) {
        mdm_log(MDM_LOG_ERROR, NULL, "store_map_limit", "map_size=%zu map_max=%zu", cur,
                s->map_max);
        return MDM_ENOSPACE;
    }
    size_t next = cur > s->map_max / 2 ? s->map_max : cur * 2;
    drop_read_txn(s);
    int rc = mdb_env_set_mapsize(s->env, next);
    if (rc != 0) {
        log_lmdb_error(MDM_LOG_ERROR, "store_map_grow_failed", s, rc);
        return MDM_ENOSPACE;
    }
    s->grows++;
    mdm_log(MDM_LOG_INFO, NULL, "store_map_grow", "from=%zu to=%zu", cur, next);
    return 0;
}

static struct lmdb_txn *txn_enter(struct lmdb_store *s, MDB_txn *txn, bool write)
{
    struct lmdb_txn *t = &s->utxn;
    t->ops = &mdm_store_lmdb;
    t->s = s;
    t->txn = txn;
    t->write = write;
    t->full = 0;
    t->cursors = NULL;
    s->in_fn = true;
    return t;
}

static void cursor_free(struct lmdb_cursor *c)
{
    struct lmdb_txn *t = c->t;
    if (c->prev)
        c->prev->next = c->next;
    else
        t->cursors = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->mc)
        mdb_cursor_close(c->mc);
    mdm_free(c);
}

/* Ends the function's use of t: closes the cursors it left open and frees
 * the value copies. Returns the full condition it met, if any. */
static int txn_leave(struct lmdb_store *s, struct lmdb_txn *t)
{
    unsigned left = 0;
    while (t->cursors) {
        cursor_free(t->cursors);
        left++;
    }
    if (left)
        mdm_log(MDM_LOG_DEBUG, NULL, "store_cursor_autoclose", "cursors=%u", left);
    mdm_arena_reset(&s->arena);
    s->in_fn = false;
    t->txn = NULL;
    return t->full;
}

/* A value that stays valid until the transaction ends. */
static mdm_val_t stable_val(struct lmdb_txn *t, const MDB_val *v)
{
    if (!t->write || v->mv_size == 0)
        return MDM_VAL(v->mv_data, v->mv_size);
    return MDM_VAL(mdm_arena_memdup(&t->s->arena, v->mv_data, v->mv_size), v->mv_size);
}

static bool key_ok(mdm_val_t key)
{
    return key.len > 0 && key.len <= MDM_STORE_MAX_KEY && key.data != NULL;
}

/* A key no table can hold: looking it up finds nothing. */
static bool key_too_long(mdm_val_t key)
{
    return key.len > MDM_STORE_MAX_KEY && key.data != NULL;
}

static bool table_ok(int table)
{
    return table >= 0 && table < MDM_T__COUNT;
}

static MDB_val to_mdb(mdm_val_t v)
{
    /* LMDB copies len bytes from data; never hand it NULL. */
    return (MDB_val){.mv_size = v.len, .mv_data = v.len ? (void *)v.data : (void *)""};
}

static int note_write(struct lmdb_txn *t, int rc)
{
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL)
        t->full = rc;
    return map_err(rc);
}

/* --- open and close ------------------------------------------------------ */

static int mkdir_p(const char *path)
{
    char *p = mdm_strdup(path);
    int rc = 0;
    for (char *q = p + 1;; q++) {
        if (*q != '/' && *q != '\0')
            continue;
        char c = *q;
        *q = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            rc = -1;
            break;
        }
        *q = c;
        if (c == '\0')
            break;
    }
    int saved = errno;
    mdm_free(p);
    errno = saved;
    return rc;
}

/* Makes sure dir exists as a directory; creates it (0700) when create. */
static int ensure_dir(const char *dir, bool create, const char *what, mdm_err_t *err)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT)
            return mdm_err_set(err, MDM_EIO, "%s: cannot access %s: %s", what, dir,
                               strerror(errno));
        if (!create)
            return mdm_err_set(err, MDM_ENOTFOUND,
                               "%s: the data directory %s does not exist (run `moonmdm init` "
                               "to create it)",
                               what, dir);
        if (mkdir_p(dir) != 0)
            return mdm_err_set(err, MDM_EIO, "%s: cannot create the directory %s: %s", what,
                               dir, strerror(errno));
        if (stat(dir, &st) != 0)
            return mdm_err_set(err, MDM_EIO, "%s: cannot access %s: %s", what, dir,
                               strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return mdm_err_set(err, MDM_EINVAL, "%s: %s is not a directory", what, dir);
    return 0;
}

static int open_tables(struct lmdb_store *s, mdm_err_t *err)
{
    bool rdonly = (s->flags & MDM_STORE_RDONLY) != 0;
    MDB_txn *txn = NULL;
    int rc = begin_top(s, rdonly ? MDB_RDONLY : 0, &txn);
    if (rc != 0)
        goto fail;
    for (int i = 0; i < MDM_T__COUNT; i++) {
        rc = mdb_dbi_open(txn, mdm_store_table_name(i), rdonly ? 0 : MDB_CREATE, &s->dbi[i]);
        if (rc == MDB_NOTFOUND && rdonly) {
            /* A store from a release without this table: it reads as empty. */
            s->have[i] = false;
            continue;
        }
        if (rc != 0) {
            mdb_txn_abort(txn);
            return mdm_err_set(err, map_err(rc), "store: cannot open the table %s in %s: %s",
                               mdm_store_table_name(i), s->path, mdb_strerror(rc));
        }
        s->have[i] = true;
    }
    /* Committing (even a read-only transaction) keeps the handles. */
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        goto fail;
    return 0;
fail:
    return mdm_err_set(err, map_err(rc), "store: cannot open the tables in %s: %s", s->path,
                       mdb_strerror(rc));
}

/* --- a file that ends before its last page ------------------------------- */

/* LMDB does not write the pages that a transaction allocated and freed
 * again before it committed ("loose" pages): they go to the freelist
 * unwritten. When they were the highest pages, a healthy data.mdb ends
 * before its last page. A copy cut short ends there too, and reading one
 * of its missing pages through the map raises SIGBUS. So a short file is
 * accepted when every page past its end is on the freelist, and refused
 * otherwise. The freelist is read under a SIGBUS guard, since in a cut
 * copy its own pages may be the missing ones. */

static pthread_mutex_t tail_lock = PTHREAD_MUTEX_INITIALIZER;
static sigjmp_buf tail_jmp;
static pthread_t tail_thread;
static volatile sig_atomic_t tail_guarded;

static void tail_sigbus(int sig)
{
    if (tail_guarded && pthread_equal(pthread_self(), tail_thread))
        siglongjmp(tail_jmp, 1);
    /* Not ours: fault again with the default action. */
    signal(sig, SIG_DFL);
}

/* Marks in seen[] the pages first..last found in the freelist. */
static int mark_free_pages(MDB_cursor *c, size_t first, size_t last, unsigned char *seen)
{
    MDB_val k, v;
    int rc;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        size_t n;
        if (v.mv_size < sizeof(n))
            return MDB_CORRUPTED;
        memcpy(&n, v.mv_data, sizeof(n));
        if (n > v.mv_size / sizeof(n) - 1)
            return MDB_CORRUPTED;
        for (size_t i = 1; i <= n; i++) {
            size_t pg;
            memcpy(&pg, (const char *)v.mv_data + i * sizeof(pg), sizeof(pg));
            if (pg >= first && pg <= last)
                seen[(pg - first) / 8] |= (unsigned char)(1u << ((pg - first) % 8));
        }
    }
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* 0 when the pages first..last are all free; MDM_EIO when one is not, or
 * when reading the freelist faulted or failed. */
static int check_free_tail(struct lmdb_store *s, size_t first, size_t last)
{
    if (last < first)
        return 0;
    size_t count = last - first + 1;
    if (count > ((size_t)1 << 28)) /* 1 TiB of 4 KiB pages */
        return MDM_EIO;
    unsigned char *seen = mdm_calloc(count / 8 + 1, 1);
    MDB_txn *volatile txn = NULL;
    MDB_cursor *volatile cur = NULL;
    volatile int rc = MDM_EIO;

    pthread_mutex_lock(&tail_lock);
    struct sigaction sa = {.sa_handler = tail_sigbus}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &old);
    tail_thread = pthread_self();
    if (sigsetjmp(tail_jmp, 1) == 0) {
        tail_guarded = 1;
        MDB_txn *t = NULL;
        MDB_cursor *c = NULL;
        if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t) == 0) {
            txn = t;
            if (mdb_cursor_open(t, 0, &c) == 0) { /* dbi 0: LMDB's freelist */
                cur = c;
                rc = mark_free_pages(c, first, last, seen) == 0 ? 0 : MDM_EIO;
            }
        }
    } else {
        rc = MDM_EIO; /* a page of the freelist itself is missing */
    }
    tail_guarded = 0;
    sigaction(SIGBUS, &old, NULL);
    pthread_mutex_unlock(&tail_lock);

    if (cur != NULL)
        mdb_cursor_close(cur);
    if (txn != NULL)
        mdb_txn_abort(txn);
    for (size_t i = 0; rc == 0 && i < count; i++)
        if (!(seen[i / 8] & (1u << (i % 8))))
            rc = MDM_EIO;
    mdm_free(seen);
    return rc;
}

static void lm_close(mdm_store_t *store);

static int lm_open(mdm_store_t **out, const mdm_store_config_t *cfg, mdm_err_t *err)
{
    struct lmdb_store *s = NULL;
    char *data_file = NULL;
    int rc;

    *out = NULL;
    if (cfg == NULL || cfg->path == NULL || cfg->path[0] == '\0')
        return mdm_err_set(err, MDM_EINVAL, "store: no data directory given");
    bool rdonly = (cfg->flags & MDM_STORE_RDONLY) != 0;
    bool create = (cfg->flags & MDM_STORE_CREATE) != 0 && !rdonly;
    size_t map_size = cfg->map_size ? cfg->map_size : DEFAULT_MAP_SIZE;
    size_t map_max = cfg->map_max ? cfg->map_max : DEFAULT_MAP_MAX;
    if (map_max < map_size)
        return mdm_err_set(err, MDM_ECONFIG,
                           "store: the map limit (%zu bytes) is smaller than the initial map "
                           "size (%zu bytes)",
                           map_max, map_size);

    rc = ensure_dir(cfg->path, create, "store", err);
    if (rc != 0)
        return rc;
    data_file = mdm_sprintf("%s/data.mdb", cfg->path);
    if (!create && access(data_file, F_OK) != 0) {
        rc = mdm_err_set(err, MDM_ENOTFOUND,
                         "store: there is no store in %s (data.mdb is missing; run `moonmdm "
                         "init` to create one)",
                         cfg->path);
        goto out;
    }

    s = mdm_calloc(1, sizeof(*s));
    s->ops = &mdm_store_lmdb;
    s->path = mdm_strdup(cfg->path);
    s->flags = cfg->flags;
    s->map_max = map_max;
    mdm_arena_init(&s->arena, 4096);

    rc = mdb_env_create(&s->env);
    if (rc != 0) {
        s->env = NULL;
        rc = mdm_err_set(err, map_err(rc), "store: cannot create an LMDB environment: %s",
                         mdb_strerror(rc));
        goto out;
    }
    if ((rc = mdb_env_set_maxdbs(s->env, MDM_T__COUNT)) != 0 ||
        (rc = mdb_env_set_maxreaders(s->env, MAX_READERS)) != 0 ||
        (rc = mdb_env_set_mapsize(s->env, map_size)) != 0) {
        rc = mdm_err_set(err, map_err(rc), "store: cannot set up the LMDB environment: %s",
                         mdb_strerror(rc));
        goto out;
    }
    unsigned env_flags = MDB_NOTLS;
    if (!cfg->sync)
        env_flags |= MDB_NOSYNC;
    if (rdonly)
        env_flags |= MDB_RDONLY;
    rc = mdb_env_open(s->env, cfg->path, env_flags, 0600);
    if (rc != 0) {
        rc = mdm_err_set(err, map_err(rc) == MDM_ESTATE ? MDM_EIO : map_err(rc),
                         "store: cannot open the LMDB environment in %s: %s", cfg->path,
                         mdb_strerror(rc));
        goto out;
    }

    /* Free the reader slots of processes that died holding them. */
    int dead = 0;
    if (mdb_reader_check(s->env, &dead) == 0 && dead > 0)
        mdm_log(MDM_LOG_WARN, NULL, "store_stale_readers", "cleared=%d", dead);

    /* Keep the size the map grew to in earlier runs (LMDB records it), so
     * that a restart does not grow it again step by step. */
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    size_t configured = info.me_mapsize;
    rc = mdb_env_set_mapsize(s->env, 0);
    if (rc == 0) {
        mdb_env_info(s->env, &info);
        if (info.me_mapsize < configured)
            rc = mdb_env_set_mapsize(s->env, configured);
    }
    if (rc != 0) {
        rc = mdm_err_set(err, map_err(rc), "store: cannot map %s: %s", cfg->path,
                         mdb_strerror(rc));
        goto out;
    }
    /* A file shorter than its last page is usable only when the missing
     * pages are free (check_free_tail). */
    MDB_stat mst;
    struct stat fst;
    if (mdb_env_info(s->env, &info) == 0 && mdb_env_stat(s->env, &mst) == 0 &&
        stat(data_file, &fst) == 0 &&
        (uint64_t)fst.st_size < ((uint64_t)info.me_last_pgno + 1) * mst.ms_psize &&
        check_free_tail(s, (size_t)fst.st_size / mst.ms_psize, info.me_last_pgno) != 0) {
        rc = mdm_err_set(err, MDM_EIO,
                         "store: %s is truncated (%lld bytes, its pages need %llu): not a "
                         "usable store",
                         data_file, (long long)fst.st_size,
                         (unsigned long long)((uint64_t)info.me_last_pgno + 1) * mst.ms_psize);
        goto out;
    }
    rc = open_tables(s, err);
out:
    mdm_free(data_file);
    if (rc != 0) {
        if (s)
            lm_close((mdm_store_t *)s);
        return rc;
    }
    *out = (mdm_store_t *)s;
    return 0;
}

static void lm_close(mdm_store_t *store)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    if (s == NULL)
        return;
    assert(!s->in_fn && "mdm_store_close called from inside a transaction function");
    if (s->env) {
        int rc = commit_batch(s);
        if (rc != 0 || s->deferred != 0)
            mdm_log(MDM_LOG_ERROR, NULL, "store_close_lost_batch", "error=%s",
                    mdm_errname(rc ? rc : s->deferred));
        drop_read_txn(s);
        mdb_env_close(s->env);
    }
    mdm_arena_free(&s->arena);
    mdm_free(s->path);
    mdm_free(s);
}

/* --- group commit -------------------------------------------------------- */

static int lm_flush(mdm_store_t *store)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    assert(!s->in_fn && "mdm_store_flush called from inside a transaction function");
    if (s->in_fn)
        return MDM_ESTATE;
    int rc = commit_batch(s);
    int lost = s->deferred;
    s->deferred = 0;
    return rc ? rc : lost;
}

/* Also true when a batch was lost outside flush (while growing the map or
 * making a backup), so that a caller that flushes only when something is
 * pending still learns of it. */
static bool lm_pending(mdm_store_t *store)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    return (s->batch != NULL && s->batch_children > 0) || s->deferred != 0;
}

static int lm_update(mdm_store_t *store, mdm_txn_fn fn, void *arg)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    assert(!s->in_fn && "mdm_store_update called from inside a transaction function");
    if (s->in_fn || (s->flags & MDM_STORE_RDONLY))
        return MDM_ESTATE;
    bool autoflush = (s->flags & MDM_STORE_AUTOFLUSH) != 0;

    for (int attempt = 0; attempt < MAX_UPDATE_ATTEMPTS; attempt++) {
        int rc;
        if (s->batch == NULL) {
            rc = begin_top(s, 0, &s->batch);
            if (rc != 0) {
                s->batch = NULL;
                log_lmdb_error(MDM_LOG_ERROR, "store_begin_failed", s, rc);
                return map_err(rc);
            }
            s->batch_children = 0;
        }
        MDB_txn *child = NULL;
        rc = mdb_txn_begin(s->env, s->batch, 0, &child);
        if (rc != 0) {
            /* The batch cannot take a child (an earlier failure left it
             * unusable): give it up and start over once. */
            log_lmdb_error(MDM_LOG_ERROR, "store_begin_failed", s, rc);
            if (rc == ENOMEM || attempt > 0)
                return map_err(rc);
            abort_batch(s);
            continue;
        }

        struct lmdb_txn *t = txn_enter(s, child, true);
        int frc = fn((mdm_txn_t *)t, arg);
        int full = txn_leave(s, t);

        if (full == 0 && frc == 0) {
            rc = mdb_txn_commit(child);
            if (rc != 0) {
                /* The merge into the batch failed half-way: the batch is
                 * not to be trusted any more. */
                log_lmdb_error(MDM_LOG_ERROR, "store_nested_commit_failed", s, rc);
                abort_batch(s);
                return map_commit_err(rc);
            }
            s->batch_children++;
            return autoflush ? lm_flush(store) : 0;
        }
        mdb_txn_abort(child);
        if (full == 0) {
            if (autoflush)
                (void)commit_batch(s); /* empty: releases the writer lock */
            return frc;
        }

        /* The map (or the batch's page budget) is full. fn's changes are
         * gone; commit the other updates of the batch, make room, and run fn
         * again in a new batch. */
        bool alone = s->batch_children == 0;
        rc = commit_batch(s);
        if (rc != 0) {
            if (!autoflush)
                s->deferred = rc;
            return rc;
        }
        if (full == MDB_MAP_FULL) {
            rc = grow_map(s);
            if (rc != 0)
                return rc;
        } else if (alone) {
            mdm_log(MDM_LOG_ERROR, NULL, "store_txn_too_large", "path=%s", s->path);
            return MDM_ELIMIT;
        }
    }
    return MDM_ENOSPACE;
}

static int lm_view(mdm_store_t *store, mdm_txn_fn fn, void *arg)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    assert(!s->in_fn && "mdm_store_view called from inside a transaction function");
    if (s->in_fn)
        return MDM_ESTATE;
    /* A batch without changes sees the same as a fresh read transaction,
     * which is cheaper than a nested one. */
    bool nested = s->batch != NULL && s->batch_children > 0;
    MDB_txn *txn = NULL;
    int rc = nested ? mdb_txn_begin(s->env, s->batch, 0, &txn) : read_begin(s, &txn);
    if (rc != 0) {
        log_lmdb_error(MDM_LOG_ERROR, "store_begin_failed", s, rc);
        return map_err(rc);
    }
    struct lmdb_txn *t = txn_enter(s, txn, false);
    int frc = fn((mdm_txn_t *)t, arg);
    txn_leave(s, t);
    if (nested)
        mdb_txn_abort(txn);
    else
        mdb_txn_reset(txn);
    return frc;
}

/* --- operations in a transaction ----------------------------------------- */

static int lm_get(mdm_txn_t *txn, int table, mdm_val_t key, mdm_val_t *val)
{
    struct lmdb_txn *t = (struct lmdb_txn *)txn;
    if (table_ok(table) && key_too_long(key))
        return MDM_ENOTFOUND;
    if (!table_ok(table) || !key_ok(key))
        return MDM_EINVAL;
    if (t->full)
        return MDM_EMAPFULL;
    if (!t->s->have[table])
        return MDM_ENOTFOUND;
    MDB_val k = to_mdb(key), v;
    int rc = mdb_get(t->txn, t->s->dbi[table], &k, &v);
    if (rc != 0)
        return map_err(rc);
    if (val)
        *val = stable_val(t, &v);
    return 0;
}

static int lm_put(mdm_txn_t *txn, int table, mdm_val_t key, mdm_val_t val, unsigned flags)
{
    struct lmdb_txn *t = (struct lmdb_txn *)txn;
    if (!table_ok(table) || !key_ok(key) || (val.len > 0 && val.data == NULL) ||
        (flags & ~(unsigned)MDM_PUT_NOOVERWRITE))
        return MDM_EINVAL;
    if (!t->write || !t->s->have[table])
        return MDM_ESTATE;
    if (t->full)
        return MDM_EMAPFULL;
    MDB_val k = to_mdb(key), v = to_mdb(val);
    unsigned mflags = (flags & MDM_PUT_NOOVERWRITE) ? MDB_NOOVERWRITE : 0;
    return note_write(t, mdb_put(t->txn, t->s->dbi[table], &k, &v, mflags));
}

static int lm_del(mdm_txn_t *txn, int table, mdm_val_t key)
{
    struct lmdb_txn *t = (struct lmdb_txn *)txn;
    if (table_ok(table) && key_too_long(key) && t->write)
        return MDM_ENOTFOUND;
    if (!table_ok(table) || !key_ok(key))
        return MDM_EINVAL;
    if (!t->write || !t->s->have[table])
        return MDM_ESTATE;
    if (t->full)
        return MDM_EMAPFULL;
    MDB_val k = to_mdb(key);
    return note_write(t, mdb_del(t->txn, t->s->dbi[table], &k, NULL));
}

static int lm_count(mdm_txn_t *txn, int table, uint64_t *n)
{
    struct lmdb_txn *t = (struct lmdb_txn *)txn;
    if (!table_ok(table))
        return MDM_EINVAL;
    if (t->full)
        return MDM_EMAPFULL;
    *n = 0;
    if (!t->s->have[table])
        return 0;
    MDB_stat st;
    int rc = mdb_stat(t->txn, t->s->dbi[table], &st);
    if (rc != 0)
        return map_err(rc);
    *n = st.ms_entries;
    return 0;
}

static int lm_cursor_open(mdm_txn_t *txn, int table, mdm_cursor_t **out)
{
    struct lmdb_txn *t = (struct lmdb_txn *)txn;
    *out = NULL;
    if (!table_ok(table))
        return MDM_EINVAL;
    if (t->full)
        return MDM_EMAPFULL;
    struct lmdb_cursor *c = mdm_calloc(1, sizeof(*c));
    c->ops = &mdm_store_lmdb;
    c->t = t;
    if (t->s->have[table]) {
        int rc = mdb_cursor_open(t->txn, t->s->dbi[table], &c->mc);
        if (rc != 0) {
            mdm_free(c);
            return map_err(rc);
        }
    }
    c->next = t->cursors;
    if (t->cursors)
        t->cursors->prev = c;
    t->cursors = c;
    *out = (mdm_cursor_t *)c;
    return 0;
}

static int cursor_move(struct lmdb_cursor *c, MDB_val *key, MDB_cursor_op op, mdm_val_t *k,
                       mdm_val_t *v)
{
    if (c->t->full)
        return MDM_EMAPFULL;
    if (c->mc == NULL)
        return MDM_ENOTFOUND;
    MDB_val mk = {0, NULL}, mv = {0, NULL};
    if (key)
        mk = *key;
    int rc = mdb_cursor_get(c->mc, &mk, &mv, op);
    if (rc != 0)
        return map_err(rc);
    if (k)
        *k = stable_val(c->t, &mk);
    if (v)
        *v = stable_val(c->t, &mv);
    return 0;
}

static int lm_cursor_seek(mdm_cursor_t *cur, mdm_val_t key, mdm_val_t *k, mdm_val_t *v)
{
    struct lmdb_cursor *c = (struct lmdb_cursor *)cur;
    if (key.len == 0)
        return cursor_move(c, NULL, MDB_FIRST, k, v);
    if (!key_ok(key))
        return MDM_EINVAL;
    MDB_val mk = to_mdb(key);
    return cursor_move(c, &mk, MDB_SET_RANGE, k, v);
}

static int lm_cursor_last(mdm_cursor_t *cur, mdm_val_t *k, mdm_val_t *v)
{
    return cursor_move((struct lmdb_cursor *)cur, NULL, MDB_LAST, k, v);
}

static int lm_cursor_next(mdm_cursor_t *cur, mdm_val_t *k, mdm_val_t *v)
{
    return cursor_move((struct lmdb_cursor *)cur, NULL, MDB_NEXT, k, v);
}

static int lm_cursor_prev(mdm_cursor_t *cur, mdm_val_t *k, mdm_val_t *v)
{
    return cursor_move((struct lmdb_cursor *)cur, NULL, MDB_PREV, k, v);
}

/* After a delete, cursor_next yields the entry that followed the deleted
 * one (LMDB keeps the cursor on the next entry). */
static int lm_cursor_del(mdm_cursor_t *cur)
{
    struct lmdb_cursor *c = (struct lmdb_cursor *)cur;
    if (!c->t->write)
        return MDM_ESTATE;
    if (c->t->full)
        return MDM_EMAPFULL;
    if (c->mc == NULL)
        return MDM_ENOTFOUND;
    return note_write(c->t, mdb_cursor_del(c->mc, 0));
}

static void lm_cursor_close(mdm_cursor_t *cur)
{
    if (cur)
        cursor_free((struct lmdb_cursor *)cur);
}

/* --- stats and backup ---------------------------------------------------- */

static int stats_fn(mdm_txn_t *txn, void *arg)
{
    mdm_store_stats_t *out = arg;
    for (int i = 0; i < MDM_T__COUNT; i++) {
        int rc = lm_count(txn, i, &out->entries[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int lm_stats(mdm_store_t *store, mdm_store_stats_t *out)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    memset(out, 0, sizeof(*out));
    MDB_envinfo info;
    MDB_stat st;
    int rc = mdb_env_info(s->env, &info);
    if (rc == 0)
        rc = mdb_env_stat(s->env, &st);
    if (rc != 0)
        return map_err(rc);
    out->map_size = info.me_mapsize;
    out->used_bytes = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
    out->commits = s->commits;
    out->committed_updates = s->committed_updates;
    out->commit_failures = s->commit_failures;
    out->grows = s->grows;
    return lm_view(store, stats_fn, out);
}

static int lm_backup(mdm_store_t *store, const char *path, mdm_err_t *err)
{
    struct lmdb_store *s = (struct lmdb_store *)store;
    char *dst = NULL;
    int fd = -1;
    int rc;

    assert(!s->in_fn && "mdm_store_backup called from inside a transaction function");
    if (s->in_fn)
        return mdm_err_set(err, MDM_ESTATE, "store backup: called inside a transaction");
    if (path == NULL || path[0] == '\0')
        return mdm_err_set(err, MDM_EINVAL, "store backup: no directory given");
    /* The copy reads the last committed state: commit the open batch so
     * that it is in the backup. A failure is also reported by the next
     * flush, as the batch's requests are lost. */
    rc = commit_batch(s);
    if (rc != 0) {
        s->deferred = rc;
        return mdm_err_set(err, rc, "store backup: cannot commit the open batch: %s",
                           mdm_strerror(rc));
    }
    rc = ensure_dir(path, true, "store backup", err);
    if (rc != 0)
        return rc;
    dst = mdm_sprintf("%s/data.mdb", path);
    fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            rc = mdm_err_set(err, MDM_EEXIST,
                             "store backup: %s already holds a store (data.mdb); choose a new "
                             "directory",
                             path);
        else
            rc = mdm_err_set(err, MDM_EIO, "store backup: cannot create %s: %s", dst,
                             strerror(errno));
        goto out;
    }
    int mrc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
    if (mrc != 0) {
        rc = mdm_err_set(err, map_commit_err(mrc), "store backup: copying %s to %s failed: %s",
                         s->path, path, mdb_strerror(mrc));
        goto out;
    }
    if (fsync(fd) != 0) {
        rc = mdm_err_set(err, errno == ENOSPC ? MDM_ENOSPACE : MDM_EIO,
                         "store backup: cannot sync %s: %s", dst, strerror(errno));
        goto out;
    }
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    char q[256];
    mdm_log(MDM_LOG_INFO, NULL, "store_backup", "to=%s", mdm_logq(q, sizeof(q), path));
out:
    if (fd >= 0) {
        close(fd);
        if (rc != 0)
            unlink(dst);
    }
    mdm_free(dst);
    return rc;
}

const mdm_store_ops_t mdm_store_lmdb = {
    .name = "lmdb",
    .open = lm_open,
    .close = lm_close,
    .update = lm_update,
    .view = lm_view,
    .flush = lm_flush,
    .pending = lm_pending,
    .get = lm_get,
    .put = lm_put,
    .del = lm_del,
    .cursor_open = lm_cursor_open,
    .cursor_seek = lm_cursor_seek,
    .cursor_last = lm_cursor_last,
    .cursor_next = lm_cursor_next,
    .cursor_prev = lm_cursor_prev,
    .cursor_del = lm_cursor_del,
    .cursor_close = lm_cursor_close,
    .count = lm_count,
    .stats = lm_stats,
    .backup = lm_backup,
};
