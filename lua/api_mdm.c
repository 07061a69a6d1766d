/* The `mdm` module that policies see: command builders, logging, the clock,
 * UUIDs, policy-owned persistent values (mdm.kv), password checks, profile
 * lookups, and mdm.test in `moonmdm policy test`. Every C function here is
 * bounded: strings and values have size limits, and nothing blocks beyond
 * one store read or one password hash. */
#include <crypt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mdm/cmdschema.h"
#include "sandbox_internal.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"
#include "util/plistjson.h"

#define LOG_MAX 2048          /* bytes of one mdm.log message */
#define KV_KEY_MAX 256        /* bytes of an mdm.kv key */
#define KV_VALUE_MAX (64u << 10) /* bytes of one mdm.kv value */
#define PROFILE_DATA_INLINE 64 /* data values of profile metadata up to this size are shown (hex) */

static mdm_policy_t *policy(lua_State *L)
{
    return mdm__policy_of(L);
}

/* ---- commands ---------------------------------------------------------------- */

bool mdm__is_command(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_checkstack(L, 2) || !lua_getmetatable(L, idx))
        return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_CMDMT);
    bool is = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return is;
}

int mdm__command_to_plist(lua_State *L, int idx, plist_t *out, char *err, size_t errlen)
{
    *out = NULL;
    idx = lua_absindex(L, idx);
    if (!mdm__is_command(L, idx)) {
        snprintf(err, errlen, "expected a command made by mdm.command, got %s",
                 lua_type(L, idx) == LUA_TTABLE ? "a plain table" : luaL_typename(L, idx));
        return MDM_EINVAL;
    }
    const char *rt = mdm__raw_string_member(L, idx, "RequestType");
    if (rt == NULL) {
        snprintf(err, errlen, "command has no RequestType");
        return MDM_EINVAL;
    }
    /* A copy: the string lives only as long as the table holds it. */
    char rtype[128];
    if (strlen(rt) >= sizeof(rtype)) {
        snprintf(err, errlen, "RequestType is too long");
        return MDM_EINVAL;
    }
    memcpy(rtype, rt, strlen(rt) + 1);
    return mdm__lua_to_command(L, idx, rtype, out, err, errlen);
}

/* mdm.command.<RequestType>{...}: checks the keys now (so that the error
 * names the line that built the command) and returns a command object. */
static int command_build(lua_State *L)
{
    const char *rt = lua_tostring(L, lua_upvalueindex(1));
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    char err[512];
    plist_t cmd = NULL;
    if (mdm__lua_to_command(L, 1, rt, &cmd, err, sizeof(err)) != 0)
        return luaL_error(L, "%s", err);
    plist_free(cmd);
    mdm__push_unwrapped(L, 1);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, 3);
    }
    lua_pushstring(L, rt);
    lua_setfield(L, 3, "RequestType");
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_CMDMT);
    lua_setmetatable(L, 3);
    return 1;
}

/* __index of mdm.command: makes (and caches) the builder of a RequestType. */
static int command_index(lua_State *L)
{
    const char *rt = luaL_checkstring(L, 2);
    if (mdm_cmdschema_find(rt) == NULL) {
        const char *s = mdm_cmdschema_suggest(rt);
        if (s != NULL)
            return luaL_error(L, "mdm.command: unknown command \"%s\" (did you mean \"%s\"?)",
                              rt, s);
        return luaL_error(L, "mdm.command: unknown command \"%s\"", rt);
    }
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, command_build, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* ---- logging, time, ids -------------------------------------------------------- */

static int level_of(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    int level = mdm_log_level_parse(name);
    if (level < 0)
        luaL_error(L, "mdm.log: unknown level \"%s\" (debug, info, warn or error)", name);
    return level;
}

/* Writes the message made of the arguments from `first` on. */
static int log_args(lua_State *L, int level, int first)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = first; i <= n; i++) {
        if (i > first)
            luaL_addchar(&b, ' ');
        size_t len = 0;
        luaL_tolstring(L, i, &len);
        luaL_addvalue(&b);
        if (luaL_bufflen(&b) > LOG_MAX)
            break;
    }
    luaL_pushresult(&b);
    size_t len = 0;
    const char *msg = lua_tolstring(L, -1, &len);
    if (len > LOG_MAX)
        len = LOG_MAX;
    char where[128] = "-";
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.currentline);
    mdm_policy_t *p = policy(L);
    mdm__call_t *c = p->call;
    const char *hook = c && c->hook >= 0 ? mdm_policy_hook_name(c->hook) : "-";
    char q[LOG_MAX * 2 + 8], wq[300];
    mdm_log(level, c ? c->reqid : NULL, "policy.log", "hook=%s where=%s msg=%s", hook,
            mdm_logq(wq, sizeof(wq), where), mdm_logqn(q, sizeof(q), msg, len));
    if (c != NULL && c->logs != NULL) {
        /* JSON strings must be UTF-8: when the message is not, its
         * non-ASCII bytes become '?'. */
        json_t *s = json_stringn(msg, len);
        if (s == NULL) {
            char *clean = mdm_memdup(msg, len);
            for (size_t i = 0; i < len; i++)
                if ((unsigned char)clean[i] >= 0x80 || clean[i] == '\0')
                    clean[i] = '?';
            s = json_stringn(clean, len);
            mdm_free(clean);
        }
        json_t *o = json_object();
        json_object_set_new(o, "level", json_string(names[level]));
        json_object_set_new(o, "where", json_string(where));
        json_object_set_new(o, "message", s ? s : json_string(""));
        json_array_append_new(c->logs, o);
    }
    return 0;
}

static int mdm_log_fn(lua_State *L)
{
    int level = level_of(L, 1);
    return log_args(L, level, 2);
}

static int print_fn(lua_State *L)
{
    return log_args(L, MDM_LOG_INFO, 1);
}

double mdm__policy_now(mdm_policy_t *p)
{
    if (p->frozen_now > 0)
        return p->frozen_now;
    return (double)mdm_now_ms() / 1000.0;
}

static int now_fn(lua_State *L)
{
    lua_pushnumber(L, mdm__policy_now(policy(L)));
    return 1;
}

static lua_Integer policy_now_seconds(lua_State *L)
{
    return (lua_Integer)floor(mdm__policy_now(policy(L)));
}

/* Calls the wrapped library function (upvalue 1) with the arguments, in
 * this frame, so that its errors name the function and the caller's line. */
static int call_wrapped(lua_State *L)
{
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* os.time() follows mdm.now() (so that tests can freeze it); os.time(t)
 * converts as usual. */
static int os_time_fn(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_pushinteger(L, policy_now_seconds(L));
        return 1;
    }
    return call_wrapped(L);
}

/* os.date(format) formats mdm.now() too; os.date(format, t) as usual. */
static int os_date_fn(lua_State *L)
{
    /* Each conversion is a call of strftime: 128 instructions a byte. */
    if (lua_type(L, 1) == LUA_TSTRING)
        mdm__sandbox_charge(L, 128 * (uint64_t)lua_rawlen(L, 1));
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_pushinteger(L, policy_now_seconds(L));
    }
    return call_wrapped(L);
}

static int uuid_fn(lua_State *L)
{
    char u[37];
    mdm_uuid(u);
    lua_pushstring(L, u);
    return 1;
}

/* ---- mdm.kv ------------------------------------------------------------------ */

/* "<namespace>\0<key>" */
static size_t kv_store_key(mdm_policy_t *p, const char *key, size_t klen, char *out)
{
    size_t nl = strlen(p->name);
    memcpy(out, p->name, nl);
    out[nl] = '\0';
    memcpy(out + nl + 1, key, klen);
    return nl + 1 + klen;
}

static const char *kv_key(lua_State *L, size_t *len)
{
    const char *k = luaL_checklstring(L, 1, len);
    if (*len == 0 || *len > KV_KEY_MAX)
        luaL_error(L, "mdm.kv: keys are 1 to %d bytes (got %d)", KV_KEY_MAX, (int)*len);
    return k;
}

struct kv_read {
    mdm_policy_t *p;
    const char *key;
    size_t klen;
    void *val;
    size_t vlen;
    bool found;
};

static int kv_read_txn(mdm_txn_t *txn, void *arg)
{
    struct kv_read *r = arg;
    char k[MDM_STORE_MAX_KEY];
    size_t kl = kv_store_key(r->p, r->key, r->klen, k);
    int rc = mdm_txn_get_copy(txn, MDM_T_POLICY_KV, MDM_VAL(k, kl), &r->val, &r->vlen);
    if (rc == 0)
        r->found = true;
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Pushes the decoded value of an encoded kv entry (bytes on top). */
static void kv_decode_top(lua_State *L)
{
    size_t len = 0;
    const char *bytes = lua_tolstring(L, -1, &len);
    plist_t v = NULL;
    mdm_err_t e = {0};
    if (mdm_plist_parse(bytes, len, MDM__MAX_DEPTH + 1, &v, &e) != 0) {
        lua_pop(L, 1);
        luaL_error(L, "mdm.kv: stored value is damaged: %s", e.msg);
    }
    lua_pop(L, 1);
    mdm__push_plist_owned(L, v, false);
}

static int kv_get(lua_State *L)
{
    mdm_policy_t *p = policy(L);
    mdm__call_t *c = p->call;
    size_t klen = 0;
    const char *key = kv_key(L, &klen);
    if (c == NULL || c->kv == MDM__KV_NONE)
        return luaL_error(L, "mdm.kv is not available here (only in hooks)");
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING);
    if (lua_istable(L, -1)) {
        lua_pushvalue(L, 1);
        int t = lua_rawget(L, -2);
        if (t == LUA_TBOOLEAN) {
            lua_pushnil(L);
            return 1;
        }
        if (t == LUA_TSTRING) {
            kv_decode_top(L);
            return 1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (c->kv == MDM__KV_MEMORY) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVMEM);
        lua_pushvalue(L, 1);
        if (lua_rawget(L, -2) != LUA_TSTRING) {
            lua_pushnil(L);
            return 1;
        }
        kv_decode_top(L);
        return 1;
    }
    struct kv_read r = {.p = p, .key = key, .klen = klen};
    int rc;
    if (c->txn != NULL)
        rc = kv_read_txn(c->txn, &r);
    else if (p->store != NULL)
        rc = mdm_store_view(p->store, kv_read_txn, &r);
    else
        rc = 0;
    if (rc != 0) {
        mdm_free(r.val);
        return luaL_error(L, "mdm.kv.get: store error: %s", mdm_strerror(rc));
    }
    if (!r.found) {
        lua_pushnil(L);
        return 1;
    }
    /* Lua owns the copy from here on, so that a raise cannot leak it. */
    lua_pushlstring(L, r.val, r.vlen);
    mdm_free(r.val);
    kv_decode_top(L);
    return 1;
}

/* Records a write (bytes on top, or false for a delete) for key at 1. */
static int kv_write(lua_State *L, const char *what)
{
    mdm_policy_t *p = policy(L);
    mdm__call_t *c = p->call;
    int vidx = lua_gettop(L);
    if (c == NULL || c->kv == MDM__KV_NONE)
        return luaL_error(L, "mdm.kv is not available here (only in hooks)");
    if (c->kv == MDM__KV_READONLY)
        return luaL_error(L, "mdm.kv.%s: mdm.kv is read-only here (the caller has no transaction)",
                          what);
    c->kv_changes++;
    if (c->kv == MDM__KV_VIRTUAL && c->kv_writes != NULL) {
        size_t klen = 0;
        const char *k = lua_tolstring(L, 1, &klen);
        json_t *o = json_object();
        json_object_set_new(o, "op", json_string(what));
        json_t *ks = json_stringn(k, klen);
        json_object_set_new(o, "key", ks ? ks : json_string("(not UTF-8)"));
        if (lua_type(L, vidx) == LUA_TSTRING) {
            size_t len = 0;
            const char *bytes = lua_tolstring(L, vidx, &len);
            plist_t v = NULL;
            if (mdm_plist_parse(bytes, len, MDM__MAX_DEPTH + 1, &v, NULL) == 0) {
                json_t *j = mdm_plist_to_json(v);
                json_object_set_new(o, "value", j ? j : json_null());
                plist_free(v);
            }
        }
        json_array_append_new(c->kv_writes, o);
    }
    if (c->kv == MDM__KV_MEMORY && c->kv_direct) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVMEM);
        lua_pushvalue(L, 1);
        if (lua_type(L, vidx) == LUA_TSTRING)
            lua_pushvalue(L, vidx);
        else
            lua_pushnil(L);
        lua_rawset(L, -3);
        return 0;
    }
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING);
    }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, vidx);
    lua_rawset(L, -3);
    return 0;
}

static int kv_put(lua_State *L)
{
    size_t klen = 0;
    kv_key(L, &klen);
    if (lua_isnoneornil(L, 2))
        return luaL_error(L, "mdm.kv.put: no value (use mdm.kv.delete to remove a key)");
    lua_settop(L, 2);
    char err[300];
    plist_t v = NULL;
    if (mdm__lua_to_plist(L, 2, KV_VALUE_MAX, &v, err, sizeof(err)) != 0)
        return luaL_error(L, "mdm.kv.put: value %s", err);
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(v, &b);
    plist_free(v);
    if (b.len > KV_VALUE_MAX + 4096) {
        mdm_buf_free(&b);
        return luaL_error(L, "mdm.kv.put: value larger than %d bytes", (int)KV_VALUE_MAX);
    }
    /* Into Lua before anything can raise. */
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    mdm_buf_free(&b);
    return kv_write(L, "put");
}

static int kv_delete(lua_State *L)
{
    size_t klen = 0;
    kv_key(L, &klen);
    lua_settop(L, 1);
    lua_pushboolean(L, 0);
    return kv_write(L, "delete");
}

void mdm__kv_discard(lua_State *L)
{
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING);
}

void mdm__kv_commit(lua_State *L)
{
    mdm_policy_t *p = policy(L);
    mdm__call_t *c = p->call;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING) != LUA_TTABLE || c == NULL ||
        c->kv == MDM__KV_VIRTUAL) {
        lua_pop(L, 1);
        mdm__kv_discard(L);
        return;
    }
    int pending = lua_gettop(L);
    if (c->kv == MDM__KV_MEMORY)
        lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVMEM);
    int mem = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, pending)) {
        size_t klen = 0, vlen = 0;
        const char *key = lua_tolstring(L, -2, &klen);
        if (c->kv == MDM__KV_MEMORY) {
            lua_pushvalue(L, -2);
            if (lua_type(L, -2) == LUA_TSTRING)
                lua_pushvalue(L, -2);
            else
                lua_pushnil(L);
            lua_rawset(L, mem);
        } else if (c->txn != NULL) {
            char k[MDM_STORE_MAX_KEY];
            size_t kl = kv_store_key(p, key, klen, k);
            int rc;
            if (lua_type(L, -1) == LUA_TSTRING) {
                const char *v = lua_tolstring(L, -1, &vlen);
                rc = mdm_txn_put(c->txn, MDM_T_POLICY_KV, MDM_VAL(k, kl), MDM_VAL(v, vlen), 0);
            } else {
                rc = mdm_txn_del(c->txn, MDM_T_POLICY_KV, MDM_VAL(k, kl));
                if (rc == MDM_ENOTFOUND)
                    rc = 0;
            }
            if (rc != 0) {
                if (c->store_rc == 0)
                    c->store_rc = rc;
                luaL_error(L, "mdm.kv: cannot write to the store: %s", mdm_strerror(rc));
            }
        }
        lua_pop(L, 1);
    }
    lua_settop(L, pending - 1);
    mdm__kv_discard(L);
}

/* ---- mdm.password -------------------------------------------------------------- */

/* verify's answer when it needs a hash it does not know yet: the server
 * hashes off the loop and runs the hook again (password.c). */
static int password_defer(lua_State *L, mdm_policy_pwcheck_t *pw, const char *plain,
                          const char *hash)
{
    int known = mdm__pwcheck_lookup(pw, plain, hash);
    if (known < 0)
        return mdm__sandbox_stop(L, mdm__pwcheck_defer(pw, plain, hash) == 0
                                        ? MDM__KILL_DEFER
                                        : MDM__KILL_PASSWORDS);
    lua_pushboolean(L, known);
    return 1;
}

/* mdm.password.verify(plain, hash) -> true | false [, why] */
static int password_verify(lua_State *L)
{
    size_t pl = 0, hl = 0;
    const char *plain = luaL_checklstring(L, 1, &pl);
    const char *hash = luaL_checklstring(L, 2, &hl);
    const mdm__call_t *call = policy(L)->call;
    char why[160];
    if (!mdm__password_usable(plain, pl, hash, hl, why, sizeof(why))) {
        mdm_log(MDM_LOG_WARN, call ? call->reqid : NULL, "policy.password_refused",
                "reason=\"%s\"", why);
        lua_pushboolean(L, 0);
        lua_pushstring(L, why);
        return 2;
    }
    if (call != NULL && call->pwcheck != NULL)
        return password_defer(L, call->pwcheck, plain, hash);
    lua_pushboolean(L, mdm__password_matches(plain, hash));
    return 1;
}

/* mdm.password.hash(plain [, "yescrypt" | "bcrypt" | "sha512"]) -> hash */
static int password_hash(lua_State *L)
{
    static const char *const methods[] = {"yescrypt", "bcrypt", "sha512", NULL};
    static const char *const prefixes[] = {"$y$", "$2b$", "$6$"};
    size_t pl = 0;
    const char *plain = luaL_checklstring(L, 1, &pl);
    int m = luaL_checkoption(L, 2, "yescrypt", methods);
    if (pl > MDM__PASSWORD_MAX || strlen(plain) != pl)
        return luaL_error(L, "mdm.password.hash: password too long or not text");
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    if (crypt_gensalt_rn(prefixes[m], 0, NULL, 0, salt, (int)sizeof(salt)) == NULL)
        return luaL_error(L, "mdm.password.hash: cannot make a salt for %s", methods[m]);
    struct crypt_data *cd = mdm_calloc(1, sizeof(*cd));
    const char *out = crypt_rn(plain, salt, cd, (int)sizeof(*cd));
    char hash[MDM__HASH_MAX + 1] = "";
    bool ok = out != NULL && out[0] != '*' && strlen(out) <= MDM__HASH_MAX;
    if (ok)
        snprintf(hash, sizeof(hash), "%s", out);
    mdm_free(cd);
    if (!ok)
        return luaL_error(L, "mdm.password.hash: hashing failed");
    lua_pushstring(L, hash);
    return 1;
}

/* ---- mdm.profile ------------------------------------------------------------ */

struct profile_read {
    const char *id;
    void *val;
    size_t len;
};

static int profile_read_txn(mdm_txn_t *txn, void *arg)
{
    struct profile_read *r = arg;
    int rc = mdm_txn_get_copy(txn, MDM_T_PROFILES, MDM_VAL_STR(r->id), &r->val, &r->len);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* The metadata of a stored profile: small values as they are, short data
 * as hex, the profile's bytes left out. */
static plist_t profile_meta(plist_t rec)
{
    plist_t out = plist_new_dict();
    plist_dict_iter it = NULL;
    plist_dict_new_iter(rec, &it);
    for (;;) {
        char *key = NULL;
        plist_t v = NULL;
        plist_dict_next_item(rec, it, &key, &v);
        if (key == NULL)
            break;
        if (plist_get_node_type(v) == PLIST_DATA) {
            uint64_t len = 0;
            const char *d = plist_get_data_ptr(v, &len);
            if (len <= PROFILE_DATA_INLINE) {
                char hex[2 * PROFILE_DATA_INLINE + 1];
                mdm_hex_encode(hex, d, (size_t)len);
                plist_dict_set_item(out, key, plist_new_string(hex));
            }
        } else {
            plist_dict_set_item(out, key, plist_copy(v));
        }
        free(key);
    }
    free(it);
    return out;
}

static int profile_fn(lua_State *L)
{
    mdm_policy_t *p = policy(L);
    size_t idlen = 0;
    const char *id = luaL_checklstring(L, 1, &idlen);
    if (idlen == 0 || idlen > MDM_STORE_MAX_KEY || strlen(id) != idlen) {
        lua_pushnil(L);
        return 1;
    }
    if (p->mode == MDM__MODE_TEST) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_PROFILES);
        lua_pushvalue(L, 1);
        lua_rawget(L, -2);
        return 1;
    }
    mdm__call_t *c = p->call;
    struct profile_read r = {.id = id};
    int rc = 0;
    if (c != NULL && c->txn != NULL)
        rc = profile_read_txn(c->txn, &r);
    else if (p->store != NULL)
        rc = mdm_store_view(p->store, profile_read_txn, &r);
    if (rc != 0) {
        mdm_free(r.val);
        return luaL_error(L, "mdm.profile: store error: %s", mdm_strerror(rc));
    }
    if (r.val == NULL) {
        lua_pushnil(L);
        return 1;
    }
    plist_t rec = NULL;
    rc = mdm_plist_parse(r.val, r.len, 0, &rec, NULL);
    mdm_free(r.val);
    if (rc != 0 || plist_get_node_type(rec) != PLIST_DICT) {
        plist_free(rec);
        return luaL_error(L, "mdm.profile: the record of \"%s\" is damaged", id);
    }
    plist_t meta = profile_meta(rec);
    plist_free(rec);
    mdm__push_plist_owned(L, meta, true);
    return 1;
}

/* ---- mdm.test (policy tests only) ---------------------------------------------- */

static int test_set_now(lua_State *L)
{
    double t = luaL_checknumber(L, 1);
    if (!(t > 0))
        return luaL_error(L, "mdm.test.set_now: time must be positive seconds");
    policy(L)->frozen_now = t;
    return 0;
}

static int test_readonly(lua_State *L)
{
    luaL_checkany(L, 1);
    mdm__push_readonly_copy(L, 1);
    return 1;
}

/* Reads a plist file relative to the tests' directory. */
static int test_read_plist(lua_State *L)
{
    mdm_policy_t *p = policy(L);
    const char *rel = luaL_checkstring(L, 1);
    if (rel[0] == '/' || strstr(rel, "..") != NULL)
        return luaL_error(L, "mdm.test.read_plist: \"%s\": use a path inside the tests' directory",
                          rel);
    char *path = mdm_sprintf("%s/%s", p->test_dir ? p->test_dir : ".", rel);
    FILE *f = fopen(path, "rb");
    mdm_free(path);
    if (f == NULL)
        return luaL_error(L, "mdm.test.read_plist: cannot open \"%s\"", rel);
    mdm_buf_t b = MDM_BUF_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len <= MDM_PLIST_MAX_BYTES)
        mdm_buf_append(&b, chunk, n);
    fclose(f);
    plist_t v = NULL;
    mdm_err_t e = {0};
    int rc = mdm_plist_parse(b.data ? b.data : "", b.len, 0, &v, &e);
    mdm_buf_free(&b);
    if (rc != 0)
        return luaL_error(L, "mdm.test.read_plist: \"%s\": %s", rel, e.msg);
    mdm__push_plist_owned(L, v, false);
    return 1;
}

static int test_set_profile(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_settop(L, 2);
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_PROFILES);
    lua_pushvalue(L, 1);
    if (lua_istable(L, 2)) {
        mdm__push_readonly_copy(L, 2);
    } else {
        luaL_argexpected(L, lua_isnil(L, 2), 2, "table or nil");
        lua_pushnil(L);
    }
    lua_rawset(L, -3);
    return 0;
}

/* A copy of the in-memory kv as key -> value. */
static int test_kv(lua_State *L)
{
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVMEM);
    int mem = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, mem)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        kv_decode_top(L);
        lua_rawset(L, out);
    }
    lua_settop(L, out);
    return 1;
}

/* The table init.lua returned (to call hooks directly, without the engine). */
static int test_policy(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_LOADED);
    lua_getfield(L, -1, "init");
    return 1;
}

/* ---- mdm.crypto: what token checks need ------------------------------------ */

#define CRYPTO_MAX_INPUT (1u << 20)

static const char *bounded_arg(lua_State *L, int i, size_t *n)
{
    const char *s = luaL_checklstring(L, i, n);
    if (*n > CRYPTO_MAX_INPUT)
        luaL_error(L, "argument %d is longer than 1 MiB", i);
    /* Hashing, comparing and coding run at about 2 ns a byte. */
    mdm__sandbox_charge(L, 2 * (uint64_t)*n);
    return s;
}

static void push_hex(lua_State *L, const unsigned char *p, size_t n)
{
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    mdm_hex_encode(hex, p, n);
    lua_pushlstring(L, hex, 2 * n);
}

/* mdm.crypto.hmac_sha256(key, data) -> lowercase hex */
static int crypto_hmac_sha256(lua_State *L)
{
    size_t kl, dl;
    const char *k = bounded_arg(L, 1, &kl), *d = bounded_arg(L, 2, &dl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    if (HMAC(EVP_sha256(), k, (int)kl, (const unsigned char *)d, dl, md, &ml) == NULL)
        return luaL_error(L, "HMAC failed");
    push_hex(L, md, ml);
    return 1;
}

/* mdm.crypto.sha256(data) -> lowercase hex */
static int crypto_sha256(lua_State *L)
{
    size_t dl;
    const char *d = bounded_arg(L, 1, &dl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    EVP_Digest(d, dl, md, &ml, EVP_sha256(), NULL);
    push_hex(L, md, ml);
    return 1;
}

/* mdm.crypto.equal(a, b): compares in time that does not depend on where
 * the strings differ. */
static int crypto_equal(lua_State *L)
{
    size_t al, bl;
    const char *a = bounded_arg(L, 1, &al), *b = bounded_arg(L, 2, &bl);
    lua_pushboolean(L, mdm_consttime_eq(a, al, b, bl));
    return 1;
}

/* mdm.crypto.base64_decode(s) -> bytes or nil */
static int crypto_b64decode(lua_State *L)
{
    size_t n;
    const char *s = bounded_arg(L, 1, &n);
    mdm_buf_t b = MDM_BUF_INIT;
    if (mdm_base64_decode(&b, s, n) != 0) {
        mdm_buf_free(&b);
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    mdm_buf_free(&b);
    return 1;
}

/* mdm.crypto.base64_encode(bytes) -> text */
static int crypto_b64encode(lua_State *L)
{
    size_t n;
    const char *s = bounded_arg(L, 1, &n);
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_base64_encode(&b, s, n);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    mdm_buf_free(&b);
    return 1;
}

/* ---- the module ------------------------------------------------------------- */

static void set_funcs(lua_State *L, const luaL_Reg *r)
{
    for (; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
}

int mdm__open_mdm(lua_State *L)
{
    mdm_policy_t *p = policy(L);
    static const luaL_Reg top[] = {
        {"log", mdm_log_fn}, {"now", now_fn}, {"uuid", uuid_fn}, {"profile", profile_fn},
        {NULL, NULL},
    };
    static const luaL_Reg kv[] = {
        {"get", kv_get}, {"put", kv_put}, {"delete", kv_delete}, {NULL, NULL},
    };
    static const luaL_Reg password[] = {
        {"verify", password_verify}, {"hash", password_hash}, {NULL, NULL},
    };
    static const luaL_Reg crypto[] = {
        {"hmac_sha256", crypto_hmac_sha256}, {"sha256", crypto_sha256},
        {"equal", crypto_equal},             {"base64_decode", crypto_b64decode},
        {"base64_encode", crypto_b64encode}, {NULL, NULL},
    };
    static const luaL_Reg test[] = {
        {"call", mdm__test_call},       {"set_now", test_set_now},
        {"readonly", test_readonly},    {"read_plist", test_read_plist},
        {"set_profile", test_set_profile}, {"kv", test_kv},
        {"policy", test_policy},        {NULL, NULL},
    };

    /* The metatable of command objects: protected, so that a policy can
     * neither read nor forge it. */
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "mdm.command");
    lua_setfield(L, -2, "__metatable");
    lua_pushliteral(L, "mdm.command");
    lua_setfield(L, -2, "__name");
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_CMDMT);

    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_KVMEM);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_PROFILES);

    lua_newtable(L); /* mdm */
    set_funcs(L, top);

    lua_newtable(L); /* mdm.command: builders made on first use */
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, command_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    mdm__make_readonly(L);
    lua_setfield(L, -2, "command");

    lua_newtable(L);
    set_funcs(L, kv);
    mdm__make_readonly(L);
    lua_setfield(L, -2, "kv");

    lua_newtable(L);
    set_funcs(L, password);
    mdm__make_readonly(L);
    lua_setfield(L, -2, "password");

    lua_newtable(L);
    set_funcs(L, crypto);
    mdm__make_readonly(L);
    lua_setfield(L, -2, "crypto");

    if (p->mode == MDM__MODE_TEST) {
        lua_newtable(L);
        set_funcs(L, test);
        mdm__make_readonly(L);
        lua_setfield(L, -2, "test");
    }

    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_MDM);
    mdm__make_readonly(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "mdm");
    /* require("mdm") gives the same table. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_LOADED);
    if (lua_istable(L, -1)) {
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "mdm");
    }
    lua_pop(L, 2);

    lua_pushcfunction(L, print_fn);
    lua_setglobal(L, "print");
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "time");
    lua_pushcclosure(L, os_time_fn, 1);
    lua_setfield(L, -2, "time");
    lua_getfield(L, -1, "date");
    lua_pushcclosure(L, os_date_fn, 1);
    lua_setfield(L, -2, "date");
    lua_pop(L, 1);
    return 0;
}
