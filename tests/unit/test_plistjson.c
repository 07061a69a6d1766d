/* Tests of util/plistjson: plist -> JSON for every type (dates before and
 * after 2001, dates libplist cannot report, data, negative and large
 * integers), JSON -> plist without a schema, RFC 3339 parsing, the error
 * messages and depth limits of both directions, and the bounded parser
 * against deep, cyclic and exploding XML and binary plists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"
#include "util/buf.h"
#include "util/plistjson.h"

/* ---- helpers ---------------------------------------------------------------- */

/* Asserts that j dumps (compact, sorted keys) to exactly want. */
static void assert_json(const json_t *j, const char *want)
{
    if (j == NULL)
        fail_msg("no JSON value; want %s", want);
    char *have = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (have == NULL || strcmp(have, want) != 0)
        fail_msg("JSON differs\nwant: %s\nhave: %s", want, have ? have : "(null)");
    free(have);
}

/* mdm_plist_to_json_checked() and the text writer on the same value: they
 * must fail alike (code and message, the writer leaving its buffer as it
 * was) or agree on the value (the text parses to the same JSON). */
static int checked_both(plist_t p, int max_depth, json_t **out, mdm_err_t *err)
{
    int rc = mdm_plist_to_json_checked(p, max_depth, out, err);
    mdm_err_t werr = {0};
    mdm_buf_t text = MDM_BUF_INIT;
    mdm_buf_puts(&text, "[1,");
    int wrc = mdm_plist_write_json(p, max_depth, &text, &werr);
    if (wrc != rc)
        fail_msg("to_json rc %d, write_json rc %d (%s)", rc, wrc, werr.msg);
    if (rc != 0) {
        if (strcmp(err->msg, werr.msg) != 0)
            fail_msg("to_json \"%s\", write_json \"%s\"", err->msg, werr.msg);
        assert_int_equal(text.len, 3);
        assert_string_equal(text.data, "[1,");
    } else {
        mdm_buf_putc(&text, ']');
        json_error_t je;
        json_t *back = json_loadb(text.data, text.len, 0, &je);
        if (back == NULL || !json_equal(json_array_get(back, 1), *out))
            fail_msg("write_json gave %s (%s)", text.data, je.text);
        json_decref(back);
    }
    mdm_buf_free(&text);
    return rc;
}

/* Converts p to JSON and compares it with want. */
static void assert_plist_json(plist_t p, const char *want)
{
    mdm_err_t err = {0};
    json_t *j = NULL;
    checked_both(p, 0, &j, &err);
    assert_json(j, want);
    json_decref(j);
}

static plist_t date_from(const char *s)
{
    plist_t d = NULL;
    int rc = mdm_plist_date_from_rfc3339(s, &d);
    if (rc != 0)
        fail_msg("date %s: rc %d", s, rc);
    return d;
}

/* The date text mdm_plist_to_json gives for plist_new_date(sec, usec). */
static void assert_date_text(int32_t sec, int32_t usec, const char *want)
{
    plist_t d = plist_new_date(sec, usec);
    char text[32];
    int rc = mdm_plist_date_to_rfc3339(d, text);
    if (rc != 0 || strcmp(text, want) != 0)
        fail_msg("date (%d, %d): want %s, have %s (rc %d)", sec, usec, want, text, rc);
    plist_free(d);
}

/* Nests n arrays (innermost empty) as a plist. */
static plist_t nested_plist(int n)
{
    plist_t p = plist_new_array();
    for (int i = 1; i < n; i++) {
        plist_t outer = plist_new_array();
        plist_array_append_item(outer, p);
        p = outer;
    }
    return p;
}

static json_t *nested_json(int n)
{
    json_t *j = json_array();
    for (int i = 1; i < n; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, j);
        j = outer;
    }
    return j;
}

/* An XML plist of n nested arrays. */
static char *nested_xml(int n, size_t *len)
{
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_buf_puts(&b, "<?xml version=\"1.0\"?>\n<plist version=\"1.0\">");
    for (int i = 0; i < n; i++)
        mdm_buf_puts(&b, "<array>");
    for (int i = 0; i < n; i++)
        mdm_buf_puts(&b, "</array>");
    mdm_buf_puts(&b, "</plist>");
    return mdm_buf_steal(&b, len);
}

static void put_be(mdm_buf_t *b, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--)
        mdm_buf_putc(b, (char)((v >> (8 * i)) & 0xff));
}

/* A binary plist of n array objects; object i holds nrefs(i) references,
 * given by ref(i, r). Object 0 is the top. */
typedef uint32_t (*ref_fn)(uint32_t i, int r, const void *ctx);
typedef int (*nrefs_fn)(uint32_t i, const void *ctx);

static char *graph_bplist(uint32_t n, nrefs_fn nrefs, ref_fn ref, const void *ctx, size_t *len)
{
    mdm_buf_t b = MDM_BUF_INIT;
    uint32_t *offs = mdm_calloc(n, sizeof(uint32_t));
    mdm_buf_puts(&b, "bplist00");
    for (uint32_t i = 0; i < n; i++) {
        offs[i] = (uint32_t)b.len;
        int k = nrefs(i, ctx);
        mdm_buf_putc(&b, (char)(0xA0 | k));
        for (int r = 0; r < k; r++)
            put_be(&b, ref(i, r, ctx), 4);
    }
    uint64_t otoff = b.len;
    for (uint32_t i = 0; i < n; i++)
        put_be(&b, offs[i], 4);
    for (int i = 0; i < 6; i++)
        mdm_buf_putc(&b, 0);
    mdm_buf_putc(&b, 4);
    mdm_buf_putc(&b, 4);
    put_be(&b, n, 8);
    put_be(&b, 0, 8);
    put_be(&b, otoff, 8);
    mdm_free(offs);
    return mdm_buf_steal(&b, len);
}

typedef struct chain {
    uint32_t n;
    int refs;
    bool cycle;
} chain_t;

static int chain_nrefs(uint32_t i, const void *ctx)
{
    const chain_t *c = ctx;
    return i + 1 < c->n ? c->refs : c->cycle ? 1 : 0;
}

static uint32_t chain_ref(uint32_t i, int r, const void *ctx)
{
    const chain_t *c = ctx;
    return i + 1 < c->n ? i + 1 : 0;
}

/* A chain of n nested arrays, each holding refs references to the next (the
 * last is empty, or with cycle refers back to the first). */
static char *chain_bplist(uint32_t n, int refs, bool cycle, size_t *len)
{
    chain_t c = {n, refs, cycle};
    return graph_bplist(n, chain_nrefs, chain_ref, &c, len);
}

/* 0: [1, 2]; 1 (X): [3]; 2: [1]; 3: []. X is met at level 2, then again
 * at level 3 through object 2: four levels in all. */
static const uint32_t shared_refs[4][2] = {{1, 2}, {3, 0}, {1, 0}, {0, 0}};
static const int shared_n[4] = {2, 1, 1, 0};

static int shared_nrefs(uint32_t i, const void *ctx)
{
    return shared_n[i];
}

static uint32_t shared_ref(uint32_t i, int r, const void *ctx)
{
    return shared_refs[i][r];
}

static void expect_parse_error(const char *data, size_t len, int max_depth, int want_rc,
                               const char *want_msg)
{
    plist_t p = NULL;
    mdm_err_t err = {0};
    int rc = mdm_plist_parse(data, len, max_depth, &p, &err);
    if (rc != want_rc || strcmp(err.msg, want_msg) != 0)
        fail_msg("want rc %d \"%s\", have rc %d \"%s\"", want_rc, want_msg, rc, err.msg);
    assert_null(p);
}

static plist_t parse_ok(const char *data, size_t len, int max_depth)
{
    plist_t p = NULL;
    mdm_err_t err = {0};
    int rc = mdm_plist_parse(data, len, max_depth, &p, &err);
    if (rc != 0)
        fail_msg("parse failed (rc %d): %s", rc, err.msg);
    assert_non_null(p);
    return p;
}

/* ---- plist -> JSON ---------------------------------------------------------- */

static void test_plist_to_json_types(void **state)
{
    (void)state;
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "s", plist_new_string("héllo \"q\""));
    plist_dict_set_item(d, "empty", plist_new_string(""));
    plist_dict_set_item(d, "i", plist_new_uint(42));
    plist_dict_set_item(d, "neg", plist_new_uint((uint64_t)-5));
    plist_dict_set_item(d, "big", plist_new_uint(9007199254740993ULL));
    plist_dict_set_item(d, "r", plist_new_real(1.5));
    plist_dict_set_item(d, "t", plist_new_bool(1));
    plist_dict_set_item(d, "f", plist_new_bool(0));
    plist_dict_set_item(d, "data", plist_new_data("\x00\xff\x10hi", 5));
    plist_dict_set_item(d, "nodata", plist_new_data("", 0));
    plist_dict_set_item(d, "date", date_from("2024-05-01T12:34:56Z"));
    plist_t a = plist_new_array();
    plist_array_append_item(a, plist_new_uint(1));
    plist_array_append_item(a, plist_new_dict());
    plist_array_append_item(a, plist_new_array());
    plist_dict_set_item(d, "a", a);
    assert_plist_json(d, "{\"a\":[1,{},[]],\"big\":9007199254740993,\"data\":\"AP8QaGk=\","
                         "\"date\":\"2024-05-01T12:34:56Z\",\"empty\":\"\",\"f\":false,"
                         "\"i\":42,\"neg\":-5,\"nodata\":\"\",\"r\":1.5,"
                         "\"s\":\"héllo \\\"q\\\"\",\"t\":true}");
    plist_free(d);

    /* Scalars convert on their own too. */
    plist_t s = plist_new_string("x");
    assert_plist_json(s, "\"x\"");
    plist_free(s);
    assert_null(mdm_plist_to_json(NULL));
}

static void test_plist_to_json_dates(void **state)
{
    (void)state;
    assert_date_text(0, 0, "2001-01-01T00:00:00Z");
    assert_date_text(1, 999999, "2001-01-01T00:00:01Z");
    assert_date_text(-1, 0, "2000-12-31T23:59:59Z");
    /* Before 2001 a fraction lies below the whole second: -99.5 s. */
    assert_date_text(-100, 500000, "2000-12-31T23:58:20Z");
    assert_date_text(-978307200, 0, "1970-01-01T00:00:00Z");
    assert_date_text(-1609459200, 0, "1950-01-01T00:00:00Z");
    assert_date_text(INT32_MAX, 0, "2069-01-19T03:14:07Z");
    assert_date_text(INT32_MIN + 1, 0, "1932-12-13T20:45:53Z");

    /* RFC 3339 in, same instant out (in UTC). */
    const char *const cases[][2] = {
        {"2001-01-01T00:00:00Z", "2001-01-01T00:00:00Z"},
        {"1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"},
        {"1999-12-31T23:59:59z", "1999-12-31T23:59:59Z"},
        {"2024-02-29T12:00:00+02:00", "2024-02-29T10:00:00Z"},
        {"2023-09-21T12:00:00-0500", "2023-09-21T17:00:00Z"},
        {"2000-12-31T23:59:58.5Z", "2000-12-31T23:59:58Z"},
        {"2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00Z"},
        {"2069-01-19T03:14:07Z", "2069-01-19T03:14:07Z"},
        {"1932-12-13T20:45:52Z", "1932-12-13T20:45:52Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        plist_t d = date_from(cases[i][0]);
        char text[32];
        mdm_plist_date_to_rfc3339(d, text);
        if (strcmp(text, cases[i][1]) != 0)
            fail_msg("%s: want %s, have %s", cases[i][0], cases[i][1], text);
        plist_free(d);
    }
    plist_t half = date_from("2000-12-31T23:59:58.5Z");
    int32_t sec = 0, usec = 0;
    plist_get_date_val(half, &sec, &usec);
    if (sec != -1 || usec != 500000)
        fail_msg("-1.5 s is stored as (%d, %d)", sec, usec);
    assert_int_equal(mdm_plist_date_unix(half), MDM_PLIST_EPOCH_OFFSET - 2);
    plist_free(half);

    /* Dates from XML that an int32 cannot hold still come out right. */
    const char *xml = "<plist version=\"1.0\"><array><date>1900-01-01T00:00:00Z</date>"
                      "<date>2100-06-01T10:00:00Z</date></array></plist>";
    plist_t p = parse_ok(xml, strlen(xml), 0);
    assert_plist_json(p, "[\"1900-01-01T00:00:00Z\",\"2100-06-01T10:00:00Z\"]");
    plist_free(p);
}

static void test_rfc3339_errors(void **state)
{
    (void)state;
    const char *bad[] = {
        "", "2024", "2024-05-01", "2024-05-01T12:00:00", "2024-05-01 12:00:00Z",
        "2024-13-01T00:00:00Z", "2023-02-29T00:00:00Z", "2024-04-31T00:00:00Z",
        "2024-05-01T24:00:00Z", "2024-05-01T12:60:00Z", "2024-05-01T12:00:60Z",
        "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00+25:00", "2024-05-01T12:00:00Zjunk",
        "24-05-01T12:00:00Z", "2024-5-01T12:00:00Z", "２０２４-05-01T12:00:00Z",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        plist_t d = NULL;
        int rc = mdm_plist_date_from_rfc3339(bad[i], &d);
        if (rc != MDM_EPARSE || d != NULL)
            fail_msg("\"%s\": want MDM_EPARSE, have rc %d", bad[i], rc);
    }
    const char *far[] = {"2069-01-19T03:14:08Z", "1932-12-13T20:45:51Z", "2100-01-01T00:00:00Z",
                         "1900-01-01T00:00:00Z", "9999-12-31T23:59:59Z"};
    for (size_t i = 0; i < sizeof(far) / sizeof(far[0]); i++) {
        plist_t d = NULL;
        int rc = mdm_plist_date_from_rfc3339(far[i], &d);
        if (rc != MDM_ELIMIT || d != NULL)
            fail_msg("\"%s\": want MDM_ELIMIT, have rc %d", far[i], rc);
    }
}

static void test_plist_to_json_errors(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    json_t *j = NULL;

    plist_t d = plist_new_dict();
    plist_t items = plist_new_array();
    plist_array_append_item(items, plist_new_string("ok"));
    plist_array_append_item(items, plist_new_string("bad \xff\xfe utf-8"));
    plist_dict_set_item(d, "Items", items);
    assert_null(mdm_plist_to_json(d));
    assert_int_equal(checked_both(d, 0, &j, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "Items[1]: string is not valid UTF-8");
    assert_null(j);
    plist_free(d);

    d = plist_new_dict();
    plist_dict_set_item(d, "k\xc3", plist_new_bool(1));
    assert_int_equal(checked_both(d, 0, &j, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "k\xc3: key is not valid UTF-8");
    plist_free(d);

    /* A bad key over a bad value: the value is found first. */
    d = plist_new_dict();
    plist_t in = plist_new_array();
    plist_array_append_item(in, plist_new_real(1.0 / 0.0));
    plist_dict_set_item(d, "k\xc3", in);
    assert_int_equal(checked_both(d, 0, &j, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "k\xc3[0]: real inf has no JSON form");
    plist_free(d);

    d = plist_new_dict();
    plist_t sub = plist_new_dict();
    plist_dict_set_item(sub, "u", plist_new_uid(7));
    plist_dict_set_item(d, "obj", sub);
    assert_int_equal(checked_both(d, 0, &j, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "obj.u: a UID value has no JSON form");
    plist_free(d);

    plist_t r = plist_new_real(1.0 / 0.0);
    assert_int_equal(checked_both(r, 0, &j, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "real inf has no JSON form");
    plist_free(r);

    assert_int_equal(checked_both(NULL, 0, &j, &err), MDM_EINVAL);
}

static void test_plist_to_json_depth(void **state)
{
    (void)state;
    plist_t ok = nested_plist(MDM_PLIST_MAX_DEPTH);
    json_t *j = mdm_plist_to_json(ok);
    assert_non_null(j);
    json_decref(j);
    plist_free(ok);

    plist_t deep = nested_plist(MDM_PLIST_MAX_DEPTH + 1);
    assert_null(mdm_plist_to_json(deep));
    mdm_err_t err = {0};
    assert_int_equal(checked_both(deep, 0, &j, &err), MDM_ELIMIT);
    char want[128];
    mdm_buf_t path = MDM_BUF_INIT;
    for (int i = 0; i < MDM_PLIST_MAX_DEPTH; i++)
        mdm_buf_puts(&path, "[0]");
    snprintf(want, sizeof(want), "nested deeper than %d levels", MDM_PLIST_MAX_DEPTH);
    if (strstr(err.msg, want) == NULL || strncmp(err.msg, path.data, 30) != 0)
        fail_msg("have \"%s\"", err.msg);
    mdm_buf_free(&path);
    plist_free(deep);

    /* A caller's own, smaller limit. */
    plist_t three = nested_plist(3);
    assert_int_equal(checked_both(three, 2, &j, &err), MDM_ELIMIT);
    assert_string_equal(err.msg, "[0][0]: nested deeper than 2 levels");
    assert_int_equal(checked_both(three, 3, &j, &err), 0);
    assert_json(j, "[[[]]]");
    json_decref(j);
    plist_free(three);
}

/* ---- JSON -> plist ---------------------------------------------------------- */

static void test_json_to_plist_untyped(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *j = json_loads("{\"s\":\"2024-05-01T12:00:00Z\",\"b64\":\"AP8QaGk=\",\"i\":-7,"
                           "\"big\":9223372036854775807,\"r\":2.25,\"t\":true,\"f\":false,"
                           "\"a\":[1,\"x\",[],{}],\"o\":{\"k\":{\"n\":0}}}",
                           0, &jerr);
    assert_non_null(j);
    plist_t p = mdm_json_to_plist_untyped(j);
    assert_non_null(p);
    assert_true(PLIST_IS_DICT(p));
    /* Without a schema, strings stay strings. */
    assert_true(PLIST_IS_STRING(plist_dict_get_item(p, "s")));
    assert_true(PLIST_IS_STRING(plist_dict_get_item(p, "b64")));
    uint64_t v = 0;
    plist_get_uint_val(plist_dict_get_item(p, "i"), &v);
    assert_int_equal((int64_t)v, -7);
    assert_true(PLIST_IS_REAL(plist_dict_get_item(p, "r")));
    assert_true(PLIST_IS_BOOLEAN(plist_dict_get_item(p, "t")));
    /* And back to the same JSON. */
    json_t *back = mdm_plist_to_json(p);
    assert_true(json_equal(j, back));
    json_decref(back);

    /* Negative integers survive XML and binary serialisation. */
    char *xml = NULL;
    uint32_t xlen = 0;
    plist_to_xml(p, &xml, &xlen);
    assert_non_null(strstr(xml, "<integer>-7</integer>"));
    plist_t again = parse_ok(xml, xlen, 0);
    back = mdm_plist_to_json(again);
    assert_true(json_equal(j, back));
    json_decref(back);
    plist_free(again);
    plist_to_xml_free(xml);
    char *bin = NULL;
    uint32_t blen = 0;
    plist_to_bin(p, &bin, &blen);
    again = parse_ok(bin, blen, 0);
    back = mdm_plist_to_json(again);
    assert_true(json_equal(j, back));
    json_decref(back);
    plist_free(again);
    plist_to_bin_free(bin);

    plist_free(p);
    json_decref(j);
}

static void test_json_to_plist_errors(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    plist_t p = NULL;
    json_error_t jerr;
    json_t *j = json_loads("{\"a\":[1,{\"x\":null}]}", 0, &jerr);
    assert_null(mdm_json_to_plist_untyped(j));
    assert_int_equal(mdm_json_to_plist_checked(j, "Cmd.Configuration", 8, &p, &err),
                     MDM_EPARSE);
    assert_string_equal(err.msg, "Cmd.Configuration.a[1].x: null has no property-list form");
    assert_null(p);
    assert_int_equal(mdm_json_to_plist_checked(j, NULL, 8, &p, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "a[1].x: null has no property-list form");
    json_decref(j);

    j = json_null();
    assert_int_equal(mdm_json_to_plist_checked(j, "", 8, &p, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "null has no property-list form");

    j = json_stringn("a\0b", 3);
    assert_int_equal(mdm_json_to_plist_checked(j, "S", 8, &p, &err), MDM_EPARSE);
    assert_string_equal(err.msg, "S: string contains a NUL character");
    json_decref(j);

    j = nested_json(MDM_PLIST_MAX_DEPTH);
    p = mdm_json_to_plist_untyped(j);
    assert_non_null(p);
    plist_free(p);
    json_decref(j);
    j = nested_json(MDM_PLIST_MAX_DEPTH + 1);
    assert_null(mdm_json_to_plist_untyped(j));
    json_decref(j);
    j = nested_json(3);
    assert_int_equal(mdm_json_to_plist_checked(j, "X", 2, &p, &err), MDM_ELIMIT);
    assert_string_equal(err.msg, "X[0][0]: nested deeper than 2 levels");
    /* A budget of 0 takes scalars only. */
    json_t *one = json_integer(1);
    assert_int_equal(mdm_json_to_plist_checked(one, "X", 0, &p, &err), 0);
    plist_free(p);
    json_decref(one);
    json_decref(j);
}

/* ---- the bounded parser ------------------------------------------------------ */

static void test_parse_basic(void **state)
{
    (void)state;
    const char *xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                      "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
                      "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"
                      "<plist version=\"1.0\"><dict><!-- a <dict> comment -->"
                      "<key>k</key><string><![CDATA[<array></array></dict>]]></string>"
                      "<key>e</key><array/><key>n</key><integer>-3</integer>"
                      "</dict></plist>";
    plist_t p = parse_ok(xml, strlen(xml), 2);
    assert_plist_json(p, "{\"e\":[],\"k\":\"<array></array></dict>\",\"n\":-3}");

    char *bin = NULL;
    uint32_t blen = 0;
    plist_to_bin(p, &bin, &blen);
    plist_t q = parse_ok(bin, blen, 2);
    assert_plist_json(q, "{\"e\":[],\"k\":\"<array></array></dict>\",\"n\":-3}");
    plist_free(q);
    plist_to_bin_free(bin);
    plist_free(p);

    /* A scalar at the top is fine. */
    const char *s = "<plist version=\"1.0\"><string>x</string></plist>";
    p = parse_ok(s, strlen(s), 1);
    assert_plist_json(p, "\"x\"");
    plist_free(p);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_parse_error("", 0, 0, MDM_EPARSE, "empty property list");
    expect_parse_error("{\"json\":1}", 10, 0, MDM_EPARSE, "not a valid XML property list");
    const char *junk = "<plist><dict><key>a</key></plist>";
    expect_parse_error(junk, strlen(junk), 0, MDM_EPARSE, "not a valid XML property list");
    expect_parse_error("bplist00", 8, 0, MDM_EPARSE, "binary property list is truncated");
    char bad[48];
    memcpy(bad, "bplist00", 8);
    memset(bad + 8, 0, 40);
    expect_parse_error(bad, sizeof(bad), 0, MDM_EPARSE, "binary property list has a bad trailer");
    /* Only the length is looked at before the data. */
    char tiny[1] = {'<'};
    char want[80];
    snprintf(want, sizeof(want), "property list is larger than %u bytes", MDM_PLIST_MAX_BYTES);
    expect_parse_error(tiny, (size_t)MDM_PLIST_MAX_BYTES + 1, 0, MDM_ELIMIT, want);
}

static void test_parse_xml_depth(void **state)
{
    (void)state;
    size_t len;
    char *xml = nested_xml(MDM_PLIST_MAX_DEPTH, &len);
    plist_t p = parse_ok(xml, len, 0);
    plist_free(p);
    mdm_free(xml);

    char want[80];
    snprintf(want, sizeof(want), "property list is nested deeper than %d levels",
             MDM_PLIST_MAX_DEPTH);
    xml = nested_xml(MDM_PLIST_MAX_DEPTH + 1, &len);
    expect_parse_error(xml, len, 0, MDM_ELIMIT, want);
    mdm_free(xml);

    /* An empty container written "<array/>" or "<dict/>" is a level too:
     * the binary form of the tree counts it, and a tree let through one
     * level too deep would be stored as a record that never loads again. */
    const char *empty_deep = "<plist><array><array/></array></plist>";
    expect_parse_error(empty_deep, strlen(empty_deep), 1, MDM_ELIMIT,
                       "property list is nested deeper than 1 levels");
    plist_free(parse_ok(empty_deep, strlen(empty_deep), 2));
    const char *empty_dict = "<plist><dict><key>k</key><dict/></dict></plist>";
    expect_parse_error(empty_dict, strlen(empty_dict), 1, MDM_ELIMIT,
                       "property list is nested deeper than 1 levels");
    mdm_buf_t deep = MDM_BUF_INIT;
    mdm_buf_puts(&deep, "<plist>");
    for (int i = 0; i < MDM_PLIST_MAX_DEPTH; i++)
        mdm_buf_puts(&deep, "<array>");
    mdm_buf_puts(&deep, "<dict/>");
    for (int i = 0; i < MDM_PLIST_MAX_DEPTH; i++)
        mdm_buf_puts(&deep, "</array>");
    mdm_buf_puts(&deep, "</plist>");
    expect_parse_error(deep.data, deep.len, 0, MDM_ELIMIT, want);
    mdm_buf_free(&deep);

    /* Deep enough to crash libplist's recursive plist_free: refused early. */
    xml = nested_xml(400000, &len);
    expect_parse_error(xml, len, 0, MDM_ELIMIT, want);
    mdm_free(xml);

    /* Closing tags hidden in comments, CDATA or quoted attributes do not
     * close anything: libplist sees 3 levels here, and so must the check. */
    const char *tricks[] = {
        "<plist><array><!-- </array></array> --><array><array></array></array></array></plist>",
        "<plist><array><array><string><![CDATA[</array>]]></string><array></array></array>"
        "</array></plist>",
        "<plist><array a=\"</array>\"><array b=\"x>y</array>\"><array></array></array>"
        "</array></plist>",
        "<?pi \"?></array>\"?><plist><array><array><array/><array></array></array></array>"
        "</plist>",
    };
    for (size_t i = 0; i < sizeof(tricks) / sizeof(tricks[0]); i++) {
        expect_parse_error(tricks[i], strlen(tricks[i]), 2, MDM_ELIMIT,
                           "property list is nested deeper than 2 levels");
        p = parse_ok(tricks[i], strlen(tricks[i]), 3);
        json_t *j = mdm_plist_to_json(p);
        char *text = json_dumps(j, JSON_COMPACT);
        if (strncmp(text, "[[", 2) != 0)
            fail_msg("trick %zu parsed as %s", i, text);
        free(text);
        json_decref(j);
        plist_free(p);
    }
}

static void test_parse_binary_bounds(void **state)
{
    (void)state;
    size_t len;
    char want[96];
    snprintf(want, sizeof(want), "property list is nested deeper than %d levels",
             MDM_PLIST_MAX_DEPTH);

    char *b = chain_bplist(MDM_PLIST_MAX_DEPTH, 1, false, &len);
    plist_t p = parse_ok(b, len, 0);
    plist_free(p);
    mdm_free(b);

    b = chain_bplist(MDM_PLIST_MAX_DEPTH + 1, 1, false, &len);
    expect_parse_error(b, len, 0, MDM_ELIMIT, want);
    mdm_free(b);

    /* Deep enough to overflow libplist's recursive reader. */
    b = chain_bplist(500000, 1, false, &len);
    expect_parse_error(b, len, 0, MDM_ELIMIT, want);
    mdm_free(b);

    b = chain_bplist(5, 1, true, &len);
    expect_parse_error(b, len, 0, MDM_EPARSE, "binary property list has a reference cycle");
    mdm_free(b);

    /* Shared objects are legal and expand: 3 levels of 2 references. */
    b = chain_bplist(4, 2, false, &len);
    p = parse_ok(b, len, 0);
    assert_plist_json(p, "[[[[],[]],[[],[]]],[[[],[]],[[],[]]]]");
    plist_free(p);
    mdm_free(b);

    /* 2^30 values from a few hundred bytes. */
    b = chain_bplist(31, 2, false, &len);
    snprintf(want, sizeof(want), "binary property list expands to more than %u values",
             MDM_PLIST_MAX_NODES);
    expect_parse_error(b, len, 0, MDM_ELIMIT, want);
    mdm_free(b);

    /* A shared subtree met again deeper down still counts its depth. */
    b = graph_bplist(4, shared_nrefs, shared_ref, NULL, &len);
    expect_parse_error(b, len, 3, MDM_ELIMIT, "property list is nested deeper than 3 levels");
    p = parse_ok(b, len, 4);
    assert_plist_json(p, "[[[]],[[[]]]]");
    plist_free(p);
    mdm_free(b);

    /* References past the object table. */
    b = chain_bplist(3, 1, false, &len);
    b[8 + 1 + 3] = 9; /* object 0's reference: 1 -> 9 */
    expect_parse_error(b, len, 0, MDM_EPARSE, "binary property list has a bad reference");
    mdm_free(b);
}

/* The binary plist of dict {key: value} with byte at of the first
 * occurrence of the bytes what[0..n) set to to. */
static char *bplist_patched(const char *key, const char *value, const char *what, size_t n,
                            size_t at, char to, uint32_t *len)
{
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, key, plist_new_string(value));
    char *bin = NULL;
    plist_to_bin(d, &bin, len);
    plist_free(d);
    char *copy = mdm_malloc(*len);
    memcpy(copy, bin, *len);
    plist_to_bin_free(bin);
    plist_t q = parse_ok(copy, *len, 0); /* fine before the change */
    plist_free(q);
    char *hit = memmem(copy, *len, what, n);
    if (hit == NULL)
        fail_msg("the binary plist of {%s: %s} does not hold the bytes to patch", key, value);
    hit[at] = to;
    return copy;
}

/* A NUL character inside a string or key (found by tests/fuzz/fuzz_plist.c
 * and fuzz_api_json.c): libplist kept it, and once such a value was copied
 * (plist_copy ends the copy at the NUL but keeps the length) its writers
 * read past the copy. Refused by the parser in XML and binary plists, in
 * values and keys, ASCII and UTF-16. */
static void test_parse_nul_characters(void **state)
{
    (void)state;
    static const char xml_value[] = "<plist><dict><key>K</key><string>a\0bcdefgh</string></dict>"
                                    "</plist>";
    static const char xml_key[] = "<plist><dict><key>K\0XYZW</key><string>v</string></dict>"
                                  "</plist>";
    expect_parse_error(xml_value, sizeof(xml_value) - 1, 0, MDM_EPARSE,
                       "XML property list holds a NUL byte");
    expect_parse_error(xml_key, sizeof(xml_key) - 1, 0, MDM_EPARSE,
                       "XML property list holds a NUL byte");
    /* NULs after the document (a C string sent with its terminator) end it. */
    static const char trailing[] = "<plist><string>x</string></plist>\0";
    plist_t p = parse_ok(trailing, sizeof(trailing), 1);
    assert_plist_json(p, "\"x\"");
    plist_free(p);

    const char *want = "binary property list has a string with a NUL character";
    struct {
        const char *key, *value, *what;
        size_t n, at;
    } cases[] = {
        {"K", "abcdefgh", "bcdefgh", 7, 2},           /* ASCII value */
        {"KXYZW", "v", "KXYZW", 5, 1},                /* ASCII key */
        {"K", "\xc3\xa9t\xc3\xa9", "\0t", 2, 1},       /* UTF-16 value "été" */
        {"\xc3\xa9XY", "v", "\0X\0Y", 4, 3},           /* UTF-16 key "éXY" */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t len = 0;
        char *b = bplist_patched(cases[i].key, cases[i].value, cases[i].what, cases[i].n,
                                 cases[i].at, '\0', &len);
        expect_parse_error(b, len, 0, MDM_EPARSE, want);
        mdm_free(b);
    }
}

/* Strings and keys must be UTF-8 (found by tests/fuzz/fuzz_plist.c):
 * libplist took other bytes as they came, and the binary plist it then
 * wrote for the store could not be read back. */
static void test_parse_not_utf8(void **state)
{
    (void)state;
    const char *bad[] = {
        "<plist><dict><key>UDID</key><string>\xc1" "FUZZ</string></dict></plist>",
        "<plist><dict><key>\xff</key><string>v</string></dict></plist>",
        "<plist><array><string>\xe2\x82</string></array></plist>",     /* cut short */
        "<plist><string>\xed\xa0\x80</string></plist>",               /* a surrogate */
        "<plist><string>\xf4\x90\x80\x80</string></plist>",           /* past U+10FFFF */
        "<plist><string>\xe0\x80\xaf</string></plist>",               /* overlong "/" */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *want = strstr(bad[i], "<key>\xff") ? "property list has a key that is not UTF-8"
                                                       : "property list has a string that is not UTF-8";
        expect_parse_error(bad[i], strlen(bad[i]), 0, MDM_EPARSE, want);
    }
    /* A binary "ASCII" string with a byte that is not. */
    uint32_t len = 0;
    char *b = bplist_patched("K", "abcdefgh", "bcdefgh", 7, 2, (char)0xc1, &len);
    expect_parse_error(b, len, 0, MDM_EPARSE, "property list has a string that is not UTF-8");
    mdm_free(b);

    /* UTF-8 from one to four bytes is fine, and what the store writes of it
     * reads back. */
    const char *good = "<plist><dict><key>\xc3\xa9t\xc3\xa9</key><string>a\xe2\x82\xac"
                       "\xf0\x9f\x8d\x8e</string></dict></plist>";
    plist_t p = parse_ok(good, strlen(good), 0);
    char *bin = NULL;
    uint32_t blen = 0;
    plist_to_bin(p, &bin, &blen);
    plist_t q = parse_ok(bin, blen, 0);
    assert_plist_json(q, "{\"\xc3\xa9t\xc3\xa9\":\"a\xe2\x82\xac\xf0\x9f\x8d\x8e\"}");
    plist_free(q);
    plist_to_bin_free(bin);
    plist_free(p);
}

/* Store records: the structure is checked as for device input, the text
 * (checked when it came in) is not; XML still gets every check. */
static void test_parse_stored(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    plist_t p = NULL;
    size_t len;
    char *b = chain_bplist(5, 1, true, &len);
    assert_int_equal(mdm_plist_parse_stored(b, len, &p, &err), MDM_EPARSE);
    assert_null(p);
    mdm_free(b);
    b = chain_bplist(MDM_PLIST_MAX_DEPTH + 1, 1, false, &len);
    assert_int_equal(mdm_plist_parse_stored(b, len, &p, &err), MDM_ELIMIT);
    mdm_free(b);
    b = chain_bplist(4, 2, false, &len);
    assert_int_equal(mdm_plist_parse_stored(b, len, &p, &err), 0);
    assert_non_null(p);
    plist_free(p);
    mdm_free(b);

    /* A binary string that is not UTF-8 reads back as stored. */
    uint32_t blen = 0;
    b = bplist_patched("K", "abcdefgh", "bcdefgh", 7, 2, (char)0xc1, &blen);
    p = NULL;
    assert_int_equal(mdm_plist_parse_stored(b, blen, &p, &err), 0);
    assert_non_null(p);
    plist_free(p);
    mdm_free(b);

    const char *xml = "<plist><string>\xc1" "x</string></plist>";
    assert_int_equal(mdm_plist_parse_stored(xml, strlen(xml), &p, &err), MDM_EPARSE);
    assert_non_null(strstr(err.msg, "not UTF-8"));
}

/* The quick XML reader: on what devices send it builds libplist's tree;
 * everything out of its subset it leaves to libplist (NULL), and
 * mdm_plist_parse() then answers as before. */
static char *xml_of(plist_t p)
{
    char *x = NULL;
    uint32_t n = 0;
    plist_to_xml(p, &x, &n);
    return x;
}

#define PL_HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC " \
                "\"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n" \
                "<plist version=\"1.0\">\n"

static void assert_quick_same(const char *doc, int max_depth)
{
    plist_t q = mdm__plist_xml_quick(doc, strlen(doc), max_depth), slow = NULL;
    if (q == NULL)
        fail_msg("the quick reader left this to libplist:\n%s", doc);
    plist_from_xml(doc, (uint32_t)strlen(doc), &slow);
    assert_non_null(slow);
    char *a = xml_of(q), *b = xml_of(slow);
    if (strcmp(a, b) != 0)
        fail_msg("trees differ\nquick: %s\nlibplist: %s", a, b);
    free(a);
    free(b);
    plist_free(q);
    plist_free(slow);
}

static void test_parse_xml_quick(void **state)
{
    (void)state;
    assert_quick_same(PL_HEAD "<dict>\n\t<key>Status</key>\n\t<string>Acknowledged</string>\n"
                              "\t<key>CommandUUID</key>\n\t<string>0F6C3E0A</string>\n</dict>\n</plist>\n",
                      64);
    assert_quick_same("<plist><dict><key>a &amp; b</key><string> &lt;x&gt; &quot;&apos; \xc3\xa9 "
                      "</string><key>n</key><integer>-9223372036854775808</integer><key>m</key>"
                      "<integer>9223372036854775807</integer><key>t</key><true/><key>f</key>"
                      "<false/><key>e</key><dict/><key>a</key><array/><key>l</key><array>"
                      "<string></string><array><integer>0</integer></array></array></dict></plist>",
                      64);
    /* Long text goes to the heap, a key and its value both long. */
    char doc[2200];
    char big[1001];
    memset(big, 'k', 1000);
    big[1000] = '\0';
    snprintf(doc, sizeof(doc), "<plist><dict><key>%s</key><string>%s&amp;</string></dict></plist>",
             big, big);
    assert_quick_same(doc, 64);

    /* Out of the subset: libplist reads each of these (its result may
     * differ from what a quick reading would guess), the quick one does
     * not. */
    static const char *const outside[] = {
        "<integer>18446744073709551615</integer>", "<integer>-0</integer>",
        "<integer>007</integer>", "<integer>0x10</integer>", "<integer> 5</integer>",
        "<integer>+5</integer>", "<string>a&#65;</string>", "<string/>", "<true></true>",
        "<string><![CDATA[x<y]]></string>", "<string>a<!-- c -->b</string>",
        "<string>a\r\nb</string>", "<string>a>b</string>", "<real>1.5</real>",
        "<date>2024-05-01T12:00:00Z</date>", "<data>AAEC</data>", "<string>\xff</string>",
    };
    for (size_t i = 0; i < sizeof(outside) / sizeof(outside[0]); i++) {
        snprintf(doc, sizeof(doc), "<plist><dict><key>v</key>%s</dict></plist>", outside[i]);
        plist_t slow = NULL;
        plist_from_xml(doc, (uint32_t)strlen(doc), &slow);
        if (slow == NULL)
            fail_msg("libplist refuses %s", outside[i]);
        plist_free(slow);
        if (mdm__plist_xml_quick(doc, strlen(doc), 64) != NULL)
            fail_msg("the quick reader took %s", outside[i]);
    }
    /* A repeated key (libplist keeps the last value), nesting past the
     * bound, text after the document. */
    static const char *const left[] = {
        "<plist><dict><key>k</key><string>1</string><key>k</key><string>2</string></dict></plist>",
        "<plist><array><array></array></array></plist>",
        "<plist><array/></plist> x",
        "<plist version=\"1.0\"/>",
    };
    for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++)
        if (mdm__plist_xml_quick(left[i], strlen(left[i]), 1) != NULL)
            fail_msg("the quick reader took %s", left[i]);

    /* Through mdm_plist_parse: the same answers and errors as without the
     * quick reader. */
    plist_t p = NULL;
    mdm_err_t err = {0};
    const char *deep = "<plist><array><array><array></array></array></array></plist>";
    assert_int_equal(mdm_plist_parse(deep, strlen(deep), 2, &p, &err), MDM_ELIMIT);
    assert_non_null(strstr(err.msg, "nested deeper than 2"));
    const char *latin1 = "<plist><dict><key>v</key><string>\xe9</string></dict></plist>";
    assert_int_equal(mdm_plist_parse(latin1, strlen(latin1), 0, &p, &err), MDM_EPARSE);
    assert_non_null(strstr(err.msg, "not UTF-8"));
    const char *dup = left[0];
    assert_int_equal(mdm_plist_parse(dup, strlen(dup), 0, &p, &err), 0);
    assert_string_equal(plist_get_string_ptr(plist_dict_get_item(p, "k"), NULL), "2");
    plist_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_stored),
        cmocka_unit_test(test_plist_to_json_types),
        cmocka_unit_test(test_plist_to_json_dates),
        cmocka_unit_test(test_rfc3339_errors),
        cmocka_unit_test(test_plist_to_json_errors),
        cmocka_unit_test(test_plist_to_json_depth),
        cmocka_unit_test(test_json_to_plist_untyped),
        cmocka_unit_test(test_json_to_plist_errors),
        cmocka_unit_test(test_parse_basic),
        cmocka_unit_test(test_parse_xml_quick),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_xml_depth),
        cmocka_unit_test(test_parse_binary_bounds),
        cmocka_unit_test(test_parse_nul_characters),
        cmocka_unit_test(test_parse_not_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
