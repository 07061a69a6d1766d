/* MDM command schemas: lookup in the generated table, the JSON -> Command
 * builder, the Command validator and the command envelope. The builder and
 * the validator walk the schema and the value together, carrying the path
 * of the value for error messages ("Settings.Settings[1].Enabled"). */
#include "mdm/cmdschema.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdm/queue.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/plistjson.h"

/* libplist 2.2 has no plist_mem_free(): its strings go back with free(). */
static void plist_mem_release(void *p)
{
    free(p);
}

/* ---- lookup ---------------------------------------------------------------- */

const mdm_cmd_schema_t *mdm_cmdschema_find(const char *request_type)
{
    if (request_type == NULL)
        return NULL;
    size_t lo = 0, hi = mdm__cmd_schema_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(request_type, mdm__cmd_schemas[mid].request_type);
        if (c == 0)
            return &mdm__cmd_schemas[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t mdm_cmdschema_count(void)
{
    return mdm__cmd_schema_count;
}

const mdm_cmd_schema_t *mdm_cmdschema_at(size_t i)
{
    return i < mdm__cmd_schema_count ? &mdm__cmd_schemas[i] : NULL;
}

const mdm_schema_key_t *mdm_schema_key_find(const mdm_schema_key_t *keys, size_t n,
                                            const char *name)
{
    const mdm_schema_key_t *wild = NULL;
    for (size_t i = 0; i < n; i++) {
        if (keys[i].flags & MDM_SKF_WILDCARD)
            wild = &keys[i];
        else if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return wild;
}

const char *mdm_vtype_name(mdm_vtype_t t)
{
    switch (t) {
    case MDM_T_STRING: return "string";
    case MDM_T_INTEGER: return "integer";
    case MDM_T_REAL: return "real";
    case MDM_T_BOOLEAN: return "boolean";
    case MDM_T_DATE: return "date";
    case MDM_T_DATA: return "data";
    case MDM_T_ARRAY: return "array";
    case MDM_T_DICT: return "dictionary";
    case MDM_T_ANY: return "any";
    }
    return "?";
}

/* ---- suggestions ------------------------------------------------------------ */

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Case-insensitive Levenshtein distance; SIZE_MAX for words over 64 bytes. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = lower((unsigned char)a[i - 1]) == lower((unsigned char)b[j - 1]) ? 0 : 1;
            size_t best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Picks the candidate closest to word (case-insensitive edit distance, so
 * "Pin" finds "PIN" at distance 0) within a third of the word's length, at
 * least 1 and at most 4 edits; the first of equally close ones wins. */
typedef struct suggest {
    const char *word;
    size_t limit;
    size_t best_d;
    const char *best;
} suggest_t;

static void suggest_init(suggest_t *s, const char *word)
{
    size_t len = strlen(word);
    s->word = word;
    s->limit = len / 3 < 1 ? 1 : len / 3 > 4 ? 4 : len / 3;
    s->best_d = SIZE_MAX;
    s->best = NULL;
}

static void suggest_offer(suggest_t *s, const char *cand)
{
    size_t d = edit_distance(s->word, cand);
    if (d == SIZE_MAX)
        return;
    if (d <= s->limit && d < s->best_d) {
        s->best_d = d;
        s->best = cand;
    }
}

const char *mdm_cmdschema_suggest(const char *request_type)
{
    if (request_type == NULL)
        return NULL;
    suggest_t s;
    suggest_init(&s, request_type);
    for (size_t i = 0; i < mdm__cmd_schema_count; i++)
        suggest_offer(&s, mdm__cmd_schemas[i].request_type);
    return s.best;
}

/* ---- the walk --------------------------------------------------------------- */

typedef struct walk {
    mdm_err_t *err;
    char path[384];
    size_t len;
    size_t bytes; /* strings and data built so far */
} walk_t;

static void walk_init(walk_t *w, mdm_err_t *err, const char *root)
{
    w->err = err;
    w->len = 0;
    w->bytes = 0;
    int n = snprintf(w->path, sizeof(w->path), "%s", root);
    w->len = n < 0 ? 0 : (size_t)n < sizeof(w->path) ? (size_t)n : sizeof(w->path) - 1;
}

static size_t path_push(walk_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static size_t path_push(walk_t *w, const char *fmt, ...)
{
    size_t old = w->len;
    if (w->len + 1 >= sizeof(w->path))
        return old;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->path + w->len, sizeof(w->path) - w->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        w->len += (size_t)n < sizeof(w->path) - w->len ? (size_t)n : sizeof(w->path) - w->len - 1;
    return old;
}

static void path_pop(walk_t *w, size_t old)
{
    w->len = old;
    w->path[old] = '\0';
}

/* Sets the error "<path>: <what>". */
static int werr(walk_t *w, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int werr(walk_t *w, int code, const char *fmt, ...)
{
    char what[448];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return mdm_err_set(w->err, code, "%s: %s", w->path, what);
}

/* Appends s in double quotes, escaping quotes, backslashes and control
 * bytes, and cutting it after 64 bytes: the text comes from the caller and
 * ends up in logs. */
static void put_quoted(mdm_buf_t *b, const char *s)
{
    mdm_buf_putc(b, '"');
    size_t i = 0;
    for (; s[i] != '\0' && i < 64; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            mdm_buf_printf(b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            mdm_buf_printf(b, "\\x%02x", c);
        else
            mdm_buf_putc(b, (char)c);
    }
    if (s[i] != '\0')
        mdm_buf_puts(b, "...");
    mdm_buf_putc(b, '"');
}

/* "expected a string": the schema type as the caller's side writes it. */
static const char *expected(mdm_vtype_t t, bool json)
{
    switch (t) {
    case MDM_T_STRING: return "a string";
    case MDM_T_INTEGER: return "an integer";
    case MDM_T_REAL: return "a real";
    case MDM_T_BOOLEAN: return "a boolean";
    case MDM_T_DATE: return json ? "a date (an RFC 3339 string)" : "a date";
    case MDM_T_DATA: return json ? "data (a base64 string)" : "data";
    case MDM_T_ARRAY: return "an array";
    case MDM_T_DICT: return "a dictionary";
    case MDM_T_ANY: return "a value";
    }
    return "a value";
}

static int type_error(walk_t *w, mdm_vtype_t want, bool json, const char *got)
{
    return werr(w, MDM_EINVAL, "expected %s, got %s", expected(want, json), got);
}

static int depth_error(walk_t *w)
{
    return werr(w, MDM_ELIMIT, "nested deeper than %d levels", MDM_CMD_MAX_DEPTH);
}

/* `"y" is not one of "a", "b" (did you mean "b"?)`, the list cut short when
 * it would not fit in an error message. */
static int not_one_of(walk_t *w, const char *value, const char *const *vals, size_t n)
{
    mdm_buf_t b = MDM_BUF_INIT;
    suggest_t s;
    suggest_init(&s, value);
    put_quoted(&b, value);
    mdm_buf_puts(&b, " is not one of ");
    size_t shown = 0;
    for (size_t i = 0; i < n; i++) {
        suggest_offer(&s, vals[i]);
        if (b.len + strlen(vals[i]) > 260)
            continue;
        if (shown++)
            mdm_buf_puts(&b, ", ");
        put_quoted(&b, vals[i]);
    }
    if (shown < n)
        mdm_buf_printf(&b, ", ... (%zu more)", n - shown);
    if (s.best != NULL) {
        mdm_buf_puts(&b, " (did you mean ");
        put_quoted(&b, s.best);
        mdm_buf_puts(&b, "?)");
    }
    int rc = werr(w, MDM_EINVAL, "%s", b.data);
    mdm_buf_free(&b);
    return rc;
}

static int unknown_key(walk_t *w, const char *name, const mdm_schema_key_t *keys, size_t n)
{
    mdm_buf_t b = MDM_BUF_INIT;
    suggest_t s;
    suggest_init(&s, name);
    for (size_t i = 0; i < n; i++)
        if (!(keys[i].flags & MDM_SKF_WILDCARD))
            suggest_offer(&s, keys[i].name);
    mdm_buf_puts(&b, "unknown key ");
    put_quoted(&b, name);
    if (s.best != NULL) {
        mdm_buf_puts(&b, " (did you mean ");
        put_quoted(&b, s.best);
        mdm_buf_puts(&b, "?)");
    }
    int rc = werr(w, MDM_EINVAL, "%s", b.data);
    mdm_buf_free(&b);
    return rc;
}

static int missing_key(walk_t *w, const char *name)
{
    return werr(w, MDM_EINVAL, "missing required key \"%s\"", name);
}

static int unknown_request_type(mdm_err_t *err, const char *rt)
{
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_buf_puts(&b, "unknown RequestType ");
    put_quoted(&b, rt);
    const char *s = mdm_cmdschema_suggest(rt);
    if (s != NULL) {
        mdm_buf_puts(&b, " (did you mean ");
        put_quoted(&b, s);
        mdm_buf_puts(&b, "?)");
    }
    int rc = mdm_err_set(err, MDM_ENOTFOUND, "%s", b.data);
    mdm_buf_free(&b);
    return rc;
}

/* Checks a string against a key's rangelist (strings only: see the header). */
static int check_string_value(walk_t *w, const mdm_schema_key_t *k, const char *s)
{
    if (k->nvalues == 0 || (k->flags & MDM_SKF_VALUES_ADVISORY))
        return 0;
    for (size_t i = 0; i < k->nvalues; i++)
        if (strcmp(k->values[i], s) == 0)
            return 0;
    return not_one_of(w, s, k->values, k->nvalues);
}

static int count_bytes(walk_t *w, size_t n)
{
    w->bytes += n;
    if (w->bytes > MDM_CMD_MAX_BYTES)
        return werr(w, MDM_ELIMIT, "the command holds more than %u bytes", MDM_CMD_MAX_BYTES);
    return 0;
}

/* The form an element of a several-form array takes, by the value of the
 * discriminator member. */
static const mdm_schema_key_t *form_by_tag(const mdm_schema_key_t *arr, const char *tag)
{
    for (size_t i = 0; i < arr->nsub; i++) {
        const mdm_schema_key_t *f = &arr->sub[i];
        const mdm_schema_key_t *d = mdm_schema_key_find(f->sub, f->nsub, arr->discriminator);
        if (d != NULL && d->nvalues == 1 && strcmp(d->values[0], tag) == 0)
            return f;
    }
    return NULL;
}

/* Reports a discriminator value that names no form, listing the ones that do. */
static int bad_tag(walk_t *w, const mdm_schema_key_t *arr, const char *tag)
{
    const char **tags = mdm_calloc(arr->nsub, sizeof(*tags));
    size_t n = 0;
    for (size_t i = 0; i < arr->nsub; i++) {
        const mdm_schema_key_t *f = &arr->sub[i];
        const mdm_schema_key_t *d = mdm_schema_key_find(f->sub, f->nsub, arr->discriminator);
        if (d != NULL && d->nvalues == 1)
            tags[n++] = d->values[0];
    }
    size_t mark = path_push(w, ".%s", arr->discriminator);
    int rc = not_one_of(w, tag, tags, n);
    path_pop(w, mark);
    mdm_free(tags);
    return rc;
}

/* ---- JSON -> Command --------------------------------------------------------- */

static int build_value(walk_t *w, const mdm_schema_key_t *k, const json_t *j, int depth,
                       plist_t *out);

/* True when j nests containers more than budget levels deep (j itself, if a
 * container, is level 1). Recurses at most budget + 1 levels. */
static bool json_too_deep(const json_t *j, int budget)
{
    if (!json_is_object(j) && !json_is_array(j))
        return false;
    if (budget <= 0)
        return true;
    if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            if (json_too_deep(v, budget - 1))
                return true;
        }
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)j, key, v) {
        if (json_too_deep(v, budget - 1))
            return true;
    }
    return false;
}

/* A value of type <any>, whose own depth (if a container) is depth. */
static int build_any(walk_t *w, const json_t *j, int depth, plist_t *out)
{
    int budget = MDM_CMD_MAX_DEPTH - depth + 1;
    if (json_too_deep(j, budget))
        return depth_error(w);
    int rc = mdm_json_to_plist_checked(j, w->path, budget, out, w->err);
    if (rc != 0)
        return rc == MDM_ELIMIT ? rc : MDM_EINVAL;
    return 0;
}

/* Adds obj's members to dict per keys. top: the Command itself, where
 * RequestType is skipped and an empty key list means "no keys"; elsewhere
 * a dictionary without listed keys takes anything. */
static int build_members(walk_t *w, const mdm_schema_key_t *keys, size_t nkeys,
                         const json_t *obj, int depth, bool top, plist_t dict)
{
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)obj, name, v) {
        if (top && strcmp(name, "RequestType") == 0)
            continue;
        const mdm_schema_key_t *k = mdm_schema_key_find(keys, nkeys, name);
        if (k == NULL && (top || nkeys > 0))
            return unknown_key(w, name, keys, nkeys);
        size_t mark = path_push(w, ".%s", name);
        plist_t pv = NULL;
        int rc = k ? build_value(w, k, v, depth + 1, &pv) : build_any(w, v, depth + 1, &pv);
        path_pop(w, mark);
        if (rc != 0)
            return rc;
        plist_dict_set_item(dict, name, pv);
    }
    for (size_t i = 0; i < nkeys; i++) {
        const mdm_schema_key_t *k = &keys[i];
        if ((k->flags & MDM_SKF_REQUIRED) && !(k->flags & MDM_SKF_WILDCARD) &&
            json_object_get(obj, k->name) == NULL)
            return missing_key(w, k->name);
    }
    return 0;
}

/* The form of one element of array k: by discriminator, the only form, or
 * the first that accepts it. *form NULL means anything goes. */
static int pick_form_json(walk_t *w, const mdm_schema_key_t *k, const json_t *v, int depth,
                          const mdm_schema_key_t **form)
{
    *form = NULL;
    if (k->nsub == 0)
        return 0;
    if (k->nsub == 1) {
        *form = &k->sub[0];
        return 0;
    }
    if (k->discriminator != NULL) {
        if (!json_is_object(v))
            return type_error(w, MDM_T_DICT, true, mdm_json_type_name(v));
        const json_t *tag = json_object_get(v, k->discriminator);
        if (tag == NULL)
            return missing_key(w, k->discriminator);
        if (!json_is_string(tag)) {
            size_t mark = path_push(w, ".%s", k->discriminator);
            int rc = type_error(w, MDM_T_STRING, true, mdm_json_type_name(tag));
            path_pop(w, mark);
            return rc;
        }
        *form = form_by_tag(k, json_string_value(tag));
        return *form ? 0 : bad_tag(w, k, json_string_value(tag));
    }
    for (size_t i = 0; i < k->nsub; i++) {
        mdm_err_t scratch = {0};
        walk_t trial = *w;
        trial.err = &scratch;
        plist_t p = NULL;
        if (build_value(&trial, &k->sub[i], v, depth, &p) == 0) {
            plist_free(p);
            *form = &k->sub[i];
            return 0;
        }
    }
    return werr(w, MDM_EINVAL, "matches none of the %zu element forms", k->nsub);
}

static int build_value(walk_t *w, const mdm_schema_key_t *k, const json_t *j, int depth,
                       plist_t *out)
{
    *out = NULL;
    const bool json = true;
    int rc;
    switch (k->type) {
    case MDM_T_STRING: {
        if (!json_is_string(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        const char *s = json_string_value(j);
        size_t len = json_string_length(j);
        if (strlen(s) != len)
            return werr(w, MDM_EINVAL, "string contains a NUL character");
        if ((rc = check_string_value(w, k, s)) != 0 || (rc = count_bytes(w, len)) != 0)
            return rc;
        *out = plist_new_string(s);
        return 0;
    }
    case MDM_T_INTEGER:
        if (!json_is_integer(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        *out = plist_new_uint((uint64_t)json_integer_value(j));
        return 0;
    case MDM_T_REAL:
        if (!json_is_number(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        *out = plist_new_real(json_number_value(j));
        return 0;
    case MDM_T_BOOLEAN:
        if (!json_is_boolean(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        *out = plist_new_bool(json_is_true(j) ? 1 : 0);
        return 0;
    case MDM_T_DATE: {
        if (!json_is_string(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        rc = mdm_plist_date_from_rfc3339(json_string_value(j), out);
        if (rc == 0)
            return 0;
        mdm_buf_t b = MDM_BUF_INIT;
        put_quoted(&b, json_string_value(j));
        if (rc == MDM_ELIMIT)
            rc = werr(w, MDM_EINVAL,
                      "%s is outside the dates a property list holds here "
                      "(1932-12-13 to 2069-01-19)",
                      b.data);
        else
            rc = werr(w, MDM_EINVAL, "%s is not an RFC 3339 date (like 2024-05-01T12:00:00Z)",
                      b.data);
        mdm_buf_free(&b);
        return rc;
    }
    case MDM_T_DATA: {
        if (!json_is_string(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        mdm_buf_t b = MDM_BUF_INIT;
        if (mdm_base64_decode(&b, json_string_value(j), json_string_length(j)) != 0) {
            mdm_buf_free(&b);
            return werr(w, MDM_EINVAL, "not valid base64");
        }
        if ((rc = count_bytes(w, b.len)) == 0)
            *out = plist_new_data(b.data ? b.data : "", b.len);
        mdm_buf_free(&b);
        return rc;
    }
    case MDM_T_ARRAY: {
        if (!json_is_array(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        if (depth > MDM_CMD_MAX_DEPTH)
            return depth_error(w);
        plist_t arr = plist_new_array();
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            size_t mark = path_push(w, "[%zu]", i);
            const mdm_schema_key_t *form = NULL;
            plist_t pv = NULL;
            rc = pick_form_json(w, k, v, depth + 1, &form);
            if (rc == 0)
                rc = form ? build_value(w, form, v, depth + 1, &pv)
                          : build_any(w, v, depth + 1, &pv);
            path_pop(w, mark);
            if (rc != 0) {
                plist_free(arr);
                return rc;
            }
            plist_array_append_item(arr, pv);
        }
        *out = arr;
        return 0;
    }
    case MDM_T_DICT: {
        if (!json_is_object(j))
            return type_error(w, k->type, json, mdm_json_type_name(j));
        if (depth > MDM_CMD_MAX_DEPTH)
            return depth_error(w);
        plist_t dict = plist_new_dict();
        rc = build_members(w, k->sub, k->nsub, j, depth, false, dict);
        if (rc != 0) {
            plist_free(dict);
            return rc;
        }
        *out = dict;
        return 0;
    }
    case MDM_T_ANY:
        return build_any(w, j, depth, out);
    }
    return werr(w, MDM_EINVAL, "schema has an unknown type");
}

int mdm_command_build_json(const char *request_type, const json_t *params, plist_t *out_cmd,
                           mdm_err_t *err)
{
    *out_cmd = NULL;
    if (params == NULL || !json_is_object(params))
        return mdm_err_set(err, MDM_EINVAL, "command parameters must be a JSON object, got %s",
                           params ? mdm_json_type_name(params) : "nothing");
    const json_t *prt = json_object_get(params, "RequestType");
    if (prt != NULL && !json_is_string(prt))
        return mdm_err_set(err, MDM_EINVAL, "RequestType: expected a string, got %s",
                           mdm_json_type_name(prt));
    if (request_type == NULL) {
        if (prt == NULL)
            return mdm_err_set(err, MDM_EINVAL, "missing RequestType");
        request_type = json_string_value(prt);
    } else if (prt != NULL && strcmp(json_string_value(prt), request_type) != 0) {
        mdm_buf_t b = MDM_BUF_INIT;
        put_quoted(&b, json_string_value(prt));
        mdm_buf_puts(&b, " in the parameters does not match ");
        put_quoted(&b, request_type);
        int rc = mdm_err_set(err, MDM_EINVAL, "RequestType %s", b.data);
        mdm_buf_free(&b);
        return rc;
    }
    const mdm_cmd_schema_t *cs = mdm_cmdschema_find(request_type);
    if (cs == NULL)
        return unknown_request_type(err, request_type);

    walk_t w;
    walk_init(&w, err, cs->request_type);
    plist_t dict = plist_new_dict();
    plist_dict_set_item(dict, "RequestType", plist_new_string(cs->request_type));
    int rc = build_members(&w, cs->keys, cs->nkeys, params, 0, true, dict);
    if (rc != 0) {
        plist_free(dict);
        return rc;
    }
    *out_cmd = dict;
    return 0;
}

/* ---- Command validation ------------------------------------------------------ */

static int check_value(walk_t *w, const mdm_schema_key_t *k, plist_t p, int depth);

/* A value of type <any>: any plist value but UIDs, nested at most as deep
 * as everything else. */
static int check_any(walk_t *w, plist_t p, int depth)
{
    plist_type t = plist_get_node_type(p);
    int rc = 0;
    if (t == PLIST_DICT) {
        if (depth > MDM_CMD_MAX_DEPTH)
            return depth_error(w);
        plist_dict_iter it = NULL;
        plist_dict_new_iter(p, &it);
        for (;;) {
            char *key = NULL;
            plist_t v = NULL;
            plist_dict_next_item(p, it, &key, &v);
            if (key == NULL)
                break;
            size_t mark = path_push(w, ".%s", key);
            rc = check_any(w, v, depth + 1);
            path_pop(w, mark);
            plist_mem_release(key);
            if (rc != 0)
                break;
        }
        plist_mem_release(it);
        return rc;
    }
    if (t == PLIST_ARRAY) {
        if (depth > MDM_CMD_MAX_DEPTH)
            return depth_error(w);
        plist_array_iter it = NULL;
        plist_array_new_iter(p, &it);
        for (size_t i = 0;; i++) {
            plist_t v = NULL;
            plist_array_next_item(p, it, &v);
            if (v == NULL)
                break;
            size_t mark = path_push(w, "[%zu]", i);
            rc = check_any(w, v, depth + 1);
            path_pop(w, mark);
            if (rc != 0)
                break;
        }
        plist_mem_release(it);
        return rc;
    }
    if (t == PLIST_UID || t == PLIST_KEY || t == PLIST_NONE)
        return werr(w, MDM_EINVAL, "a %s value is not allowed in a command",
                    mdm_plist_type_name(p));
    return 0;
}

static int check_members(walk_t *w, const mdm_schema_key_t *keys, size_t nkeys, plist_t dict,
                         int depth, bool top)
{
    int rc = 0;
    plist_dict_iter it = NULL;
    plist_dict_new_iter(dict, &it);
    for (;;) {
        char *name = NULL;
        plist_t v = NULL;
        plist_dict_next_item(dict, it, &name, &v);
        if (name == NULL)
            break;
        if (!(top && strcmp(name, "RequestType") == 0)) {
            const mdm_schema_key_t *k = mdm_schema_key_find(keys, nkeys, name);
            if (k == NULL && (top || nkeys > 0)) {
                rc = unknown_key(w, name, keys, nkeys);
            } else {
                size_t mark = path_push(w, ".%s", name);
                rc = k ? check_value(w, k, v, depth + 1) : check_any(w, v, depth + 1);
                path_pop(w, mark);
            }
        }
        plist_mem_release(name);
        if (rc != 0)
            break;
    }
    plist_mem_release(it);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < nkeys; i++) {
        const mdm_schema_key_t *k = &keys[i];
        if ((k->flags & MDM_SKF_REQUIRED) && !(k->flags & MDM_SKF_WILDCARD) &&
            plist_dict_get_item(dict, k->name) == NULL)
            return missing_key(w, k->name);
    }
    return 0;
}

static int pick_form_plist(walk_t *w, const mdm_schema_key_t *k, plist_t v, int depth,
                           const mdm_schema_key_t **form)
{
    *form = NULL;
    if (k->nsub == 0)
        return 0;
    if (k->nsub == 1) {
        *form = &k->sub[0];
        return 0;
    }
    if (k->discriminator != NULL) {
        if (!PLIST_IS_DICT(v))
            return type_error(w, MDM_T_DICT, false, mdm_plist_type_name(v));
        plist_t tag = plist_dict_get_item(v, k->discriminator);
        if (tag == NULL)
            return missing_key(w, k->discriminator);
        if (!PLIST_IS_STRING(tag)) {
            size_t mark = path_push(w, ".%s", k->discriminator);
            int rc = type_error(w, MDM_T_STRING, false, mdm_plist_type_name(tag));
            path_pop(w, mark);
            return rc;
        }
        const char *s = plist_get_string_ptr(tag, NULL);
        *form = form_by_tag(k, s);
        return *form ? 0 : bad_tag(w, k, s);
    }
    for (size_t i = 0; i < k->nsub; i++) {
        mdm_err_t scratch = {0};
        walk_t trial = *w;
        trial.err = &scratch;
        if (check_value(&trial, &k->sub[i], v, depth) == 0) {
            *form = &k->sub[i];
            return 0;
        }
    }
    return werr(w, MDM_EINVAL, "matches none of the %zu element forms", k->nsub);
}

static int check_value(walk_t *w, const mdm_schema_key_t *k, plist_t p, int depth)
{
    plist_type t = plist_get_node_type(p);
    const char *got = mdm_plist_type_name(p);
    switch (k->type) {
    case MDM_T_STRING:
        if (t != PLIST_STRING)
            return type_error(w, k->type, false, got);
        return check_string_value(w, k, plist_get_string_ptr(p, NULL));
    case MDM_T_INTEGER:
        return t == PLIST_UINT ? 0 : type_error(w, k->type, false, got);
    case MDM_T_REAL:
        return t == PLIST_REAL || t == PLIST_UINT ? 0 : type_error(w, k->type, false, got);
    case MDM_T_BOOLEAN:
        return t == PLIST_BOOLEAN ? 0 : type_error(w, k->type, false, got);
    case MDM_T_DATE:
        return t == PLIST_DATE ? 0 : type_error(w, k->type, false, got);
    case MDM_T_DATA:
        return t == PLIST_DATA ? 0 : type_error(w, k->type, false, got);
    case MDM_T_ARRAY: {
        if (t != PLIST_ARRAY)
            return type_error(w, k->type, false, got);
        if (depth > MDM_CMD_MAX_DEPTH)
            return depth_error(w);
        int rc = 0;
        plist_array_iter it = NULL;
        plist_array_new_iter(p, &it);
        for (size_t i = 0;; i++) {
            plist_t v = NULL;
            plist_array_next_item(p, it, &v);
            if (v == NULL)
                break;
            size_t mark = path_push(w, "[%zu]", i);
            const mdm_schema_key_t *form = NULL;
            rc = pick_form_plist(w, k, v, depth + 1, &form);
            if (rc == 0)
                rc = form ? check_value(w, form, v, depth + 1) : check_any(w, v, depth + 1);
            path_pop(w, mark);
            if (rc != 0)
                break;
        }
        plist_mem_release(it);
        return rc;
    }
    case MDM_T_DICT:
        if (t != PLIST_DICT)
            return type_error(w, k->type, false, got);
        if (depth > MDM_CMD_MAX_DEPTH)
            return depth_error(w);
        return check_members(w, k->sub, k->nsub, p, depth, false);
    case MDM_T_ANY:
        return check_any(w, p, depth);
    }
    return werr(w, MDM_EINVAL, "schema has an unknown type");
}

int mdm_command_validate(plist_t cmd_dict, mdm_err_t *err)
{
    if (!PLIST_IS_DICT(cmd_dict))
        return mdm_err_set(err, MDM_EINVAL, "Command: expected a dictionary, got %s",
                           mdm_plist_type_name(cmd_dict));
    plist_t rtn = plist_dict_get_item(cmd_dict, "RequestType");
    if (rtn == NULL)
        return mdm_err_set(err, MDM_EINVAL, "Command: missing required key \"RequestType\"");
    if (!PLIST_IS_STRING(rtn))
        return mdm_err_set(err, MDM_EINVAL, "Command.RequestType: expected a string, got %s",
                           mdm_plist_type_name(rtn));
    const char *rt = plist_get_string_ptr(rtn, NULL);
    const mdm_cmd_schema_t *cs = mdm_cmdschema_find(rt);
    if (cs == NULL)
        return unknown_request_type(err, rt);
    walk_t w;
    walk_init(&w, err, cs->request_type);
    return check_members(&w, cs->keys, cs->nkeys, cmd_dict, 0, true);
}

/* ---- the envelope ------------------------------------------------------------ */

int mdm_command_wrap(plist_t cmd_dict, const char *uuid, char **xml, uint32_t *len)
{
    *xml = NULL;
    *len = 0;
    if (!PLIST_IS_DICT(cmd_dict) || uuid == NULL || uuid[0] == '\0' || strlen(uuid) >= 64)
        return MDM_EINVAL;
    plist_t root = plist_new_dict();
    plist_dict_set_item(root, "Command", plist_copy(cmd_dict));
    plist_dict_set_item(root, "CommandUUID", plist_new_string(uuid));
    char *x = NULL;
    uint32_t n = 0;
    plist_to_xml(root, &x, &n);
    plist_free(root);
    if (x == NULL)
        return MDM_EIO;
    /* Copied so that callers free everything of ours with mdm_free(). */
    *xml = mdm_strndup(x, n);
    *len = n;
    plist_to_xml_free(x);
    return 0;
}

bool mdm_command_uuid_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MDM_UUID_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

int mdm_command_unwrap(const char *xml_or_bin, size_t len, plist_t *cmd_dict, char uuid_out[64],
                       mdm_err_t *err)
{
    *cmd_dict = NULL;
    uuid_out[0] = '\0';
    if (len > MDM_CMD_MAX_BYTES)
        return mdm_err_set(err, MDM_ELIMIT, "command plist is larger than %u bytes",
                           MDM_CMD_MAX_BYTES);
    plist_t root = NULL;
    /* The envelope and the Command dictionary add two levels. */
    int rc = mdm_plist_parse(xml_or_bin, len, MDM_CMD_MAX_DEPTH + 2, &root, err);
    if (rc != 0)
        return rc;
    if (!PLIST_IS_DICT(root)) {
        rc = mdm_err_set(err, MDM_EINVAL, "command plist: expected a dictionary, got %s",
                         mdm_plist_type_name(root));
        goto out;
    }
    plist_t cmd = plist_dict_get_item(root, "Command");
    if (cmd == NULL) {
        rc = mdm_err_set(err, MDM_EINVAL, "command plist: missing required key \"Command\"");
        goto out;
    }
    if (!PLIST_IS_DICT(cmd)) {
        rc = mdm_err_set(err, MDM_EINVAL, "Command: expected a dictionary, got %s",
                         mdm_plist_type_name(cmd));
        goto out;
    }
    plist_t rt = plist_dict_get_item(cmd, "RequestType");
    if (rt == NULL) {
        rc = mdm_err_set(err, MDM_EINVAL, "Command: missing required key \"RequestType\"");
        goto out;
    }
    if (!PLIST_IS_STRING(rt)) {
        rc = mdm_err_set(err, MDM_EINVAL, "Command.RequestType: expected a string, got %s",
                         mdm_plist_type_name(rt));
        goto out;
    }
    plist_t id = plist_dict_get_item(root, "CommandUUID");
    if (id != NULL) {
        const char *s = PLIST_IS_STRING(id) ? plist_get_string_ptr(id, NULL) : NULL;
        if (s == NULL || !mdm_command_uuid_ok(s)) {
            rc = mdm_err_set(err, MDM_EINVAL,
                             "CommandUUID: expected 1 to %d printable ASCII characters without spaces", MDM_UUID_LEN);
            goto out;
        }
        memcpy(uuid_out, s, strlen(s) + 1);
    }
    *cmd_dict = plist_copy(cmd);
out:
    plist_free(root);
    return rc;
}
