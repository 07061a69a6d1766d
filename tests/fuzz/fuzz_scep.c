/* Fuzzes the SCEP message layer (scep/scep.c).
 *
 * An input that starts with 0x30 (a DER SEQUENCE) is a whole pkiMessage and
 * goes to mdm_scep_parse, as a request body would. Otherwise the first byte
 * picks an inner stage and the rest is its input, so that the fuzzer also
 * reaches code behind the outer signature, which mutations of a whole
 * message rarely get past:
 *   0x01  a pkcsPKIEnvelope, opened with the RA key
 *   0x02  a PKCS #10 request as message data of a PKCSReq
 *   0x03  an IssuerAndSubject as message data of a CertPoll
 * A CSR that parses is also shown as the policy hook sees it
 * (scep/csrview.c): its subject, CN and every subjectAltName.
 *
 * The RA and CA are the fixed test keys of fuzz_keys.h (they protect
 * nothing), so that the committed corpus, messages captured from
 * scepclient and built by tests/integration/test_scep.py against a server
 * using these keys, decrypt on every run. The file includes scep.c to reach
 * its static stage functions. */
#include "../../core/scep/scep.c"

#include <openssl/pem.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_keys.h"
#include "scep/csrview.h"

static mdm_scep_keys_t fuzz_keys;
static X509 *fuzz_signer;

static void *pem_read(const char *pem, bool key)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    void *r = key ? (void *)PEM_read_bio_PrivateKey(b, NULL, NULL, NULL)
                  : (void *)PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (r == NULL)
        abort();
    return r;
}

/* Loads the fixed keys once, before the first input. */
static void fuzz_init(void)
{
    if (fuzz_keys.ra_cert != NULL)
        return;
    fuzz_keys.ra_key = pem_read(FUZZ_RA_KEY_PEM, true);
    fuzz_keys.ra_cert = pem_read(FUZZ_RA_CERT_PEM, false);
    fuzz_keys.ca_key = pem_read(FUZZ_CA_KEY_PEM, true);
    fuzz_keys.ca_cert = pem_read(FUZZ_CA_CERT_PEM, false);
    fuzz_keys.allow_single_des = true;
    /* The PKCSReq key check compares against the signer: use the RA's own
     * certificate so that some CSRs pass it. */
    fuzz_signer = fuzz_keys.ra_cert;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    mdm_scep_msg_t m;
    if (size == 0 || data[0] == 0x30) {
        (void)mdm_scep_parse(data, size, &fuzz_keys, &m);
        mdm_scep_msg_free(&m);
        return 0;
    }
    memset(&m, 0, sizeof(m));
    m.fail_info = MDM_SCEP_NOFAIL;
    mdm_buf_t plain = MDM_BUF_INIT;
    switch (data[0]) {
    case 0x01:
        if (open_envelope(data + 1, size - 1, &fuzz_keys, &m, &plain) == MDM_SCEP_NOFAIL) {
            m.type = MDM_SCEP_PKCSREQ;
            parse_csr(&plain, &m);
        }
        break;
    case 0x02:
    case 0x03:
        mdm_buf_append(&plain, data + 1, size - 1);
        m.type = data[0] == 0x02 ? MDM_SCEP_PKCSREQ : MDM_SCEP_CERTPOLL;
        X509_up_ref(fuzz_signer);
        m.signer = fuzz_signer;
        if (data[0] == 0x02)
            parse_csr(&plain, &m);
        else
            parse_issuer_and_subject(&plain, &m);
        break;
    default: break;
    }
    mdm_csr_view_t view;
    if (m.csr != NULL && mdm_csr_view_make(m.csr, &view) == NULL)
        mdm_csr_view_free(&view);
    mdm_buf_free(&plain);
    mdm_scep_msg_free(&m);
    return 0;
}
