/* A fast path for Mdm-Signature: once a signer certificate has been
 * verified the slow way (OpenSSL CMS_verify and a chain check), its key is
 * kept, and later signatures by the same certificate are checked directly:
 * walk the DER of the detached SignedData, find the certificate (by the
 * SHA-256 of its bytes), require the SignerInfo's sid to name it, compare
 * the messageDigest attribute with a digest of the body, and verify the
 * signature over the signed attributes with the kept key. Anything unusual (no signed attributes, an algorithm not
 * handled here, several signers) goes back to the slow path. Decoding
 * certificates is most of what CMS_verify costs; this skips it. */
#include "mdm/sigcache.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "util/alloc.h"

/* ---- a minimal DER reader ------------------------------------------------ */

typedef struct der {
    const unsigned char *p;   /* the whole TLV */
    size_t len;               /* of the whole TLV */
    const unsigned char *v;   /* the value */
    size_t vlen;
    unsigned tag;             /* first identifier byte */
} der_t;

/* Reads one TLV at *p (definite lengths only); advances *p. */
static bool der_next(const unsigned char **p, const unsigned char *end, der_t *out)
{
    const unsigned char *s = *p;
    if (end - s < 2)
        return false;
    unsigned tag = s[0];
    if ((tag & 0x1f) == 0x1f)
        return false; /* high tag numbers are not used here */
    size_t n = s[1], hl = 2;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > 4 || (size_t)(end - s) < 2 + k)
            return false;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = (n << 8) | s[2 + i];
        hl = 2 + k;
    }
    if ((size_t)(end - s) - hl < n)
        return false;
    out->p = s;
    out->tag = tag;
    out->v = s + hl;
    out->vlen = n;
    out->len = hl + n;
    *p = s + hl + n;
    return true;
}

static bool der_enter(const der_t *d, const unsigned char **p, const unsigned char **end)
{
    if (!(d->tag & 0x20))
        return false;
    *p = d->v;
    *end = d->v + d->vlen;
    return true;
}

static const unsigned char OID_SIGNED_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02};
static const unsigned char OID_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
static const unsigned char OID_CONTENT_TYPE[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03};
static const unsigned char OID_MESSAGE_DIGEST[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04};
static const unsigned char OID_SHA1[] = {0x2b, 0x0e, 0x03, 0x02, 0x1a};
static const unsigned char OID_SHA256[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
static const unsigned char OID_SHA384[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02};
static const unsigned char OID_SHA512[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03};
/* rsaEncryption, sha*WithRSAEncryption, ecdsa-with-SHA* share these prefixes. */
static const unsigned char OID_RSA_PREFIX[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01};
static const unsigned char OID_ECDSA_PREFIX[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04};

static bool oid_is(const der_t *d, const unsigned char *oid, size_t n)
{
    return d->tag == 0x06 && d->vlen == n && memcmp(d->v, oid, n) == 0;
}

static bool oid_has_prefix(const der_t *d, const unsigned char *oid, size_t n)
{
    return d->tag == 0x06 && d->vlen > n && memcmp(d->v, oid, n) == 0;
}

static const EVP_MD *digest_of(const der_t *alg_oid)
{
    if (oid_is(alg_oid, OID_SHA256, sizeof(OID_SHA256)))
        return EVP_sha256();
    if (oid_is(alg_oid, OID_SHA1, sizeof(OID_SHA1)))
        return EVP_sha1();
    if (oid_is(alg_oid, OID_SHA384, sizeof(OID_SHA384)))
        return EVP_sha384();
    if (oid_is(alg_oid, OID_SHA512, sizeof(OID_SHA512)))
        return EVP_sha512();
    return NULL;
}

/* ---- the cache ----------------------------------------------------------- */

struct mdm_sigcache {
    struct entry {
        unsigned char fp[32];
        int64_t valid_until_ms;   /* 0: empty */
        X509 *cert;
        EVP_PKEY *key;
    } *slots;
    size_t nslots, used;
};

mdm_sigcache_t *mdm_sigcache_new(size_t slots)
{
    mdm_sigcache_t *c = mdm_calloc(1, sizeof(*c));
    size_t n = 16;
    while (n < slots)
        n *= 2;
    c->nslots = n;
    c->slots = mdm_calloc(n, sizeof(*c->slots));
    return c;
}

static void clear(mdm_sigcache_t *c)
{
    for (size_t i = 0; i < c->nslots; i++) {
        X509_free(c->slots[i].cert);
        EVP_PKEY_free(c->slots[i].key);
    }
    memset(c->slots, 0, c->nslots * sizeof(*c->slots));
    c->used = 0;
}

void mdm_sigcache_free(mdm_sigcache_t *c)
{
    if (c == NULL)
        return;
    clear(c);
    mdm_free(c->slots);
    mdm_free(c);
}

static struct entry *slot(mdm_sigcache_t *c, const unsigned char fp[32], bool *found)
{
    uint64_t h;
    memcpy(&h, fp, sizeof(h));
    size_t mask = c->nslots - 1;
    for (size_t i = 0; i < c->nslots; i++) {
        struct entry *e = &c->slots[(h + i) & mask];
        if (e->valid_until_ms == 0) {
            *found = false;
            return e;
        }
        if (memcmp(e->fp, fp, 32) == 0) {
            *found = true;
            return e;
        }
    }
    *found = false;
    return NULL;
}

void mdm_sigcache_put(mdm_sigcache_t *c, const unsigned char fp[32], X509 *cert,
                      int64_t valid_until_ms)
{
    if (c->used * 10 >= c->nslots * 7)
        clear(c); /* full enough: start over rather than evict one by one */
    bool found;
    struct entry *e = slot(c, fp, &found);
    if (e == NULL)
        return;
    EVP_PKEY *key = X509_get_pubkey(cert);
    if (key == NULL)
        return;
    if (found) {
        X509_free(e->cert);
        EVP_PKEY_free(e->key);
    } else {
        c->used++;
    }
    X509_up_ref(cert);
    memcpy(e->fp, fp, 32);
    e->cert = cert;
    e->key = key;
    e->valid_until_ms = valid_until_ms;
}

bool mdm_sigcache_known(mdm_sigcache_t *c, const unsigned char fp[32], int64_t now_ms)
{
    bool found;
    struct entry *e = slot(c, fp, &found);
    return found && e->valid_until_ms > now_ms;
}

/* ---- the fast verification ----------------------------------------------- */

/* Checks the signed attributes: contentType id-data and a messageDigest
 * equal to digest. */
static bool attrs_ok(const der_t *attrs, const unsigned char *digest, size_t dlen)
{
    const unsigned char *p, *end;
    if (!der_enter(attrs, &p, &end))
        return false;
    bool md_ok = false, ct_ok = false;
    der_t a;
    while (p < end) {
        if (!der_next(&p, end, &a) || a.tag != 0x30)
            return false;
        const unsigned char *q, *qend;
        der_enter(&a, &q, &qend);
        der_t oid, set;
        if (!der_next(&q, qend, &oid) || !der_next(&q, qend, &set) || set.tag != 0x31)
            return false;
        const unsigned char *r = set.v, *rend = set.v + set.vlen;
        der_t val;
        if (!der_next(&r, rend, &val) || r != rend)
            return false; /* exactly one value */
        if (oid_is(&oid, OID_MESSAGE_DIGEST, sizeof(OID_MESSAGE_DIGEST))) {
            if (md_ok || val.tag != 0x04 || val.vlen != dlen ||
                CRYPTO_memcmp(val.v, digest, dlen) != 0)
                return false;
            md_ok = true;
        } else if (oid_is(&oid, OID_CONTENT_TYPE, sizeof(OID_CONTENT_TYPE))) {
            if (ct_ok || !oid_is(&val, OID_DATA, sizeof(OID_DATA)))
                return false;
            ct_ok = true;
        }
    }
    return md_ok && ct_ok;
}

/* Whether an encoding is the DER that i2d gives for an object of the
 * certificate (its issuer name or serial number). */
static bool der_equals(const der_t *d, const void *obj, int (*i2d)(const void *, unsigned char **))
{
    unsigned char *enc = NULL;
    int n = i2d(obj, &enc);
    bool same = n > 0 && (size_t)n == d->len && memcmp(enc, d->p, d->len) == 0;
    OPENSSL_free(enc);
    return same;
}

static int name_i2d(const void *name, unsigned char **out)
{
    return i2d_X509_NAME(name, out);
}

static int integer_i2d(const void *n, unsigned char **out)
{
    return i2d_ASN1_INTEGER(n, out);
}

/* Whether the SignerInfo's sid names cert in the exact encoding the
 * certificate has: IssuerAndSerialNumber, or [0] SubjectKeyIdentifier.
 * Anything else (another certificate, an equivalent but different
 * encoding) is left to CMS_verify, which matches the sid against the set
 * itself, so that both paths take the same signer. */
static bool sid_names(const der_t *sid, X509 *cert)
{
    if (sid->tag == 0x80) {
        const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(cert);
        return skid != NULL && (size_t)ASN1_STRING_length(skid) == sid->vlen &&
               memcmp(ASN1_STRING_get0_data(skid), sid->v, sid->vlen) == 0;
    }
    const unsigned char *p, *end;
    der_t issuer, serial;
    return sid->tag == 0x30 && der_enter(sid, &p, &end) && der_next(&p, end, &issuer) &&
           der_next(&p, end, &serial) && p == end &&
           der_equals(&issuer, X509_get_issuer_name(cert), name_i2d) &&
           der_equals(&serial, X509_get0_serialNumber(cert), integer_i2d);
}

int mdm_sigcache_verify(mdm_sigcache_t *c, const void *der, size_t len, const void *body,
                        size_t blen, int64_t now_ms, X509 **signer, unsigned char fp_out[32])
{
    const unsigned char *p = der, *end = p + len, *q, *qend;
    der_t ci, ct, wrap, sd, f;
    /* ContentInfo { signedData, [0] SignedData } */
    if (!der_next(&p, end, &ci) || ci.tag != 0x30 || p != end || !der_enter(&ci, &q, &qend) ||
        !der_next(&q, qend, &ct) || !oid_is(&ct, OID_SIGNED_DATA, sizeof(OID_SIGNED_DATA)) ||
        !der_next(&q, qend, &wrap) || wrap.tag != 0xa0 || !der_enter(&wrap, &q, &qend) ||
        !der_next(&q, qend, &sd) || sd.tag != 0x30 || !der_enter(&sd, &q, &qend))
        return MDM_SIGCACHE_MISS;
    /* version, digestAlgorithms, encapContentInfo (detached: no eContent) */
    der_t version, dalgs, encap;
    if (!der_next(&q, qend, &version) || version.tag != 0x02 || !der_next(&q, qend, &dalgs) ||
        dalgs.tag != 0x31 || !der_next(&q, qend, &encap) || encap.tag != 0x30)
        return MDM_SIGCACHE_MISS;
    /* Every digest the set announces must be one handled here (the full
     * verification sets them all up and refuses unknown ones). */
    const unsigned char *g = dalgs.v, *gend = dalgs.v + dalgs.vlen;
    while (g < gend) {
        der_t alg, aoid;
        const unsigned char *ga;
        if (!der_next(&g, gend, &alg) || alg.tag != 0x30)
            return MDM_SIGCACHE_MISS;
        ga = alg.v;
        if (!der_next(&ga, alg.v + alg.vlen, &aoid) || digest_of(&aoid) == NULL)
            return MDM_SIGCACHE_MISS;
    }
    const unsigned char *e = encap.v, *eend = encap.v + encap.vlen;
    der_t etype;
    if (!der_next(&e, eend, &etype) || !oid_is(&etype, OID_DATA, sizeof(OID_DATA)) || e != eend)
        return MDM_SIGCACHE_MISS;
    /* [0] certificates, optional [1] crls, then signerInfos */
    der_t certs = {0}, infos = {0};
    while (q < qend) {
        if (!der_next(&q, qend, &f))
            return MDM_SIGCACHE_MISS;
        if (f.tag == 0xa0)
            certs = f;
        else if (f.tag == 0x31)
            infos = f;
    }
    if (certs.p == NULL || infos.p == NULL)
        return MDM_SIGCACHE_MISS;
    const unsigned char *s = infos.v, *send = infos.v + infos.vlen;
    der_t si;
    if (!der_next(&s, send, &si) || si.tag != 0x30 || s != send)
        return MDM_SIGCACHE_MISS; /* exactly one signer */
    const unsigned char *t, *tend;
    der_enter(&si, &t, &tend);
    der_t siv, sid, dalg, attrs, salg, sig;
    if (!der_next(&t, tend, &siv) || !der_next(&t, tend, &sid) || !der_next(&t, tend, &dalg) ||
        dalg.tag != 0x30 || !der_next(&t, tend, &attrs) || attrs.tag != 0xa0 ||
        !der_next(&t, tend, &salg) || salg.tag != 0x30 || !der_next(&t, tend, &sig) ||
        sig.tag != 0x04)
        return MDM_SIGCACHE_MISS;
    const unsigned char *a = dalg.v;
    der_t doid, soid;
    if (!der_next(&a, dalg.v + dalg.vlen, &doid))
        return MDM_SIGCACHE_MISS;
    a = salg.v;
    if (!der_next(&a, salg.v + salg.vlen, &soid) ||
        !(oid_has_prefix(&soid, OID_RSA_PREFIX, sizeof(OID_RSA_PREFIX)) ||
          oid_has_prefix(&soid, OID_ECDSA_PREFIX, sizeof(OID_ECDSA_PREFIX))))
        return MDM_SIGCACHE_MISS;
    /* RSA-PSS (1.2.840.113549.1.1.10) needs parameters: the slow path. */
    if (soid.vlen == sizeof(OID_RSA_PREFIX) + 1 && soid.v[sizeof(OID_RSA_PREFIX)] == 10)
        return MDM_SIGCACHE_MISS;
    const EVP_MD *md = digest_of(&doid);
    if (md == NULL)
        return MDM_SIGCACHE_MISS;

    /* The signer: a certificate of the set that the cache knows. */
    struct entry *hit = NULL;
    const unsigned char *k = certs.v, *kend = certs.v + certs.vlen;
    unsigned char fp[32];
    der_t cert;
    while (k < kend && hit == NULL) {
        if (!der_next(&k, kend, &cert) || cert.tag != 0x30)
            return MDM_SIGCACHE_MISS;
        unsigned int fl = 32;
        EVP_Digest(cert.p, cert.len, fp, &fl, EVP_sha256(), NULL);
        bool found;
        struct entry *en = slot(c, fp, &found);
        if (found && en->valid_until_ms > now_ms)
            hit = en;
    }
    if (hit == NULL || !sid_names(&sid, hit->cert))
        return MDM_SIGCACHE_MISS;

    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    if (EVP_Digest(body, blen, digest, &dl, md, NULL) != 1 || !attrs_ok(&attrs, digest, dl))
        return MDM_SIGCACHE_BAD;
    /* The signature covers the DER of the attributes as a SET OF. */
    unsigned char *tbs = mdm_memdup(attrs.p, attrs.len);
    tbs[0] = 0x31;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = EVP_DigestVerifyInit(ctx, NULL, md, NULL, hit->key) == 1 &&
             EVP_DigestVerify(ctx, sig.v, sig.vlen, tbs, attrs.len) == 1;
    EVP_MD_CTX_free(ctx);
    mdm_free(tbs);
    if (!ok)
        return MDM_SIGCACHE_BAD;
    X509_up_ref(hit->cert);
    *signer = hit->cert;
    memcpy(fp_out, hit->fp, 32);
    return MDM_SIGCACHE_OK;
}
