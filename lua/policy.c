/* Policy sets: loading and validating a directory of Lua files, reference
 * counted revisions, calling hooks with budgets and checking what they
 * return, fail-closed defaults, metrics, and the decision log entry of each
 * call. The server side (reload, watch, API) is in policy_engine.c, the
 * test runner in policy_test.c. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "mdm/mdm.h"
#include "sandbox_internal.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/jsonw.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"
#include "util/plistjson.h"

#define DEFAULT_MEMORY ((size_t)64 << 20)
#define DEFAULT_BUDGET_MS 50
#define DEFAULT_INSTRUCTIONS 20000000ull
#define DEFAULT_LOAD_BUDGET_MS 2000
#define LOAD_INSN_FACTOR 100

#define FILE_MAX ((size_t)1 << 20)      /* one policy file */
#define FILES_MAX 1000                   /* files in a policy set */
#define TOTAL_MAX ((size_t)16 << 20)     /* all files together */
#define DIR_DEPTH_MAX 8
#define NAME_MAX_LEN 200                 /* relative file names */

#define MAX_COMMANDS 100                 /* commands in one decision */
#define MAX_NAMES 1000                   /* groups or profiles in one decision */
#define NAME_BYTES 255                   /* one group name or profile identifier */
#define REASON_BYTES 1024
#define FACTS_MAX ((size_t)1 << 20)
#define RESPOND_MAX ((size_t)64 << 10)

#define LOADING_MARK "moonmdm: loading"

const char mdm__reg_keys[8];

static const char *const hook_names[MDM_POLICY_HOOK__COUNT] = {
    "authenticate", "scep", "checkin", "groups", "profiles", "connect", "result", "self_test",
};

/* Budget overruns in a row before a hook is paused, and for how long. */
#define POLICY_STRIKES 3
#define POLICY_PAUSE_MS 10000

static const char *const outcome_names[MDM__OUTCOMES] = {"ok", "error", "timeout", "memory",
                                                         "bad_return"};
enum { OUT_OK, OUT_ERROR, OUT_TIMEOUT, OUT_MEMORY, OUT_BAD_RETURN };

const char *mdm_policy_hook_name(int hook)
{
    return hook >= 0 && hook < MDM_POLICY_HOOK__COUNT ? hook_names[hook] : NULL;
}

int mdm_policy_hook_parse(const char *name)
{
    for (int i = 0; i < MDM_POLICY_HOOK__COUNT; i++)
        if (name != NULL && strcmp(name, hook_names[i]) == 0)
            return i;
    return -1;
}

const char *mdm_policy_status_name(int status)
{
    switch (status) {
    case MDM_POLICY_OK: return "ok";
    case MDM_POLICY_ABSENT: return "absent";
    default: return "failed";
    }
}

void mdm__strlist_free(mdm_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        mdm_free(l->v[i]);
    mdm_free(l->v);
    l->v = NULL;
    l->n = 0;
}

void mdm__strlist_push(mdm_strlist_t *l, const char *s)
{
    l->v = mdm_realloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = mdm_strdup(s);
}

static bool strlist_has(const mdm_strlist_t *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return true;
    return false;
}

/* ---- settings ------------------------------------------------------------------ */

int mdm_policy_settings_from_config(mdm_policy_settings_t *s, const mdm_config_t *cfg,
                                    mdm_err_t *err)
{
    memset(s, 0, sizeof(*s));
    s->dir = cfg->policy_dir;
    s->memory_max = cfg->policy_memory_max;
    for (int i = 0; i < MDM_POLICY_HOOK__COUNT; i++)
        s->budget_ms[i] = cfg->policy_budget_ms;
    for (size_t i = 0; i < cfg->policy_hook_budgets.n; i++) {
        const char *entry = cfg->policy_hook_budgets.v[i];
        const char *eq = strchr(entry, '=');
        char name[32];
        uint64_t ms = 0;
        int hook = -1;
        if (eq != NULL && (size_t)(eq - entry) < sizeof(name)) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - entry), entry);
            hook = mdm_policy_hook_parse(name);
        }
        if (hook < 0 || mdm_parse_duration_ms(eq + 1, &ms) != 0 || ms == 0)
            return mdm_err_set(err, MDM_ECONFIG,
                               "%s: policy.hook_budgets: \"%s\" is not \"hook=duration\" with a "
                               "hook name (authenticate, scep, checkin, groups, profiles, "
                               "connect, result) and a duration such as \"200ms\"",
                               cfg->file ? cfg->file : "config", entry);
        s->budget_ms[hook] = ms;
    }
    s->instructions = cfg->policy_instructions;
    s->load_budget_ms = cfg->policy_load_budget_ms;
    s->decision_log = cfg->policy_decision_log_max > 0;
    s->decision_log_all = cfg->policy_decision_log_all;
    return 0;
}

/* ---- errors ---------------------------------------------------------------------- */

void mdm__policy_error_parse(const char *msg, mdm_policy_error_t *e)
{
    memset(e, 0, sizeof(*e));
    /* Lua's position prefix "file:line: ", or our "file.lua: ". */
    size_t flen = strcspn(msg, ": \t\n");
    if (msg[flen] == ':' && flen > 0 && flen < sizeof(e->file)) {
        const char *d = msg + flen + 1, *digits = d;
        int line = 0;
        while (*d >= '0' && *d <= '9' && line < 100000000)
            line = line * 10 + (*d++ - '0');
        bool with_line = d > digits && *d == ':';
        bool lua_file = d == digits && *d == ' ' && flen > 4 && strncmp(msg + flen - 4, ".lua", 4) == 0;
        if (with_line || lua_file) {
            snprintf(e->file, sizeof(e->file), "%.*s", (int)flen, msg);
            e->line = with_line ? line : 0;
            d++;
            while (*d == ' ')
                d++;
            snprintf(e->message, sizeof(e->message), "%s", d);
            return;
        }
    }
    snprintf(e->message, sizeof(e->message), "%s", msg);
}

void mdm_policy_error_format(const mdm_policy_error_t *e, const char *dir, char *buf, size_t len)
{
    bool rel = e->file[0] != '\0' && e->file[0] != '/' && e->file[0] != '(' && dir != NULL;
    const char *sep = dir != NULL && dir[0] && dir[strlen(dir) - 1] != '/' ? "/" : "";
    if (e->file[0] && e->line > 0)
        snprintf(buf, len, "%s%s%s:%d: %s", rel ? dir : "", rel ? sep : "", e->file, e->line,
                 e->message);
    else if (e->file[0])
        snprintf(buf, len, "%s%s%s: %s", rel ? dir : "", rel ? sep : "", e->file, e->message);
    else
        snprintf(buf, len, "%s", e->message);
}

static int set_error(mdm_policy_error_t *e, int code, const char *file, int line,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int set_error(mdm_policy_error_t *e, int code, const char *file, int line,
                     const char *fmt, ...)
{
    if (e == NULL)
        return code;
    memset(e, 0, sizeof(*e));
    snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
    e->line = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return code;
}

/* ---- the files of a set ---------------------------------------------------------- */

typedef struct pfile {
    char *name;  /* relative, '/' separated */
    char *data;
    size_t len;
} pfile_t;

typedef struct snapshot {
    pfile_t *v;
    size_t n;
    size_t total;
    mdm_strlist_t dirs;
} snapshot_t;

static void snapshot_free(snapshot_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        mdm_free(s->v[i].name);
        mdm_free(s->v[i].data);
    }
    mdm_free(s->v);
    mdm__strlist_free(&s->dirs);
    memset(s, 0, sizeof(*s));
}

static bool file_name_ok(const char *name)
{
    for (const char *c = name; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("_-.", *c))
            return false;
    return name[0] != '\0';
}

static int read_file(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return errno == ENOENT ? MDM_ENOTFOUND : MDM_EIO;
    char *buf = mdm_malloc(max + 1);
    size_t n = fread(buf, 1, max + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        mdm_free(buf);
        return MDM_EIO;
    }
    if (n > max) {
        mdm_free(buf);
        return MDM_ELIMIT;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the .lua files under root/rel. Hidden names and the top-level
 * tests/ directory are not part of the set. With files false only the
 * directories are collected. */
static int read_tree(const char *root, const char *rel, int depth, bool files, snapshot_t *s,
                     mdm_policy_error_t *e)
{
    char *path = rel[0] ? mdm_sprintf("%s/%s", root, rel) : mdm_strdup(root);
    DIR *d = opendir(path);
    int rc = 0;
    if (d == NULL) {
        rc = set_error(e, errno == ENOENT ? MDM_ENOTFOUND : MDM_EIO, rel, 0, "%s: %s", path,
                       errno == ENOENT ? "no such directory" : strerror(errno));
        mdm_free(path);
        return rc;
    }
    mdm__strlist_push(&s->dirs, rel);
    char **names = NULL;
    size_t nnames = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.')
            continue;
        if (depth == 0 && strcmp(ent->d_name, "tests") == 0)
            continue;
        names = mdm_realloc(names, (nnames + 1) * sizeof(*names));
        names[nnames++] = mdm_strdup(ent->d_name);
    }
    closedir(d);
    if (nnames > 1)
        qsort(names, nnames, sizeof(*names), str_cmp);
    for (size_t i = 0; i < nnames && rc == 0; i++) {
        char *full = mdm_sprintf("%s/%s", path, names[i]);
        char *relname = rel[0] ? mdm_sprintf("%s/%s", rel, names[i]) : mdm_strdup(names[i]);
        struct stat st;
        if (stat(full, &st) != 0) {
            /* A dangling link or a file removed meanwhile. */
        } else if (S_ISDIR(st.st_mode)) {
            if (depth + 1 > DIR_DEPTH_MAX)
                rc = set_error(e, MDM_EPOLICY, relname, 0, "directories nested deeper than %d",
                               DIR_DEPTH_MAX);
            else if (!file_name_ok(names[i]))
                rc = set_error(e, MDM_EPOLICY, relname, 0,
                               "directory name: use letters, digits, '_', '-' and '.'");
            else
                rc = read_tree(root, relname, depth + 1, files, s, e);
        } else if (files && S_ISREG(st.st_mode) && strlen(names[i]) > 4 &&
                   strcmp(names[i] + strlen(names[i]) - 4, ".lua") == 0) {
            if (!file_name_ok(names[i]) || strlen(relname) > NAME_MAX_LEN)
                rc = set_error(e, MDM_EPOLICY, relname, 0,
                               "file name: use letters, digits, '_', '-' and '.'");
            else if (s->n >= FILES_MAX)
                rc = set_error(e, MDM_EPOLICY, relname, 0, "more than %d files", FILES_MAX);
            if (rc == 0) {
                char *data = NULL;
                size_t len = 0;
                int r = read_file(full, FILE_MAX, &data, &len);
                if (r == MDM_ELIMIT)
                    rc = set_error(e, MDM_EPOLICY, relname, 0, "file larger than %zu bytes",
                                   FILE_MAX);
                else if (r != 0)
                    rc = set_error(e, MDM_EIO, relname, 0, "cannot read: %s", strerror(errno));
                else if (len > TOTAL_MAX - s->total)
                    rc = set_error(e, MDM_EPOLICY, relname, 0,
                                   "the files hold more than %zu bytes together", TOTAL_MAX);
                if (rc == 0) {
                    s->v = mdm_realloc(s->v, (s->n + 1) * sizeof(*s->v));
                    s->v[s->n++] = (pfile_t){.name = mdm_strdup(relname), .data = data,
                                             .len = len};
                    s->total += len;
                } else {
                    mdm_free(data);
                }
            }
        }
        mdm_free(full);
        mdm_free(relname);
    }
    for (size_t i = 0; i < nnames; i++)
        mdm_free(names[i]);
    mdm_free(names);
    mdm_free(path);
    return rc;
}

int mdm__policy_dirs(const char *dir, mdm_strlist_t *out)
{
    snapshot_t s = {0};
    int rc = read_tree(dir, "", 0, false, &s, NULL);
    *out = s.dirs;
    s.dirs = (mdm_strlist_t){0};
    snapshot_free(&s);
    return rc;
}

/* The files of the set itself, not the tests' helpers or the library
 * (their names start with "(", which no file name of the set can). */
static bool set_file(const pfile_t *f)
{
    return f->name[0] != '(';
}

#define LIB_PREFIX "(lib)/"

/* Adds the .lua files of the shipped library to s as "(lib)/name": they are
 * read with the set, so that a module first required by a hook long after
 * the load is the one the revision was made of. No library directory is
 * an empty library. */
static int read_lib(const char *dir, snapshot_t *s, mdm_policy_error_t *e)
{
    snapshot_t lib = {0};
    int rc = read_tree(dir, "", 0, true, &lib, e);
    if (rc == MDM_ENOTFOUND && lib.dirs.n == 0) {
        rc = 0;
        if (e != NULL)
            memset(e, 0, sizeof(*e));
    }
    if (rc != 0 && e != NULL) {
        char *file = mdm_sprintf("%s%s", LIB_PREFIX, e->file);
        snprintf(e->file, sizeof(e->file), "%.*s", (int)sizeof(e->file) - 1, file);
        mdm_free(file);
    }
    for (size_t i = 0; rc == 0 && i < lib.n; i++) {
        s->v = mdm_realloc(s->v, (s->n + 1) * sizeof(*s->v));
        s->v[s->n++] = (pfile_t){.name = mdm_sprintf("%s%s", LIB_PREFIX, lib.v[i].name),
                                 .data = lib.v[i].data, .len = lib.v[i].len};
        lib.v[i].data = NULL;
    }
    snapshot_free(&lib);
    return rc;
}

static void snapshot_revision(const snapshot_t *s, char out[65])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (size_t i = 0; i < s->n; i++) {
        if (strncmp(s->v[i].name, "(tests)/", 8) == 0)
            continue; /* the tests' helpers, added in test mode */
        unsigned char len[8];
        mdm_be64_put(len, s->v[i].len);
        EVP_DigestUpdate(md, s->v[i].name, strlen(s->v[i].name) + 1);
        EVP_DigestUpdate(md, len, sizeof(len));
        EVP_DigestUpdate(md, s->v[i].data, s->v[i].len);
    }
    unsigned char h[32];
    unsigned int hl = 0;
    EVP_DigestFinal_ex(md, h, &hl);
    EVP_MD_CTX_free(md);
    mdm_hex_encode(out, h, 32);
}

/* ---- objects ------------------------------------------------------------------------ */

static mdm_policy_t *policy_alloc(void)
{
    mdm_policy_t *p = mdm_calloc(1, sizeof(*p));
    p->refs = 1;
    p->profiles_ref = LUA_NOREF;
    for (int i = 0; i < MDM_POLICY_HOOK__COUNT; i++)
        p->hook_ref[i] = LUA_NOREF;
    snprintf(p->name, sizeof(p->name), "default");
    mdm_random(&p->seq, sizeof(p->seq));
    p->seq &= 0x0000ffffffffffffull;
    return p;
}

mdm_policy_t *mdm_policy_new_empty(void)
{
    mdm_policy_t *p = policy_alloc();
    p->empty = true;
    p->loaded_at_ms = mdm_now_ms();
    return p;
}

mdm_policy_t *mdm_policy_ref(mdm_policy_t *p)
{
    p->refs++;
    return p;
}

void mdm_policy_release(mdm_policy_t *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    mdm__sandbox_close(&p->sb);
    mdm_free(p->dir);
    mdm_free(p->lib_dir);
    mdm_free(p->test_dir);
    mdm__strlist_free(&p->files);
    mdm_free(p);
}

const char *mdm_policy_revision(const mdm_policy_t *p)
{
    return p->revision;
}

const char *mdm_policy_name(const mdm_policy_t *p)
{
    return p->name;
}

bool mdm_policy_has_hook(const mdm_policy_t *p, int hook)
{
    return hook >= 0 && hook < MDM_POLICY_HOOK__COUNT && (p->hooks & (1u << hook)) != 0;
}

static void policy_metrics(mdm_policy_t *p)
{
    for (int h = 0; h < MDM_POLICY_HOOK__COUNT; h++) {
        char labels[96];
        snprintf(labels, sizeof(labels), "hook=\"%s\"", hook_names[h]);
        p->m_suspended[h] = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_paused_calls_total",
                                       labels,
                                       "Hook calls failed closed without running because the "
                                       "hook overran its budget repeatedly");
        for (int o = 0; o < MDM__OUTCOMES; o++) {
            snprintf(labels, sizeof(labels), "hook=\"%s\",outcome=\"%s\"", hook_names[h],
                     outcome_names[o]);
            p->m_calls[h][o] = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_calls_total",
                                          labels, "Policy hook calls by hook and outcome");
        }
        snprintf(labels, sizeof(labels), "hook=\"%s\"", hook_names[h]);
        p->m_latency[h] = mdm_histogram("moonmdm_policy_call_seconds", labels,
                                        "Time policy hooks take");
    }
    p->m_memory = mdm_metric(MDM_METRIC_GAUGE, "moonmdm_policy_memory_bytes", NULL,
                             "Memory held by the running policy's Lua state");
}

/* ---- running code under a budget ------------------------------------------------------ */

int mdm__policy_exec(mdm_policy_t *p, lua_CFunction fn, void *ud, uint64_t budget_ns,
                     uint64_t insns, mdm__call_t *call, char *err, size_t errlen)
{
    lua_State *L = p->sb.L;
    mdm__call_t *prev = p->call;
    p->call = call;
    int base = lua_gettop(L);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    mdm__budget_t saved;
    mdm__sandbox_begin(&p->sb, L, budget_ns, insns, &saved);
    int status = lua_pcall(L, 1, 0, 0);
    int kill = mdm__sandbox_end(&p->sb, L, &saved);
    int rc = 0;
    if (status != LUA_OK || kill != MDM__KILL_NONE) {
        mdm__sandbox_error(&p->sb, L, status, kill, err, errlen);
        mdm__kv_discard(L);
        rc = MDM_EPOLICY;
    }
    lua_settop(L, base);
    p->call = prev;
    return rc;
}

struct chunk_run {
    const char *src;
    size_t len;
    const char *name;
};

static int chunk_protected(lua_State *L)
{
    struct chunk_run *c = lua_touserdata(L, 1);
    if (luaL_loadbufferx(L, c->src, c->len, c->name, "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 0);
    return 0;
}

int mdm__policy_run_chunk(mdm_policy_t *p, const char *src, size_t len, const char *chunkname,
                          uint64_t budget_ns, char *err, size_t errlen)
{
    struct chunk_run c = {.src = src, .len = len, .name = chunkname};
    mdm__call_t call = {.hook = -1, .kv = MDM__KV_MEMORY, .kv_direct = true};
    return mdm__policy_exec(p, chunk_protected, &c, budget_ns, 0, &call, err, errlen);
}

/* ---- loading ------------------------------------------------------------------------ */

typedef struct load_ctx {
    mdm_policy_t *p;
    snapshot_t *snap;
    mdm_strlist_t profile_ids;   /* identifiers named by a `profiles` table */
    char profile_group[NAME_BYTES + 1];
} load_ctx_t;

/* Module names: dot-separated words, so that nothing can name a path
 * outside the policy directory or the shipped library. */
static bool module_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 128)
        return false;
    bool start = true;
    for (const char *c = name; *c; c++) {
        if (*c == '.') {
            if (start)
                return false;
            start = true;
            continue;
        }
        if (!(isalpha((unsigned char)*c) || *c == '_' ||
              (!start && (isdigit((unsigned char)*c) || *c == '-'))))
            return false;
        start = false;
    }
    return !start;
}

/* Pushes the compiled chunk for a file name, compiling a shipped library
 * file (read at load) on first use; returns false when there is none. */
static bool find_chunk(lua_State *L, const char *file, bool lib)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_CHUNKS);
    char key[NAME_MAX_LEN + 16];
    snprintf(key, sizeof(key), "%s%s", lib ? LIB_PREFIX : "", file);
    if (lua_getfield(L, -1, key) == LUA_TFUNCTION) {
        lua_remove(L, -2);
        return true;
    }
    if (!lib) {
        lua_pop(L, 2);
        return false;
    }
    lua_pop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_LIBSRC);
    if (lua_getfield(L, -1, key) != LUA_TSTRING) {
        lua_pop(L, 3);
        return false;
    }
    size_t len = 0;
    const char *src = lua_tolstring(L, -1, &len);
    char chunkname[NAME_MAX_LEN + 24];
    snprintf(chunkname, sizeof(chunkname), "@%s", key);
    if (luaL_loadbufferx(L, src, len, chunkname, "t") != LUA_OK)
        lua_error(L);
    /* chunks, sources, source, chunk: the source is not needed again. */
    lua_pushvalue(L, -1);
    lua_setfield(L, -5, key);
    lua_pushnil(L);
    lua_setfield(L, -4, key);
    lua_replace(L, -4);
    lua_pop(L, 2);
    return true;
}

/* require(name): modules of the policy directory, then of the shipped
 * library (lua/lib), then (in tests) of the tests' directory. */
static int require_fn(lua_State *L)
{
    mdm_policy_t *p = mdm__policy_of(L);
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (!module_name_ok(name))
        return luaL_error(L,
                          "require: invalid module name \"%s\" (modules are names such as "
                          "\"groups\" or \"lib.util\", looked up in the policy directory and "
                          "the shipped library only)",
                          name);
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_LOADED);
    int loaded = lua_gettop(L);
    lua_getfield(L, loaded, name);
    if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), LOADING_MARK) == 0)
        return luaL_error(L, "require: module \"%s\" requires itself (a cycle)", name);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    char base[160];
    snprintf(base, sizeof(base), "%s", name);
    for (char *c = base; *c; c++)
        if (*c == '.')
            *c = '/';
    char file[NAME_MAX_LEN + 16], file2[NAME_MAX_LEN + 16], tfile[NAME_MAX_LEN + 16];
    snprintf(file, sizeof(file), "%s.lua", base);
    snprintf(file2, sizeof(file2), "%s/init.lua", base);
    snprintf(tfile, sizeof(tfile), "(tests)/%s.lua", base);
    bool found = find_chunk(L, file, false) || find_chunk(L, file2, false) ||
                 find_chunk(L, file, true) ||
                 (p->mode == MDM__MODE_TEST && find_chunk(L, tfile, false));
    if (!found)
        return luaL_error(L,
                          "require: module \"%s\" not found (no %s in the policy directory or "
                          "the shipped library)",
                          name, file);
    lua_pushliteral(L, LOADING_MARK);
    lua_setfield(L, loaded, name);
    lua_pushvalue(L, 1);
    int status = lua_pcall(L, 1, 1, 0);
    if (status != LUA_OK) {
        lua_pushnil(L);
        lua_setfield(L, loaded, name);
        return lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, loaded, name);
    return 1;
}

static const char *const table_keys[] = {
    "authenticate", "scep", "checkin", "groups", "profiles", "connect", "result", "self_test",
    "name", NULL,
};

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    size_t d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t c = d[i - 1][j - 1] + (tolower((unsigned char)a[i - 1]) !=
                                          tolower((unsigned char)b[j - 1]));
            size_t x = d[i - 1][j] + 1, y = d[i][j - 1] + 1;
            d[i][j] = c < x ? (c < y ? c : y) : (x < y ? x : y);
        }
    return d[la][lb];
}

/* The closest of names to word, or NULL. */
static const char *suggest(const char *word, const char *const *names)
{
    const char *best = NULL;
    size_t bd = 3;
    for (size_t i = 0; names[i]; i++) {
        size_t dd = edit_distance(word, names[i]);
        if (dd < bd) {
            bd = dd;
            best = names[i];
        }
    }
    return best;
}

static bool group_name_ok(const char *s, size_t len)
{
    return len > 0 && len <= NAME_BYTES && strlen(s) == len;
}

/* Checks `profiles` given as a table: group -> list of identifiers. */
/* Pushes a copy of a checked profiles table: group -> list of strings. */
static void copy_profiles_table(lua_State *L, int t)
{
    luaL_checkstack(L, 6, NULL);
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
            lua_Integer m = (lua_Integer)lua_rawlen(L, -1);
            lua_createtable(L, (int)m, 0);
            for (lua_Integer i = 1; i <= m; i++) {
                lua_rawgeti(L, -2, i);
                lua_rawseti(L, -2, i);
            }
            lua_pushvalue(L, -3);
            lua_insert(L, -2);
            lua_rawset(L, out);
        }
        lua_pop(L, 1);
    }
}

static void validate_profiles_table(lua_State *L, load_ctx_t *c, int t)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "init.lua: profiles: keys must be group names (or \"*\"), got a %s",
                       luaL_typename(L, -2));
        const char *group = lua_tostring(L, -2);
        if (!lua_istable(L, -1))
            luaL_error(L, "init.lua: profiles[\"%s\"] must be a list of profile identifiers",
                       group);
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            size_t len = 0;
            const char *id = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (id == NULL || !group_name_ok(id, len))
                luaL_error(L, "init.lua: profiles[\"%s\"][%d] must be a profile identifier "
                              "(a string of 1 to %d bytes)",
                           group, (int)i, NAME_BYTES);
            if (!strlist_has(&c->profile_ids, id)) {
                mdm__strlist_push(&c->profile_ids, id);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

static int load_protected(lua_State *L)
{
    load_ctx_t *c = lua_touserdata(L, 1);
    mdm_policy_t *p = c->p;
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_LOADED);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_CHUNKS);
    lua_pushcfunction(L, mdm__open_mdm);
    lua_call(L, 0, 0);
    lua_pushcfunction(L, require_fn);
    lua_setglobal(L, "require");

    /* The library's sources wait for their first require: a module no
     * policy uses is not compiled (nor can its errors fail the load). */
    lua_newtable(L);
    for (size_t i = 0; i < c->snap->n; i++) {
        const pfile_t *f = &c->snap->v[i];
        if (strncmp(f->name, LIB_PREFIX, strlen(LIB_PREFIX)) == 0) {
            lua_pushlstring(L, f->data, f->len);
            lua_setfield(L, -2, f->name);
        }
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_LIBSRC);

    /* Compile every file, so that a syntax error anywhere is found now. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_CHUNKS);
    for (size_t i = 0; i < c->snap->n; i++) {
        const pfile_t *f = &c->snap->v[i];
        if (strncmp(f->name, LIB_PREFIX, strlen(LIB_PREFIX)) == 0)
            continue;
        char *chunkname = mdm_sprintf("@%s", f->name);
        int status = luaL_loadbufferx(L, f->data, f->len, chunkname, "t");
        mdm_free(chunkname);
        if (status != LUA_OK)
            return lua_error(L);
        lua_setfield(L, -2, f->name);
    }
    lua_pop(L, 1);

    lua_pushcfunction(L, require_fn);
    lua_pushliteral(L, "init");
    lua_call(L, 1, 1);
    int t = lua_gettop(L);
    if (!lua_istable(L, t))
        return luaL_error(L, "init.lua: must return a table of hooks (got %s)",
                          lua_type(L, t) == LUA_TBOOLEAN ? "nothing" : luaL_typename(L, t));
    /* Keys first, so that a misspelt hook is reported as such. */
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "init.lua: the returned table has a %s key; only hook names "
                                 "and \"name\" are allowed",
                              luaL_typename(L, -2));
        const char *k = lua_tostring(L, -2);
        bool known = false;
        for (size_t i = 0; table_keys[i]; i++)
            known = known || strcmp(k, table_keys[i]) == 0;
        if (!known) {
            const char *s = suggest(k, table_keys);
            return luaL_error(L, "init.lua: unknown hook \"%s\" in the returned table%s%s%s", k,
                              s ? " (did you mean \"" : "", s ? s : "", s ? "\"?)" : "");
        }
        lua_pop(L, 1);
    }
    for (int h = 0; h < MDM_POLICY_HOOK__COUNT; h++) {
        int type = lua_getfield(L, t, hook_names[h]);
        if (type == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        if (h == MDM_POLICY_HOOK_PROFILES && type == LUA_TTABLE) {
            validate_profiles_table(L, c, lua_gettop(L));
            /* A copy the policy cannot reach: what was checked against
             * the store at load is what every call reads. */
            copy_profiles_table(L, lua_gettop(L));
            lua_remove(L, -2);
            p->profiles_ref = luaL_ref(L, LUA_REGISTRYINDEX);
            p->hooks |= 1u << h;
            continue;
        }
        if (type != LUA_TFUNCTION)
            return luaL_error(L, "init.lua: hook \"%s\" must be a function%s (got %s)",
                              hook_names[h],
                              h == MDM_POLICY_HOOK_PROFILES ? " or a table" : "",
                              luaL_typename(L, -1));
        p->hook_ref[h] = luaL_ref(L, LUA_REGISTRYINDEX);
        p->hooks |= 1u << h;
    }
    if (lua_getfield(L, t, "name") != LUA_TNIL) {
        size_t len = 0;
        const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        bool ok = name != NULL && len > 0 && len < sizeof(p->name);
        for (size_t i = 0; ok && i < len; i++)
            ok = isalnum((unsigned char)name[i]) || strchr("_-.", name[i]) != NULL;
        if (!ok)
            return luaL_error(L, "init.lua: name must be 1 to 64 letters, digits, '_', '-' or "
                                 "'.' (it is the mdm.kv namespace)");
        snprintf(p->name, sizeof(p->name), "%s", name);
    }
    return 0;
}

struct profile_check {
    const mdm_strlist_t *ids;
    const char *missing;
};

static int profile_check_txn(mdm_txn_t *txn, void *arg)
{
    struct profile_check *pc = arg;
    for (size_t i = 0; i < pc->ids->n; i++) {
        mdm_val_t v;
        int rc = mdm_txn_get(txn, MDM_T_PROFILES, MDM_VAL_STR(pc->ids->v[i]), &v);
        if (rc == MDM_ENOTFOUND) {
            pc->missing = pc->ids->v[i];
            return 0;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int kv_reset_protected(lua_State *L)
{
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_KVMEM);
    return 0;
}

static const char *default_lib_dir(void)
{
    const char *env = getenv("MOONMDM_LUA_LIB");
    return env && env[0] ? env : MOONMDM_SOURCE_DIR "/lua/lib";
}

int mdm__policy_load(const mdm_policy_settings_t *s, int mode, const char *test_dir,
                     mdm_policy_t **out, mdm_policy_error_t *e)
{
    *out = NULL;
    if (e != NULL)
        memset(e, 0, sizeof(*e));
    snapshot_t snap = {0};
    load_ctx_t c = {0};
    mdm_policy_t *p = NULL;
    char msg[1024];
    int rc = read_tree(s->dir, "", 0, true, &snap, e);
    if (rc != 0)
        goto out;
    bool have_init = false;
    for (size_t i = 0; i < snap.n; i++)
        have_init = have_init || strcmp(snap.v[i].name, "init.lua") == 0;
    if (!have_init) {
        rc = set_error(e, MDM_ENOTFOUND, "init.lua", 0, "missing (the entry point of the "
                                                        "policy set: it returns the hooks)");
        goto out;
    }

    p = policy_alloc();
    p->mode = mode;
    p->dir = mdm_strdup(s->dir);
    p->lib_dir = mdm_strdup(s->lib_dir ? s->lib_dir : default_lib_dir());
    p->test_dir = test_dir ? mdm_strdup(test_dir) : NULL;
    rc = read_lib(p->lib_dir, &snap, e);
    if (rc != 0)
        goto out;
    p->store = mode == MDM__MODE_SERVER ? s->store : NULL;
    p->decision_log = p->store != NULL && s->decision_log;
    p->log_sink = p->decision_log ? s->log_sink : NULL;
    p->decision_log_all = s->decision_log_all;
    p->instructions = s->instructions ? s->instructions : DEFAULT_INSTRUCTIONS;
    p->load_budget_ns = (s->load_budget_ms ? s->load_budget_ms : DEFAULT_LOAD_BUDGET_MS) * 1000000ull;
    for (int h = 0; h < MDM_POLICY_HOOK__COUNT; h++)
        p->budget_ns[h] = (s->budget_ms[h] ? s->budget_ms[h] : DEFAULT_BUDGET_MS) * 1000000ull;
    p->budget_ns[MDM_POLICY_HOOK_SELF_TEST] = p->load_budget_ns;
    if (mode == MDM__MODE_TEST)
        p->frozen_now = 1704067200.0; /* 2024-01-01T00:00:00Z */
    policy_metrics(p);
    rc = mdm__sandbox_open(&p->sb, s->memory_max ? s->memory_max : DEFAULT_MEMORY, msg,
                           sizeof(msg));
    if (rc != 0) {
        rc = set_error(e, MDM_EPOLICY, "", 0, "%s", msg);
        goto out;
    }
    *(mdm_policy_t **)lua_getextraspace(p->sb.L) = p;

    /* In tests, helper modules of the tests' directory may be required. */
    if (mode == MDM__MODE_TEST && test_dir != NULL) {
        DIR *d = opendir(test_dir);
        struct dirent *ent;
        while (d != NULL && (ent = readdir(d)) != NULL) {
            size_t n = strlen(ent->d_name);
            if (ent->d_name[0] == '.' || n < 5 || strcmp(ent->d_name + n - 4, ".lua") != 0 ||
                (n > 9 && strcmp(ent->d_name + n - 9, "_test.lua") == 0) ||
                !file_name_ok(ent->d_name))
                continue;
            char *full = mdm_sprintf("%s/%s", test_dir, ent->d_name);
            char *data = NULL;
            size_t len = 0;
            if (read_file(full, FILE_MAX, &data, &len) == 0) {
                snap.v = mdm_realloc(snap.v, (snap.n + 1) * sizeof(*snap.v));
                snap.v[snap.n++] = (pfile_t){.name = mdm_sprintf("(tests)/%s", ent->d_name),
                                             .data = data, .len = len};
            }
            mdm_free(full);
        }
        if (d != NULL)
            closedir(d);
    }

    c.p = p;
    c.snap = &snap;
    mdm__call_t call = {.hook = -1, .kv = MDM__KV_NONE};
    rc = mdm__policy_exec(p, load_protected, &c, p->load_budget_ns,
                          p->instructions * LOAD_INSN_FACTOR, &call, msg, sizeof(msg));
    if (rc != 0) {
        if (e != NULL)
            mdm__policy_error_parse(msg, e);
        goto out;
    }
    if (c.profile_ids.n > 0 && p->store != NULL) {
        struct profile_check pc = {.ids = &c.profile_ids};
        rc = mdm_store_view(p->store, profile_check_txn, &pc);
        if (rc != 0) {
            rc = set_error(e, MDM_EIO, "init.lua", 0, "profiles: cannot read the store: %s",
                           mdm_strerror(rc));
            goto out;
        }
        if (pc.missing != NULL) {
            rc = set_error(e, MDM_EPOLICY, "init.lua", 0,
                           "profiles: profile \"%s\" is not in the store (upload it first)",
                           pc.missing);
            goto out;
        }
    }
    if (mdm_policy_has_hook(p, MDM_POLICY_HOOK_SELF_TEST)) {
        mdm__call_t tmpl = {.kv = MDM__KV_MEMORY};
        mdm__hook_input_t in = {0};
        mdm_policy_decision_t d;
        mdm__policy_call(p, MDM_POLICY_HOOK_SELF_TEST, &tmpl, &in, false, &d);
        if (d.status != MDM_POLICY_OK) {
            if (e != NULL) {
                mdm__policy_error_parse(d.error, e);
                char m[sizeof(e->message) + 32];
                snprintf(m, sizeof(m), "self_test failed: %s", e->message);
                snprintf(e->message, sizeof(e->message), "%.*s", (int)sizeof(e->message) - 1, m);
            }
            mdm_policy_decision_free(&d);
            rc = MDM_EPOLICY;
            goto out;
        }
        mdm_policy_decision_free(&d);
        /* What self_test wrote stays out of the hooks' view. */
        mdm__call_t call2 = {.hook = -1, .kv = MDM__KV_NONE};
        rc = mdm__policy_exec(p, kv_reset_protected, NULL, p->load_budget_ns, 0, &call2, msg,
                              sizeof(msg));
        if (rc != 0) {
            rc = set_error(e, MDM_EPOLICY, "", 0, "%s", msg);
            goto out;
        }
    }
    snapshot_revision(&snap, p->revision);
    for (size_t i = 0; i < snap.n; i++)
        if (set_file(&snap.v[i]))
            mdm__strlist_push(&p->files, snap.v[i].name);
    p->loaded_at_ms = mdm_now_ms();
    lua_gc(p->sb.L, LUA_GCCOLLECT, 0);
    *out = p;
    p = NULL;
    rc = 0;
out:
    mdm_policy_release(p);
    mdm__strlist_free(&c.profile_ids);
    snapshot_free(&snap);
    return rc;
}

int mdm_policy_load(const mdm_policy_settings_t *s, mdm_policy_t **out, mdm_policy_error_t *e)
{
    return mdm__policy_load(s, s->store ? MDM__MODE_SERVER : MDM__MODE_CHECK, NULL, out, e);
}

/* ---- decisions ----------------------------------------------------------------------- */

static void decision_init(mdm_policy_decision_t *d)
{
    memset(d, 0, sizeof(*d));
    d->commands = plist_new_array();
    d->facts = plist_new_dict();
}

void mdm_policy_decision_free(mdm_policy_decision_t *d)
{
    if (d == NULL)
        return;
    mdm_free(d->user);
    mdm_free(d->reason);
    mdm__strlist_free(&d->groups);
    mdm__strlist_free(&d->names);
    plist_free(d->commands);
    plist_free(d->facts);
    plist_free(d->respond);
    memset(d, 0, sizeof(*d));
}

/* Drops what a failed or absent hook may have left and puts the
 * fail-closed decision in its place. */
static void decision_fail_closed(mdm_policy_decision_t *d, int hook, const char *msgtype)
{
    mdm_free(d->user);
    d->user = NULL;
    mdm_free(d->reason);
    d->reason = NULL;
    mdm__strlist_free(&d->groups);
    mdm__strlist_free(&d->names);
    plist_free(d->commands);
    plist_free(d->facts);
    plist_free(d->respond);
    d->respond = NULL;
    d->commands = plist_new_array();
    d->facts = plist_new_dict();
    d->allow = false;
    d->scep = MDM_POLICY_SCEP_DENY;
    d->reject = d->status == MDM_POLICY_FAILED && hook == MDM_POLICY_HOOK_CHECKIN &&
                msgtype != NULL && strcmp(msgtype, "Authenticate") == 0;
}

static void put_strlist(plist_t dict, const char *key, const mdm_strlist_t *l)
{
    plist_t a = plist_new_array();
    for (size_t i = 0; i < l->n; i++)
        plist_array_append_item(a, plist_new_string(l->v[i]));
    plist_dict_set_item(dict, key, a);
}

plist_t mdm__decision_to_plist(int hook, const mdm_policy_decision_t *d, bool with_status)
{
    static const char *const scep_names[] = {"deny", "issue", "pending"};
    plist_t o = plist_new_dict();
    if (with_status) {
        mdm_pl_set_str(o, "status", mdm_policy_status_name(d->status));
        if (d->status == MDM_POLICY_FAILED)
            mdm_pl_set_str(o, "error", d->error);
    }
    switch (hook) {
    case MDM_POLICY_HOOK_AUTHENTICATE:
        mdm_pl_set_bool(o, "allow", d->allow);
        mdm_pl_set_str(o, "user", d->user);
        put_strlist(o, "groups", &d->groups);
        mdm_pl_set_str(o, "reason", d->reason);
        break;
    case MDM_POLICY_HOOK_SCEP:
        mdm_pl_set_str(o, "decision", scep_names[d->scep]);
        mdm_pl_set_str(o, "reason", d->reason);
        break;
    case MDM_POLICY_HOOK_CHECKIN:
        mdm_pl_set_bool(o, "reject", d->reject);
        mdm_pl_set_str(o, "reason", d->reason);
        plist_dict_set_item(o, "commands", plist_copy(d->commands));
        if (d->respond != NULL && with_status) {
            plist_dict_set_item(o, "respond", plist_copy(d->respond));
        } else if (d->respond != NULL) {
            /* The decision log names the answer's keys only: an AuthToken
             * or TokenData is a secret. */
            plist_t keys = plist_new_array();
            plist_dict_iter it = NULL;
            plist_dict_new_iter(d->respond, &it);
            for (;;) {
                char *k = NULL;
                plist_t v = NULL;
                plist_dict_next_item(d->respond, it, &k, &v);
                if (k == NULL)
                    break;
                plist_array_append_item(keys, plist_new_string(k));
                free(k);
            }
            free(it);
            plist_dict_set_item(o, "respond_keys", keys);
        }
        break;
    case MDM_POLICY_HOOK_GROUPS:
        put_strlist(o, "groups", &d->names);
        break;
    case MDM_POLICY_HOOK_PROFILES:
        put_strlist(o, "profiles", &d->names);
        break;
    case MDM_POLICY_HOOK_CONNECT:
        plist_dict_set_item(o, "commands", plist_copy(d->commands));
        break;
    case MDM_POLICY_HOOK_RESULT:
        plist_dict_set_item(o, "commands", plist_copy(d->commands));
        plist_dict_set_item(o, "facts", plist_copy(d->facts));
        break;
    default:
        break;
    }
    return o;
}

/* ---- the device table ---------------------------------------------------------------- */

static void set_field_str(lua_State *L, const char *key, const char *v)
{
    if (v == NULL)
        return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, key);
}

/* The device view is made field by field on first read: a hook reads two
 * or three of its fields, and building all of them (four nested read-only
 * tables among them) cost more than the rest of a connect hook call. The
 * real table's metatable (shared) makes a field from the C record, keeps
 * it in the table, and makes all of them before the table is walked
 * (__fill, for pairs and conversions). The records live only for the call:
 * afterwards a field not yet made raises an error that says so. */

/* What a view made on first read is made from: C data that lives only for
 * the call (a userdata, kept by the registry until the call returns). */
typedef struct view_src {
    const void *p; /* NULL once the call has returned */
} view_src_t;

/* Only their addresses are used: registry keys of the metatable of device
 * tables, of the metatable of message tables, and of the weak-keyed table
 * real view table -> view_src_t. */
static const char dev_mt_key = 0;
static const char msg_mt_key = 0;
static const char view_srcs_key = 0;

/* Binds the real view table on the top of the stack to p for the call;
 * *ref gets a registry reference to the source, for end_view(). */
static void bind_view(lua_State *L, const void *p, int *ref)
{
    luaL_checkstack(L, 4, NULL);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &view_srcs_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &view_srcs_key);
    }
    lua_pushvalue(L, -2);
    view_src_t *src = lua_newuserdatauv(L, sizeof(*src), 0);
    src->p = p;
    lua_pushvalue(L, -1);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawset(L, -3); /* srcs[real] = src */
    lua_pop(L, 1);
}

/* The source of the real view table at idx, NULL once its call returned. */
static const void *view_source(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &view_srcs_key);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    const view_src_t *src = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return src != NULL ? src->p : NULL;
}

/* Ends a view at the end of its call: later reads of fields not made
 * raise. */
static void end_view(lua_State *L, int ref)
{
    if (ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    view_src_t *src = lua_touserdata(L, -1);
    if (src != NULL)
        src->p = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

/* Gets (creating on first use) the shared metatable of views kept under
 * key, whose __index and __fill are the given functions. */
static void push_view_mt(lua_State *L, const char *key, lua_CFunction index, lua_CFunction fill)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, fill);
    lua_setfield(L, -2, "__fill");
    lua_pushliteral(L, "read-only");
    lua_setfield(L, -2, "__metatable");
    lua_pushboolean(L, 1);
    lua_rawsetp(L, -2, &mdm__fill_mark);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

static const char *const dev_facts[] = {"serial",        "model",       "model_name",
                                        "product",       "os_version",  "build_version",
                                        "device_name",   NULL};
static const char *const dev_fields[] = {
    "udid",        "id",          "serial",        "model",         "model_name",
    "product",     "os_version",  "build_version", "device_name",   "type",
    "user",        "enrolled_at", "last_seen",     "token_updates", "first_checkin",
    "groups",      "tags",        "facts",         "installed_profiles", NULL};

static bool in_list(const char *const *list, const char *k)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], k) == 0)
            return true;
    return false;
}

static void push_seconds(lua_State *L, int64_t ms)
{
    if (ms > 0)
        lua_pushnumber(L, (double)ms / 1000.0);
    else
        lua_pushnil(L);
}

static void push_str_or_nil(lua_State *L, const char *v)
{
    if (v != NULL)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
}

/* installed_profiles: identifier -> hash as text (data hashes in hex). */
static void push_installed(lua_State *L, plist_t installed)
{
    lua_newtable(L);
    if (installed != NULL && plist_get_node_type(installed) == PLIST_DICT) {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(installed, &it);
        for (;;) {
            char *key = NULL;
            plist_t v = NULL;
            plist_dict_next_item(installed, it, &key, &v);
            if (key == NULL)
                break;
            char hex[129] = "";
            const char *val = hex;
            if (plist_get_node_type(v) == PLIST_DATA) {
                uint64_t len = 0;
                const char *data = plist_get_data_ptr(v, &len);
                if (len <= 64)
                    mdm_hex_encode(hex, data, (size_t)len);
            } else if (plist_get_node_type(v) == PLIST_STRING) {
                val = plist_get_string_ptr(v, NULL);
            }
            /* Copy both into locals before Lua can raise (key is malloc'd). */
            char k[NAME_BYTES + 1];
            snprintf(k, sizeof(k), "%s", key);
            free(key);
            char vv[256];
            snprintf(vv, sizeof(vv), "%s", val ? val : "");
            lua_pushstring(L, vv);
            lua_setfield(L, -2, k);
        }
        free(it);
    }
    mdm__make_readonly(L);
}

/* Pushes the read-only copy of a plist container (an empty read-only table
 * when p is NULL or of another type). */
static void push_container(lua_State *L, plist_t p, plist_type want)
{
    if (p != NULL && plist_get_node_type(p) == want) {
        mdm__push_plist(L, p, true);
    } else {
        lua_newtable(L);
        mdm__make_readonly(L);
    }
}

/* d's device record; load: read it now if it is read on first use. */
static plist_t dev_record(const mdm_policy_device_t *d, bool load)
{
    if (d->device != NULL || d->device_record == NULL)
        return d->device;
    return d->device_record(d->record_arg, load);
}

static bool needs_record(const char *k)
{
    return in_list(dev_facts, k) || strcmp(k, "groups") == 0 || strcmp(k, "tags") == 0 ||
           strcmp(k, "facts") == 0;
}

/* Pushes field k (one of dev_fields) of d, nil when it has none. */
static void push_dev_field(lua_State *L, const mdm_policy_device_t *d, const char *k)
{
    /* The enrollment record: read in place when the caller has it so, else
     * its tree (or none). */
    mdm_rec_t own, *e = d->enrollment_rec;
    if (e == NULL) {
        mdm_rec_init_tree(&own, d->enrollment);
        e = &own;
    }
    bool have = d->enrollment_rec != NULL || d->enrollment != NULL;
    char buf[MDM_EID_MAX + 1];
    plist_t dev = needs_record(k) && !(strcmp(k, "groups") == 0 && d->groups != NULL)
                      ? dev_record(d, true)
                      : NULL;
    if (strcmp(k, "udid") == 0) {
        char udid[MDM_EID_MAX + 1];
        const char *did = have ? mdm_rec_str(e, "device_id", buf, sizeof(buf)) : NULL;
        snprintf(udid, sizeof(udid), "%s", did ? did : d->eid);
        if (did == NULL && strchr(udid, ':') != NULL)
            *strchr(udid, ':') = '\0';
        lua_pushstring(L, udid);
    } else if (strcmp(k, "id") == 0) {
        lua_pushstring(L, d->eid);
    } else if (in_list(dev_facts, k)) {
        push_str_or_nil(L, dev ? mdm_pl_str(dev, k) : NULL);
    } else if (strcmp(k, "type") == 0) {
        const char *type = have ? mdm_rec_str(e, "type", buf, sizeof(buf)) : NULL;
        lua_pushstring(L, type ? type : "device");
    } else if (strcmp(k, "user") == 0) {
        push_str_or_nil(L, have ? mdm_rec_str(e, "user", buf, sizeof(buf)) : NULL);
    } else if (strcmp(k, "enrolled_at") == 0) {
        push_seconds(L, have ? mdm_rec_int(e, "enrolled_at", 0) : 0);
    } else if (strcmp(k, "last_seen") == 0) {
        push_seconds(L, d->seen_at_ms ? d->seen_at_ms : have ? mdm_rec_int(e, "last_seen_at", 0) : 0);
    } else if (strcmp(k, "token_updates") == 0) {
        lua_pushinteger(L, have ? (lua_Integer)mdm_rec_uint(e, "token_updates", 0) : 0);
    } else if (strcmp(k, "first_checkin") == 0) {
        lua_pushboolean(L, d->first_checkin || (have && mdm_rec_bool(e, "new_enrollment", false)));
    } else if (strcmp(k, "groups") == 0) {
        plist_t g = d->groups ? d->groups : dev ? plist_dict_get_item(dev, "groups") : NULL;
        push_container(L, g, PLIST_ARRAY);
    } else if (strcmp(k, "tags") == 0) {
        push_container(L, dev ? plist_dict_get_item(dev, "tags") : NULL, PLIST_ARRAY);
    } else if (strcmp(k, "facts") == 0) {
        push_container(L, dev ? plist_dict_get_item(dev, "facts") : NULL, PLIST_DICT);
    } else if (strcmp(k, "installed_profiles") == 0) {
        push_installed(L, d->installed);
    } else {
        lua_pushnil(L);
    }
}

/* The records behind the real device table at idx; raises an error naming
 * field k when its call has returned. */
static const mdm_policy_device_t *dev_records(lua_State *L, int idx, const char *k)
{
    const mdm_policy_device_t *d = view_source(L, idx);
    if (d == NULL)
        luaL_error(L,
                   "device.%s read after the hook call that received the device returned "
                   "(a device table is valid during its call only: copy what you keep)",
                   k);
    return d;
}

/* __index of a real device table: makes field k and keeps it. */
static int dev_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING || !in_list(dev_fields, lua_tostring(L, 2)))
        return 0;
    const char *k = lua_tostring(L, 2);
    push_dev_field(L, dev_records(L, 1, k), k);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* __fill: makes every field not made yet (a read through __index makes
 * and keeps it). */
static int dev_fill(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    for (size_t i = 0; dev_fields[i]; i++) {
        lua_getfield(L, 1, dev_fields[i]);
        lua_pop(L, 1);
    }
    return 0;
}

/* Pushes the read-only device view of d; *ref gets a registry reference to
 * its source, which end_view() clears when the call returns. */
static void push_device(lua_State *L, const mdm_policy_device_t *d, int *ref)
{
    luaL_checkstack(L, 8, NULL);
    lua_createtable(L, 0, 4);
    push_view_mt(L, &dev_mt_key, dev_index, dev_fill);
    lua_setmetatable(L, -2);
    bind_view(L, d, ref);
    mdm__make_readonly(L);
}

/* The message a hook receives (check-in message, report, result) is made
 * the same way, key by key on first read: a report can be megabytes (an
 * InstalledApplicationList of thousands of apps), and a connect hook that
 * reads report.Status would otherwise pay for a table of every app, on the
 * loop and out of the policy's memory. A key's value is made whole when
 * first read. */

/* __index of a real message table: makes the value of key k and keeps it. */
static int msg_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    const char *k = lua_tostring(L, 2);
    plist_t msg = (plist_t)view_source(L, 1);
    if (msg == NULL)
        return luaL_error(L,
                          "message field '%s' read after the hook call that received the message "
                          "returned (a message table is valid during its call only: copy what "
                          "you keep)",
                          k);
    plist_t v = plist_dict_get_item(msg, k);
    if (v == NULL)
        return 0;
    mdm__push_plist(L, v, true);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* __fill: makes every key not made yet. */
static int msg_fill(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    plist_t msg = (plist_t)view_source(L, 1);
    if (msg == NULL)
        return 0; /* what was read during the call is all there is */
    plist_dict_iter it = NULL;
    plist_dict_new_iter(msg, &it);
    for (;;) {
        char *key = NULL;
        plist_t v = NULL;
        plist_dict_next_item(msg, it, &key, &v);
        if (key == NULL)
            break;
        lua_pushstring(L, key);
        free(key); /* libplist's own malloc */
        lua_gettable(L, 1); /* made through msg_index when not made yet */
        lua_pop(L, 1);
    }
    free(it);
    return 0;
}

/* Pushes the read-only view of the dictionary msg (an empty table when it
 * is none); *ref as for push_device. */
static void push_message(lua_State *L, plist_t msg, int *ref)
{
    if (msg == NULL || plist_get_node_type(msg) != PLIST_DICT) {
        lua_newtable(L);
        mdm__make_readonly(L);
        return;
    }
    luaL_checkstack(L, 8, NULL);
    lua_createtable(L, 0, 4);
    push_view_mt(L, &msg_mt_key, msg_index, msg_fill);
    lua_setmetatable(L, -2);
    bind_view(L, msg, ref);
    mdm__make_readonly(L);
}

/* ---- one hook call ------------------------------------------------------------------- */

typedef struct run {
    mdm_policy_t *p;
    int hook;
    const mdm__hook_input_t *in;
    int nlua;                      /* arguments given as Lua values (tests) */
    mdm_policy_decision_t *out;
    mdm__call_t call;
    bool parsing;                  /* the hook returned: now checking its decision */
    int fn;                        /* the hook's stack slot (0: a profiles table) */
    char msgtype[64];              /* checkin: the MessageType */
    uint64_t duration_ns;
    uint64_t waited_ns;            /* past the time budget while the thread was not running */
    int outcome;
    int dev_ref;                   /* the device view's source (LUA_NOREF: none) */
    int msg_ref;                   /* the message view's source (LUA_NOREF: none) */
    bool deferred;                 /* stopped for a password hash made off the loop */
} run_t;

static int bad(lua_State *L, run_t *r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int bad(lua_State *L, run_t *r, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Where the hook is defined ("init.lua:10"), looked up only now. */
    char where[160] = "init.lua";
    lua_Debug ar;
    if (r->fn != 0) {
        lua_pushvalue(L, r->fn);
        if (lua_getinfo(L, ">S", &ar))
            snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.linedefined);
    }
    lua_pushfstring(L, "%s: %s returned a bad decision: %s", where, hook_names[r->hook], msg);
    return lua_error(L);
}

/* Fails for fields of a decision table other than the allowed ones. */
static void check_fields(lua_State *L, run_t *r, int t, const char *const *allowed)
{
    mdm__push_unwrapped(L, t);
    int real = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, real)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            bad(L, r, "the decision has a %s key", luaL_typename(L, -2));
        const char *k = lua_tostring(L, -2);
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            ok = ok || strcmp(k, allowed[i]) == 0;
        if (!ok) {
            const char *s = suggest(k, allowed);
            bad(L, r, "unknown field \"%s\"%s%s%s", k, s ? " (did you mean \"" : "", s ? s : "",
                s ? "\"?)" : "");
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Reads an optional string field into *out (a copy). A NUL byte would
 * cut the copy short ("alice\0admin" read as "alice"): such a string is
 * refused. */
static void opt_string(lua_State *L, run_t *r, int t, const char *key, size_t max, char **out)
{
    int type = lua_getfield(L, t, key);
    if (type == LUA_TSTRING) {
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        if (memchr(s, '\0', len) != NULL)
            bad(L, r, "%s must not contain a NUL byte", key);
        if (len > max)
            len = max;
        mdm_free(*out);
        *out = mdm_strndup(s, len);
    } else if (type != LUA_TNIL) {
        bad(L, r, "%s must be a string, got %s", key, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

static bool opt_bool(lua_State *L, run_t *r, int t, const char *key)
{
    int type = lua_getfield(L, t, key);
    bool v = false;
    if (type == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (type != LUA_TNIL)
        bad(L, r, "%s must be true or false, got %s", key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

/* A list of names at idx (nil allowed when nil_ok) into l, deduplicated. */
static void parse_names(lua_State *L, run_t *r, int idx, const char *what, bool nil_ok,
                        mdm_strlist_t *l)
{
    if (lua_isnil(L, idx) && nil_ok)
        return;
    if (!lua_istable(L, idx))
        bad(L, r, "%s must be a list of strings ({} for none), got %s", what,
            luaL_typename(L, idx));
    lua_Integer n = luaL_len(L, idx);
    if (n > MAX_NAMES)
        bad(L, r, "%s has more than %d entries", what, MAX_NAMES);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, idx, i);
        size_t len = 0;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (s == NULL || !group_name_ok(s, len))
            bad(L, r, "%s[%d] must be a string of 1 to %d bytes, got %s", what, (int)i,
                NAME_BYTES, s ? "another string" : luaL_typename(L, -1));
        if (!strlist_has(l, s))
            mdm__strlist_push(l, s);
        lua_pop(L, 1);
    }
}

static void parse_commands(lua_State *L, run_t *r, int t)
{
    int type = lua_getfield(L, t, "commands");
    int list = lua_gettop(L);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (type != LUA_TTABLE || mdm__is_command(L, list))
        bad(L, r, "commands must be a list of commands, got %s",
            type == LUA_TTABLE ? "one command (wrap it in { })" : luaL_typename(L, list));
    lua_Integer n = luaL_len(L, list);
    if (n > MAX_COMMANDS)
        bad(L, r, "more than %d commands", MAX_COMMANDS);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, list, i);
        char err[512];
        plist_t cmd = NULL;
        if (mdm__command_to_plist(L, -1, &cmd, err, sizeof(err)) != 0)
            bad(L, r, "commands[%d]: %s", (int)i, err);
        plist_array_append_item(r->out->commands, cmd);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The answer to UserAuthenticate or GetToken: a table of its keys. */
static void parse_respond(lua_State *L, run_t *r, int t)
{
    int type = lua_getfield(L, t, "respond");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    char err[300];
    plist_t a = NULL;
    if (type != LUA_TTABLE)
        bad(L, r, "respond must be a table (the answer's keys), got %s", luaL_typename(L, -1));
    if (mdm__lua_to_plist(L, -1, RESPOND_MAX, &a, err, sizeof(err)) != 0)
        bad(L, r, "respond.%s", err);
    if (plist_get_node_type(a) != PLIST_DICT) {
        plist_free(a);
        bad(L, r, "respond must be a table of named values, not a list");
    }
    plist_free(r->out->respond);
    r->out->respond = a;
    lua_pop(L, 1);
}

static void parse_facts(lua_State *L, run_t *r, int t)
{
    int type = lua_getfield(L, t, "facts");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    char err[300];
    plist_t f = NULL;
    if (type != LUA_TTABLE)
        bad(L, r, "facts must be a table, got %s", luaL_typename(L, -1));
    if (mdm__lua_to_plist(L, -1, FACTS_MAX, &f, err, sizeof(err)) != 0)
        bad(L, r, "facts.%s", err);
    if (plist_get_node_type(f) != PLIST_DICT) {
        plist_free(f);
        bad(L, r, "facts must be a table of named values, not a list");
    }
    plist_free(r->out->facts);
    r->out->facts = f;
    lua_pop(L, 1);
}

static void parse_decision(lua_State *L, run_t *r, int idx)
{
    mdm_policy_decision_t *d = r->out;
    int type = lua_type(L, idx);
    switch (r->hook) {
    case MDM_POLICY_HOOK_AUTHENTICATE: {
        static const char *const f[] = {"allow", "user", "groups", "reason", NULL};
        if (type != LUA_TTABLE)
            bad(L, r, "expected a table {allow = ..., user = ..., groups = ..., reason = ...}, "
                      "got %s", luaL_typename(L, idx));
        check_fields(L, r, idx, f);
        d->allow = opt_bool(L, r, idx, "allow");
        opt_string(L, r, idx, "user", NAME_BYTES, &d->user);
        opt_string(L, r, idx, "reason", REASON_BYTES, &d->reason);
        lua_getfield(L, idx, "groups");
        parse_names(L, r, lua_gettop(L), "groups", true, &d->groups);
        lua_pop(L, 1);
        break;
    }
    case MDM_POLICY_HOOK_SCEP: {
        static const char *const f[] = {"decision", "reason", NULL};
        static const char *const words[] = {"deny", "issue", "pending", NULL};
        const char *word = NULL;
        if (type == LUA_TSTRING) {
            word = lua_tostring(L, idx);
        } else if (type == LUA_TTABLE) {
            check_fields(L, r, idx, f);
            opt_string(L, r, idx, "reason", REASON_BYTES, &d->reason);
            if (lua_getfield(L, idx, "decision") == LUA_TSTRING)
                word = lua_tostring(L, -1);
        } else {
            bad(L, r, "expected \"issue\", \"deny\", \"pending\" or {decision = ..., reason = "
                      "...}, got %s", luaL_typename(L, idx));
        }
        int which = -1;
        for (int i = 0; word != NULL && words[i]; i++)
            if (strcmp(word, words[i]) == 0)
                which = i;
        if (which < 0)
            bad(L, r, "decision must be \"issue\", \"deny\" or \"pending\"");
        d->scep = (mdm_policy_scep_decision_t)which;
        break;
    }
    case MDM_POLICY_HOOK_CHECKIN: {
        static const char *const f[] = {"reject", "reason", "commands", "respond", NULL};
        if (type == LUA_TNIL)
            break;
        if (type != LUA_TTABLE)
            bad(L, r,
                "expected nil or {reject = ..., reason = ..., commands = {...}, respond = {...}}, "
                "got %s",
                luaL_typename(L, idx));
        check_fields(L, r, idx, f);
        d->reject = opt_bool(L, r, idx, "reject");
        opt_string(L, r, idx, "reason", REASON_BYTES, &d->reason);
        parse_commands(L, r, idx);
        parse_respond(L, r, idx);
        break;
    }
    case MDM_POLICY_HOOK_GROUPS:
        parse_names(L, r, idx, "the groups", false, &d->names);
        break;
    case MDM_POLICY_HOOK_PROFILES:
        parse_names(L, r, idx, "the profiles", false, &d->names);
        break;
    case MDM_POLICY_HOOK_CONNECT:
    case MDM_POLICY_HOOK_RESULT: {
        static const char *const fc[] = {"commands", NULL};
        static const char *const fr[] = {"commands", "facts", NULL};
        bool result = r->hook == MDM_POLICY_HOOK_RESULT;
        if (type == LUA_TNIL)
            break;
        if (type != LUA_TTABLE)
            bad(L, r, "expected nil or {commands = {...}%s}, got %s",
                result ? ", facts = {...}" : "", luaL_typename(L, idx));
        check_fields(L, r, idx, result ? fr : fc);
        parse_commands(L, r, idx);
        if (result)
            parse_facts(L, r, idx);
        break;
    }
    case MDM_POLICY_HOOK_SELF_TEST:
        if (!(type == LUA_TBOOLEAN && lua_toboolean(L, idx)))
            bad(L, r, "self_test must return true (or raise an error), got %s",
                type == LUA_TBOOLEAN ? "false" : luaL_typename(L, idx));
        break;
    }
}

static int push_args(lua_State *L, run_t *r)
{
    const mdm__hook_input_t *in = r->in;
    if (r->nlua > 0) {
        luaL_checkstack(L, r->nlua + 4, NULL);
        for (int i = 0; i < r->nlua; i++)
            mdm__push_readonly_copy(L, 2 + i);
        return r->nlua;
    }
    switch (r->hook) {
    case MDM_POLICY_HOOK_AUTHENTICATE: {
        const mdm_policy_auth_req_t *a = in->auth;
        if (a != NULL && a->extra != NULL && plist_get_node_type(a->extra) == PLIST_DICT) {
            mdm__push_plist(L, a->extra, false);
        } else {
            lua_newtable(L);
        }
        if (a != NULL) {
            set_field_str(L, "username", a->username);
            set_field_str(L, "password", a->password);
            set_field_str(L, "remote_addr", a->remote_addr);
            set_field_str(L, "user_agent", a->user_agent);
        }
        mdm__make_readonly(L);
        return 1;
    }
    case MDM_POLICY_HOOK_SCEP:
        push_container(L, in->a, PLIST_DICT);
        push_container(L, in->b, PLIST_DICT);
        return 2;
    case MDM_POLICY_HOOK_CHECKIN:
    case MDM_POLICY_HOOK_CONNECT:
    case MDM_POLICY_HOOK_RESULT:
        push_device(L, in->dev, &r->dev_ref);
        push_message(L, in->a, &r->msg_ref);
        return 2;
    case MDM_POLICY_HOOK_GROUPS:
        push_device(L, in->dev, &r->dev_ref);
        return 1;
    case MDM_POLICY_HOOK_PROFILES: {
        push_device(L, in->dev, &r->dev_ref);
        const mdm_strlist_t *g = in->groups;
        lua_createtable(L, g ? (int)g->n : 0, 0);
        for (size_t i = 0; g != NULL && i < g->n; i++) {
            lua_pushstring(L, g->v[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        mdm__make_readonly(L);
        return 2;
    }
    default:
        return 0;
    }
}

/* `profiles` as a table: the identifiers of "*" and of each group, in
 * that order, as a list on top of the stack. */
static void profiles_from_table(lua_State *L, mdm_policy_t *p, int groups)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->profiles_ref);
    int t = lua_gettop(L);
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_Integer n = 0;
    lua_Integer ng = lua_istable(L, groups) ? luaL_len(L, groups) : 0;
    for (lua_Integer g = 0; g <= ng; g++) {
        if (g == 0)
            lua_pushliteral(L, "*");
        else
            lua_geti(L, groups, g);
        if (lua_type(L, -1) != LUA_TSTRING || lua_rawget(L, t) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_Integer m = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= m; i++) {
            lua_rawgeti(L, -1, i);
            lua_rawseti(L, out, ++n);
        }
        lua_pop(L, 1);
    }
    lua_remove(L, t);
}

static int runner(lua_State *L)
{
    run_t *r = lua_touserdata(L, 1);
    mdm_policy_t *p = r->p;
    int fn = 0;
    if (p->hook_ref[r->hook] != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->hook_ref[r->hook]);
        fn = lua_gettop(L);
        /* Kept below the call's result for bad() to name the hook. */
        lua_pushvalue(L, fn);
        r->fn = fn;
        fn = lua_gettop(L);
    }
    int nargs = push_args(L, r);
    if (fn != 0) {
        lua_call(L, nargs, 1);
    } else {
        /* `profiles` given as a table. */
        profiles_from_table(L, p, lua_gettop(L));
    }
    r->parsing = true;
    parse_decision(L, r, lua_gettop(L));
    mdm__kv_commit(L);
    return 0;
}

/* The time budget of this run: the hook's, less what earlier runs of the
 * same request took when it is run again after a password hash (the
 * budget bounds the time the request holds the loop). 0: none. */
static uint64_t run_limit(const mdm_policy_t *p, const run_t *r)
{
    uint64_t budget = p->budget_ns[r->hook];
    uint64_t spent = r->call.pwcheck != NULL ? r->call.pwcheck->lua_ns : 0;
    if (budget == 0 || spent == 0)
        return budget;
    return spent < budget ? budget - spent : 1;
}

/* Runs the hook of r with r->nlua Lua arguments on top of L's stack. */
static void invoke(mdm_policy_t *p, lua_State *L, run_t *r)
{
    mdm__call_t *prev = p->call;
    p->call = &r->call;
    int base = lua_gettop(L) - r->nlua;
    lua_pushcfunction(L, runner);
    lua_insert(L, base + 1);
    lua_pushlightuserdata(L, r);
    lua_insert(L, base + 2);
    mdm__budget_t saved;
    uint64_t t0 = mdm_mono_ns();
    /* self_test runs with what loading has: 100 times the instructions. */
    uint64_t insns = r->hook == MDM_POLICY_HOOK_SELF_TEST ? p->instructions * LOAD_INSN_FACTOR
                                                          : p->instructions;
    uint64_t limit = run_limit(p, r);
    mdm__sandbox_begin(&p->sb, L, limit, insns, &saved);
    int status = lua_pcall(L, r->nlua + 1, 0, 0);
    /* The clock is read every so many instructions, and a library call
     * (a pattern match, a password hash) is one: a hook that ran past its
     * budget that way still fails, when it returns. */
    bool late = status == LUA_OK && p->sb.b.kill == MDM__KILL_NONE && limit > 0 &&
                mdm__sandbox_out_of_time(&p->sb);
    r->waited_ns = p->sb.b.waited_ns;
    int kill = mdm__sandbox_end(&p->sb, L, &saved);
    if (late)
        kill = MDM__KILL_TIME;
    if (kill == MDM__KILL_TIME)
        p->sb.last_limit_ns = p->budget_ns[r->hook];
    end_view(L, r->dev_ref);
    r->dev_ref = LUA_NOREF;
    end_view(L, r->msg_ref);
    r->msg_ref = LUA_NOREF;
    r->duration_ns = mdm_mono_ns() - t0;
    if (r->call.pwcheck != NULL) {
        r->call.pwcheck->lua_ns += r->duration_ns;
        r->duration_ns = r->call.pwcheck->lua_ns;
    }
    r->outcome = OUT_OK;
    r->deferred = kill == MDM__KILL_DEFER;
    if (!r->deferred && r->call.pwcheck != NULL)
        mdm__pwcheck_cancel(r->call.pwcheck);
    if (r->deferred) {
        /* Not a failure: the hook runs again once the hash is known. */
        r->out->status = MDM_POLICY_FAILED;
        snprintf(r->out->error, sizeof(r->out->error), "waiting for a password hash");
        mdm__kv_discard(L);
    } else if (status != LUA_OK || kill != MDM__KILL_NONE) {
        mdm__sandbox_error(&p->sb, L, status, kill, r->out->error, sizeof(r->out->error));
        r->out->status = MDM_POLICY_FAILED;
        bool overran = kill == MDM__KILL_TIME || kill == MDM__KILL_INSNS ||
                       kill == MDM__KILL_PATTERN;
        r->outcome = overran                                             ? OUT_TIMEOUT
                     : kill == MDM__KILL_MEMORY || status == LUA_ERRMEM ? OUT_MEMORY
                     : r->parsing                                        ? OUT_BAD_RETURN
                                                                         : OUT_ERROR;
        mdm__kv_discard(L);
        if (r->outcome == OUT_MEMORY)
            lua_gc(L, LUA_GCCOLLECT, 0);
    }
    lua_settop(L, base);
    p->call = prev;
}

/* ---- the decision log entry ----------------------------------------------------------- */

#define SUM_DEPTH 4
#define SUM_STRING 200
#define SUM_ITEMS 20
#define SUM_NODES 300

/* Keys whose values are never recorded. */
static bool secret_key(const char *k)
{
    static const char *const parts[] = {"password", "passcode", "challenge", "token", "secret",
                                        "pushmagic", "unlock", "credential", "privatekey",
                                        "digest", "bypass", NULL};
    if (strcasecmp(k, "pin") == 0)
        return true;
    /* The whole key, however long. */
    for (size_t i = 0; parts[i]; i++)
        if (strcasestr(k, parts[i]) != NULL)
            return true;
    return false;
}

/* The log entry is JSON text written straight into a buffer: building a
 * plist of the summary and serialising it cost more than the hook call. */
static void sum_json(mdm_buf_t *b, plist_t v, int depth, int *nodes)
{
    if (--*nodes < 0) {
        mdm_buf_puts(b, "\"...\"");
        return;
    }
    switch (plist_get_node_type(v)) {
    case PLIST_DICT: {
        if (depth >= SUM_DEPTH) {
            mdm_buf_puts(b, "\"{...}\"");
            return;
        }
        mdm_buf_putc(b, '{');
        bool first = true;
        plist_dict_iter it = NULL;
        plist_dict_new_iter(v, &it);
        uint32_t count = 0, total = plist_dict_get_size(v);
        for (;;) {
            char *key = NULL;
            plist_t x = NULL;
            plist_dict_next_item(v, it, &key, &x);
            if (key == NULL)
                break;
            if (count++ < SUM_ITEMS) {
                mdm_jsonw_key(b, &first, key);
                if (secret_key(key))
                    mdm_buf_puts(b, "\"(masked)\"");
                else
                    sum_json(b, x, depth + 1, nodes);
            }
            free(key);
        }
        free(it);
        if (total > SUM_ITEMS) {
            char more[48];
            snprintf(more, sizeof(more), "%u more", total - SUM_ITEMS);
            mdm_jsonw_member_str(b, &first, "...", more);
        }
        mdm_buf_putc(b, '}');
        return;
    }
    case PLIST_ARRAY: {
        if (depth >= SUM_DEPTH) {
            mdm_buf_puts(b, "\"[...]\"");
            return;
        }
        mdm_buf_putc(b, '[');
        uint32_t n = plist_array_get_size(v);
        for (uint32_t i = 0; i < n && i < SUM_ITEMS; i++) {
            if (i > 0)
                mdm_buf_putc(b, ',');
            sum_json(b, plist_array_get_item(v, i), depth + 1, nodes);
        }
        if (n > SUM_ITEMS)
            mdm_buf_printf(b, ",\"... %u more\"", n - SUM_ITEMS);
        mdm_buf_putc(b, ']');
        return;
    }
    case PLIST_STRING: {
        uint64_t len = 0;
        const char *str = plist_get_string_ptr(v, &len);
        if (len <= SUM_STRING) {
            mdm_jsonw_str(b, str, (size_t)len);
            return;
        }
        size_t cut = SUM_STRING;
        while (cut > 0 && ((unsigned char)str[cut] & 0xC0) == 0x80)
            cut--;
        char *t = mdm_sprintf("%.*s... (%llu bytes)", (int)cut, str, (unsigned long long)len);
        mdm_jsonw_str(b, t, strlen(t));
        mdm_free(t);
        return;
    }
    case PLIST_DATA: {
        uint64_t len = 0;
        plist_get_data_ptr(v, &len);
        mdm_buf_printf(b, "\"(%llu bytes of data)\"", (unsigned long long)len);
        return;
    }
    case PLIST_DATE:
        mdm_buf_printf(b, "%lld", (long long)mdm_plist_date_unix(v));
        return;
    case PLIST_BOOLEAN: {
        uint8_t x = 0;
        plist_get_bool_val(v, &x);
        mdm_buf_puts(b, x ? "true" : "false");
        return;
    }
    case PLIST_UINT: {
        uint64_t x = 0;
        plist_get_uint_val(v, &x);
        mdm_buf_printf(b, "%lld", (long long)(int64_t)x);
        return;
    }
    case PLIST_REAL: {
        double d = 0;
        plist_get_real_val(v, &d);
        mdm_jsonw_real(b, d);
        return;
    }
    default:
        mdm_buf_puts(b, "null");
        return;
    }
}

/* A member "key": summary of v ({} when v is NULL). */
static void sum_member(mdm_buf_t *b, bool *first, const char *key, plist_t v)
{
    mdm_jsonw_key(b, first, key);
    if (v == NULL) {
        mdm_buf_puts(b, "{}");
        return;
    }
    int nodes = SUM_NODES;
    sum_json(b, v, 0, &nodes);
}

static void strlist_member(mdm_buf_t *b, bool *first, const char *key, const mdm_strlist_t *l)
{
    mdm_jsonw_key(b, first, key);
    mdm_buf_putc(b, '[');
    for (size_t i = 0; i < l->n; i++) {
        if (i > 0)
            mdm_buf_putc(b, ',');
        mdm_jsonw_str(b, l->v[i], strlen(l->v[i]));
    }
    mdm_buf_putc(b, ']');
}

static void input_summary(mdm_buf_t *b, int hook, const mdm__hook_input_t *in)
{
    bool first = true;
    mdm_buf_putc(b, '{');
    switch (hook) {
    case MDM_POLICY_HOOK_AUTHENTICATE:
        if (in->auth != NULL) {
            mdm_jsonw_member_str(b, &first, "username", in->auth->username);
            mdm_jsonw_member_str(b, &first, "remote_addr", in->auth->remote_addr);
            mdm_jsonw_member_str(b, &first, "user_agent", in->auth->user_agent);
            if (in->auth->extra != NULL)
                sum_member(b, &first, "extra", in->auth->extra);
        }
        break;
    case MDM_POLICY_HOOK_SCEP:
        sum_member(b, &first, "csr", in->a);
        sum_member(b, &first, "ctx", in->b);
        break;
    default:
        if (in->dev != NULL) {
            const mdm_policy_device_t *d = in->dev;
            bool f = true;
            mdm_jsonw_key(b, &first, "device");
            mdm_buf_putc(b, '{');
            mdm_jsonw_member_str(b, &f, "id", d->eid);
            /* The device facts when the record was read (a hook that used
             * none of them does not read it for the log). */
            plist_t rec = dev_record(d, false);
            if (rec != NULL) {
                static const char *const keys[] = {"serial", "model", "os_version"};
                for (size_t i = 0; i < 3; i++)
                    mdm_jsonw_member_str(b, &f, keys[i], mdm_pl_str(rec, keys[i]));
            }
            mdm_buf_putc(b, '}');
        }
        if (in->a != NULL)
            sum_member(b, &first,
                       hook == MDM_POLICY_HOOK_CHECKIN   ? "msg"
                       : hook == MDM_POLICY_HOOK_CONNECT ? "report"
                                                         : "result",
                       in->a);
        if (in->groups != NULL)
            strlist_member(b, &first, "groups", in->groups);
        break;
    }
    mdm_buf_putc(b, '}');
}

struct log_put {
    unsigned char key[16];
    mdm_buf_t *val;
};

static int log_put_txn(mdm_txn_t *txn, void *arg)
{
    struct log_put *lp = arg;
    return mdm_txn_put(txn, MDM_T_DECISIONS, MDM_VAL(lp->key, 16),
                       MDM_VAL(lp->val->data, lp->val->len), 0);
}

/* At most this many entries wait in the sink; more are counted and dropped. */
#define LOG_SINK_MAX 50000

static int sink_flush_txn(mdm_txn_t *txn, void *arg)
{
    mdm__log_sink_t *sink = arg;
    const unsigned char *p = (const unsigned char *)sink->buf.data;
    const unsigned char *end = p + sink->buf.len;
    while (p + 20 <= end) {
        size_t len = (size_t)p[16] << 24 | (size_t)p[17] << 16 | (size_t)p[18] << 8 | p[19];
        if (p + 20 + len > end)
            break;
        int rc = mdm_txn_put(txn, MDM_T_DECISIONS, MDM_VAL(p, 16), MDM_VAL(p + 20, len), 0);
        if (rc != 0)
            return rc;
        p += 20 + len;
    }
    return 0;
}

size_t mdm__log_sink_flush(mdm_store_t *store, mdm__log_sink_t *sink)
{
    size_t n = sink->n;
    if (n == 0)
        return 0;
    int rc = mdm_store_update(store, sink_flush_txn, sink);
    if (rc != 0)
        mdm_log(MDM_LOG_WARN, NULL, "policy.decision_log_failed", "entries=%zu error=\"%s\"", n,
                mdm_strerror(rc));
    if (sink->dropped > 0)
        mdm_log(MDM_LOG_WARN, NULL, "policy.decision_log_dropped", "entries=%llu",
                (unsigned long long)sink->dropped);
    mdm_buf_reset(&sink->buf);
    if (sink->buf.cap > (4u << 20))
        mdm_buf_free(&sink->buf);
    sink->n = 0;
    sink->dropped = 0;
    return rc == 0 ? n : 0;
}

static int log_decision(mdm_policy_t *p, run_t *r, mdm_txn_t *txn)
{
    int64_t now = mdm_now_ms();
    mdm_buf_t b = MDM_BUF_INIT;
    bool first = true;
    mdm_buf_putc(&b, '{');
    mdm_jsonw_member_int(&b, &first, "time", now);
    mdm_jsonw_member_str(&b, &first, "hook", hook_names[r->hook]);
    mdm_jsonw_member_str(&b, &first, "revision", p->revision);
    if (r->in->dev != NULL)
        mdm_jsonw_member_str(&b, &first, "device", r->in->dev->eid);
    mdm_jsonw_member_str(&b, &first, "request", r->call.reqid);
    mdm_jsonw_member_str(&b, &first, "status", mdm_policy_status_name(r->out->status));
    if (r->out->status == MDM_POLICY_FAILED)
        mdm_jsonw_member_str(&b, &first, "error", r->out->error);
    mdm_jsonw_member_int(&b, &first, "duration_us", (int64_t)(r->duration_ns / 1000));
    mdm_jsonw_key(&b, &first, "input");
    input_summary(&b, r->hook, r->in);
    plist_t dec = mdm__decision_to_plist(r->hook, r->out, false);
    sum_member(&b, &first, "decision", dec);
    plist_free(dec);
    mdm_buf_putc(&b, '}');
    struct log_put lp = {.val = &b};
    mdm_be64_put(lp.key, (uint64_t)now);
    mdm_be64_put(lp.key + 8, p->seq++);
    int rc = 0;
    /* The server's entries wait in the sink and go to the store in one
     * transaction per timer tick (or before GET /v1/decisions reads them):
     * writing each into the request's transaction dirtied several more
     * pages per commit. Elsewhere (tests, tools) they go straight in. */
    if (p->log_sink != NULL) {
        mdm__log_sink_t *sink = p->log_sink;
        if (sink->n >= LOG_SINK_MAX) {
            sink->dropped++;
        } else {
            unsigned char len[4] = {(unsigned char)(b.len >> 24), (unsigned char)(b.len >> 16),
                                    (unsigned char)(b.len >> 8), (unsigned char)b.len};
            mdm_buf_append(&sink->buf, lp.key, 16);
            mdm_buf_append(&sink->buf, len, 4);
            mdm_buf_append(&sink->buf, b.data, b.len);
            sink->n++;
        }
    } else if (txn != NULL) {
        rc = log_put_txn(txn, &lp);
    } else {
        rc = mdm_store_update(p->store, log_put_txn, &lp);
    }
    mdm_buf_free(&b);
    if (rc != 0)
        mdm_log(MDM_LOG_WARN, r->call.reqid, "policy.decision_log_failed", "hook=%s error=\"%s\"",
                hook_names[r->hook], mdm_strerror(rc));
    return rc;
}

/* A connect or result call that changed nothing: it ran, returned no
 * command and no fact, and wrote nothing with mdm.kv. These come with
 * every report and every Idle of every device; recording each would turn
 * the decision log over within seconds on a busy server and hide the
 * decisions that did something (policy.decision_log_all records them
 * too). The calls metric counts them all. */
static bool decided_nothing(const run_t *r)
{
    if (r->hook != MDM_POLICY_HOOK_CONNECT && r->hook != MDM_POLICY_HOOK_RESULT)
        return false;
    const mdm_policy_decision_t *d = r->out;
    return d->status == MDM_POLICY_OK && r->call.kv_changes == 0 &&
           (d->commands == NULL || plist_array_get_size(d->commands) == 0) &&
           (d->facts == NULL || plist_dict_get_size(d->facts) == 0);
}

/* A probe that wants to write: its caller calls again in a transaction,
 * and that call is the one recorded. */
static bool called_again(const run_t *r)
{
    return r->call.probe && (r->call.kv_changes > 0 || (r->out->commands != NULL &&
                                                        plist_array_get_size(r->out->commands) > 0));
}

/* ---- the typed calls ------------------------------------------------------------------- */

static void report_failure(mdm_policy_t *p, run_t *r)
{
    mdm_policy_error_t pe;
    mdm__policy_error_parse(r->out->error, &pe);
    char fq[300], eq[700], iq[300];
    mdm_log(MDM_LOG_WARN, r->call.reqid, "policy.hook_failed",
            "hook=%s outcome=%s revision=%.12s eid=%s file=%s line=%d error=%s",
            hook_names[r->hook], outcome_names[r->outcome], p->revision,
            mdm_logq(iq, sizeof(iq), r->in->dev ? r->in->dev->eid : NULL),
            mdm_logq(fq, sizeof(fq), pe.file[0] ? pe.file : NULL), pe.line,
            mdm_logq(eq, sizeof(eq), pe.message));
}

int mdm__policy_call(mdm_policy_t *p, int hook, const mdm__call_t *tmpl,
                     const mdm__hook_input_t *in, bool log, mdm_policy_decision_t *out)
{
    decision_init(out);
    const char *msgtype = hook == MDM_POLICY_HOOK_CHECKIN && in->a ? mdm_pl_str(in->a, "MessageType")
                                                                  : NULL;
    if (!mdm_policy_has_hook(p, hook)) {
        out->status = MDM_POLICY_ABSENT;
        decision_fail_closed(out, hook, msgtype);
        return 0;
    }
    run_t r = {.p = p,
               .hook = hook,
               .in = in,
               .out = out,
               .call = *tmpl,
               .dev_ref = LUA_NOREF,
               .msg_ref = LUA_NOREF};
    r.call.hook = hook;
    int64_t now_ms = mdm_now_ms();
    if (p->mode == MDM__MODE_SERVER && p->suspended_until_ms[hook] > now_ms) {
        out->status = MDM_POLICY_FAILED;
        snprintf(out->error, sizeof(out->error),
                 "%s is paused for %lld ms after %d budget overruns in a row (revision %.12s)",
                 hook_names[hook], (long long)(p->suspended_until_ms[hook] - now_ms),
                 POLICY_STRIKES, p->revision);
        decision_fail_closed(out, hook, msgtype);
        mdm_metric_add(p->m_suspended[hook], 1);
        return 0;
    }
    invoke(p, p->sb.L, &r);
    if (r.deferred) {
        /* Nothing of this run counts: the caller hashes and calls again. */
        decision_fail_closed(out, hook, msgtype);
        return r.call.store_rc;
    }
    if (out->status == MDM_POLICY_FAILED) {
        decision_fail_closed(out, hook, msgtype);
        report_failure(p, &r);
    }
    if (r.waited_ns > 0 && log)
        mdm_log(MDM_LOG_WARN, tmpl->reqid, "policy.hook_waited",
                "hook=%s revision=%.12s ms=%llu waited_ms=%llu detail=\"past the time budget while "
                "the server's thread was not running (machine busy or paging): not counted\"",
                hook_names[hook], p->revision, (unsigned long long)(r.duration_ns / 1000000),
                (unsigned long long)(r.waited_ns / 1000000));
    if (p->mode == MDM__MODE_SERVER) {
        if (r.outcome == OUT_TIMEOUT || r.outcome == OUT_MEMORY) {
            if (++p->strikes[hook] >= POLICY_STRIKES) {
                p->suspended_until_ms[hook] = now_ms + POLICY_PAUSE_MS;
                p->strikes[hook] = 0;
                mdm_log(MDM_LOG_ERROR, tmpl->reqid, "policy.hook_paused",
                        "hook=%s revision=%.12s pause_ms=%d reason=\"%d budget overruns in a "
                        "row: failing closed without running it\"",
                        hook_names[hook], p->revision, POLICY_PAUSE_MS, POLICY_STRIKES);
            }
        } else {
            p->strikes[hook] = 0;
        }
    }
    mdm_metric_add(p->m_calls[hook][r.outcome], 1);
    mdm_histogram_observe_ns(p->m_latency[hook], r.duration_ns);
    if (log && p->mode == MDM__MODE_SERVER)
        mdm_metric_set(p->m_memory, (int64_t)p->sb.mem_used);
    int rc = r.call.store_rc;
    if (log && p->decision_log && hook != MDM_POLICY_HOOK_SELF_TEST &&
        !called_again(&r) && (p->decision_log_all || !decided_nothing(&r))) {
        int lrc = log_decision(p, &r, tmpl->txn);
        if (rc == 0 && tmpl->txn != NULL)
            rc = lrc;
    }
    return rc;
}

static int call_from_server(mdm_policy_t *p, int hook, mdm_txn_t *txn, const char *reqid,
                            const mdm__hook_input_t *in, mdm_policy_decision_t *out)
{
    mdm__call_t tmpl = {.reqid = reqid, .txn = txn};
    if (p->mode == MDM__MODE_SERVER) {
        tmpl.kv = txn != NULL ? MDM__KV_STORE : p->store ? MDM__KV_READONLY : MDM__KV_NONE;
        tmpl.pwcheck = in->auth != NULL ? in->auth->pwcheck : NULL;
    } else {
        tmpl.kv = MDM__KV_MEMORY;
    }
    return mdm__policy_call(p, hook, &tmpl, in, true, out);
}

int mdm_policy_authenticate(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                            const mdm_policy_auth_req_t *req, mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.auth = req};
    return call_from_server(p, MDM_POLICY_HOOK_AUTHENTICATE, txn, reqid, &in, out);
}

int mdm_policy_scep(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid, plist_t csr, plist_t ctx,
                    mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.a = csr, .b = ctx};
    return call_from_server(p, MDM_POLICY_HOOK_SCEP, txn, reqid, &in, out);
}

int mdm_policy_checkin(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                       const mdm_policy_device_t *dev, plist_t msg, mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.dev = dev, .a = msg};
    return call_from_server(p, MDM_POLICY_HOOK_CHECKIN, txn, reqid, &in, out);
}

int mdm_policy_groups(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                      const mdm_policy_device_t *dev, mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.dev = dev};
    return call_from_server(p, MDM_POLICY_HOOK_GROUPS, txn, reqid, &in, out);
}

int mdm_policy_profiles(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                        const mdm_policy_device_t *dev, const mdm_strlist_t *groups,
                        mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.dev = dev, .groups = groups};
    return call_from_server(p, MDM_POLICY_HOOK_PROFILES, txn, reqid, &in, out);
}

int mdm_policy_connect(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                       const mdm_policy_device_t *dev, plist_t report, mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.dev = dev, .a = report};
    return call_from_server(p, MDM_POLICY_HOOK_CONNECT, txn, reqid, &in, out);
}

int mdm_policy_connect_probe(mdm_policy_t *p, const char *reqid, const mdm_policy_device_t *dev,
                             plist_t report, mdm_policy_decision_t *out, bool *wants_write)
{
    mdm__hook_input_t in = {.dev = dev, .a = report};
    mdm__call_t tmpl = {.reqid = reqid, .txn = NULL, .kv_writes = json_array(), .probe = true};
    tmpl.kv = p->mode == MDM__MODE_SERVER && p->store != NULL ? MDM__KV_VIRTUAL : MDM__KV_MEMORY;
    int rc = mdm__policy_call(p, MDM_POLICY_HOOK_CONNECT, &tmpl, &in, true, out);
    *wants_write = json_array_size(tmpl.kv_writes) > 0 ||
                   (out->commands != NULL && plist_array_get_size(out->commands) > 0);
    json_decref(tmpl.kv_writes);
    return rc;
}

int mdm_policy_result(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                      const mdm_policy_device_t *dev, plist_t result, mdm_policy_decision_t *out)
{
    mdm__hook_input_t in = {.dev = dev, .a = result};
    return call_from_server(p, MDM_POLICY_HOOK_RESULT, txn, reqid, &in, out);
}

/* ---- devices from the store ----------------------------------------------------------- */

int mdm_policy_device_load(mdm_txn_t *txn, const char *eid, mdm_policy_device_t *out)
{
    memset(out, 0, sizeof(*out));
    plist_t e = NULL, d = NULL;
    int rc = mdm_enrollment_load(txn, eid, &e);
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    const char *did = e ? mdm_pl_str(e, "device_id") : NULL;
    int drc = mdm_device_load(txn, did ? did : eid, &d);
    if (drc != 0 && drc != MDM_ENOTFOUND) {
        plist_free(e);
        return drc;
    }
    if (e == NULL && d == NULL)
        return MDM_ENOTFOUND;
    out->eid = mdm_strdup(eid);
    out->enrollment = e;
    out->device = d;
    return 0;
}

void mdm_policy_device_free(mdm_policy_device_t *d)
{
    mdm_free((char *)d->eid);
    plist_free(d->enrollment);
    plist_free(d->device);
    plist_free(d->installed);
    plist_free(d->groups);
    memset(d, 0, sizeof(*d));
}

/* ---- mdm.test.call ------------------------------------------------------------------ */

int mdm__test_call(lua_State *L)
{
    mdm_policy_t *p = mdm__policy_of(L);
    const char *name = luaL_checkstring(L, 1);
    int hook = mdm_policy_hook_parse(name);
    if (hook < 0)
        return luaL_error(L, "mdm.test.call: unknown hook \"%s\"", name);
    int nargs = lua_gettop(L) - 1;
    run_t r = {.p = p, .hook = hook, .nlua = nargs, .dev_ref = LUA_NOREF, .msg_ref = LUA_NOREF};
    if (hook == MDM_POLICY_HOOK_CHECKIN && nargs >= 2 && lua_istable(L, 3)) {
        if (lua_getfield(L, 3, "MessageType") == LUA_TSTRING)
            snprintf(r.msgtype, sizeof(r.msgtype), "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    luaL_checkstack(L, nargs + 8, NULL);
    /* The writes of an enclosing hook stay apart from this call's. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING);
    mdm__kv_discard(L);
    for (int i = 0; i < nargs; i++)
        lua_pushvalue(L, 2 + i);
    mdm__hook_input_t in = {0};
    mdm_policy_decision_t out;
    decision_init(&out);
    r.in = &in;
    r.out = &out;
    r.call = (mdm__call_t){.hook = hook, .kv = MDM__KV_MEMORY};
    if (mdm_policy_has_hook(p, hook)) {
        invoke(p, L, &r);
        mdm_metric_add(p->m_calls[hook][r.outcome], 1);
    } else {
        lua_pop(L, nargs);
        out.status = MDM_POLICY_ABSENT;
    }
    if (out.status != MDM_POLICY_OK)
        decision_fail_closed(&out, hook, r.msgtype);
    lua_rawsetp(L, LUA_REGISTRYINDEX, MDM__REG_KVPENDING);
    plist_t d = mdm__decision_to_plist(hook, &out, true);
    mdm_policy_decision_free(&out);
    mdm__push_plist_owned(L, d, false);
    return 1;
}
