/* Fuzz target: the bounded parser of untrusted plists (mdm_plist_parse),
 * what the server does next with a device's plist (JSON for the API, binary
 * records for the store), and the checks that tie those together.
 *
 * The input is the plist bytes, XML or binary, as a device would send them.
 * Properties checked on every input that parses (abort() when broken):
 *  - mdm_plist_to_json(), mdm_plist_to_json_checked() and the text writer
 *    mdm_plist_write_json() agree;
 *  - JSON -> plist -> JSON is the identity on what plist -> JSON made;
 *  - the binary plist the store would keep parses again with the same
 *    limits, and so does its form with shared keys (the same tree);
 *  - mdm_bplist_write_json, on the input and on both binary forms, writes
 *    what the parse's JSON is, or nothing;
 *  - as a stored result record (binary layout or an older plist), the
 *    input decodes or is refused, and what decodes encodes to bytes that
 *    decode to the same record;
 *  - as a stored record read in place (mdm_rec_*, on the input and on the
 *    server's binary form of it): every getter, for every top-level key,
 *    answers as the same getter on the parsed record;
 *  - what the quick XML reader (mdm__plist_xml_quick) accepts, libplist's
 *    XML reader reads to the same tree, and that tree passes the checks of
 *    the usual path. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdm/queue.h"
#include "util/buf.h"
#include "util/plist.h"
#include "util/plistjson.h"

static void fail(const char *what, const mdm_err_t *err)
{
    fprintf(stderr, "fuzz_plist: %s%s%s\n", what, err && err->msg[0] ? ": " : "",
            err && err->msg[0] ? err->msg : "");
    abort();
}

static bool rec_equal(const mdm_result_rec_t *a, const mdm_result_rec_t *b)
{
    return a->has_status == b->has_status && strcmp(a->status, b->status) == 0 &&
           strcmp(a->request_type, b->request_type) == 0 && a->queued_at == b->queued_at &&
           a->updated_at == b->updated_at && a->sent_at == b->sent_at &&
           a->completed_at == b->completed_at && a->notnow_at == b->notnow_at &&
           a->notnow_session == b->notnow_session && a->notnow_count == b->notnow_count &&
           a->priority == b->priority && a->seq == b->seq && a->has_raw == b->has_raw &&
           a->raw.len == b->raw.len &&
           (a->raw.len == 0 || memcmp(a->raw.data, b->raw.data, a->raw.len) == 0);
}

static void result_record(const uint8_t *data, size_t size)
{
    mdm_result_rec_t r, r2;
    if (mdm_result_rec_decode(data, size, &r) != 0) {
        mdm_result_rec_free(&r);
        return;
    }
    mdm_buf_t enc = MDM_BUF_INIT;
    mdm_result_rec_encode(&r, &enc);
    if (mdm_result_rec_decode(enc.data, enc.len, &r2) != 0)
        fail("an encoded result record does not decode", NULL);
    if (!rec_equal(&r, &r2))
        fail("a result record changed through encode and decode", NULL);
    mdm_result_rec_free(&r2);
    mdm_result_rec_free(&r);
    mdm_buf_free(&enc);
}

/* The in-place reader of stored records against the parse of the same
 * bytes (when they parse as a dictionary; otherwise it must only stay in
 * bounds). */
static void in_place(const void *data, size_t size)
{
    mdm_bpl_t bp;
    mdm_bpl_val_t v;
    if (mdm_bpl_open(&bp, data, size) == 0)
        (void)mdm_bpl_get(&bp, "k", &v);
    plist_t tree = NULL;
    if (mdm_plist_load_stored(data, size, &tree) != 0 || plist_get_node_type(tree) != PLIST_DICT) {
        plist_free(tree);
        return;
    }
    plist_dict_iter it = NULL;
    plist_dict_new_iter(tree, &it);
    for (int n = 0; n < 64; n++) {
        char *k = NULL;
        plist_t val = NULL;
        plist_dict_next_item(tree, it, &k, &val);
        if (k == NULL)
            break;
        char buf[32];
        mdm_rec_t r;
        mdm_rec_init_bin(&r, data, size);
        const char *a = mdm_pl_str(tree, k), *b = mdm_rec_str(&r, k, buf, sizeof(buf));
        if ((a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0))
            fail("a string read in place differs from the parse", NULL);
        mdm_rec_free(&r);
        mdm_rec_init_bin(&r, data, size);
        size_t al = 0, bl = 0;
        const unsigned char *ad = mdm_pl_data(tree, k, &al), *bd = mdm_rec_data(&r, k, &bl);
        if ((ad == NULL) != (bd == NULL) || al != bl || (al > 0 && memcmp(ad, bd, al) != 0))
            fail("data read in place differs from the parse", NULL);
        mdm_rec_free(&r);
        mdm_rec_init_bin(&r, data, size);
        if (mdm_rec_bool(&r, k, true) != mdm_pl_bool(tree, k, true) ||
            mdm_rec_bool(&r, k, false) != mdm_pl_bool(tree, k, false) ||
            mdm_rec_uint(&r, k, 3) != mdm_pl_uint(tree, k, 3) ||
            mdm_rec_int(&r, k, -3) != mdm_pl_int(tree, k, -3))
            fail("a scalar read in place differs from the parse", NULL);
        mdm_rec_free(&r);
        free(k);
    }
    free(it);
    plist_free(tree);
}

/* The tree-less JSON writer of binary plists (results read back through the
 * admin API; the stored ones passed mdm_plist_load when they came in): for
 * bytes that load, it writes what the tree's JSON is, or gives up; for
 * bytes that do not, what it writes is still JSON. When it gives up it
 * leaves its buffer as it was. */
static void bplist_json(const void *data, size_t size)
{
    mdm_buf_t t = MDM_BUF_INIT;
    mdm_buf_puts(&t, "[");
    if (mdm_bplist_write_json(data, size, &t) != 0) {
        if (t.len != 1)
            fail("mdm_bplist_write_json gave up but left text", NULL);
        mdm_buf_free(&t);
        return;
    }
    mdm_buf_putc(&t, ']');
    json_error_t je;
    json_t *w = json_loadb(t.data, t.len, 0, &je);
    if (w == NULL)
        fail("mdm_bplist_write_json wrote text that is not JSON", NULL);
    plist_t tree = NULL;
    json_t *j = NULL;
    if (mdm_plist_load(data, size, &tree) == 0) {
        j = mdm_plist_to_json(tree);
        if (j == NULL || !json_equal(j, json_array_get(w, 0)))
            fail("mdm_bplist_write_json wrote other JSON than the parse", NULL);
    }
    json_decref(j);
    json_decref(w);
    plist_free(tree);
    mdm_buf_free(&t);
}

/* Whether two trees are the same: types, values (with libplist's own
 * comparison, which also tells 64-bit from 128-bit integers), and the keys
 * of dictionaries in their order. */
static bool same_tree(plist_t a, plist_t b, int depth)
{
    plist_type t = plist_get_node_type(a);
    if (t != plist_get_node_type(b) || depth > MDM_PLIST_MAX_DEPTH + 1)
        return false;
    if (t == PLIST_ARRAY) {
        uint32_t n = plist_array_get_size(a);
        if (n != plist_array_get_size(b))
            return false;
        for (uint32_t i = 0; i < n; i++)
            if (!same_tree(plist_array_get_item(a, i), plist_array_get_item(b, i), depth + 1))
                return false;
        return true;
    }
    if (t == PLIST_DICT) {
        if (plist_dict_get_size(a) != plist_dict_get_size(b))
            return false;
        plist_dict_iter ia = NULL, ib = NULL;
        plist_dict_new_iter(a, &ia);
        plist_dict_new_iter(b, &ib);
        bool same = true;
        for (;;) {
            char *ka = NULL, *kb = NULL;
            plist_t va = NULL, vb = NULL;
            plist_dict_next_item(a, ia, &ka, &va);
            plist_dict_next_item(b, ib, &kb, &vb);
            bool end = ka == NULL || kb == NULL;
            same = (ka == NULL) == (kb == NULL) &&
                   (end || (strcmp(ka, kb) == 0 && same_tree(va, vb, depth + 1)));
            free(ka);
            free(kb);
            if (end || !same)
                break;
        }
        free(ia);
        free(ib);
        return same;
    }
    return plist_compare_node_value(a, b) != 0;
}

/* The quick XML reader against libplist's, on what the quick one takes. */
static void quick_xml(const uint8_t *data, size_t size)
{
    size_t len = size;
    while (len > 0 && data[len - 1] == 0)
        len--;
    if (len == 0 || memchr(data, 0, len) != NULL || (len >= 8 && memcmp(data, "bplist00", 8) == 0))
        return;
    for (int depth = 1; depth <= MDM_PLIST_MAX_DEPTH; depth += MDM_PLIST_MAX_DEPTH - 1) {
        plist_t q = mdm__plist_xml_quick((const char *)data, len, depth);
        if (q == NULL)
            continue;
        plist_t slow = NULL;
        plist_from_xml((const char *)data, (uint32_t)len, &slow);
        if (slow == NULL)
            fail("the quick XML reader took a document libplist refuses", NULL);
        if (!same_tree(q, slow, 0))
            fail("the quick XML reader built another tree than libplist", NULL);
        /* The usual path's checks pass on it (nesting, UTF-8). */
        plist_t p = NULL;
        mdm_buf_t bin = MDM_BUF_INIT;
        mdm_err_t err = {0};
        mdm_plist_to_bin_buf(q, &bin);
        if (mdm_plist_parse(bin.data, bin.len, depth, &p, &err) != 0)
            fail("a tree of the quick XML reader does not pass the usual checks", &err);
        plist_free(p);
        mdm_buf_free(&bin);
        plist_free(slow);
        plist_free(q);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    quick_xml(data, size);
    result_record(data, size);
    in_place(data, size);
    bplist_json(data, size);
    plist_t p = NULL, back = NULL, again = NULL;
    json_t *j = NULL, *jc = NULL, *j2 = NULL;
    mdm_buf_t bin = MDM_BUF_INIT;
    mdm_err_t err = {0};

    if (mdm_plist_parse((const char *)data, size, 0, &p, &err) != 0) {
        if (p != NULL)
            fail("mdm_plist_parse failed but set *out", &err);
        return 0;
    }

    j = mdm_plist_to_json(p);
    int rc = mdm_plist_to_json_checked(p, 0, &jc, &err);
    if ((rc == 0) != (j != NULL))
        fail("mdm_plist_to_json and mdm_plist_to_json_checked disagree", &err);
    /* The text writer (large results in the admin API) fails alike or
     * writes text that loads to the same value. */
    mdm_buf_t wtext = MDM_BUF_INIT;
    mdm_err_t werr = {0};
    int wrc = mdm_plist_write_json(p, 0, &wtext, &werr);
    if (wrc != rc || (rc != 0 && (wtext.len != 0 || strcmp(werr.msg, err.msg) != 0)))
        fail("mdm_plist_write_json and mdm_plist_to_json_checked disagree", &werr);
    if (rc == 0) {
        json_error_t je;
        json_t *w = json_loadb(wtext.data, wtext.len, JSON_DECODE_ANY, &je);
        if (w == NULL || !json_equal(w, jc))
            fail("mdm_plist_write_json wrote another value", NULL);
        json_decref(w);
    }
    mdm_buf_free(&wtext);
    if (j != NULL) {
        if (!json_equal(j, jc))
            fail("mdm_plist_to_json and mdm_plist_to_json_checked give different JSON", NULL);
        char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
        free(text);
        if (mdm_json_to_plist_checked(j, "", MDM_PLIST_MAX_DEPTH, &back, &err) != 0)
            fail("JSON made from a plist does not convert back", &err);
        j2 = mdm_plist_to_json(back);
        if (j2 == NULL || !json_equal(j, j2))
            fail("plist -> JSON -> plist -> JSON changed the value", NULL);
    }

    /* The store keeps device plists as binary records. */
    mdm_plist_to_bin_buf(p, &bin);
    if (bin.len > 0 && mdm_plist_parse(bin.data, bin.len, 0, &again, &err) != 0)
        fail("the binary form of a parsed plist does not parse again", &err);
    in_place(bin.data, bin.len);

    /* With each dictionary key written once (large reports are stored so),
     * it parses again, and says what the input said: the same JSON. */
    mdm_buf_t shared = MDM_BUF_INIT;
    size_t values = mdm_plist_to_bin_shared(p, &shared);
    bplist_json(shared.data, shared.len);
    bplist_json(bin.data, bin.len);
    if (values <= MDM_PLIST_MAX_NODES && shared.len > 0) {
        plist_t sp = NULL;
        if (mdm_plist_parse(shared.data, shared.len, 0, &sp, &err) != 0)
            fail("the shared-key binary form of a parsed plist does not parse again", &err);
        json_t *sj = j != NULL ? mdm_plist_to_json(sp) : NULL;
        if (j != NULL && (sj == NULL || !json_equal(j, sj)))
            fail("the shared-key binary form reads back as other JSON", NULL);
        json_decref(sj);
        plist_free(sp);
    }
    mdm_buf_free(&shared);

    plist_free(again);
    plist_free(back);
    json_decref(j2);
    json_decref(jc);
    json_decref(j);
    mdm_buf_free(&bin);
    plist_free(p);
    return 0;
}
