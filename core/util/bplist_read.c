/* Reads single values of a stored binary property list dictionary without
 * building a libplist tree (util/plist.h, mdm_bpl_*).
 *
 * The hot request paths read a handful of scalars (flags, counters, times,
 * a fingerprint) from records of twenty or more keys; parsing the whole
 * record costs two or three allocations per key. These functions look a
 * key up in the top-level dictionary's references and decode the one value
 * in place. Every offset and count is checked against the buffer, so any
 * input is safe (fuzz_plist runs them on every input and compares them with
 * libplist's parse). They answer only for the plain kinds; anything else is
 * MDM_BPL_OTHER, and callers then parse the record as before. */
#include <string.h>

#include "util/err.h"
#include "util/plist.h"

static uint64_t be_get(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

int mdm__bpl_trailer(mdm_bpl_t *bp, const void *data, size_t len, uint64_t *top)
{
    memset(bp, 0, sizeof(*bp));
    if (data == NULL || len < 8 + 32)
        return MDM_EPARSE;
    const unsigned char *b = data, *t = b + len - 32;
    size_t n = len - 32;
    unsigned osz = t[6], rsz = t[7];
    uint64_t nobj = be_get(t + 8, 8), otoff = be_get(t + 24, 8);
    *top = be_get(t + 16, 8);
    if (osz < 1 || osz > 8 || rsz < 1 || rsz > 8 || nobj == 0 || *top >= nobj || otoff < 9 ||
        otoff > n || nobj > (n - otoff) / osz)
        return MDM_EPARSE;
    *bp = (mdm_bpl_t){.b = b, .n = n, .otoff = (size_t)otoff, .osz = osz, .rsz = rsz,
                      .nobj = nobj};
    return 0;
}

int mdm__bpl_object(const mdm_bpl_t *bp, uint64_t obj, unsigned *marker, size_t *p)
{
    if (obj >= bp->nobj)
        return MDM_EPARSE;
    uint64_t off = be_get(bp->b + bp->otoff + obj * bp->osz, bp->osz);
    if (off < 8 || off >= bp->otoff)
        return MDM_EPARSE;
    *marker = bp->b[off];
    *p = (size_t)off + 1;
    return 0;
}

int mdm__bpl_count(const mdm_bpl_t *bp, unsigned m, size_t *p, uint64_t *count)
{
    *count = m & 0xF;
    if (*count != 0xF)
        return 0;
    size_t q = *p;
    if (q >= bp->otoff || (bp->b[q] >> 4) != 0x1 || (bp->b[q] & 0xF) > 3)
        return MDM_EPARSE;
    unsigned isz = 1u << (bp->b[q] & 0xF);
    if (isz > bp->otoff - q - 1)
        return MDM_EPARSE;
    *count = be_get(bp->b + q + 1, isz);
    *p = q + 1 + isz;
    return 0;
}

/* Object obj's marker, where its payload starts and its count (data,
 * strings and dictionaries; the marker's low nibble for other kinds). */
static int bpl_object(const mdm_bpl_t *bp, uint64_t obj, unsigned *marker, size_t *payload,
                      uint64_t *count)
{
    if (mdm__bpl_object(bp, obj, marker, payload) != 0)
        return MDM_EPARSE;
    unsigned kind = *marker >> 4;
    if (kind == 0x4 || kind == 0x5 || kind == 0x6 || kind == 0xD)
        return mdm__bpl_count(bp, *marker, payload, count);
    *count = *marker & 0xF;
    return 0;
}

int mdm_bpl_open(mdm_bpl_t *bp, const void *data, size_t len)
{
    uint64_t top;
    if (data == NULL || len < 8 + 32 || memcmp(data, "bplist00", 8) != 0 ||
        mdm__bpl_trailer(bp, data, len, &top) != 0) {
        memset(bp, 0, sizeof(*bp));
        return MDM_EPARSE;
    }
    size_t p;
    uint64_t count;
    unsigned marker;
    if (bpl_object(bp, top, &marker, &p, &count) != 0 || (marker >> 4) != 0xD ||
        count > (bp->otoff - p) / (2 * (uint64_t)bp->rsz)) {
        memset(bp, 0, sizeof(*bp));
        return MDM_EPARSE;
    }
    bp->refs = p;
    bp->nkeys = count;
    return 0;
}

int mdm__bpl_utf16_next(const unsigned char *b, size_t count, size_t *i, uint32_t *cp)
{
    uint32_t u = (uint32_t)b[2 * *i] << 8 | b[2 * *i + 1];
    if (u == 0 || (u >= 0xdc00 && u <= 0xdfff))
        return MDM_EPARSE;
    if (u >= 0xd800 && u <= 0xdbff) {
        if (*i + 1 >= count)
            return MDM_EPARSE;
        uint32_t lo = (uint32_t)b[2 * *i + 2] << 8 | b[2 * *i + 3];
        if (lo < 0xdc00 || lo > 0xdfff)
            return MDM_EPARSE;
        u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        (*i)++;
    }
    (*i)++;
    *cp = u;
    return 0;
}

/* Whether key object obj spells key as libplist reads it: 1 yes, 0 no, -1
 * when only libplist can tell. libplist keeps keys as C strings, so an
 * ASCII key ends at its first NUL; it converts a UTF-16 key to UTF-8,
 * dropping what does not convert, so one holding a NUL or an unpaired
 * surrogate is left to it (one with other characters past ASCII spells no
 * ASCII key). */
static int key_is(const mdm_bpl_t *bp, uint64_t obj, const char *key, size_t klen)
{
    unsigned m;
    size_t p;
    uint64_t count;
    if (bpl_object(bp, obj, &m, &p, &count) != 0)
        return -1;
    size_t avail = bp->otoff - p;
    if (m >> 4 == 0x5) {
        if (count < klen || count > avail || memcmp(bp->b + p, key, klen) != 0)
            return 0;
        return count == klen || bp->b[p + klen] == 0;
    }
    if (m >> 4 != 0x6 || count > avail / 2)
        return -1;
    bool ascii = true;
    for (size_t i = 0; i < count;) {
        uint32_t cp;
        if (mdm__bpl_utf16_next(bp->b + p, (size_t)count, &i, &cp) != 0)
            return -1;
        ascii = ascii && cp < 0x80;
    }
    if (!ascii || count != klen)
        return 0;
    for (size_t i = 0; i < klen; i++)
        if (bp->b[p + 2 * i + 1] != (unsigned char)key[i])
            return 0;
    return 1;
}

int mdm_bpl_get(const mdm_bpl_t *bp, const char *key, mdm_bpl_val_t *v)
{
    memset(v, 0, sizeof(*v));
    if (bp->b == NULL)
        return MDM_EPARSE;
    /* Keys are compared as ASCII; a UTF-16 key spelling another one is left
     * to the full parser. */
    size_t klen = 0;
    for (; key[klen] != '\0'; klen++)
        if ((unsigned char)key[klen] >= 0x80)
            return MDM_EPARSE;
    for (uint64_t i = 0; i < bp->nkeys; i++) {
        uint64_t kref = be_get(bp->b + bp->refs + i * bp->rsz, bp->rsz);
        int is = key_is(bp, kref, key, klen);
        if (is < 0)
            return MDM_EPARSE;
        if (is == 0)
            continue;
        uint64_t vref = be_get(bp->b + bp->refs + (bp->nkeys + i) * bp->rsz, bp->rsz);
        unsigned m;
        size_t p;
        uint64_t count;
        if (bpl_object(bp, vref, &m, &p, &count) != 0)
            return MDM_EPARSE;
        size_t avail = bp->otoff - p;
        v->type = MDM_BPL_OTHER;
        switch (m >> 4) {
        case 0x0:
            if (m == 0x08 || m == 0x09) {
                v->type = MDM_BPL_BOOL;
                v->b = m == 0x09;
            }
            break;
        case 0x1: {
            unsigned size = 1u << (m & 0xF);
            if ((m & 0xF) <= 3 && size <= avail) {
                v->type = MDM_BPL_UINT;
                v->u = be_get(bp->b + p, size);
            }
            break;
        }
        case 0x4:
            if (count <= avail) {
                v->type = MDM_BPL_DATA;
                v->p = bp->b + p;
                v->len = (size_t)count;
            }
            break;
        case 0x5:
            /* A NUL inside is refused by the full parser: leave it to it. */
            if (count <= avail && memchr(bp->b + p, 0, (size_t)count) == NULL) {
                v->type = MDM_BPL_ASCII;
                v->p = bp->b + p;
                v->len = (size_t)count;
            }
            break;
        default:
            break;
        }
        return 0;
    }
    return MDM_ENOTFOUND;
}

/* ---- records read in place ---------------------------------------------- */

void mdm_rec_init_bin(mdm_rec_t *r, const void *bin, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->bin = bin;
    r->len = len;
    r->inplace = mdm_bpl_open(&r->bp, bin, len) == 0;
}

void mdm_rec_init_tree(mdm_rec_t *r, plist_t tree)
{
    memset(r, 0, sizeof(*r));
    r->tree = tree;
}

plist_t mdm_rec_tree(mdm_rec_t *r)
{
    if (r->tree != NULL || r->failed || r->bin == NULL)
        return r->tree;
    plist_t p = NULL;
    if (mdm_plist_load_stored(r->bin, r->len, &p) != 0 || plist_get_node_type(p) != PLIST_DICT) {
        plist_free(p);
        r->failed = true;
        return NULL;
    }
    r->tree = p;
    r->own_tree = true;
    return p;
}

void mdm_rec_free(mdm_rec_t *r)
{
    if (r->own_tree)
        plist_free(r->tree);
    memset(r, 0, sizeof(*r));
}

/* The value of key read in place: 1 when v answers (v->type is want), 0
 * when the key is absent or of another plain kind (the getter's default),
 * -1 when only the tree can tell. */
static int in_place(mdm_rec_t *r, const char *key, int want, mdm_bpl_val_t *v)
{
    if (r->tree != NULL || !r->inplace)
        return -1;
    int rc = mdm_bpl_get(&r->bp, key, v);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0 || v->type == MDM_BPL_OTHER)
        return -1;
    return v->type == want ? 1 : 0;
}

const char *mdm_rec_str(mdm_rec_t *r, const char *key, char *buf, size_t cap)
{
    mdm_bpl_val_t v;
    int k = in_place(r, key, MDM_BPL_ASCII, &v);
    if (k == 0)
        return NULL;
    if (k == 1 && v.len < cap) {
        memcpy(buf, v.p, v.len);
        buf[v.len] = '\0';
        return buf;
    }
    return mdm_pl_str(mdm_rec_tree(r), key);
}

const unsigned char *mdm_rec_data(mdm_rec_t *r, const char *key, size_t *len)
{
    mdm_bpl_val_t v;
    int k = in_place(r, key, MDM_BPL_DATA, &v);
    if (k >= 0) {
        if (len)
            *len = k == 1 ? v.len : 0;
        return k == 1 ? v.p : NULL;
    }
    return mdm_pl_data(mdm_rec_tree(r), key, len);
}

bool mdm_rec_bool(mdm_rec_t *r, const char *key, bool def)
{
    mdm_bpl_val_t v;
    int k = in_place(r, key, MDM_BPL_BOOL, &v);
    if (k >= 0)
        return k == 1 ? v.b : def;
    return mdm_pl_bool(mdm_rec_tree(r), key, def);
}

uint64_t mdm_rec_uint(mdm_rec_t *r, const char *key, uint64_t def)
{
    mdm_bpl_val_t v;
    int k = in_place(r, key, MDM_BPL_UINT, &v);
    if (k >= 0)
        return k == 1 ? v.u : def;
    return mdm_pl_uint(mdm_rec_tree(r), key, def);
}

int64_t mdm_rec_int(mdm_rec_t *r, const char *key, int64_t def)
{
    mdm_bpl_val_t v;
    int k = in_place(r, key, MDM_BPL_UINT, &v);
    if (k >= 0)
        return k == 1 ? (int64_t)v.u : def;
    return mdm_pl_int(mdm_rec_tree(r), key, def);
}
