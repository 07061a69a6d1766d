/* A quick reader for the XML property lists devices send most: check-ins
 * and command reports, a dictionary of strings, integers, booleans, arrays
 * and dictionaries, as Apple's devices write them.
 *
 * It reads only a strict subset of what libplist 2.2's XML reader takes,
 * and builds the same tree for it; everything else it leaves alone (it
 * never reports an error), and mdm_plist_parse() reads the document the
 * usual way, with the usual checks and messages. Out of the subset:
 *  - anything but the prolog Apple's devices write (an optional
 *    <?xml version="1.0" encoding="UTF-8"?>, an optional DOCTYPE of
 *    Apple's DTD, word for word), then <plist version="1.0"> or <plist>
 *    holding one value;
 *  - comments, CDATA, processing instructions after the prolog;
 *  - attributes on any element but <plist>, space inside tags;
 *  - <real>, <date>, <data>, <string/>, and <true></true>;
 *  - integers with a sign other than '-', leading zeros, "-0", spaces, or
 *    outside int64 (libplist reads those with strtoull, base 0, and keeps
 *    large positive ones as 128-bit);
 *  - text holding a character reference (&#...;), an entity other than
 *    the five of XML, '\r' or '>' (libplist's own handling of those is not
 *    what a reader of the XML specification would guess);
 *  - text or a key that is not UTF-8, duplicate keys in a dictionary, and
 *    nesting deeper than the caller's bound.
 * fuzz_plist compares the two readers on every input this one accepts. */
#include <stdbool.h>
#include <string.h>

#include "util/alloc.h"
#include "util/encode.h"
#include "util/plistjson.h"

typedef struct xr {
    const char *p, *end;
    int depth, max_depth;
} xr_t;

/* Decoded text up to this size goes to the caller's buffer. */
#define SMALL_TEXT 256

static void skip_ws(xr_t *x)
{
    while (x->p < x->end && (*x->p == ' ' || *x->p == '\t' || *x->p == '\n' || *x->p == '\r'))
        x->p++;
}

static bool eat(xr_t *x, const char *lit, size_t n)
{
    if ((size_t)(x->end - x->p) < n || memcmp(x->p, lit, n) != 0)
        return false;
    x->p += n;
    return true;
}

#define EAT(x, lit) eat((x), (lit), sizeof(lit) - 1)

/* Reads text up to the next '<', then the closing tag close, decoding the
 * five entities of XML. Returns a NUL-terminated string (in small, of
 * SMALL_TEXT bytes, or allocated: *heap says so), or NULL when the text is
 * out of the subset. */
static char *read_text(xr_t *x, const char *close, size_t close_n, char *small, bool *heap)
{
    *heap = false;
    const char *lt = memchr(x->p, '<', (size_t)(x->end - x->p));
    if (lt == NULL)
        return NULL;
    size_t n = (size_t)(lt - x->p);
    char *out = small;
    if (n >= SMALL_TEXT) {
        out = mdm_malloc(n + 1);
        *heap = true;
    }
    size_t o = 0;
    for (const char *q = x->p; q < lt; q++) {
        char ch = *q;
        if (ch == '\r' || ch == '>')
            goto bad;
        if (ch != '&') {
            out[o++] = ch;
            continue;
        }
        static const struct {
            const char *name;
            size_t n;
            char ch;
        } ents[] = {{"&amp;", 5, '&'}, {"&lt;", 4, '<'}, {"&gt;", 4, '>'},
                    {"&quot;", 6, '"'}, {"&apos;", 6, '\''}};
        size_t i = 0;
        while (i < sizeof(ents) / sizeof(ents[0]) &&
               ((size_t)(lt - q) < ents[i].n || memcmp(q, ents[i].name, ents[i].n) != 0))
            i++;
        if (i == sizeof(ents) / sizeof(ents[0]))
            goto bad;
        out[o++] = ents[i].ch;
        q += ents[i].n - 1;
    }
    out[o] = '\0';
    x->p = lt;
    if (!eat(x, close, close_n) || !mdm_utf8_valid(out, o))
        goto bad;
    return out;
bad:
    if (*heap)
        mdm_free(out);
    *heap = false;
    return NULL;
}

static void text_free(char *s, bool heap)
{
    if (heap)
        mdm_free(s);
}

/* An integer as libplist reads it from "<integer>" on: an optional '-',
 * then decimal digits without a leading zero (or a lone "0"), within
 * int64. */
static plist_t read_integer(xr_t *x)
{
    bool neg = EAT(x, "-");
    const char *d = x->p;
    uint64_t v = 0;
    while (x->p < x->end && *x->p >= '0' && *x->p <= '9') {
        unsigned digit = (unsigned)(*x->p - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return NULL;
        v = v * 10 + digit;
        x->p++;
    }
    size_t nd = (size_t)(x->p - d);
    if (nd == 0 || (d[0] == '0' && (nd > 1 || neg)))
        return NULL;
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return NULL;
    if (!EAT(x, "</integer>"))
        return NULL;
    /* libplist 2.2 keeps every 64-bit integer as its unsigned bits. */
    return plist_new_uint(neg ? (uint64_t)0 - v : v);
}

static plist_t read_value(xr_t *x);

static plist_t read_dict(xr_t *x)
{
    plist_t d = plist_new_dict();
    for (;;) {
        skip_ws(x);
        if (EAT(x, "</dict>"))
            return d;
        if (!EAT(x, "<key>"))
            break;
        bool heap;
        char kbuf[SMALL_TEXT];
        char *key = read_text(x, "</key>", 6, kbuf, &heap);
        if (key == NULL)
            break;
        skip_ws(x);
        plist_t v = read_value(x);
        if (v == NULL) {
            text_free(key, heap);
            break;
        }
        /* A repeated key replaces the value: the size tells. */
        uint32_t n = plist_dict_get_size(d);
        plist_dict_set_item(d, key, v);
        text_free(key, heap);
        if (plist_dict_get_size(d) != n + 1)
            break;
    }
    plist_free(d);
    return NULL;
}

static plist_t read_array(xr_t *x)
{
    plist_t a = plist_new_array();
    for (;;) {
        skip_ws(x);
        if (EAT(x, "</array>"))
            return a;
        plist_t v = read_value(x);
        if (v == NULL)
            break;
        plist_array_append_item(a, v);
    }
    plist_free(a);
    return NULL;
}

static plist_t read_container(xr_t *x, bool dict)
{
    if (x->depth >= x->max_depth)
        return NULL;
    x->depth++;
    plist_t v = dict ? read_dict(x) : read_array(x);
    x->depth--;
    return v;
}

static plist_t read_value(xr_t *x)
{
    if (EAT(x, "<string>")) {
        bool heap;
        char sbuf[SMALL_TEXT];
        char *s = read_text(x, "</string>", 9, sbuf, &heap);
        if (s == NULL)
            return NULL;
        plist_t v = plist_new_string(s);
        text_free(s, heap);
        return v;
    }
    if (EAT(x, "<integer>"))
        return read_integer(x);
    if (EAT(x, "<true/>"))
        return plist_new_bool(1);
    if (EAT(x, "<false/>"))
        return plist_new_bool(0);
    if (EAT(x, "<dict>"))
        return read_container(x, true);
    if (EAT(x, "<array>"))
        return read_container(x, false);
    if (EAT(x, "<dict/>"))
        return x->depth < x->max_depth ? plist_new_dict() : NULL;
    if (EAT(x, "<array/>"))
        return x->depth < x->max_depth ? plist_new_array() : NULL;
    return NULL;
}

plist_t mdm__plist_xml_quick(const char *data, size_t len, int max_depth)
{
    xr_t x = {.p = data, .end = data + len, .max_depth = max_depth};
    skip_ws(&x);
    if (EAT(&x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"))
        skip_ws(&x);
    if (EAT(&x, "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
                "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">"))
        skip_ws(&x);
    if (!EAT(&x, "<plist version=\"1.0\">") && !EAT(&x, "<plist>"))
        return NULL;
    skip_ws(&x);
    plist_t v = read_value(&x);
    if (v == NULL)
        return NULL;
    skip_ws(&x);
    bool closed = EAT(&x, "</plist>");
    skip_ws(&x);
    if (!closed || x.p != x.end) {
        plist_free(v);
        return NULL;
    }
    return v;
}
