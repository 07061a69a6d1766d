/* Configuration loader (see config.h).
 *
 * One table, `options`, describes every setting: its dotted key, its type,
 * where it lives in mdm_config_t, its default and a line of documentation.
 * Defaults, validation, the generated default config file and
 * docs/CONFIG.md all come from that table, so they cannot drift apart.
 *
 * The file is Lua run in a throwaway state with a memory cap, an instruction
 * budget and only harmless libraries. Lua does not remember the line of a
 * table field, so when a value is wrong a small scanner reads the source text
 * and finds the line where the key was written. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/alloc.h"
#include "util/buf.h"
#include "util/misc.h"

/* Limits of the sandbox that evaluates the file. The budget is generous for
 * any sane config and still stops a loop within a fraction of a second. */
#define CONFIG_MEM_LIMIT ((size_t)16 << 20)
#define CONFIG_INSN_LIMIT 10000000ul
#define CONFIG_HOOK_STEP 1000
#define CONFIG_TIME_LIMIT_NS (5ull * 1000 * 1000 * 1000)
#define CONFIG_FILE_MAX ((size_t)1 << 20)
#define CONFIG_MAX_ERRS 16

#define DATA_DIR_VAR "<data_dir>"

typedef enum opt_type {
    OPT_STRING,
    OPT_BOOL,
    OPT_INT,
    OPT_SIZE,
    OPT_DURATION,
    OPT_LIST,
    OPT_ENUM,
} opt_type_t;

enum {
    /* A file or directory: a relative value from the file is resolved
     * against the directory of the config file. */
    F_PATH = 1 << 0,
    /* The default is "<data_dir>/...", filled in by mdm_config_finish()
     * once data_dir is known. */
    F_DATADIR = 1 << 1,
    /* An HTTP path on our server: must start with "/". */
    F_URLPATH = 1 << 2,
};

typedef struct opt {
    const char *key;             /* dotted path, e.g. "http.read_timeout" */
    opt_type_t type;
    size_t offset;               /* into mdm_config_t */
    size_t size;                 /* of the field, for the integer types */
    const char *def;             /* default as text; NULL: not set; lists: items split by ',' */
    const char *def_doc;         /* how the docs show the default, when not def */
    const char *const *allowed;  /* OPT_ENUM: the accepted values, NULL-terminated */
    unsigned flags;
    uint64_t min;                /* integer types: the smallest accepted value */
    uint64_t max;                /* integer types: the largest accepted value (0: the type's) */
    const char *doc;
} opt_t;

#define FIELD(f) .offset = offsetof(mdm_config_t, f), .size = sizeof(((mdm_config_t *)0)->f)

static const char *const tls_versions[] = {"1.2", "1.3", NULL};
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const store_backends[] = {"lmdb", NULL};

/* TLS 1.2: forward secrecy and AEAD only. */
#define DEFAULT_CIPHERS                                                        \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"               \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"               \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
/* TLS 1.3: OpenSSL's own default, spelled out so that it shows in the docs. */
#define DEFAULT_CIPHERSUITES \
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

/* Rows of one section must stay together: the writers group by section. */
static const opt_t options[] = {
    {.key = "data_dir", .type = OPT_STRING, FIELD(data_dir), .def = "./data", .flags = F_PATH,
     .doc = "Directory for the database, keys and certificates; other paths default to files in it."},
    {.key = "listen", .type = OPT_LIST, FIELD(listen), .def = "127.0.0.1:8443",
     .doc = "HTTPS addresses to listen on, \"host:port\" (IPv6: \"[::1]:8443\")."},
    {.key = "listen_plain", .type = OPT_LIST, FIELD(listen_plain), .def = "",
     .doc = "Plain HTTP addresses, only for use behind a TLS-terminating proxy."},

    {.key = "tls.cert", .type = OPT_STRING, FIELD(tls_cert), .def = DATA_DIR_VAR "/server.crt",
     .flags = F_PATH | F_DATADIR, .doc = "Server certificate (PEM)."},
    {.key = "tls.key", .type = OPT_STRING, FIELD(tls_key), .def = DATA_DIR_VAR "/server.key",
     .flags = F_PATH | F_DATADIR, .doc = "Private key of the server certificate (PEM, mode 0600)."},
    {.key = "tls.chain", .type = OPT_STRING, FIELD(tls_chain), .flags = F_PATH,
     .doc = "Intermediate certificates (PEM) sent after tls.cert."},
    {.key = "tls.client_ca", .type = OPT_LIST, FIELD(tls_client_ca), .def = DATA_DIR_VAR "/ca.crt",
     .flags = F_PATH | F_DATADIR,
     .doc = "CA certificates (PEM files) that device client certificates must chain to."},
    {.key = "tls.request_client_cert", .type = OPT_BOOL, FIELD(tls_request_client_cert),
     .def = "true", .doc = "Ask clients for a certificate during the TLS handshake."},
    {.key = "tls.ciphers", .type = OPT_STRING, FIELD(tls_ciphers), .def = DEFAULT_CIPHERS,
     .doc = "OpenSSL cipher list for TLS 1.2."},
    {.key = "tls.ciphersuites", .type = OPT_STRING, FIELD(tls_ciphersuites),
     .def = DEFAULT_CIPHERSUITES, .doc = "OpenSSL cipher suites for TLS 1.3."},
    {.key = "tls.min_version", .type = OPT_ENUM, FIELD(tls_min_version), .def = "1.2",
     .allowed = tls_versions, .doc = "Oldest TLS version accepted."},
    {.key = "tls.allow_insecure_key_mode", .type = OPT_BOOL, FIELD(tls_allow_insecure_key_mode),
     .def = "false", .doc = "Start even when a private key file is readable by group or others."},

    {.key = "http.max_header_bytes", .type = OPT_SIZE, FIELD(http_max_header_bytes),
     .def = "32KiB", .min = 1024, .max = 1 << 20,
     .doc = "Largest request head (request line and headers)."},
    {.key = "http.max_body_bytes", .type = OPT_SIZE, FIELD(http_max_body_bytes), .def = "8MiB",
     .min = 1024, .max = 1 << 30, .doc = "Largest request body."},
    {.key = "http.read_timeout", .type = OPT_DURATION, FIELD(http_read_timeout_ms), .def = "30s",
     .min = 1, .doc = "Time allowed to receive a whole request."},
    {.key = "http.idle_timeout", .type = OPT_DURATION, FIELD(http_idle_timeout_ms), .def = "75s",
     .min = 1, .doc = "Time an idle keep-alive connection stays open."},
    {.key = "http.write_timeout", .type = OPT_DURATION, FIELD(http_write_timeout_ms),
     .def = "30s", .min = 1, .doc = "Time allowed to send a whole response."},
    {.key = "http.max_connections", .type = OPT_INT, FIELD(http_max_connections),
     .def = "10000", .min = 1, .doc = "Open connections at most; further ones are refused."},
    {.key = "http.max_pipeline", .type = OPT_INT, FIELD(http_max_pipeline), .def = "16",
     .min = 1, .max = 1024, .doc = "Requests buffered per connection (HTTP pipelining)."},
    {.key = "http.shutdown_grace", .type = OPT_DURATION, FIELD(http_shutdown_grace_ms),
     .def = "10s", .doc = "Time requests in flight get to finish when the server stops."},

    {.key = "proxy.cert_header", .type = OPT_STRING, FIELD(proxy_cert_header),
     .doc = "Request header with the client certificate on plain listeners (set only behind a "
            "proxy that sets it)."},

    {.key = "log.level", .type = OPT_ENUM, FIELD(log_level), .def = "info",
     .allowed = log_levels, .doc = "Least severe level that is logged."},
    {.key = "log.requests", .type = OPT_BOOL, FIELD(log_requests), .def = "true",
     .doc = "Log one line per HTTP request."},

    {.key = "store.backend", .type = OPT_ENUM, FIELD(store_backend), .def = "lmdb",
     .allowed = store_backends, .doc = "Storage backend."},
    {.key = "store.path", .type = OPT_STRING, FIELD(store_path), .def = DATA_DIR_VAR "/db",
     .flags = F_PATH | F_DATADIR, .doc = "Database directory."},
    {.key = "store.map_size", .type = OPT_SIZE, FIELD(store_map_size), .def = "256MiB",
     .min = 1, .doc = "Initial map size of the database; it grows as needed up to store.map_max."},
    {.key = "store.map_max", .type = OPT_SIZE, FIELD(store_map_max), .def = "64GiB", .min = 1,
     .doc = "Largest map size the database may grow to."},
    {.key = "store.sync", .type = OPT_BOOL, FIELD(store_sync), .def = "true",
     .doc = "Flush every commit to disk (turn off only for tests)."},

    {.key = "policy.dir", .type = OPT_STRING, FIELD(policy_dir),
     .def = MOONMDM_SOURCE_DIR "/policies", .def_doc = "the policies/ directory that ships with moonmdm",
     .flags = F_PATH, .doc = "Policy directory; its init.lua returns the hooks."},
    {.key = "policy.memory_max", .type = OPT_SIZE, FIELD(policy_memory_max), .def = "64MiB",
     .min = 1 << 20, .doc = "Memory cap of the policy's Lua state; a hook that reaches it fails."},
    {.key = "policy.budget", .type = OPT_DURATION, FIELD(policy_budget_ms), .def = "50ms",
     .min = 1, .doc = "Time one hook call may work on the event loop; a hook that works longer is "
                      "stopped and fails (closed). Time the server's thread was not running "
                      "(machine busy, paging) does not count."},
    {.key = "policy.hook_budgets", .type = OPT_LIST, FIELD(policy_hook_budgets),
     .def = "authenticate=500ms",
     .doc = "Budgets of single hooks as \"hook=duration\", overriding policy.budget (password "
            "hashes are slow on purpose)."},
    {.key = "policy.instructions", .type = OPT_INT, FIELD(policy_instructions), .def = "20000000",
     .min = 1000, .doc = "Lua instructions one hook call may run (loading: 100 times as many)."},
    {.key = "policy.load_budget", .type = OPT_DURATION, FIELD(policy_load_budget_ms), .def = "2s",
     .min = 1, .doc = "Time for loading the policy files and running self_test (counted as "
                      "policy.budget is)."},
    {.key = "policy.watch", .type = OPT_BOOL, FIELD(policy_watch), .def = "true",
     .doc = "Reload the policy when a file in policy.dir changes, and profiles.dir when one of "
            "its files does."},
    {.key = "policy.decision_log_max", .type = OPT_INT, FIELD(policy_decision_log_max),
     .def = "100000", .doc = "Decision log entries kept at most (0: no decision log)."},
    {.key = "policy.decision_log_age", .type = OPT_DURATION, FIELD(policy_decision_log_age_ms),
     .def = "30d", .min = 1000, .doc = "Decision log entries older than this are pruned."},
    {.key = "policy.decision_log_all", .type = OPT_BOOL, FIELD(policy_decision_log_all),
     .def = "false",
     .doc = "Also record connect and result hook calls that decided nothing (no command, fact, "
            "mdm.kv change or error); by default only the calls metric counts them."},

    {.key = "ca.cert", .type = OPT_STRING, FIELD(ca_cert), .def = DATA_DIR_VAR "/ca.crt",
     .flags = F_PATH | F_DATADIR, .doc = "CA certificate that signs device certificates (PEM)."},
    {.key = "ca.key", .type = OPT_STRING, FIELD(ca_key), .def = DATA_DIR_VAR "/ca.key",
     .flags = F_PATH | F_DATADIR, .doc = "Private key of the CA (PEM, mode 0600)."},
    {.key = "ca.chain", .type = OPT_STRING, FIELD(ca_chain), .flags = F_PATH,
     .doc = "The CA's own issuers (PEM), when the CA is an intermediate."},
    {.key = "ca.validity", .type = OPT_DURATION, FIELD(ca_validity_ms), .def = "365d",
     .min = 1000, .doc = "Validity of issued device certificates."},
    {.key = "ca.crl_url", .type = OPT_STRING, FIELD(ca_crl_url),
     .doc = "CRL distribution point written into issued certificates."},

    {.key = "scep.path", .type = OPT_STRING, FIELD(scep_path), .def = "/scep",
     .flags = F_URLPATH, .doc = "URL path of the SCEP service."},
    {.key = "scep.ra_cert", .type = OPT_STRING, FIELD(scep_ra_cert), .flags = F_PATH,
     .doc = "RA certificate for SCEP replies (default: the CA answers itself)."},
    {.key = "scep.ra_key", .type = OPT_STRING, FIELD(scep_ra_key), .flags = F_PATH,
     .doc = "Private key of scep.ra_cert."},
    {.key = "scep.static_challenge", .type = OPT_STRING, FIELD(scep_static_challenge),
     .doc = "A fixed SCEP challenge accepted besides one-time ones (take it from os.getenv)."},
    {.key = "scep.challenge_ttl", .type = OPT_DURATION, FIELD(scep_challenge_ttl_ms),
     .def = "1h", .min = 1, .doc = "Lifetime of one-time SCEP challenges."},
    {.key = "scep.allow_single_des", .type = OPT_BOOL, FIELD(scep_allow_single_des),
     .def = "false",
     .doc = "Accept requests encrypted with single DES (old Go clients such as micromdm's "
            "scepclient 2.1); replies then use DES-EDE3-CBC."},

    {.key = "mdm.checkin_path", .type = OPT_STRING, FIELD(mdm_checkin_path),
     .def = "/mdm/checkin", .flags = F_URLPATH, .doc = "URL path for check-in messages."},
    {.key = "mdm.connect_path", .type = OPT_STRING, FIELD(mdm_connect_path),
     .def = "/mdm/connect", .flags = F_URLPATH, .doc = "URL path for command reports."},
    {.key = "mdm.path", .type = OPT_STRING, FIELD(mdm_combined_path), .def = "/mdm",
     .flags = F_URLPATH,
     .doc = "URL path that takes both check-ins and command reports (told apart by Content-Type)."},
    {.key = "mdm.bind_on_first_sight", .type = OPT_BOOL, FIELD(mdm_bind_on_first_sight),
     .def = "false",
     .doc = "Bind a certificate that chains to a CA of tls.client_ca and is bound to nothing "
            "to the enrollment it first speaks for (devices migrated from another server, "
            "renewals outside an enrollment profile); never to one that checked out."},
    {.key = "mdm.result_retention", .type = OPT_DURATION, FIELD(mdm_result_retention_ms),
     .def = "30d", .min = 1000, .doc = "How long command results are kept."},
    {.key = "mdm.notnow_max", .type = OPT_INT, FIELD(mdm_notnow_max), .def = "50",
     .doc = "NotNow replies after which a command is given up (0: never)."},

    {.key = "enroll.base_url", .type = OPT_STRING, FIELD(enroll_base_url),
     .def_doc = "https://<first listen address>",
     .doc = "Base URL that devices use to reach this server (in enrollment profiles)."},
    {.key = "enroll.path", .type = OPT_STRING, FIELD(enroll_path), .def = "/enroll",
     .flags = F_URLPATH, .doc = "URL path of the enrollment page."},
    {.key = "enroll.ota_path", .type = OPT_STRING, FIELD(enroll_ota_path), .def = "/ota/profile",
     .flags = F_URLPATH, .doc = "URL path of the over-the-air profile service."},
    {.key = "enroll.profile_identifier", .type = OPT_STRING, FIELD(enroll_identifier),
     .def = "org.moonmdm.enroll", .doc = "PayloadIdentifier of the enrollment profile."},
    {.key = "enroll.organization", .type = OPT_STRING, FIELD(enroll_organization),
     .def = "moonmdm", .doc = "PayloadOrganization shown on the device."},
    {.key = "enroll.display_name", .type = OPT_STRING, FIELD(enroll_display_name),
     .def = "Device management", .doc = "PayloadDisplayName of the enrollment profile."},
    {.key = "enroll.topic", .type = OPT_STRING, FIELD(enroll_topic),
     .doc = "APNs topic for the MDM payload when no push certificate is loaded."},
    {.key = "enroll.sign_message", .type = OPT_BOOL, FIELD(enroll_sign_message), .def = "false",
     .doc = "Ask devices to sign every MDM request (Mdm-Signature header)."},
    {.key = "enroll.access_rights", .type = OPT_INT, FIELD(enroll_access_rights), .def = "8191",
     .min = 1, .doc = "AccessRights of the MDM payload (8191: all)."},
    {.key = "enroll.ota_trust", .type = OPT_LIST, FIELD(enroll_ota_trust), .def = "",
     .flags = F_PATH,
     .doc = "CA files that OTA phase-1 device certificates must chain to."},
    {.key = "enroll.install_ca", .type = OPT_BOOL, FIELD(enroll_install_ca), .def = "true",
     .doc = "Put the CA certificate in the enrollment profile (a CA devices do not trust yet)."},
    {.key = "enroll.max_in_flight", .type = OPT_INT, FIELD(enroll_max_in_flight), .def = "64",
     .min = 1, .max = 65536,
     .doc = "Sign-ins (enrollment page, OTA phase 1) that may wait for their decision at once "
            "(their password hashes are made in the thread pool); more get 503 with "
            "Retry-After."},

    {.key = "profiles.dir", .type = OPT_STRING, FIELD(profiles_dir), .flags = F_PATH,
     .doc = "Directory of .mobileconfig files kept in the store (at most 8 MiB each). Loaded "
            "at start, where a bad file stops the start, and again on SIGHUP and POST "
            "/v1/policy/reload: new and changed files are stored, and a profile loaded from it "
            "whose file is gone is deleted (log profiles.removed). On a reload a bad file is "
            "logged (profiles.file_failed) and the profile it held stays as stored."},
    {.key = "profiles.sign", .type = OPT_BOOL, FIELD(profiles_sign), .def = "true",
     .doc = "Sign profiles sent to devices with the server certificate."},
    {.key = "profiles.encrypt", .type = OPT_BOOL, FIELD(profiles_encrypt), .def = "true",
     .doc = "Encrypt profiles to the device's identity certificate (RSA key transport, or "
            "ECDH for an EC key); a profile that cannot be encrypted to the device is not sent "
            "(error reconcile.render_failed), never sent in the clear."},

    {.key = "apns.url", .type = OPT_STRING, FIELD(apns_url), .def = "production",
     .doc = "APNs: \"production\" (https://api.push.apple.com), \"sandbox\" "
            "(https://api.sandbox.push.apple.com) or a base URL (a stand-in for tests)."},
    {.key = "apns.cert", .type = OPT_STRING, FIELD(apns_cert), .flags = F_PATH,
     .doc = "Push certificate (PEM) from the Apple Push Certificates Portal; more can be "
            "uploaded with PUT /v1/pushcert."},
    {.key = "apns.key", .type = OPT_STRING, FIELD(apns_key), .flags = F_PATH,
     .doc = "Private key of apns.cert (PEM, mode 0600)."},
    {.key = "apns.p12", .type = OPT_STRING, FIELD(apns_p12), .flags = F_PATH,
     .doc = "Push certificate and key as one PKCS#12 file (instead of apns.cert and apns.key)."},
    {.key = "apns.p12_password", .type = OPT_STRING, FIELD(apns_p12_password),
     .doc = "Password of apns.p12 (take it from os.getenv)."},
    {.key = "apns.ca_file", .type = OPT_STRING, FIELD(apns_ca_file), .flags = F_PATH,
     .doc = "Extra CA certificates (PEM) trusted for the APNs server, besides the system's."},
    {.key = "apns.expiration", .type = OPT_DURATION, FIELD(apns_expiration_ms), .def = "1d",
     .doc = "How long APNs keeps a push for an offline device (apns-expiration); 0: deliver "
            "now or drop."},
    {.key = "apns.timeout", .type = OPT_DURATION, FIELD(apns_timeout_ms), .def = "30s",
     .min = 100, .doc = "Time allowed for one request to APNs, connecting included."},
    {.key = "apns.max_in_flight", .type = OPT_INT, FIELD(apns_max_in_flight), .def = "256",
     .min = 1, .max = 65536,
     .doc = "Pushes sent and not yet answered, at most; more wait in a queue. With several "
            "push certificates, each topic may use an equal part of them (docs/APNS.md)."},
    {.key = "apns.connections", .type = OPT_INT, FIELD(apns_connections), .def = "8", .min = 1, .max = 1024,
     .doc = "HTTP/2 connections to APNs per push certificate, as a total shared by all "
            "topics (docs/APNS.md); each carries up to apns.max_in_flight / apns.connections "
            "requests at once (keep that near 32)."},
    {.key = "apns.coalesce_window", .type = OPT_DURATION, FIELD(apns_coalesce_window_ms),
     .def = "1s",
     .doc = "A push to an enrollment that APNs accepted this recently, and that the device has "
            "not answered yet, answers further pushes to it."},
    {.key = "apns.retry_max", .type = OPT_INT, FIELD(apns_retry_max), .def = "3", .max = 20,
     .doc = "Retries of a push after 429, 5xx or a connection failure."},
    {.key = "apns.retry_delay", .type = OPT_DURATION, FIELD(apns_retry_delay_ms), .def = "1s",
     .min = 1, .doc = "First retry delay; it doubles at each retry (with jitter, at most 5m)."},
    {.key = "apns.sweep_interval", .type = OPT_DURATION, FIELD(apns_sweep_interval_ms),
     .def = "10m",
     .doc = "How often to push enrollments that have commands waiting and have not checked in "
            "for apns.sweep_after (0: never)."},
    {.key = "apns.sweep_after", .type = OPT_DURATION, FIELD(apns_sweep_after_ms), .def = "1h",
     .min = 1, .doc = "Silence after which the sweep pushes an enrollment with waiting commands."},

    {.key = "security.auth_fail_threshold", .type = OPT_INT,
     FIELD(security_auth_fail_threshold), .def = "5", .min = 1,
     .doc = "Failed sign-ins (enrollment, admin API) from one address or for one user before "
            "a lockout."},
    {.key = "security.auth_backoff", .type = OPT_DURATION, FIELD(security_auth_backoff_ms),
     .def = "2s", .min = 1,
     .doc = "First lockout; each further failure doubles it."},
    {.key = "security.auth_backoff_max", .type = OPT_DURATION,
     FIELD(security_auth_backoff_max_ms), .def = "15m", .min = 1,
     .doc = "Longest lockout."},
    {.key = "security.auth_window", .type = OPT_DURATION, FIELD(security_auth_window_ms),
     .def = "15m", .min = 1,
     .doc = "Failures older than this are forgotten."},

    {.key = "api.enabled", .type = OPT_BOOL, FIELD(api_enabled), .def = "true",
     .doc = "Serve the admin API (/v1/...)."},
};

#define NOPTS (sizeof(options) / sizeof(options[0]))

/* ---- field access ------------------------------------------------------ */

static void *field_ptr(mdm_config_t *cfg, const opt_t *o)
{
    return (char *)cfg + o->offset;
}

static uint64_t uint_max(const opt_t *o)
{
    uint64_t m = o->size >= sizeof(uint64_t) ? UINT64_MAX : ((uint64_t)1 << (8 * o->size)) - 1;
    return o->max != 0 && o->max < m ? o->max : m;
}

static void set_uint(mdm_config_t *cfg, const opt_t *o, uint64_t v)
{
    if (o->size == sizeof(uint64_t)) {
        memcpy(field_ptr(cfg, o), &v, sizeof(v));
    } else {
        uint32_t x = (uint32_t)v;
        memcpy(field_ptr(cfg, o), &x, sizeof(x));
    }
}

static void set_string(mdm_config_t *cfg, const opt_t *o, char *s)
{
    char **p = field_ptr(cfg, o);
    mdm_free(*p);
    *p = s;
}

static void strlist_clear(mdm_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        mdm_free(l->v[i]);
    mdm_free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void strlist_push(mdm_strlist_t *l, char *s)
{
    l->v = mdm_realloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = s;
}

/* "<data_dir>/x" with data_dir filled in. */
static char *expand_data_dir(const char *def, const char *data_dir)
{
    const char *rest = def + strlen(DATA_DIR_VAR);
    if (strcmp(data_dir, "/") == 0 && rest[0] == '/')
        rest++;
    return mdm_sprintf("%s%s", data_dir, rest);
}

/* Fills a list from "a,b,c" (the default text form); "" gives an empty
 * list that is nonetheless marked as set (v != NULL). */
static void strlist_from_text(mdm_strlist_t *l, const char *text, const char *data_dir)
{
    strlist_clear(l);
    l->v = mdm_calloc(1, sizeof(*l->v));
    const char *p = text;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *item = mdm_strndup(p, len);
        if (data_dir != NULL && strncmp(item, DATA_DIR_VAR, strlen(DATA_DIR_VAR)) == 0) {
            char *full = expand_data_dir(item, data_dir);
            mdm_free(item);
            item = full;
        }
        strlist_push(l, item);
        p += len;
        if (*p == ',')
            p++;
    }
}

static const opt_t *find_opt(const char *key)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strcmp(options[i].key, key) == 0)
            return &options[i];
    return NULL;
}

/* True when key names a table of settings, e.g. "http". */
static bool is_section(const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < NOPTS; i++)
        if (strncmp(options[i].key, key, n) == 0 && options[i].key[n] == '.')
            return true;
    return false;
}

/* ---- sizes and durations ----------------------------------------------- */

/* Reads decimal digits into *out; returns the number of digits (0: none or
 * overflow). */
static size_t parse_digits(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    while (s[i] >= '0' && s[i] <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(s[i] - '0'), &v))
            return 0;
        i++;
    }
    *out = v;
    return i;
}

int mdm_parse_size(const char *s, size_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"B", 1},
        {"K", 1ull << 10},
        {"KiB", 1ull << 10},
        {"KB", 1000ull},
        {"M", 1ull << 20},
        {"MiB", 1ull << 20},
        {"MB", 1000000ull},
        {"G", 1ull << 30},
        {"GiB", 1ull << 30},
        {"GB", 1000000000ull},
        {"T", 1ull << 40},
        {"TiB", 1ull << 40},
        {"TB", 1000000000000ull},
    };
    uint64_t v;
    size_t nd = parse_digits(s, &v);
    if (nd == 0)
        return MDM_EPARSE;
    const char *unit = s + nd;
    if (*unit == ' ')
        unit++;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(unit, units[i].unit) != 0)
            continue;
        /* "8 " (a space and no unit) is junk, not 8. */
        if (unit != s + nd && units[i].unit[0] == '\0')
            return MDM_EPARSE;
        uint64_t bytes;
        if (__builtin_mul_overflow(v, units[i].mult, &bytes) || bytes > SIZE_MAX)
            return MDM_EPARSE;
        *out = (size_t)bytes;
        return 0;
    }
    return MDM_EPARSE;
}

int mdm_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        /* "ms" before "m" so that the longer unit wins. */
        {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
    };
    uint64_t total = 0;
    const char *p = s;
    if (*p == '\0')
        return MDM_EPARSE;
    while (*p) {
        uint64_t v;
        size_t nd = parse_digits(p, &v);
        if (nd == 0)
            return MDM_EPARSE;
        p += nd;
        /* A bare number means seconds, but only when it is all there is. */
        if (*p == '\0' && p - nd == s) {
            if (__builtin_mul_overflow(v, 1000, &total))
                return MDM_EPARSE;
            break;
        }
        if (*p == ' ' && p - nd == s)
            p++;
        size_t i;
        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t ul = strlen(units[i].unit);
            if (strncmp(p, units[i].unit, ul) == 0 && !(p[ul] >= 'a' && p[ul] <= 'z'))
                break;
        }
        if (i == sizeof(units) / sizeof(units[0]))
            return MDM_EPARSE;
        uint64_t ms;
        if (__builtin_mul_overflow(v, units[i].ms, &ms) || __builtin_add_overflow(total, ms, &total))
            return MDM_EPARSE;
        p += strlen(units[i].unit);
    }
    *out = total;
    return 0;
}

/* ---- defaults ------------------------------------------------------------ */

static void apply_default(mdm_config_t *cfg, const opt_t *o)
{
    if (o->def == NULL || (o->flags & F_DATADIR))
        return;
    switch (o->type) {
    case OPT_STRING:
    case OPT_ENUM:
        set_string(cfg, o, mdm_strdup(o->def));
        break;
    case OPT_BOOL:
        *(bool *)field_ptr(cfg, o) = strcmp(o->def, "true") == 0;
        break;
    case OPT_INT:
        set_uint(cfg, o, strtoull(o->def, NULL, 10));
        break;
    case OPT_SIZE: {
        size_t v = 0;
        (void)mdm_parse_size(o->def, &v);
        set_uint(cfg, o, v);
        break;
    }
    case OPT_DURATION: {
        uint64_t v = 0;
        (void)mdm_parse_duration_ms(o->def, &v);
        set_uint(cfg, o, v);
        break;
    }
    case OPT_LIST:
        strlist_from_text(field_ptr(cfg, o), o->def, NULL);
        break;
    }
}

void mdm_config_defaults(mdm_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NOPTS; i++)
        apply_default(cfg, &options[i]);
}

void mdm_config_finish(mdm_config_t *cfg)
{
    /* Strip one trailing slash so that "/srv/x/" gives "/srv/x/db". */
    const char *dd = cfg->data_dir && cfg->data_dir[0] ? cfg->data_dir : ".";
    size_t ddlen = strlen(dd);
    if (ddlen > 1 && dd[ddlen - 1] == '/')
        ddlen--;
    char *dir = mdm_strndup(dd, ddlen);
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        if (!(o->flags & F_DATADIR))
            continue;
        if (o->type == OPT_LIST) {
            mdm_strlist_t *l = field_ptr(cfg, o);
            if (l->v == NULL)
                strlist_from_text(l, o->def, dir);
        } else if (*(char **)field_ptr(cfg, o) == NULL) {
            set_string(cfg, o, expand_data_dir(o->def, dir));
        }
    }
    mdm_free(dir);
}

void mdm_config_free(mdm_config_t *cfg)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        if (o->type == OPT_STRING || o->type == OPT_ENUM)
            set_string(cfg, o, NULL);
        else if (o->type == OPT_LIST)
            strlist_clear(field_ptr(cfg, o));
    }
    mdm_free(cfg->file);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- where keys are written: a scanner of the Lua source ----------------- */

typedef enum tok_kind {
    TK_NAME,
    TK_STRING,
    TK_NUMBER,
    TK_PUNCT,
} tok_kind_t;

typedef struct tok {
    tok_kind_t kind;
    int line;
    const char *p;  /* names and punctuation: the text; strings: the contents */
    size_t len;
    bool escaped;   /* a short string with backslash escapes */
} tok_t;

typedef struct keyline {
    char *path;
    int line;
    int root;        /* which outermost table constructor it is in */
    bool in_return;  /* that constructor follows the chunk's `return` */
} keyline_t;

typedef struct scan {
    keyline_t *v;
    size_t n;
    bool have_return;
} scan_t;

typedef struct frame {
    bool is_table;
    char *path;  /* tables: dotted path; "" for a root; NULL when unknown */
    int root;
    bool in_return;
} frame_t;

static bool is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_name_char(char c)
{
    return is_name_start(c) || is_digit(c);
}

/* Steps over one line break ("\n", "\r", "\r\n" or "\n\r", as Lua counts). */
static void skip_newline(const char *s, size_t n, size_t *i, int *line)
{
    char c = s[*i];
    (*i)++;
    if (*i < n && (s[*i] == '\n' || s[*i] == '\r') && s[*i] != c)
        (*i)++;
    (*line)++;
}

/* At "[" : returns 1 + the level of a long bracket "[==[", or 0. */
static size_t long_bracket(const char *s, size_t n, size_t i)
{
    size_t j = i + 1;
    while (j < n && s[j] == '=')
        j++;
    return j < n && s[j] == '[' ? j - i : 0;
}

/* Skips a long string or comment whose opening bracket (level lvl-1) starts
 * at *i; leaves *i after the closing bracket. */
static void skip_long(const char *s, size_t n, size_t *i, int *line, size_t lvl, tok_t *t)
{
    size_t eqs = lvl - 1;
    *i += lvl + 1;
    size_t start = *i;
    while (*i < n) {
        if (s[*i] == ']') {
            size_t j = *i + 1;
            while (j < n && s[j] == '=')
                j++;
            if (j < n && s[j] == ']' && j - *i - 1 == eqs) {
                if (t) {
                    t->p = s + start;
                    t->len = *i - start;
                }
                *i = j + 1;
                return;
            }
            (*i)++;
        } else if (s[*i] == '\n' || s[*i] == '\r') {
            skip_newline(s, n, i, line);
        } else {
            (*i)++;
        }
    }
    if (t) {
        t->p = s + start;
        t->len = n - start;
    }
}

static void tok_push(tok_t **v, size_t *n, size_t *cap, tok_t t)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *v = mdm_realloc(*v, *cap * sizeof(**v));
    }
    (*v)[(*n)++] = t;
}

/* Splits Lua source into the tokens the key scanner needs. The source has
 * already been accepted by Lua's parser, so this need not diagnose. */
static tok_t *tokenize(const char *s, size_t n, size_t *count)
{
    tok_t *v = NULL;
    size_t nv = 0, cap = 0;
    size_t i = 0;
    int line = 1;
    while (i < n) {
        char c = s[i];
        tok_t t = {.line = line, .p = s + i, .len = 1};
        if (c == '\n' || c == '\r') {
            skip_newline(s, n, &i, &line);
        } else if (c == ' ' || c == '\t' || c == '\f' || c == '\v') {
            i++;
        } else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
            i += 2;
            size_t lvl = i < n && s[i] == '[' ? long_bracket(s, n, i) : 0;
            if (lvl) {
                skip_long(s, n, &i, &line, lvl, NULL);
            } else {
                while (i < n && s[i] != '\n' && s[i] != '\r')
                    i++;
            }
        } else if (c == '[' && long_bracket(s, n, i)) {
            t.kind = TK_STRING;
            skip_long(s, n, &i, &line, long_bracket(s, n, i), &t);
            tok_push(&v, &nv, &cap, t);
        } else if (c == '"' || c == '\'') {
            t.kind = TK_STRING;
            i++;
            t.p = s + i;
            while (i < n && s[i] != c) {
                if (s[i] == '\\' && i + 1 < n) {
                    t.escaped = true;
                    i++;
                }
                if (s[i] == '\n' || s[i] == '\r')
                    skip_newline(s, n, &i, &line);
                else
                    i++;
            }
            t.len = (size_t)(s + i - t.p);
            if (i < n)
                i++;
            tok_push(&v, &nv, &cap, t);
        } else if (is_name_start(c)) {
            t.kind = TK_NAME;
            while (i < n && is_name_char(s[i]))
                i++;
            t.len = (size_t)(s + i - t.p);
            tok_push(&v, &nv, &cap, t);
        } else if (is_digit(c) || (c == '.' && i + 1 < n && is_digit(s[i + 1]))) {
            t.kind = TK_NUMBER;
            bool hex = c == '0' && i + 1 < n && (s[i + 1] == 'x' || s[i + 1] == 'X');
            i++;
            while (i < n) {
                char e = s[i - 1];
                bool exp = hex ? (e == 'p' || e == 'P') : (e == 'e' || e == 'E');
                if (is_name_char(s[i]) || s[i] == '.' || (exp && (s[i] == '+' || s[i] == '-')))
                    i++;
                else
                    break;
            }
            t.len = (size_t)(s + i - t.p);
            tok_push(&v, &nv, &cap, t);
        } else {
            /* "==", "<=", ">=" and "~=" must not look like "=". */
            t.kind = TK_PUNCT;
            if (i + 1 < n && s[i + 1] == '=' && (c == '=' || c == '<' || c == '>' || c == '~'))
                t.len = 2;
            i += t.len;
            tok_push(&v, &nv, &cap, t);
        }
    }
    *count = nv;
    return v;
}

static bool tok_is(const tok_t *t, const char *text)
{
    size_t len = strlen(text);
    return (t->kind == TK_NAME || t->kind == TK_PUNCT) && t->len == len &&
           memcmp(t->p, text, len) == 0;
}

/* True for the tokens after which a table field may begin. */
static bool field_sep(const tok_t *t)
{
    return tok_is(t, "{") || tok_is(t, ",") || tok_is(t, ";");
}

static void scan_add(scan_t *sc, size_t *cap, const frame_t *top, const char *name, size_t len,
                     int line)
{
    if (*cap == sc->n) {
        *cap = *cap ? *cap * 2 : 64;
        sc->v = mdm_realloc(sc->v, *cap * sizeof(*sc->v));
    }
    keyline_t *k = &sc->v[sc->n++];
    if (top->path[0])
        k->path = mdm_sprintf("%s.%.*s", top->path, (int)len, name);
    else
        k->path = mdm_strndup(name, len);
    k->line = line;
    k->root = top->root;
    k->in_return = top->in_return;
}

static void scan_free(scan_t *sc)
{
    for (size_t i = 0; i < sc->n; i++)
        mdm_free(sc->v[i].path);
    mdm_free(sc->v);
    memset(sc, 0, sizeof(*sc));
}

/* Records the dotted path and line of every `name =` and `["name"] =` in
 * the table constructors of the source. Keys of tables nested in an array
 * element or built by code are not recorded. */
static void scan_keys(const char *src, size_t srclen, scan_t *sc)
{
    size_t ntok = 0;
    tok_t *tk = tokenize(src, srclen, &ntok);
    frame_t *st = NULL;
    size_t nst = 0, stcap = 0, sccap = 0;
    int roots = 0;
    /* The '=' token of the last recorded key, so that a '{' right after it
     * opens the table of that key. */
    size_t pending_eq = SIZE_MAX;

    memset(sc, 0, sizeof(*sc));
    for (size_t i = 0; i < ntok; i++) {
        const tok_t *t = &tk[i];
        frame_t *top = nst ? &st[nst - 1] : NULL;
        if (nst == stcap) {
            stcap = stcap ? stcap * 2 : 16;
            st = mdm_realloc(st, stcap * sizeof(*st));
            top = nst ? &st[nst - 1] : NULL;
        }
        if (tok_is(t, "{")) {
            frame_t f = {.is_table = true};
            if (top && top->is_table) {
                f.root = top->root;
                f.in_return = top->in_return;
                if (i > 0 && pending_eq == i - 1 && top->path)
                    f.path = mdm_strdup(sc->v[sc->n - 1].path);
            } else {
                /* An outermost constructor: does it follow the chunk's
                 * return (possibly in parentheses)? */
                f.root = ++roots;
                f.path = mdm_strdup("");
                size_t j = i;
                if (j > 0 && tok_is(&tk[j - 1], "("))
                    j--;
                f.in_return = nst == 0 && j > 0 && tok_is(&tk[j - 1], "return");
                if (f.in_return)
                    sc->have_return = true;
            }
            st[nst++] = f;
        } else if (tok_is(t, "}")) {
            if (nst) {
                mdm_free(st[nst - 1].path);
                nst--;
            }
        } else if (tok_is(t, "function") || tok_is(t, "do") || tok_is(t, "if") ||
                   tok_is(t, "repeat")) {
            st[nst++] = (frame_t){.is_table = false};
        } else if (tok_is(t, "end") || tok_is(t, "until")) {
            if (nst && !st[nst - 1].is_table)
                nst--;
        } else if (top && top->is_table && top->path && i > 0 && field_sep(&tk[i - 1])) {
            if (t->kind == TK_NAME && i + 1 < ntok && tok_is(&tk[i + 1], "=")) {
                scan_add(sc, &sccap, top, t->p, t->len, t->line);
                pending_eq = i + 1;
            } else if (tok_is(t, "[") && i + 3 < ntok && tk[i + 1].kind == TK_STRING &&
                       !tk[i + 1].escaped && tok_is(&tk[i + 2], "]") && tok_is(&tk[i + 3], "=")) {
                scan_add(sc, &sccap, top, tk[i + 1].p, tk[i + 1].len, t->line);
                pending_eq = i + 3;
            }
        }
    }
    for (size_t i = 0; i < nst; i++)
        mdm_free(st[i].path);
    mdm_free(st);
    mdm_free(tk);
}

/* The line of exactly this path: > 0 found, 0 not found, -1 ambiguous. */
static int scan_line_exact(const scan_t *sc, const char *path)
{
    const keyline_t *last = NULL;
    bool same_root = true, same_line = true;
    for (size_t i = 0; i < sc->n; i++) {
        const keyline_t *k = &sc->v[i];
        /* Once the chunk returns a constructor, keys elsewhere are other
         * tables (locals, helpers) and would only mislead. */
        if (sc->have_return && !k->in_return)
            continue;
        if (strcmp(k->path, path) != 0)
            continue;
        if (last) {
            same_root = same_root && last->root == k->root;
            same_line = same_line && last->line == k->line;
        }
        last = k;
    }
    if (last == NULL)
        return 0;
    /* Within one constructor the last duplicate wins, as in Lua. */
    return same_root || same_line ? last->line : -1;
}

/* The line where path (or, failing that, its nearest parent) was written;
 * 0 when unknown. */
static int scan_line(const scan_t *sc, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    while (buf[0]) {
        int line = scan_line_exact(sc, buf);
        if (line != 0)
            return line > 0 ? line : 0;
        char *dot = strrchr(buf, '.');
        if (dot)
            *dot = '\0';
        else
            buf[0] = '\0';
    }
    return 0;
}

/* ---- evaluation ------------------------------------------------------------ */

typedef struct cfg_err {
    char path[128];   /* for the line lookup */
    char label[160];  /* the key as printed */
    char msg[400];
} cfg_err_t;

typedef struct load_ctx {
    const char *file;
    const char *src;
    size_t srclen;
    mdm_config_t *cfg;
    bool set[NOPTS];
    size_t mem_used;
    bool mem_exceeded;
    unsigned long insns;
    uint64_t start_ns;
    bool killed;
    const char *bad_return;  /* the type the chunk returned instead of a table */
    cfg_err_t errs[CONFIG_MAX_ERRS];
    size_t nerrs;
} load_ctx_t;

static void add_err(load_ctx_t *c, const char *path, const char *label, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add_err(load_ctx_t *c, const char *path, const char *label, const char *fmt, ...)
{
    if (c->nerrs == CONFIG_MAX_ERRS)
        return;
    cfg_err_t *e = &c->errs[c->nerrs++];
    snprintf(e->path, sizeof(e->path), "%s", path);
    snprintf(e->label, sizeof(e->label), "%s", label ? label : path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

/* The allocator of the sandbox: plain allocation with a cap. */
static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    load_ctx_t *c = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        mdm_free(ptr);
        c->mem_used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > CONFIG_MEM_LIMIT - c->mem_used) {
        c->mem_exceeded = true;
        return NULL;
    }
    void *p = mdm_realloc(ptr, nsize);
    c->mem_used = c->mem_used - old + nsize;
    return p;
}

/* Stops the file after its instruction or time budget. Once the budget is
 * spent the hook fires on every instruction, so that a pcall in the file
 * cannot swallow the error and carry on. */
static void sandbox_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    void *ud;
    lua_getallocf(L, &ud);
    load_ctx_t *c = ud;
    if (!c->killed) {
        c->insns += CONFIG_HOOK_STEP;
        if (c->insns < CONFIG_INSN_LIMIT && mdm_mono_ns() - c->start_ns < CONFIG_TIME_LIMIT_NS)
            return;
        c->killed = true;
        lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, "config takes too long");
}

/* os.getenv, so that secrets can stay out of the file. */
static int sandbox_getenv(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

/* setmetatable without finalizers: Lua runs __gc with hooks off, so a
 * finalizer that loops could not be stopped. Lua 5.4 only finalizes objects
 * whose metatable has __gc when it is set, so checking here suffices. */
static int sandbox_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc is not allowed in a config file");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static const char *value_type(lua_State *L, int idx)
{
    return luaL_typename(L, idx);
}

/* Reads a Lua number as a non-negative whole number. Returns 0 on success,
 * -1 when it is not whole (or too large), -2 when it is negative. */
static int number_to_u64(lua_State *L, int idx, uint64_t *out)
{
    if (lua_isinteger(L, idx)) {
        lua_Integer i = lua_tointeger(L, idx);
        if (i < 0)
            return -2;
        *out = (uint64_t)i;
        return 0;
    }
    lua_Number d = lua_tonumber(L, idx);
    if (!isfinite(d) || d != floor(d) || d >= 18446744073709551616.0)
        return d < 0 ? -2 : -1;
    if (d < 0)
        return -2;
    *out = (uint64_t)d;
    return 0;
}

static void format_number(lua_State *L, int idx, char *buf, size_t len)
{
    if (lua_isinteger(L, idx))
        snprintf(buf, len, "%lld", (long long)lua_tointeger(L, idx));
    else
        snprintf(buf, len, "%.14g", (double)lua_tonumber(L, idx));
}

/* A string value without NUL bytes, or NULL (with the error recorded). */
static const char *get_string(lua_State *L, load_ctx_t *c, const opt_t *o, const char *what)
{
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len) {
        add_err(c, o->key, NULL, "%s must not contain NUL bytes", what);
        return NULL;
    }
    if ((o->flags & (F_PATH | F_URLPATH)) && len == 0) {
        add_err(c, o->key, NULL, "%s must not be empty", what);
        return NULL;
    }
    if ((o->flags & F_URLPATH) && s[0] != '/') {
        add_err(c, o->key, NULL, "%s must start with \"/\", got \"%s\"", what, s);
        return NULL;
    }
    return s;
}

static void set_list(lua_State *L, load_ctx_t *c, const opt_t *o)
{
    mdm_strlist_t list = {NULL, 0};
    int t = lua_type(L, -1);
    if (t == LUA_TSTRING) {
        const char *s = get_string(L, c, o, "the value");
        if (s == NULL)
            return;
        list.v = mdm_calloc(1, sizeof(*list.v));
        strlist_push(&list, mdm_strdup(s));
        goto out;
    }
    if (t != LUA_TTABLE) {
        add_err(c, o->key, NULL, "expected a list of strings, got %s", value_type(L, -1));
        return;
    }
    /* Every key must be 1..n: no holes and no named fields. */
    lua_Unsigned n = lua_rawlen(L, -1);
    lua_Unsigned count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        count++;
        lua_Integer k = lua_isinteger(L, -2) ? lua_tointeger(L, -2) : 0;
        lua_pop(L, 1);
        if (k < 1 || (lua_Unsigned)k > n) {
            if (lua_type(L, -1) == LUA_TSTRING)
                add_err(c, o->key, NULL, "expected a list of strings, found the key \"%.64s\"",
                        lua_tostring(L, -1));
            else if (lua_isinteger(L, -1))
                add_err(c, o->key, NULL, "expected a list of strings, found the key [%lld]",
                        (long long)lua_tointeger(L, -1));
            else
                add_err(c, o->key, NULL, "expected a list of strings, found a %s key",
                        value_type(L, -1));
            lua_pop(L, 1);
            return;
        }
    }
    if (count != n) {
        add_err(c, o->key, NULL, "expected a list of strings, found holes in it");
        return;
    }
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        char what[48];
        snprintf(what, sizeof(what), "element %llu", (unsigned long long)i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            add_err(c, o->key, NULL, "%s: expected a string, got %s", what, value_type(L, -1));
            lua_pop(L, 1);
            goto fail;
        }
        const char *s = get_string(L, c, o, what);
        if (s == NULL) {
            lua_pop(L, 1);
            goto fail;
        }
        if (list.v == NULL)
            list.v = mdm_calloc(1, sizeof(*list.v));
        strlist_push(&list, mdm_strdup(s));
        lua_pop(L, 1);
    }
    if (list.v == NULL)
        list.v = mdm_calloc(1, sizeof(*list.v));
out:
    strlist_clear(field_ptr(c->cfg, o));
    *(mdm_strlist_t *)field_ptr(c->cfg, o) = list;
    c->set[o - options] = true;
    return;
fail:
    strlist_clear(&list);
}

static void set_enum(lua_State *L, load_ctx_t *c, const opt_t *o)
{
    char allowed[256] = "";
    size_t used = 0;
    for (size_t i = 0; o->allowed[i]; i++) {
        int n = snprintf(allowed + used, sizeof(allowed) - used, "%s\"%s\"", i ? ", " : "",
                         o->allowed[i]);
        if (n > 0 && (size_t)n < sizeof(allowed) - used)
            used += (size_t)n;
    }
    if (lua_type(L, -1) != LUA_TSTRING) {
        add_err(c, o->key, NULL, "expected one of %s, got %s", allowed, value_type(L, -1));
        return;
    }
    const char *s = lua_tostring(L, -1);
    for (size_t i = 0; o->allowed[i]; i++) {
        if (strcmp(s, o->allowed[i]) == 0) {
            set_string(c->cfg, o, mdm_strdup(s));
            c->set[o - options] = true;
            return;
        }
    }
    add_err(c, o->key, NULL, "expected one of %s, got \"%.64s\"", allowed, s);
}

/* Checks the value on top of the stack against o and stores it. */
static void set_value(lua_State *L, load_ctx_t *c, const opt_t *o)
{
    int t = lua_type(L, -1);
    uint64_t v = 0;
    char num[64];
    const char *expected = NULL;

    switch (o->type) {
    case OPT_STRING: {
        if (t != LUA_TSTRING) {
            add_err(c, o->key, NULL, "expected a string, got %s", value_type(L, -1));
            return;
        }
        const char *s = get_string(L, c, o, "the value");
        if (s == NULL)
            return;
        set_string(c->cfg, o, mdm_strdup(s));
        c->set[o - options] = true;
        return;
    }
    case OPT_BOOL:
        if (t != LUA_TBOOLEAN) {
            const char *s = t == LUA_TSTRING ? lua_tostring(L, -1) : "";
            bool quoted = strcmp(s, "true") == 0 || strcmp(s, "false") == 0;
            add_err(c, o->key, NULL, "expected true or false, got %s%s", value_type(L, -1),
                    quoted ? " (write it without quotes)" : "");
            return;
        }
        *(bool *)field_ptr(c->cfg, o) = lua_toboolean(L, -1);
        c->set[o - options] = true;
        return;
    case OPT_LIST:
        set_list(L, c, o);
        return;
    case OPT_ENUM:
        set_enum(L, c, o);
        return;
    case OPT_INT:
        expected = "an integer";
        break;
    case OPT_SIZE:
        expected = "a size (e.g. \"8MiB\")";
        break;
    case OPT_DURATION:
        expected = "a duration (e.g. \"30s\")";
        break;
    }

    /* The numeric types. */
    if (t == LUA_TSTRING && o->type != OPT_INT) {
        const char *s = lua_tostring(L, -1);
        size_t sz = 0;
        int rc = o->type == OPT_SIZE ? mdm_parse_size(s, &sz) : mdm_parse_duration_ms(s, &v);
        if (rc != 0) {
            if (o->type == OPT_SIZE)
                add_err(c, o->key, NULL,
                        "invalid size \"%.64s\" (write a number of bytes, or a number with "
                        "KiB, MiB, GiB, KB, MB or GB)", s);
            else
                add_err(c, o->key, NULL,
                        "invalid duration \"%.64s\" (write e.g. \"250ms\", \"30s\", \"5m\", "
                        "\"2h\" or \"30d\")", s);
            return;
        }
        if (o->type == OPT_SIZE)
            v = sz;
    } else if (t == LUA_TNUMBER) {
        format_number(L, -1, num, sizeof(num));
        if (o->type == OPT_DURATION && !lua_isinteger(L, -1)) {
            /* Fractions of a second are fine for durations. */
            lua_Number d = lua_tonumber(L, -1) * 1000.0;
            if (isnan(d)) {
                add_err(c, o->key, NULL, "expected %s, got %s", expected, num);
                return;
            }
            if (d < 0) {
                add_err(c, o->key, NULL, "must not be negative, got %s", num);
                return;
            }
            if (!(d < 18446744073709549568.0)) {
                add_err(c, o->key, NULL, "too large: %s", num);
                return;
            }
            v = (uint64_t)llround(d);
        } else {
            int rc = number_to_u64(L, -1, &v);
            if (rc == -2) {
                add_err(c, o->key, NULL, "must not be negative, got %s", num);
                return;
            }
            if (rc != 0) {
                add_err(c, o->key, NULL, "expected %s, got %s", expected, num);
                return;
            }
            if (o->type == OPT_DURATION && __builtin_mul_overflow(v, 1000, &v)) {
                add_err(c, o->key, NULL, "too large: %s", num);
                return;
            }
        }
    } else {
        add_err(c, o->key, NULL, "expected %s, got %s", expected, value_type(L, -1));
        return;
    }

    if (v > uint_max(o)) {
        add_err(c, o->key, NULL, "too large: at most %llu", (unsigned long long)uint_max(o));
        return;
    }
    /* Durations are added to the time of day: a century is the most any
     * setting means (a larger one wrapped around, e.g. a result retention
     * that deleted every result). */
    if (o->type == OPT_DURATION && v > MDM_DURATION_MAX_MS) {
        add_err(c, o->key, NULL, "too long: at most 36500d");
        return;
    }
    if (v < o->min) {
        if (o->type == OPT_DURATION)
            add_err(c, o->key, NULL, "must be at least %llums", (unsigned long long)o->min);
        else
            add_err(c, o->key, NULL, "must be at least %llu", (unsigned long long)o->min);
        return;
    }
    set_uint(c->cfg, o, v);
    c->set[o - options] = true;
}

/* Optimal string alignment distance (Levenshtein plus transpositions),
 * for "did you mean". Long strings are not compared. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return SIZE_MAX;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* The name of the child of prefix that key belongs to ("http" for
 * "http.read_timeout" under ""), or false when key is not under prefix. */
static bool child_name(const char *key, const char *prefix, char *out, size_t outlen)
{
    size_t pl = strlen(prefix);
    const char *rest = key;
    if (pl) {
        if (strncmp(key, prefix, pl) != 0 || key[pl] != '.')
            return false;
        rest = key + pl + 1;
    }
    size_t len = strcspn(rest, ".");
    snprintf(out, outlen, "%.*s", (int)len, rest);
    return true;
}

/* Records an unknown key; path is used to find its line. */
static void unknown_key(load_ctx_t *c, const char *prefix, const char *name, const char *label,
                        const char *path)
{
    char best[64] = "", cand[64];
    size_t bestd = SIZE_MAX;
    for (size_t i = 0; i < NOPTS; i++) {
        if (!child_name(options[i].key, prefix, cand, sizeof(cand)))
            continue;
        size_t d = edit_distance(name, cand);
        if (d < bestd) {
            bestd = d;
            snprintf(best, sizeof(best), "%s", cand);
        }
    }
    size_t len = strlen(name);
    size_t limit = len <= 4 ? 1 : len <= 8 ? 2 : 3;
    if (bestd <= limit) {
        add_err(c, path, label, "unknown key (did you mean \"%s\"?)", best);
        return;
    }
    /* A setting put at the wrong level: suggest its full path. */
    for (size_t i = 0; i < NOPTS; i++) {
        const char *dot = strrchr(options[i].key, '.');
        if (strcmp(dot ? dot + 1 : options[i].key, name) == 0) {
            add_err(c, path, label, "unknown key (did you mean \"%s\"?)", options[i].key);
            return;
        }
    }
    add_err(c, path, label, "unknown key");
}

/* Checks and stores every field of the table at idx, whose dotted path is
 * prefix ("" for the top level). */
static void walk_table(lua_State *L, load_ctx_t *c, int idx, const char *prefix)
{
    luaL_checkstack(L, 8, "config walk");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        char path[128], label[160];
        if (lua_type(L, -2) != LUA_TSTRING) {
            if (lua_isinteger(L, -2))
                snprintf(label, sizeof(label), "%s[%lld]", prefix,
                         (long long)lua_tointeger(L, -2));
            else
                snprintf(label, sizeof(label), "%s[%s key]", prefix, value_type(L, -2));
            add_err(c, prefix, label,
                    "unexpected value without a name (write settings as name = value)");
            lua_pop(L, 1);
            continue;
        }
        size_t klen;
        const char *key = lua_tolstring(L, -2, &klen);
        int n = snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", key);
        snprintf(label, sizeof(label), "%s%s%.64s", prefix, prefix[0] ? "." : "", key);
        bool sane = strlen(key) == klen && n > 0 && (size_t)n < sizeof(path);
        const opt_t *o = sane ? find_opt(path) : NULL;
        if (o) {
            set_value(L, c, o);
        } else if (sane && is_section(path)) {
            if (lua_type(L, -1) == LUA_TTABLE)
                walk_table(L, c, lua_gettop(L), path);
            else
                add_err(c, path, NULL, "expected a table, got %s", value_type(L, -1));
        } else {
            /* Line lookups use the parent when the key itself is odd. */
            unknown_key(c, prefix, key, label, sane ? path : prefix);
        }
        lua_pop(L, 1);
    }
}

/* Runs in protected mode: builds the sandbox, runs the file, checks the
 * table it returns. */
static int sandbox_main(lua_State *L)
{
    load_ctx_t *c = lua_touserdata(L, 1);
    static const struct {
        const char *name;
        lua_CFunction open;
    } libs[] = {
        {LUA_GNAME, luaopen_base},
        {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table},
        {LUA_MATHLIBNAME, luaopen_math},
    };
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
        luaL_requiref(L, libs[i].name, libs[i].open, 1);
        lua_pop(L, 1);
    }
    /* Nothing that reads files or compiles code at run time. xpcall goes
     * too: Lua runs its message handler with hooks off when the error comes
     * from our hook, so a looping handler would never be stopped. */
    static const char *const removed[] = {"dofile", "loadfile", "load", "require", "xpcall"};
    for (size_t i = 0; i < sizeof(removed) / sizeof(removed[0]); i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, sandbox_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sandbox_getenv);
    lua_setfield(L, -2, "getenv");
    lua_setglobal(L, "os");

    char *chunkname = mdm_sprintf("@%s", c->file);
    int rc = luaL_loadbufferx(L, c->src, c->srclen, chunkname, "t");
    mdm_free(chunkname);
    if (rc != LUA_OK)
        return lua_error(L);

    c->start_ns = mdm_mono_ns();
    lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, CONFIG_HOOK_STEP);
    lua_call(L, 0, 1);
    /* No finalizer of the file may run (and change the table) while it is
     * being read. */
    lua_gc(L, LUA_GCSTOP);
    if (!lua_istable(L, -1)) {
        c->bad_return = value_type(L, -1);
        return 0;
    }
    walk_table(L, c, lua_gettop(L), "");
    return 0;
}

/* Reads the whole file; strips a "#!" first line and a UTF-8 BOM as
 * luaL_loadfile does, keeping line numbers. */
static int read_source(const char *path, char **out, size_t *outlen, size_t *skip,
                       mdm_err_t *err)
{
    int rc = 0;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        rc = mdm_err_set(err, errno == ENOENT ? MDM_ENOTFOUND : MDM_EIO, "%s: cannot open: %s",
                         path, strerror(errno));
        goto out;
    }
    buf = mdm_malloc(CONFIG_FILE_MAX + 1);
    len = fread(buf, 1, CONFIG_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = mdm_err_set(err, MDM_EIO, "%s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    if (len > CONFIG_FILE_MAX) {
        rc = mdm_err_set(err, MDM_ECONFIG, "%s: file too large (at most %zu bytes)", path,
                         CONFIG_FILE_MAX);
        goto out;
    }
    buf[len] = '\0';
    size_t s = 0;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        s = 3;
    if (s < len && buf[s] == '#') {
        while (s < len && buf[s] != '\n')
            s++;
    }
    *skip = s;
out:
    if (f)
        fclose(f);
    if (rc != 0) {
        mdm_free(buf);
        return rc;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

/* The directory of the config file, or NULL when it is the current one. */
static char *config_dir(const char *file)
{
    const char *slash = strrchr(file, '/');
    if (slash == NULL)
        return NULL;
    if (slash == file)
        return mdm_strdup("/");
    return mdm_strndup(file, (size_t)(slash - file));
}

static char *resolve_path(const char *dir, const char *p)
{
    if (dir == NULL || p[0] == '/')
        return mdm_strdup(p);
    while (p[0] == '.' && p[1] == '/') {
        p += 2;
        while (*p == '/')
            p++;
    }
    if (p[0] == '\0' || strcmp(p, ".") == 0)
        return mdm_strdup(dir);
    size_t dl = strlen(dir);
    return mdm_sprintf("%s%s%s", dir, dir[dl - 1] == '/' ? "" : "/", p);
}

static void resolve_paths(load_ctx_t *c)
{
    char *dir = config_dir(c->file);
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        if (!(o->flags & F_PATH) || !c->set[i])
            continue;
        if (o->type == OPT_LIST) {
            mdm_strlist_t *l = field_ptr(c->cfg, o);
            for (size_t j = 0; j < l->n; j++) {
                char *r = resolve_path(dir, l->v[j]);
                mdm_free(l->v[j]);
                l->v[j] = r;
            }
        } else {
            char **s = field_ptr(c->cfg, o);
            if (*s)
                set_string(c->cfg, o, resolve_path(dir, *s));
        }
    }
    mdm_free(dir);
}

/* Checks that need more than one value. */
int mdm_parse_listen(const char *spec, char *host, size_t hn, int *port)
{
    const char *colon;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':' || (size_t)(close - spec - 1) >= hn)
            return MDM_EINVAL;
        snprintf(host, hn, "%.*s", (int)(close - spec - 1), spec + 1);
        colon = close + 1;
    } else {
        colon = strrchr(spec, ':');
        if (colon == NULL || (size_t)(colon - spec) >= hn)
            return MDM_EINVAL;
        snprintf(host, hn, "%.*s", (int)(colon - spec), spec);
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 0 || p > 65535 || end == colon + 1)
        return MDM_EINVAL;
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
        return MDM_EINVAL;
    *port = (int)p;
    return 0;
}

/* Listen addresses: an IP address and a port, checked here so that
 * `config check` (and init) refuse what serve could not bind. */
static void check_listen(load_ctx_t *c, const char *key, const mdm_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        char host[64];
        int port;
        if (mdm_parse_listen(l->v[i], host, sizeof(host), &port) != 0)
            add_err(c, key, NULL,
                    "\"%.100s\" is not an IP address and port (write \"127.0.0.1:8443\", "
                    "\"0.0.0.0:8443\" or \"[::1]:8443\")",
                    l->v[i]);
    }
}

static void check_combinations(load_ctx_t *c)
{
    const mdm_config_t *cfg = c->cfg;
    check_listen(c, "listen", &cfg->listen);
    check_listen(c, "listen_plain", &cfg->listen_plain);
    if (cfg->store_map_size > cfg->store_map_max) {
        const char *key = c->set[find_opt("store.map_size") - options] ? "store.map_size"
                                                                      : "store.map_max";
        add_err(c, key, NULL, "store.map_size (%zu bytes) is larger than store.map_max (%zu bytes)",
                cfg->store_map_size, cfg->store_map_max);
    }
}

/* Fills err from the recorded errors: the first one in the file wins. */
static int report_errors(load_ctx_t *c, mdm_err_t *err)
{
    scan_t sc;
    scan_keys(c->src, c->srclen, &sc);
    const cfg_err_t *best = NULL;
    int best_line = 0;
    for (size_t i = 0; i < c->nerrs; i++) {
        int line = scan_line(&sc, c->errs[i].path);
        bool better = best == NULL || (line > 0 && (best_line == 0 || line < best_line));
        if (better) {
            best = &c->errs[i];
            best_line = line;
        }
    }
    scan_free(&sc);
    const char *label = best->label[0] ? best->label : "(top level)";
    if (best_line > 0)
        return mdm_err_set(err, MDM_ECONFIG, "%s:%d: %s: %s", c->file, best_line, label,
                           best->msg);
    return mdm_err_set(err, MDM_ECONFIG, "%s: %s: %s", c->file, label, best->msg);
}

int mdm_config_load(mdm_config_t *cfg, const char *path, mdm_err_t *err)
{
    int rc = 0;
    char *src = NULL;
    size_t srclen = 0, skip = 0;
    lua_State *L = NULL;
    load_ctx_t *c = mdm_calloc(1, sizeof(*c));
    mdm_config_t tmp;

    mdm_config_defaults(&tmp);
    tmp.file = mdm_strdup(path);
    memset(cfg, 0, sizeof(*cfg));

    rc = read_source(path, &src, &srclen, &skip, err);
    if (rc != 0)
        goto out;
    c->file = path;
    c->src = src + skip;
    c->srclen = srclen - skip;
    c->cfg = &tmp;

    L = lua_newstate(sandbox_alloc, c);
    if (L == NULL) {
        rc = mdm_err_set(err, MDM_ENOMEM, "%s: cannot create a Lua state", path);
        goto out;
    }
    lua_pushcfunction(L, sandbox_main);
    lua_pushlightuserdata(L, c);
    int status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK) {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (c->killed)
            rc = mdm_err_set(err, MDM_ECONFIG,
                             "%s: config takes too long (more than %lu million instructions "
                             "or %llu s)", path, CONFIG_INSN_LIMIT / 1000000,
                             CONFIG_TIME_LIMIT_NS / 1000000000ull);
        else if (status == LUA_ERRMEM || (c->mem_exceeded && msg && strcmp(msg, "not enough memory") == 0))
            rc = mdm_err_set(err, MDM_ECONFIG, "%s: config uses too much memory (more than %zu MiB)",
                             path, CONFIG_MEM_LIMIT >> 20);
        else if (msg)
            rc = mdm_err_set(err, MDM_ECONFIG, "%s", msg);
        else
            rc = mdm_err_set(err, MDM_ECONFIG, "%s: error object is a %s value", path,
                             value_type(L, -1));
        goto out;
    }
    if (c->bad_return) {
        rc = mdm_err_set(err, MDM_ECONFIG, "%s: must return a table (got %s)", path,
                         c->bad_return);
        goto out;
    }
    if (c->nerrs == 0) {
        resolve_paths(c);
        check_combinations(c);
    }
    if (c->nerrs > 0) {
        rc = report_errors(c, err);
        goto out;
    }
    mdm_config_finish(&tmp);
    *cfg = tmp;
    memset(&tmp, 0, sizeof(tmp));

out:
    if (L)
        lua_close(L);
    mdm_config_free(&tmp);
    mdm_free(src);
    mdm_free(c);
    return rc;
}

/* ---- writers ----------------------------------------------------------------- */

static void put_lua_string(mdm_buf_t *out, const char *s)
{
    mdm_buf_putc(out, '"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            mdm_buf_printf(out, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            mdm_buf_printf(out, "\\%03u", ch);
        else
            mdm_buf_putc(out, (char)ch);
    }
    mdm_buf_putc(out, '"');
}

/* The default of o as a Lua value ("nil" when not set). */
static void put_default(mdm_buf_t *out, const opt_t *o)
{
    if (o->def == NULL) {
        mdm_buf_puts(out, "nil");
        return;
    }
    switch (o->type) {
    case OPT_BOOL:
    case OPT_INT:
        mdm_buf_puts(out, o->def);
        break;
    case OPT_LIST: {
        if (o->def[0] == '\0') {
            mdm_buf_puts(out, "{}");
            break;
        }
        mdm_buf_puts(out, "{ ");
        const char *p = o->def;
        while (*p) {
            size_t len = strcspn(p, ",");
            char *item = mdm_strndup(p, len);
            if (p != o->def)
                mdm_buf_puts(out, ", ");
            put_lua_string(out, item);
            mdm_free(item);
            p += len;
            if (*p == ',')
                p++;
        }
        mdm_buf_puts(out, " }");
        break;
    }
    default:
        put_lua_string(out, o->def);
        break;
    }
}

static void section_of(const opt_t *o, char *out, size_t len)
{
    const char *dot = strrchr(o->key, '.');
    snprintf(out, len, "%.*s", dot ? (int)(dot - o->key) : 0, o->key);
}

static const char *leaf_of(const opt_t *o)
{
    const char *dot = strrchr(o->key, '.');
    return dot ? dot + 1 : o->key;
}

static void put_allowed(mdm_buf_t *out, const opt_t *o, const char *quote)
{
    for (size_t i = 0; o->allowed[i]; i++) {
        if (i > 0)
            mdm_buf_puts(out, o->allowed[i + 1] ? ", " : " or ");
        mdm_buf_printf(out, "%s%s%s", quote, o->allowed[i], quote);
    }
}

void mdm_config_write_defaults(mdm_buf_t *out)
{
    mdm_buf_puts(out,
                 "-- moonmdm configuration.\n"
                 "--\n"
                 "-- This file is Lua and returns a table. Every setting is shown with its\n"
                 "-- default; keep only what you change. Settings shown as comments default\n"
                 "-- to a file in data_dir or are not set.\n"
                 "--\n"
                 "-- Sizes: a number of bytes or \"64KiB\", \"8MiB\", \"1GiB\" (KB, MB, GB: 1000).\n"
                 "-- Durations: a number of seconds or \"250ms\", \"30s\", \"5m\", \"2h\", \"30d\".\n"
                 "-- Relative paths are resolved against the directory of this file.\n"
                 "-- Secrets can come from the environment: os.getenv(\"NAME\").\n"
                 "return {\n");
    char section[64] = "";
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        char sec[64];
        section_of(o, sec, sizeof(sec));
        if (strcmp(sec, section) != 0) {
            if (section[0])
                mdm_buf_puts(out, "  },\n");
            mdm_buf_printf(out, "\n  %s = {\n", sec);
            snprintf(section, sizeof(section), "%s", sec);
        } else if (i > 0) {
            mdm_buf_putc(out, '\n');
        }
        const char *indent = section[0] ? "    " : "  ";
        mdm_buf_printf(out, "%s-- %s", indent, o->doc);
        if (o->type == OPT_ENUM) {
            mdm_buf_puts(out, " One of ");
            put_allowed(out, o, "\"");
            mdm_buf_putc(out, '.');
        }
        mdm_buf_putc(out, '\n');
        bool commented = o->def == NULL || (o->flags & F_DATADIR);
        mdm_buf_printf(out, "%s%s%s = ", indent, commented ? "-- " : "", leaf_of(o));
        put_default(out, o);
        mdm_buf_puts(out, ",\n");
    }
    if (section[0])
        mdm_buf_puts(out, "  },\n");
    mdm_buf_puts(out, "}\n");
}

static const char *type_name(const opt_t *o)
{
    switch (o->type) {
    case OPT_STRING:
        return o->flags & F_PATH ? "path" : "string";
    case OPT_BOOL:
        return "boolean";
    case OPT_INT:
        return "integer";
    case OPT_SIZE:
        return "size";
    case OPT_DURATION:
        return "duration";
    case OPT_LIST:
        return o->flags & F_PATH ? "list of paths" : "list of strings";
    case OPT_ENUM:
        return "one of";
    }
    return "?";
}

/* Appends text to a Markdown table cell. */
static void put_md_cell(mdm_buf_t *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            mdm_buf_puts(out, "\\|");
        else
            mdm_buf_putc(out, *s);
    }
}

/* Appends the accepted range of a number, when it is narrower than "not
 * negative" (a minimum above 1, or a maximum). */
static void put_md_range(mdm_buf_t *out, const opt_t *o)
{
    if ((o->type != OPT_INT && o->type != OPT_SIZE && o->type != OPT_DURATION) ||
        (o->min <= 1 && o->max == 0))
        return;
    const char *unit = o->type == OPT_SIZE ? " bytes" : o->type == OPT_DURATION ? " ms" : "";
    if (o->max != 0)
        mdm_buf_printf(out, " Accepted: %llu to %llu%s.", (unsigned long long)o->min,
                       (unsigned long long)o->max, unit);
    else
        mdm_buf_printf(out, " Accepted: at least %llu%s.", (unsigned long long)o->min, unit);
}

void mdm_config_write_markdown(mdm_buf_t *out)
{
    mdm_buf_puts(
        out,
        "# Configuration\n"
        "\n"
        "<!-- Generated from the table in core/config.c; do not edit. To regenerate, run\n"
        "     MOONMDM_WRITE_DOCS=1 ctest --test-dir <build dir> -R unit/test_config -->\n"
        "\n"
        "moonmdm reads one configuration file: a Lua script that returns a table.\n"
        "\n"
        "```lua\n"
        "return {\n"
        "  data_dir = \"/var/lib/moonmdm\",\n"
        "  listen = { \"0.0.0.0:8443\" },\n"
        "  http = { max_body_bytes = \"16MiB\", read_timeout = \"1m\" },\n"
        "  scep = { static_challenge = os.getenv(\"MOONMDM_SCEP_CHALLENGE\") },\n"
        "}\n"
        "```\n"
        "\n"
        "Every key is optional. An unknown key or a value of the wrong type stops\n"
        "start-up with a message that names the file, the line and the key.\n"
        "`moonmdm config defaults` prints a complete file with every default.\n"
        "\n"
        "- Sizes: a number of bytes, or a string such as `\"512\"`, `\"64KiB\"`,\n"
        "  `\"8MiB\"`, `\"1GiB\"` (`K`, `M`, `G` count 1024; `KB`, `MB`, `GB` count 1000).\n"
        "- Durations: a number of seconds, or a string such as `\"250ms\"`, `\"30s\"`,\n"
        "  `\"5m\"`, `\"2h\"`, `\"30d\"` (parts can be combined: `\"1h30m\"`).\n"
        "- Lists of strings also take a single string.\n"
        "- Relative paths are resolved against the directory of the config file.\n"
        "  Defaults written `<data_dir>/...` follow `data_dir`.\n"
        "- The file runs in a sandbox: the base functions (without `dofile`,\n"
        "  `loadfile`, `load`, `require` and `xpcall`; `setmetatable` refuses\n"
        "  `__gc`), `string`, `table`, `math` and `os.getenv`, with at most\n"
        "  16 MiB of memory and 10 million instructions.\n"
        "\n"
        "| key | type | default | description |\n"
        "|---|---|---|---|\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const opt_t *o = &options[i];
        mdm_buf_printf(out, "| `%s` | %s", o->key, type_name(o));
        if (o->type == OPT_ENUM) {
            mdm_buf_putc(out, ' ');
            put_allowed(out, o, "`");
        }
        mdm_buf_puts(out, " | ");
        if (o->def_doc) {
            put_md_cell(out, o->def_doc);
        } else if (o->def == NULL) {
            mdm_buf_puts(out, "not set");
        } else {
            mdm_buf_t v = MDM_BUF_INIT;
            put_default(&v, o);
            mdm_buf_putc(out, '`');
            put_md_cell(out, v.data);
            mdm_buf_putc(out, '`');
            mdm_buf_free(&v);
        }
        mdm_buf_puts(out, " | ");
        put_md_cell(out, o->doc);
        put_md_range(out, o);
        mdm_buf_puts(out, " |\n");
    }
}
