/* Configuration: a Lua file that returns a table, evaluated once at start-up
 * in a throwaway, sandboxed Lua state. Every setting has a documented default
 * (the table in config.c is the single source: `moonmdm config defaults` and
 * docs/CONFIG.md are generated from it). An unknown key or a value of the
 * wrong type stops start-up with a message that names the key, the file and
 * the line. Relative paths are resolved against the directory of the config
 * file. */
#ifndef MDM_CONFIG_H
#define MDM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct mdm_strlist {
    char **v;
    size_t n;
} mdm_strlist_t;

typedef struct mdm_config {
    char *file;               /* the config file read (NULL: defaults only) */
    char *data_dir;           /* data_dir */

    /* listeners */
    mdm_strlist_t listen;     /* listen: HTTPS addresses "host:port" */
    mdm_strlist_t listen_plain; /* listen_plain: plain HTTP (behind a proxy) */

    /* tls */
    char *tls_cert;           /* tls.cert */
    char *tls_key;            /* tls.key */
    char *tls_chain;          /* tls.chain: intermediates sent after tls.cert */
    mdm_strlist_t tls_client_ca; /* tls.client_ca: CA files that device certs chain to */
    bool tls_request_client_cert; /* tls.request_client_cert */
    char *tls_ciphers;        /* tls.ciphers (TLS 1.2) */
    char *tls_ciphersuites;   /* tls.ciphersuites (TLS 1.3) */
    char *tls_min_version;    /* tls.min_version: "1.2" or "1.3" */
    bool tls_allow_insecure_key_mode; /* tls.allow_insecure_key_mode */

    /* http */
    size_t http_max_header_bytes;  /* http.max_header_bytes */
    size_t http_max_body_bytes;    /* http.max_body_bytes */
    uint64_t http_read_timeout_ms; /* http.read_timeout */
    uint64_t http_idle_timeout_ms; /* http.idle_timeout */
    uint64_t http_write_timeout_ms; /* http.write_timeout */
    size_t http_max_connections;   /* http.max_connections */
    size_t http_max_pipeline;      /* http.max_pipeline: requests buffered per connection */
    uint64_t http_shutdown_grace_ms; /* http.shutdown_grace */

    /* proxy */
    char *proxy_cert_header;  /* proxy.cert_header: header with the client cert (plain listener) */

    /* log */
    char *log_level;          /* log.level */
    bool log_requests;        /* log.requests: one line per request */

    /* store */
    char *store_backend;      /* store.backend */
    char *store_path;         /* store.path (default: <data_dir>/db) */
    size_t store_map_size;    /* store.map_size */
    size_t store_map_max;     /* store.map_max */
    bool store_sync;          /* store.sync */

    /* policy */
    char *policy_dir;         /* policy.dir */
    size_t policy_memory_max; /* policy.memory_max: memory cap of the policy's Lua state */
    uint64_t policy_budget_ms; /* policy.budget: wall-clock budget of one hook call */
    mdm_strlist_t policy_hook_budgets; /* policy.hook_budgets: "hook=duration" overrides */
    uint64_t policy_instructions; /* policy.instructions: Lua instructions per hook call */
    uint64_t policy_load_budget_ms; /* policy.load_budget: loading the files and self_test */
    bool policy_watch;        /* policy.watch: reload when a file changes */
    uint64_t policy_decision_log_max; /* policy.decision_log_max: entries kept (0: off) */
    uint64_t policy_decision_log_age_ms; /* policy.decision_log_age: entries pruned after */
    bool policy_decision_log_all; /* policy.decision_log_all: also calls that decided nothing */

    /* ca */
    char *ca_cert;            /* ca.cert */
    char *ca_key;             /* ca.key */
    char *ca_chain;           /* ca.chain: the CA's own issuers, for an intermediate */
    uint64_t ca_validity_ms;  /* ca.validity: validity of issued device certificates */
    char *ca_crl_url;         /* ca.crl_url: CRL distribution point put into certificates */

    /* scep */
    char *scep_path;          /* scep.path */
    char *scep_ra_cert;       /* scep.ra_cert */
    char *scep_ra_key;        /* scep.ra_key */
    char *scep_static_challenge; /* scep.static_challenge */
    uint64_t scep_challenge_ttl_ms; /* scep.challenge_ttl */
    bool scep_allow_single_des; /* scep.allow_single_des */

    /* mdm */
    char *mdm_checkin_path;   /* mdm.checkin_path */
    char *mdm_connect_path;   /* mdm.connect_path */
    char *mdm_combined_path;  /* mdm.path */
    bool mdm_bind_on_first_sight; /* mdm.bind_on_first_sight */
    uint64_t mdm_result_retention_ms; /* mdm.result_retention */
    uint64_t mdm_notnow_max;  /* mdm.notnow_max */

    /* enroll */
    char *enroll_base_url;    /* enroll.base_url: https://host[:port] devices reach */
    char *enroll_path;        /* enroll.path */
    char *enroll_ota_path;    /* enroll.ota_path */
    char *enroll_identifier;  /* enroll.profile_identifier */
    char *enroll_organization; /* enroll.organization */
    char *enroll_display_name; /* enroll.display_name */
    char *enroll_topic;       /* enroll.topic: APNs topic when no push certificate is loaded */
    bool enroll_sign_message; /* enroll.sign_message */
    uint64_t enroll_access_rights; /* enroll.access_rights */
    mdm_strlist_t enroll_ota_trust; /* enroll.ota_trust: CAs of OTA phase-1 device certificates */
    bool enroll_install_ca;   /* enroll.install_ca: put the CA certificate in the profile */
    uint64_t enroll_max_in_flight; /* enroll.max_in_flight: sign-ins waiting for a decision */

    /* profiles */
    char *profiles_dir;       /* profiles.dir: .mobileconfig files loaded at start */
    bool profiles_sign;       /* profiles.sign */
    bool profiles_encrypt;    /* profiles.encrypt */

    /* apns */
    char *apns_url;           /* apns.url: "production", "sandbox" or a base URL */
    char *apns_cert;          /* apns.cert: push certificate (PEM) */
    char *apns_key;           /* apns.key: its private key (PEM) */
    char *apns_p12;           /* apns.p12: push certificate and key as PKCS#12 */
    char *apns_p12_password;  /* apns.p12_password */
    char *apns_ca_file;       /* apns.ca_file: extra trust anchors for the APNs server */
    uint64_t apns_expiration_ms; /* apns.expiration: 0 = deliver now or drop */
    uint64_t apns_timeout_ms; /* apns.timeout: one request to APNs */
    size_t apns_max_in_flight; /* apns.max_in_flight */
    size_t apns_connections;  /* apns.connections: per push certificate */
    uint64_t apns_coalesce_window_ms; /* apns.coalesce_window */
    uint64_t apns_retry_max;  /* apns.retry_max */
    uint64_t apns_retry_delay_ms; /* apns.retry_delay: first backoff step */
    uint64_t apns_sweep_interval_ms; /* apns.sweep_interval: 0 = off */
    uint64_t apns_sweep_after_ms; /* apns.sweep_after */

    /* security */
    uint64_t security_auth_fail_threshold; /* security.auth_fail_threshold */
    uint64_t security_auth_backoff_ms;     /* security.auth_backoff */
    uint64_t security_auth_backoff_max_ms; /* security.auth_backoff_max */
    uint64_t security_auth_window_ms;      /* security.auth_window */

    /* api */
    bool api_enabled;         /* api.enabled */
} mdm_config_t;

/* Fills cfg with every default. */
void mdm_config_defaults(mdm_config_t *cfg);

/* Reads path over the defaults. On error cfg is left with defaults freed
 * and err says "<file>:<line>: <key>: <problem>". */
int mdm_config_load(mdm_config_t *cfg, const char *path, mdm_err_t *err);

/* Resolves derived defaults that depend on data_dir (tls.cert, ca.key,
 * store.path, ...). Called by mdm_config_load; call it yourself after
 * mdm_config_defaults when no file is read. */
void mdm_config_finish(mdm_config_t *cfg);

void mdm_config_free(mdm_config_t *cfg);

/* Writes the documented default config (a valid config file) to buf. */
struct mdm_buf;
void mdm_config_write_defaults(struct mdm_buf *out);

/* Writes docs/CONFIG.md-style Markdown: one row per key. */
void mdm_config_write_markdown(struct mdm_buf *out);

/* Parses sizes ("64MiB", "1GiB", 4096) and durations ("500ms", "30s",
 * "5m", "1h", "30d"; a bare number is seconds). Return 0 or MDM_EPARSE. */
int mdm_parse_size(const char *s, size_t *out);
int mdm_parse_duration_ms(const char *s, uint64_t *out);

/* Parses a listen address: "1.2.3.4:port" or "[v6]:port" with an IP
 * address (no host name). 0 or MDM_EINVAL. */
int mdm_parse_listen(const char *spec, char *host, size_t hn, int *port);

/* The longest duration a setting may have: a century. */
#define MDM_DURATION_MAX_MS ((uint64_t)36500 * 86400000)

#endif
