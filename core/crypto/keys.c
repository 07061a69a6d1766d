#include "crypto/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/alloc.h"
#include "util/encode.h"
#include "util/misc.h"

/* Key and certificate files are small; anything larger is a mistake (a
 * wrong path, a database file) and is refused rather than read. */
#define MAX_PEM_FILE (4u * 1024 * 1024)

int mdm_key_generate(const char *spec, EVP_PKEY **out, mdm_err_t *err)
{
    const char *type = NULL;
    size_t bits = 0;
    const char *curve = NULL;

    *out = NULL;
    if (spec == NULL)
        spec = "";
    if (strcasecmp(spec, "rsa") == 0 || strcasecmp(spec, "rsa:3072") == 0) {
        type = "RSA";
        bits = 3072;
    } else if (strcasecmp(spec, "rsa:2048") == 0) {
        type = "RSA";
        bits = 2048;
    } else if (strcasecmp(spec, "rsa:4096") == 0) {
        type = "RSA";
        bits = 4096;
    } else if (strcasecmp(spec, "ec") == 0 || strcasecmp(spec, "ec:P-256") == 0 ||
               strcasecmp(spec, "ec:prime256v1") == 0) {
        type = "EC";
        curve = "P-256";
    } else if (strcasecmp(spec, "ec:P-384") == 0 || strcasecmp(spec, "ec:secp384r1") == 0) {
        type = "EC";
        curve = "P-384";
    } else {
        return mdm_err_set(err, MDM_EINVAL,
                           "unknown key type \"%s\": use rsa:2048, rsa:3072, rsa:4096, "
                           "ec:P-256 or ec:P-384 (\"rsa\" means rsa:3072, \"ec\" ec:P-256)",
                           spec);
    }

    EVP_PKEY *key = curve ? EVP_PKEY_Q_keygen(NULL, NULL, type, curve)
                          : EVP_PKEY_Q_keygen(NULL, NULL, type, bits);
    if (key == NULL)
        return mdm_err_set_ssl(err, MDM_ECRYPTO, "key generation failed");
    *out = key;
    return 0;
}

void mdm_key_describe(const EVP_PKEY *key, char *buf, size_t n)
{
    if (n == 0)
        return;
    if (key == NULL) {
        snprintf(buf, n, "no key");
        return;
    }
    if (EVP_PKEY_is_a(key, "RSA")) {
        snprintf(buf, n, "RSA %d bits", EVP_PKEY_get_bits(key));
        return;
    }
    if (EVP_PKEY_is_a(key, "EC")) {
        char group[64] = "";
        size_t glen = 0;
        if (EVP_PKEY_get_group_name(key, group, sizeof(group), &glen) != 1) {
            ERR_clear_error();
            snprintf(buf, n, "EC (unnamed curve, %d bits)", EVP_PKEY_get_bits(key));
            return;
        }
        /* Prefer the NIST name people know from configuration files. */
        int nid = OBJ_sn2nid(group);
        const char *nist = nid != NID_undef ? EC_curve_nid2nist(nid) : NULL;
        snprintf(buf, n, "EC %s", nist ? nist : group);
        return;
    }
    const char *tname = EVP_PKEY_get0_type_name(key);
    snprintf(buf, n, "%s", tname ? tname : "unknown key type");
}

/* Writes data to path through a temporary file in the same directory so
 * that readers see either the old file or the complete new one, never a
 * torn write. The temporary file is created with O_EXCL and the final mode
 * from the start: a private key is never readable by others, not even for a
 * moment. */
static int write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                        mdm_err_t *err)
{
    unsigned char rnd[6];
    char rhex[13];
    mdm_random(rnd, sizeof(rnd));
    mdm_hex_encode(rhex, rnd, sizeof(rnd));
    char *tmp = mdm_sprintf("%s.tmp-%s", path, rhex);
    int rc = 0;
    bool created = false;

    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    created = true;
    /* The umask may have taken bits away from a 0644 certificate. */
    if (fchmod(fd, mode) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot chmod %s: %s", tmp, strerror(errno));
        goto out;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = mdm_err_set(err, MDM_EIO, "cannot write %s: %s", tmp, strerror(errno));
            goto out;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot close %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto out;
    }
    created = false;

    /* Make the rename itself durable. A failure here leaves a complete file
     * in place, so it is not reported. */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? mdm_strndup(path, slash == path ? 1 : (size_t)(slash - path))
                      : mdm_strdup(".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    mdm_free(dir);

out:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    mdm_free(tmp);
    return rc;
}

/* Writes the contents of a memory BIO atomically. */
static int write_bio_atomic(BIO *bio, const char *path, mode_t mode, mdm_err_t *err)
{
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    if (n <= 0 || data == NULL)
        return mdm_err_set(err, MDM_ECRYPTO, "nothing to write to %s", path);
    return write_atomic(path, data, (size_t)n, mode, err);
}

int mdm_key_write_pem(EVP_PKEY *key, const char *path, mdm_err_t *err)
{
    /* A secure-memory BIO is wiped when freed, so the PEM text of the key
     * does not linger on the heap. */
    BIO *bio = BIO_new(BIO_s_secmem());
    int rc = 0;
    if (bio == NULL)
        return mdm_err_set_ssl(err, MDM_ENOMEM, "BIO_new");
    if (PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode the private key");
        goto out;
    }
    rc = write_bio_atomic(bio, path, 0600, err);
out:
    BIO_free(bio);
    return rc;
}

int mdm_certs_write_pem(STACK_OF(X509) *certs, const char *path, mdm_err_t *err)
{
    int rc = 0;
    if (certs == NULL || sk_X509_num(certs) == 0)
        return mdm_err_set(err, MDM_EINVAL, "no certificates to write to %s", path);
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return mdm_err_set_ssl(err, MDM_ENOMEM, "BIO_new");
    for (int i = 0; i < sk_X509_num(certs); i++) {
        if (PEM_write_bio_X509(bio, sk_X509_value(certs, i)) != 1) {
            rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode a certificate");
            goto out;
        }
    }
    rc = write_bio_atomic(bio, path, 0644, err);
out:
    BIO_free(bio);
    return rc;
}

int mdm_cert_write_pem(X509 *cert, const char *path, mdm_err_t *err)
{
    int rc = 0;
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return mdm_err_set_ssl(err, MDM_ENOMEM, "BIO_new");
    if (PEM_write_bio_X509(bio, cert) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode the certificate");
        goto out;
    }
    rc = write_bio_atomic(bio, path, 0644, err);
out:
    BIO_free(bio);
    return rc;
}

/* Reads a whole small file. When check_key_mode is set, the mode of the
 * opened file (not of the path, which could change in between) must not
 * give group or others any access. */
static int read_file(const char *path, bool check_key_mode, bool allow_insecure_mode,
                     unsigned char **out, size_t *outlen, mdm_err_t *err)
{
    int rc = 0;
    unsigned char *data = NULL;
    struct stat st;
    memset(&st, 0, sizeof(st));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = mdm_err_set(err, errno == ENOENT ? MDM_ENOTFOUND : MDM_EIO, "cannot open %s: %s",
                         path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mdm_err_set(err, MDM_EINVAL, "%s is not a regular file", path);
        goto out;
    }
    if (check_key_mode && (st.st_mode & 077) != 0 && !allow_insecure_mode) {
        rc = mdm_err_set(err, MDM_EAUTH,
                         "private key file %s has mode %04o: group or others can read it; "
                         "run `chmod 600 %s` (and make sure it is owned by the user moonmdm "
                         "runs as)",
                         path, (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if ((uint64_t)st.st_size > MAX_PEM_FILE) {
        rc = mdm_err_set(err, MDM_ELIMIT, "%s is too large (%lld bytes) for a key or certificate",
                         path, (long long)st.st_size);
        goto out;
    }
    size_t cap = (size_t)st.st_size;
    data = mdm_malloc(cap + 1);
    size_t len = 0;
    for (;;) {
        if (len == cap)
            break;
        ssize_t r = read(fd, data + len, cap - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = mdm_err_set(err, MDM_EIO, "cannot read %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    data[len] = '\0';
    *out = data;
    *outlen = len;
    data = NULL;
out:
    if (data) {
        OPENSSL_cleanse(data, (size_t)st.st_size);
        mdm_free(data);
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Refuses to prompt on the terminal for the passphrase of an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

int mdm_key_read_pem(const char *path, bool allow_insecure_mode, EVP_PKEY **out, mdm_err_t *err)
{
    unsigned char *data = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    *out = NULL;
    int rc = read_file(path, true, allow_insecure_mode, &data, &len, err);
    if (rc != 0)
        return rc;
    bio = BIO_new_mem_buf(data, (int)len);
    if (bio == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ENOMEM, "BIO_new_mem_buf");
        goto out;
    }
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    if (key == NULL) {
        char what[600];
        snprintf(what, sizeof(what),
                 "%s holds no usable private key (expected an unencrypted PEM key)", path);
        rc = mdm_err_set_ssl(err, MDM_EPARSE, what);
        goto out;
    }
    *out = key;
out:
    BIO_free(bio);
    OPENSSL_cleanse(data, len);
    mdm_free(data);
    return rc;
}

/* True when the bytes look like PEM rather than DER. */
static bool looks_like_pem(const unsigned char *data, size_t len)
{
    return memmem(data, len, "-----BEGIN", 10) != NULL;
}

int mdm_certs_read_pem(const char *path, STACK_OF(X509) **out, mdm_err_t *err)
{
    unsigned char *data = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    STACK_OF(X509) *certs = NULL;
    *out = NULL;
    int rc = read_file(path, false, false, &data, &len, err);
    if (rc != 0)
        return rc;
    certs = sk_X509_new_null();
    if (certs == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ENOMEM, "sk_X509_new_null");
        goto out;
    }
    if (!looks_like_pem(data, len)) {
        X509 *x = NULL;
        rc = mdm_cert_from_der(data, len, &x, err);
        if (rc != 0) {
            mdm_err_set(err, MDM_EPARSE, "%s holds no certificate (neither PEM nor DER)", path);
            goto out;
        }
        sk_X509_push(certs, x);
        goto done;
    }
    bio = BIO_new_mem_buf(data, (int)len);
    if (bio == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ENOMEM, "BIO_new_mem_buf");
        goto out;
    }
    ERR_clear_error();
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x == NULL)
            break;
        if (!sk_X509_push(certs, x)) {
            X509_free(x);
            rc = mdm_err_set_ssl(err, MDM_ENOMEM, "sk_X509_push");
            goto out;
        }
    }
    /* The loop ends at the end of the file (no more BEGIN lines), or at a
     * block that does not parse, which is an error. */
    unsigned long e = ERR_peek_last_error();
    if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        char what[600];
        snprintf(what, sizeof(what), "%s: certificate %d does not parse", path,
                 sk_X509_num(certs) + 1);
        rc = mdm_err_set_ssl(err, MDM_EPARSE, what);
        goto out;
    }
    ERR_clear_error();
    if (sk_X509_num(certs) == 0) {
        rc = mdm_err_set(err, MDM_EPARSE, "%s holds no PEM certificate", path);
        goto out;
    }
done:
    *out = certs;
    certs = NULL;
out:
    sk_X509_pop_free(certs, X509_free);
    BIO_free(bio);
    mdm_free(data);
    return rc;
}

int mdm_cert_read_pem(const char *path, X509 **out, mdm_err_t *err)
{
    STACK_OF(X509) *certs = NULL;
    *out = NULL;
    int rc = mdm_certs_read_pem(path, &certs, err);
    if (rc != 0)
        return rc;
    *out = sk_X509_shift(certs);
    sk_X509_pop_free(certs, X509_free);
    return 0;
}

int mdm_cert_sha256(X509 *cert, unsigned char out[32])
{
    unsigned char *der = NULL;
    int n = i2d_X509(cert, &der);
    if (n <= 0)
        return MDM_ECRYPTO;
    unsigned int mdlen = 0;
    int ok = EVP_Digest(der, (size_t)n, out, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    return ok == 1 && mdlen == 32 ? 0 : MDM_ECRYPTO;
}

int mdm_cert_sha256_hex(X509 *cert, char out[65])
{
    unsigned char md[32];
    int rc = mdm_cert_sha256(cert, md);
    if (rc != 0) {
        out[0] = '\0';
        return rc;
    }
    mdm_hex_encode(out, md, sizeof(md));
    return 0;
}

int mdm_x509_name_oneline(const X509_NAME *name, char *buf, size_t n)
{
    if (n == 0)
        return MDM_ELIMIT;
    buf[0] = '\0';
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return MDM_ENOMEM;
    /* RFC 2253, but UTF-8 passes through instead of being escaped as \XX
     * bytes, so that device names stay readable in logs and the API. */
    unsigned long flags = XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB;
    int rc = 0;
    if (X509_NAME_print_ex(bio, name, 0, flags) < 0) {
        ERR_clear_error();
        rc = MDM_ECRYPTO;
        goto out;
    }
    char *p = NULL;
    long len = BIO_get_mem_data(bio, &p);
    if (len < 0)
        len = 0;
    size_t copy = (size_t)len;
    if (copy >= n) {
        copy = n - 1;
        rc = MDM_ELIMIT;
    }
    if (copy)
        memcpy(buf, p, copy);
    buf[copy] = '\0';
out:
    BIO_free(bio);
    return rc;
}

int mdm_cert_from_der(const void *der, size_t len, X509 **out, mdm_err_t *err)
{
    *out = NULL;
    if (len == 0 || len > (size_t)INT32_MAX)
        return mdm_err_set(err, MDM_EPARSE, "certificate: bad DER length %zu", len);
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL)
        return mdm_err_set_ssl(err, MDM_EPARSE, "certificate: DER does not parse");
    if ((size_t)(p - (const unsigned char *)der) != len) {
        X509_free(x);
        return mdm_err_set(err, MDM_EPARSE, "certificate: %zu bytes after the DER",
                           len - (size_t)(p - (const unsigned char *)der));
    }
    *out = x;
    return 0;
}

int mdm_cert_to_der(X509 *cert, mdm_buf_t *out)
{
    int n = i2d_X509(cert, NULL);
    if (n <= 0) {
        ERR_clear_error();
        return MDM_ECRYPTO;
    }
    mdm_buf_reserve(out, (size_t)n);
    unsigned char *p = (unsigned char *)out->data + out->len;
    if (i2d_X509(cert, &p) != n) {
        ERR_clear_error();
        return MDM_ECRYPTO;
    }
    out->len += (size_t)n;
    out->data[out->len] = '\0';
    return 0;
}

bool mdm_key_matches_cert(EVP_PKEY *key, X509 *cert)
{
    if (key == NULL || cert == NULL)
        return false;
    bool ok = X509_check_private_key(cert, key) == 1;
    ERR_clear_error();
    return ok;
}

int mdm_cert_serial(const X509 *cert, unsigned char out[MDM_SERIAL_MAX], size_t *len)
{
    const ASN1_INTEGER *sn = X509_get0_serialNumber(cert);
    if (sn == NULL || ASN1_STRING_type(sn) == V_ASN1_NEG_INTEGER)
        return MDM_EINVAL;
    const unsigned char *p = ASN1_STRING_get0_data(sn);
    int n = ASN1_STRING_length(sn);
    while (n > 0 && p[0] == 0) {
        p++;
        n--;
    }
    if (n > MDM_SERIAL_MAX)
        return MDM_EINVAL;
    if (n == 0) {
        out[0] = 0;
        *len = 1;
        return 0;
    }
    memcpy(out, p, (size_t)n);
    *len = (size_t)n;
    return 0;
}

int mdm_asn1_time_ms(const ASN1_TIME *t, int64_t *ms)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        ERR_clear_error();
        return MDM_EPARSE;
    }
    time_t s = timegm(&tm);
    *ms = (int64_t)s * 1000;
    return 0;
}

int mdm_cert_validity_ms(const X509 *cert, int64_t *not_before_ms, int64_t *not_after_ms)
{
    int rc = mdm_asn1_time_ms(X509_get0_notBefore(cert), not_before_ms);
    if (rc == 0)
        rc = mdm_asn1_time_ms(X509_get0_notAfter(cert), not_after_ms);
    return rc;
}
