/* Binding of device identity certificates to enrollments (table certauth).
 * At Authenticate the certificate's SHA-256 is bound to the enrollment id;
 * afterwards a request is accepted for an enrollment only with the
 * certificate bound to it, so one device cannot speak for another. A SCEP
 * renewal moves the binding to the new certificate.
 *
 * Layout: "h:" + 32-byte hash -> enrollment id, and "e:" + enrollment id ->
 * 32-byte hash (the current binding of that enrollment). */
#ifndef MDM_CERTAUTH_H
#define MDM_CERTAUTH_H

#include <stddef.h>

#include "store/store.h"

#define MDM_ENROLLMENT_ID_MAX 256

/* Binds fp to the enrollment, replacing the enrollment's previous binding.
 * MDM_EEXIST when fp is already bound to a different enrollment. */
int mdm_certauth_bind(mdm_txn_t *txn, const unsigned char fp[32], const char *enrollment_id);

/* The enrollment fp is bound to; MDM_ENOTFOUND if none. */
int mdm_certauth_lookup(mdm_txn_t *txn, const unsigned char fp[32], char *id_out, size_t n);

/* The hash currently bound to the enrollment; MDM_ENOTFOUND if none. */
int mdm_certauth_current(mdm_txn_t *txn, const char *enrollment_id, unsigned char fp[32]);

/* Moves the binding of old_fp (whatever enrollment it is) to new_fp.
 * MDM_ENOTFOUND when old_fp is bound to nothing. */
int mdm_certauth_rebind(mdm_txn_t *txn, const unsigned char old_fp[32],
                        const unsigned char new_fp[32]);

/* Removes the enrollment's binding (if any). */
int mdm_certauth_unbind(mdm_txn_t *txn, const char *enrollment_id);

#endif
