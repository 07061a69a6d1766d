/* Tests of the configuration loader: defaults, a full file, every kind of
 * error with its file, line and key, the sandbox limits, path resolution,
 * size and duration parsing, the default-config writer and docs/CONFIG.md.
 *
 * White-box: includes config.c to reach the option table and the key
 * scanner. Each test works in a fresh temporary directory (the current
 * directory while the tests run), so error messages name
 * "moonmdm.conf.lua" exactly as an admin would see them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../core/config.c"

#define CONF "moonmdm.conf.lua"

static char tmpdir[256];
static char oldcwd[4096];

/* ---- helpers ---------------------------------------------------------------- */

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        fail_msg("cannot write %s", path);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static int load_text(const char *text, mdm_config_t *cfg, mdm_err_t *err)
{
    write_file(CONF, text, strlen(text));
    return mdm_config_load(cfg, CONF, err);
}

static void assert_zeroed(const mdm_config_t *cfg)
{
    static const mdm_config_t zero;
    if (memcmp(cfg, &zero, sizeof(zero)) != 0)
        fail_msg("cfg is not zeroed after a failed load");
}

/* Loads text, which must fail with exactly want. */
static void expect_error(const char *text, const char *want)
{
    mdm_config_t cfg;
    mdm_err_t err = {0};
    int rc = load_text(text, &cfg, &err);
    if (rc != MDM_ECONFIG || strcmp(err.msg, want) != 0)
        print_message("source:\n%s\nwant: %s\ngot (rc %d): %s\n", text, want, rc,
                      rc ? err.msg : "(success)");
    assert_int_equal(rc, MDM_ECONFIG);
    assert_string_equal(err.msg, want);
    assert_zeroed(&cfg);
    mdm_config_free(&cfg);
}

static void load_ok(const char *text, mdm_config_t *cfg)
{
    mdm_err_t err = {0};
    int rc = load_text(text, cfg, &err);
    if (rc != 0)
        print_message("source:\n%s\nunexpected error (rc %d): %s\n", text, rc, err.msg);
    assert_int_equal(rc, 0);
}

static void assert_list(const mdm_strlist_t *l, size_t n, ...)
{
    if (l->n != n)
        print_message("list has %zu items, want %zu\n", l->n, n);
    assert_int_equal(l->n, n);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(l->v[i], va_arg(ap, const char *));
    va_end(ap);
}

static void assert_config_equal(const mdm_config_t *a, const mdm_config_t *b)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        const void *pa = (const char *)a + o->offset;
        const void *pb = (const char *)b + o->offset;
        switch (o->type) {
        case OPT_STRING:
        case OPT_ENUM: {
            const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
            if ((sa == NULL) != (sb == NULL) || (sa && strcmp(sa, sb) != 0))
                fail_msg("%s differs: \"%s\" vs \"%s\"", o->key, sa ? sa : "(null)",
                         sb ? sb : "(null)");
            break;
        }
        case OPT_LIST: {
            const mdm_strlist_t *la = pa, *lb = pb;
            if (la->n != lb->n)
                fail_msg("%s differs: %zu vs %zu items", o->key, la->n, lb->n);
            for (size_t j = 0; j < la->n; j++)
                if (strcmp(la->v[j], lb->v[j]) != 0)
                    fail_msg("%s[%zu] differs: \"%s\" vs \"%s\"", o->key, j, la->v[j], lb->v[j]);
            break;
        }
        case OPT_BOOL:
            if (*(const bool *)pa != *(const bool *)pb)
                fail_msg("%s differs: %d vs %d", o->key, *(const bool *)pa, *(const bool *)pb);
            break;
        default:
            if (memcmp(pa, pb, o->size) != 0)
                fail_msg("%s differs", o->key);
            break;
        }
    }
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    mdm_buf_t b = MDM_BUF_INIT;
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        mdm_buf_append(&b, tmp, n);
    fclose(f);
    mdm_buf_putc(&b, '\0');
    b.len--;
    return mdm_buf_steal(&b, len);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    if (getcwd(oldcwd, sizeof(oldcwd)) == NULL)
        return -1;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/moonmdm-test-config-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    return chdir(tmpdir);
}

static int teardown(void **state)
{
    (void)state;
    if (chdir(oldcwd) != 0)
        return -1;
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- defaults ---------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    mdm_config_t cfg;
    mdm_config_defaults(&cfg);
    /* Before finish the data_dir-derived settings are still unset. */
    assert_null(cfg.tls_cert);
    assert_null(cfg.tls_client_ca.v);
    mdm_config_finish(&cfg);

    assert_null(cfg.file);
    assert_string_equal(cfg.data_dir, "./data");
    assert_list(&cfg.listen, 1, "127.0.0.1:8443");
    assert_list(&cfg.listen_plain, 0);
    assert_string_equal(cfg.tls_cert, "./data/server.crt");
    assert_string_equal(cfg.tls_key, "./data/server.key");
    assert_null(cfg.tls_chain);
    assert_list(&cfg.tls_client_ca, 1, "./data/ca.crt");
    assert_true(cfg.tls_request_client_cert);
    assert_string_equal(cfg.tls_min_version, "1.2");
    assert_false(cfg.tls_allow_insecure_key_mode);
    assert_int_equal(cfg.http_max_header_bytes, 32 * 1024);
    assert_int_equal(cfg.http_max_body_bytes, 8 * 1024 * 1024);
    assert_int_equal(cfg.http_read_timeout_ms, 30000);
    assert_int_equal(cfg.http_idle_timeout_ms, 75000);
    assert_int_equal(cfg.http_write_timeout_ms, 30000);
    assert_int_equal(cfg.http_max_connections, 10000);
    assert_int_equal(cfg.http_max_pipeline, 16);
    assert_int_equal(cfg.http_shutdown_grace_ms, 10000);
    assert_null(cfg.proxy_cert_header);
    assert_string_equal(cfg.log_level, "info");
    assert_true(cfg.log_requests);
    assert_string_equal(cfg.store_backend, "lmdb");
    assert_string_equal(cfg.store_path, "./data/db");
    assert_int_equal(cfg.store_map_size, (size_t)256 << 20);
    assert_int_equal(cfg.store_map_max, (size_t)64 << 30);
    assert_true(cfg.store_sync);
    assert_string_equal(cfg.policy_dir, MOONMDM_SOURCE_DIR "/policies");
    assert_string_equal(cfg.ca_cert, "./data/ca.crt");
    assert_string_equal(cfg.ca_key, "./data/ca.key");
    assert_null(cfg.ca_chain);
    assert_int_equal(cfg.ca_validity_ms, 365ull * 86400 * 1000);
    assert_null(cfg.ca_crl_url);
    assert_string_equal(cfg.scep_path, "/scep");
    assert_null(cfg.scep_ra_cert);
    assert_null(cfg.scep_ra_key);
    assert_null(cfg.scep_static_challenge);
    assert_int_equal(cfg.scep_challenge_ttl_ms, 3600000);
    assert_string_equal(cfg.mdm_checkin_path, "/mdm/checkin");
    assert_string_equal(cfg.mdm_connect_path, "/mdm/connect");
    assert_string_equal(cfg.mdm_combined_path, "/mdm");
    assert_false(cfg.mdm_bind_on_first_sight);
    assert_int_equal(cfg.mdm_result_retention_ms, 30ull * 86400 * 1000);
    assert_int_equal(cfg.mdm_notnow_max, 50);
    assert_true(cfg.api_enabled);

    /* The cipher defaults are forward-secret AEAD only, and OpenSSL takes
     * them as they are. */
    char *ciphers = mdm_strdup(cfg.tls_ciphers);
    for (char *save = NULL, *c = strtok_r(ciphers, ":", &save); c; c = strtok_r(NULL, ":", &save)) {
        if (strncmp(c, "ECDHE-", 6) != 0 || (!strstr(c, "-GCM-") && !strstr(c, "CHACHA20")))
            fail_msg("weak default cipher %s", c);
    }
    mdm_free(ciphers);
    assert_string_equal(cfg.tls_ciphersuites,
                        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256");
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_set_cipher_list(ctx, cfg.tls_ciphers), 1);
    assert_int_equal(SSL_CTX_set_ciphersuites(ctx, cfg.tls_ciphersuites), 1);
    SSL_CTX_free(ctx);

    mdm_config_free(&cfg);
    assert_zeroed(&cfg);
    mdm_config_free(&cfg); /* a freed config can be freed again */
}

static void test_finish_follows_data_dir(void **state)
{
    (void)state;
    mdm_config_t cfg;
    mdm_config_defaults(&cfg);
    mdm_free(cfg.data_dir);
    cfg.data_dir = mdm_strdup("/srv/moonmdm/");
    cfg.ca_key = mdm_strdup("/keys/ca.key"); /* set: finish keeps it */
    mdm_config_finish(&cfg);
    assert_string_equal(cfg.tls_cert, "/srv/moonmdm/server.crt");
    assert_string_equal(cfg.store_path, "/srv/moonmdm/db");
    assert_list(&cfg.tls_client_ca, 1, "/srv/moonmdm/ca.crt");
    assert_string_equal(cfg.ca_key, "/keys/ca.key");
    mdm_config_finish(&cfg); /* idempotent */
    assert_string_equal(cfg.tls_cert, "/srv/moonmdm/server.crt");
    mdm_config_free(&cfg);

    mdm_config_defaults(&cfg);
    mdm_free(cfg.data_dir);
    cfg.data_dir = mdm_strdup("/");
    mdm_config_finish(&cfg);
    assert_string_equal(cfg.tls_key, "/server.key");
    assert_list(&cfg.tls_client_ca, 1, "/ca.crt");
    mdm_config_free(&cfg);
}

/* ---- a full file --------------------------------------------------------------- */

static void test_full_file(void **state)
{
    (void)state;
    setenv("MOONMDM_TEST_CHALLENGE", "s3cret", 1);
    unsetenv("MOONMDM_TEST_UNSET");
    mdm_config_t cfg;
    load_ok("-- every key, none at its default\n"
            "return {\n"
            "  data_dir = \"/srv/moonmdm\",\n"
            "  listen = { \"0.0.0.0:443\", \"[::]:443\" },\n"
            "  listen_plain = \"127.0.0.1:8080\",\n"
            "  tls = {\n"
            "    cert = \"/etc/tls/server.pem\",\n"
            "    key = \"/etc/tls/server.key\",\n"
            "    chain = \"/etc/tls/chain.pem\",\n"
            "    client_ca = { \"/etc/tls/ca1.pem\", \"/etc/tls/ca2.pem\" },\n"
            "    request_client_cert = false,\n"
            "    ciphers = \"ECDHE-ECDSA-AES256-GCM-SHA384\",\n"
            "    ciphersuites = \"TLS_AES_256_GCM_SHA384\",\n"
            "    min_version = \"1.3\",\n"
            "    allow_insecure_key_mode = true,\n"
            "  },\n"
            "  http = {\n"
            "    max_header_bytes = 65536,\n"
            "    max_body_bytes = \"16MiB\",\n"
            "    read_timeout = \"1m\",\n"
            "    idle_timeout = 120,\n"
            "    write_timeout = \"2m30s\",\n"
            "    max_connections = 500,\n"
            "    max_pipeline = 4.0,\n"
            "    shutdown_grace = 0.5,\n"
            "  },\n"
            "  proxy = { cert_header = \"X-SSL-Client-Cert\" },\n"
            "  log = { level = \"debug\", requests = false },\n"
            "  store = { backend = \"lmdb\", path = \"/var/db/m\", map_size = \"1GiB\",\n"
            "            map_max = \"2GB\", sync = false },\n"
            "  policy = { dir = \"/etc/moonmdm/policies\" },\n"
            "  ca = { cert = \"/ca/ca.crt\", key = \"/ca/ca.key\", chain = \"/ca/root.crt\",\n"
            "         validity = \"90d\", crl_url = \"http://crl.example/ca.crl\" },\n"
            "  scep = {\n"
            "    path = \"/cgi-bin/pkiclient.exe\",\n"
            "    ra_cert = \"/ra/ra.crt\",\n"
            "    ra_key = \"/ra/ra.key\",\n"
            "    static_challenge = os.getenv(\"MOONMDM_TEST_CHALLENGE\"),\n"
            "    challenge_ttl = \"15m\",\n"
            "  },\n"
            "  mdm = { checkin_path = \"/checkin\", connect_path = \"/connect\", path = \"/mdm2\",\n"
            "          bind_on_first_sight = true, result_retention = \"7d\", notnow_max = 0 },\n"
            "  api = { enabled = false },\n"
            "}\n",
            &cfg);
    assert_string_equal(cfg.file, CONF);
    assert_string_equal(cfg.data_dir, "/srv/moonmdm");
    assert_list(&cfg.listen, 2, "0.0.0.0:443", "[::]:443");
    assert_list(&cfg.listen_plain, 1, "127.0.0.1:8080");
    assert_string_equal(cfg.tls_cert, "/etc/tls/server.pem");
    assert_string_equal(cfg.tls_key, "/etc/tls/server.key");
    assert_string_equal(cfg.tls_chain, "/etc/tls/chain.pem");
    assert_list(&cfg.tls_client_ca, 2, "/etc/tls/ca1.pem", "/etc/tls/ca2.pem");
    assert_false(cfg.tls_request_client_cert);
    assert_string_equal(cfg.tls_ciphers, "ECDHE-ECDSA-AES256-GCM-SHA384");
    assert_string_equal(cfg.tls_ciphersuites, "TLS_AES_256_GCM_SHA384");
    assert_string_equal(cfg.tls_min_version, "1.3");
    assert_true(cfg.tls_allow_insecure_key_mode);
    assert_int_equal(cfg.http_max_header_bytes, 65536);
    assert_int_equal(cfg.http_max_body_bytes, 16 << 20);
    assert_int_equal(cfg.http_read_timeout_ms, 60000);
    assert_int_equal(cfg.http_idle_timeout_ms, 120000);
    assert_int_equal(cfg.http_write_timeout_ms, 150000);
    assert_int_equal(cfg.http_max_connections, 500);
    assert_int_equal(cfg.http_max_pipeline, 4);
    assert_int_equal(cfg.http_shutdown_grace_ms, 500);
    assert_string_equal(cfg.proxy_cert_header, "X-SSL-Client-Cert");
    assert_string_equal(cfg.log_level, "debug");
    assert_false(cfg.log_requests);
    assert_string_equal(cfg.store_backend, "lmdb");
    assert_string_equal(cfg.store_path, "/var/db/m");
    assert_int_equal(cfg.store_map_size, (size_t)1 << 30);
    assert_int_equal(cfg.store_map_max, (size_t)2000000000);
    assert_false(cfg.store_sync);
    assert_string_equal(cfg.policy_dir, "/etc/moonmdm/policies");
    assert_string_equal(cfg.ca_cert, "/ca/ca.crt");
    assert_string_equal(cfg.ca_key, "/ca/ca.key");
    assert_string_equal(cfg.ca_chain, "/ca/root.crt");
    assert_int_equal(cfg.ca_validity_ms, 90ull * 86400 * 1000);
    assert_string_equal(cfg.ca_crl_url, "http://crl.example/ca.crl");
    assert_string_equal(cfg.scep_path, "/cgi-bin/pkiclient.exe");
    assert_string_equal(cfg.scep_ra_cert, "/ra/ra.crt");
    assert_string_equal(cfg.scep_ra_key, "/ra/ra.key");
    assert_string_equal(cfg.scep_static_challenge, "s3cret");
    assert_int_equal(cfg.scep_challenge_ttl_ms, 15 * 60000);
    assert_string_equal(cfg.mdm_checkin_path, "/checkin");
    assert_string_equal(cfg.mdm_connect_path, "/connect");
    assert_string_equal(cfg.mdm_combined_path, "/mdm2");
    assert_true(cfg.mdm_bind_on_first_sight);
    assert_int_equal(cfg.mdm_result_retention_ms, 7ull * 86400 * 1000);
    assert_int_equal(cfg.mdm_notnow_max, 0);
    assert_false(cfg.api_enabled);
    mdm_config_free(&cfg);

    /* A missing environment variable leaves the default; data_dir moves the
     * derived paths; an empty list stays empty. */
    load_ok("return {\n"
            "  data_dir = \"/srv/x\",\n"
            "  tls = { client_ca = {} },\n"
            "  scep = { static_challenge = os.getenv(\"MOONMDM_TEST_UNSET\") },\n"
            "}\n",
            &cfg);
    assert_null(cfg.scep_static_challenge);
    assert_string_equal(cfg.tls_cert, "/srv/x/server.crt");
    assert_string_equal(cfg.store_path, "/srv/x/db");
    assert_list(&cfg.tls_client_ca, 0);
    mdm_config_free(&cfg);

    /* An empty table is all defaults. */
    load_ok("return {}", &cfg);
    mdm_config_t def;
    mdm_config_defaults(&def);
    mdm_config_finish(&def);
    assert_config_equal(&cfg, &def);
    mdm_config_free(&def);
    mdm_config_free(&cfg);
}

/* ---- errors: type, file and line ---------------------------------------------------- */

static void test_brief_example(void **state)
{
    (void)state;
    expect_error("return {\n"
                 "  data_dir = \"/var/lib/moonmdm\",\n"
                 "  listen = { \"127.0.0.1:8443\" },\n"
                 "  tls = { cert = \"server.crt\", key = \"server.key\", client_ca = { \"ca.crt\" } },\n"
                 "  http = {\n"
                 "    read_timeout = \"30s\",\n"
                 "    max_body_bytes = true,\n"
                 "  },\n"
                 "  log = { level = \"info\", requests = true },\n"
                 "}\n",
                 CONF ":7: http.max_body_bytes: expected a size (e.g. \"8MiB\"), got boolean");
}

static void test_type_errors(void **state)
{
    (void)state;
    static const struct {
        const char *src;
        const char *want;
    } cases[] = {
        {"return {\n  data_dir = 5,\n}\n", CONF ":2: data_dir: expected a string, got number"},
        {"return {\n  data_dir = { \"x\" },\n}\n", CONF ":2: data_dir: expected a string, got table"},
        {"return {\n  data_dir = \"\",\n}\n", CONF ":2: data_dir: the value must not be empty"},
        {"return {\n  data_dir = \"a\\0b\",\n}\n",
         CONF ":2: data_dir: the value must not contain NUL bytes"},
        {"return {\n\n  log = {\n    requests = \"yes\",\n  },\n}\n",
         CONF ":4: log.requests: expected true or false, got string"},
        {"return {\n  log = { requests = \"true\" },\n}\n",
         CONF ":2: log.requests: expected true or false, got string (write it without quotes)"},
        {"return {\n  log = { requests = 1 },\n}\n",
         CONF ":2: log.requests: expected true or false, got number"},
        {"return {\n  http = {\n    max_connections = \"many\",\n  },\n}\n",
         CONF ":3: http.max_connections: expected an integer, got string"},
        {"return {\n  http = {\n    max_connections = 0,\n  },\n}\n",
         CONF ":3: http.max_connections: must be at least 1"},
        {"return {\n  http = {\n\n    max_connections = 1.5,\n  },\n}\n",
         CONF ":4: http.max_connections: expected an integer, got 1.5"},
        {"return {\n  http = { max_pipeline = -3 },\n}\n",
         CONF ":2: http.max_pipeline: must not be negative, got -3"},
        {"return {\n  http = { max_pipeline = 1/0 },\n}\n",
         CONF ":2: http.max_pipeline: expected an integer, got inf"},
        {"return {\n  mdm = { notnow_max = true },\n}\n",
         CONF ":2: mdm.notnow_max: expected an integer, got boolean"},
        {"return {\n  http = { max_body_bytes = \"8 Mb/s\" },\n}\n",
         CONF ":2: http.max_body_bytes: invalid size \"8 Mb/s\" (write a number of bytes, or a "
              "number with KiB, MiB, GiB, KB, MB or GB)"},
        {"return {\n  http = { max_body_bytes = -1 },\n}\n",
         CONF ":2: http.max_body_bytes: must not be negative, got -1"},
        {"return {\n  http = { max_body_bytes = 0.5 },\n}\n",
         CONF ":2: http.max_body_bytes: expected a size (e.g. \"8MiB\"), got 0.5"},
        {"return {\n  http = { max_header_bytes = 0 },\n}\n",
         CONF ":2: http.max_header_bytes: must be at least 1024"},
        /* Values that would make the server useless or unbounded. */
        {"return {\n  http = { max_body_bytes = 0 },\n}\n",
         CONF ":2: http.max_body_bytes: must be at least 1024"},
        {"return {\n  http = { max_header_bytes = \"2MiB\" },\n}\n",
         CONF ":2: http.max_header_bytes: too large: at most 1048576"},
        {"return {\n  http = { max_body_bytes = \"2GiB\" },\n}\n",
         CONF ":2: http.max_body_bytes: too large: at most 1073741824"},
        {"return {\n  http = { max_pipeline = 100000 },\n}\n",
         CONF ":2: http.max_pipeline: too large: at most 1024"},
        {"return {\n  mdm = { result_retention = 0 },\n}\n",
         CONF ":2: mdm.result_retention: must be at least 1000ms"},
        {"return {\n  apns = { retry_max = 1000 },\n}\n",
         CONF ":2: apns.retry_max: too large: at most 20"},
        {"return {\n  apns = { connections = 5000 },\n}\n",
         CONF ":2: apns.connections: too large: at most 1024"},
        {"return {\n  http = {\n    read_timeout = {},\n  },\n}\n",
         CONF ":3: http.read_timeout: expected a duration (e.g. \"30s\"), got table"},
        {"return {\n  http = { read_timeout = \"soon\" },\n}\n",
         CONF ":2: http.read_timeout: invalid duration \"soon\" (write e.g. \"250ms\", \"30s\", "
              "\"5m\", \"2h\" or \"30d\")"},
        {"return {\n  http = { read_timeout = -1 },\n}\n",
         CONF ":2: http.read_timeout: must not be negative, got -1"},
        {"return {\n  http = { read_timeout = -0.5 },\n}\n",
         CONF ":2: http.read_timeout: must not be negative, got -0.5"},
        {"return {\n  http = { read_timeout = 0 },\n}\n",
         CONF ":2: http.read_timeout: must be at least 1ms"},
        {"return {\n  ca = { validity = 1e300 },\n}\n", CONF ":2: ca.validity: too large: 1e+300"},
        {"return {\n  listen = 8443,\n}\n", CONF ":2: listen: expected a list of strings, got number"},
        {"return {\n  listen = { \"a:1\",\n    5 },\n}\n",
         CONF ":2: listen: element 2: expected a string, got number"},
        {"return {\n  listen = { first = \"a:1\" },\n}\n",
         CONF ":2: listen: expected a list of strings, found the key \"first\""},
        {"return {\n  listen = { [1] = \"a\", [3] = \"b\" },\n}\n",
         CONF ":2: listen: expected a list of strings, found the key [3]"},
        {"return {\n  tls = { client_ca = { \"\" } },\n}\n",
         CONF ":2: tls.client_ca: element 1 must not be empty"},
        {"return {\n  log = {\n    level = \"verbose\",\n  },\n}\n",
         CONF ":3: log.level: expected one of \"debug\", \"info\", \"warn\", \"error\", got "
              "\"verbose\""},
        {"return {\n  tls = { min_version = 1.2 },\n}\n",
         CONF ":2: tls.min_version: expected one of \"1.2\", \"1.3\", got number"},
        {"return {\n  store = { backend = \"postgres\" },\n}\n",
         CONF ":2: store.backend: expected one of \"lmdb\", got \"postgres\""},
        {"return {\n  http = 5,\n}\n", CONF ":2: http: expected a table, got number"},
        {"return {\n  scep = { path = \"scep\" },\n}\n",
         CONF ":2: scep.path: the value must start with \"/\", got \"scep\""},
        {"return {\n  store = { map_size = \"2GiB\", map_max = \"1GiB\" },\n}\n",
         CONF ":2: store.map_size: store.map_size (2147483648 bytes) is larger than "
              "store.map_max (1073741824 bytes)"},
        {"return {\n  store = {\n    map_max = \"1MiB\" },\n}\n",
         CONF ":3: store.map_max: store.map_size (268435456 bytes) is larger than "
              "store.map_max (1048576 bytes)"},
        {"return { \"x\" }\n",
         CONF ": [1]: unexpected value without a name (write settings as name = value)"},
        {"return {\n  http = { \"x\" },\n}\n",
         CONF ":2: http[1]: unexpected value without a name (write settings as name = value)"},
        /* Of several errors, the first in the file is reported. */
        {"return {\n  log = { level = \"info\" },\n  http = {\n    read_timeout = true,\n"
         "    max_body_bytes = true,\n  },\n  data_dir = 1,\n}\n",
         CONF ":4: http.read_timeout: expected a duration (e.g. \"30s\"), got boolean"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_error(cases[i].src, cases[i].want);
}

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_error("return {\n  data_dir = \"x\",\n  htpp = { max_body_bytes = 5 },\n}\n",
                 CONF ":3: htpp: unknown key (did you mean \"http\"?)");
    expect_error("return {\n  tls = {\n    cert = \"x\",\n    clent_ca = \"y\",\n  },\n}\n",
                 CONF ":4: tls.clent_ca: unknown key (did you mean \"client_ca\"?)");
    expect_error("return {\n  http = { max_body_byte = 1 },\n}\n",
                 CONF ":2: http.max_body_byte: unknown key (did you mean \"max_body_bytes\"?)");
    expect_error("return {\n\n  frobnicate = 1,\n}\n", CONF ":3: frobnicate: unknown key");
    expect_error("return {\n  log = {\n    colour = true,\n  },\n}\n",
                 CONF ":3: log.colour: unknown key");
    /* A setting at the wrong level: the full path is suggested. */
    expect_error("return {\n  read_timeout = \"5s\",\n}\n",
                 CONF ":2: read_timeout: unknown key (did you mean \"http.read_timeout\"?)");
    /* ["name"] = keys are found too. */
    expect_error("return {\n  [\"http\"] = {\n    [\"max_body_bytez\"] = 1,\n  },\n}\n",
                 CONF ":3: http.max_body_bytez: unknown key (did you mean \"max_body_bytes\"?)");
    /* A key that is not a string. */
    expect_error("return {\n  log = {\n    [true] = 1,\n  },\n}\n",
                 CONF ":2: log[boolean key]: unexpected value without a name (write settings as "
                      "name = value)");
}

/* Keys that the scanner cannot see take the line of the nearest parent, or
 * no line at all rather than a wrong one. */
static void test_computed_keys(void **state)
{
    (void)state;
    expect_error("local k = \"max_body_\" .. \"bytez\"\n"
                 "return {\n"
                 "  http = {\n"
                 "    [k] = 1,\n"
                 "  },\n"
                 "}\n",
                 CONF ":3: http.max_body_bytez: unknown key (did you mean \"max_body_bytes\"?)");
    expect_error("local t = {}\nt[\"ht\" .. \"pp\"] = 1\nreturn t\n",
                 CONF ": htpp: unknown key (did you mean \"http\"?)");
    expect_error("local http = { max_body_bytes = true }\n"
                 "return {\n"
                 "  http = http,\n"
                 "}\n",
                 CONF ":3: http.max_body_bytes: expected a size (e.g. \"8MiB\"), got boolean");
    /* Two tables with the key and no `return {`: which one is meant is not
     * known, so no line is given. */
    expect_error("local a = { data_dir = 1 }\n"
                 "local b = { data_dir = 2 }\n"
                 "local c = a\n"
                 "return c\n",
                 CONF ": data_dir: expected a string, got number");
    /* One table with no `return {`: its line is used. */
    expect_error("local c = {\n  log = { level = 3 },\n}\nreturn c\n",
                 CONF ":2: log.level: expected one of \"debug\", \"info\", \"warn\", \"error\", "
                      "got number");
}

static void test_scanner(void **state)
{
    (void)state;
    const char *src =
        "-- http = { comment\n"                                               /* 1 */
        "--[[ tls = {\n"                                                      /* 2 */
        "  cert = 1 } ]]\n"                                                   /* 3 */
        "local s = \"log = { level = 1 }\"\n"                                 /* 4 */
        "local l = [==[\n"                                                    /* 5 */
        "store = { path = 1 } ]] ]=]\n"                                       /* 6 */
        "]==]\n"                                                              /* 7 */
        "return {\n"                                                          /* 8 */
        "  http = {\n"                                                        /* 9 */
        "    max_body_bytes = 1 == 1 and \"1MiB\" or \"2MiB\",\n"             /* 10 */
        "    [\"read_timeout\"] = \"5s\",\n"                                  /* 11 */
        "  },\n"                                                              /* 12 */
        "  tls = { cert = \"a\", key = 'b\\'{', client_ca = { \"x\", { cert = 2 } }, },\n" /* 13 */
        "  log = { level = (function() local x = { level = 1 } if x then return 'info' end end)() },\n" /* 14 */
        "  ca = {\n"                                                          /* 15 */
        "    cert\n"                                                          /* 16 */
        "      = \"c\"; key = 0x1e+1 >= 2 and \"k\",\n"                       /* 17 */
        "  },\n"                                                              /* 18 */
        "}\n";
    scan_t sc;
    scan_keys(src, strlen(src), &sc);
    static const struct {
        const char *path;
        int line;
    } want[] = {
        {"http", 9},
        {"http.max_body_bytes", 10},
        {"http.read_timeout", 11},
        {"tls", 13},
        {"tls.cert", 13},
        {"tls.key", 13},
        {"tls.client_ca", 13},
        {"tls.client_ca.cert", 13}, /* inside an array element: the parent's line */
        {"log", 14},
        {"log.level", 14},
        {"ca", 15},
        {"ca.cert", 16},
        {"ca.key", 17},
        {"store.path", 0},
        {"store", 0},
        {"nothing.here", 0},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int line = scan_line(&sc, want[i].path);
        if (line != want[i].line)
            print_message("%s: line %d, want %d\n", want[i].path, line, want[i].line);
        assert_int_equal(line, want[i].line);
    }
    scan_free(&sc);

    /* The source is valid Lua (the scanner only ever sees such). */
    lua_State *L = luaL_newstate();
    int rc = luaL_loadstring(L, src);
    if (rc != LUA_OK)
        print_message("%s\n", lua_tostring(L, -1));
    assert_int_equal(rc, LUA_OK);
    lua_close(L);
}

static void test_shebang_and_bom(void **state)
{
    (void)state;
    expect_error("#!/usr/bin/env lua\nreturn {\n  data_dir = 5,\n}\n",
                 CONF ":3: data_dir: expected a string, got number");
    expect_error("\xEF\xBB\xBFreturn {\n  data_dir = 5,\n}\n",
                 CONF ":2: data_dir: expected a string, got number");
    expect_error("\xEF\xBB\xBF# comment\nreturn {\n  data_dir = 5,\n}\n",
                 CONF ":3: data_dir: expected a string, got number");
}

static void test_wrong_return(void **state)
{
    (void)state;
    expect_error("data_dir = \"x\"\n", CONF ": must return a table (got nil)");
    expect_error("return 5\n", CONF ": must return a table (got number)");
    expect_error("return \"data_dir\"\n", CONF ": must return a table (got string)");
    expect_error("return nil, {}\n", CONF ": must return a table (got nil)");
}

static void test_syntax_and_runtime_errors(void **state)
{
    (void)state;
    expect_error("return {\n  http = {\n    max_body_bytes = 5\n    read_timeout = 3,\n  },\n}\n",
                 CONF ":4: '}' expected (to close '{' at line 2) near 'read_timeout'");
    expect_error("local x\nreturn {\n  data_dir = x.y,\n}\n",
                 CONF ":3: attempt to index a nil value (local 'x')");
    expect_error("error(\"no config for you\")\n", CONF ":1: no config for you");
    expect_error("error({})\n", CONF ": error object is a table value");
    expect_error("", CONF ": must return a table (got nil)");
}

static void test_missing_file(void **state)
{
    (void)state;
    mdm_config_t cfg;
    mdm_err_t err = {0};
    int rc = mdm_config_load(&cfg, "does-not-exist.lua", &err);
    assert_int_equal(rc, MDM_ENOTFOUND);
    assert_string_equal(err.msg, "does-not-exist.lua: cannot open: No such file or directory");
    assert_zeroed(&cfg);
    mdm_config_free(&cfg);

    rc = mdm_config_load(&cfg, ".", &err); /* a directory */
    assert_true(rc < 0);
    assert_zeroed(&cfg);
    mdm_config_free(&cfg);
}

/* ---- the sandbox ------------------------------------------------------------------- */

static void test_infinite_loop(void **state)
{
    (void)state;
    const char *want = CONF ": config takes too long (more than 10 million instructions or 5 s)";
    uint64_t t0 = mdm_mono_ns();
    expect_error("while true do end\nreturn {}\n", want);
    /* pcall cannot swallow the kill. */
    expect_error("while true do\n  pcall(function() while true do end end)\nend\nreturn {}\n",
                 want);
    expect_error("local function f() return f() end\nreturn f()\n", want);
    uint64_t ms = (mdm_mono_ns() - t0) / 1000000;
    print_message("runaway configs stopped in %llu ms\n", (unsigned long long)ms);

    /* Lua runs message handlers of errors raised by a hook, and finalizers,
     * with hooks off; so a looping one could not be stopped and neither is
     * available. __close handlers do run with hooks. */
    expect_error("xpcall(function() while true do end end, function() while true do end end)\n"
                 "return {}\n",
                 CONF ":1: attempt to call a nil value (global 'xpcall')");
    expect_error("setmetatable({}, { __gc = function() while true do end end })\n"
                 "collectgarbage()\nreturn {}\n",
                 CONF ":1: setmetatable: __gc is not allowed in a config file");
    expect_error("local ok = pcall(function()\n"
                 "  local x <close> = setmetatable({}, { __close = function() while true do end end })\n"
                 "  error(\"x\")\n"
                 "end)\nreturn {}\n",
                 want);
    mdm_config_t cfg;
    load_ok("local mt = { __index = function(t, k) return k end }\n"
            "local t = setmetatable({}, mt)\n"
            "mt.__gc = function() while true do end end -- too late: never called\n"
            "return { data_dir = t.x }\n",
            &cfg);
    assert_string_equal(cfg.data_dir, "x");
    mdm_config_free(&cfg);
}

static void test_memory_bomb(void **state)
{
    (void)state;
    const char *want = CONF ": config uses too much memory (more than 16 MiB)";
    expect_error("return { data_dir = string.rep(\"x\", 1 << 30) }\n", want);
    expect_error("local t = {}\nfor i = 1, 1e8 do t[i] = i end\nreturn {}\n", want);
    expect_error("local s = \"x\"\nwhile true do s = s .. s end\n", want);
    expect_error("local t = {}\nfor i = 1, 1e8 do t[i] = tostring(i) .. \"padding\" end\n", want);

    /* Memory that was needed once and freed again is fine. */
    mdm_config_t cfg;
    load_ok("for i = 1, 20 do local s = string.rep(\"x\", 4 << 20) end\n"
            "return { data_dir = \"/d\" }\n",
            &cfg);
    assert_string_equal(cfg.data_dir, "/d");
    mdm_config_free(&cfg);
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    mdm_buf_append(ud, p, sz);
    return 0;
}

static void test_sandbox(void **state)
{
    (void)state;
    expect_error("local f = io.open(\"/etc/passwd\")\nreturn {}\n",
                 CONF ":1: attempt to index a nil value (global 'io')");
    expect_error("os.execute(\"touch pwned\")\nreturn {}\n",
                 CONF ":1: attempt to call a nil value (field 'execute')");
    expect_error("os.remove(\"x\")\nreturn {}\n",
                 CONF ":1: attempt to call a nil value (field 'remove')");
    expect_error("return load(\"return {}\")()\n",
                 CONF ":1: attempt to call a nil value (global 'load')");
    expect_error("return require(\"os\")\n",
                 CONF ":1: attempt to call a nil value (global 'require')");
    expect_error("return dofile(\"/etc/passwd\")\n",
                 CONF ":1: attempt to call a nil value (global 'dofile')");
    expect_error("return loadfile(\"x.lua\")()\n",
                 CONF ":1: attempt to call a nil value (global 'loadfile')");
    expect_error("debug.sethook()\nreturn {}\n",
                 CONF ":1: attempt to index a nil value (global 'debug')");
    expect_error("package.loadlib(\"libc.so.6\", \"system\")\nreturn {}\n",
                 CONF ":1: attempt to index a nil value (global 'package')");
    assert_int_equal(access("pwned", F_OK), -1);

    /* What is left works. */
    mdm_config_t cfg;
    load_ok("local parts = { \"a\", \"b\" }\n"
            "return { data_dir = \"/\" .. table.concat(parts, \"/\") .. string.format(\"/%d\", "
            "math.max(1, 2)) }\n",
            &cfg);
    assert_string_equal(cfg.data_dir, "/a/b/2");
    mdm_config_free(&cfg);

    /* Precompiled chunks are refused: only text is loaded. */
    lua_State *L = luaL_newstate();
    assert_int_equal(luaL_loadstring(L, "return { data_dir = '/x' }"), LUA_OK);
    mdm_buf_t bc = MDM_BUF_INIT;
    assert_int_equal(lua_dump(L, dump_writer, &bc, 0), 0);
    lua_close(L);
    write_file(CONF, bc.data, bc.len);
    mdm_buf_free(&bc);
    mdm_err_t err = {0};
    int rc = mdm_config_load(&cfg, CONF, &err);
    if (rc == 0 || !strstr(err.msg, "attempt to load a binary chunk"))
        print_message("got (rc %d): %s\n", rc, err.msg);
    assert_int_equal(rc, MDM_ECONFIG);
    assert_non_null(strstr(err.msg, "attempt to load a binary chunk (mode is 't')"));
    assert_zeroed(&cfg);
    mdm_config_free(&cfg);
}

/* ---- paths -------------------------------------------------------------------------- */

static void test_relative_paths(void **state)
{
    (void)state;
    assert_int_equal(mkdir("sub", 0700), 0);
    const char *text = "return {\n"
                       "  data_dir = \"./var\",\n"
                       "  tls = { cert = \"certs/s.crt\", client_ca = { \"ca1.pem\", \"/abs/ca2.pem\" },\n"
                       "          ciphers = \"ECDHE-RSA-AES128-GCM-SHA256\" },\n"
                       "  store = { path = \".\" },\n"
                       "  policy = { dir = \"../policies\" },\n"
                       "  ca = { chain = \"/etc/chain.pem\", crl_url = \"crl.pem\" },\n"
                       "  scep = { ra_cert = \"ra.crt\", static_challenge = \"ra.key\" },\n"
                       "  proxy = { cert_header = \"X-Cert\" },\n"
                       "}\n";
    write_file("sub/m.lua", text, strlen(text));

    mdm_config_t cfg;
    mdm_err_t err = {0};
    assert_int_equal(mdm_config_load(&cfg, "sub/m.lua", &err), 0);
    assert_string_equal(cfg.data_dir, "sub/var");
    assert_string_equal(cfg.tls_cert, "sub/certs/s.crt");
    assert_string_equal(cfg.tls_key, "sub/var/server.key"); /* derived from data_dir */
    assert_list(&cfg.tls_client_ca, 2, "sub/ca1.pem", "/abs/ca2.pem");
    assert_string_equal(cfg.tls_ciphers, "ECDHE-RSA-AES128-GCM-SHA256");
    assert_string_equal(cfg.store_path, "sub");
    assert_string_equal(cfg.policy_dir, "sub/../policies");
    assert_string_equal(cfg.ca_cert, "sub/var/ca.crt");
    assert_string_equal(cfg.ca_chain, "/etc/chain.pem");
    assert_string_equal(cfg.ca_crl_url, "crl.pem"); /* a URL, not a path */
    assert_string_equal(cfg.scep_ra_cert, "sub/ra.crt");
    assert_string_equal(cfg.scep_static_challenge, "ra.key"); /* not a path */
    assert_string_equal(cfg.proxy_cert_header, "X-Cert");
    mdm_config_free(&cfg);

    char *abs = mdm_sprintf("%s/sub/m.lua", tmpdir);
    assert_int_equal(mdm_config_load(&cfg, abs, &err), 0);
    char *want = mdm_sprintf("%s/sub/var", tmpdir);
    assert_string_equal(cfg.data_dir, want);
    mdm_free(want);
    want = mdm_sprintf("%s/sub/var/ca.key", tmpdir);
    assert_string_equal(cfg.ca_key, want);
    mdm_free(want);
    want = mdm_sprintf("%s/sub/certs/s.crt", tmpdir);
    assert_string_equal(cfg.tls_cert, want);
    mdm_free(want);
    mdm_config_free(&cfg);
    mdm_free(abs);

    /* A file in the current directory: relative paths stay as written. */
    load_ok("return { data_dir = \"var\", tls = { key = \"./k.pem\" } }", &cfg);
    assert_string_equal(cfg.data_dir, "var");
    assert_string_equal(cfg.tls_key, "./k.pem");
    assert_string_equal(cfg.tls_cert, "var/server.crt");
    mdm_config_free(&cfg);

    /* A single string is a one-element list. */
    load_ok("return { listen = \"0.0.0.0:1\", tls = { client_ca = \"/ca.pem\" } }", &cfg);
    assert_list(&cfg.listen, 1, "0.0.0.0:1");
    assert_list(&cfg.tls_client_ca, 1, "/ca.pem");
    mdm_config_free(&cfg);
}

/* ---- sizes and durations --------------------------------------------------------------- */

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        {"0", 0},
        {"512", 512},
        {"512B", 512},
        {"64KiB", 65536},
        {"64K", 65536},
        {"64KB", 64000},
        {"8MiB", 8388608},
        {"8M", 8388608},
        {"8MB", 8000000},
        {"8 MiB", 8388608},
        {"8mib", 8388608},
        {"1GiB", 1073741824},
        {"1GB", 1000000000},
        {"1G", 1073741824},
        {"2TiB", 2ull << 40},
        {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        size_t v = 12345;
        int rc = mdm_parse_size(ok[i].s, &v);
        if (rc != 0 || v != ok[i].v)
            print_message("\"%s\": rc %d value %zu, want %llu\n", ok[i].s, rc, v,
                          (unsigned long long)ok[i].v);
        assert_int_equal(rc, 0);
        assert_int_equal(v, ok[i].v);
    }
    static const char *const bad[] = {
        "", "-1", "+1", " 8", "8 ", "8  MiB", "1.5GiB", "8XB", "MiB", "0x10", "8MiBs", "8\n",
        "18446744073709551616", "17179869184GiB", "99999999999999999999999", "1e3", "8 Mb/s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t v = 12345;
        int rc = mdm_parse_size(bad[i], &v);
        if (rc != MDM_EPARSE)
            print_message("\"%s\" accepted as %zu\n", bad[i], v);
        assert_int_equal(rc, MDM_EPARSE);
        assert_int_equal(v, 12345);
    }
}

static void test_parse_duration(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms;
    } ok[] = {
        {"0", 0},
        {"30", 30000},
        {"250ms", 250},
        {"30s", 30000},
        {"30 s", 30000},
        {"5m", 300000},
        {"2h", 7200000},
        {"30d", 2592000000ull},
        {"1h30m", 5400000},
        {"1d2h3m4s5ms", 93784005},
        {"18446744073709551615ms", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 12345;
        int rc = mdm_parse_duration_ms(ok[i].s, &v);
        if (rc != 0 || v != ok[i].ms)
            print_message("\"%s\": rc %d value %llu, want %llu\n", ok[i].s, rc,
                          (unsigned long long)v, (unsigned long long)ok[i].ms);
        assert_int_equal(rc, 0);
        assert_int_equal(v, ok[i].ms);
    }
    static const char *const bad[] = {
        "", "-5s", "+5s", "5min", "5 m s", "1h30", "s", "5x", "1.5h", " 5s", "5s ", "1h 30m",
        "5S", "18446744073709551615s", "99999999999999999999", "213503982335d", "ms",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 12345;
        int rc = mdm_parse_duration_ms(bad[i], &v);
        if (rc != MDM_EPARSE)
            print_message("\"%s\" accepted as %llu ms\n", bad[i], (unsigned long long)v);
        assert_int_equal(rc, MDM_EPARSE);
        assert_int_equal(v, 12345);
    }
}

/* ---- the table itself and what is generated from it -------------------------------------- */

static int cmp_offset(const void *a, const void *b)
{
    const opt_t *x = *(const opt_t *const *)a, *y = *(const opt_t *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void test_schema(void **state)
{
    (void)state;
    /* Every field of mdm_config_t but `file` has a row: sorted by offset,
     * the rows tile the struct with nothing but alignment padding between. */
    const opt_t *sorted[NOPTS];
    for (size_t i = 0; i < NOPTS; i++)
        sorted[i] = &options[i];
    qsort(sorted, NOPTS, sizeof(sorted[0]), cmp_offset);
    size_t end = offsetof(mdm_config_t, file) + sizeof(((mdm_config_t *)0)->file);
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = sorted[i];
        size_t want = o->type == OPT_STRING || o->type == OPT_ENUM ? sizeof(char *)
                      : o->type == OPT_LIST                        ? sizeof(mdm_strlist_t)
                      : o->type == OPT_BOOL                        ? sizeof(bool)
                                                                   : o->size;
        if (o->size != want || (o->type >= OPT_INT && o->type <= OPT_DURATION && o->size != 4 &&
                                o->size != 8))
            fail_msg("%s: field size %zu does not fit its type", o->key, o->size);
        if (o->offset < end || o->offset - end >= sizeof(void *))
            fail_msg("%s at offset %zu: a field is missing from the table or overlaps (previous "
                     "ends at %zu)", o->key, o->offset, end);
        end = o->offset + o->size;
    }
    if (sizeof(mdm_config_t) - end >= sizeof(void *))
        fail_msg("fields after offset %zu have no row", end);

    char prev_section[64] = "";
    char done[32][64];
    size_t ndone = 0;
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        assert_non_null(o->doc);
        for (size_t j = 0; j < i; j++)
            if (strcmp(options[j].key, o->key) == 0)
                fail_msg("%s appears twice", o->key);
        /* Rows of a section are together (the writers rely on it). */
        char sec[64];
        section_of(o, sec, sizeof(sec));
        if (strcmp(sec, prev_section) != 0) {
            for (size_t j = 0; j < ndone; j++)
                if (strcmp(done[j], sec) == 0)
                    fail_msg("rows of section %s are not together (%s)", sec, o->key);
            snprintf(done[ndone++], sizeof(done[0]), "%s", prev_section);
            snprintf(prev_section, sizeof(prev_section), "%s", sec);
        }
        if (o->flags & F_DATADIR)
            assert_true(strncmp(o->def, DATA_DIR_VAR "/", strlen(DATA_DIR_VAR) + 1) == 0);
        if (o->type == OPT_ENUM) {
            bool found = false;
            for (size_t j = 0; o->allowed[j]; j++)
                found = found || strcmp(o->allowed[j], o->def) == 0;
            if (!found)
                fail_msg("%s: default \"%s\" is not an allowed value", o->key, o->def);
        }
        if (o->def && o->type == OPT_SIZE) {
            size_t v;
            assert_int_equal(mdm_parse_size(o->def, &v), 0);
        }
        if (o->def && o->type == OPT_DURATION) {
            uint64_t v;
            assert_int_equal(mdm_parse_duration_ms(o->def, &v), 0);
        }
    }
}

static void test_defaults_writer_roundtrip(void **state)
{
    (void)state;
    mdm_buf_t text = MDM_BUF_INIT;
    mdm_config_write_defaults(&text);
    for (size_t i = 0; i < NOPTS; i++) {
        char line[96];
        snprintf(line, sizeof(line), " %s = ", leaf_of(&options[i]));
        if (strstr(text.data, line) == NULL)
            fail_msg("the default config does not mention %s", options[i].key);
    }
    write_file("defaults.lua", text.data, text.len);

    mdm_config_t got, want;
    mdm_err_t err = {0};
    int rc = mdm_config_load(&got, "defaults.lua", &err);
    if (rc != 0)
        print_message("%s\nerror: %s\n", text.data, err.msg);
    assert_int_equal(rc, 0);
    mdm_config_defaults(&want);
    mdm_config_finish(&want);
    assert_config_equal(&got, &want);
    mdm_config_free(&got);
    mdm_config_free(&want);

    /* From another directory, data_dir and all that follows it move along. */
    char *abs = mdm_sprintf("%s/defaults.lua", tmpdir);
    rc = mdm_config_load(&got, abs, &err);
    assert_int_equal(rc, 0);
    mdm_config_defaults(&want);
    mdm_free(want.data_dir);
    want.data_dir = mdm_sprintf("%s/data", tmpdir);
    mdm_config_finish(&want);
    assert_config_equal(&got, &want);
    mdm_config_free(&got);
    mdm_config_free(&want);
    mdm_free(abs);
    mdm_buf_free(&text);
}

static void test_docs_up_to_date(void **state)
{
    (void)state;
    const char *srcdir = getenv("MOONMDM_SOURCE_DIR");
    if (srcdir == NULL || srcdir[0] == '\0')
        srcdir = MOONMDM_SOURCE_DIR;
    char *path = mdm_sprintf("%s/docs/CONFIG.md", srcdir);
    mdm_buf_t md = MDM_BUF_INIT;
    mdm_config_write_markdown(&md);
    for (size_t i = 0; i < NOPTS; i++) {
        char cell[96];
        snprintf(cell, sizeof(cell), "| `%s` |", options[i].key);
        assert_non_null(strstr(md.data, cell));
    }
    /* The docs must not depend on where the tree was built. */
    assert_null(strstr(md.data, MOONMDM_SOURCE_DIR));

    const char *write = getenv("MOONMDM_WRITE_DOCS");
    if (write && strcmp(write, "1") == 0) {
        write_file(path, md.data, md.len);
        print_message("wrote %s\n", path);
    } else {
        size_t len = 0;
        char *have = read_all(path, &len);
        if (have == NULL || len != md.len || memcmp(have, md.data, len) != 0)
            fail_msg("%s is %s. It is generated from the option table in core/config.c; "
                     "regenerate it with: MOONMDM_WRITE_DOCS=1 ctest --test-dir <build dir> "
                     "-R unit/test_config",
                     path, have ? "out of date" : "missing");
        mdm_free(have);
    }
    mdm_buf_free(&md);
    mdm_free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_finish_follows_data_dir),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_brief_example),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_computed_keys),
        cmocka_unit_test(test_scanner),
        cmocka_unit_test(test_shebang_and_bom),
        cmocka_unit_test(test_wrong_return),
        cmocka_unit_test(test_syntax_and_runtime_errors),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_infinite_loop),
        cmocka_unit_test(test_memory_bomb),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_schema),
        cmocka_unit_test(test_defaults_writer_roundtrip),
        cmocka_unit_test(test_docs_up_to_date),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
