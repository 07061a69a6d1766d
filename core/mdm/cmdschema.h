/* MDM command schemas: every command's keys and types, generated from
 * Apple's YAML (tools/gen_mdm_schema.py -> cmdschema_data.c), and what is
 * built on them: a JSON -> Command builder with type checks, a validator for
 * Command dictionaries from elsewhere, and the {CommandUUID, Command}
 * envelope in both directions.
 *
 * Checks applied by both the builder and the validator:
 *  - every key must be one the schema lists (or the dictionary must allow
 *    any key, Apple's "ANY"), required keys must be present;
 *  - values must have the schema's type (a <real> also takes an integer);
 *  - strings with a rangelist must be one of its values. Apple's lists may
 *    lag behind the OS, but an unlisted value usually means a typo, so they
 *    are enforced. Integer rangelists (flag sets such as ManagementFlags)
 *    and DeviceInformation's list of query names (devices ignore names they
 *    do not know) are advisory;
 *  - arrays whose elements take several forms (Settings) pick the form by
 *    the member that tells them apart (Settings' "Item");
 *  - nesting is bounded by MDM_CMD_MAX_DEPTH, sizes by MDM_CMD_MAX_BYTES.
 * Error messages name the path of the bad value, e.g.
 * `DeviceInformation.Queries[2]: expected a string, got integer`. */
#ifndef MDM_CMDSCHEMA_H
#define MDM_CMDSCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <plist/plist.h>

#include "util/err.h"

/* Most containers nested inside a Command dictionary (which is level 0). */
#define MDM_CMD_MAX_DEPTH 32

/* Largest command: raw plists given to mdm_command_unwrap(), and the sum of
 * the strings and data a built command holds. */
#define MDM_CMD_MAX_BYTES (16u << 20)

/* The value types of Apple's schema language. */
typedef enum mdm_vtype {
    MDM_T_STRING,
    MDM_T_INTEGER,
    MDM_T_REAL,
    MDM_T_BOOLEAN,
    MDM_T_DATE,
    MDM_T_DATA,
    MDM_T_ARRAY,
    MDM_T_DICT,
    MDM_T_ANY,
} mdm_vtype_t;

/* Key flags. */
#define MDM_SKF_REQUIRED 0x1u        /* presence: required */
#define MDM_SKF_WILDCARD 0x2u        /* Apple's "ANY": stands for any key name */
#define MDM_SKF_VALUES_ADVISORY 0x4u /* values are known names, not a limit */

/* One key of a command, or the element of an array. */
typedef struct mdm_schema_key mdm_schema_key_t;
struct mdm_schema_key {
    const char *name; /* the key; for an array element Apple's placeholder */
    mdm_vtype_t type;
    unsigned flags;             /* MDM_SKF_* */
    const char *const *values;  /* allowed values (rangelist) as strings */
    size_t nvalues;
    const mdm_schema_key_t *sub; /* dictionary: members; array: element forms */
    size_t nsub;                 /* 0: anything goes inside */
    const char *discriminator;   /* array with several forms: the member naming the form */
};

/* Operating systems, as bits. */
#define MDM_OS_IOS 0x01u
#define MDM_OS_MACOS 0x02u
#define MDM_OS_TVOS 0x04u
#define MDM_OS_VISIONOS 0x08u
#define MDM_OS_WATCHOS 0x10u
#define MDM_OS_SHARED_IPAD 0x20u

/* One command. The channel facts come from the payload's supportedOS; a
 * command without supportedOS has all OS masks 0 and both channels true. */
typedef struct mdm_cmd_schema {
    const char *request_type; /* e.g. "DeviceLock" */
    const char *file;         /* Apple's YAML file, e.g. "device.lock.yaml" */
    unsigned os;              /* MDM_OS_* that support it */
    unsigned device_os;       /* MDM_OS_* whose device channel may carry it */
    unsigned user_os;         /* MDM_OS_* whose user channel may carry it */
    bool device_channel;      /* device_os != 0 */
    bool user_channel;        /* user_os != 0 */
    const mdm_schema_key_t *keys; /* the Command keys besides RequestType */
    size_t nkeys;
    const char *const *response_keys; /* top-level keys of the device's result */
    size_t nresponse_keys;
} mdm_cmd_schema_t;

/* The generated table (cmdschema_data.c), sorted by request_type. Use the
 * functions below rather than these. */
extern const mdm_cmd_schema_t mdm__cmd_schemas[];
extern const size_t mdm__cmd_schema_count;

/* The schema of a RequestType (exact, case-sensitive), or NULL. */
const mdm_cmd_schema_t *mdm_cmdschema_find(const char *request_type);

/* How many commands the table has. */
size_t mdm_cmdschema_count(void);

/* The i-th command in RequestType order (NULL past the end). */
const mdm_cmd_schema_t *mdm_cmdschema_at(size_t i);

/* The known RequestType closest to a misspelt one, or NULL if none is close. */
const char *mdm_cmdschema_suggest(const char *request_type);

/* The entry for name among keys (an exact match first, then a wildcard). */
const mdm_schema_key_t *mdm_schema_key_find(const mdm_schema_key_t *keys, size_t n,
                                            const char *name);

/* "string", "integer", "real", "boolean", "date", "data", "array",
 * "dictionary", "any". */
const char *mdm_vtype_name(mdm_vtype_t t);

/* Builds a Command dictionary (with RequestType first) from a JSON object of
 * command keys. request_type may be NULL to take it from params'
 * "RequestType"; when both are given they must match. JSON maps to plist by
 * the schema: integers (not reals) for <integer>, base64 strings for <data>,
 * RFC 3339 strings for <date>, numbers for <real>, anything (converted as
 * mdm_json_to_plist_untyped does) for <any>. On success *out_cmd is the
 * dictionary (free with plist_free); on failure it is NULL, err says why and
 * the result is MDM_ENOTFOUND (unknown RequestType), MDM_ELIMIT (too deep or
 * big) or MDM_EINVAL. */
int mdm_command_build_json(const char *request_type, const json_t *params, plist_t *out_cmd,
                           mdm_err_t *err);

/* Checks an existing Command dictionary (uploaded by an admin, or from
 * NanoMDM's enqueue API) with the same rules; plist types must match the
 * schema exactly. Returns 0, MDM_ENOTFOUND, MDM_ELIMIT or MDM_EINVAL. */
int mdm_command_validate(plist_t cmd_dict, mdm_err_t *err);

/* Serialises {CommandUUID: uuid, Command: cmd_dict} as an XML plist (the
 * body the device receives). *xml is NUL-terminated, *len excludes the NUL;
 * free *xml with mdm_free(). cmd_dict is not changed. MDM_EINVAL when
 * cmd_dict is not a dictionary or uuid is empty or 64 bytes or longer. */
int mdm_command_wrap(plist_t cmd_dict, const char *uuid, char **xml, uint32_t *len);

/* Parses a full command plist (XML or binary) uploaded raw. Requires a
 * Command dictionary with a string RequestType; CommandUUID may be absent
 * (uuid_out is then "", for the caller to assign one). Does not check the
 * keys: call mdm_command_validate() on *cmd_dict (free with plist_free). */
int mdm_command_unwrap(const char *xml_or_bin, size_t len, plist_t *cmd_dict, char uuid_out[64],
                       mdm_err_t *err);

/* A CommandUUID the queue can keep and echo: 1 to MDM_UUID_LEN (36)
 * printable ASCII characters, no space. */
bool mdm_command_uuid_ok(const char *s);

#endif
