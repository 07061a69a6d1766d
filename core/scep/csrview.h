/* What the SCEP decision hook is shown of a CSR.
 *
 * The issued certificate gets the CSR's subject and its subjectAltName
 * extension as they are (core/crypto/ca.c), so the hook must see all of
 * them, whole: every SAN with its type and value, and the subject's
 * common name. A CSR that cannot be shown so (a NUL byte in a subject
 * value or a SAN string, two CNs, a subject too long for the text, too
 * many SANs, a malformed subjectAltName) is refused before the hook is
 * asked. */
#ifndef MDM_SCEP_CSRVIEW_H
#define MDM_SCEP_CSRVIEW_H

#include <openssl/x509.h>
#include <stddef.h>

/* The most subjectAltNames a CSR may ask for. */
#define MDM_CSR_VIEW_MAX_SANS 64

typedef struct mdm_csr_view {
    char subject[512];                  /* RFC 2253 */
    char cn[512];                       /* the only CN (UTF-8), "" when none */
    /* "DNS:..", "email:..", "URI:..", "IP:..", "upn:.." (a Microsoft UPN),
     * "othername:OID:HEX" (the hex of the value's DER), "dirname:DN",
     * "rid:OID", "x400:HEX", "ediparty:HEX" */
    char *sans[MDM_CSR_VIEW_MAX_SANS];
    size_t nsans;
} mdm_csr_view_t;

/* Fills v from csr: NULL, or a sentence saying why the CSR cannot be
 * shown whole (then v holds nothing to free and the CSR must not be
 * issued). */
const char *mdm_csr_view_make(X509_REQ *csr, mdm_csr_view_t *v);

/* Frees the SAN strings of v. */
void mdm_csr_view_free(mdm_csr_view_t *v);

#endif
