/* Tests of the binary plist writer (util/bplist.c): every type and every
 * integer, count, reference and offset width it chooses, non-ASCII strings
 * (UTF-16, surrogate pairs, malformed UTF-8), and 300 random trees. Each
 * output is read back by both libplist's reader and the server's bounded
 * parser and compared with the input through libplist's XML writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/err.h"
#include "util/plist.h"
#include "util/plistjson.h"

static char *to_xml(plist_t p)
{
    char *xml = NULL;
    uint32_t len = 0;
    plist_to_xml(p, &xml, &len);
    assert_non_null(xml);
    return xml;
}

/* Writes p, reads it back twice and asserts both copies equal p. Returns the
 * size of the binary form. */
/* Asserts that the binary plist b holds p, for libplist's reader and for
 * the bounded parser. */
static void check_reads_back(plist_t p, const mdm_buf_t *b)
{
    assert_true(b->len >= 8 + 32);
    assert_memory_equal(b->data, "bplist00", 8);
    char *want = to_xml(p);

    plist_t lib = NULL;
    plist_from_bin(b->data, (uint32_t)b->len, &lib);
    if (lib == NULL)
        fail_msg("libplist cannot read the output (%zu bytes)", b->len);
    char *have = to_xml(lib);
    if (strcmp(want, have) != 0)
        fail_msg("libplist read back something else\nwant: %.2000s\nhave: %.2000s", want, have);
    free(have);
    plist_free(lib);

    plist_t own = NULL;
    int rc = mdm_plist_parse(b->data, b->len, 0, &own, NULL);
    if (rc != 0)
        fail_msg("the bounded parser refuses the output: %d", rc);
    have = to_xml(own);
    if (strcmp(want, have) != 0)
        fail_msg("the bounded parser read back something else\nwant: %.2000s\nhave: %.2000s", want,
                 have);
    free(have);
    plist_free(own);
    free(want);
}

/* The tree-less JSON writer on the binary plist b of p: it writes what
 * the JSON of p is, or gives up (returns false) leaving out as it was. */
static bool check_json_of(plist_t p, const mdm_buf_t *b)
{
    mdm_buf_t t = MDM_BUF_INIT;
    mdm_buf_puts(&t, "[");
    if (mdm_bplist_write_json(b->data, b->len, &t) != 0) {
        assert_int_equal(t.len, 1);
        mdm_buf_free(&t);
        return false;
    }
    mdm_buf_putc(&t, ']');
    json_t *j = mdm_plist_to_json(p);
    json_error_t je;
    json_t *w = json_loadb(t.data, t.len, 0, &je);
    if (j == NULL || w == NULL || !json_equal(j, json_array_get(w, 0)))
        fail_msg("tree-less JSON differs: %.2000s", t.data);
    json_decref(j);
    json_decref(w);
    mdm_buf_free(&t);
    return true;
}

/* Values of p, keys included, counted the way the bounded parser does;
 * *dates counts the dates among them. */
static size_t walk_values(plist_t p, size_t *dates)
{
    size_t n = 1;
    *dates += plist_get_node_type(p) == PLIST_DATE;
    if (plist_get_node_type(p) == PLIST_ARRAY) {
        for (uint32_t i = 0; i < plist_array_get_size(p); i++)
            n += walk_values(plist_array_get_item(p, i), dates);
    } else if (plist_get_node_type(p) == PLIST_DICT) {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(p, &it);
        for (;;) {
            char *k = NULL;
            plist_t v = NULL;
            plist_dict_next_item(p, it, &k, &v);
            if (k == NULL)
                break;
            free(k);
            n += 1 + walk_values(v, dates);
        }
        free(it);
    }
    return n;
}

static size_t count_values(plist_t p)
{
    size_t dates = 0;
    return walk_values(p, &dates);
}

/* Whether p holds a date (the tree-less writer leaves those to the parse). */
static bool has_date(plist_t p)
{
    size_t dates = 0;
    walk_values(p, &dates);
    return dates > 0;
}

/* Writes p both ways (keys shared and not): both read back as p, the
 * shared form is no larger and counts p's values. Returns the size of the
 * form without sharing. */
static size_t roundtrip(plist_t p)
{
    mdm_buf_t b = MDM_BUF_INIT, sh = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(p, &b);
    check_reads_back(p, &b);
    size_t values = mdm_plist_to_bin_shared(p, &sh);
    check_reads_back(p, &sh);
    /* Both forms convert without a tree, unless p holds a date (or a kind
     * with no JSON form, which the random trees do not make). */
    json_t *probe = mdm_plist_to_json(p);
    bool plain = probe != NULL && !has_date(p);
    json_decref(probe);
    assert_true(check_json_of(p, &b) == plain);
    assert_true(check_json_of(p, &sh) == plain);
    assert_true(sh.len <= b.len);
    assert_int_equal(values, count_values(p));
    size_t n = b.len;
    mdm_buf_free(&b);
    mdm_buf_free(&sh);
    return n;
}

/* A list of dictionaries with the same keys, as a device's app list is:
 * each key is written once. */
static void test_shared_keys(void **state)
{
    (void)state;
    plist_t list = plist_new_array();
    for (int i = 0; i < 100; i++) {
        plist_t d = plist_new_dict();
        char v[16];
        snprintf(v, sizeof(v), "app%d", i);
        plist_dict_set_item(d, "Identifier", plist_new_string(v));
        plist_dict_set_item(d, "BundleSize", plist_new_uint((uint64_t)i * 1000));
        plist_dict_set_item(d, "IsValidated", plist_new_bool(i % 2));
        plist_array_append_item(list, d);
    }
    size_t plain = roundtrip(list);
    mdm_buf_t sh = MDM_BUF_INIT;
    assert_int_equal(mdm_plist_to_bin_shared(list, &sh), 1 + 100 * 7);
    /* 99 copies of "Identifier", "BundleSize" and "IsValidated" (11 + 11 +
     * 12 bytes each with their markers) and their offsets are gone. */
    if (sh.len + 99 * (11 + 11 + 12) > plain)
        fail_msg("shared %zu bytes, plain %zu", sh.len, plain);
    mdm_buf_free(&sh);
    plist_free(list);
}

/* Dates libplist 2.2 hands back awkwardly: before 2001 with a fraction
 * (truncated towards zero, the fraction's magnitude apart), and outside
 * the 32-bit seconds it reports (from XML). */
static void test_dates(void **state)
{
    (void)state;
    const char *xml = "<plist version=\"1.0\"><array><date>1900-01-01T00:00:00Z</date>"
                      "<date>2100-06-01T10:00:00Z</date><date>1999-05-01T12:00:00Z</date>"
                      "</array></plist>";
    plist_t a = NULL;
    assert_int_equal(mdm_plist_parse(xml, strlen(xml), 0, &a, NULL), 0);
    plist_t half = NULL;
    assert_int_equal(mdm_plist_date_from_rfc3339("2000-12-31T23:59:58.5Z", &half), 0);
    plist_array_append_item(a, half);
    roundtrip(a);
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(a, &b);
    plist_t back = NULL;
    assert_int_equal(mdm_plist_parse(b.data, b.len, 0, &back, NULL), 0);
    assert_int_equal(mdm_plist_date_unix(plist_array_get_item(back, 0)), -2208988800LL);
    assert_int_equal(mdm_plist_date_unix(plist_array_get_item(back, 1)), 4115527200LL);
    assert_int_equal(mdm_plist_date_unix(plist_array_get_item(back, 3)),
                     MDM_PLIST_EPOCH_OFFSET - 2);
    plist_free(back);
    mdm_buf_free(&b);
    plist_free(a);
}

/* Integers at every width the writers choose, and negative ones. */
static const uint64_t edge_ints[] = {0, 1, 0xff, 0x100, 0xffff, 0x10000, 0xffffffffu,
                                     0x100000000ull, (uint64_t)INT64_MAX, (uint64_t)-1,
                                     (uint64_t)-1000};

static void test_scalars(void **state)
{
    (void)state;
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "true", plist_new_bool(1));
    plist_dict_set_item(d, "false", plist_new_bool(0));
    plist_t a = plist_new_array();
    for (size_t i = 0; i < sizeof(edge_ints) / sizeof(edge_ints[0]); i++)
        plist_array_append_item(a, plist_new_uint(edge_ints[i]));
    plist_dict_set_item(d, "ints", a);
    plist_dict_set_item(d, "real", plist_new_real(-2.5e-3));
    plist_dict_set_item(d, "date", plist_new_date(757382400, 0));
    plist_dict_set_item(d, "empty_string", plist_new_string(""));
    plist_dict_set_item(d, "empty_data", plist_new_data("", 0));
    plist_dict_set_item(d, "data", plist_new_data("\x00\x01\x02\xff", 4));
    plist_dict_set_item(d, "empty_array", plist_new_array());
    plist_dict_set_item(d, "empty_dict", plist_new_dict());
    plist_dict_set_item(d, "uid", plist_new_uid(7));
    roundtrip(d);
    plist_free(d);

    /* The root need not be a container. */
    plist_t s = plist_new_string("only");
    roundtrip(s);
    plist_free(s);
}

static void test_counts_and_widths(void **state)
{
    (void)state;
    /* Counts of 14, 15 and 16 cross the one-nibble limit; 300 objects need
     * two-byte references; 70,000 need four; 100 KB of data needs wider
     * offsets. */
    const size_t counts[] = {14, 15, 16, 300, 70000};
    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
        plist_t a = plist_new_array();
        plist_t d = plist_new_dict();
        for (size_t i = 0; i < counts[c]; i++) {
            plist_array_append_item(a, plist_new_uint(i));
            char key[32];
            snprintf(key, sizeof(key), "k%zu", i);
            plist_dict_set_item(d, key, plist_new_string(key));
        }
        plist_t root = plist_new_dict();
        plist_dict_set_item(root, "a", a);
        plist_dict_set_item(root, "d", d);
        char text[21] = "";
        memset(text, 'x', counts[c] % 20);
        plist_dict_set_item(root, "s", plist_new_string(text));
        roundtrip(root);
        plist_free(root);
    }
    char *big = calloc(1, 100000);
    plist_t root = plist_new_array();
    plist_array_append_item(root, plist_new_data(big, 100000));
    plist_array_append_item(root, plist_new_string("after"));
    size_t n = roundtrip(root);
    assert_true(n > 100000);
    plist_free(root);
    free(big);
}

static void test_strings(void **state)
{
    (void)state;
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "latin", plist_new_string("caf\xc3\xa9"));
    plist_dict_set_item(d, "cjk", plist_new_string("\xe7\xab\xaf\xe6\x9c\xab"));
    plist_dict_set_item(d, "emoji", plist_new_string("a\xf0\x9f\x93\xb1z"));
    plist_dict_set_item(d, "k\xc3\xa9y", plist_new_string("non-ASCII key"));
    char long_utf8[64] = "";
    for (int i = 0; i < 20; i++)
        strcat(long_utf8, "\xc3\xa9");
    plist_dict_set_item(d, "long", plist_new_string(long_utf8));
    roundtrip(d);
    plist_free(d);

    /* Malformed UTF-8 (a lone continuation byte, a truncated sequence, an
     * encoded surrogate) becomes U+FFFD, one per bad byte. */
    plist_t bad = plist_new_string("a\x80" "b\xe2\x82" "c\xed\xa0\x80");
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(bad, &b);
    plist_t back = NULL;
    plist_from_bin(b.data, (uint32_t)b.len, &back);
    assert_non_null(back);
    assert_string_equal(plist_get_string_ptr(back, NULL),
                        "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd"
                        "\xef\xbf\xbd");
    plist_free(back);
    plist_free(bad);
    mdm_buf_free(&b);
}

/* ---- random trees ----------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static plist_t random_string(void)
{
    static const char *const parts[] = {"a", "Z", "0", " ", "\xc3\xa9", "\xe2\x82\xac",
                                        "\xf0\x9f\x98\x80", "<&>", "key"};
    char s[80] = "";
    size_t n = next() % 12;
    for (size_t i = 0; i < n; i++)
        strcat(s, parts[next() % (sizeof(parts) / sizeof(parts[0]))]);
    return plist_new_string(s);
}

static plist_t random_tree(int depth)
{
    int kind = (int)(next() % (depth >= 6 ? 7 : 9));
    switch (kind) {
    case 0:
        return plist_new_bool(next() % 2);
    case 1:
        return plist_new_uint(next() >> (next() % 64));
    case 2:
        return plist_new_real((double)(int64_t)next() / 1e6);
    case 3:
        return plist_new_date((int32_t)(next() % 2000000000), 0);
    case 4: {
        unsigned char buf[40];
        size_t n = next() % sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)next();
        return plist_new_data((const char *)buf, n);
    }
    case 5:
    case 6:
        return random_string();
    case 7: {
        plist_t a = plist_new_array();
        size_t n = next() % 20;
        for (size_t i = 0; i < n; i++)
            plist_array_append_item(a, random_tree(depth + 1));
        return a;
    }
    default: {
        plist_t d = plist_new_dict();
        size_t n = next() % 20;
        for (size_t i = 0; i < n; i++) {
            char key[24];
            snprintf(key, sizeof(key), "%s%u", next() % 4 ? "k" : "\xc3\xa9", (unsigned)(next() % 50));
            plist_dict_set_item(d, key, random_tree(depth + 1));
        }
        return d;
    }
    }
}

static void test_random_trees(void **state)
{
    (void)state;
    for (int i = 0; i < 300; i++) {
        plist_t t = plist_new_dict();
        plist_dict_set_item(t, "root", random_tree(0));
        roundtrip(t);
        plist_free(t);
    }
}


/* ---- values read in place (mdm_bpl, mdm_rec) ------------------------------------ */

/* Asserts that every getter of a record read in place answers as the same
 * getter on the parsed tree would, for every key of the top dictionary and
 * two absent ones; and that the plain kinds are answered without parsing. */
static void check_in_place(const void *bin, size_t len)
{
    plist_t tree = NULL;
    if (mdm_plist_load_stored(bin, len, &tree) != 0 || plist_get_node_type(tree) != PLIST_DICT) {
        plist_free(tree);
        return;
    }
    mdm_bpl_t bp;
    assert_int_equal(mdm_bpl_open(&bp, bin, len), 0);
    char **keys = NULL;
    size_t nkeys = 0;
    plist_dict_iter it = NULL;
    plist_dict_new_iter(tree, &it);
    for (;;) {
        char *k = NULL;
        plist_t v = NULL;
        plist_dict_next_item(tree, it, &k, &v);
        if (k == NULL)
            break;
        keys = realloc(keys, (nkeys + 2) * sizeof(*keys));
        keys[nkeys++] = k;
    }
    free(it);
    keys = realloc(keys, (nkeys + 2) * sizeof(*keys));
    keys[nkeys++] = strdup("absent");
    keys[nkeys++] = strdup("");
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i];
        plist_t node = plist_dict_get_item(tree, k);
        plist_type t = node ? plist_get_node_type(node) : PLIST_NONE;
        bool ascii_key = true;
        for (const char *c = k; *c; c++)
            ascii_key = ascii_key && (unsigned char)*c < 0x80;
        mdm_rec_t r;
        char buf[64];

        mdm_rec_init_bin(&r, bin, len);
        const char *want = mdm_pl_str(tree, k), *have = mdm_rec_str(&r, k, buf, sizeof(buf));
        if ((want == NULL) != (have == NULL) || (want && strcmp(want, have) != 0))
            fail_msg("string %s: want %s, have %s", k, want ? want : "(none)",
                     have ? have : "(none)");
        mdm_rec_free(&r);

        mdm_rec_init_bin(&r, bin, len);
        size_t wl = 0, hl = 0;
        const unsigned char *wd = mdm_pl_data(tree, k, &wl), *hd = mdm_rec_data(&r, k, &hl);
        assert_true((wd == NULL) == (hd == NULL));
        assert_int_equal(wl, hl);
        if (wl > 0)
            assert_memory_equal(wd, hd, wl);
        /* Data is answered in place. */
        if (ascii_key && (t == PLIST_DATA || t == PLIST_NONE))
            assert_null(r.tree);
        mdm_rec_free(&r);

        mdm_rec_init_bin(&r, bin, len);
        assert_int_equal(mdm_rec_bool(&r, k, true), mdm_pl_bool(tree, k, true));
        assert_int_equal(mdm_rec_bool(&r, k, false), mdm_pl_bool(tree, k, false));
        if (ascii_key && t == PLIST_BOOLEAN)
            assert_null(r.tree);
        mdm_rec_free(&r);

        mdm_rec_init_bin(&r, bin, len);
        assert_true(mdm_rec_uint(&r, k, 77) == mdm_pl_uint(tree, k, 77));
        assert_true(mdm_rec_int(&r, k, -5) == mdm_pl_int(tree, k, -5));
        mdm_rec_free(&r);
        free(keys[i]);
    }
    free(keys);
    plist_free(tree);
}

/* Records of every kind of top-level value, written by the server's writer
 * and by libplist's (which shares objects and sizes integers its own way);
 * read in place and compared with the parse. */
static void test_read_in_place(void **state)
{
    (void)state;
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "enabled", plist_new_bool(1));
    plist_dict_set_item(d, "off", plist_new_bool(0));
    for (size_t i = 0; i < sizeof(edge_ints) / sizeof(edge_ints[0]); i++) {
        char k[16];
        snprintf(k, sizeof(k), "int%zu", i);
        plist_dict_set_item(d, k, plist_new_uint(edge_ints[i]));
    }
    plist_dict_set_item(d, "real", plist_new_real(-2.5e-3));
    plist_dict_set_item(d, "date", plist_new_date(757382400, 0));
    plist_dict_set_item(d, "empty", plist_new_string(""));
    plist_dict_set_item(d, "device_id", plist_new_string("00008030-000A1B2C3D4E5F60"));
    plist_dict_set_item(d, "long", plist_new_string("a string longer than the sixty-four bytes "
                                                    "of the test's buffer, so read from the tree"));
    plist_dict_set_item(d, "user", plist_new_string("J\xc3\xbcrgen"));
    plist_dict_set_item(d, "\xc3\xa9t\xc3\xa9", plist_new_string("summer"));
    plist_dict_set_item(d, "cert_fp", plist_new_data("\x00\x01\x02\xff", 4));
    plist_dict_set_item(d, "nothing", plist_new_data("", 0));
    plist_dict_set_item(d, "list", plist_new_array());
    plist_dict_set_item(d, "dict", plist_new_dict());
    plist_dict_set_item(d, "uid", plist_new_uid(7));

    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(d, &b);
    check_in_place(b.data, b.len);

    /* The plain kinds really are read in place. */
    mdm_rec_t r;
    char buf[64];
    mdm_rec_init_bin(&r, b.data, b.len);
    assert_true(r.inplace);
    assert_true(mdm_rec_bool(&r, "enabled", false));
    assert_true(mdm_rec_uint(&r, "int8", 0) == (uint64_t)INT64_MAX);
    assert_true(mdm_rec_int(&r, "int10", 0) == -1000);
    assert_string_equal(mdm_rec_str(&r, "device_id", buf, sizeof(buf)), "00008030-000A1B2C3D4E5F60");
    assert_null(mdm_rec_str(&r, "enabled", buf, sizeof(buf)));
    assert_null(r.tree);
    /* A UTF-16 string needs the tree; from then on the tree answers. */
    assert_string_equal(mdm_rec_str(&r, "user", buf, sizeof(buf)), "J\xc3\xbcrgen");
    assert_non_null(r.tree);
    plist_dict_set_item(r.tree, "enabled", plist_new_bool(0));
    assert_false(mdm_rec_bool(&r, "enabled", true));
    mdm_rec_free(&r);

    char *lib = NULL;
    uint32_t llen = 0;
    plist_to_bin(d, &lib, &llen);
    assert_non_null(lib);
    check_in_place(lib, llen);
    free(lib);

    /* Not a binary dictionary: nothing in place, the parse decides. */
    mdm_bpl_t bp;
    plist_t s = plist_new_string("only");
    mdm_buf_reset(&b);
    mdm_plist_to_bin_buf(s, &b);
    assert_int_equal(mdm_bpl_open(&bp, b.data, b.len), MDM_EPARSE);
    mdm_rec_init_bin(&r, b.data, b.len);
    assert_false(r.inplace);
    assert_true(mdm_rec_bool(&r, "x", true));
    assert_true(r.failed);
    mdm_rec_free(&r);
    plist_free(s);
    const char xml[] = "<plist><dict><key>a</key><true/></dict></plist>";
    assert_int_equal(mdm_bpl_open(&bp, xml, sizeof(xml) - 1), MDM_EPARSE);
    mdm_rec_init_bin(&r, xml, sizeof(xml) - 1);
    assert_true(mdm_rec_bool(&r, "a", false));
    mdm_rec_free(&r);
    mdm_buf_free(&b);
    plist_free(d);
}

/* Every truncation and every single-byte change of a record: the in-place
 * reader stays inside the buffer (ASan checks), and whenever the damaged
 * bytes still parse, it agrees with the parse. */
static void test_read_in_place_damaged(void **state)
{
    (void)state;
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "enabled", plist_new_bool(1));
    plist_dict_set_item(d, "session", plist_new_uint(300));
    plist_dict_set_item(d, "last_seen_at", plist_new_uint(1796581621510ull));
    plist_dict_set_item(d, "cert_fp", plist_new_data("0123456789abcdef0123456789abcdef", 32));
    plist_dict_set_item(d, "device_id", plist_new_string("00008030-BE00000000000000"));
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(d, &b);
    unsigned char *copy = malloc(b.len);
    for (size_t n = 0; n <= b.len; n++) {
        memcpy(copy, b.data, n);
        mdm_bpl_t bp;
        mdm_bpl_val_t v;
        if (mdm_bpl_open(&bp, copy, n) == 0)
            (void)mdm_bpl_get(&bp, "session", &v);
        check_in_place(copy, n);
    }
    for (size_t i = 0; i < b.len; i++) {
        for (unsigned x = 1; x < 256; x <<= 1) {
            memcpy(copy, b.data, b.len);
            copy[i] ^= (unsigned char)x;
            check_in_place(copy, b.len);
        }
    }
    free(copy);
    mdm_buf_free(&b);
    plist_free(d);
}

/* Random top-level dictionaries, by both writers. */
static void test_read_in_place_random(void **state)
{
    (void)state;
    for (int i = 0; i < 300; i++) {
        plist_t t = plist_new_dict();
        size_t n = next() % 24;
        for (size_t j = 0; j < n; j++) {
            char key[24];
            snprintf(key, sizeof(key), "%s%u", next() % 4 ? "k" : "\xc3\xa9", (unsigned)(next() % 40));
            plist_dict_set_item(t, key, random_tree(4));
        }
        mdm_buf_t b = MDM_BUF_INIT;
        mdm_plist_to_bin_buf(t, &b);
        check_in_place(b.data, b.len);
        mdm_buf_free(&b);
        char *lib = NULL;
        uint32_t llen = 0;
        plist_to_bin(t, &lib, &llen);
        check_in_place(lib, llen);
        free(lib);
        plist_free(t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_counts_and_widths),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_random_trees),
        cmocka_unit_test(test_shared_keys),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_read_in_place),
        cmocka_unit_test(test_read_in_place_damaged),
        cmocka_unit_test(test_read_in_place_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
