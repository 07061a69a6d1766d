/* Property lists and JSON: the bounded parser and the conversions declared
 * in plistjson.h. Everything here recurses at most max_depth levels, and the
 * parser checks nesting before libplist (whose free, copy and binary reader
 * recurse without a limit) ever builds a tree. */
#include "util/plistjson.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/jsonw.h"
#include "util/plist.h"

/* libplist 2.2 has no plist_mem_free(): what it hands out (dictionary keys,
 * iterators) comes from its own malloc and goes back with free(). */
static void plist_mem_release(void *p)
{
    free(p);
}

/* ---- type names ---------------------------------------------------------- */

const char *mdm_plist_type_name(plist_t p)
{
    if (p == NULL)
        return "nothing";
    switch (plist_get_node_type(p)) {
    case PLIST_DICT: return "dictionary";
    case PLIST_ARRAY: return "array";
    case PLIST_STRING: return "string";
    case PLIST_UINT: return "integer";
    case PLIST_REAL: return "real";
    case PLIST_BOOLEAN: return "boolean";
    case PLIST_DATE: return "date";
    case PLIST_DATA: return "data";
    case PLIST_UID: return "UID";
    case PLIST_KEY: return "key";
    default: return "nothing";
    }
}

const char *mdm_json_type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

/* ---- paths in error messages ---------------------------------------------- */

/* The path of the value being converted, e.g. "Items[3].Name". It is cut
 * (not overflowed) when keys are absurdly long. */
typedef struct pathbuf {
    char s[384];
    size_t len;
} pathbuf_t;

static size_t path_push(pathbuf_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static size_t path_push(pathbuf_t *p, const char *fmt, ...)
{
    size_t old = p->len;
    if (p->len + 1 >= sizeof(p->s))
        return old;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->s + p->len, sizeof(p->s) - p->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        p->len += (size_t)n < sizeof(p->s) - p->len ? (size_t)n : sizeof(p->s) - p->len - 1;
    return old;
}

static void path_pop(pathbuf_t *p, size_t old)
{
    p->len = old;
    p->s[old] = '\0';
}

static void path_init(pathbuf_t *p, const char *root)
{
    p->len = 0;
    p->s[0] = '\0';
    if (root != NULL && root[0] != '\0')
        path_push(p, "%s", root);
}

/* Appends ".key" (or "key" at the root) to the path. */
static size_t path_key(pathbuf_t *p, const char *key)
{
    return path_push(p, p->len ? ".%s" : "%s", key);
}

/* Sets err to "<path>: <what>" (just "<what>" at the root). */
static int path_err(mdm_err_t *err, int code, const pathbuf_t *p, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int path_err(mdm_err_t *err, int code, const pathbuf_t *p, const char *fmt, ...)
{
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (p->len)
        return mdm_err_set(err, code, "%s: %s", p->s, what);
    return mdm_err_set(err, code, "%s", what);
}

/* ---- dates --------------------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/* Reads exactly n digits at *s; -1 if they are not all digits. */
static int digits(const char **s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*s)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *s += n;
    return v;
}

/* Parses RFC 3339 into Unix seconds and microseconds (0..999999). */
static int rfc3339_parse(const char *s, int64_t *unix_sec, int32_t *usec)
{
    int y = digits(&s, 4);
    if (y < 0 || *s++ != '-')
        return MDM_EPARSE;
    int mo = digits(&s, 2);
    if (mo < 1 || mo > 12 || *s++ != '-')
        return MDM_EPARSE;
    int d = digits(&s, 2);
    if (d < 1 || d > days_in_month(y, mo))
        return MDM_EPARSE;
    if (*s != 'T' && *s != 't')
        return MDM_EPARSE;
    s++;
    int h = digits(&s, 2);
    if (h < 0 || h > 23 || *s++ != ':')
        return MDM_EPARSE;
    int mi = digits(&s, 2);
    if (mi < 0 || mi > 59 || *s++ != ':')
        return MDM_EPARSE;
    int se = digits(&s, 2);
    if (se < 0 || se > 59)
        return MDM_EPARSE;
    int32_t us = 0;
    if (*s == '.') {
        s++;
        int n = 0;
        while (*s >= '0' && *s <= '9') {
            if (n < 6)
                us = us * 10 + (*s - '0');
            n++;
            s++;
        }
        if (n == 0)
            return MDM_EPARSE;
        for (; n < 6; n++)
            us *= 10;
    }
    int64_t off = 0;
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        int sign = *s++ == '-' ? -1 : 1;
        int oh = digits(&s, 2);
        if (*s == ':')
            s++;
        int om = digits(&s, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return MDM_EPARSE;
        off = sign * (oh * 3600 + om * 60);
    } else {
        return MDM_EPARSE;
    }
    if (*s != '\0')
        return MDM_EPARSE;
    *unix_sec = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off;
    *usec = us;
    return 0;
}

int mdm_plist_date_from_rfc3339(const char *s, plist_t *out)
{
    int64_t t;
    int32_t us;
    *out = NULL;
    if (s == NULL || rfc3339_parse(s, &t, &us) != 0)
        return MDM_EPARSE;
    if (t < MDM_PLIST_DATE_MIN || t > MDM_PLIST_DATE_MAX)
        return MDM_ELIMIT;
    *out = plist_new_date((int32_t)(t - MDM_PLIST_EPOCH_OFFSET), us);
    return 0;
}

/* Reads a date that plist_get_date_val() cannot report (outside the int32
 * range it clamps to INT32_MIN) from libplist's own XML text for it. */
static int64_t date_unix_via_xml(plist_t date)
{
    char *xml = NULL;
    uint32_t len = 0;
    int64_t t = INT64_MIN;
    plist_to_xml(date, &xml, &len);
    if (xml == NULL)
        return t;
    const char *b = strstr(xml, "<date>");
    const char *e = b ? strstr(b, "</date>") : NULL;
    if (b && e && e - b - 6 < 40) {
        char text[48];
        memcpy(text, b + 6, (size_t)(e - b - 6));
        text[e - b - 6] = '\0';
        int64_t v;
        int32_t us;
        if (rfc3339_parse(text, &v, &us) == 0)
            t = v;
    }
    plist_to_xml_free(xml);
    return t;
}

int64_t mdm_plist_date_unix(plist_t date)
{
    int32_t sec = 0, usec = 0;
    plist_get_date_val(date, &sec, &usec);
    if (sec == INT32_MIN)
        return date_unix_via_xml(date);
    /* libplist truncates towards zero and reports |fraction|: before 2001
     * a fraction means the instant lies below sec. */
    if (sec < 0 && usec > 0)
        return MDM_PLIST_EPOCH_OFFSET + sec - 1;
    return MDM_PLIST_EPOCH_OFFSET + sec;
}

int mdm_plist_date_to_rfc3339(plist_t date, char out[32])
{
    int64_t t = mdm_plist_date_unix(date);
    time_t tt = (time_t)t;
    struct tm tm;
    out[0] = '\0';
    if (t == INT64_MIN || gmtime_r(&tt, &tm) == NULL || tm.tm_year < -1900 ||
        tm.tm_year > 9999 - 1900)
        return MDM_ELIMIT;
    char tmp[80];
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    size_t n = strnlen(tmp, 31);
    memcpy(out, tmp, n);
    out[n] = '\0';
    return 0;
}

/* ---- plist -> JSON ---------------------------------------------------------- */

/* A scalar plist value in its JSON form, for both conversions below. */
typedef struct jscalar {
    enum { JS_STR, JS_INT, JS_REAL, JS_BOOL } kind;
    const char *s; /* JS_STR: the text (s == NULL with n == 0 for "") */
    size_t n;
    int64_t i;     /* JS_INT, JS_BOOL */
    double r;      /* JS_REAL */
    mdm_buf_t tmp; /* holds s for data (base64); free with mdm_buf_free */
    char date[32]; /* holds s for dates */
} jscalar_t;

/* Checks a scalar and puts its JSON form in *js: UTF-8 strings, finite
 * reals, dates in years 0000..9999; other types (UID, key) fail. */
static int scalar_of(plist_t p, const pathbuf_t *path, jscalar_t *js, mdm_err_t *err)
{
    js->tmp = (mdm_buf_t)MDM_BUF_INIT;
    js->s = NULL;
    js->n = 0;
    switch (plist_get_node_type(p)) {
    case PLIST_STRING: {
        uint64_t len = 0;
        const char *s = plist_get_string_ptr(p, &len);
        js->kind = JS_STR;
        js->s = s;
        js->n = s ? (size_t)len : 0;
        if (!mdm_utf8_valid(js->s, js->n))
            return path_err(err, MDM_EPARSE, path, "string is not valid UTF-8");
        return 0;
    }
    case PLIST_UINT: {
        uint64_t v = 0;
        plist_get_uint_val(p, &v);
        js->kind = JS_INT;
        js->i = (int64_t)v;
        return 0;
    }
    case PLIST_REAL: {
        double v = 0;
        plist_get_real_val(p, &v);
        if (!isfinite(v))
            return path_err(err, MDM_EPARSE, path, "real %g has no JSON form", v);
        js->kind = JS_REAL;
        js->r = v;
        return 0;
    }
    case PLIST_BOOLEAN: {
        uint8_t v = 0;
        plist_get_bool_val(p, &v);
        js->kind = JS_BOOL;
        js->i = v != 0;
        return 0;
    }
    case PLIST_DATA: {
        uint64_t len = 0;
        const char *d = plist_get_data_ptr(p, &len);
        mdm_base64_encode(&js->tmp, d, d ? (size_t)len : 0);
        js->kind = JS_STR;
        js->s = js->tmp.data;
        js->n = js->tmp.len;
        return 0;
    }
    case PLIST_DATE:
        if (mdm_plist_date_to_rfc3339(p, js->date) != 0)
            return path_err(err, MDM_ELIMIT, path, "date outside the years 0000..9999");
        js->kind = JS_STR;
        js->s = js->date;
        js->n = strlen(js->date);
        return 0;
    default:
        return path_err(err, MDM_EPARSE, path, "a %s value has no JSON form",
                        mdm_plist_type_name(p));
    }
}

static json_t *scalar_json(const jscalar_t *js)
{
    switch (js->kind) {
    case JS_STR: return json_stringn(js->s ? js->s : "", js->n);
    case JS_INT: return json_integer((json_int_t)js->i);
    case JS_REAL: return json_real(js->r);
    default: return json_boolean(js->i);
    }
}

static void scalar_write(const jscalar_t *js, mdm_buf_t *out)
{
    switch (js->kind) {
    case JS_STR: mdm_jsonw_str(out, js->s ? js->s : "", js->n); return;
    case JS_INT: mdm_buf_printf(out, "%" PRId64, js->i); return;
    case JS_REAL: mdm_jsonw_real(out, js->r); return;
    default: mdm_buf_puts(out, js->i ? "true" : "false"); return;
    }
}

static int p2j(plist_t p, int level, int max_depth, pathbuf_t *path, json_t **out,
               mdm_err_t *err)
{
    *out = NULL;
    switch (plist_get_node_type(p)) {
    case PLIST_DICT: {
        if (level >= max_depth)
            return path_err(err, MDM_ELIMIT, path, "nested deeper than %d levels", max_depth);
        json_t *obj = json_object();
        plist_dict_iter it = NULL;
        int rc = 0;
        plist_dict_new_iter(p, &it);
        for (;;) {
            char *key = NULL;
            plist_t v = NULL;
            plist_dict_next_item(p, it, &key, &v);
            if (key == NULL)
                break;
            size_t mark = path_key(path, key);
            json_t *jv = NULL;
            rc = p2j(v, level + 1, max_depth, path, &jv, err);
            if (rc == 0 && json_object_set_new(obj, key, jv) != 0)
                rc = path_err(err, MDM_EPARSE, path, "key is not valid UTF-8");
            path_pop(path, mark);
            plist_mem_release(key);
            if (rc != 0)
                break;
        }
        plist_mem_release(it);
        if (rc != 0) {
            json_decref(obj);
            return rc;
        }
        *out = obj;
        return 0;
    }
    case PLIST_ARRAY: {
        if (level >= max_depth)
            return path_err(err, MDM_ELIMIT, path, "nested deeper than %d levels", max_depth);
        json_t *arr = json_array();
        plist_array_iter it = NULL;
        int rc = 0;
        plist_array_new_iter(p, &it);
        for (size_t i = 0;; i++) {
            plist_t v = NULL;
            plist_array_next_item(p, it, &v);
            if (v == NULL)
                break;
            size_t mark = path_push(path, "[%zu]", i);
            json_t *jv = NULL;
            rc = p2j(v, level + 1, max_depth, path, &jv, err);
            path_pop(path, mark);
            if (rc != 0)
                break;
            json_array_append_new(arr, jv);
        }
        plist_mem_release(it);
        if (rc != 0) {
            json_decref(arr);
            return rc;
        }
        *out = arr;
        return 0;
    }
    default: {
        jscalar_t js;
        int rc = scalar_of(p, path, &js, err);
        if (rc == 0 && (*out = scalar_json(&js)) == NULL)
            rc = path_err(err, MDM_EPARSE, path, "string is not valid UTF-8");
        mdm_buf_free(&js.tmp);
        return rc;
    }
    }
}

int mdm_plist_to_json_checked(plist_t p, int max_depth, json_t **out, mdm_err_t *err)
{
    pathbuf_t path;
    path_init(&path, NULL);
    *out = NULL;
    if (p == NULL)
        return mdm_err_set(err, MDM_EINVAL, "no plist value");
    if (max_depth <= 0)
        max_depth = MDM_PLIST_MAX_DEPTH;
    return p2j(p, 0, max_depth, &path, out, err);
}

json_t *mdm_plist_to_json(plist_t p)
{
    json_t *out = NULL;
    mdm_plist_to_json_checked(p, MDM_PLIST_MAX_DEPTH, &out, NULL);
    return out;
}

/* The text p2j's value would dump to, written as the tree is walked. */
static int p2w(plist_t p, int level, int max_depth, pathbuf_t *path, mdm_buf_t *out,
               mdm_err_t *err)
{
    plist_type t = plist_get_node_type(p);
    if (t != PLIST_DICT && t != PLIST_ARRAY) {
        jscalar_t js;
        int rc = scalar_of(p, path, &js, err);
        if (rc == 0)
            scalar_write(&js, out);
        mdm_buf_free(&js.tmp);
        return rc;
    }
    if (level >= max_depth)
        return path_err(err, MDM_ELIMIT, path, "nested deeper than %d levels", max_depth);
    int rc = 0;
    if (t == PLIST_DICT) {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(p, &it);
        mdm_buf_putc(out, '{');
        for (bool first = true;; first = false) {
            char *key = NULL;
            plist_t v = NULL;
            plist_dict_next_item(p, it, &key, &v);
            if (key == NULL)
                break;
            size_t mark = path_key(path, key);
            if (!mdm_utf8_valid(key, strlen(key))) {
                /* p2j finds a bad value before the bad key that holds it. */
                mdm_buf_t scratch = MDM_BUF_INIT;
                rc = p2w(v, level + 1, max_depth, path, &scratch, err);
                mdm_buf_free(&scratch);
                if (rc == 0)
                    rc = path_err(err, MDM_EPARSE, path, "key is not valid UTF-8");
            } else {
                if (!first)
                    mdm_buf_putc(out, ',');
                mdm_jsonw_str(out, key, strlen(key));
                mdm_buf_putc(out, ':');
                rc = p2w(v, level + 1, max_depth, path, out, err);
            }
            path_pop(path, mark);
            plist_mem_release(key);
            if (rc != 0)
                break;
        }
        plist_mem_release(it);
        mdm_buf_putc(out, '}');
        return rc;
    }
    plist_array_iter it = NULL;
    plist_array_new_iter(p, &it);
    mdm_buf_putc(out, '[');
    for (size_t i = 0; rc == 0; i++) {
        plist_t v = NULL;
        plist_array_next_item(p, it, &v);
        if (v == NULL)
            break;
        if (i > 0)
            mdm_buf_putc(out, ',');
        size_t mark = path_push(path, "[%zu]", i);
        rc = p2w(v, level + 1, max_depth, path, out, err);
        path_pop(path, mark);
    }
    plist_mem_release(it);
    mdm_buf_putc(out, ']');
    return rc;
}

int mdm_plist_write_json(plist_t p, int max_depth, mdm_buf_t *out, mdm_err_t *err)
{
    pathbuf_t path;
    path_init(&path, NULL);
    if (p == NULL)
        return mdm_err_set(err, MDM_EINVAL, "no plist value");
    if (max_depth <= 0)
        max_depth = MDM_PLIST_MAX_DEPTH;
    size_t mark = out->len;
    int rc = p2w(p, 0, max_depth, &path, out, err);
    if (rc != 0) {
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
    }
    return rc;
}

/* ---- JSON -> plist ---------------------------------------------------------- */

static int j2p(const json_t *j, int level, int max_depth, pathbuf_t *path, plist_t *out,
               mdm_err_t *err)
{
    *out = NULL;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (level >= max_depth)
            return path_err(err, MDM_ELIMIT, path, "nested deeper than %d levels", max_depth);
        plist_t dict = plist_new_dict();
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)j, key, v) {
            size_t mark = path_key(path, key);
            plist_t pv = NULL;
            int rc = j2p(v, level + 1, max_depth, path, &pv, err);
            path_pop(path, mark);
            if (rc != 0) {
                plist_free(dict);
                return rc;
            }
            plist_dict_set_item(dict, key, pv);
        }
        *out = dict;
        return 0;
    }
    case JSON_ARRAY: {
        if (level >= max_depth)
            return path_err(err, MDM_ELIMIT, path, "nested deeper than %d levels", max_depth);
        plist_t arr = plist_new_array();
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            size_t mark = path_push(path, "[%zu]", i);
            plist_t pv = NULL;
            int rc = j2p(v, level + 1, max_depth, path, &pv, err);
            path_pop(path, mark);
            if (rc != 0) {
                plist_free(arr);
                return rc;
            }
            plist_array_append_item(arr, pv);
        }
        *out = arr;
        return 0;
    }
    case JSON_STRING: {
        const char *s = json_string_value(j);
        if (strlen(s) != json_string_length(j))
            return path_err(err, MDM_EPARSE, path, "string contains a NUL character");
        *out = plist_new_string(s);
        return 0;
    }
    case JSON_INTEGER:
        /* Stored as the two's complement bits; libplist writes them signed. */
        *out = plist_new_uint((uint64_t)json_integer_value(j));
        return 0;
    case JSON_REAL:
        *out = plist_new_real(json_real_value(j));
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        *out = plist_new_bool(json_is_true(j) ? 1 : 0);
        return 0;
    default:
        return path_err(err, MDM_EPARSE, path, "null has no property-list form");
    }
}

int mdm_json_to_plist_checked(const json_t *j, const char *path, int max_depth, plist_t *out,
                              mdm_err_t *err)
{
    pathbuf_t pb;
    path_init(&pb, path);
    *out = NULL;
    if (j == NULL)
        return mdm_err_set(err, MDM_EINVAL, "no JSON value");
    if (max_depth < 0)
        max_depth = 0;
    return j2p(j, 0, max_depth, &pb, out, err);
}

plist_t mdm_json_to_plist_untyped(const json_t *j)
{
    plist_t out = NULL;
    mdm_json_to_plist_checked(j, NULL, MDM_PLIST_MAX_DEPTH, &out, NULL);
    return out;
}

/* ---- bounded parsing: XML ------------------------------------------------- */

/* The scanners below mirror libplist 2.2's own (find_char, find_next,
 * find_str in xplist.c) so that both split the text into the same tags:
 * inside a tag, double-quoted text is skipped; in comments and CDATA it is
 * not. */

static size_t scan_char(const char *s, size_t n, size_t i, char c)
{
    while (i < n && s[i] != c)
        i++;
    return i;
}

/* The first byte of set at or after i, skipping "quoted" runs when quotes
 * is set; n when there is none. */
static size_t scan_next(const char *s, size_t n, size_t i, const char *set, bool quotes)
{
    while (i < n) {
        if (quotes && s[i] == '"') {
            i = scan_char(s, n, i + 1, '"');
            if (i >= n)
                return n;
        }
        if (s[i] != '\0' && strchr(set, s[i]) != NULL)
            return i;
        i++;
    }
    return n;
}

/* Where str starts at or after i (n when it does not). */
static size_t scan_str(const char *s, size_t n, size_t i, const char *str, bool quotes)
{
    size_t len = strlen(str);
    if (n < len)
        return n;
    while (i < n - len) {
        if (memcmp(s + i, str, len) == 0)
            return i;
        if (quotes && s[i] == '"') {
            i = scan_char(s, n, i + 1, '"');
            if (i >= n)
                return n;
        }
        i++;
    }
    return i == n - len && memcmp(s + i, str, len) == 0 ? i : n;
}

static bool starts(const char *s, size_t n, size_t i, const char *prefix)
{
    size_t pl = strlen(prefix);
    return i + pl <= n && memcmp(s + i, prefix, pl) == 0;
}

static bool tag_is(const char *s, size_t len, const char *name)
{
    return len == strlen(name) && memcmp(s, name, len) == 0;
}

/* Measures container nesting the way libplist 2.2's XML reader splits the
 * text into tags. Where libplist would stop with an error this may stop too
 * (or read on, which can only count more): libplist frees what it built so
 * far with its recursive plist_free(), so even a rejected document must not
 * nest too deep. */
static int xml_check_depth(const char *s, size_t n, int max_depth, mdm_err_t *err)
{
    int depth = 0;
    size_t i = 0;
    while (i < n) {
        const char *lt = memchr(s + i, '<', n - i);
        if (lt == NULL)
            break;
        i = (size_t)(lt - s) + 1;
        size_t e;
        if (starts(s, n, i, "?")) {
            e = scan_str(s, n, i, "?>", true);
            i = e + 2;
        } else if (starts(s, n, i, "!--")) {
            e = scan_str(s, n, i + 3, "-->", false);
            i = e + 3;
        } else if (starts(s, n, i, "![CDATA[")) {
            e = scan_str(s, n, i + 8, "]]>", false);
            i = e + 3;
        } else if (starts(s, n, i, "!DOCTYPE")) {
            e = scan_next(s, n, i + 8, "[>", true);
            if (e < n && s[e] == '[')
                e = scan_str(s, n, e, "]>", true) + 1;
            i = e + 1;
        } else if (starts(s, n, i, "!")) {
            break; /* libplist rejects any other <! */
        } else {
            size_t name_end = scan_next(s, n, i, " \r\n\t<>", false);
            e = name_end < n && s[name_end] != '>' ? scan_next(s, n, name_end, "<>", true)
                                                   : name_end;
            if (e >= n || s[e] != '>')
                break; /* libplist rejects a tag without its '>' */
            bool empty = s[e - 1] == '/';
            size_t nlen = name_end - i;
            if (empty && name_end == e && nlen > 0)
                nlen--; /* "<array/>": the name ends before the slash */
            if (tag_is(s + i, nlen, "array") || tag_is(s + i, nlen, "dict")) {
                /* "<array/>" is an empty container one level down too: the
                 * binary form of the tree would count it. */
                if (depth + 1 > max_depth)
                    return mdm_err_set(err, MDM_ELIMIT,
                                       "property list is nested deeper than %d levels",
                                       max_depth);
                if (!empty)
                    depth++;
            } else if (tag_is(s + i, nlen, "/array") || tag_is(s + i, nlen, "/dict")) {
                if (depth > 0)
                    depth--;
            }
            i = e + 1;
        }
    }
    return 0;
}

/* ---- bounded parsing: binary ---------------------------------------------- */

static uint64_t be_uint(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

typedef struct bframe {
    uint64_t obj;
    size_t refs;    /* where the references start */
    uint64_t nrefs; /* how many */
    uint64_t next;  /* the next one to visit */
    uint32_t height;
    uint64_t size;
} bframe_t;

/* Tells whether object obj is a container and where its references are.
 * A string (or dictionary key) holding a NUL character is MDM_EINVAL:
 * libplist keeps it with its full length, but copies of it (plist_copy
 * uses strdup) end at the NUL while keeping that length, and its writers
 * then read past the copy. */
static int bplist_object(const mdm_bpl_t *bp, uint64_t obj, bool *container, size_t *refs,
                         uint64_t *nrefs)
{
    *container = false;
    unsigned marker;
    size_t p;
    if (mdm__bpl_object(bp, obj, &marker, &p) != 0)
        return MDM_EPARSE;
    unsigned kind = marker >> 4;
    bool string = kind == 0x5 || kind == 0x6; /* ASCII, UTF-16BE */
    if (kind != 0xA && kind != 0xB && kind != 0xC && kind != 0xD && !string)
        return 0;
    uint64_t count;
    if (mdm__bpl_count(bp, marker, &p, &count) != 0)
        return MDM_EPARSE;
    if (string) {
        size_t unit = kind == 0x6 ? 2 : 1;
        if (count > (bp->otoff - p) / unit)
            return MDM_EPARSE;
        for (size_t i = 0; i < count; i++)
            if (bp->b[p + i * unit] == 0 && (unit == 1 || bp->b[p + i * unit + 1] == 0))
                return MDM_EINVAL;
        return 0;
    }
    uint64_t n = kind == 0xD ? count * 2 : count;
    if (count > bp->n || n > (bp->otoff - p) / bp->rsz)
        return MDM_EPARSE;
    *container = true;
    *refs = p;
    *nrefs = n;
    return 0;
}

static const char *bplist_object_error(int rc)
{
    return rc == MDM_EINVAL ? "binary property list has a string with a NUL character"
                            : "binary property list has a bad object";
}

/* Walks the object graph from the top object without recursion, checking
 * nesting depth, reference cycles and the size of the tree libplist would
 * build (it copies shared objects, so sizes add up per reference). */
static int bplist_check(const char *data, size_t len, int max_depth, mdm_err_t *err)
{
    const unsigned char *b = (const unsigned char *)data;
    if (len < 8 + 32)
        return mdm_err_set(err, MDM_EPARSE, "binary property list is truncated");
    mdm_bpl_t bp;
    uint64_t top;
    if (mdm__bpl_trailer(&bp, b, len, &top) != 0)
        return mdm_err_set(err, MDM_EPARSE, "binary property list has a bad trailer");
    if (bp.nobj > MDM_PLIST_MAX_NODES)
        return mdm_err_set(err, MDM_ELIMIT, "binary property list has more than %u objects",
                           MDM_PLIST_MAX_NODES);

    bool container;
    size_t refs;
    uint64_t nrefs;
    int orc = bplist_object(&bp, top, &container, &refs, &nrefs);
    if (orc != 0)
        return mdm_err_set(err, MDM_EPARSE, "%s", bplist_object_error(orc));
    if (!container)
        return 0;
    if (max_depth < 1)
        return mdm_err_set(err, MDM_ELIMIT, "property list is nested deeper than %d levels",
                           max_depth);

    int rc = 0;
    /* state: 0 unseen, 1 on the walk's stack, 2 done (height and size known). */
    unsigned char *state = mdm_calloc((size_t)bp.nobj, 1);
    unsigned char *height = mdm_calloc((size_t)bp.nobj, 1);
    uint32_t *size = mdm_calloc((size_t)bp.nobj, sizeof(uint32_t));
    bframe_t *stack = mdm_calloc((size_t)max_depth, sizeof(bframe_t));
    int sp = 0;
    stack[sp++] = (bframe_t){.obj = top, .refs = refs, .nrefs = nrefs};
    state[top] = 1;
    while (sp > 0) {
        bframe_t *f = &stack[sp - 1];
        if (f->next < f->nrefs) {
            uint64_t c = be_uint(b + f->refs + f->next * bp.rsz, bp.rsz);
            f->next++;
            if (c >= bp.nobj) {
                rc = mdm_err_set(err, MDM_EPARSE, "binary property list has a bad reference");
                goto out;
            }
            if (state[c] == 1) {
                rc = mdm_err_set(err, MDM_EPARSE, "binary property list has a reference cycle");
                goto out;
            }
            if (state[c] == 0) {
                int orc2 = bplist_object(&bp, c, &container, &refs, &nrefs);
                if (orc2 != 0) {
                    rc = mdm_err_set(err, MDM_EPARSE, "%s", bplist_object_error(orc2));
                    goto out;
                }
                if (container) {
                    if (sp >= max_depth) {
                        rc = mdm_err_set(err, MDM_ELIMIT,
                                         "property list is nested deeper than %d levels",
                                         max_depth);
                        goto out;
                    }
                    state[c] = 1;
                    stack[sp++] = (bframe_t){.obj = c, .refs = refs, .nrefs = nrefs};
                    continue;
                }
                state[c] = 2;
                size[c] = 1;
            }
            /* A finished object met again: its subtree repeats here. */
            if (sp + height[c] > max_depth) {
                rc = mdm_err_set(err, MDM_ELIMIT, "property list is nested deeper than %d levels",
                                 max_depth);
                goto out;
            }
            if (height[c] > f->height)
                f->height = height[c];
            f->size += size[c];
        } else {
            uint64_t o = f->obj;
            height[o] = (unsigned char)(f->height + 1);
            uint64_t sz = f->size + 1;
            state[o] = 2;
            sp--;
            if (sz > MDM_PLIST_MAX_NODES) {
                rc = mdm_err_set(err, MDM_ELIMIT,
                                 "binary property list expands to more than %u values",
                                 MDM_PLIST_MAX_NODES);
                goto out;
            }
            size[o] = (uint32_t)sz;
            if (sp > 0) {
                bframe_t *parent = &stack[sp - 1];
                if (height[o] > parent->height)
                    parent->height = height[o];
                parent->size += sz;
                if (parent->size > MDM_PLIST_MAX_NODES) {
                    rc = mdm_err_set(err, MDM_ELIMIT,
                                     "binary property list expands to more than %u values",
                                     MDM_PLIST_MAX_NODES);
                    goto out;
                }
            }
        }
    }
out:
    mdm_free(stack);
    mdm_free(size);
    mdm_free(height);
    mdm_free(state);
    return rc;
}

/* ---- bounded parsing ------------------------------------------------------ */

/* Checks that every string and dictionary key of p is UTF-8. libplist takes
 * other bytes as they come, but its binary writer cannot encode them and
 * writes a plist that it cannot read back: a record the store would keep
 * and never load again. Nesting is already bounded by the caller. */
static int check_text(plist_t p, mdm_err_t *err)
{
    int rc = 0;
    switch (plist_get_node_type(p)) {
    case PLIST_STRING: {
        uint64_t len = 0;
        const char *s = plist_get_string_ptr(p, &len);
        if (s != NULL && !mdm_utf8_valid(s, (size_t)len))
            rc = mdm_err_set(err, MDM_EPARSE, "property list has a string that is not UTF-8");
        break;
    }
    case PLIST_ARRAY: {
        plist_array_iter it = NULL;
        plist_array_new_iter(p, &it);
        for (;;) {
            plist_t v = NULL;
            plist_array_next_item(p, it, &v);
            if (v == NULL || (rc = check_text(v, err)) != 0)
                break;
        }
        plist_mem_release(it);
        break;
    }
    case PLIST_DICT: {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(p, &it);
        for (;;) {
            char *key = NULL;
            plist_t v = NULL;
            plist_dict_next_item(p, it, &key, &v);
            if (key == NULL)
                break;
            if (!mdm_utf8_valid(key, strlen(key)))
                rc = mdm_err_set(err, MDM_EPARSE, "property list has a key that is not UTF-8");
            else
                rc = check_text(v, err);
            plist_mem_release(key);
            if (rc != 0)
                break;
        }
        plist_mem_release(it);
        break;
    }
    default: break;
    }
    return rc;
}

/* The quick reader is for messages, not for large reports: those go to
 * the thread pool, and libplist's reader is as quick per byte there. */
#define QUICK_XML_MAX_BYTES (64u << 10)

static int parse(const char *data, size_t len, int max_depth, bool check_strings, plist_t *out,
                 mdm_err_t *err)
{
    *out = NULL;
    if (max_depth <= 0)
        max_depth = MDM_PLIST_MAX_DEPTH;
    if (data == NULL || len == 0)
        return mdm_err_set(err, MDM_EPARSE, "empty property list");
    if (len > MDM_PLIST_MAX_BYTES)
        return mdm_err_set(err, MDM_ELIMIT, "property list is larger than %u bytes",
                           MDM_PLIST_MAX_BYTES);
    bool binary = len >= 8 && memcmp(data, "bplist00", 8) == 0;
    if (!binary) {
        /* XML has no NUL character; libplist would keep one inside a string
         * or key (see bplist_object). Trailing NULs end the document. */
        while (len > 0 && data[len - 1] == '\0')
            len--;
        if (len == 0 || memchr(data, '\0', len) != NULL)
            return mdm_err_set(err, MDM_EPARSE, "XML property list holds a NUL byte");
        /* What devices send most is read without libplist's reader and
         * this file's checks, which it makes itself (plist_xml.c). */
        if (len <= QUICK_XML_MAX_BYTES) {
            plist_t q = mdm__plist_xml_quick(data, len, max_depth);
            if (q != NULL) {
                *out = q;
                return 0;
            }
        }
    }
    int rc = binary ? bplist_check(data, len, max_depth, err)
                    : xml_check_depth(data, len, max_depth, err);
    if (rc != 0)
        return rc;
    plist_t p = NULL;
    if (binary)
        plist_from_bin(data, (uint32_t)len, &p);
    else
        plist_from_xml(data, (uint32_t)len, &p);
    if (p == NULL)
        return mdm_err_set(err, MDM_EPARSE, "not a valid %s property list",
                           binary ? "binary" : "XML");
    rc = check_strings ? check_text(p, err) : 0;
    if (rc != 0) {
        plist_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int mdm_plist_parse(const char *data, size_t len, int max_depth, plist_t *out, mdm_err_t *err)
{
    return parse(data, len, max_depth, true, out, err);
}

int mdm_plist_parse_stored(const char *data, size_t len, plist_t *out, mdm_err_t *err)
{
    bool binary = len >= 8 && memcmp(data, "bplist00", 8) == 0;
    return parse(data, len, 0, !binary, out, err);
}
