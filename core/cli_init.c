/* `moonmdm init`: creates a data directory that `moonmdm serve` can run on:
 * the CA, the server's TLS key and certificate, the store with its schema,
 * an admin API key (printed once) and a config file. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/apikeys.h"
#include "cli.h"
#include "config.h"
#include "crypto/ca.h"
#include "crypto/keys.h"
#include "scep/scep.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/buf.h"

static const char init_usage[] =
    "usage: moonmdm init [options]\n"
    "\n"
    "Creates a data directory: a CA (key and certificate), a TLS server key and\n"
    "certificate signed by it, a SCEP RA key and certificate signed by it, the\n"
    "store, an admin API key (printed once) and a config file\n"
    "<data-dir>/moonmdm.conf.lua. Refuses a directory that holds any part of\n"
    "a data directory (config, keys, certificates, db, secret.key) unless\n"
    "--force is given.\n"
    "\n"
    "options:\n"
    "  -d, --data-dir DIR     where to create it (default ./data)\n"
    "  -s, --san NAME         a subject alternative name of the server certificate:\n"
    "                         DNS:host or IP:address; repeatable (default:\n"
    "                         DNS:localhost, IP:127.0.0.1, IP:::1)\n"
    "      --server-name CN   common name of the server certificate (default: the\n"
    "                         first DNS name, else localhost)\n"
    "      --ca-key SPEC      CA key: ec:P-256 (default), ec:P-384, rsa:2048,\n"
    "                         rsa:3072 or rsa:4096\n"
    "      --ra-key SPEC      SCEP RA key: rsa:2048 (default), rsa:3072 or rsa:4096;\n"
    "                         SCEP clients encrypt their requests to it\n"
    "      --no-ra            no RA: the CA answers SCEP itself (its key must then\n"
    "                         be RSA)\n"
    "      --server-key SPEC  TLS server key (default ec:P-256)\n"
    "      --ca-name CN       common name of the CA (default \"moonmdm CA\")\n"
    "      --ca-days N        validity of the CA certificate (default 3650)\n"
    "  -l, --listen ADDR      address written into the config (default 127.0.0.1:8443)\n"
    "      --no-api-key       do not create the first admin API key\n"
    "  -f, --force            overwrite an existing data directory's keys and config\n"
    "  -h, --help             this help\n";

static char *abs_path(const char *p)
{
    char *r = realpath(p, NULL);
    if (r != NULL) {
        char *q = mdm_strdup(r);
        free(r);
        return q;
    }
    return mdm_strdup(p);
}

static int write_text_file(const char *path, const char *text, mode_t mode)
{
    char *tmp = mdm_sprintf("%s.tmp", path);
    /* A leftover temporary file would keep its own mode (O_CREAT sets the
     * mode of a new file only): start from a new one. */
    int fd = unlink(tmp) != 0 && errno != ENOENT
                 ? -1
                 : open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    int rc = -1;
    if (fd < 0)
        goto out;
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || fsync(fd) != 0) {
        close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    rc = rename(tmp, path);
out:
    mdm_free(tmp);
    return rc;
}

/* What `init` writes into a data directory, and what `serve` adds. */
static const char *const data_dir_parts[] = {
    "moonmdm.conf.lua", "ca.key", "ca.crt", "server.key", "server.crt",
    "ra.key",           "ra.crt", "db",     "secret.key",
};

/* The first part of a data directory that dir already holds, or NULL. */
static const char *existing_part(const char *dir)
{
    for (size_t i = 0; i < sizeof(data_dir_parts) / sizeof(data_dir_parts[0]); i++) {
        char *p = mdm_sprintf("%s/%s", dir, data_dir_parts[i]);
        struct stat st;
        bool there = lstat(p, &st) == 0;
        mdm_free(p);
        if (there)
            return data_dir_parts[i];
    }
    return NULL;
}

struct init_key_ctx {
    char key[MDM_APIKEY_LEN + 1];
    mdm_apikey_info_t info;
};

static int init_key_fn(mdm_txn_t *txn, void *arg)
{
    struct init_key_ctx *k = arg;
    return mdm_apikey_create(txn, "init", MDM_ROLE_ADMIN, k->key, &k->info);
}

static void lua_quote(mdm_buf_t *b, const char *s)
{
    mdm_buf_putc(b, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            mdm_buf_putc(b, '\\');
        mdm_buf_putc(b, *s);
    }
    mdm_buf_putc(b, '"');
}

int mdm_cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, 'd'},
        {"san", required_argument, NULL, 's'},
        {"server-name", required_argument, NULL, 'N'},
        {"ca-key", required_argument, NULL, 'K'},
        {"server-key", required_argument, NULL, 'S'},
        {"ca-name", required_argument, NULL, 'C'},
        {"ca-days", required_argument, NULL, 'D'},
        {"listen", required_argument, NULL, 'l'},
        {"no-api-key", no_argument, NULL, 'A'},
        {"ra-key", required_argument, NULL, 'R'},
        {"no-ra", no_argument, NULL, 'r'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *data_dir = "./data", *server_name = NULL, *ca_key_spec = "ec:P-256";
    const char *ra_key_spec = "rsa:2048";
    bool make_ra = true;
    const char *server_key_spec = "ec:P-256", *ca_name = "moonmdm CA", *listen = "127.0.0.1:8443";
    const char *sans[32];
    size_t nsans = 0;
    int ca_days = 3650;
    bool force = false, api_key = true;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:s:l:fh", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data_dir = optarg; break;
        case 's':
            if (nsans == 32) {
                fprintf(stderr, "moonmdm init: at most 32 --san\n");
                return 2;
            }
            if (strncmp(optarg, "DNS:", 4) != 0 && strncmp(optarg, "IP:", 3) != 0) {
                fprintf(stderr, "moonmdm init: --san %s: write DNS:name or IP:address\n", optarg);
                return 2;
            }
            sans[nsans++] = optarg;
            break;
        case 'N': server_name = optarg; break;
        case 'K': ca_key_spec = optarg; break;
        case 'S': server_key_spec = optarg; break;
        case 'C': ca_name = optarg; break;
        case 'D': ca_days = atoi(optarg); break;
        case 'l': listen = optarg; break;
        case 'A': api_key = false; break;
        case 'R': ra_key_spec = optarg; break;
        case 'r': make_ra = false; break;
        case 'f': force = true; break;
        case 'h': fputs(init_usage, stdout); return 0;
        default: fputs(init_usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moonmdm init: unexpected argument \"%s\"\n\n%s", argv[optind],
                init_usage);
        return 2;
    }
    if (ca_days < 1 || ca_days > 36500) {
        fprintf(stderr, "moonmdm init: --ca-days must be between 1 and 36500\n");
        return 2;
    }
    char lhost[64];
    int lport;
    if (mdm_parse_listen(listen, lhost, sizeof(lhost), &lport) != 0) {
        fprintf(stderr,
                "moonmdm init: --listen \"%s\" is not an IP address and port (write "
                "127.0.0.1:8443, 0.0.0.0:8443 or [::1]:8443)\n",
                listen);
        return 2;
    }
    if (nsans == 0) {
        sans[nsans++] = "DNS:localhost";
        sans[nsans++] = "IP:127.0.0.1";
        sans[nsans++] = "IP:::1";
    }
    if (server_name == NULL) {
        server_name = "localhost";
        for (size_t i = 0; i < nsans; i++)
            if (strncmp(sans[i], "DNS:", 4) == 0) {
                server_name = sans[i] + 4;
                break;
            }
    }

    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "moonmdm init: cannot create %s: %s\n", data_dir, strerror(errno));
        return 1;
    }
    char *dir = abs_path(data_dir);
    char *conf = mdm_sprintf("%s/moonmdm.conf.lua", dir);
    char *ca_key_path = mdm_sprintf("%s/ca.key", dir);
    char *ca_crt_path = mdm_sprintf("%s/ca.crt", dir);
    char *srv_key_path = mdm_sprintf("%s/server.key", dir);
    char *srv_crt_path = mdm_sprintf("%s/server.crt", dir);
    char *db_path = mdm_sprintf("%s/db", dir);
    char *ra_key_path = mdm_sprintf("%s/ra.key", dir);
    char *ra_crt_path = mdm_sprintf("%s/ra.crt", dir);
    EVP_PKEY *ca_key = NULL, *srv_key = NULL, *ra_key = NULL;
    X509 *ca_crt = NULL, *srv_crt = NULL, *ra_crt = NULL;
    mdm_ca_t *ca = NULL;
    mdm_store_t *store = NULL;
    mdm_buf_t text = MDM_BUF_INIT;
    mdm_err_t err = {0};
    int exit_code = 1;

    const char *part = force ? NULL : existing_part(dir);
    if (part != NULL) {
        fprintf(stderr,
                "moonmdm init: %s already holds %s, part of a moonmdm data directory; nothing "
                "was changed (use --force to replace its keys and config: every enrolled device "
                "would then need to enroll again)\n",
                dir, part);
        goto out;
    }

    fprintf(stderr, "init: generating the CA key (%s) ...\n", ca_key_spec);
    if (mdm_key_generate(ca_key_spec, &ca_key, &err) != 0 ||
        mdm_ca_create_self_signed(ca_key, ca_name, ca_days, &ca_crt, &err) != 0 ||
        mdm_key_write_pem(ca_key, ca_key_path, &err) != 0 ||
        mdm_cert_write_pem(ca_crt, ca_crt_path, &err) != 0)
        goto fail;
    if (mdm_ca_new(ca_crt, ca_key, NULL, &ca, &err) != 0)
        goto fail;
    fprintf(stderr, "init: generating the server key (%s) and certificate for %s ...\n",
            server_key_spec, server_name);
    if (mdm_key_generate(server_key_spec, &srv_key, &err) != 0 ||
        mdm_ca_issue_server_cert(ca, srv_key, server_name, sans, nsans, MDM_CA_MAX_SERVER_DAYS,
                                 &srv_crt, &err) != 0 ||
        mdm_key_write_pem(srv_key, srv_key_path, &err) != 0 ||
        mdm_cert_write_pem(srv_crt, srv_crt_path, &err) != 0)
        goto fail;
    if (make_ra) {
        /* The RA decrypts SCEP requests and signs the replies; an RSA key
         * with digitalSignature + keyEncipherment is what Apple clients
         * encrypt to, and it lets the CA key be EC. */
        fprintf(stderr, "init: generating the SCEP RA key (%s) and certificate ...\n",
                ra_key_spec);
        char *ra_cn = mdm_sprintf("%s SCEP RA", ca_name);
        int rc = mdm_key_generate(ra_key_spec, &ra_key, &err);
        if (rc == 0)
            rc = mdm_scep_ra_create(ca, ra_key, ra_cn, ca_days, &ra_crt, &err);
        mdm_free(ra_cn);
        if (rc != 0 || mdm_key_write_pem(ra_key, ra_key_path, &err) != 0 ||
            mdm_cert_write_pem(ra_crt, ra_crt_path, &err) != 0)
            goto fail;
    } else if (!EVP_PKEY_is_a(ca_key, "RSA")) {
        fprintf(stderr, "init: warning: without an RA the CA key must be RSA for SCEP clients "
                        "to encrypt to it; SCEP enrollment will not work with this CA\n");
    }

    mdm_store_config_t sc = {.path = db_path,
                             .sync = true,
                             .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    if (mdm_store_open(&mdm_store_lmdb, &sc, &store, &err) != 0)
        goto fail;
    struct init_key_ctx k;
    memset(&k, 0, sizeof(k));
    if (api_key) {
        int rc = mdm_store_update(store, init_key_fn, &k);
        if (rc != 0) {
            mdm_err_set(&err, rc, "cannot store the API key: %s", mdm_strerror(rc));
            goto fail;
        }
    }

    mdm_buf_printf(&text,
                   "-- moonmdm configuration, written by `moonmdm init`.\n"
                   "-- Every setting and its default: `moonmdm config defaults` or docs/CONFIG.md.\n"
                   "-- Relative paths are resolved against this file's directory.\n"
                   "return {\n  data_dir = ");
    lua_quote(&text, dir);
    mdm_buf_puts(&text, ",\n  listen = { ");
    lua_quote(&text, listen);
    mdm_buf_puts(&text, " },\n"
                        "  tls = {\n"
                        "    cert = \"server.crt\",\n"
                        "    key = \"server.key\",\n"
                        "    client_ca = { \"ca.crt\" },\n"
                        "  },\n"
                        "  ca = {\n"
                        "    cert = \"ca.crt\",\n"
                        "    key = \"ca.key\",\n"
                        "  },\n");
    if (make_ra)
        mdm_buf_puts(&text, "  scep = {\n"
                            "    ra_cert = \"ra.crt\",\n"
                            "    ra_key = \"ra.key\",\n"
                            "  },\n");
    mdm_buf_puts(&text, "  store = {\n"
                        "    path = \"db\",\n"
                        "  },\n"
                        "  log = {\n"
                        "    level = \"info\",\n"
                        "  },\n"
                        "}\n");
    if (write_text_file(conf, text.data, 0600) != 0) {
        mdm_err_set(&err, MDM_EIO, "cannot write %s: %s", conf, strerror(errno));
        goto fail;
    }
    /* Prove the written config loads before saying it is done. */
    mdm_config_t check;
    if (mdm_config_load(&check, conf, &err) != 0)
        goto fail;
    mdm_config_free(&check);

    printf("moonmdm data directory: %s\n", dir);
    printf("  config:          %s\n", conf);
    printf("  CA certificate:  %s  (install it on devices and clients that must trust the server)\n",
           ca_crt_path);
    printf("  TLS certificate: %s  (", srv_crt_path);
    for (size_t i = 0; i < nsans; i++)
        printf("%s%s", i ? ", " : "", sans[i]);
    printf(")\n");
    if (make_ra)
        printf("  SCEP RA:         %s  (decrypts SCEP requests, signs the replies)\n",
               ra_crt_path);
    if (api_key) {
        printf("  admin API key (shown only this once, store it now):\n");
        printf("    %s\n", k.key);
    }
    printf("start with: moonmdm serve --config %s\n", conf);
    exit_code = 0;
    goto out;
fail:
    fprintf(stderr, "moonmdm init: %s\n", err.msg[0] ? err.msg : "failed");
out:
    mdm_store_close(store);
    mdm_ca_free(ca);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(srv_key);
    X509_free(ca_crt);
    X509_free(srv_crt);
    EVP_PKEY_free(ra_key);
    X509_free(ra_crt);
    mdm_buf_free(&text);
    mdm_free(dir);
    mdm_free(conf);
    mdm_free(ca_key_path);
    mdm_free(ca_crt_path);
    mdm_free(srv_key_path);
    mdm_free(srv_crt_path);
    mdm_free(db_path);
    mdm_free(ra_key_path);
    mdm_free(ra_crt_path);
    return exit_code;
}
