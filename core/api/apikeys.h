/* Admin API keys. A key reads "mdm_<id>_<secret>": the id (16 hex digits)
 * names the key in listings and logs, the secret (64 hex digits) is shown
 * once at creation. The store keeps only SHA-256(secret), the role, a name
 * and times; verification compares hashes in constant time. */
#ifndef MDM_APIKEYS_H
#define MDM_APIKEYS_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

enum mdm_api_role {
    MDM_ROLE_READ = 1,   /* read-only: GET routes */
    MDM_ROLE_ADMIN = 2,  /* everything */
};

#define MDM_APIKEY_ID_LEN 16
#define MDM_APIKEY_LEN (4 + MDM_APIKEY_ID_LEN + 1 + 64)

typedef struct mdm_apikey_info {
    char id[MDM_APIKEY_ID_LEN + 1];
    char name[128];
    int role;
    int64_t created_ms;
    int64_t revoked_ms;   /* 0: active */
} mdm_apikey_info_t;

/* "read" / "admin" <-> enum; parse returns 0 for an unknown name. */
const char *mdm_api_role_name(int role);
int mdm_api_role_parse(const char *name);

/* Creates a key; writes the full key (shown once) to key_out. */
int mdm_apikey_create(mdm_txn_t *txn, const char *name, int role,
                      char key_out[MDM_APIKEY_LEN + 1], mdm_apikey_info_t *info);

/* Checks a presented key. Returns 0 and fills info, or MDM_EAUTH (unknown
 * id, wrong secret, revoked, malformed) without saying which. */
int mdm_apikey_verify(mdm_txn_t *txn, const char *key, mdm_apikey_info_t *info);

/* Revokes by id (MDM_ENOTFOUND if unknown). */
int mdm_apikey_revoke(mdm_txn_t *txn, const char *id, int64_t now_ms);

typedef int (*mdm_apikey_cb)(const mdm_apikey_info_t *info, void *arg);

/* Calls cb for every key, in id order. */
int mdm_apikey_list(mdm_txn_t *txn, mdm_apikey_cb cb, void *arg);

#endif
