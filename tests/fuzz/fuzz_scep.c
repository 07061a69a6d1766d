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
 *
 * The RA and CA below are fixed test keys made for this target only (they
 * protect nothing), so that the committed corpus, messages captured from
 * scepclient and built by tests/integration/test_scep.py against a server
 * using these keys, decrypt on every run. The file includes scep.c to reach
 * its static stage functions. */
#include "../../core/scep/scep.c"

#include <openssl/pem.h>
#include <stdint.h>
#include <stdlib.h>

static const char RA_KEY_PEM[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC/8ZgC3yr1QoB7\n"
    "tP9pPo6nr3XH+h8LZd729oromxMRDZ+wYZOk1bUrGgKfpDKD5OU0fV10MYYYzmBA\n"
    "bOQ11M4aioC0NUp05Po89BfBmlSR2fQVyao90VouEsEwr5RjBbvZzgaoA2JmiHIj\n"
    "nwFfa1kmlhEku7cauFA5ecSHJO3+aOPGR3JUys97wet+5VFPM7sZIFpfaQNCk8U1\n"
    "1q5P8pKZJszuCDpfCIXC8ghB5sCSPV/bfIM4rVommxJkEt8XcCKYBEx+clpafzYI\n"
    "NwgYVobHvVtunmTtrVh9/056gJy7dlNXEgHcCvNdVcDPqQBtmtbrM2OZuImysI65\n"
    "3u5s6n0vAgMBAAECggEAWRYXMSIGTK4QdxozP1Q3HtH7jxTiasZd3W7hWwN6rnwN\n"
    "xW4MekFsJDSeyhyKC5hl315eTSsdK49BsjU4GFoMTNpC0SE4zRdno3nBOuzX2pf3\n"
    "x1MBrk5oFiFDREcBzpHfNcB/a2Siu6cRnsHSf8iRqKyXCV8MpZytM3f2RKlZwq17\n"
    "YDQAExK9qiIShSkcsz46x1Ad8AHXaBUfZdQ0q0F5HIa2B5P44P2C2S9whB/zXarz\n"
    "QwMy0plHwoBCj1lmuWv8DsQ9OYX9tS30j93GiaheX43Z8LPVp6iyb04Dqs71GALa\n"
    "brCG3513yttIrp3Ypj8/vLAIszN+eTaWHriR0ZGsIQKBgQDfKBIZjP0qk3w29kj/\n"
    "6aYDivyqtYECJ76P/Y8KI7skKf05aM5F6NYTWyidFZCHs9wVOCKdcnx4vVGpMX+k\n"
    "ZRifHxdftkZMXv1+DaB/XLI5eT/RW1HQnX6LkM5zOj+Mhgm7S+oA96p2OM2G6VY1\n"
    "eLMjIbadcGv9Jw5JwMYQnS3+zwKBgQDcMYKIoVWY+4wwjYutE16yCtFnLIGylzUS\n"
    "p6aRVmscuszkbVy6ExfKN+4IGv/sJC1dOK0SdjTmg2oqklbZzWXwafJD3LoTgIYE\n"
    "buWtPjhVmwrVvJSW8X5JXUYsyNTRr1iVuXxYkiod4H2b2kIvdUDL4QVjC75uc5i/\n"
    "db5ooaYzoQKBgCDN4StEYIr7t0zVE5IbJL5slgv6Noa8lPTRz08sRXxhd8oSsA/y\n"
    "1FVwFx5QZzirpfSwldYTWFzfZ7u5fQwLmHz7sxHs15SuehEnq6pNVB3CxzDdfb9v\n"
    "B4U4ukCSFXlw0slntXSC89oBK6Vjc7rUjXDiqdenCRjjvuP0pKkYkgRdAoGBAJ5e\n"
    "faQHZalCQvIo2+z/oXwsi6/JMv9gAawJKKQfo6pmMDea8LZkRRgMYgcyZB9TZc1G\n"
    "ljRREHs6yYEU/6JnOIpRqQ1mE+8y4TEPEeIofhwUBxbzK2vlBQ9/JpnPWEH3+560\n"
    "adrKRcB3VeBienfnvVLl5Rn3uF94hMQvy2M14HQBAoGAdWR0eC1U9nclkyoUzrfJ\n"
    "ULWbc23vWrOSYy6nRwUSvDjaukQST9rL7d7wqvLtNGoo8Ad3XsqNYm1Mwg2XDx1R\n"
    "ZrTjgI4yHvBJn1K2ElbbvkmPVOxNXIVnjAkKsUQCioAuw/oW5c7SwClDl4a4OLkn\n"
    "9BB5UT2P+JgvZE5TtcSr2Ts=\n"
    "-----END PRIVATE KEY-----\n";

static const char RA_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIICfTCCAiSgAwIBAgIBAjAKBggqhkjOPQQDAjAxMRUwEwYDVQQKDAxtb29ubWRt\n"
    "IGZ1enoxGDAWBgNVBAMMD21vb25tZG0gZnV6eiBDQTAgFw0yNjExMjgxMDM5MDVa\n"
    "GA8yMTI2MTEwNDEwMzkwNVowMTEVMBMGA1UECgwMbW9vbm1kbSBmdXp6MRgwFgYD\n"
    "VQQDDA9tb29ubWRtIGZ1enogUkEwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEK\n"
    "AoIBAQC/8ZgC3yr1QoB7tP9pPo6nr3XH+h8LZd729oromxMRDZ+wYZOk1bUrGgKf\n"
    "pDKD5OU0fV10MYYYzmBAbOQ11M4aioC0NUp05Po89BfBmlSR2fQVyao90VouEsEw\n"
    "r5RjBbvZzgaoA2JmiHIjnwFfa1kmlhEku7cauFA5ecSHJO3+aOPGR3JUys97wet+\n"
    "5VFPM7sZIFpfaQNCk8U11q5P8pKZJszuCDpfCIXC8ghB5sCSPV/bfIM4rVommxJk\n"
    "Et8XcCKYBEx+clpafzYINwgYVobHvVtunmTtrVh9/056gJy7dlNXEgHcCvNdVcDP\n"
    "qQBtmtbrM2OZuImysI653u5s6n0vAgMBAAGjYDBeMAwGA1UdEwEB/wQCMAAwDgYD\n"
    "VR0PAQH/BAQDAgWgMB0GA1UdDgQWBBSJXnSYqF7zBeLpCZmOIopmW+pvzzAfBgNV\n"
    "HSMEGDAWgBRpsZyJOiSf10djPxvmY3y2vekeAjAKBggqhkjOPQQDAgNHADBEAiAA\n"
    "qZ3e6/U8D2A4OPtDU/DCCiKrcASvly6yUjN5nkdWKgIgM9+ljxWQ+JoY5qqWNueH\n"
    "UcLrfp21wBbJlXmeL9ajN+k=\n"
    "-----END CERTIFICATE-----\n";

static const char CA_KEY_PEM[] =
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIJgoFXnzaS4osmAWan3041qRQAr2v0GmSEslD9KGi4vAoAoGCCqGSM49\n"
    "AwEHoUQDQgAEHSzxFhqjD48AHkOd9irKDYfJEzPFvwq1Lr4uHcDxyCgZYbQoa6+l\n"
    "Je/mWSuzC07T5AwUF+3er7WXFZtUlutVIw==\n"
    "-----END EC PRIVATE KEY-----\n";

static const char CA_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBuTCCAV+gAwIBAgIBATAKBggqhkjOPQQDAjAxMRUwEwYDVQQKDAxtb29ubWRt\n"
    "IGZ1enoxGDAWBgNVBAMMD21vb25tZG0gZnV6eiBDQTAgFw0yNjExMjgxMDM5MDVa\n"
    "GA8yMTI2MTEwNDEwMzkwNVowMTEVMBMGA1UECgwMbW9vbm1kbSBmdXp6MRgwFgYD\n"
    "VQQDDA9tb29ubWRtIGZ1enogQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQd\n"
    "LPEWGqMPjwAeQ532KsoNh8kTM8W/CrUuvi4dwPHIKBlhtChrr6Ul7+ZZK7MLTtPk\n"
    "DBQX7d6vtZcVm1SW61Ujo2YwZDAdBgNVHQ4EFgQUabGciTokn9dHYz8b5mN8tr3p\n"
    "HgIwHwYDVR0jBBgwFoAUabGciTokn9dHYz8b5mN8tr3pHgIwEgYDVR0TAQH/BAgw\n"
    "BgEB/wIBADAOBgNVHQ8BAf8EBAMCAYYwCgYIKoZIzj0EAwIDSAAwRQIgYPzfZWo4\n"
    "5HoLRKMlpznozVIO8mmZjoCKvpRZ/F17UeICIQCEH3EUnMIzfR2CXfvAGwIxWAIL\n"
    "ZTkZRa+8G2OJDzbwdw==\n"
    "-----END CERTIFICATE-----\n";

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
    fuzz_keys.ra_key = pem_read(RA_KEY_PEM, true);
    fuzz_keys.ra_cert = pem_read(RA_CERT_PEM, false);
    fuzz_keys.ca_key = pem_read(CA_KEY_PEM, true);
    fuzz_keys.ca_cert = pem_read(CA_CERT_PEM, false);
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
    mdm_buf_free(&plain);
    mdm_scep_msg_free(&m);
    return 0;
}
