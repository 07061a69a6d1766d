#include "util/plist.h"

#include <stdlib.h>
#include <string.h>

#include "util/err.h"

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

int mdm_plist_parse(const void *data, size_t len, plist_t *out)
{
    *out = NULL;
    if (data == NULL || len == 0 || len > UINT32_MAX)
        return MDM_EPARSE;
    if (!looks_like_plist(data, len))
        return MDM_EPARSE;
    plist_t p = NULL;
    if (len >= 8 && memcmp(data, "bplist00", 8) == 0)
        plist_from_bin(data, (uint32_t)len, &p);
    else
        plist_from_xml(data, (uint32_t)len, &p);
    if (p == NULL)
        return MDM_EPARSE;
    *out = p;
    return 0;
}

int mdm_plist_parse_dict(const void *data, size_t len, size_t max, plist_t *out)
{
    *out = NULL;
    if (len > max)
        return MDM_ELIMIT;
    plist_t p;
    int rc = mdm_plist_parse(data, len, &p);
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

void mdm_plist_to_bin_buf(plist_t p, mdm_buf_t *out)
{
    char *bin = NULL;
    uint32_t len = 0;
    plist_to_bin(p, &bin, &len);
    mdm_buf_reset(out);
    if (bin != NULL)
        mdm_buf_append(out, bin, len);
    plist_to_bin_free(bin);
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
