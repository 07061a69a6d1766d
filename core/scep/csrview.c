/* What the SCEP decision hook is shown of a CSR. See csrview.h. */
#include "scep/csrview.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "crypto/keys.h"
#include "util/alloc.h"
#include "util/encode.h"

void mdm_csr_view_free(mdm_csr_view_t *v)
{
    for (size_t i = 0; i < v->nsans; i++)
        mdm_free(v->sans[i]);
    v->nsans = 0;
}

/* "prefix" + the hex of the bytes. */
static char *hex_text(const char *prefix, const unsigned char *p, size_t n)
{
    size_t pl = strlen(prefix);
    char *out = mdm_malloc(pl + 2 * n + 1);
    memcpy(out, prefix, pl);
    mdm_hex_encode(out + pl, p, n);
    out[pl + 2 * n] = '\0';
    return out;
}

/* "prefix" + the hex of the DER of a GENERAL_NAME or of an otherName's value. */
static char *der_text(const char *prefix, const GENERAL_NAME *g, const ASN1_TYPE *value)
{
    unsigned char *der = NULL;
    int n = value != NULL ? i2d_ASN1_TYPE(value, &der) : i2d_GENERAL_NAME(g, &der);
    char *out = hex_text(prefix, der, n > 0 ? (size_t)n : 0);
    OPENSSL_free(der);
    return out;
}

/* "kind:" + a text value; NULL when it holds a NUL byte. */
static char *string_text(const char *kind, const unsigned char *p, int n)
{
    if (n < 0 || memchr(p, '\0', (size_t)n) != NULL)
        return NULL;
    return mdm_sprintf("%s:%.*s", kind, n, (const char *)p);
}

static char *ip_text(const ASN1_OCTET_STRING *a)
{
    const unsigned char *ip = ASN1_STRING_get0_data(a);
    int len = ASN1_STRING_length(a);
    char text[64];
    if (len == 4) {
        snprintf(text, sizeof(text), "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
    } else if (len == 16) {
        size_t o = 0;
        for (int j = 0; j < 16; j += 2)
            o += (size_t)snprintf(text + o, sizeof(text) - o, "%s%x", j ? ":" : "",
                                  (unsigned)(ip[j] << 8 | ip[j + 1]));
    } else {
        return hex_text("IP:#", ip, len > 0 ? (size_t)len : 0);
    }
    return mdm_sprintf("IP:%s", text);
}

static char *othername_text(const GENERAL_NAME *g)
{
    const OTHERNAME *o = g->d.otherName;
    const ASN1_TYPE *v = o->value;
    if (OBJ_obj2nid(o->type_id) == NID_ms_upn && v != NULL && v->type == V_ASN1_UTF8STRING)
        return string_text("upn", ASN1_STRING_get0_data(v->value.utf8string),
                           ASN1_STRING_length(v->value.utf8string));
    char oid[128], prefix[160];
    if (OBJ_obj2txt(oid, sizeof(oid), o->type_id, 1) <= 0)
        snprintf(oid, sizeof(oid), "?");
    snprintf(prefix, sizeof(prefix), "othername:%s:", oid);
    return der_text(prefix, NULL, v);
}

/* One SAN as "type:value"; NULL (and *why) when it cannot be shown whole. */
static char *san_text(const GENERAL_NAME *g, const char **why)
{
    char buf[512];
    char *t = NULL;
    *why = "the CSR has a subjectAltName with a NUL byte";
    switch (g->type) {
    case GEN_DNS:
        return string_text("DNS", ASN1_STRING_get0_data(g->d.dNSName),
                           ASN1_STRING_length(g->d.dNSName));
    case GEN_EMAIL:
        return string_text("email", ASN1_STRING_get0_data(g->d.rfc822Name),
                           ASN1_STRING_length(g->d.rfc822Name));
    case GEN_URI:
        return string_text("URI", ASN1_STRING_get0_data(g->d.uniformResourceIdentifier),
                           ASN1_STRING_length(g->d.uniformResourceIdentifier));
    case GEN_IPADD: return ip_text(g->d.iPAddress);
    case GEN_OTHERNAME: return othername_text(g);
    case GEN_DIRNAME:
        if (mdm_x509_name_oneline(g->d.directoryName, buf, sizeof(buf)) != 0) {
            *why = "the CSR has a directoryName subjectAltName too long to show";
            return NULL;
        }
        return mdm_sprintf("dirname:%s", buf);
    case GEN_RID:
        if (OBJ_obj2txt(buf, sizeof(buf), g->d.registeredID, 1) > 0)
            t = mdm_sprintf("rid:%s", buf);
        *why = "the CSR has a registeredID subjectAltName that cannot be shown";
        return t;
    case GEN_X400: return der_text("x400:", g, NULL);
    case GEN_EDIPARTY: return der_text("ediparty:", g, NULL);
    default: *why = "the CSR has a subjectAltName of an unknown type"; return NULL;
    }
}

/* Fills v->sans; NULL, or why the CSR cannot be shown whole. */
static const char *csr_view_sans(X509_REQ *csr, mdm_csr_view_t *v)
{
    const char *why = NULL;
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(csr);
    int idx = exts != NULL ? X509v3_get_ext_by_NID(exts, NID_subject_alt_name, -1) : -1;
    GENERAL_NAMES *gens = idx >= 0 ? X509V3_EXT_d2i(X509v3_get_ext(exts, idx)) : NULL;
    if (idx >= 0 && gens == NULL)
        why = "the CSR's subjectAltName is malformed";
    else if (gens != NULL && sk_GENERAL_NAME_num(gens) > MDM_CSR_VIEW_MAX_SANS)
        why = "the CSR has more than 64 subjectAltNames";
    for (int i = 0; why == NULL && gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        char *t = san_text(sk_GENERAL_NAME_value(gens, i), &why);
        if (t != NULL) {
            v->sans[v->nsans++] = t;
            why = NULL;
        }
    }
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    ERR_clear_error();
    return why;
}

/* Fills v->cn from the subject; NULL, or why the subject cannot be shown. */
static const char *csr_view_names(const X509_NAME *name, mdm_csr_view_t *v)
{
    int ncn = 0;
    for (int i = 0; i < X509_NAME_entry_count(name); i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
        bool nul = n > 0 && memchr(utf8, '\0', (size_t)n) != NULL;
        bool is_cn = OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)) == NID_commonName;
        if (is_cn && ncn++ == 0 && n > 0 && !nul)
            snprintf(v->cn, sizeof(v->cn), "%.*s", n, (const char *)utf8);
        OPENSSL_free(utf8);
        ERR_clear_error();
        if (nul)
            return "the CSR's subject has a value with a NUL byte";
    }
    return ncn > 1 ? "the CSR's subject has more than one CN" : NULL;
}

const char *mdm_csr_view_make(X509_REQ *csr, mdm_csr_view_t *v)
{
    memset(v, 0, sizeof(*v));
    const X509_NAME *name = X509_REQ_get_subject_name(csr);
    if (mdm_x509_name_oneline(name, v->subject, sizeof(v->subject)) != 0)
        return "the CSR's subject is too long (more than 511 bytes as text)";
    const char *why = csr_view_names(name, v);
    if (why == NULL)
        why = csr_view_sans(csr, v);
    if (why != NULL)
        mdm_csr_view_free(v);
    return why;
}
