#include "crypto/ca.h"

#include <ctype.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/alloc.h"
#include "util/misc.h"

/* Bit numbers of the KeyUsage BIT STRING (RFC 5280 section 4.2.1.3). */
enum {
    KUB_DIGITAL_SIGNATURE = 0,
    KUB_KEY_ENCIPHERMENT = 2,
    KUB_KEY_AGREEMENT = 4,
    KUB_KEY_CERT_SIGN = 5,
    KUB_CRL_SIGN = 6,
};
#define KU(bit) (1u << (bit))

#define DAY_MS (24LL * 3600 * 1000)

/* The digest to sign with: SHA-256, except for EdDSA keys, which take
 * none. */
static const EVP_MD *sign_md(EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448"))
        return NULL;
    return EVP_sha256();
}

/* A random positive serial of 16 bytes: the top bit is clear (positive
 * without a leading zero byte) and the next one set, so that every serial
 * has exactly 127 bits, 126 of them random: far more than the 64 bits of
 * randomness CA/B Forum rules ask for, and a fixed length that keeps the
 * certificate table's key order equal to numeric order. */
static int set_random_serial(X509 *x)
{
    unsigned char b[16];
    mdm_random(b, sizeof(b));
    b[0] = (unsigned char)((b[0] & 0x7f) | 0x40);
    ASN1_INTEGER *sn = ASN1_INTEGER_new();
    int rc = MDM_ECRYPTO;
    if (sn == NULL)
        return MDM_ENOMEM;
    if (ASN1_STRING_set(sn, b, sizeof(b)) == 1 && X509_set_serialNumber(x, sn) == 1)
        rc = 0;
    ASN1_INTEGER_free(sn);
    return rc;
}

static int set_time(ASN1_TIME *t, int64_t ms)
{
    /* ASN1_TIME_set picks UTCTime before 2050 and GeneralizedTime after,
     * as RFC 5280 requires. */
    time_t s = (time_t)(ms / 1000);
    return ASN1_TIME_set(t, s) != NULL ? 0 : MDM_ECRYPTO;
}

/*
 * Copy a request's SubjectPublicKeyInfo into a new certificate as it was
 * encoded: the algorithm, its parameters and the key bits. X509_set_pubkey()
 * would get the same bytes by encoding the parsed key and decoding the result
 * again, and with OpenSSL 3.0's provider encoders and decoders that round
 * trip cost about a seventh of the server's CPU per SCEP enrollment. The
 * certificate's own parsed key stays empty; nothing on the issuing path
 * needs it (the key identifier is a digest of the bits).
 */
static int copy_spki(X509 *x, X509_PUBKEY *src)
{
    ASN1_OBJECT *alg = NULL;
    const unsigned char *bits = NULL;
    int nbits = 0;
    X509_ALGOR *palg = NULL;
    if (X509_PUBKEY_get0_param(&alg, &bits, &nbits, &palg, src) != 1 || bits == NULL ||
        nbits <= 0)
        return MDM_ECRYPTO;
    const ASN1_OBJECT *aobj = NULL;
    int ptype = V_ASN1_UNDEF;
    const void *pval = NULL;
    X509_ALGOR_get0(&aobj, &ptype, &pval, palg);
    void *param = NULL;
    if (ptype == V_ASN1_OBJECT)
        param = OBJ_dup(pval);
    else if (ptype == V_ASN1_SEQUENCE)
        param = ASN1_STRING_dup(pval);
    else if (ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF)
        return MDM_ECRYPTO;
    ASN1_OBJECT *obj = OBJ_dup(aobj);
    unsigned char *enc = OPENSSL_memdup(bits, (size_t)nbits);
    if (obj == NULL || enc == NULL || (param == NULL && pval != NULL &&
                                       (ptype == V_ASN1_OBJECT || ptype == V_ASN1_SEQUENCE)) ||
        X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), obj, ptype, param, enc, nbits) != 1) {
        ASN1_OBJECT_free(obj);
        if (ptype == V_ASN1_OBJECT)
            ASN1_OBJECT_free(param);
        else
            ASN1_STRING_free(param);
        OPENSSL_free(enc);
        return MDM_ECRYPTO;
    }
    return 0;
}

/* A certificate with everything but extensions and signature; its key is
 * either a parsed key or (spki, preferred) a request's encoded key. */
static int new_cert(EVP_PKEY *pubkey, X509_PUBKEY *spki, const X509_NAME *subject,
                    const X509_NAME *issuer, int64_t not_before_ms, int64_t not_after_ms,
                    X509 **out, mdm_err_t *err)
{
    X509 *x = X509_new();
    if (x == NULL)
        return mdm_err_set_ssl(err, MDM_ENOMEM, "X509_new");
    int rc = 0;
    if (X509_set_version(x, X509_VERSION_3) != 1 || set_random_serial(x) != 0 ||
        X509_set_subject_name(x, subject) != 1 || X509_set_issuer_name(x, issuer) != 1 ||
        set_time(X509_getm_notBefore(x), not_before_ms) != 0 ||
        set_time(X509_getm_notAfter(x), not_after_ms) != 0 ||
        (spki != NULL ? copy_spki(x, spki) != 0 : X509_set_pubkey(x, pubkey) != 1)) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot fill in the certificate");
        goto out;
    }
    *out = x;
    x = NULL;
out:
    X509_free(x);
    return rc;
}

static int add_ext(X509 *x, int nid, void *value, int crit)
{
    return X509_add1_ext_i2d(x, nid, value, crit, X509V3_ADD_REPLACE) == 1 ? 0 : MDM_ECRYPTO;
}

static int add_basic_constraints(X509 *x, bool ca, int pathlen)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    int rc = MDM_ECRYPTO;
    if (bc == NULL)
        return MDM_ENOMEM;
    bc->ca = ca ? 0xff : 0;
    if (ca && pathlen >= 0) {
        bc->pathlen = ASN1_INTEGER_new();
        if (bc->pathlen == NULL || ASN1_INTEGER_set(bc->pathlen, pathlen) != 1)
            goto out;
    }
    rc = add_ext(x, NID_basic_constraints, bc, 1);
out:
    BASIC_CONSTRAINTS_free(bc);
    return rc;
}

/* Adds a critical KeyUsage with the bits of mask (KU(KUB_...)). */
static int add_key_usage(X509 *x, unsigned mask)
{
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    int rc = MDM_ECRYPTO;
    if (ku == NULL)
        return MDM_ENOMEM;
    for (int bit = 0; bit < 9; bit++) {
        if ((mask & KU(bit)) && ASN1_BIT_STRING_set_bit(ku, bit, 1) != 1)
            goto out;
    }
    rc = add_ext(x, NID_key_usage, ku, 1);
out:
    ASN1_BIT_STRING_free(ku);
    return rc;
}

static int add_ext_key_usage(X509 *x, int nid)
{
    EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
    int rc = MDM_ECRYPTO;
    if (eku == NULL)
        return MDM_ENOMEM;
    ASN1_OBJECT *obj = OBJ_nid2obj(nid);
    if (obj == NULL || !sk_ASN1_OBJECT_push(eku, obj))
        goto out;
    rc = add_ext(x, NID_ext_key_usage, eku, 0);
out:
    /* OBJ_nid2obj's objects are static; ASN1_OBJECT_free leaves them be. */
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    return rc;
}

/* The RFC 5280 key identifier of a certificate's public key: SHA-1 over the
 * subjectPublicKey BIT STRING. */
static ASN1_OCTET_STRING *pubkey_id(const X509 *x)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_pubkey_digest(x, EVP_sha1(), md, &n) != 1)
        return NULL;
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    if (os != NULL && ASN1_OCTET_STRING_set(os, md, (int)n) != 1) {
        ASN1_OCTET_STRING_free(os);
        os = NULL;
    }
    return os;
}

/* The key identifier that certificates issued by issuer name in their
 * AKI: its own SKI when it has one, else the hash of its key. */
static ASN1_OCTET_STRING *issuer_key_id(X509 *issuer)
{
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(issuer);
    if (ski != NULL)
        return ASN1_OCTET_STRING_dup(ski);
    return pubkey_id(issuer);
}

static int add_authority_key_id(X509 *x, const ASN1_OCTET_STRING *keyid)
{
    AUTHORITY_KEYID *aki = AUTHORITY_KEYID_new();
    int rc = MDM_ECRYPTO;
    if (aki == NULL)
        return MDM_ENOMEM;
    aki->keyid = ASN1_OCTET_STRING_dup(keyid);
    if (aki->keyid != NULL)
        rc = add_ext(x, NID_authority_key_identifier, aki, 0);
    AUTHORITY_KEYID_free(aki);
    return rc;
}

/* Adds the SKI (from the certificate's own key) and the AKI. When
 * issuer_id is NULL the certificate is self-signed and AKI equals SKI. */
static int add_key_ids(X509 *x, const ASN1_OCTET_STRING *issuer_id)
{
    ASN1_OCTET_STRING *ski = pubkey_id(x);
    int rc = MDM_ECRYPTO;
    if (ski == NULL)
        return rc;
    rc = add_ext(x, NID_subject_key_identifier, ski, 0);
    if (rc == 0)
        rc = add_authority_key_id(x, issuer_id ? issuer_id : ski);
    ASN1_OCTET_STRING_free(ski);
    return rc;
}

static int add_crl_distribution_point(X509 *x, const char *url)
{
    int rc = MDM_ECRYPTO;
    CRL_DIST_POINTS *dps = sk_DIST_POINT_new_null();
    DIST_POINT *dp = DIST_POINT_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *uri = ASN1_IA5STRING_new();
    if (dps == NULL || dp == NULL || gn == NULL || uri == NULL)
        goto out;
    if (ASN1_STRING_set(uri, url, (int)strlen(url)) != 1)
        goto out;
    GENERAL_NAME_set0_value(gn, GEN_URI, uri);
    uri = NULL;
    dp->distpoint = DIST_POINT_NAME_new();
    if (dp->distpoint == NULL)
        goto out;
    dp->distpoint->type = 0; /* fullName */
    dp->distpoint->name.fullname = GENERAL_NAMES_new();
    if (dp->distpoint->name.fullname == NULL ||
        !sk_GENERAL_NAME_push(dp->distpoint->name.fullname, gn))
        goto out;
    gn = NULL;
    if (!sk_DIST_POINT_push(dps, dp))
        goto out;
    dp = NULL;
    rc = add_ext(x, NID_crl_distribution_points, dps, 0);
out:
    ASN1_IA5STRING_free(uri);
    GENERAL_NAME_free(gn);
    DIST_POINT_free(dp);
    sk_DIST_POINT_pop_free(dps, DIST_POINT_free);
    return rc;
}

static int sign_cert(X509 *x, EVP_PKEY *key, mdm_err_t *err)
{
    if (X509_sign(x, key, sign_md(key)) <= 0)
        return mdm_err_set_ssl(err, MDM_ECRYPTO, "signing the certificate failed");
    return 0;
}

/* A DNS name for a subjectAltName: letters, digits, hyphens and dots,
 * labels of 1 to 63 characters, optionally "*." in front. */
static bool valid_dns_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    if (s[0] == '*' && s[1] == '.')
        s += 2;
    size_t label = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!(isalnum(c) || c == '-' || c == '_'))
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0;
}

/* Parses "DNS:name" or "IP:address" (IPv4, IPv6, IPv6 in brackets). */
static int parse_san(const char *s, GENERAL_NAME **out, mdm_err_t *err)
{
    GENERAL_NAME *gn = GENERAL_NAME_new();
    if (gn == NULL)
        return mdm_err_set_ssl(err, MDM_ENOMEM, "GENERAL_NAME_new");
    if (strncasecmp(s, "DNS:", 4) == 0) {
        const char *name = s + 4;
        if (!valid_dns_name(name)) {
            GENERAL_NAME_free(gn);
            return mdm_err_set(err, MDM_EINVAL,
                               "subjectAltName \"%s\": \"%s\" is not a valid DNS name", s, name);
        }
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        if (ia5 == NULL || ASN1_STRING_set(ia5, name, (int)strlen(name)) != 1) {
            ASN1_IA5STRING_free(ia5);
            GENERAL_NAME_free(gn);
            return mdm_err_set_ssl(err, MDM_ENOMEM, "ASN1_STRING_set");
        }
        GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
    } else if (strncasecmp(s, "IP:", 3) == 0) {
        const char *addr = s + 3;
        char tmp[64];
        size_t alen = strlen(addr);
        if (alen >= 2 && alen < sizeof(tmp) && addr[0] == '[' && addr[alen - 1] == ']') {
            memcpy(tmp, addr + 1, alen - 2);
            tmp[alen - 2] = '\0';
            addr = tmp;
        }
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(addr);
        if (ip == NULL) {
            ERR_clear_error();
            GENERAL_NAME_free(gn);
            return mdm_err_set(err, MDM_EINVAL,
                               "subjectAltName \"%s\": \"%s\" is not an IPv4 or IPv6 address", s,
                               addr);
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
    } else {
        GENERAL_NAME_free(gn);
        return mdm_err_set(err, MDM_EINVAL,
                           "subjectAltName \"%s\" must start with \"DNS:\" or \"IP:\"", s);
    }
    *out = gn;
    return 0;
}

/* The last moment a certificate issued by ca may be valid. */
static int ca_not_after(mdm_ca_t *ca, int64_t *ms)
{
    return mdm_asn1_time_ms(X509_get0_notAfter(ca->cert), ms);
}

/* Checks that a device key is of a type and size we issue for. */
int mdm_ca_check_device_key(EVP_PKEY *pk, mdm_err_t *err)
{
    if (pk == NULL)
        return mdm_err_set(err, MDM_EINVAL, "the request has no public key");
    char desc[80];
    mdm_key_describe(pk, desc, sizeof(desc));
    if (EVP_PKEY_is_a(pk, "RSA")) {
        int bits = EVP_PKEY_get_bits(pk);
        if (bits < 2048 || bits > 8192)
            return mdm_err_set(err, MDM_EINVAL,
                               "the request's key is %s: RSA keys must have 2048 to 8192 bits",
                               desc);
        return 0;
    }
    if (EVP_PKEY_is_a(pk, "EC")) {
        char group[64] = "";
        size_t glen = 0;
        int nid = NID_undef;
        if (EVP_PKEY_get_group_name(pk, group, sizeof(group), &glen) == 1)
            nid = OBJ_sn2nid(group);
        ERR_clear_error();
        if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1)
            return mdm_err_set(err, MDM_EINVAL,
                               "the request's key is %s: EC keys must use curve P-256 or P-384",
                               desc);
        return 0;
    }
    return mdm_err_set(err, MDM_EINVAL,
                       "the request's key is %s: only RSA (2048 to 8192 bits) and EC (P-256, "
                       "P-384) keys are accepted",
                       desc);
}

/* Formats ms as RFC 3339 for messages. */
static const char *fmt_time(char buf[32], int64_t ms)
{
    mdm_time_format(buf, ms);
    return buf;
}

static int ca_init(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, const char *cert_label,
                   const char *key_label, mdm_ca_t **out, mdm_err_t *err)
{
    *out = NULL;
    if (cert == NULL || key == NULL)
        return mdm_err_set(err, MDM_EINVAL, "a CA needs a certificate and a key");

    if (!mdm_key_matches_cert(key, cert)) {
        char kd[80];
        mdm_key_describe(key, kd, sizeof(kd));
        return mdm_err_set(err, MDM_ECONFIG, "%s (%s) does not match %s", key_label, kd,
                           cert_label);
    }
    /* Computing the extension flags also caches them in the certificate,
     * so that the threads that issue later only read it. */
    uint32_t flags = X509_get_extension_flags(cert);
    if (flags & EXFLAG_INVALID)
        return mdm_err_set(err, MDM_ECONFIG, "%s has malformed extensions", cert_label);
    if (!(flags & EXFLAG_CA))
        return mdm_err_set(err, MDM_ECONFIG,
                           "%s is not a CA certificate: it lacks basicConstraints CA:TRUE",
                           cert_label);
    if (!(X509_get_key_usage(cert) & KU_KEY_CERT_SIGN))
        return mdm_err_set(err, MDM_ECONFIG,
                           "%s is not a CA certificate: its key usage lacks keyCertSign",
                           cert_label);
    (void)X509_get0_subject_key_id(cert);

    int64_t nb = 0, na = 0, now = mdm_now_ms();
    char t1[32], t2[32];
    if (mdm_cert_validity_ms(cert, &nb, &na) != 0)
        return mdm_err_set(err, MDM_ECONFIG, "%s has unreadable validity dates", cert_label);
    if (now < nb)
        return mdm_err_set(err, MDM_ECONFIG,
                           "%s is not valid yet: it is valid from %s until %s (now is %s; check "
                           "the clock)",
                           cert_label, fmt_time(t1, nb), fmt_time(t2, na),
                           fmt_time((char[32]){0}, now));
    if (now > na)
        return mdm_err_set(err, MDM_EEXPIRED,
                           "%s expired on %s (it was valid from %s); make a new CA or renew "
                           "this one",
                           cert_label, fmt_time(t2, na), fmt_time(t1, nb));

    mdm_ca_t *ca = mdm_calloc(1, sizeof(*ca));
    X509_up_ref(cert);
    ca->cert = cert;
    EVP_PKEY_up_ref(key);
    ca->key = key;
    ca->chain = chain ? X509_chain_up_ref(chain) : sk_X509_new_null();
    if (ca->chain == NULL) {
        mdm_ca_free(ca);
        return mdm_err_set_ssl(err, MDM_ENOMEM, "chain");
    }
    for (int i = 0; i < sk_X509_num(ca->chain); i++)
        (void)X509_get_extension_flags(sk_X509_value(ca->chain, i));
    ca->validity_ms = MDM_CA_DEFAULT_VALIDITY_MS;
    *out = ca;
    return 0;
}

int mdm_ca_new(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, mdm_ca_t **out, mdm_err_t *err)
{
    return ca_init(cert, key, chain, "the CA certificate", "the CA key", out, err);
}

int mdm_ca_load(const char *cert_path, const char *key_path, const char *chain_path,
                bool allow_insecure_key_mode, mdm_ca_t **out, mdm_err_t *err)
{
    STACK_OF(X509) *certs = NULL;
    STACK_OF(X509) *chain = NULL;
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    char *cert_label = NULL;
    char *key_label = NULL;
    *out = NULL;

    int rc = mdm_certs_read_pem(cert_path, &certs, err);
    if (rc != 0)
        goto out;
    /* The first certificate is the CA; any others in the same file are
     * taken as its chain when no chain file is given. */
    cert = sk_X509_shift(certs);
    rc = mdm_key_read_pem(key_path, allow_insecure_key_mode, &key, err);
    if (rc != 0)
        goto out;
    if (chain_path != NULL) {
        rc = mdm_certs_read_pem(chain_path, &chain, err);
        if (rc != 0)
            goto out;
    } else {
        chain = certs;
        certs = NULL;
    }
    cert_label = mdm_sprintf("the CA certificate %s", cert_path);
    key_label = mdm_sprintf("the CA key %s", key_path);
    rc = ca_init(cert, key, chain, cert_label, key_label, out, err);
out:
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(chain, X509_free);
    X509_free(cert);
    EVP_PKEY_free(key);
    mdm_free(cert_label);
    mdm_free(key_label);
    return rc;
}

void mdm_ca_free(mdm_ca_t *ca)
{
    if (ca == NULL)
        return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    sk_X509_pop_free(ca->chain, X509_free);
    mdm_free(ca->crl_url);
    mdm_free(ca);
}

int mdm_ca_create_self_signed(EVP_PKEY *key, const char *common_name, int days, X509 **out,
                              mdm_err_t *err)
{
    X509 *x = NULL;
    X509_NAME *name = NULL;
    int rc = 0;
    *out = NULL;
    if (common_name == NULL || common_name[0] == '\0')
        return mdm_err_set(err, MDM_EINVAL, "the CA needs a common name");
    if (days <= 0 || days > 100 * 366)
        return mdm_err_set(err, MDM_EINVAL, "CA validity of %d days is out of range (1 to 36600)",
                           days);

    name = X509_NAME_new();
    if (name == NULL ||
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"moonmdm", -1,
                                   -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name,
                                   -1, -1, 0) != 1) {
        rc = mdm_err_set_ssl(err, MDM_EINVAL, "bad CA common name");
        goto out;
    }
    int64_t now = mdm_now_ms();
    rc = new_cert(key, NULL, name, name, now - MDM_CA_BACKDATE_MS, now + days * DAY_MS, &x, err);
    if (rc != 0)
        goto out;
    if (add_basic_constraints(x, true, 0) != 0 ||
        add_key_usage(x, KU(KUB_KEY_CERT_SIGN) | KU(KUB_CRL_SIGN) | KU(KUB_DIGITAL_SIGNATURE) |
                             KU(KUB_KEY_ENCIPHERMENT)) != 0 ||
        add_key_ids(x, NULL) != 0) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the CA extensions");
        goto out;
    }
    rc = sign_cert(x, key, err);
    if (rc != 0)
        goto out;
    *out = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(name);
    return rc;
}

/* notAfter = from + span, kept within the CA's own validity. */
static int bounded_not_after(mdm_ca_t *ca, int64_t from, uint64_t span_ms, int64_t *out,
                             mdm_err_t *err)
{
    int64_t ca_na = 0;
    if (ca_not_after(ca, &ca_na) != 0)
        return mdm_err_set(err, MDM_ECRYPTO, "the CA certificate has unreadable dates");
    int64_t na = span_ms > (uint64_t)(INT64_MAX - from) ? INT64_MAX : from + (int64_t)span_ms;
    if (na > ca_na)
        na = ca_na;
    *out = na;
    return 0;
}

int mdm_ca_issue_server_cert(mdm_ca_t *ca, EVP_PKEY *server_key, const char *cn,
                             const char *const *sans, size_t nsans, int days, X509 **out,
                             mdm_err_t *err)
{
    X509 *x = NULL;
    X509_NAME *name = NULL;
    GENERAL_NAMES *gens = NULL;
    ASN1_OCTET_STRING *ca_id = NULL;
    int rc = 0;
    *out = NULL;
    if (cn == NULL || cn[0] == '\0')
        return mdm_err_set(err, MDM_EINVAL, "a server certificate needs a common name");
    if (days <= 0 || days > MDM_CA_MAX_SERVER_DAYS)
        return mdm_err_set(err, MDM_EINVAL,
                           "server certificate validity of %d days is out of range: Apple "
                           "devices refuse TLS server certificates valid for more than %d days",
                           days, MDM_CA_MAX_SERVER_DAYS);

    gens = GENERAL_NAMES_new();
    if (gens == NULL)
        return mdm_err_set_ssl(err, MDM_ENOMEM, "GENERAL_NAMES_new");
    for (size_t i = 0; i < nsans; i++) {
        GENERAL_NAME *gn = NULL;
        rc = parse_san(sans[i], &gn, err);
        if (rc != 0)
            goto out;
        sk_GENERAL_NAME_push(gens, gn);
    }
    if (nsans == 0) {
        /* Clients match only the subjectAltName, so the common name
         * becomes the one name. */
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(cn);
        ERR_clear_error();
        char *spec = mdm_sprintf("%s:%s", ip ? "IP" : "DNS", cn);
        ASN1_OCTET_STRING_free(ip);
        GENERAL_NAME *gn = NULL;
        rc = parse_san(spec, &gn, err);
        mdm_free(spec);
        if (rc != 0)
            goto out;
        sk_GENERAL_NAME_push(gens, gn);
    }

    name = X509_NAME_new();
    if (name == NULL || X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                                   (const unsigned char *)cn, -1, -1, 0) != 1) {
        rc = mdm_err_set_ssl(err, MDM_EINVAL, "bad server common name");
        goto out;
    }
    int64_t now = mdm_now_ms(), na = 0;
    rc = bounded_not_after(ca, now, (uint64_t)days * DAY_MS, &na, err);
    if (rc != 0)
        goto out;
    rc = new_cert(server_key, NULL, name, X509_get_subject_name(ca->cert), now - MDM_CA_BACKDATE_MS, na,
                  &x, err);
    if (rc != 0)
        goto out;
    unsigned ku = KU(KUB_DIGITAL_SIGNATURE);
    if (EVP_PKEY_is_a(server_key, "RSA"))
        ku |= KU(KUB_KEY_ENCIPHERMENT);
    ca_id = issuer_key_id(ca->cert);
    if (ca_id == NULL || add_basic_constraints(x, false, -1) != 0 || add_key_usage(x, ku) != 0 ||
        add_ext_key_usage(x, NID_server_auth) != 0 || add_key_ids(x, ca_id) != 0 ||
        add_ext(x, NID_subject_alt_name, gens, 0) != 0) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the server certificate extensions");
        goto out;
    }
    rc = sign_cert(x, ca->key, err);
    if (rc != 0)
        goto out;
    *out = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(name);
    GENERAL_NAMES_free(gens);
    ASN1_OCTET_STRING_free(ca_id);
    return rc;
}

/* Copies the subjectAltName a CSR asked for, after checking it parses. */
static int copy_csr_san(X509 *x, X509_REQ *csr, mdm_err_t *err)
{
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(csr);
    int rc = 0;
    ERR_clear_error();
    if (exts == NULL)
        return 0;
    int idx = X509v3_get_ext_by_NID(exts, NID_subject_alt_name, -1);
    if (idx >= 0) {
        X509_EXTENSION *ext = X509v3_get_ext(exts, idx);
        GENERAL_NAMES *gens = X509V3_EXT_d2i(ext);
        if (gens == NULL) {
            ERR_clear_error();
            rc = mdm_err_set(err, MDM_EINVAL, "the request's subjectAltName is malformed");
            goto out;
        }
        GENERAL_NAMES_free(gens);
        if (X509_add_ext(x, ext, -1) != 1) {
            rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot copy the subjectAltName");
            goto out;
        }
    }
out:
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return rc;
}

/* The device certificate profile shared by the CSR and direct paths. */
static int issue_device_cert(mdm_ca_t *ca, EVP_PKEY *pubkey, const X509_NAME *subject,
                             X509_REQ *csr, const mdm_issue_opts_t *opts, X509 **out,
                             mdm_err_t *err)
{
    static const mdm_issue_opts_t no_opts;
    X509 *x = NULL;
    ASN1_OCTET_STRING *ca_id = NULL;
    int rc = 0;
    if (opts == NULL)
        opts = &no_opts;

    rc = mdm_ca_check_device_key(pubkey, err);
    if (rc != 0)
        return rc;
    if (subject == NULL || X509_NAME_entry_count(subject) == 0)
        return mdm_err_set(err, MDM_EINVAL, "the certificate subject is empty");

    uint64_t validity = opts->validity_ms ? opts->validity_ms : ca->validity_ms;
    if (validity == 0)
        validity = MDM_CA_DEFAULT_VALIDITY_MS;
    int64_t now = mdm_now_ms();
    int64_t nb = opts->not_before_ms ? opts->not_before_ms : now - MDM_CA_BACKDATE_MS;
    int64_t na = 0;
    rc = bounded_not_after(ca, opts->not_before_ms ? nb : now, validity, &na, err);
    if (rc != 0)
        return rc;
    if (na <= nb) {
        char t[32];
        return mdm_err_set(err, MDM_EEXPIRED,
                           "cannot issue: the CA certificate is valid only until %s",
                           fmt_time(t, na));
    }

    rc = new_cert(pubkey, csr != NULL ? X509_REQ_get_X509_PUBKEY(csr) : NULL, subject,
                  X509_get_subject_name(ca->cert), nb, na, &x, err);
    if (rc != 0)
        goto out;
    unsigned ku = KU(KUB_DIGITAL_SIGNATURE);
    if (EVP_PKEY_is_a(pubkey, "EC"))
        ku |= KU(KUB_KEY_AGREEMENT);
    else
        ku |= KU(KUB_KEY_ENCIPHERMENT);
    ca_id = issuer_key_id(ca->cert);
    if (ca_id == NULL || add_basic_constraints(x, false, -1) != 0 || add_key_usage(x, ku) != 0 ||
        add_ext_key_usage(x, NID_client_auth) != 0 || add_key_ids(x, ca_id) != 0 ||
        (ca->crl_url && add_crl_distribution_point(x, ca->crl_url) != 0)) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the device certificate extensions");
        goto out;
    }
    if (csr != NULL) {
        rc = copy_csr_san(x, csr, err);
        if (rc != 0)
            goto out;
    }
    rc = sign_cert(x, ca->key, err);
    if (rc != 0)
        goto out;
    *out = x;
    x = NULL;
out:
    X509_free(x);
    ASN1_OCTET_STRING_free(ca_id);
    return rc;
}

int mdm_ca_issue_client_cert_for_key(mdm_ca_t *ca, EVP_PKEY *pubkey, const X509_NAME *subject,
                                     const mdm_issue_opts_t *opts, X509 **out, mdm_err_t *err)
{
    *out = NULL;
    if (pubkey == NULL)
        return mdm_err_set(err, MDM_EINVAL, "no public key to certify");
    return issue_device_cert(ca, pubkey, subject, NULL, opts, out, err);
}

int mdm_ca_issue_from_csr(mdm_ca_t *ca, X509_REQ *csr, const mdm_issue_opts_t *opts, X509 **out,
                          mdm_err_t *err)
{
    *out = NULL;
    if (csr == NULL)
        return mdm_err_set(err, MDM_EINVAL, "no certificate request");
    EVP_PKEY *pk = X509_REQ_get0_pubkey(csr);
    if (pk == NULL)
        return mdm_err_set_ssl(err, MDM_EINVAL, "the request has no usable public key");
    int v = opts && opts->csr_verified ? 1 : X509_REQ_verify(csr, pk);
    if (v != 1) {
        if (v == 0)
            ERR_clear_error();
        return mdm_err_set_ssl(err, MDM_EAUTH,
                               "the request's signature does not verify with its own key");
    }
    const X509_NAME *subject =
        opts && opts->subject_override ? opts->subject_override : X509_REQ_get_subject_name(csr);
    return issue_device_cert(ca, pk, subject, csr, opts, out, err);
}

int mdm_ca_verify_cert(mdm_ca_t *ca, X509 *cert, STACK_OF(X509) *untrusted, mdm_err_t *err)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int rc = 0;
    if (store == NULL || ctx == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ENOMEM, "X509_STORE_new");
        goto out;
    }
    if (X509_STORE_add_cert(store, ca->cert) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "X509_STORE_add_cert");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(ca->chain); i++) {
        if (X509_STORE_add_cert(store, sk_X509_value(ca->chain, i)) != 1) {
            /* The chain file may repeat the CA certificate. */
            ERR_clear_error();
        }
    }
    /* The CA may itself be an intermediate whose root we do not hold: any
     * certificate in the store is a trust anchor. */
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    if (X509_STORE_CTX_init(ctx, store, cert, untrusted) != 1 ||
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "X509_STORE_CTX_init");
        goto out;
    }
    if (X509_verify_cert(ctx) != 1) {
        int e = X509_STORE_CTX_get_error(ctx);
        int depth = X509_STORE_CTX_get_error_depth(ctx);
        char subj[256] = "";
        X509 *bad = X509_STORE_CTX_get_current_cert(ctx);
        mdm_x509_name_oneline(X509_get_subject_name(bad ? bad : cert), subj, sizeof(subj));
        ERR_clear_error();
        rc = mdm_err_set(err, e == X509_V_ERR_CERT_HAS_EXPIRED ? MDM_EEXPIRED : MDM_EAUTH,
                         "certificate verification failed: %s (depth %d, %s)",
                         X509_verify_cert_error_string(e), depth, subj);
        goto out;
    }
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return rc;
}

static ASN1_INTEGER *serial_to_asn1(const unsigned char *b, size_t n)
{
    BIGNUM *bn = BN_bin2bn(b, (int)n, NULL);
    if (bn == NULL)
        return NULL;
    ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    return ai;
}

static int add_revoked(X509_CRL *crl, const mdm_revoked_t *r)
{
    X509_REVOKED *rev = X509_REVOKED_new();
    ASN1_INTEGER *sn = NULL;
    ASN1_TIME *t = NULL;
    ASN1_ENUMERATED *reason = NULL;
    int rc = MDM_ECRYPTO;
    if (rev == NULL)
        return MDM_ENOMEM;
    if (r->serial_len == 0 || r->serial_len > MDM_SERIAL_MAX) {
        rc = MDM_EINVAL;
        goto out;
    }
    sn = serial_to_asn1(r->serial, r->serial_len);
    t = ASN1_TIME_set(NULL, (time_t)(r->revoked_at_ms / 1000));
    if (sn == NULL || t == NULL || X509_REVOKED_set_serialNumber(rev, sn) != 1 ||
        X509_REVOKED_set_revocationDate(rev, t) != 1)
        goto out;
    /* RFC 5280: reason code 0 (unspecified) should be absent; 7 is not
     * assigned. */
    if (r->reason > 0 && r->reason != 7 && r->reason <= 10) {
        reason = ASN1_ENUMERATED_new();
        if (reason == NULL || ASN1_ENUMERATED_set(reason, r->reason) != 1 ||
            X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, reason, 0, 0) != 1)
            goto out;
    }
    if (X509_CRL_add0_revoked(crl, rev) != 1)
        goto out;
    rev = NULL;
    rc = 0;
out:
    X509_REVOKED_free(rev);
    ASN1_INTEGER_free(sn);
    ASN1_TIME_free(t);
    ASN1_ENUMERATED_free(reason);
    return rc;
}

int mdm_ca_crl(mdm_ca_t *ca, const mdm_revoked_t *revoked, size_t n, uint64_t crl_number,
               int64_t next_update_ms, mdm_buf_t *der_out, mdm_err_t *err)
{
    X509_CRL *crl = NULL;
    ASN1_TIME *last = NULL, *next = NULL;
    ASN1_INTEGER *num = NULL;
    ASN1_OCTET_STRING *ca_id = NULL;
    AUTHORITY_KEYID *aki = NULL;
    unsigned char *der = NULL;
    int rc = 0;
    int64_t now = mdm_now_ms();
    if (next_update_ms <= now)
        return mdm_err_set(err, MDM_EINVAL, "the CRL's next update must be in the future");

    crl = X509_CRL_new();
    last = ASN1_TIME_set(NULL, (time_t)(now / 1000));
    next = ASN1_TIME_set(NULL, (time_t)(next_update_ms / 1000));
    num = ASN1_INTEGER_new();
    aki = AUTHORITY_KEYID_new();
    ca_id = issuer_key_id(ca->cert);
    if (crl == NULL || last == NULL || next == NULL || num == NULL || aki == NULL ||
        ca_id == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ENOMEM, "CRL");
        goto out;
    }
    if (X509_CRL_set_version(crl, X509_CRL_VERSION_2) != 1 ||
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert)) != 1 ||
        X509_CRL_set1_lastUpdate(crl, last) != 1 || X509_CRL_set1_nextUpdate(crl, next) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot fill in the CRL");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rc = add_revoked(crl, &revoked[i]);
        if (rc != 0) {
            rc = mdm_err_set_ssl(err, rc, "cannot add a CRL entry");
            goto out;
        }
    }
    aki->keyid = ca_id;
    ca_id = NULL;
    if (X509_CRL_sort(crl) != 1 || ASN1_INTEGER_set_uint64(num, crl_number) != 1 ||
        X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1 ||
        X509_CRL_add1_ext_i2d(crl, NID_authority_key_identifier, aki, 0, 0) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the CRL extensions");
        goto out;
    }
    if (X509_CRL_sign(crl, ca->key, sign_md(ca->key)) <= 0) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "signing the CRL failed");
        goto out;
    }
    int len = i2d_X509_CRL(crl, &der);
    if (len <= 0) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode the CRL");
        goto out;
    }
    mdm_buf_append(der_out, der, (size_t)len);
out:
    OPENSSL_free(der);
    X509_CRL_free(crl);
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    ASN1_INTEGER_free(num);
    ASN1_OCTET_STRING_free(ca_id);
    AUTHORITY_KEYID_free(aki);
    return rc;
}
