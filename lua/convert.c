/* Conversions between Lua values and plists / JSON, and read-only proxies.
 *
 * Lua -> plist/JSON never raises a Lua error: the converters only read
 * tables with raw, non-allocating calls (lua_next, lua_rawgeti, strings
 * only when they already are strings), so that the C objects they build
 * cannot leak through a longjmp. plist -> Lua runs in a protected call that
 * frees libplist's iterators and keys when Lua raises (out of memory). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdm/cmdschema.h"
#include "sandbox_internal.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/misc.h"
#include "util/plistjson.h"

/* Only their addresses are used: registry keys of the metatable that all
 * read-only proxies share and of the weak-keyed table proxy -> real table. */
static const char ro_mark = 0;
static const char ro_targets = 0;

/* ---- read-only proxies ------------------------------------------------------ */

/* A proxy is an empty table with the shared metatable; its real table is
 * found in the registry's weak-keyed table, so that making one costs two
 * small allocations instead of a metatable of its own per proxy. Reads go
 * through __index (a C function; the real table's own __index still
 * applies), writes fail in __newindex; __len and
 * __pairs answer for the real table. */
bool mdm__is_readonly(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_checkstack(L, 2) || !lua_getmetatable(L, idx))
        return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ro_mark);
    bool ro = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return ro;
}

/* The table behind the proxy at idx, or the value itself, as it is. */
static void push_real(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (mdm__is_readonly(L, idx)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &ro_targets);
        lua_pushvalue(L, idx);
        lua_rawget(L, -2);
        lua_remove(L, -2);
    } else {
        lua_pushvalue(L, idx);
    }
}

const char mdm__fill_mark = 0;

void mdm__push_unwrapped(lua_State *L, int idx)
{
    push_real(L, idx);
    /* A table that makes its fields on first read (the device view) makes
     * them all before it is walked. */
    if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1)) {
        bool ours = lua_rawgetp(L, -1, &mdm__fill_mark) == LUA_TBOOLEAN;
        lua_pop(L, 1);
        if (ours && lua_getfield(L, -1, "__fill") == LUA_TFUNCTION) {
            lua_pushvalue(L, -3);
            lua_call(L, 1, 0);
            lua_pop(L, 1); /* the metatable */
        } else {
            lua_pop(L, ours ? 2 : 1);
        }
    }
}

static int ro_index(lua_State *L)
{
    push_real(L, 1);
    if (lua_type(L, -1) != LUA_TTABLE)
        return 0;
    lua_pushvalue(L, 2);
    lua_gettable(L, -2); /* the real table may have an __index of its own */
    return 1;
}

static int ro_newindex(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return luaL_error(L, "attempt to change read-only table (field '%s')", lua_tostring(L, 2));
    return luaL_error(L, "attempt to change read-only table");
}

static int ro_len(lua_State *L)
{
    push_real(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
    return 1;
}

/* next() for a proxy: walks the real table without handing it out (the
 * state of the loop is the proxy itself). */
static int ro_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    mdm__push_unwrapped(L, 1);
    if (lua_type(L, -1) != LUA_TTABLE)
        return 0;
    lua_pushvalue(L, 2);
    if (lua_next(L, -2))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int ro_pairs(lua_State *L)
{
    lua_pushcfunction(L, ro_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Creates the shared metatable and the target table on first use. */
static void ro_setup(lua_State *L)
{
    lua_createtable(L, 0, 5);
    lua_pushcfunction(L, ro_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ro_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, ro_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, ro_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushliteral(L, "read-only");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ro_mark);
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ro_targets);
}

void mdm__make_readonly(lua_State *L)
{
    luaL_checkstack(L, 4, NULL);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ro_targets) != LUA_TTABLE) {
        lua_pop(L, 1);
        ro_setup(L);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &ro_targets);
    }
    lua_createtable(L, 0, 0);  /* targets, proxy */
    lua_pushvalue(L, -1);
    lua_pushvalue(L, -4);
    lua_rawset(L, -4);         /* targets[proxy] = real */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ro_mark);
    lua_setmetatable(L, -2);
    lua_replace(L, -3);        /* proxy where real was */
    lua_pop(L, 1);
}

static void readonly_copy(lua_State *L, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE || mdm__is_readonly(L, idx)) {
        lua_pushvalue(L, idx);
        return;
    }
    if (depth >= MDM__MAX_DEPTH)
        luaL_error(L, "table nested deeper than %d levels (a cycle?)", MDM__MAX_DEPTH);
    luaL_checkstack(L, 6, NULL);
    lua_newtable(L);
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        readonly_copy(L, -2, depth + 1);
        lua_rawset(L, t);
        lua_pop(L, 1);
    }
    mdm__make_readonly(L);
}

void mdm__push_readonly_copy(lua_State *L, int idx)
{
    readonly_copy(L, idx, 0);
}

/* ---- plist -> Lua ------------------------------------------------------------ */

/* What a protected conversion holds from libplist, freed if Lua raises. */
typedef struct p2l {
    plist_t root;
    bool readonly;
    bool owned;
    plist_dict_iter iters[MDM__MAX_DEPTH + 2];
    char *keys[MDM__MAX_DEPTH + 2];
} p2l_t;

static void p2l_value(lua_State *L, p2l_t *c, plist_t p, int depth)
{
    luaL_checkstack(L, 4, NULL);
    switch (plist_get_node_type(p)) {
    case PLIST_DICT: {
        if (depth >= MDM__MAX_DEPTH)
            luaL_error(L, "property list nested deeper than %d levels", MDM__MAX_DEPTH);
        lua_createtable(L, 0, (int)plist_dict_get_size(p));
        plist_dict_new_iter(p, &c->iters[depth]);
        for (;;) {
            plist_t v = NULL;
            plist_dict_next_item(p, c->iters[depth], &c->keys[depth], &v);
            if (c->keys[depth] == NULL)
                break;
            lua_pushstring(L, c->keys[depth]);
            free(c->keys[depth]);
            c->keys[depth] = NULL;
            p2l_value(L, c, v, depth + 1);
            lua_rawset(L, -3);
        }
        free(c->iters[depth]);
        c->iters[depth] = NULL;
        if (c->readonly)
            mdm__make_readonly(L);
        return;
    }
    case PLIST_ARRAY: {
        if (depth >= MDM__MAX_DEPTH)
            luaL_error(L, "property list nested deeper than %d levels", MDM__MAX_DEPTH);
        uint32_t n = plist_array_get_size(p);
        lua_createtable(L, (int)n, 0);
        for (uint32_t i = 0; i < n; i++) {
            p2l_value(L, c, plist_array_get_item(p, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        if (c->readonly)
            mdm__make_readonly(L);
        return;
    }
    case PLIST_STRING: {
        uint64_t len = 0;
        const char *s = plist_get_string_ptr(p, &len);
        lua_pushlstring(L, s ? s : "", s ? (size_t)len : 0);
        return;
    }
    case PLIST_DATA: {
        uint64_t len = 0;
        const char *d = plist_get_data_ptr(p, &len);
        lua_pushlstring(L, d ? d : "", d ? (size_t)len : 0);
        return;
    }
    case PLIST_UINT: {
        uint64_t v = 0;
        plist_get_uint_val(p, &v);
        lua_pushinteger(L, (lua_Integer)(int64_t)v);
        return;
    }
    case PLIST_REAL: {
        double v = 0;
        plist_get_real_val(p, &v);
        lua_pushnumber(L, v);
        return;
    }
    case PLIST_BOOLEAN: {
        uint8_t v = 0;
        plist_get_bool_val(p, &v);
        lua_pushboolean(L, v);
        return;
    }
    case PLIST_DATE:
        lua_pushinteger(L, (lua_Integer)mdm_plist_date_unix(p));
        return;
    default:
        lua_pushnil(L);
        return;
    }
}

static int p2l_protected(lua_State *L)
{
    p2l_t *c = lua_touserdata(L, 1);
    p2l_value(L, c, c->root, 0);
    return 1;
}

static void push_plist(lua_State *L, plist_t p, bool readonly, bool owned)
{
    if (p == NULL) {
        lua_pushnil(L);
        return;
    }
    p2l_t *c = mdm_calloc(1, sizeof(*c));
    c->root = p;
    c->readonly = readonly;
    c->owned = owned;
    lua_pushcfunction(L, p2l_protected);
    lua_pushlightuserdata(L, c);
    int status = lua_pcall(L, 1, 1, 0);
    for (size_t i = 0; i < MDM__MAX_DEPTH + 2; i++) {
        free(c->iters[i]);
        free(c->keys[i]);
    }
    if (owned)
        plist_free(p);
    mdm_free(c);
    if (status != LUA_OK)
        lua_error(L);
}

void mdm__push_plist(lua_State *L, plist_t p, bool readonly)
{
    push_plist(L, p, readonly, false);
}

void mdm__push_plist_owned(lua_State *L, plist_t p, bool readonly)
{
    push_plist(L, p, readonly, true);
}

/* ---- Lua -> plist / JSON ----------------------------------------------------- */

typedef struct l2x {
    lua_State *L;
    size_t bytes;
    size_t max_bytes;
    size_t values; /* made so far (a table met twice counts twice) */
    char *err;
    size_t errlen;
    char path[256];
    size_t pathlen;
} l2x_t;

static int l2x_err(l2x_t *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int l2x_err(l2x_t *c, int code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->pathlen > 0)
        snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
    else
        snprintf(c->err, c->errlen, "%s", msg);
    return code;
}

/* A table referenced from several places is converted once per reference:
 * ten levels of {x, x} are a thousand values, thirty a billion. Counting
 * every value made bounds the work (and the memory, which is outside the
 * Lua state's cap) whatever the table's shape. */
#define L2X_MAX_VALUES 200000

static int count_value(l2x_t *c)
{
    if (++c->values > L2X_MAX_VALUES)
        return l2x_err(c, MDM_ELIMIT, "more than %d values (a table used in several places "
                                      "counts each time)", L2X_MAX_VALUES);
    return 0;
}

static int unwrap_protected(lua_State *L)
{
    mdm__push_unwrapped(L, 1);
    return 1;
}

/* mdm__push_unwrapped for the converters: a __fill that raises (a view
 * read after its hook call, memory) is an error of the conversion, which
 * then frees what it made so far, instead of a jump past it. Pushes the
 * table, or nothing on error. */
static int push_unwrapped(lua_State *L, l2x_t *c, int idx)
{
    idx = lua_absindex(L, idx);
    /* A table without a metatable (what policies build) has no view
     * behind it and nothing that could raise: no protected call. */
    if (!lua_getmetatable(L, idx)) {
        mdm__push_unwrapped(L, idx);
        return 0;
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, unwrap_protected);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
        return 0;
    const char *m = lua_tostring(L, -1);
    int rc = MDM_EINVAL;
    if (c != NULL)
        rc = l2x_err(c, MDM_EINVAL, "%s", m != NULL ? m : "a table could not be read");
    lua_pop(L, 1);
    return rc;
}

static size_t path_key(l2x_t *c, const char *key, size_t len)
{
    size_t old = c->pathlen;
    int n = snprintf(c->path + old, sizeof(c->path) - old, "%s%.*s", old ? "." : "",
                     (int)(len > 64 ? 64 : len), key);
    if (n > 0)
        c->pathlen = old + (size_t)n < sizeof(c->path) ? old + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static size_t path_index(l2x_t *c, lua_Integer i)
{
    size_t old = c->pathlen;
    int n = snprintf(c->path + old, sizeof(c->path) - old, "[%lld]", (long long)i);
    if (n > 0)
        c->pathlen = old + (size_t)n < sizeof(c->path) ? old + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static void path_pop(l2x_t *c, size_t old)
{
    c->pathlen = old;
    c->path[old] = '\0';
}

static int count_bytes(l2x_t *c, size_t n)
{
    if (n > c->max_bytes - c->bytes)
        return l2x_err(c, MDM_ELIMIT, "larger than %zu bytes", c->max_bytes);
    c->bytes += n;
    return 0;
}

static bool utf8_text(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char ch = s[i];
        if (ch == 0)
            return false;
        if (ch < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((ch & 0xE0) == 0xC0) {
            len = 2;
            cp = ch & 0x1F;
        } else if ((ch & 0xF0) == 0xE0) {
            len = 3;
            cp = ch & 0x0F;
        } else if ((ch & 0xF8) == 0xF0) {
            len = 4;
            cp = ch & 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* The shape of a table: a list (keys 1..n), a map (string keys), or empty. */
enum { SHAPE_EMPTY, SHAPE_LIST, SHAPE_MAP };

static int table_shape(l2x_t *c, int t, int *shape, lua_Integer *n)
{
    lua_State *L = c->L;
    lua_Integer count = 0, max = 0;
    bool strings = false, ints = false;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int kt = lua_type(L, -2);
        if (kt == LUA_TSTRING) {
            strings = true;
        } else if (kt == LUA_TNUMBER && lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            ints = true;
            if (lua_tointeger(L, -2) > max)
                max = lua_tointeger(L, -2);
        } else {
            lua_pop(L, 2);
            return l2x_err(c, MDM_EINVAL, "table keys must be strings or 1..n (got a %s key)",
                           kt == LUA_TNUMBER ? "number" : lua_typename(L, kt));
        }
        count++;
        lua_pop(L, 1);
    }
    if (strings && ints)
        return l2x_err(c, MDM_EINVAL, "table mixes list items and named keys");
    if (ints && max != count)
        return l2x_err(c, MDM_EINVAL, "list has holes (keys must be 1..n)");
    *shape = count == 0 ? SHAPE_EMPTY : ints ? SHAPE_LIST : SHAPE_MAP;
    *n = count;
    return 0;
}

static int l2p(l2x_t *c, int idx, int depth, plist_t *out);

static int l2p_table(l2x_t *c, int t, int depth, plist_t *out)
{
    lua_State *L = c->L;
    int shape;
    lua_Integer n;
    int rc = table_shape(c, t, &shape, &n);
    if (rc != 0)
        return rc;
    if (shape == SHAPE_LIST) {
        plist_t arr = plist_new_array();
        for (lua_Integer i = 1; i <= n && rc == 0; i++) {
            lua_rawgeti(L, t, i);
            size_t mark = path_index(c, i);
            plist_t v = NULL;
            rc = l2p(c, lua_gettop(L), depth + 1, &v);
            path_pop(c, mark);
            lua_pop(L, 1);
            if (rc == 0)
                plist_array_append_item(arr, v);
        }
        if (rc != 0) {
            plist_free(arr);
            return rc;
        }
        *out = arr;
        return 0;
    }
    plist_t dict = plist_new_dict();
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, t)) {
        size_t klen = 0;
        const char *k = lua_tolstring(L, -2, &klen);
        size_t mark = path_key(c, k, klen);
        if (!utf8_text((const unsigned char *)k, klen))
            rc = l2x_err(c, MDM_EINVAL, "key is not UTF-8 text");
        if (rc == 0)
            rc = count_bytes(c, klen);
        plist_t v = NULL;
        if (rc == 0)
            rc = l2p(c, lua_gettop(L), depth + 1, &v);
        path_pop(c, mark);
        if (rc == 0)
            plist_dict_set_item(dict, k, v);
        lua_pop(L, 1);
    }
    if (rc != 0) {
        lua_pop(L, 1); /* the key lua_next left */
        plist_free(dict);
        return rc;
    }
    *out = dict;
    return 0;
}

static int l2p(l2x_t *c, int idx, int depth, plist_t *out)
{
    lua_State *L = c->L;
    *out = NULL;
    int vrc = count_value(c);
    if (vrc != 0)
        return vrc;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        *out = plist_new_bool(lua_toboolean(L, idx));
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            *out = plist_new_uint((uint64_t)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d))
                return l2x_err(c, MDM_EINVAL, "number %g cannot be stored", d);
            *out = plist_new_real(d);
        }
        return 0;
    case LUA_TSTRING: {
        size_t len = 0;
        const char *s = lua_tolstring(L, idx, &len);
        int rc = count_bytes(c, len);
        if (rc != 0)
            return rc;
        if (utf8_text((const unsigned char *)s, len))
            *out = plist_new_string(s);
        else
            *out = plist_new_data(s, len);
        return 0;
    }
    case LUA_TTABLE: {
        if (depth >= MDM__MAX_DEPTH)
            return l2x_err(c, MDM_ELIMIT, "nested deeper than %d levels", MDM__MAX_DEPTH);
        if (!lua_checkstack(L, 8))
            return l2x_err(c, MDM_ELIMIT, "nested too deeply");
        int rc = push_unwrapped(L, c, idx);
        if (rc != 0)
            return rc;
        rc = l2p_table(c, lua_gettop(L), depth, out);
        lua_pop(L, 1);
        return rc;
    }
    default:
        return l2x_err(c, MDM_EINVAL, "a %s value cannot be converted",
                       lua_typename(L, lua_type(L, idx)));
    }
}

int mdm__lua_to_plist(lua_State *L, int idx, size_t max_bytes, plist_t *out, char *err,
                      size_t errlen)
{
    l2x_t c = {.L = L, .max_bytes = max_bytes, .err = err, .errlen = errlen};
    *out = NULL;
    int top = lua_gettop(L);
    int rc = l2p(&c, lua_absindex(L, idx), 0, out);
    lua_settop(L, top);
    return rc;
}

/* ---- Lua -> JSON by a command's schema ----------------------------------------- */

/* Finds the string value of member `name` of the table at t without
 * allocating (no lua_getfield: that would intern the key). */
const char *mdm__raw_string_member(lua_State *L, int t, const char *name)
{
    const char *found = NULL;
    size_t nl = strlen(name);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        size_t kl = 0;
        if (found == NULL && lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
            const char *k = lua_tolstring(L, -2, &kl);
            if (kl == nl && memcmp(k, name, nl) == 0)
                found = lua_tostring(L, -1); /* stays valid: the table holds it */
        }
        lua_pop(L, 1);
    }
    return found;
}

/* The schema of one element of array k, picked as cmdschema.c does. */
static const mdm_schema_key_t *element_schema(lua_State *L, const mdm_schema_key_t *k, int elem)
{
    if (k == NULL || k->type != MDM_T_ARRAY || k->nsub == 0)
        return NULL;
    if (k->discriminator == NULL)
        return &k->sub[0];
    /* On an error no schema: converting the element then tells it. */
    if (lua_type(L, elem) != LUA_TTABLE || push_unwrapped(L, NULL, elem) != 0)
        return NULL;
    const char *tag = mdm__raw_string_member(L, lua_gettop(L), k->discriminator);
    const mdm_schema_key_t *form = NULL;
    for (size_t i = 0; tag != NULL && i < k->nsub && form == NULL; i++) {
        const mdm_schema_key_t *f = &k->sub[i];
        const mdm_schema_key_t *d = mdm_schema_key_find(f->sub, f->nsub, k->discriminator);
        if (d != NULL && d->nvalues > 0 && strcmp(d->values[0], tag) == 0)
            form = f;
    }
    lua_pop(L, 1);
    return form;
}

static int l2j(l2x_t *c, int idx, const mdm_schema_key_t *k, int depth, json_t **out);

static int l2j_table(l2x_t *c, int t, const mdm_schema_key_t *k, int depth, bool top,
                     json_t **out)
{
    lua_State *L = c->L;
    int shape;
    lua_Integer n;
    int rc = table_shape(c, t, &shape, &n);
    if (rc != 0)
        return rc;
    bool want_array = k != NULL && k->type == MDM_T_ARRAY;
    if (shape == SHAPE_LIST || (shape == SHAPE_EMPTY && want_array && !top)) {
        json_t *arr = json_array();
        for (lua_Integer i = 1; i <= n && rc == 0; i++) {
            lua_rawgeti(L, t, i);
            size_t mark = path_index(c, i);
            json_t *v = NULL;
            rc = l2j(c, lua_gettop(L), element_schema(L, k, lua_gettop(L)), depth + 1, &v);
            path_pop(c, mark);
            lua_pop(L, 1);
            if (rc == 0)
                json_array_append_new(arr, v);
        }
        if (rc != 0) {
            json_decref(arr);
            return rc;
        }
        *out = arr;
        return 0;
    }
    json_t *obj = json_object();
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, t)) {
        size_t klen = 0;
        const char *key = lua_tolstring(L, -2, &klen);
        if (top && strcmp(key, "RequestType") == 0) {
            lua_pop(L, 1);
            continue;
        }
        size_t mark = path_key(c, key, klen);
        const mdm_schema_key_t *sk = NULL;
        if (k != NULL && (k->type == MDM_T_DICT) && k->nsub > 0)
            sk = mdm_schema_key_find(k->sub, k->nsub, key);
        json_t *v = NULL;
        if (!utf8_text((const unsigned char *)key, klen))
            rc = l2x_err(c, MDM_EINVAL, "key is not UTF-8 text");
        if (rc == 0)
            rc = l2j(c, lua_gettop(L), sk, depth + 1, &v);
        path_pop(c, mark);
        if (rc == 0)
            json_object_set_new(obj, key, v);
        lua_pop(L, 1);
    }
    if (rc != 0) {
        lua_pop(L, 1);
        json_decref(obj);
        return rc;
    }
    *out = obj;
    return 0;
}

static int l2j(l2x_t *c, int idx, const mdm_schema_key_t *k, int depth, json_t **out)
{
    lua_State *L = c->L;
    mdm_vtype_t want = k ? k->type : MDM_T_ANY;
    *out = NULL;
    int vrc = count_value(c);
    if (vrc != 0)
        return vrc;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        *out = json_boolean(lua_toboolean(L, idx));
        return 0;
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (want == MDM_T_DATE) {
            if (!isfinite(d) || d < (double)MDM_PLIST_DATE_MIN || d > (double)MDM_PLIST_DATE_MAX)
                return l2x_err(c, MDM_EINVAL, "date %g (seconds) out of range", d);
            char text[32];
            mdm_time_format(text, (int64_t)floor(d) * 1000);
            *out = json_string(text);
            return 0;
        }
        if (lua_isinteger(L, idx)) {
            *out = json_integer((json_int_t)lua_tointeger(L, idx));
            return 0;
        }
        if (!isfinite(d))
            return l2x_err(c, MDM_EINVAL, "number %g has no property-list form", d);
        if (want == MDM_T_INTEGER && d == floor(d) && fabs(d) < 9.0e15)
            *out = json_integer((json_int_t)d);
        else
            *out = json_real(d);
        return 0;
    }
    case LUA_TSTRING: {
        size_t len = 0;
        const char *s = lua_tolstring(L, idx, &len);
        int rc = count_bytes(c, len);
        if (rc != 0)
            return rc;
        if (want == MDM_T_DATA) {
            mdm_buf_t b = MDM_BUF_INIT;
            mdm_base64_encode(&b, s, len);
            *out = json_stringn(b.data ? b.data : "", b.len);
            mdm_buf_free(&b);
            return 0;
        }
        *out = utf8_text((const unsigned char *)s, len) ? json_stringn(s, len) : NULL;
        if (*out == NULL)
            return l2x_err(c, MDM_EINVAL, "not UTF-8 text (bytes go only into data keys)");
        return 0;
    }
    case LUA_TTABLE: {
        if (depth >= MDM__MAX_DEPTH)
            return l2x_err(c, MDM_ELIMIT, "nested deeper than %d levels", MDM__MAX_DEPTH);
        if (!lua_checkstack(L, 8))
            return l2x_err(c, MDM_ELIMIT, "nested too deeply");
        int rc = push_unwrapped(L, c, idx);
        if (rc != 0)
            return rc;
        rc = l2j_table(c, lua_gettop(L), k, depth, false, out);
        lua_pop(L, 1);
        return rc;
    }
    default:
        return l2x_err(c, MDM_EINVAL, "a %s value cannot be part of a command",
                       lua_typename(L, lua_type(L, idx)));
    }
}

int mdm__lua_to_command(lua_State *L, int idx, const char *rt, plist_t *out, char *err,
                        size_t errlen)
{
    *out = NULL;
    const mdm_cmd_schema_t *cs = mdm_cmdschema_find(rt);
    if (cs == NULL) {
        const char *s = mdm_cmdschema_suggest(rt);
        snprintf(err, errlen, "unknown command \"%s\"%s%s%s", rt, s ? " (did you mean \"" : "",
                 s ? s : "", s ? "\"?)" : "");
        return MDM_ENOTFOUND;
    }
    if (lua_type(L, idx) != LUA_TTABLE) {
        snprintf(err, errlen, "%s: the argument must be a table, got %s", rt,
                 luaL_typename(L, idx));
        return MDM_EINVAL;
    }
    l2x_t c = {.L = L, .max_bytes = MDM_CMD_MAX_BYTES, .err = err, .errlen = errlen};
    path_key(&c, rt, strlen(rt));
    mdm_schema_key_t top = {.name = rt, .type = MDM_T_DICT, .sub = cs->keys, .nsub = cs->nkeys};
    int base = lua_gettop(L);
    idx = lua_absindex(L, idx);
    json_t *j = NULL;
    int rc = MDM_ELIMIT;
    if (lua_checkstack(L, 8)) {
        rc = push_unwrapped(L, &c, idx);
        if (rc == 0)
            rc = l2j_table(&c, lua_gettop(L), &top, 0, true, &j);
    } else {
        snprintf(err, errlen, "%s: out of stack", rt);
    }
    lua_settop(L, base);
    if (rc != 0)
        return rc;
    if (!json_is_object(j)) {
        /* A list where the keys belong: report it as the builder would. */
        json_decref(j);
        snprintf(err, errlen, "%s: the argument must be a table of keys, not a list", rt);
        return MDM_EINVAL;
    }
    mdm_err_t e = {0};
    rc = mdm_command_build_json(rt, j, out, &e);
    json_decref(j);
    if (rc != 0)
        snprintf(err, errlen, "%s", e.msg);
    return rc;
}
