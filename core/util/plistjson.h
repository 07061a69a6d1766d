/* Property lists and JSON: a bounded parser for untrusted plists, and
 * conversion between libplist values and jansson values.
 *
 * Mapping (plist -> JSON): dictionary -> object, array -> array, string ->
 * string, integer -> integer (read as signed 64-bit), real -> real, boolean
 * -> true/false, data -> base64 string, date -> RFC 3339 UTC string
 * ("2024-05-01T12:00:00Z", whole seconds). JSON -> plist without a schema is
 * the reverse, except that strings stay strings (no base64 or date guessing)
 * and null has no plist form.
 *
 * libplist 2.2 (Debian 12) notes: integers are one PLIST_UINT type holding
 * 64 bits that its writers print as signed, so negative numbers round-trip;
 * dates are seconds since 2001-01-01 in an int32_t (1932-12-13 ..
 * 2069-01-19: see MDM_PLIST_DATE_MIN/MAX); its recursive
 * plist_free/plist_copy/bplist reader overflow the stack on deeply nested
 * input, which is why untrusted bytes must go through mdm_plist_parse(). */
#ifndef MDM_PLISTJSON_H
#define MDM_PLISTJSON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <plist/plist.h>

#include "util/buf.h"
#include "util/err.h"

/* Default bound on container nesting (the outermost container is level 1). */
#define MDM_PLIST_MAX_DEPTH 64

/* Largest plist document mdm_plist_parse() accepts. */
#define MDM_PLIST_MAX_BYTES (16u << 20)

/* Most values a parsed plist may expand to (binary plists share objects,
 * so a small file could otherwise expand to billions of nodes). */
#define MDM_PLIST_MAX_NODES (1u << 20)

/* Seconds from the Unix epoch to the plist epoch (2001-01-01T00:00:00Z). */
#define MDM_PLIST_EPOCH_OFFSET 978307200LL

/* The Unix-time range a libplist 2.2 date can hold (int32 seconds since
 * 2001): 1932-12-13T20:45:52Z .. 2069-01-19T03:14:07Z. */
#define MDM_PLIST_DATE_MIN (MDM_PLIST_EPOCH_OFFSET + INT32_MIN)
#define MDM_PLIST_DATE_MAX (MDM_PLIST_EPOCH_OFFSET + INT32_MAX)

/* Parses an XML or binary plist (told apart by the "bplist00" magic) from
 * untrusted bytes. Before libplist sees them, the bytes are checked for size
 * (MDM_PLIST_MAX_BYTES), nesting (at most max_depth containers, 0 means
 * MDM_PLIST_MAX_DEPTH) and, for binary plists, reference cycles and total
 * expanded size (MDM_PLIST_MAX_NODES). Strings and keys must be UTF-8
 * without NUL characters (libplist's writers mishandle others, see
 * plistjson.c). On success *out is the root, freed with plist_free().
 * Errors: MDM_ELIMIT (too big or too deep), MDM_EPARSE. */
int mdm_plist_parse(const char *data, size_t len, int max_depth, plist_t *out, mdm_err_t *err);

/* Internal (core/util/plist_xml.c): the quick reader mdm_plist_parse()
 * tries first on XML of up to 64 KiB without a NUL byte. It builds the
 * tree libplist 2.2 would for a strict subset of XML plists, with strings
 * and keys checked as UTF-8 and at most max_depth (> 0) containers deep,
 * and returns NULL for anything else (not an error: the caller then reads
 * the document the usual way). */
plist_t mdm__plist_xml_quick(const char *data, size_t len, int max_depth);

/* Parses a binary plist this server wrote itself (a store record): the
 * same checks of size, nesting, cycles and expansion as mdm_plist_parse(),
 * so that a damaged record cannot crash the server, but not the UTF-8
 * check of every string, which the text passed when it came in. XML is
 * handed to mdm_plist_parse(). */
int mdm_plist_parse_stored(const char *data, size_t len, plist_t *out, mdm_err_t *err);

/* Converts a plist to JSON (see the mapping above); NULL when the value is
 * nested deeper than MDM_PLIST_MAX_DEPTH, holds a string or key that is not
 * UTF-8, a real that is NaN or infinite, or a UID. Free with json_decref(). */
json_t *mdm_plist_to_json(plist_t p);

/* mdm_plist_to_json() that says why it failed: messages begin with the path
 * of the bad value (e.g. `Items[3].Name: not valid UTF-8`), relative to p. */
int mdm_plist_to_json_checked(plist_t p, int max_depth, json_t **out, mdm_err_t *err);

/* Appends to out the JSON text of what mdm_plist_to_json_checked() would
 * make of p (dictionary keys in the plist's order, strings as UTF-8), without
 * building the JSON tree: a report of 20,000 apps takes a fraction of the
 * memory that way. Fails in the same cases with the same messages, and then
 * leaves out as it was. */
int mdm_plist_write_json(plist_t p, int max_depth, mdm_buf_t *out, mdm_err_t *err);

/* Appends the text mdm_plist_write_json() would write for the parse of the
 * binary plist at data, straight from its bytes, without a tree
 * (core/util/bplist_json.c). Returns 0, or non-zero with out as it was when
 * the plist holds a kind it leaves to the parser (a date, a set, a UID, a
 * 16-byte integer, a string with a NUL or an unpaired surrogate), is not a
 * binary plist, or passes the parser's bounds: parse it then. Bytes that
 * mdm_plist_load() refuses may still be written (as JSON). */
int mdm_bplist_write_json(const void *data, size_t len, mdm_buf_t *out);

/* Converts JSON to a plist without a schema (see the mapping above); NULL
 * for null values or nesting deeper than MDM_PLIST_MAX_DEPTH. */
plist_t mdm_json_to_plist_untyped(const json_t *j);

/* mdm_json_to_plist_untyped() with a reason on failure: path (may be NULL
 * or "") prefixes every message, e.g. `InstallApplication.Configuration.X:
 * null has no property-list form`; max_depth bounds container nesting of j
 * itself (1 = j may be a container holding only scalars). */
int mdm_json_to_plist_checked(const json_t *j, const char *path, int max_depth, plist_t *out,
                              mdm_err_t *err);

/* Parses an RFC 3339 date-time ("2024-05-01T12:00:00Z", optional fraction,
 * "Z" or a +hh:mm / +hhmm offset) into a plist date. Returns 0, MDM_EPARSE
 * for bad syntax or calendar values, MDM_ELIMIT outside
 * MDM_PLIST_DATE_MIN..MAX. */
int mdm_plist_date_from_rfc3339(const char *s, plist_t *out);

/* Seconds since the Unix epoch of a plist date, rounded down. libplist 2.2
 * keeps dates as a double and hands back (trunc, |fraction|); this undoes
 * that for dates before 2001 (a date less than one second before 2001 reads
 * as the matching instant after it, which libplist cannot tell apart). */
int64_t mdm_plist_date_unix(plist_t date);

/* Formats a plist date as RFC 3339 UTC in whole seconds into out[32].
 * Returns 0, or MDM_ELIMIT for a year outside 0..9999. */
int mdm_plist_date_to_rfc3339(plist_t date, char out[32]);

/* The name of a plist node's type as people say it: "dictionary", "array",
 * "string", "integer", "real", "boolean", "date", "data", "UID", "key",
 * "nothing" (NULL). */
const char *mdm_plist_type_name(plist_t p);

/* The name of a JSON value's type: "object", "array", "string", "integer",
 * "real", "boolean", "null". */
const char *mdm_json_type_name(const json_t *j);

#endif
