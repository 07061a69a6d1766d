/* `moonmdm policy test`: runs the *_test.lua files of a directory against
 * a policy set. Each test function runs in a fresh state of the set (so
 * that no test sees another's globals or kv values) in test mode: a frozen
 * clock, an in-memory mdm.kv, and mdm.test (used by lua/lib/testing.lua). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox_internal.h"
#include "util/alloc.h"

#define TEST_BUDGET_NS (10ull * 1000000000ull)
#define TEST_FILE_MAX ((size_t)1 << 20)

typedef struct test_src {
    const char *src;
    size_t len;
    const char *chunkname;
    const char *name;          /* the test to run (run_protected) */
    mdm_strlist_t *names;      /* the tests found (discover_protected) */
} test_src_t;

/* Loads the test file with its own environment (globals fall back to the
 * policy's) and runs it; leaves the env and the returned value on the
 * stack. */
static void load_test_file(lua_State *L, test_src_t *t, int *env, int *ret)
{
    if (luaL_loadbufferx(L, t->src, t->len, t->chunkname, "t") != LUA_OK)
        lua_error(L);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_insert(L, -3); /* env fn env */
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 1);
    *ret = lua_gettop(L);
    *env = *ret - 1;
}

static bool is_test_name(lua_State *L, int k, int v)
{
    return lua_type(L, k) == LUA_TSTRING && lua_type(L, v) == LUA_TFUNCTION &&
           strncmp(lua_tostring(L, k), "test", 4) == 0;
}

static int discover_protected(lua_State *L)
{
    test_src_t *t = lua_touserdata(L, 1);
    int env, ret;
    load_test_file(L, t, &env, &ret);
    int tables[2] = {ret, env};
    for (int i = 0; i < 2; i++) {
        if (!lua_istable(L, tables[i]))
            continue;
        lua_pushnil(L);
        while (lua_next(L, tables[i])) {
            if (is_test_name(L, -2, -1)) {
                const char *n = lua_tostring(L, -2);
                bool dup = false;
                for (size_t j = 0; j < t->names->n && !dup; j++)
                    dup = strcmp(t->names->v[j], n) == 0;
                if (!dup)
                    mdm__strlist_push(t->names, n);
            }
            lua_pop(L, 1);
        }
    }
    return 0;
}

static int run_protected(lua_State *L)
{
    test_src_t *t = lua_touserdata(L, 1);
    int env, ret;
    load_test_file(L, t, &env, &ret);
    int type = LUA_TNIL;
    if (lua_istable(L, ret))
        type = lua_getfield(L, ret, t->name);
    if (type != LUA_TFUNCTION) {
        lua_settop(L, ret);
        lua_getfield(L, env, t->name);
    }
    lua_call(L, 0, 0);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_test_files(const char *dir, mdm_strlist_t *out)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return MDM_ENOTFOUND;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        size_t n = strlen(ent->d_name);
        if (ent->d_name[0] != '.' && n > 9 && strcmp(ent->d_name + n - 9, "_test.lua") == 0)
            mdm__strlist_push(out, ent->d_name);
    }
    closedir(d);
    if (out->n > 1)
        qsort(out->v, out->n, sizeof(*out->v), cmp_str);
    return 0;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = mdm_malloc(TEST_FILE_MAX + 1);
    *len = fread(buf, 1, TEST_FILE_MAX, f);
    fclose(f);
    buf[*len] = '\0';
    return buf;
}

/* Prints a message indented under its test, one line at a time. */
static void print_indented(FILE *out, const char *prefix, const char *msg)
{
    const char *p = msg;
    while (*p) {
        size_t n = strcspn(p, "\n");
        fprintf(out, "%s%.*s\n", prefix, (int)n, p);
        p += n;
        if (*p == '\n')
            p++;
    }
}

int mdm_policy_run_tests(const mdm_policy_settings_t *s, const char *test_dir, bool tap, FILE *out,
                         int *passed, int *failed, mdm_policy_error_t *e)
{
    *passed = *failed = 0;
    char *tdir = test_dir ? mdm_strdup(test_dir) : mdm_sprintf("%s/tests", s->dir);
    mdm_strlist_t files = {0};
    int rc = 0, number = 0;
    const char *base = strrchr(tdir, '/');
    base = base && base[1] ? base + 1 : tdir;
    if (list_test_files(tdir, &files) != 0 || files.n == 0) {
        if (e != NULL) {
            memset(e, 0, sizeof(*e));
            snprintf(e->message, sizeof(e->message), "%s: no *_test.lua files", tdir);
        }
        rc = MDM_ENOTFOUND;
        goto out;
    }
    for (size_t i = 0; i < files.n && rc == 0; i++) {
        char *path = mdm_sprintf("%s/%s", tdir, files.v[i]);
        size_t len = 0;
        char *src = read_all(path, &len);
        mdm_free(path);
        char *chunkname = mdm_sprintf("@%s/%s", base, files.v[i]);
        mdm_strlist_t names = {0};
        test_src_t t = {.src = src ? src : "", .len = len, .chunkname = chunkname,
                        .names = &names};
        mdm_policy_t *p = NULL;
        char err[2048];
        rc = mdm__policy_load(s, MDM__MODE_TEST, tdir, &p, e);
        if (rc == 0) {
            mdm__call_t call = {.hook = -1, .kv = MDM__KV_MEMORY, .kv_direct = true};
            int drc = src == NULL ? MDM_EIO
                                  : mdm__policy_exec(p, discover_protected, &t, TEST_BUDGET_NS,
                                                     0, &call, err, sizeof(err));
            mdm_policy_release(p);
            if (drc != 0) {
                if (src == NULL)
                    snprintf(err, sizeof(err), "cannot read the file");
                number++;
                (*failed)++;
                if (tap)
                    fprintf(out, "not ok %d - %s: cannot load\n", number, files.v[i]);
                else
                    fprintf(out, "FAIL %s: cannot load\n", files.v[i]);
                print_indented(out, tap ? "  # " : "    ", err);
            } else {
                if (names.n > 1)
                    qsort(names.v, names.n, sizeof(*names.v), cmp_str);
            }
        }
        for (size_t j = 0; j < names.n && rc == 0; j++) {
            rc = mdm__policy_load(s, MDM__MODE_TEST, tdir, &p, e);
            if (rc != 0)
                break;
            t.name = names.v[j];
            mdm__call_t call = {.hook = -1, .kv = MDM__KV_MEMORY, .kv_direct = true};
            int trc = mdm__policy_exec(p, run_protected, &t, TEST_BUDGET_NS, 0, &call, err,
                                       sizeof(err));
            mdm_policy_release(p);
            number++;
            if (trc == 0) {
                (*passed)++;
                if (tap)
                    fprintf(out, "ok %d - %s: %s\n", number, files.v[i], names.v[j]);
            } else {
                (*failed)++;
                if (tap)
                    fprintf(out, "not ok %d - %s: %s\n", number, files.v[i], names.v[j]);
                else
                    fprintf(out, "FAIL %s: %s\n", files.v[i], names.v[j]);
                print_indented(out, tap ? "  # " : "    ", err);
            }
        }
        mdm__strlist_free(&names);
        mdm_free(chunkname);
        mdm_free(src);
    }
    if (rc == 0) {
        if (tap)
            fprintf(out, "1..%d\n# %d passed, %d failed\n", number, *passed, *failed);
        else
            fprintf(out, "%d passed, %d failed\n", *passed, *failed);
    }
out:
    mdm__strlist_free(&files);
    mdm_free(tdir);
    return rc;
}
