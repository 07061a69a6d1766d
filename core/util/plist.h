/* libplist helpers: bounded parsing of device input, typed getters that
 * return NULL/defaults for missing or mistyped keys, setters, and binary
 * plist records for the store. */
#ifndef MDM_PLIST_H
#define MDM_PLIST_H

#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* Parses an XML or binary plist of at most max bytes whose top level is a
 * dictionary. Returns 0, MDM_ELIMIT (too big) or MDM_EPARSE. */
int mdm_plist_load_dict(const void *data, size_t len, size_t max, plist_t *out);

/* Parses any XML or binary plist. */
int mdm_plist_load(const void *data, size_t len, plist_t *out);

/* mdm_plist_load() for a plist this server wrote to its store: the same
 * structure checks, without re-checking the text (mdm_plist_parse_stored). */
int mdm_plist_load_stored(const void *data, size_t len, plist_t *out);

/* The string value of key in dict, or NULL (also when it is not a string).
 * The pointer is valid while dict is. */
const char *mdm_pl_str(plist_t dict, const char *key);

/* The data value of key (pointer into dict), or NULL. */
const unsigned char *mdm_pl_data(plist_t dict, const char *key, size_t *len);

/* The boolean value of key, or def. */
bool mdm_pl_bool(plist_t dict, const char *key, bool def);

/* The unsigned integer value of key, or def. */
uint64_t mdm_pl_uint(plist_t dict, const char *key, uint64_t def);

/* Signed 64-bit values are stored as unsigned integers (libplist 2.2 has no
 * signed type); these convert. */
int64_t mdm_pl_int(plist_t dict, const char *key, int64_t def);
void mdm_pl_set_int(plist_t dict, const char *key, int64_t v);

void mdm_pl_set_str(plist_t dict, const char *key, const char *v);   /* NULL removes */
void mdm_pl_set_data(plist_t dict, const char *key, const void *p, size_t n); /* NULL removes */
void mdm_pl_set_bool(plist_t dict, const char *key, bool v);
void mdm_pl_set_uint(plist_t dict, const char *key, uint64_t v);
void mdm_pl_remove(plist_t dict, const char *key);

/* Single values of a stored binary plist dictionary, read in place without
 * a tree (core/util/bplist_read.c). mdm_bpl_open checks the trailer and that
 * the top object is a dictionary (MDM_EPARSE otherwise: parse the record
 * instead). mdm_bpl_get finds key among its keys: MDM_ENOTFOUND when absent;
 * 0 with v->type MDM_BPL_OTHER for a value of another kind (a real, date,
 * array, dictionary, UTF-16 string, 16-byte integer, or a string holding a
 * NUL). Pointers in v point into the buffer. Integers are raw: 1, 2 and
 * 4-byte ones unsigned, 8-byte ones as stored (libplist's PLIST_UINT). */
typedef struct mdm_bpl {
    const unsigned char *b;
    size_t n;          /* bytes before the trailer */
    size_t otoff;      /* the offset table */
    unsigned osz, rsz; /* offset and reference sizes */
    uint64_t nobj;
    size_t refs;       /* the top dictionary's key references */
    uint64_t nkeys;
} mdm_bpl_t;

enum { MDM_BPL_OTHER = 1, MDM_BPL_BOOL, MDM_BPL_UINT, MDM_BPL_DATA, MDM_BPL_ASCII };

typedef struct mdm_bpl_val {
    int type;
    bool b;
    uint64_t u;
    const unsigned char *p; /* data bytes, string characters (not NUL-terminated) */
    size_t len;
} mdm_bpl_val_t;

int mdm_bpl_open(mdm_bpl_t *bp, const void *data, size_t len);
int mdm_bpl_get(const mdm_bpl_t *bp, const char *key, mdm_bpl_val_t *v);

/* The checks both readers of binary plists share (this reader and the
 * bounded parser, plistjson.c). mdm__bpl_trailer checks the trailer of the
 * len bytes at data (len >= 40; the header is the caller's) and fills bp's
 * layout and *top. mdm__bpl_object finds object obj: its marker and the
 * offset after it. mdm__bpl_count reads the count of an object with marker
 * m whose payload starts at *p: the marker's low nibble, or the integer
 * after it when that is 0xF (*p then moves past the integer). All three
 * return MDM_EPARSE for anything out of bounds. */
int mdm__bpl_trailer(mdm_bpl_t *bp, const void *data, size_t len, uint64_t *top);
int mdm__bpl_object(const mdm_bpl_t *bp, uint64_t obj, unsigned *marker, size_t *p);
int mdm__bpl_count(const mdm_bpl_t *bp, unsigned m, size_t *p, uint64_t *count);

/* The code point of the UTF-16BE string b (count units) at unit *i, which
 * moves past it. MDM_EPARSE for what libplist would not read back as
 * written: a NUL (it ends its C strings) or an unpaired surrogate. */
int mdm__bpl_utf16_next(const unsigned char *b, size_t count, size_t *i, uint32_t *cp);

/* A stored dictionary record that is read in place until something needs
 * its tree. The getters answer exactly as mdm_pl_* on the parsed record
 * would: in place when the value is of a plain kind, from the tree (parsed
 * once, on first need) otherwise. mdm_rec_tree() returns the tree to change
 * (NULL when the bytes do not parse as a dictionary); from then on the
 * getters read the tree. */
typedef struct mdm_rec {
    const void *bin;
    size_t len;
    mdm_bpl_t bp;
    bool inplace;   /* bp is open */
    plist_t tree;   /* NULL until needed */
    bool own_tree;  /* freed by mdm_rec_free */
    bool failed;    /* the bytes did not parse */
} mdm_rec_t;

void mdm_rec_init_bin(mdm_rec_t *r, const void *bin, size_t len); /* bytes outlive r */
void mdm_rec_init_tree(mdm_rec_t *r, plist_t tree);                /* borrowed */
plist_t mdm_rec_tree(mdm_rec_t *r);
const char *mdm_rec_str(mdm_rec_t *r, const char *key, char *buf, size_t cap);
const unsigned char *mdm_rec_data(mdm_rec_t *r, const char *key, size_t *len);
bool mdm_rec_bool(mdm_rec_t *r, const char *key, bool def);
uint64_t mdm_rec_uint(mdm_rec_t *r, const char *key, uint64_t def);
int64_t mdm_rec_int(mdm_rec_t *r, const char *key, int64_t def);
void mdm_rec_free(mdm_rec_t *r);

/* Serialises to a binary plist (for store values and replies) into out
 * (core/util/bplist.c: no object sharing, two flat passes). */
void mdm_plist_to_bin_buf(plist_t p, mdm_buf_t *out);

/* mdm_plist_to_bin_buf() that writes each distinct dictionary key once
 * (a list of thousands of dictionaries with the same keys shrinks by about
 * 40 %). Returns the number of values a reader expands the result
 * to, keys included: the count the bounded parser limits
 * (MDM_PLIST_MAX_NODES). */
size_t mdm_plist_to_bin_shared(plist_t p, mdm_buf_t *out);

/* Serialises to an XML plist into out. */
void mdm_plist_to_xml_buf(plist_t p, mdm_buf_t *out);

/* SHA-256 over a canonical form of p (dictionary keys sorted), so that two
 * equal commands built in a different key order hash the same. */
void mdm_plist_hash(plist_t p, unsigned char out[32]);

#endif
