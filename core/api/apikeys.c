#include "api/apikeys.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <string.h>

#include "util/alloc.h"
#include "util/encode.h"
#include "util/misc.h"

const char *mdm_api_role_name(int role)
{
    return role == MDM_ROLE_ADMIN ? "admin" : role == MDM_ROLE_READ ? "read" : "none";
}

int mdm_api_role_parse(const char *name)
{
    if (strcmp(name, "admin") == 0)
        return MDM_ROLE_ADMIN;
    if (strcmp(name, "read") == 0 || strcmp(name, "read-only") == 0 ||
        strcmp(name, "readonly") == 0)
        return MDM_ROLE_READ;
    return 0;
}

static void sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

static int decode_record(mdm_val_t v, mdm_apikey_info_t *info, unsigned char hash[32])
{
    json_error_t je;
    json_t *root = json_loadb(v.data, v.len, 0, &je);
    if (root == NULL)
        return MDM_EPARSE;
    int rc = MDM_EPARSE;
    const char *h = json_string_value(json_object_get(root, "hash"));
    const char *name = json_string_value(json_object_get(root, "name"));
    const char *role = json_string_value(json_object_get(root, "role"));
    if (h == NULL || role == NULL || mdm_hex_decode(hash, 32, h, strlen(h)) != 32)
        goto out;
    snprintf(info->name, sizeof(info->name), "%s", name ? name : "");
    info->role = mdm_api_role_parse(role);
    info->created_ms = json_integer_value(json_object_get(root, "created"));
    info->revoked_ms = json_integer_value(json_object_get(root, "revoked"));
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static int encode_put(mdm_txn_t *txn, const mdm_apikey_info_t *info, const unsigned char hash[32])
{
    char hex[65];
    mdm_hex_encode(hex, hash, 32);
    json_t *root = json_pack("{s:s, s:s, s:s, s:I, s:I}", "hash", hex, "name", info->name, "role",
                             mdm_api_role_name(info->role), "created", (json_int_t)info->created_ms,
                             "revoked", (json_int_t)info->revoked_ms);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    int rc = mdm_txn_put(txn, MDM_T_APIKEYS, MDM_VAL(info->id, MDM_APIKEY_ID_LEN),
                         MDM_VAL(s, strlen(s)), 0);
    free(s);
    return rc;
}

int mdm_apikey_create(mdm_txn_t *txn, const char *name, int role,
                      char key_out[MDM_APIKEY_LEN + 1], mdm_apikey_info_t *info)
{
    unsigned char idb[MDM_APIKEY_ID_LEN / 2], secret[32], hash[32];
    mdm_apikey_info_t local;
    if (info == NULL)
        info = &local;
    memset(info, 0, sizeof(*info));
    if (role != MDM_ROLE_ADMIN && role != MDM_ROLE_READ)
        return MDM_EINVAL;
    mdm_random(idb, sizeof(idb));
    mdm_random(secret, sizeof(secret));
    mdm_hex_encode(info->id, idb, sizeof(idb));
    char sechex[65];
    mdm_hex_encode(sechex, secret, sizeof(secret));
    sha256(sechex, 64, hash);
    snprintf(info->name, sizeof(info->name), "%s", name ? name : "");
    info->role = role;
    info->created_ms = mdm_now_ms();
    int rc = encode_put(txn, info, hash);
    if (rc != 0)
        return rc;
    snprintf(key_out, MDM_APIKEY_LEN + 1, "mdm_%s_%s", info->id, sechex);
    return 0;
}

int mdm_apikey_verify(mdm_txn_t *txn, const char *key, mdm_apikey_info_t *info)
{
    if (key == NULL || strlen(key) != MDM_APIKEY_LEN || memcmp(key, "mdm_", 4) != 0 ||
        key[4 + MDM_APIKEY_ID_LEN] != '_')
        return MDM_EAUTH;
    const char *id = key + 4;
    const char *sec = key + 4 + MDM_APIKEY_ID_LEN + 1;
    unsigned char want[32], got[32];
    mdm_val_t v;
    if (mdm_txn_get(txn, MDM_T_APIKEYS, MDM_VAL(id, MDM_APIKEY_ID_LEN), &v) != 0)
        return MDM_EAUTH;
    mdm_apikey_info_t tmp;
    if (info == NULL)
        info = &tmp;
    memset(info, 0, sizeof(*info));
    if (decode_record(v, info, want) != 0)
        return MDM_EAUTH;
    memcpy(info->id, id, MDM_APIKEY_ID_LEN);
    info->id[MDM_APIKEY_ID_LEN] = '\0';
    sha256(sec, 64, got);
    if (!mdm_consttime_eq(want, 32, got, 32) || info->revoked_ms != 0 || info->role == 0)
        return MDM_EAUTH;
    return 0;
}

int mdm_apikey_revoke(mdm_txn_t *txn, const char *id, int64_t now_ms)
{
    if (id == NULL || strlen(id) != MDM_APIKEY_ID_LEN)
        return MDM_ENOTFOUND;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_APIKEYS, MDM_VAL(id, MDM_APIKEY_ID_LEN), &v);
    if (rc != 0)
        return rc;
    mdm_apikey_info_t info;
    unsigned char hash[32];
    memset(&info, 0, sizeof(info));
    rc = decode_record(v, &info, hash);
    if (rc != 0)
        return rc;
    memcpy(info.id, id, MDM_APIKEY_ID_LEN);
    if (info.revoked_ms == 0)
        info.revoked_ms = now_ms;
    return encode_put(txn, &info, hash);
}

int mdm_apikey_list(mdm_txn_t *txn, mdm_apikey_cb cb, void *arg)
{
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_APIKEYS, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(c, &k, &v)) {
        mdm_apikey_info_t info;
        unsigned char hash[32];
        memset(&info, 0, sizeof(info));
        if (k.len != MDM_APIKEY_ID_LEN || decode_record(v, &info, hash) != 0)
            continue;
        memcpy(info.id, k.data, MDM_APIKEY_ID_LEN);
        rc = cb(&info, arg);
        if (rc != 0)
            break;
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}
