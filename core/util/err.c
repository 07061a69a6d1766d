#include "util/err.h"

#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *mdm_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define MDM_ERR_CASE(name, val, msg) \
    case val:                        \
        return msg;
        MDM_ERRNO_MAP(MDM_ERR_CASE)
#undef MDM_ERR_CASE
    }
    return "unknown error";
}

const char *mdm_errname(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define MDM_ERR_NAME(name, val, msg) \
    case val:                        \
        return #name;
        MDM_ERRNO_MAP(MDM_ERR_NAME)
#undef MDM_ERR_NAME
    }
    return "EUNKNOWN";
}

int mdm_err_set(mdm_err_t *err, int code, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

int mdm_err_set_ssl(mdm_err_t *err, int code, const char *what)
{
    char detail[256] = "";
    unsigned long e = ERR_peek_last_error();
    if (e != 0)
        ERR_error_string_n(e, detail, sizeof(detail));
    ERR_clear_error();
    if (detail[0])
        return mdm_err_set(err, code, "%s: %s", what, detail);
    return mdm_err_set(err, code, "%s", what);
}
