#include "mdm/certauth.h"

#include <string.h>

static size_t hkey(unsigned char out[34], const unsigned char fp[32])
{
    out[0] = 'h';
    out[1] = ':';
    memcpy(out + 2, fp, 32);
    return 34;
}

static int ekey(char out[MDM_ENROLLMENT_ID_MAX + 3], const char *id, size_t *len)
{
    size_t n = strlen(id);
    if (n == 0 || n > MDM_ENROLLMENT_ID_MAX)
        return MDM_EINVAL;
    out[0] = 'e';
    out[1] = ':';
    memcpy(out + 2, id, n);
    *len = n + 2;
    return 0;
}

int mdm_certauth_lookup(mdm_txn_t *txn, const unsigned char fp[32], char *id_out, size_t n)
{
    unsigned char k[34];
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_CERTAUTH, MDM_VAL(k, hkey(k, fp)), &v);
    if (rc != 0)
        return rc;
    if (v.len + 1 > n)
        return MDM_ELIMIT;
    memcpy(id_out, v.data, v.len);
    id_out[v.len] = '\0';
    return 0;
}

int mdm_certauth_current(mdm_txn_t *txn, const char *enrollment_id, unsigned char fp[32])
{
    char k[MDM_ENROLLMENT_ID_MAX + 3];
    size_t kl;
    if (ekey(k, enrollment_id, &kl) != 0)
        return MDM_ENOTFOUND;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_CERTAUTH, MDM_VAL(k, kl), &v);
    if (rc != 0)
        return rc;
    if (v.len != 32)
        return MDM_EPARSE;
    memcpy(fp, v.data, 32);
    return 0;
}

int mdm_certauth_unbind(mdm_txn_t *txn, const char *enrollment_id)
{
    unsigned char old[32];
    int rc = mdm_certauth_current(txn, enrollment_id, old);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    unsigned char hk[34];
    rc = mdm_txn_del(txn, MDM_T_CERTAUTH, MDM_VAL(hk, hkey(hk, old)));
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    char k[MDM_ENROLLMENT_ID_MAX + 3];
    size_t kl = 0;
    if (ekey(k, enrollment_id, &kl) != 0)
        return 0;
    rc = mdm_txn_del(txn, MDM_T_CERTAUTH, MDM_VAL(k, kl));
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

int mdm_certauth_bind(mdm_txn_t *txn, const unsigned char fp[32], const char *enrollment_id)
{
    char k[MDM_ENROLLMENT_ID_MAX + 3];
    size_t kl;
    if (ekey(k, enrollment_id, &kl) != 0)
        return MDM_EINVAL;
    char bound[MDM_ENROLLMENT_ID_MAX + 1];
    int rc = mdm_certauth_lookup(txn, fp, bound, sizeof(bound));
    if (rc == 0 && strcmp(bound, enrollment_id) != 0)
        return MDM_EEXIST;
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    rc = mdm_certauth_unbind(txn, enrollment_id);
    if (rc != 0)
        return rc;
    unsigned char hk[34];
    rc = mdm_txn_put(txn, MDM_T_CERTAUTH, MDM_VAL(hk, hkey(hk, fp)),
                     MDM_VAL(enrollment_id, strlen(enrollment_id)), 0);
    if (rc != 0)
        return rc;
    return mdm_txn_put(txn, MDM_T_CERTAUTH, MDM_VAL(k, kl), MDM_VAL(fp, 32), 0);
}

int mdm_certauth_rebind(mdm_txn_t *txn, const unsigned char old_fp[32],
                        const unsigned char new_fp[32])
{
    char id[MDM_ENROLLMENT_ID_MAX + 1];
    int rc = mdm_certauth_lookup(txn, old_fp, id, sizeof(id));
    if (rc != 0)
        return rc;
    return mdm_certauth_bind(txn, new_fp, id);
}
