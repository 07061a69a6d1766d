/* Error codes shared by every module: 0 is success, negative values are
 * errors, mdm_strerror() explains them to people. Errors an admin must act
 * on travel in an mdm_err_t with the details (file, line, key). */
#ifndef MDM_ERR_H
#define MDM_ERR_H

#include <stddef.h>

#define MDM_ERRNO_MAP(X)                                                   \
    X(ENOMEM, -1, "out of memory")                                         \
    X(EINVAL, -2, "invalid argument")                                      \
    X(ENOTFOUND, -3, "not found")                                          \
    X(EEXIST, -4, "already exists")                                        \
    X(EIO, -5, "input/output error")                                       \
    X(ESCHEMA, -6, "unsupported store schema version")                     \
    X(ENOSPACE, -7, "storage full")                                        \
    X(ECRYPTO, -8, "cryptographic operation failed")                       \
    X(EPARSE, -9, "malformed input")                                       \
    X(EAUTH, -10, "not authorised")                                        \
    X(ELIMIT, -11, "limit exceeded")                                       \
    X(ESTATE, -12, "operation not valid in this state")                    \
    X(ECONFIG, -13, "configuration error")                                 \
    X(ECLOSED, -14, "connection closed")                                   \
    X(EMAPFULL, -15, "store map full")                                     \
    X(EBUSY, -16, "resource busy")                                         \
    X(EEXPIRED, -17, "expired")                                            \
    X(ENOTSUP, -18, "not supported")                                       \
    X(ETIMEDOUT, -19, "timed out")                                         \
    X(EPOLICY, -20, "policy error")

enum {
#define MDM_ERR_ENUM(name, val, msg) MDM_##name = val,
    MDM_ERRNO_MAP(MDM_ERR_ENUM)
#undef MDM_ERR_ENUM
};

/* A person-readable text for an error code (never NULL). */
const char *mdm_strerror(int err);

/* The symbolic name of an error code, e.g. "ENOTFOUND". */
const char *mdm_errname(int err);

/* An error buffer that carries what went wrong in words. */
typedef struct mdm_err {
    int code;
    char msg[512];
} mdm_err_t;

/* Sets code and message (printf-style); returns code so that callers can
 * write `return mdm_err_set(err, MDM_EINVAL, "...")`. err may be NULL. */
int mdm_err_set(mdm_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends OpenSSL's error queue to the message (and clears the queue). */
int mdm_err_set_ssl(mdm_err_t *err, int code, const char *what);

#endif
