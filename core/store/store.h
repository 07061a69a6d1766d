/* The store: a backend-neutral, ordered key-value interface with
 * transactions, over the named tables of the storage plan (docs/DESIGN.md).
 * Everything moonmdm persists goes through it; the domain modules (queue,
 * devices, certificates, ...) encode their own keys and values on top.
 *
 * A backend is a table of functions (mdm_store_ops_t). LMDB is the first and
 * the default (store/lmdb.c); a PostgreSQL backend maps each table to a
 * (key bytea primary key, value bytea) relation and needs no change in any
 * caller.
 *
 * Writes are grouped: mdm_store_update() runs its function in a write
 * transaction nested in the current batch, so that one failing request rolls
 * back only its own changes. mdm_store_flush() commits the batch (one fsync
 * for every request of a loop iteration). The HTTP layer holds each response
 * written while a batch is open until the batch is committed: nothing a
 * client is told is stored can be lost. Outside the server (CLI, tests) open
 * the store with MDM_STORE_AUTOFLUSH and every update commits at once.
 *
 * Values returned by get and cursors stay valid until the transaction ends.
 * Keys are at most MDM_STORE_MAX_KEY bytes: put refuses a longer one
 * (MDM_EINVAL), get and del find nothing under it (MDM_ENOTFOUND). */
#ifndef MDM_STORE_H
#define MDM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* The schema version this build writes. A store with a newer version is
 * refused at open (MDM_ESCHEMA); an older one is migrated when opened for
 * writing.
 *   1: the first layout.
 *   2: command results may be in the binary result layout (queue.h);
 *      version 1 records are read as they are, so the migration only
 *      records the new version (a version 1 build would not read them).
 *   3: results of commands that still wait are kept under "\x01" + their
 *      key (queue.c); version 2 records are found under the usual key and
 *      move when they next change, so the migration only records the new
 *      version (a version 2 build would not find the moved ones).
 *   4: the result of a command that still waits is kept in its queue
 *      entry, after the command UUID and expiry, and the command's target
 *      index entry (cmdt) holds the queue entry's position (queue.c);
 *      results and entries of versions 2 and 3 are read as they are and
 *      move when they next change, so the migration only records the new
 *      version (a version 3 build would skip the longer queue entries).
 *   5: one-time challenges may be in value layouts 2 (a purpose) and 3 (a
 *      purpose and the UDID of the device the challenge is for), and
 *      certificates may have a UDID index entry (scep/challenge.h);
 *      layout 1 values read as they are, so the migration only records the
 *      new version (a version 4 build would take the new challenges for
 *      damaged ones and prune them). */
#define MDM_STORE_SCHEMA_VERSION 5

#define MDM_STORE_MAX_KEY 480

/* The named tables. The order is part of no on-disk format: backends store
 * them by name (mdm_store_table_name). */
enum mdm_table {
    MDM_T_META = 0,    /* name -> value (schema version, counters) */
    MDM_T_DEVICES,     /* UDID -> device facts */
    MDM_T_ENROLLMENTS, /* enrollment id -> push token, magic, topic, flags, times */
    MDM_T_CERTAUTH,    /* cert SHA-256 -> enrollment id, and "e:"+id -> hash */
    MDM_T_CERTS,       /* serial -> issued certificate record */
    MDM_T_CHALLENGES,  /* challenge digest -> expiry, owner (one-time) */
    MDM_T_COMMANDS,    /* command UUID -> command plist, request type, times */
    MDM_T_QUEUE,       /* enrollment id, priority, sequence -> command UUID, expiry,
                          waiting result */
    MDM_T_RESULTS,     /* enrollment id, command UUID -> finished result */
    MDM_T_PROFILES,    /* identifier -> profile bytes, hash, metadata */
    MDM_T_INSTALLED,   /* enrollment id, identifier -> installed hash */
    MDM_T_POLICY_KV,   /* namespace, key -> policy-owned value */
    MDM_T_DECISIONS,   /* time, id -> decision log entry */
    MDM_T_APIKEYS,     /* key id -> hashed admin API key, role, times */
    MDM_T_INDEX,       /* secondary indexes: "<index>\0<key>" -> value */
    MDM_T__COUNT
};

typedef struct mdm_store mdm_store_t;
typedef struct mdm_txn mdm_txn_t;
typedef struct mdm_cursor mdm_cursor_t;

/* A byte string that does not own its bytes. */
typedef struct mdm_val {
    const void *data;
    size_t len;
} mdm_val_t;

#define MDM_VAL(p, n) ((mdm_val_t){(p), (n)})
#define MDM_VAL_STR(s) ((mdm_val_t){(s), strlen(s)})

/* Flags of mdm_store_open. */
enum {
    MDM_STORE_RDONLY = 1 << 0,     /* open read-only (db check, backups) */
    MDM_STORE_AUTOFLUSH = 1 << 1,  /* every update commits on its own */
    MDM_STORE_CREATE = 1 << 2,     /* create the store if it does not exist */
};

/* Flags of put. */
enum {
    MDM_PUT_NOOVERWRITE = 1 << 0,  /* fail with MDM_EEXIST if the key exists */
};

typedef struct mdm_store_config {
    const char *path;        /* LMDB: the directory that holds data.mdb */
    size_t map_size;         /* initial map size in bytes (0: 256 MiB) */
    size_t map_max;          /* the map is never grown past this (0: 64 GiB) */
    bool sync;               /* fsync at every batch commit (default true) */
    unsigned flags;          /* MDM_STORE_* */
} mdm_store_config_t;

typedef int (*mdm_txn_fn)(mdm_txn_t *txn, void *arg);

/* Numbers for /metrics and `db check`. */
typedef struct mdm_store_stats {
    size_t map_size;         /* bytes reserved */
    size_t used_bytes;       /* bytes in use (pages * page size) */
    uint64_t commits;        /* batch commits so far */
    uint64_t committed_updates; /* updates those commits held (updates per
                                   commit: the batches' size) */
    uint64_t commit_failures;
    uint64_t grows;          /* map size increases */
    uint64_t entries[MDM_T__COUNT];
} mdm_store_stats_t;

typedef struct mdm_store_ops {
    const char *name;
    int (*open)(mdm_store_t **out, const mdm_store_config_t *cfg, mdm_err_t *err);
    void (*close)(mdm_store_t *s);

    /* Run fn in a (nested) write transaction; fn's non-zero return rolls
     * back its changes and is returned. Grows the map and retries fn when it
     * fills up. Returns MDM_ENOSPACE when the disk or the map limit is full. */
    int (*update)(mdm_store_t *s, mdm_txn_fn fn, void *arg);
    /* Run fn in a read transaction that sees every update so far, including
     * those of the open batch. */
    int (*view)(mdm_store_t *s, mdm_txn_fn fn, void *arg);
    /* Commit the open batch, if any (durable when cfg.sync). */
    int (*flush)(mdm_store_t *s);
    /* True while a batch holds uncommitted changes. */
    bool (*pending)(mdm_store_t *s);

    int (*get)(mdm_txn_t *txn, int table, mdm_val_t key, mdm_val_t *val);
    int (*put)(mdm_txn_t *txn, int table, mdm_val_t key, mdm_val_t val, unsigned flags);
    /* MDM_ENOTFOUND when the key is absent. */
    int (*del)(mdm_txn_t *txn, int table, mdm_val_t key);

    int (*cursor_open)(mdm_txn_t *txn, int table, mdm_cursor_t **out);
    /* Positions at the first key >= key (key.len 0: the first key). */
    int (*cursor_seek)(mdm_cursor_t *c, mdm_val_t key, mdm_val_t *k, mdm_val_t *v);
    /* Positions at the last key (for newest-first scans). */
    int (*cursor_last)(mdm_cursor_t *c, mdm_val_t *k, mdm_val_t *v);
    int (*cursor_next)(mdm_cursor_t *c, mdm_val_t *k, mdm_val_t *v);
    int (*cursor_prev)(mdm_cursor_t *c, mdm_val_t *k, mdm_val_t *v);
    /* Deletes the entry under the cursor (write transactions only). */
    int (*cursor_del)(mdm_cursor_t *c);
    void (*cursor_close)(mdm_cursor_t *c);

    int (*count)(mdm_txn_t *txn, int table, uint64_t *n);
    int (*stats)(mdm_store_t *s, mdm_store_stats_t *out);
    /* A consistent, compacted copy into the directory path (online). */
    int (*backup)(mdm_store_t *s, const char *path, mdm_err_t *err);
} mdm_store_ops_t;

/* Every store object starts with its ops, so the wrappers below can
 * dispatch without knowing the backend. */
struct mdm_store_base {
    const mdm_store_ops_t *ops;
};
struct mdm_txn_base {
    const mdm_store_ops_t *ops;
};

extern const mdm_store_ops_t mdm_store_lmdb;

/* The backend by name ("lmdb"), or NULL. */
const mdm_store_ops_t *mdm_store_backend(const char *name);

/* The on-disk name of a table ("meta", "devices", ...). */
const char *mdm_store_table_name(int table);

/* Opens the store and checks (or, when creating, writes) the schema
 * version. A newer version gives MDM_ESCHEMA with an explanation in err. */
int mdm_store_open(const mdm_store_ops_t *ops, const mdm_store_config_t *cfg, mdm_store_t **out,
                   mdm_err_t *err);
void mdm_store_close(mdm_store_t *s);

#define MDM__SOPS(s) (((struct mdm_store_base *)(s))->ops)
#define MDM__TOPS(t) (((struct mdm_txn_base *)(t))->ops)

static inline int mdm_store_update(mdm_store_t *s, mdm_txn_fn fn, void *arg)
{
    return MDM__SOPS(s)->update(s, fn, arg);
}
static inline int mdm_store_view(mdm_store_t *s, mdm_txn_fn fn, void *arg)
{
    return MDM__SOPS(s)->view(s, fn, arg);
}
static inline int mdm_store_flush(mdm_store_t *s)
{
    return MDM__SOPS(s)->flush(s);
}
static inline bool mdm_store_pending(mdm_store_t *s)
{
    return MDM__SOPS(s)->pending(s);
}
static inline int mdm_store_stats(mdm_store_t *s, mdm_store_stats_t *out)
{
    return MDM__SOPS(s)->stats(s, out);
}
static inline int mdm_store_backup(mdm_store_t *s, const char *path, mdm_err_t *err)
{
    return MDM__SOPS(s)->backup(s, path, err);
}
static inline int mdm_txn_get(mdm_txn_t *t, int table, mdm_val_t key, mdm_val_t *val)
{
    return MDM__TOPS(t)->get(t, table, key, val);
}
static inline int mdm_txn_put(mdm_txn_t *t, int table, mdm_val_t key, mdm_val_t val,
                              unsigned flags)
{
    return MDM__TOPS(t)->put(t, table, key, val, flags);
}
static inline int mdm_txn_del(mdm_txn_t *t, int table, mdm_val_t key)
{
    return MDM__TOPS(t)->del(t, table, key);
}
static inline int mdm_txn_count(mdm_txn_t *t, int table, uint64_t *n)
{
    return MDM__TOPS(t)->count(t, table, n);
}
static inline int mdm_cursor_open(mdm_txn_t *t, int table, mdm_cursor_t **out)
{
    return MDM__TOPS(t)->cursor_open(t, table, out);
}

/* Cursors also start with their ops. */
struct mdm_cursor_base {
    const mdm_store_ops_t *ops;
};
#define MDM__COPS(c) (((struct mdm_cursor_base *)(c))->ops)

static inline int mdm_cursor_seek(mdm_cursor_t *c, mdm_val_t key, mdm_val_t *k, mdm_val_t *v)
{
    return MDM__COPS(c)->cursor_seek(c, key, k, v);
}
static inline int mdm_cursor_last(mdm_cursor_t *c, mdm_val_t *k, mdm_val_t *v)
{
    return MDM__COPS(c)->cursor_last(c, k, v);
}
static inline int mdm_cursor_next(mdm_cursor_t *c, mdm_val_t *k, mdm_val_t *v)
{
    return MDM__COPS(c)->cursor_next(c, k, v);
}
static inline int mdm_cursor_prev(mdm_cursor_t *c, mdm_val_t *k, mdm_val_t *v)
{
    return MDM__COPS(c)->cursor_prev(c, k, v);
}
static inline int mdm_cursor_del(mdm_cursor_t *c)
{
    return MDM__COPS(c)->cursor_del(c);
}
static inline void mdm_cursor_close(mdm_cursor_t *c)
{
    if (c)
        MDM__COPS(c)->cursor_close(c);
}

/* Helpers built on the interface (store/store.c). */

/* Copies the value of key into a new allocation (mdm_free). */
int mdm_txn_get_copy(mdm_txn_t *t, int table, mdm_val_t key, void **out, size_t *len);

/* meta values that are unsigned 64-bit counters (big-endian on disk). */
int mdm_meta_get_u64(mdm_txn_t *t, const char *name, uint64_t *out);
int mdm_meta_put_u64(mdm_txn_t *t, const char *name, uint64_t v);

/* True when k starts with prefix. */
bool mdm_val_has_prefix(mdm_val_t k, mdm_val_t prefix);

/* Big-endian encoders for sortable keys. */
void mdm_be64_put(unsigned char out[8], uint64_t v);
uint64_t mdm_be64_get(const unsigned char in[8]);

#endif
