/* A binary property list writer (format "bplist00") for libplist trees.
 *
 * libplist's own writer hashes every node to share equal objects, which costs
 * several allocations per node; the server writes a plist on nearly every
 * request (enrollments, queue entries, results, decision log), so this one
 * makes two flat passes instead and shares nothing:
 *
 *   1. number the objects in pre-order (a dictionary is followed by its keys,
 *      then by its values' subtrees; an array by its items' subtrees) and
 *      record each container's child references;
 *   2. write the objects in that order, then the offset table and trailer.
 *
 * Integers are written in the smallest of 1, 2, 4 or 8 bytes (8-byte ones
 * read back as signed, which is how libplist 2.2 stores negative numbers);
 * strings in ASCII when they are, otherwise as UTF-16BE (invalid UTF-8 turns
 * into U+FFFD); dates as seconds since 2001-01-01 in a double (dates libplist
 * cannot give as 32-bit seconds in whole seconds). mdm_plist_to_bin_shared()
 * also writes each distinct dictionary key once. */
#include "util/plist.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"
#include "util/plistjson.h"

typedef struct obj {
    plist_t node;    /* NULL for a dictionary key */
    char *key;       /* the key's text (owned) */
    uint32_t first;  /* containers: index of the first child reference */
    uint32_t nrefs;  /* containers: number of child references */
} obj_t;

typedef struct writer {
    obj_t *objs;
    size_t nobjs, objs_cap;
    uint32_t *refs;
    size_t nrefs, refs_cap;
    mdm_buf_t *out;
    int ref_size;
    size_t values;   /* values of the tree, keys included (what a reader expands) */
    bool share_keys; /* one object per distinct dictionary key */
    uint32_t *keys;  /* open addressing: object index + 1 of each key, 0 free */
    size_t keys_cap, nkeys;
} writer_t;

static uint32_t push_obj(writer_t *w, plist_t node, char *key)
{
    if (w->nobjs == w->objs_cap) {
        w->objs_cap = w->objs_cap ? w->objs_cap * 2 : 32;
        w->objs = mdm_realloc(w->objs, w->objs_cap * sizeof(*w->objs));
    }
    w->objs[w->nobjs] = (obj_t){.node = node, .key = key};
    return (uint32_t)w->nobjs++;
}

static uint32_t reserve_refs(writer_t *w, size_t n)
{
    if (w->nrefs + n > w->refs_cap) {
        size_t cap = w->refs_cap ? w->refs_cap : 64;
        while (cap < w->nrefs + n)
            cap *= 2;
        w->refs = mdm_realloc(w->refs, cap * sizeof(*w->refs));
        w->refs_cap = cap;
    }
    uint32_t first = (uint32_t)w->nrefs;
    w->nrefs += n;
    return first;
}

static uint64_t key_hash(const char *k)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ull;
    return h;
}

/* The object of dictionary key `key` (owned; freed when an equal key has
 * one already). */
static uint32_t key_obj(writer_t *w, char *key)
{
    if (!w->share_keys)
        return push_obj(w, NULL, key);
    if (2 * (w->nkeys + 1) > w->keys_cap) {
        size_t cap = w->keys_cap ? 2 * w->keys_cap : 64;
        uint32_t *t = mdm_calloc(cap, sizeof(*t));
        for (size_t i = 0; i < w->keys_cap; i++) {
            if (w->keys[i] == 0)
                continue;
            size_t j = key_hash(w->objs[w->keys[i] - 1].key) & (cap - 1);
            while (t[j] != 0)
                j = (j + 1) & (cap - 1);
            t[j] = w->keys[i];
        }
        mdm_free(w->keys);
        w->keys = t;
        w->keys_cap = cap;
    }
    size_t j = key_hash(key) & (w->keys_cap - 1);
    while (w->keys[j] != 0) {
        uint32_t id = w->keys[j] - 1;
        if (strcmp(w->objs[id].key, key) == 0) {
            free(key);
            return id;
        }
        j = (j + 1) & (w->keys_cap - 1);
    }
    uint32_t id = push_obj(w, NULL, key);
    w->keys[j] = id + 1;
    w->nkeys++;
    return id;
}

/* Pass 1: numbers node and its subtree. The trees written here were built
 * by the server or went through the bounded parser, so recursion depth is
 * bounded by MDM_PLIST_MAX_DEPTH. */
static uint32_t number(writer_t *w, plist_t node)
{
    uint32_t id = push_obj(w, node, NULL);
    w->values++;
    plist_type t = plist_get_node_type(node);
    if (t == PLIST_ARRAY) {
        uint32_t n = plist_array_get_size(node);
        uint32_t first = reserve_refs(w, n);
        w->objs[id].first = first;
        w->objs[id].nrefs = n;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t child = number(w, plist_array_get_item(node, i));
            w->refs[first + i] = child;
        }
    } else if (t == PLIST_DICT) {
        uint32_t n = plist_dict_get_size(node);
        uint32_t first = reserve_refs(w, 2 * (size_t)n);
        w->objs[id].first = first;
        plist_dict_iter it = NULL;
        plist_dict_new_iter(node, &it);
        uint32_t i = 0;
        for (; i < n; i++) {
            char *key = NULL;
            plist_t val = NULL;
            plist_dict_next_item(node, it, &key, &val);
            if (key == NULL || val == NULL) {
                free(key);
                break;
            }
            w->values++;
            w->refs[first + i] = key_obj(w, key);
            uint32_t child = number(w, val);
            w->refs[first + n + i] = child;
        }
        free(it);
        /* A shorter walk than the size said (cannot happen with libplist's
         * own trees): close the gap between keys and values. */
        if (i < n)
            memmove(&w->refs[first + i], &w->refs[first + n], i * sizeof(*w->refs));
        w->objs[id].nrefs = 2 * i;
    }
    return id;
}

static void put_be(mdm_buf_t *b, uint64_t v, int size)
{
    unsigned char tmp[8];
    for (int i = 0; i < size; i++)
        tmp[i] = (unsigned char)(v >> (8 * (size - 1 - i)));
    mdm_buf_append(b, tmp, (size_t)size);
}

static void put_int(mdm_buf_t *b, uint64_t v)
{
    if (v <= 0xff) {
        mdm_buf_putc(b, (char)0x10);
        put_be(b, v, 1);
    } else if (v <= 0xffff) {
        mdm_buf_putc(b, (char)0x11);
        put_be(b, v, 2);
    } else if (v <= 0xffffffffu) {
        mdm_buf_putc(b, (char)0x12);
        put_be(b, v, 4);
    } else {
        mdm_buf_putc(b, (char)0x13);
        put_be(b, v, 8);
    }
}

/* A marker byte with a count: the low nibble, or 0xF and an integer. */
static void put_marker(mdm_buf_t *b, unsigned kind, uint64_t count)
{
    if (count < 15) {
        mdm_buf_putc(b, (char)(kind << 4 | (unsigned)count));
    } else {
        mdm_buf_putc(b, (char)(kind << 4 | 0xf));
        put_int(b, count);
    }
}

static void put_double(mdm_buf_t *b, unsigned char marker, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    mdm_buf_putc(b, (char)marker);
    put_be(b, bits, 8);
}

/* Decodes one UTF-8 sequence at s[*i]; U+FFFD for anything malformed. */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *i)
{
    unsigned char c = s[*i];
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
        (*i)++;
        return c;
    } else if (c >= 0xc2 && c <= 0xdf) {
        cp = c & 0x1f;
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        cp = c & 0x0f;
        len = 3;
    } else if (c >= 0xf0 && c <= 0xf4) {
        cp = c & 0x07;
        len = 4;
    } else {
        (*i)++;
        return 0xfffd;
    }
    if (*i + len > n) {
        (*i)++;
        return 0xfffd;
    }
    for (size_t k = 1; k < len; k++) {
        if ((s[*i + k] & 0xc0) != 0x80) {
            (*i)++;
            return 0xfffd;
        }
        cp = cp << 6 | (s[*i + k] & 0x3f);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        (*i)++;
        return 0xfffd;
    }
    *i += len;
    return cp;
}

static void put_string(mdm_buf_t *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = u[i] < 0x80;
    if (ascii) {
        put_marker(b, 0x5, n);
        mdm_buf_append(b, s, n);
        return;
    }
    size_t units = 0;
    for (size_t i = 0; i < n;)
        units += utf8_next(u, n, &i) >= 0x10000 ? 2 : 1;
    put_marker(b, 0x6, units);
    mdm_buf_reserve(b, units * 2);
    for (size_t i = 0; i < n;) {
        uint32_t cp = utf8_next(u, n, &i);
        if (cp >= 0x10000) {
            cp -= 0x10000;
            put_be(b, 0xd800 + (cp >> 10), 2);
            put_be(b, 0xdc00 + (cp & 0x3ff), 2);
        } else {
            put_be(b, cp, 2);
        }
    }
}

/* Pass 2: one object. */
static void write_obj(writer_t *w, const obj_t *o)
{
    mdm_buf_t *b = w->out;
    if (o->node == NULL) {
        put_string(b, o->key, strlen(o->key));
        return;
    }
    switch (plist_get_node_type(o->node)) {
    case PLIST_BOOLEAN: {
        uint8_t v = 0;
        plist_get_bool_val(o->node, &v);
        mdm_buf_putc(b, v ? (char)0x09 : (char)0x08);
        break;
    }
    case PLIST_UINT: {
        uint64_t v = 0;
        plist_get_uint_val(o->node, &v);
        put_int(b, v);
        break;
    }
    case PLIST_REAL: {
        double d = 0;
        plist_get_real_val(o->node, &d);
        put_double(b, 0x23, d);
        break;
    }
    case PLIST_DATE: {
        /* libplist 2.2 hands a date back truncated towards zero with the
         * fraction's magnitude in whole microseconds, and as INT32_MIN when
         * the seconds do not fit (read then, in whole seconds, from its XML
         * text). Half a microsecond more keeps the fraction's microseconds
         * when it reads the double back (truncating again). */
        int32_t sec = 0, usec = 0;
        plist_get_date_val(o->node, &sec, &usec);
        double frac = usec > 0 ? ((double)usec + 0.5) / 1e6 : 0;
        double d = sec < 0 ? (double)sec - frac : (double)sec + frac;
        if (sec == INT32_MIN) {
            int64_t t = mdm_plist_date_unix(o->node);
            if (t != INT64_MIN)
                d = (double)(t - MDM_PLIST_EPOCH_OFFSET);
        }
        put_double(b, 0x33, d);
        break;
    }
    case PLIST_STRING:
    case PLIST_KEY: {
        uint64_t len = 0;
        const char *s = plist_get_node_type(o->node) == PLIST_STRING
                            ? plist_get_string_ptr(o->node, &len)
                            : NULL;
        if (s != NULL) {
            put_string(b, s, (size_t)len);
        } else {
            char *k = NULL;
            plist_get_key_val(o->node, &k);
            put_string(b, k ? k : "", k ? strlen(k) : 0);
            free(k);
        }
        break;
    }
    case PLIST_DATA: {
        uint64_t len = 0;
        const char *d = plist_get_data_ptr(o->node, &len);
        put_marker(b, 0x4, len);
        if (len > 0)
            mdm_buf_append(b, d, (size_t)len);
        break;
    }
    case PLIST_UID: {
        uint64_t v = 0;
        plist_get_uid_val(o->node, &v);
        int size = v <= 0xff ? 1 : v <= 0xffff ? 2 : v <= 0xffffffffu ? 4 : 8;
        mdm_buf_putc(b, (char)(0x80 | (size - 1)));
        put_be(b, v, size);
        break;
    }
    case PLIST_ARRAY:
    case PLIST_DICT: {
        bool dict = plist_get_node_type(o->node) == PLIST_DICT;
        put_marker(b, dict ? 0xd : 0xa, dict ? o->nrefs / 2 : o->nrefs);
        mdm_buf_reserve(b, (size_t)o->nrefs * (size_t)w->ref_size);
        for (uint32_t i = 0; i < o->nrefs; i++)
            put_be(b, w->refs[o->first + i], w->ref_size);
        break;
    }
    default:
        /* No other type has a binary form: write an empty string. */
        mdm_buf_putc(b, (char)0x50);
        break;
    }
}

static int size_for(uint64_t max)
{
    return max <= 0xff ? 1 : max <= 0xffff ? 2 : max <= 0xffffffffu ? 4 : 8;
}

static size_t to_bin(plist_t p, mdm_buf_t *out, bool share_keys)
{
    mdm_buf_reset(out);
    if (p == NULL)
        return 0;
    writer_t w = {.out = out, .share_keys = share_keys};
    number(&w, p);
    w.ref_size = size_for(w.nobjs - 1);
    uint64_t *offsets = mdm_malloc(w.nobjs * sizeof(*offsets));
    mdm_buf_append(out, "bplist00", 8);
    for (size_t i = 0; i < w.nobjs; i++) {
        offsets[i] = out->len;
        write_obj(&w, &w.objs[i]);
    }
    uint64_t table = out->len;
    int off_size = size_for(table);
    mdm_buf_reserve(out, w.nobjs * (size_t)off_size + 32);
    for (size_t i = 0; i < w.nobjs; i++)
        put_be(out, offsets[i], off_size);
    unsigned char trailer[32] = {0};
    trailer[6] = (unsigned char)off_size;
    trailer[7] = (unsigned char)w.ref_size;
    for (int i = 0; i < 8; i++) {
        trailer[8 + i] = (unsigned char)((uint64_t)w.nobjs >> (8 * (7 - i)));
        trailer[24 + i] = (unsigned char)(table >> (8 * (7 - i)));
    }
    mdm_buf_append(out, trailer, sizeof(trailer));
    for (size_t i = 0; i < w.nobjs; i++)
        free(w.objs[i].key);
    mdm_free(offsets);
    mdm_free(w.objs);
    mdm_free(w.refs);
    mdm_free(w.keys);
    return w.values;
}

void mdm_plist_to_bin_buf(plist_t p, mdm_buf_t *out)
{
    (void)to_bin(p, out, false);
}

size_t mdm_plist_to_bin_shared(plist_t p, mdm_buf_t *out)
{
    return to_bin(p, out, true);
}
