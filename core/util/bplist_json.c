/* The JSON text of a binary property list, written straight from its bytes
 * (util/plistjson.h, mdm_bplist_write_json).
 *
 * GET /v1/commands/{uuid} converts stored reports, binary plists of
 * megabytes, to JSON; a libplist tree of one costs several allocations per
 * value. This walks the objects instead and writes what
 * mdm_plist_write_json() would write for libplist's parse of the same
 * bytes. It handles the kinds that server-written records hold (booleans,
 * integers of up to 8 bytes, reals, data, ASCII and UTF-16 strings without
 * NUL characters or unpaired surrogates, arrays, dictionaries with string
 * keys); for anything else, or a bound passed, it gives up and the caller
 * parses. Every offset is checked against the buffer, nesting is bounded by
 * MDM_PLIST_MAX_DEPTH and the values written (shared objects counted per
 * reference) by MDM_PLIST_MAX_NODES, as the bounded parser bounds them.
 * Stored reports passed mdm_plist_load() when they came in; for any bytes
 * that load, fuzz_plist checks that the text is the parse's JSON. Bytes that
 * libplist refuses (a damaged record) may still be written, as JSON. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "util/encode.h"
#include "util/err.h"
#include "util/jsonw.h"
#include "util/plist.h"
#include "util/plistjson.h"

#define GIVE_UP 1

typedef struct walk {
    mdm_bpl_t bp;
    mdm_buf_t *out;
    mdm_buf_t tmp; /* a UTF-16 string as UTF-8, or data as base64 */
    uint64_t values;
} walk_t;

static uint64_t be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* A string object as UTF-8 in *s, *n (pointing into the buffer or w->tmp).
 * GIVE_UP for anything libplist would read otherwise: a NUL, a byte past
 * ASCII in an ASCII string, an unpaired surrogate. */
static int string_of(walk_t *w, unsigned m, size_t p, const char **s, size_t *n)
{
    uint64_t count;
    if (mdm__bpl_count(&w->bp, m, &p, &count) != 0)
        return GIVE_UP;
    size_t avail = w->bp.otoff - p;
    const unsigned char *b = w->bp.b + p;
    if (m >> 4 == 0x5) {
        if (count > avail)
            return GIVE_UP;
        for (size_t i = 0; i < count; i++)
            if (b[i] == 0 || b[i] >= 0x80)
                return GIVE_UP;
        *s = (const char *)b;
        *n = (size_t)count;
        return 0;
    }
    if (m >> 4 != 0x6 || count > avail / 2)
        return GIVE_UP;
    mdm_buf_reset(&w->tmp);
    for (size_t i = 0; i < count;) {
        uint32_t u;
        if (mdm__bpl_utf16_next(b, (size_t)count, &i, &u) != 0)
            return GIVE_UP;
        char enc[4];
        size_t len;
        if (u < 0x80) {
            enc[0] = (char)u;
            len = 1;
        } else if (u < 0x800) {
            enc[0] = (char)(0xc0 | u >> 6);
            enc[1] = (char)(0x80 | (u & 0x3f));
            len = 2;
        } else if (u < 0x10000) {
            enc[0] = (char)(0xe0 | u >> 12);
            enc[1] = (char)(0x80 | (u >> 6 & 0x3f));
            enc[2] = (char)(0x80 | (u & 0x3f));
            len = 3;
        } else {
            enc[0] = (char)(0xf0 | u >> 18);
            enc[1] = (char)(0x80 | (u >> 12 & 0x3f));
            enc[2] = (char)(0x80 | (u >> 6 & 0x3f));
            enc[3] = (char)(0x80 | (u & 0x3f));
            len = 4;
        }
        mdm_buf_append(&w->tmp, enc, len);
    }
    *s = w->tmp.data ? w->tmp.data : "";
    *n = w->tmp.len;
    return 0;
}

static int value(walk_t *w, uint64_t obj, int level);

/* The references of a container object: count of them at *refs. */
static int container(walk_t *w, unsigned m, size_t p, uint64_t per, size_t *refs,
                     uint64_t *count)
{
    if (mdm__bpl_count(&w->bp, m, &p, count) != 0 || *count > w->bp.otoff ||
        per * *count > (w->bp.otoff - p) / w->bp.rsz)
        return GIVE_UP;
    *refs = p;
    return 0;
}

static int value(walk_t *w, uint64_t obj, int level)
{
    unsigned m;
    size_t p;
    if (++w->values > MDM_PLIST_MAX_NODES || mdm__bpl_object(&w->bp, obj, &m, &p) != 0)
        return GIVE_UP;
    size_t avail = w->bp.otoff - p;
    const unsigned char *b = w->bp.b + p;
    mdm_buf_t *out = w->out;
    switch (m >> 4) {
    case 0x0:
        if (m != 0x08 && m != 0x09)
            return GIVE_UP;
        mdm_buf_puts(out, m == 0x09 ? "true" : "false");
        return 0;
    case 0x1: {
        unsigned size = 1u << (m & 0xf);
        if ((m & 0xf) > 3 || size > avail)
            return GIVE_UP;
        mdm_buf_printf(out, "%lld", (long long)(int64_t)be(b, size));
        return 0;
    }
    case 0x2: {
        double d;
        if (m == 0x22 && avail >= 4) {
            uint32_t bits = (uint32_t)be(b, 4);
            float f;
            memcpy(&f, &bits, 4);
            d = f;
        } else if (m == 0x23 && avail >= 8) {
            uint64_t bits = be(b, 8);
            memcpy(&d, &bits, 8);
        } else {
            return GIVE_UP;
        }
        if (!isfinite(d))
            return GIVE_UP;
        mdm_jsonw_real(out, d);
        return 0;
    }
    case 0x4: {
        uint64_t count;
        if (mdm__bpl_count(&w->bp, m, &p, &count) != 0 || count > w->bp.otoff - p)
            return GIVE_UP;
        mdm_buf_reset(&w->tmp);
        mdm_base64_encode(&w->tmp, w->bp.b + p, (size_t)count);
        mdm_jsonw_str(out, w->tmp.data ? w->tmp.data : "", w->tmp.len);
        return 0;
    }
    case 0x5:
    case 0x6: {
        const char *s;
        size_t n;
        if (string_of(w, m, p, &s, &n) != 0)
            return GIVE_UP;
        mdm_jsonw_str(out, s, n);
        return 0;
    }
    case 0xA:
    case 0xD: {
        bool dict = m >> 4 == 0xD;
        size_t refs;
        uint64_t count;
        if (level >= MDM_PLIST_MAX_DEPTH || container(w, m, p, dict ? 2 : 1, &refs, &count) != 0)
            return GIVE_UP;
        unsigned rsz = w->bp.rsz;
        mdm_buf_putc(out, dict ? '{' : '[');
        for (uint64_t i = 0; i < count; i++) {
            if (i > 0)
                mdm_buf_putc(out, ',');
            if (dict) {
                unsigned km;
                size_t kp;
                const char *s;
                size_t n;
                uint64_t kref = be(w->bp.b + refs + i * rsz, rsz);
                if (++w->values > MDM_PLIST_MAX_NODES ||
                    mdm__bpl_object(&w->bp, kref, &km, &kp) != 0 ||
                    string_of(w, km, kp, &s, &n) != 0)
                    return GIVE_UP;
                mdm_jsonw_str(out, s, n);
                mdm_buf_putc(out, ':');
            }
            uint64_t vref = be(w->bp.b + refs + ((dict ? count : 0) + i) * rsz, rsz);
            if (value(w, vref, level + 1) != 0)
                return GIVE_UP;
        }
        mdm_buf_putc(out, dict ? '}' : ']');
        return 0;
    }
    default:
        return GIVE_UP;
    }
}

int mdm_bplist_write_json(const void *data, size_t len, mdm_buf_t *out)
{
    walk_t w = {.out = out, .tmp = MDM_BUF_INIT};
    uint64_t top;
    if (data == NULL || len < 40 || len > MDM_PLIST_MAX_BYTES || memcmp(data, "bplist00", 8) != 0 ||
        mdm__bpl_trailer(&w.bp, data, len, &top) != 0 || w.bp.nobj > MDM_PLIST_MAX_NODES)
        return GIVE_UP;
    size_t mark = out->len;
    int rc = value(&w, top, 0);
    mdm_buf_free(&w.tmp);
    if (rc != 0) {
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
    }
    return rc;
}
