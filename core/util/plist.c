#include "util/plist.h"

#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/plistjson.h"

#include <openssl/evp.h>

static bool looks_like_plist(const char *p, size_t len)
{
    if (len >= 8 && memcmp(p, "bplist00", 8) == 0)
        return true;
    /* XML: skip a BOM and whitespace; must start with '<'. */
    size_t i = 0;
    if (len >= 3 && (unsigned char)p[0] == 0xef && (unsigned char)p[1] == 0xbb &&
        (unsigned char)p[2] == 0xbf)
        i = 3;
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    return i < len && p[i] == '<';
}

int mdm_plist_load(const void *data, size_t len, plist_t *out)
{
    *out = NULL;
    if (data == NULL || len == 0 || len > UINT32_MAX)
        return MDM_EPARSE;
    if (!looks_like_plist(data, len))
        return MDM_EPARSE;
    /* The bounded parser checks size, nesting and binary expansion before
     * libplist sees the bytes (libplist recurses without a limit). */
    int rc = mdm_plist_parse(data, len, 0, out, NULL);
    return rc == 0 ? 0 : rc == MDM_ELIMIT ? MDM_ELIMIT : MDM_EPARSE;
}

int mdm_plist_load_stored(const void *data, size_t len, plist_t *out)
{
    *out = NULL;
    if (data == NULL || len == 0 || len > UINT32_MAX || !looks_like_plist(data, len))
        return MDM_EPARSE;
    int rc = mdm_plist_parse_stored(data, len, out, NULL);
    return rc == 0 ? 0 : rc == MDM_ELIMIT ? MDM_ELIMIT : MDM_EPARSE;
}

int mdm_plist_load_dict(const void *data, size_t len, size_t max, plist_t *out)
{
    *out = NULL;
    if (len > max)
        return MDM_ELIMIT;
    plist_t p;
    int rc = mdm_plist_load(data, len, &p);
    if (rc != 0)
        return rc;
    if (plist_get_node_type(p) != PLIST_DICT) {
        plist_free(p);
        return MDM_EPARSE;
    }
    *out = p;
    return 0;
}

const char *mdm_pl_str(plist_t dict, const char *key)
{
    plist_t n = dict ? plist_dict_get_item(dict, key) : NULL;
    if (n == NULL || plist_get_node_type(n) != PLIST_STRING)
        return NULL;
    return plist_get_string_ptr(n, NULL);
}

const unsigned char *mdm_pl_data(plist_t dict, const char *key, size_t *len)
{
    plist_t n = dict ? plist_dict_get_item(dict, key) : NULL;
    if (n == NULL || plist_get_node_type(n) != PLIST_DATA) {
        if (len)
            *len = 0;
        return NULL;
    }
    uint64_t l = 0;
    const char *p = plist_get_data_ptr(n, &l);
    if (len)
        *len = (size_t)l;
    return (const unsigned char *)p;
}

bool mdm_pl_bool(plist_t dict, const char *key, bool def)
{
    plist_t n = dict ? plist_dict_get_item(dict, key) : NULL;
    if (n == NULL || plist_get_node_type(n) != PLIST_BOOLEAN)
        return def;
    uint8_t v = 0;
    plist_get_bool_val(n, &v);
    return v != 0;
}

uint64_t mdm_pl_uint(plist_t dict, const char *key, uint64_t def)
{
    plist_t n = dict ? plist_dict_get_item(dict, key) : NULL;
    if (n == NULL || plist_get_node_type(n) != PLIST_UINT)
        return def;
    uint64_t v = 0;
    plist_get_uint_val(n, &v);
    return v;
}

int64_t mdm_pl_int(plist_t dict, const char *key, int64_t def)
{
    plist_t n = dict ? plist_dict_get_item(dict, key) : NULL;
    if (n == NULL || plist_get_node_type(n) != PLIST_UINT)
        return def;
    uint64_t v = 0;
    plist_get_uint_val(n, &v);
    return (int64_t)v;
}

void mdm_pl_set_int(plist_t dict, const char *key, int64_t v)
{
    plist_dict_set_item(dict, key, plist_new_uint((uint64_t)v));
}

void mdm_pl_remove(plist_t dict, const char *key)
{
    if (plist_dict_get_item(dict, key) != NULL)
        plist_dict_remove_item(dict, key);
}

void mdm_pl_set_str(plist_t dict, const char *key, const char *v)
{
    if (v == NULL)
        mdm_pl_remove(dict, key);
    else
        plist_dict_set_item(dict, key, plist_new_string(v));
}

void mdm_pl_set_data(plist_t dict, const char *key, const void *p, size_t n)
{
    if (p == NULL)
        mdm_pl_remove(dict, key);
    else
        plist_dict_set_item(dict, key, plist_new_data(p, n));
}

void mdm_pl_set_bool(plist_t dict, const char *key, bool v)
{
    plist_dict_set_item(dict, key, plist_new_bool(v));
}

void mdm_pl_set_uint(plist_t dict, const char *key, uint64_t v)
{
    plist_dict_set_item(dict, key, plist_new_uint(v));
}

void mdm_plist_to_xml_buf(plist_t p, mdm_buf_t *out)
{
    char *xml = NULL;
    uint32_t len = 0;
    plist_to_xml(p, &xml, &len);
    mdm_buf_reset(out);
    if (xml != NULL)
        mdm_buf_append(out, xml, len);
    plist_to_xml_free(xml);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void hash_node(EVP_MD_CTX *md, plist_t p, int depth)
{
    if (depth > 64)
        return;
    plist_type t = plist_get_node_type(p);
    unsigned char tag = (unsigned char)t;
    EVP_DigestUpdate(md, &tag, 1);
    switch (t) {
    case PLIST_DICT: {
        uint32_t n = plist_dict_get_size(p);
        char **keys = calloc(n ? n : 1, sizeof(char *));
        plist_dict_iter it = NULL;
        plist_dict_new_iter(p, &it);
        uint32_t i = 0;
        for (;;) {
            char *k = NULL;
            plist_t v = NULL;
            plist_dict_next_item(p, it, &k, &v);
            if (k == NULL)
                break;
            if (i < n)
                keys[i++] = k;
            else
                free(k);
        }
        free(it);
        qsort(keys, i, sizeof(char *), cmp_str);
        for (uint32_t j = 0; j < i; j++) {
            uint64_t kl = strlen(keys[j]);
            EVP_DigestUpdate(md, &kl, sizeof(kl));
            EVP_DigestUpdate(md, keys[j], kl);
            hash_node(md, plist_dict_get_item(p, keys[j]), depth + 1);
            free(keys[j]);
        }
        free(keys);
        break;
    }
    case PLIST_ARRAY: {
        uint32_t n = plist_array_get_size(p);
        EVP_DigestUpdate(md, &n, sizeof(n));
        for (uint32_t i = 0; i < n; i++)
            hash_node(md, plist_array_get_item(p, i), depth + 1);
        break;
    }
    case PLIST_STRING: {
        uint64_t l = 0;
        const char *s = plist_get_string_ptr(p, &l);
        EVP_DigestUpdate(md, &l, sizeof(l));
        EVP_DigestUpdate(md, s, l);
        break;
    }
    case PLIST_DATA: {
        uint64_t l = 0;
        const char *s = plist_get_data_ptr(p, &l);
        EVP_DigestUpdate(md, &l, sizeof(l));
        EVP_DigestUpdate(md, s, l);
        break;
    }
    case PLIST_BOOLEAN: {
        uint8_t b = 0;
        plist_get_bool_val(p, &b);
        EVP_DigestUpdate(md, &b, 1);
        break;
    }
    case PLIST_UINT: {
        uint64_t v = 0;
        plist_get_uint_val(p, &v);
        EVP_DigestUpdate(md, &v, sizeof(v));
        break;
    }
    case PLIST_REAL: {
        double v = 0;
        plist_get_real_val(p, &v);
        EVP_DigestUpdate(md, &v, sizeof(v));
        break;
    }
    case PLIST_DATE: {
        int32_t s = 0, us = 0;
        plist_get_date_val(p, &s, &us);
        EVP_DigestUpdate(md, &s, sizeof(s));
        EVP_DigestUpdate(md, &us, sizeof(us));
        break;
    }
    default:
        break;
    }
}

void mdm_plist_hash(plist_t p, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    hash_node(md, p, 0);
    unsigned int len = 32;
    EVP_DigestFinal_ex(md, out, &len);
    EVP_MD_CTX_free(md);
}
