/* SCEP enrollment load generator: the same client for every server.
 *
 * Fetches GetCACert, picks the certificate to encrypt to the way Apple
 * clients do (an RA certificate with keyEncipherment, else the CA), builds
 * N PKCSReq messages beforehand (AES-128-CBC, SHA-256, RSA-2048 client
 * keys, a distinct subject each), then POSTs them over C keep-alive
 * connections and counts SUCCESS replies. With --pid it reads the server's
 * utime+stime from /proc/<pid>/stat before and after, so that the server's
 * CPU time per enrollment is measured apart from the client's.
 *
 * Plain HTTP only (the servers compared run in a network namespace of
 * their own on loopback). Output: one line of key=value pairs. */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"

#define KEY_POOL 8

static struct {
    char host[64];
    int port;
    char path[256];
    int n;
    int concurrency;
    const char *challenge;
    int pid;
    const char *label;
    X509 *recipient;
    mdm_buf_t *msgs;
    atomic_int next;
    atomic_int ok, failed, errors;
} B;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* utime + stime of a process (all its threads), in seconds. */
static double proc_cpu(int pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    /* Fields after the command: state is 3; utime 14, stime 15. */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok != NULL; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        else if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)B.port)};
    inet_pton(AF_INET, B.host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one HTTP/1.1 response (Content-Length or chunked) into body.
 * rbuf keeps bytes read past it. Returns the status or -1. */
static int read_response(int fd, mdm_buf_t *rbuf, mdm_buf_t *body)
{
    char tmp[65536];
    char *end;
    while ((end = rbuf->len ? strstr(rbuf->data, "\r\n\r\n") : NULL) == NULL) {
        ssize_t r = read(fd, tmp, sizeof(tmp));
        if (r <= 0)
            return -1;
        mdm_buf_append(rbuf, tmp, (size_t)r);
    }
    size_t head_len = (size_t)(end - rbuf->data) + 4;
    int status = atoi(rbuf->data + 9);
    long clen = -1;
    bool chunked = false;
    for (char *l = rbuf->data; l < end; l = strstr(l, "\r\n") + 2) {
        if (strncasecmp(l, "Content-Length:", 15) == 0)
            clen = atol(l + 15);
        if (strncasecmp(l, "Transfer-Encoding:", 18) == 0 && strstr(l, "chunked") != NULL &&
            strstr(l, "chunked") < strstr(l, "\r\n"))
            chunked = true;
    }
    mdm_buf_consume(rbuf, head_len);
    mdm_buf_reset(body);
    if (!chunked) {
        while ((long)rbuf->len < clen) {
            ssize_t r = read(fd, tmp, sizeof(tmp));
            if (r <= 0)
                return -1;
            mdm_buf_append(rbuf, tmp, (size_t)r);
        }
        mdm_buf_append(body, rbuf->data, (size_t)clen);
        mdm_buf_consume(rbuf, (size_t)clen);
        return status;
    }
    for (;;) {
        char *crlf;
        while ((crlf = rbuf->len ? strstr(rbuf->data, "\r\n") : NULL) == NULL) {
            ssize_t r = read(fd, tmp, sizeof(tmp));
            if (r <= 0)
                return -1;
            mdm_buf_append(rbuf, tmp, (size_t)r);
        }
        size_t size = strtoul(rbuf->data, NULL, 16);
        size_t skip = (size_t)(crlf - rbuf->data) + 2;
        while (rbuf->len < skip + size + 2) {
            ssize_t r = read(fd, tmp, sizeof(tmp));
            if (r <= 0)
                return -1;
            mdm_buf_append(rbuf, tmp, (size_t)r);
        }
        mdm_buf_append(body, rbuf->data + skip, size);
        mdm_buf_consume(rbuf, skip + size + 2);
        if (size == 0)
            return status;
    }
}

static int http(int fd, mdm_buf_t *rbuf, const char *method, const char *query,
                const void *body, size_t len, mdm_buf_t *out)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "%s %s?%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: "
                     "application/x-pki-message\r\nContent-Length: %zu\r\n\r\n",
                     method, B.path, query, B.host, B.port, len);
    if (write_all(fd, head, (size_t)n) != 0 || (len && write_all(fd, body, len) != 0))
        return -1;
    return read_response(fd, rbuf, out);
}

static X509_NAME *name_cn(const char *cn)
{
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    return n;
}

/* One PKCSReq, as a client builds it. */
static void build(EVP_PKEY *key, int i, mdm_buf_t *out)
{
    char cn[64], txid[64];
    snprintf(cn, sizeof(cn), "bench-%d-%d", (int)getpid(), i);
    snprintf(txid, sizeof(txid), "BENCH%08X%08X", (unsigned)getpid(), (unsigned)i);
    X509_NAME *name = name_cn(cn);
    X509 *self = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(self), i + 1);
    X509_set_version(self, 2);
    X509_set_subject_name(self, name);
    X509_set_issuer_name(self, name);
    X509_gmtime_adj(X509_getm_notBefore(self), -300);
    X509_gmtime_adj(X509_getm_notAfter(self), 3600);
    X509_set_pubkey(self, key);
    X509_sign(self, key, EVP_sha256());
    X509_REQ *csr = X509_REQ_new();
    X509_REQ_set_subject_name(csr, name);
    X509_REQ_set_pubkey(csr, key);
    X509_REQ_add1_attr_by_NID(csr, NID_pkcs9_challengePassword, MBSTRING_UTF8,
                              (const unsigned char *)B.challenge, -1);
    X509_REQ_sign(csr, key, EVP_sha256());
    unsigned char *der = NULL;
    int dlen = i2d_X509_REQ(csr, &der);
    STACK_OF(X509) *recips = sk_X509_new_null();
    sk_X509_push(recips, B.recipient);
    BIO *in = BIO_new_mem_buf(der, dlen);
    CMS_ContentInfo *env = CMS_encrypt(recips, in, EVP_aes_128_cbc(), CMS_BINARY);
    unsigned char *eder = NULL;
    int elen = i2d_CMS_ContentInfo(env, &eder);
    CMS_ContentInfo *cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL | CMS_BINARY);
    CMS_SignerInfo *si =
        CMS_add1_signer(cms, self, key, EVP_sha256(), CMS_PARTIAL | CMS_BINARY | CMS_NOSMIMECAP);
    unsigned char nonce[16];
    for (int k = 0; k < 16; k++)
        nonce[k] = (unsigned char)rand();
    CMS_signed_add1_attr_by_txt(si, "2.16.840.1.113733.1.9.2", V_ASN1_PRINTABLESTRING, "19", 2);
    CMS_signed_add1_attr_by_txt(si, "2.16.840.1.113733.1.9.7", V_ASN1_PRINTABLESTRING, txid,
                                (int)strlen(txid));
    CMS_signed_add1_attr_by_txt(si, "2.16.840.1.113733.1.9.5", V_ASN1_OCTET_STRING, nonce, 16);
    BIO *ein = BIO_new_mem_buf(eder, elen);
    CMS_final(cms, ein, NULL, CMS_BINARY);
    unsigned char *mder = NULL;
    int mlen = i2d_CMS_ContentInfo(cms, &mder);
    mdm_buf_append(out, mder, (size_t)mlen);
    OPENSSL_free(mder);
    BIO_free(ein);
    CMS_ContentInfo_free(cms);
    OPENSSL_free(eder);
    CMS_ContentInfo_free(env);
    BIO_free(in);
    sk_X509_free(recips);
    OPENSSL_free(der);
    X509_REQ_free(csr);
    X509_free(self);
    X509_NAME_free(name);
}

/* The pkiStatus of a CertRep, or -1. */
static int reply_status(const mdm_buf_t *b)
{
    const unsigned char *p = (const unsigned char *)b->data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)b->len);
    int status = -1;
    if (cms == NULL)
        return -1;
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    ASN1_OBJECT *obj = OBJ_txt2obj("2.16.840.1.113733.1.9.3", 1);
    ASN1_STRING *s = si ? CMS_signed_get0_data_by_OBJ(si, obj, -3, V_ASN1_PRINTABLESTRING) : NULL;
    if (s != NULL && ASN1_STRING_length(s) == 1)
        status = ASN1_STRING_get0_data(s)[0] - '0';
    ASN1_OBJECT_free(obj);
    CMS_ContentInfo_free(cms);
    return status;
}

static void *worker(void *arg)
{
    (void)arg;
    int fd = connect_server();
    mdm_buf_t rbuf = MDM_BUF_INIT, body = MDM_BUF_INIT;
    for (;;) {
        int i = atomic_fetch_add(&B.next, 1);
        if (i >= B.n)
            break;
        int st = fd >= 0 ? http(fd, &rbuf, "POST", "operation=PKIOperation", B.msgs[i].data,
                                B.msgs[i].len, &body)
                         : -1;
        if (st != 200) {
            atomic_fetch_add(&B.errors, 1);
            if (fd >= 0)
                close(fd);
            mdm_buf_reset(&rbuf);
            fd = connect_server();
            continue;
        }
        if (reply_status(&body) == 0)
            atomic_fetch_add(&B.ok, 1);
        else
            atomic_fetch_add(&B.failed, 1);
    }
    if (fd >= 0)
        close(fd);
    mdm_buf_free(&rbuf);
    mdm_buf_free(&body);
    return NULL;
}

/* GetCACert; the recipient the way Apple chooses it. */
static int fetch_recipient(void)
{
    int fd = connect_server();
    if (fd < 0)
        return -1;
    mdm_buf_t rbuf = MDM_BUF_INIT, body = MDM_BUF_INIT;
    int st = http(fd, &rbuf, "GET", "operation=GetCACert", NULL, 0, &body);
    close(fd);
    if (st != 200) {
        fprintf(stderr, "GetCACert: HTTP %d\n", st);
        return -1;
    }
    const unsigned char *p = (const unsigned char *)body.data;
    X509 *single = d2i_X509(NULL, &p, (long)body.len);
    if (single != NULL) {
        B.recipient = single;
    } else {
        p = (const unsigned char *)body.data;
        CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)body.len);
        STACK_OF(X509) *certs = cms ? CMS_get1_certs(cms) : NULL;
        for (int i = 0; i < sk_X509_num(certs); i++) {
            X509 *x = sk_X509_value(certs, i);
            if (!(X509_get_extension_flags(x) & EXFLAG_CA) &&
                (X509_get_key_usage(x) & KU_KEY_ENCIPHERMENT)) {
                X509_up_ref(x);
                B.recipient = x;
            }
        }
        sk_X509_pop_free(certs, X509_free);
        CMS_ContentInfo_free(cms);
    }
    mdm_buf_free(&rbuf);
    mdm_buf_free(&body);
    return B.recipient ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},       {"n", required_argument, NULL, 'n'},
        {"concurrency", required_argument, NULL, 'c'}, {"challenge", required_argument, NULL, 'C'},
        {"pid", required_argument, NULL, 'p'},       {"label", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL;
    B.n = 200;
    B.concurrency = 4;
    B.challenge = "";
    B.label = "-";
    int c;
    while ((c = getopt_long(argc, argv, "u:n:c:C:p:l:", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'n': B.n = atoi(optarg); break;
        case 'c': B.concurrency = atoi(optarg); break;
        case 'C': B.challenge = optarg; break;
        case 'p': B.pid = atoi(optarg); break;
        case 'l': B.label = optarg; break;
        default:
            fprintf(stderr, "usage: scep_bench --url http://127.0.0.1:PORT/scep [--n N] "
                            "[--concurrency C] [--challenge PW] [--pid SERVER_PID] [--label L]\n");
            return 2;
        }
    }
    if (url == NULL || sscanf(url, "http://%63[^:]:%d%255s", B.host, &B.port, B.path) != 3) {
        fprintf(stderr, "scep_bench: --url http://IP:PORT/path please\n");
        return 2;
    }
    if (fetch_recipient() != 0) {
        fprintf(stderr, "scep_bench: no certificate to encrypt to from GetCACert\n");
        return 1;
    }
    EVP_PKEY *keys[KEY_POOL];
    for (int i = 0; i < KEY_POOL; i++)
        keys[i] = EVP_RSA_gen(2048);
    B.msgs = calloc((size_t)B.n, sizeof(mdm_buf_t));
    for (int i = 0; i < B.n; i++)
        build(keys[i % KEY_POOL], i, &B.msgs[i]);

    double cpu0 = B.pid ? proc_cpu(B.pid) : 0;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = now_s();
    pthread_t *th = calloc((size_t)B.concurrency, sizeof(pthread_t));
    for (int i = 0; i < B.concurrency; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < B.concurrency; i++)
        pthread_join(th[i], NULL);
    double secs = now_s() - t0;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu1 = B.pid ? proc_cpu(B.pid) : 0;
    double client_cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                        (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                        (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                        (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    int ok = atomic_load(&B.ok);
    printf("label=%s n=%d ok=%d failed=%d http_errors=%d concurrency=%d seconds=%.3f "
           "enroll_per_s=%.1f server_cpu_ms_per_enroll=%.3f client_cpu_ms_per_enroll=%.3f\n",
           B.label, B.n, ok, atomic_load(&B.failed), atomic_load(&B.errors), B.concurrency, secs,
           ok / secs, B.pid && ok ? (cpu1 - cpu0) * 1000.0 / ok : -1.0,
           ok ? client_cpu * 1000.0 / ok : -1.0);
    for (int i = 0; i < B.n; i++)
        mdm_buf_free(&B.msgs[i]);
    free(B.msgs);
    free(th);
    for (int i = 0; i < KEY_POOL; i++)
        EVP_PKEY_free(keys[i]);
    X509_free(B.recipient);
    return ok == B.n ? 0 : 1;
}
