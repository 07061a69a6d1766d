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

/* Serialises to a binary plist (for store values and replies) into out
 * (core/util/bplist.c: no object sharing, two flat passes). */
void mdm_plist_to_bin_buf(plist_t p, mdm_buf_t *out);

/* Serialises to an XML plist into out. */
void mdm_plist_to_xml_buf(plist_t p, mdm_buf_t *out);

/* SHA-256 over a canonical form of p (dictionary keys sorted), so that two
 * equal commands built in a different key order hash the same. */
void mdm_plist_hash(plist_t p, unsigned char out[32]);

#endif
