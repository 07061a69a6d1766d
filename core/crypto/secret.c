#include "crypto/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/misc.h"

int mdm_secretkey_load(const char *path, bool create, bool allow_insecure_mode,
                       mdm_secretkey_t *out, mdm_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return mdm_err_set(err, MDM_EIO, "cannot create %s: %s", path, strerror(errno));
        mdm_random(out->key, sizeof(out->key));
        bool ok = write(fd, out->key, sizeof(out->key)) == (ssize_t)sizeof(out->key) &&
                  fsync(fd) == 0;
        close(fd);
        if (!ok) {
            unlink(path);
            return mdm_err_set(err, MDM_EIO, "cannot write %s: %s", path, strerror(errno));
        }
        return 0;
    }
    if (fd < 0)
        return mdm_err_set(err, MDM_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0) {
        rc = mdm_err_set(err, MDM_EIO, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    if ((st.st_mode & 077) && !allow_insecure_mode) {
        rc = mdm_err_set(err, MDM_EAUTH,
                         "%s is readable by group or others (mode %03o): run `chmod 600 %s`",
                         path, (unsigned)(st.st_mode & 0777), path);
        goto out;
    }
    if (read(fd, out->key, sizeof(out->key)) != (ssize_t)sizeof(out->key)) {
        rc = mdm_err_set(err, MDM_EPARSE, "%s: expected 32 bytes of key", path);
        goto out;
    }
out:
    close(fd);
    return rc;
}

int mdm_secret_seal(const mdm_secretkey_t *k, const char *aad, const void *p, size_t n,
                    mdm_buf_t *out)
{
    unsigned char nonce[12];
    mdm_random(nonce, sizeof(nonce));
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int rc = MDM_ECRYPTO, len = 0;
    size_t start = out->len;
    mdm_buf_reserve(out, 1 + 12 + n + 16 + 16);
    unsigned char *o = (unsigned char *)out->data + out->len;
    o[0] = 1;
    memcpy(o + 1, nonce, 12);
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k->key, nonce) != 1)
        goto out;
    if (aad && EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1)
        goto out;
    if (EVP_EncryptUpdate(ctx, o + 13, &len, p, (int)n) != 1)
        goto out;
    int total = len;
    if (EVP_EncryptFinal_ex(ctx, o + 13 + total, &len) != 1)
        goto out;
    total += len;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, o + 13 + total) != 1)
        goto out;
    out->len = start + 13 + (size_t)total + 16;
    out->data[out->len] = '\0';
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int mdm_secret_open(const mdm_secretkey_t *k, const char *aad, const void *p, size_t n,
                    mdm_buf_t *out)
{
    const unsigned char *s = p;
    if (n < 1 + 12 + 16 || s[0] != 1)
        return MDM_EAUTH;
    size_t ctlen = n - 29;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int rc = MDM_EAUTH, len = 0;
    size_t start = out->len;
    mdm_buf_reserve(out, ctlen + 16);
    unsigned char *o = (unsigned char *)out->data + out->len;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k->key, s + 1) != 1)
        goto out;
    if (aad && EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1)
        goto out;
    if (EVP_DecryptUpdate(ctx, o, &len, s + 13, (int)ctlen) != 1)
        goto out;
    int total = len;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(s + 13 + ctlen)) != 1)
        goto out;
    if (EVP_DecryptFinal_ex(ctx, o + total, &len) != 1) {
        OPENSSL_cleanse(o, (size_t)total);
        goto out;
    }
    total += len;
    out->len = start + (size_t)total;
    out->data[out->len] = '\0';
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}
