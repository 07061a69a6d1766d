#include "store/store.h"

#include <string.h>

#include "util/alloc.h"
#include "util/log.h"

static const char *const table_names[MDM_T__COUNT] = {
    [MDM_T_META] = "meta",
    [MDM_T_DEVICES] = "devices",
    [MDM_T_ENROLLMENTS] = "enrollments",
    [MDM_T_CERTAUTH] = "certauth",
    [MDM_T_CERTS] = "certs",
    [MDM_T_CHALLENGES] = "challenges",
    [MDM_T_COMMANDS] = "commands",
    [MDM_T_QUEUE] = "queue",
    [MDM_T_RESULTS] = "results",
    [MDM_T_PROFILES] = "profiles",
    [MDM_T_INSTALLED] = "installed",
    [MDM_T_POLICY_KV] = "policy_kv",
    [MDM_T_DECISIONS] = "decisions",
    [MDM_T_APIKEYS] = "apikeys",
    [MDM_T_INDEX] = "index",
};

const char *mdm_store_table_name(int table)
{
    if (table < 0 || table >= MDM_T__COUNT)
        return "?";
    return table_names[table];
}

const mdm_store_ops_t *mdm_store_backend(const char *name)
{
    if (name == NULL || strcmp(name, "lmdb") == 0)
        return &mdm_store_lmdb;
    return NULL;
}

void mdm_be64_put(unsigned char out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

uint64_t mdm_be64_get(const unsigned char in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | in[i];
    return v;
}

bool mdm_val_has_prefix(mdm_val_t k, mdm_val_t prefix)
{
    return k.len >= prefix.len && memcmp(k.data, prefix.data, prefix.len) == 0;
}

int mdm_txn_get_copy(mdm_txn_t *t, int table, mdm_val_t key, void **out, size_t *len)
{
    mdm_val_t v;
    int rc = mdm_txn_get(t, table, key, &v);
    if (rc != 0)
        return rc;
    char *p = mdm_malloc(v.len + 1);
    memcpy(p, v.data, v.len);
    p[v.len] = '\0';
    *out = p;
    if (len)
        *len = v.len;
    return 0;
}

int mdm_meta_get_u64(mdm_txn_t *t, const char *name, uint64_t *out)
{
    mdm_val_t v;
    int rc = mdm_txn_get(t, MDM_T_META, MDM_VAL_STR(name), &v);
    if (rc != 0)
        return rc;
    if (v.len != 8)
        return MDM_EPARSE;
    *out = mdm_be64_get(v.data);
    return 0;
}

int mdm_meta_put_u64(mdm_txn_t *t, const char *name, uint64_t v)
{
    unsigned char b[8];
    mdm_be64_put(b, v);
    return mdm_txn_put(t, MDM_T_META, MDM_VAL_STR(name), MDM_VAL(b, 8), 0);
}

struct schema_check {
    bool create;
    bool writable;
    uint64_t found;
    mdm_err_t *err;
};

static int schema_check_fn(mdm_txn_t *t, void *arg)
{
    struct schema_check *sc = arg;
    uint64_t v = 0;
    int rc = mdm_meta_get_u64(t, "schema_version", &v);
    if (rc == MDM_ENOTFOUND) {
        if (!sc->create)
            return mdm_err_set(sc->err, MDM_ESCHEMA,
                               "the store has no schema version: it was not created by moonmdm "
                               "(run `moonmdm init` to create a data directory)");
        sc->found = MDM_STORE_SCHEMA_VERSION;
        return mdm_meta_put_u64(t, "schema_version", MDM_STORE_SCHEMA_VERSION);
    }
    if (rc != 0)
        return mdm_err_set(sc->err, rc, "cannot read the schema version: %s", mdm_strerror(rc));
    sc->found = v;
    if (v > MDM_STORE_SCHEMA_VERSION)
        return mdm_err_set(sc->err, MDM_ESCHEMA,
                           "the store has schema version %llu, newer than the version %d this "
                           "moonmdm %s understands; run a moonmdm release that supports it, or "
                           "restore a backup made by this release",
                           (unsigned long long)v, MDM_STORE_SCHEMA_VERSION, MOONMDM_VERSION);
    if (v < MDM_STORE_SCHEMA_VERSION && sc->writable) {
        /* Every older layout is read as it is (see store.h). */
        rc = mdm_meta_put_u64(t, "schema_version", MDM_STORE_SCHEMA_VERSION);
        if (rc != 0)
            return mdm_err_set(sc->err, rc, "cannot record the schema upgrade: %s",
                               mdm_strerror(rc));
        mdm_log(MDM_LOG_INFO, NULL, "store.schema_upgraded", "from=%llu to=%d",
                (unsigned long long)v, MDM_STORE_SCHEMA_VERSION);
        sc->found = MDM_STORE_SCHEMA_VERSION;
    }
    return 0;
}

static int schema_read_fn(mdm_txn_t *t, void *arg)
{
    return schema_check_fn(t, arg);
}

int mdm_store_open(const mdm_store_ops_t *ops, const mdm_store_config_t *cfg, mdm_store_t **out,
                   mdm_err_t *err)
{
    mdm_store_t *s = NULL;
    int rc = ops->open(&s, cfg, err);
    if (rc != 0)
        return rc;
    struct schema_check sc = {.create = (cfg->flags & MDM_STORE_CREATE) != 0, .err = err};
    if (cfg->flags & MDM_STORE_RDONLY) {
        sc.create = false;
        rc = ops->view(s, schema_read_fn, &sc);
    } else {
        sc.writable = true;
        rc = ops->update(s, schema_check_fn, &sc);
        if (rc == 0)
            rc = ops->flush(s);
    }
    if (rc != 0) {
        if (err && err->code == 0)
            mdm_err_set(err, rc, "store: %s", mdm_strerror(rc));
        ops->close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void mdm_store_close(mdm_store_t *s)
{
    if (s)
        MDM__SOPS(s)->close(s);
}
