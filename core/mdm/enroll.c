#include "mdm/enroll.h"

#include <getopt.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/guard.h"
#include "cli.h"
#include "config.h"
#include "crypto/ca.h"
#include "crypto/certdb.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "mdm/mdm.h"
#include "mdm/profiles.h"
#include "net/tls.h"
#include "scep/challenge.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

#define PROFILE_CTYPE "application/x-apple-aspen-config"

typedef struct mdm_enroll {
    mdm_enroll_auth_fn auth;
    char *base_url;
    X509_STORE *ota_trust;      /* phase-1 device certificates (Apple's device CA) */
    X509_STORE *device_trust;   /* phase-3 identities: our CA */
    mdm_guard_t *guard;         /* failed sign-ins by address and by user */
    mdm_metric_t *m_allowed, *m_denied, *m_ota, *m_busy;
    uint64_t in_flight;         /* sign-ins waiting for their decision */
} mdm_enroll_t;

static mdm_enroll_t *enroll_of(mdm_server_t *s)
{
    return s->enroll;
}

void mdm_enroll_set_auth(mdm_server_t *s, mdm_enroll_auth_fn fn)
{
    if (s->enroll)
        enroll_of(s)->auth = fn;
}

const char *mdm_enroll_base_url(mdm_server_t *s)
{
    mdm_enroll_t *e = enroll_of(s);
    if (e && e->base_url)
        return e->base_url;
    return "https://localhost:8443";
}

const char *mdm_enroll_topic(mdm_server_t *s)
{
    if (s->topic_fn != NULL) {
        const char *t = s->topic_fn(s);
        if (t != NULL)
            return t;
    }
    return s->cfg->enroll_topic;
}

static char *derive_base_url(const mdm_config_t *cfg)
{
    if (cfg->enroll_base_url != NULL) {
        char *u = mdm_strdup(cfg->enroll_base_url);
        size_t n = strlen(u);
        while (n > 0 && u[n - 1] == '/')
            u[--n] = '\0';
        return u;
    }
    if (cfg->listen.n == 0)
        return mdm_strdup("https://localhost:8443");
    const char *a = cfg->listen.v[0];
    const char *colon = strrchr(a, ':');
    const char *port = colon ? colon + 1 : "8443";
    /* Wildcard and loopback addresses are not names a device can use; the
     * development certificate names localhost. */
    if (strncmp(a, "0.0.0.0:", 8) == 0 || strncmp(a, "127.0.0.1:", 10) == 0 ||
        strncmp(a, "[::]:", 5) == 0 || strncmp(a, "[::1]:", 6) == 0)
        return mdm_sprintf("https://localhost:%s", port);
    return mdm_sprintf("https://%s", a);
}

/* ---- the profile --------------------------------------------------------- */

static void payload_common(plist_t p, const char *type, const char *identifier,
                           const char *display, char uuid_out[37])
{
    mdm_uuid(uuid_out);
    mdm_pl_set_str(p, "PayloadType", type);
    mdm_pl_set_uint(p, "PayloadVersion", 1);
    mdm_pl_set_str(p, "PayloadIdentifier", identifier);
    mdm_pl_set_str(p, "PayloadUUID", uuid_out);
    mdm_pl_set_str(p, "PayloadDisplayName", display);
}

static plist_t subject_rdn(const char *oid, const char *value)
{
    plist_t pair = plist_new_array();
    plist_array_append_item(pair, plist_new_string(oid));
    plist_array_append_item(pair, plist_new_string(value));
    plist_t rdn = plist_new_array();
    plist_array_append_item(rdn, pair);
    return rdn;
}

int mdm_enroll_build_profile(mdm_server_t *s, const mdm_enroll_profile_opts_t *o, plist_t *out,
                             mdm_err_t *err)
{
    const mdm_config_t *cfg = s->cfg;
    const char *base = mdm_enroll_base_url(s);
    const char *topic = mdm_enroll_topic(s);
    if (o->include_mdm && (topic == NULL || topic[0] == '\0'))
        return mdm_err_set(err, MDM_ECONFIG,
                           "no APNs topic: upload a push certificate (PUT /v1/pushcert) or set "
                           "enroll.topic");
    char *id = o->identifier_suffix
                   ? mdm_sprintf("%s.%s", cfg->enroll_identifier, o->identifier_suffix)
                   : mdm_strdup(cfg->enroll_identifier);
    plist_t top = plist_new_dict();
    char top_uuid[37], uuid[37], scep_uuid[37] = "";
    payload_common(top, o->profile_service ? "Profile Service" : "Configuration", id,
                   cfg->enroll_display_name, top_uuid);
    mdm_pl_set_str(top, "PayloadOrganization", cfg->enroll_organization);
    mdm_pl_set_str(top, "PayloadDescription",
                   o->profile_service
                       ? "Identifies this device to its organisation's device management."
                       : "Enrolls this device in its organisation's device management.");
    if (o->profile_service) {
        plist_t content = plist_new_dict();
        char *url = mdm_sprintf("%s%s", base, cfg->enroll_ota_path);
        mdm_pl_set_str(content, "URL", url);
        mdm_free(url);
        plist_t attrs = plist_new_array();
        static const char *const names[] = {"UDID",   "IMEI",   "ICCID", "VERSION",
                                            "PRODUCT", "SERIAL", "MEID",  "DEVICE_NAME"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            plist_array_append_item(attrs, plist_new_string(names[i]));
        plist_dict_set_item(content, "DeviceAttributes", attrs);
        mdm_pl_set_str(content, "Challenge", o->challenge);
        plist_dict_set_item(top, "PayloadContent", content);
        *out = top;
        mdm_free(id);
        return 0;
    }
    plist_t payloads = plist_new_array();

    if (cfg->enroll_install_ca && s->ca != NULL) {
        plist_t ca = plist_new_dict();
        char *cid = mdm_sprintf("%s.ca", id);
        payload_common(ca, "com.apple.security.root", cid, "Device management CA", uuid);
        mdm_free(cid);
        mdm_buf_t der = MDM_BUF_INIT;
        mdm_cert_to_der(s->ca->cert, &der);
        mdm_pl_set_data(ca, "PayloadContent", der.data, der.len);
        mdm_pl_set_str(ca, "PayloadCertificateFileName", "moonmdm-ca.cer");
        mdm_buf_free(&der);
        plist_array_append_item(payloads, ca);
    }
    if (o->include_scep) {
        plist_t scep = plist_new_dict();
        char *sid = mdm_sprintf("%s.scep", id);
        payload_common(scep, "com.apple.security.scep", sid, "Device identity", scep_uuid);
        mdm_free(sid);
        plist_t c = plist_new_dict();
        char *url = mdm_sprintf("%s%s", base, cfg->scep_path);
        mdm_pl_set_str(c, "URL", url);
        mdm_free(url);
        mdm_pl_set_str(c, "Name", "moonmdm");
        mdm_pl_set_str(c, "Challenge", o->challenge);
        mdm_pl_set_uint(c, "Keysize", 2048);
        mdm_pl_set_str(c, "Key Type", "RSA");
        mdm_pl_set_uint(c, "Key Usage", 5);
        plist_t subject = plist_new_array();
        char cn[320];
        snprintf(cn, sizeof(cn), "%s%s", o->user && o->user[0] ? o->user : "device",
                 o->user && o->user[0] ? "'s device" : "");
        plist_array_append_item(subject, subject_rdn("O", cfg->enroll_organization));
        plist_array_append_item(subject, subject_rdn("CN", cn));
        plist_dict_set_item(c, "Subject", subject);
        plist_dict_set_item(scep, "PayloadContent", c);
        plist_array_append_item(payloads, scep);
    }
    if (o->include_mdm) {
        plist_t m = plist_new_dict();
        char *mid = mdm_sprintf("%s.mdm", id);
        payload_common(m, "com.apple.mdm", mid, "Device management", uuid);
        mdm_free(mid);
        if (scep_uuid[0])
            mdm_pl_set_str(m, "IdentityCertificateUUID", scep_uuid);
        mdm_pl_set_str(m, "Topic", topic);
        char *server_url = mdm_sprintf("%s%s", base, cfg->mdm_connect_path);
        char *checkin_url = mdm_sprintf("%s%s", base, cfg->mdm_checkin_path);
        mdm_pl_set_str(m, "ServerURL", server_url);
        mdm_pl_set_str(m, "CheckInURL", checkin_url);
        mdm_free(server_url);
        mdm_free(checkin_url);
        mdm_pl_set_uint(m, "AccessRights", cfg->enroll_access_rights);
        mdm_pl_set_bool(m, "SignMessage", cfg->enroll_sign_message);
        mdm_pl_set_bool(m, "CheckOutWhenRemoved", true);
        plist_t caps = plist_new_array();
        plist_array_append_item(caps, plist_new_string("com.apple.mdm.per-user-connections"));
        plist_array_append_item(caps, plist_new_string("com.apple.mdm.bootstraptoken"));
        plist_dict_set_item(m, "ServerCapabilities", caps);
        plist_array_append_item(payloads, m);
    }
    plist_dict_set_item(top, "PayloadContent", payloads);
    mdm_free(id);
    *out = top;
    return 0;
}

/* Signs a profile dict with the server certificate (when profile signing
 * is on) into out. */
static int sign_profile(mdm_server_t *s, plist_t profile, mdm_buf_t *out, mdm_err_t *err)
{
    mdm_buf_t xml = MDM_BUF_INIT;
    mdm_plist_to_xml_buf(profile, &xml);
    const mdm_profiles_t *p = mdm_profiles_of(s);
    int rc = 0;
    if (p != NULL && p->sign && p->sign_cert != NULL) {
        rc = mdm_cms_sign(p->sign_cert, p->sign_key, p->sign_chain, xml.data, xml.len, out, err);
    } else {
        mdm_buf_reset(out);
        mdm_buf_append(out, xml.data, xml.len);
    }
    mdm_buf_free(&xml);
    return rc;
}

/* ---- authentication ------------------------------------------------------ */

static void parse_form(const char *body, size_t len, plist_t form)
{
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (eq != NULL && eq > p) {
            mdm_buf_t k = MDM_BUF_INIT, v = MDM_BUF_INIT;
            if (mdm_url_decode(&k, p, (size_t)(eq - p), 1) == 0 &&
                mdm_url_decode(&v, eq + 1, (size_t)(stop - eq - 1), 1) == 0 && k.len < 64 &&
                v.len < 4096 && strlen(k.data) == k.len && strlen(v.data ? v.data : "") == v.len)
                mdm_pl_set_str(form, k.data, v.data ? v.data : "");
            mdm_buf_free(&k);
            mdm_buf_free(&v);
        }
        p = stop + 1;
    }
}

/* A sign-in waiting for its decision (the authenticate hook may wait for
 * password hashes made in the thread pool), and what follows it (then). */
typedef struct auth_job auth_job_t;
struct auth_job {
    mdm_req_t *req;
    mdm_enroll_auth_req_t ar;
    mdm_enroll_auth_t decision;
    void (*then)(auth_job_t *j);
    /* the enrollment page */
    mdm_buf_t basic;               /* Authorization: Basic, decoded */
    plist_t form;
    bool browser;                  /* no Authorization header: answer with the page */
    char addr_key[80], user_key[300]; /* the guard's keys, begun (mdm_guard_begin) */
    /* OTA phase 1 */
    plist_t attrs;                 /* the device's signed attributes */
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
};

static auth_job_t *auth_job_new(mdm_req_t *req, void (*then)(auth_job_t *j))
{
    auth_job_t *j = mdm_calloc(1, sizeof(*j));
    j->req = req;
    j->then = then;
    j->basic = (mdm_buf_t)MDM_BUF_INIT;
    j->ar = (mdm_enroll_auth_req_t){.method = req->method_name,
                                    .path = req->path,
                                    .query = req->query,
                                    .remote_addr = req->remote_addr,
                                    .headers = req->headers,
                                    .nheaders = req->nheaders};
    return j;
}

static void auth_job_free(auth_job_t *j)
{
    if (j->ar.password)
        OPENSSL_cleanse((void *)j->ar.password, strlen(j->ar.password));
    plist_free(j->form);
    plist_free(j->attrs);
    mdm_buf_free(&j->basic);
    mdm_free(j);
}

/* The decision is in: count and log it (once per sign-in), then go on. */
static void auth_decided(void *arg)
{
    auth_job_t *j = arg;
    mdm_enroll_t *e = enroll_of(j->req->server);
    e->in_flight--;
    const mdm_enroll_auth_req_t *ar = &j->ar;
    mdm_enroll_auth_t *out = &j->decision;
    char uq[300], rq[300];
    if (out->allow && out->user[0] == '\0')
        snprintf(out->user, sizeof(out->user), "%s", ar->user ? ar->user : "");
    /* The name goes into the profile (XML) and the certificate's subject:
     * one that cannot be written there is refused, not sent broken. */
    bool bad_name = !mdm_utf8_valid(out->user, strlen(out->user));
    for (const char *p = out->user; *p && !bad_name; p++)
        bad_name = (unsigned char)*p < 0x20 || *p == 0x7f;
    if (out->allow && bad_name) {
        out->allow = false;
        snprintf(out->reason, sizeof(out->reason),
                 "the user name holds control characters or is not UTF-8");
    }
    mdm_metric_add(out->allow ? e->m_allowed : e->m_denied, 1);
    mdm_log(out->allow ? MDM_LOG_INFO : MDM_LOG_WARN, j->req->id, "enroll.authenticate",
            "remote=%s user=%s allow=%s reason=%s", ar->remote_addr,
            mdm_logq(uq, sizeof(uq), out->allow ? out->user : ar->user),
            out->allow ? "true" : "false",
            mdm_logq(rq, sizeof(rq), out->reason[0] ? out->reason : NULL));
    j->then(j);
    auth_job_free(j);
}

/* Asks for the decision; j->then runs with it, now or later. */
static void run_auth(auth_job_t *j)
{
    mdm_enroll_t *e = enroll_of(j->req->server);
    memset(&j->decision, 0, sizeof(j->decision));
    e->in_flight++;
    if (e->auth == NULL) {
        snprintf(j->decision.reason, sizeof(j->decision.reason),
                 "no authenticate hook in the policy: nobody may enroll");
        auth_decided(j);
        return;
    }
    e->auth(j->req->server, &j->ar, &j->decision, j->req->id, auth_decided, j);
}

/* ---- the page ------------------------------------------------------------ */

static void html_escape(mdm_buf_t *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': mdm_buf_puts(b, "&lt;"); break;
        case '>': mdm_buf_puts(b, "&gt;"); break;
        case '&': mdm_buf_puts(b, "&amp;"); break;
        case '"': mdm_buf_puts(b, "&quot;"); break;
        case '\'': mdm_buf_puts(b, "&#39;"); break;
        default: mdm_buf_putc(b, *s);
        }
    }
}

static void security_headers(mdm_req_t *req)
{
    mdm_resp_header(req, "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                    "frame-ancestors 'none'; base-uri 'none'");
    mdm_resp_header(req, "Cache-Control", "no-store");
    mdm_resp_header(req, "X-Frame-Options", "DENY");
    mdm_resp_header(req, "X-Content-Type-Options", "nosniff");
    mdm_resp_header(req, "Referrer-Policy", "no-referrer");
}

static void send_page(mdm_req_t *req, int status, const char *message, const char *user)
{
    mdm_server_t *s = req->server;
    mdm_buf_t *b = &req->resp_body;
    mdm_buf_reset(b);
    mdm_buf_puts(b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                    "<title>");
    html_escape(b, s->cfg->enroll_display_name);
    mdm_buf_puts(b, "</title><style>"
                    "body{font:17px -apple-system,system-ui,sans-serif;max-width:28em;"
                    "margin:2em auto;padding:0 1em;color:#111;background:#fff}"
                    "label{display:block;margin-top:1em;font-weight:600}"
                    "input{font:inherit;width:100%;box-sizing:border-box;padding:.6em;"
                    "border:1px solid #767676;border-radius:6px}"
                    "button{font:inherit;margin-top:1.5em;padding:.7em 1.4em;border:0;"
                    "border-radius:6px;background:#0a58ca;color:#fff}"
                    "button:focus,input:focus{outline:3px solid #ffbf47}"
                    ".msg{padding:.8em;border-radius:6px;background:#fdecea;color:#5f2120}"
                    "</style></head><body><main><h1>");
    html_escape(b, s->cfg->enroll_display_name);
    mdm_buf_puts(b, "</h1>");
    if (message) {
        mdm_buf_puts(b, "<p class=\"msg\" role=\"alert\">");
        html_escape(b, message);
        mdm_buf_puts(b, "</p>");
    }
    mdm_buf_puts(b, "<p>Sign in to install the profile that puts this device under the "
                    "management of ");
    html_escape(b, s->cfg->enroll_organization);
    mdm_buf_puts(b, ".</p><form method=\"post\" action=\"");
    html_escape(b, s->cfg->enroll_path);
    /* The form asks for what the page was asked for: the OTA profile
     * service when ?ota was given. */
    mdm_buf_t ota = MDM_BUF_INIT;
    if (mdm_req_query(req, "ota", &ota, true) == 0)
        mdm_buf_puts(b, "?ota=1");
    mdm_buf_free(&ota);
    mdm_buf_puts(b, "\"><label for=\"username\">User name</label>"
                    "<input id=\"username\" name=\"username\" autocomplete=\"username\" "
                    "autocapitalize=\"none\" required value=\"");
    html_escape(b, user ? user : "");
    mdm_buf_puts(b, "\"><label for=\"password\">Password</label>"
                    "<input id=\"password\" name=\"password\" type=\"password\" "
                    "autocomplete=\"current-password\" required>"
                    "<button type=\"submit\">Sign in and download the profile</button>"
                    "</form></main></body></html>\n");
    security_headers(req);
    mdm_resp_send_buf(req, status, "text/html; charset=utf-8");
}

struct challenge_ctx {
    const char *owner;
    const char *udid;          /* the device it is for, or NULL */
    int purpose;
    uint64_t ttl;
    const unsigned char *slot; /* replaces the previous one of this slot */
    mdm_challenge_t ch;
};

static int challenge_fn(mdm_txn_t *txn, void *arg)
{
    struct challenge_ctx *c = arg;
    if (c->slot != NULL)
        return mdm_challenge_create_in_slot(txn, c->slot, c->owner, c->udid, c->purpose, c->ttl,
                                            &c->ch);
    return mdm_challenge_create_for(txn, c->owner, c->udid, c->purpose, c->ttl, &c->ch);
}

/* Creates a one-time challenge for user and answers with the signed
 * enrollment profile (or, profile_service, the OTA phase-1 profile). */
static void answer_profile(mdm_req_t *req, const char *user, bool profile_service)
{
    mdm_server_t *s = req->server;
    struct challenge_ctx c = {.owner = user,
                              .purpose = profile_service ? MDM_CHALLENGE_OTA : MDM_CHALLENGE_SCEP,
                              .ttl = s->cfg->scep_challenge_ttl_ms};
    int rc = mdm_store_update(s->store, challenge_fn, &c);
    if (rc != 0) {
        mdm_resp_json_error(req, rc == MDM_ENOSPACE ? 503 : 500, "store", mdm_strerror(rc));
        return;
    }
    mdm_enroll_profile_opts_t o = {.user = user,
                                   .challenge = c.ch.text,
                                   .include_mdm = true,
                                   .include_scep = true,
                                   .profile_service = profile_service};
    plist_t profile = NULL;
    mdm_err_t err = {0};
    mdm_buf_t out = MDM_BUF_INIT;
    rc = mdm_enroll_build_profile(s, &o, &profile, &err);
    if (rc == 0)
        rc = sign_profile(s, profile, &out, &err);
    plist_free(profile);
    OPENSSL_cleanse(c.ch.text, sizeof(c.ch.text));
    if (rc != 0) {
        mdm_log(MDM_LOG_ERROR, req->id, "enroll.profile_failed", "error=\"%s\"", err.msg);
        mdm_resp_text(req, rc == MDM_ECONFIG ? 503 : 500,
                      rc == MDM_ECONFIG ? err.msg : "the enrollment profile could not be made");
        mdm_buf_free(&out);
        return;
    }
    char uq[300];
    mdm_log(MDM_LOG_INFO, req->id, "enroll.profile_issued", "user=%s kind=%s bytes=%zu",
            mdm_logq(uq, sizeof(uq), user), profile_service ? "profile_service" : "enrollment",
            out.len);
    security_headers(req);
    mdm_resp_header(req, "Content-Disposition", "attachment; filename=\"enroll.mobileconfig\"");
    mdm_resp_send(req, 200, PROFILE_CTYPE, out.data, out.len);
    mdm_buf_free(&out);
}

/* How a refused request is answered: the page, JSON (the enrollment page
 * with an Authorization header), or text (the OTA profile service). */
enum { ANSWER_PAGE, ANSWER_JSON, ANSWER_TEXT };

/* True (and the request answered with 503) when enroll.max_in_flight
 * sign-ins are waiting for their decision already. */
static bool auth_busy(mdm_req_t *req, int answer)
{
    mdm_enroll_t *e = enroll_of(req->server);
    if (e->in_flight < req->server->cfg->enroll_max_in_flight)
        return false;
    mdm_metric_add(e->m_busy, 1);
    mdm_log(MDM_LOG_WARN, req->id, "enroll.busy", "remote=%s in_flight=%llu", req->remote_addr,
            (unsigned long long)e->in_flight);
    mdm_resp_header(req, "Retry-After", "1");
    if (answer == ANSWER_PAGE)
        send_page(req, 503, "Too many sign-ins at once. Wait a moment and try again.", NULL);
    else if (answer == ANSWER_JSON)
        mdm_resp_json_error(req, 503, "busy", "too many sign-ins in progress; retry later");
    else
        mdm_resp_text(req, 503, "too many sign-ins in progress; retry later");
    return true;
}

/* Sign-ins of a key whose failures and sign-ins in flight reach the
 * threshold wait for those in flight: retry after this. */
#define GUARD_BUSY_RETRY_MS 1000

/* Counts the sign-in in flight for its address and user (the guard's
 * failures are only known when it ends); false when one of them has as
 * many in flight as it has tries left. */
static bool guard_begin(mdm_guard_t *g, auth_job_t *j, int64_t now)
{
    if (!mdm_guard_begin(g, j->addr_key, now))
        return false;
    if (j->ar.user != NULL && !mdm_guard_begin(g, j->user_key, now)) {
        mdm_guard_end(g, j->addr_key);
        return false;
    }
    return true;
}

static void guard_end(mdm_guard_t *g, auth_job_t *j)
{
    mdm_guard_end(g, j->addr_key);
    if (j->ar.user != NULL)
        mdm_guard_end(g, j->user_key);
}

/* The enrollment page's answer to a decided sign-in. */
static void enroll_decided(auth_job_t *j)
{
    mdm_req_t *req = j->req;
    mdm_enroll_t *en = enroll_of(req->server);
    guard_end(en->guard, j);
    if (!j->decision.allow) {
        int64_t now = mdm_now_ms();
        mdm_guard_fail(en->guard, j->addr_key, now);
        if (j->ar.user != NULL)
            mdm_guard_fail(en->guard, j->user_key, now);
        if (j->browser)
            send_page(req, 403, "Sign-in failed: the user name or password is not right, or "
                                "this account may not enroll devices.", j->ar.user);
        else
            mdm_resp_json_error(req, 403, "denied",
                                j->decision.reason[0] ? j->decision.reason : "denied");
        return;
    }
    /* The user's failures are cleared; the address's are not, or one good
     * account would let its holder try other users' passwords without end
     * (two failures, one sign-in of its own, two more, ...): they age out
     * of security.auth_fail_window instead. */
    if (j->ar.user != NULL)
        mdm_guard_success(en->guard, j->user_key);
    mdm_buf_t ota = MDM_BUF_INIT;
    bool want_ota = mdm_req_query(req, "ota", &ota, true) == 0;
    mdm_buf_free(&ota);
    answer_profile(req, j->decision.user, want_ota);
}

/* The credentials of the request: Basic, Bearer or the form's. */
static void read_credentials(auth_job_t *j, const char *auth)
{
    mdm_req_t *req = j->req;
    mdm_enroll_auth_req_t *ar = &j->ar;
    if (auth != NULL && strncasecmp(auth, "Basic ", 6) == 0) {
        if (mdm_base64_decode(&j->basic, auth + 6, strlen(auth + 6)) == 0 && j->basic.len > 0 &&
            strlen(j->basic.data) == j->basic.len) {
            char *colon = strchr(j->basic.data, ':');
            if (colon != NULL) {
                *colon = '\0';
                ar->user = j->basic.data;
                ar->password = colon + 1;
            }
        }
    } else if (auth != NULL && strncasecmp(auth, "Bearer ", 7) == 0) {
        ar->bearer = auth + 7;
    }
    if (req->method == MDM_POST) {
        j->form = plist_new_dict();
        parse_form((const char *)req->body, req->body_len, j->form);
        ar->form = j->form;
        if (ar->user == NULL) {
            ar->user = mdm_pl_str(j->form, "username");
            ar->password = mdm_pl_str(j->form, "password");
        }
    }
}

static void handle_enroll(mdm_req_t *req)
{
    auth_job_t *j = auth_job_new(req, enroll_decided);
    const mdm_enroll_auth_req_t *ar = &j->ar;
    const char *auth = mdm_req_header(req, "Authorization");
    j->browser = auth == NULL;
    read_credentials(j, auth);
    mdm_enroll_t *en = enroll_of(req->server);
    mdm_guard_addr_key(req->remote_addr, j->addr_key, sizeof(j->addr_key));
    snprintf(j->user_key, sizeof(j->user_key), "user:%s", ar->user ? ar->user : "");
    bool has_creds = ar->user != NULL || ar->bearer != NULL;
    if (has_creds && auth_busy(req, j->browser ? ANSWER_PAGE : ANSWER_JSON)) {
        auth_job_free(j);
        return;
    }
    int64_t now = mdm_now_ms();
    uint64_t locked = 0;
    if (has_creds) {
        locked = mdm_guard_locked(en->guard, j->addr_key, now);
        if (locked == 0 && ar->user != NULL)
            locked = mdm_guard_locked(en->guard, j->user_key, now);
        if (locked == 0 && !guard_begin(en->guard, j, now))
            locked = GUARD_BUSY_RETRY_MS;
    }
    if (locked > 0) {
        char retry[32], uq[300];
        snprintf(retry, sizeof(retry), "%llu", (unsigned long long)(locked + 999) / 1000);
        mdm_log(MDM_LOG_WARN, req->id, "enroll.locked_out", "remote=%s user=%s retry_after_s=%s",
                req->remote_addr, mdm_logq(uq, sizeof(uq), ar->user), retry);
        mdm_resp_header(req, "Retry-After", retry);
        if (j->browser)
            send_page(req, 429, "Too many failed sign-ins. Wait a few minutes and try again.",
                      ar->user);
        else
            mdm_resp_json_error(req, 429, "too_many_failures",
                                "too many failed sign-ins; retry later");
    } else if (!has_creds) {
        if (req->method == MDM_POST)
            send_page(req, 400, "Enter a user name and a password.", NULL);
        else
            send_page(req, 200, NULL, NULL);
    } else {
        run_auth(j);
        return;
    }
    auth_job_free(j);
}

/* ---- the OTA profile service --------------------------------------------- */

struct ota_ctx {
    const char *challenge;
    mdm_challenge_t ch;
    int rc;
};

static int ota_check_fn(mdm_txn_t *txn, void *arg)
{
    struct ota_ctx *o = arg;
    o->rc = mdm_challenge_consume(txn, o->challenge, MDM_CHALLENGE_OTA, mdm_now_ms(), &o->ch);
    return o->rc;
}

/* Why phase 1 refuses a challenge (rc of ota_check_fn); NULL when rc
 * says nothing of the challenge (the store failed). */
static const char *ota_challenge_problem(const char *challenge, int rc)
{
    if (challenge == NULL)
        return "the signed attributes have no CHALLENGE";
    switch (rc) {
    case MDM_ENOTFOUND: return "unknown or already used challenge";
    case MDM_EEXPIRED: return "the challenge has expired";
    case MDM_EAUTH:
        return "the challenge is not for the OTA profile service (it is a SCEP challenge)";
    default: return NULL;
    }
}

/* Phase 1's answer when its challenge is refused or cannot be checked. */
static void ota_challenge_refuse(mdm_req_t *req, const char *challenge, const char *udid, int rc)
{
    char uq[200];
    const char *why = ota_challenge_problem(challenge, rc);
    mdm_logq(uq, sizeof(uq), udid);
    if (why != NULL) {
        mdm_log(MDM_LOG_WARN, req->id, "enroll.ota_refused", "phase=1 udid=%s reason=\"%s\"", uq,
                why);
        mdm_resp_text(req, 403, "the challenge is not valid");
        return;
    }
    mdm_log(MDM_LOG_ERROR, req->id, "enroll.ota_failed",
            "phase=1 udid=%s error=\"the challenge could not be checked: %s\"", uq,
            mdm_strerror(rc));
    mdm_resp_text(req, rc == MDM_ENOSPACE ? 503 : 500, "the challenge could not be checked");
}

/* An OTA answer that could not be made: logged with its cause, and 503
 * with Retry-After when the store is full (the device may retry later),
 * 500 otherwise. */
static void ota_fail(mdm_req_t *req, int phase, int rc, const mdm_err_t *err, const char *what)
{
    char eq[600];
    const char *why = err->msg[0] != '\0' ? err->msg : mdm_strerror(rc);
    mdm_log(MDM_LOG_ERROR, req->id, "enroll.ota_failed", "phase=%d error=%s", phase,
            mdm_logq(eq, sizeof(eq), why));
    if (rc == MDM_ENOSPACE || rc == MDM_EMAPFULL) {
        mdm_resp_header(req, "Retry-After", "30");
        mdm_resp_text(req, 503, what);
    } else {
        mdm_resp_text(req, 500, what);
    }
}

/* The phase-3 signer must be a certificate this server issued (its
 * CA's chain may hold other CAs' roots), not revoked, and, when it was
 * issued for a device (phase 1 named it), issued for the device that
 * phase 3 names; its owner is the enrolling user, carried over to the
 * final identity. */
struct ota_signer {
    unsigned char fp[32];
    bool known, revoked;
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
    char udid[MDM_CHALLENGE_UDID_MAX + 1];
    char why[MDM_CHALLENGE_UDID_MAX + 64];
};

static int ota_signer_fn(mdm_txn_t *txn, void *arg)
{
    struct ota_signer *o = arg;
    mdm_certrec_t rec;
    int rc = mdm_certdb_get_by_fingerprint(txn, o->fp, &rec);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    o->known = true;
    o->revoked = rec.revoked;
    mdm_certrec_free(&rec);
    rc = mdm_challenge_owner_of_cert(txn, o->fp, o->owner, sizeof(o->owner));
    if (rc == 0 || rc == MDM_ENOTFOUND)
        rc = mdm_challenge_udid_of_cert(txn, o->fp, o->udid, sizeof(o->udid));
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Looks the phase-3 signer up: NULL when it may have a final profile for
 * udid, else why not (*status: the HTTP status). */
static const char *ota_signer_problem(mdm_server_t *s, X509 *signer, const char *udid,
                                      struct ota_signer *os, int *status)
{
    int vrc = mdm_cert_sha256(signer, os->fp) != 0 ? MDM_EPARSE
                                                   : mdm_store_view(s->store, ota_signer_fn, os);
    *status = vrc != 0 ? 500 : 403;
    if (vrc != 0)
        return "the signer could not be looked up";
    if (!os->known)
        return "the signer is not a certificate this server issued";
    if (os->revoked)
        return "the signer's certificate is revoked";
    if (os->udid[0] != '\0' && strcmp(os->udid, udid) != 0) {
        snprintf(os->why, sizeof(os->why), "the signer's certificate was issued for device %s",
                 os->udid);
        return os->why;
    }
    return NULL;
}

/* Phase 2: a profile with a SCEP payload for the device's identity. */
static void ota_phase2(mdm_req_t *req, const char *udid, const char *user)
{
    mdm_server_t *s = req->server;
    mdm_err_t err = {0};
    plist_t profile = NULL;
    mdm_buf_t out = MDM_BUF_INIT;
    struct challenge_ctx c = {.owner = user,
                              .udid = udid,
                              .purpose = MDM_CHALLENGE_SCEP,
                              .ttl = s->cfg->scep_challenge_ttl_ms};
    mdm_enroll_profile_opts_t po = {.user = user,
                                    .include_scep = true,
                                    .identifier_suffix = "identity"};
    int rc = mdm_store_update(s->store, challenge_fn, &c);
    po.challenge = c.ch.text;
    if (rc == 0)
        rc = mdm_enroll_build_profile(s, &po, &profile, &err);
    if (rc == 0)
        rc = sign_profile(s, profile, &out, &err);
    if (rc != 0) {
        ota_fail(req, 1, rc, &err, "the identity profile could not be made");
    } else {
        char uq[200], nq[300];
        mdm_log(MDM_LOG_INFO, req->id, "enroll.ota_phase1", "udid=%s user=%s",
                mdm_logq(uq, sizeof(uq), udid), mdm_logq(nq, sizeof(nq), user));
        mdm_resp_send(req, 200, PROFILE_CTYPE, out.data, out.len);
    }
    plist_free(profile);
    mdm_buf_free(&out);
}

/* Phase 1's answer to a decided sign-in. */
static void ota_decided(auth_job_t *j)
{
    if (!j->decision.allow) {
        mdm_resp_text(j->req, 403, j->decision.reason[0] ? j->decision.reason : "denied");
        return;
    }
    ota_phase2(j->req, mdm_pl_str(j->attrs, "UDID"), j->decision.user);
}

static void handle_ota(mdm_req_t *req)
{
    mdm_server_t *s = req->server;
    mdm_enroll_t *e = enroll_of(s);
    mdm_buf_t content = MDM_BUF_INIT;
    mdm_err_t err = {0};
    X509 *signer = NULL;
    plist_t attrs = NULL, profile = NULL;
    mdm_buf_t out = MDM_BUF_INIT;
    mdm_metric_add(e->m_ota, 1);

    /* Phase 3 first: a body signed by an identity our CA issued. */
    bool phase3 = e->device_trust != NULL &&
                  mdm_cms_verify_attached(req->body, req->body_len, e->device_trust, 0, &content,
                                          &signer, NULL) == 0;
    if (!phase3) {
        if (e->ota_trust == NULL) {
            mdm_log(MDM_LOG_WARN, req->id, "enroll.ota_refused",
                    "reason=\"enroll.ota_trust is not configured\"");
            mdm_resp_text(req, 403, "the OTA profile service is not configured");
            goto out;
        }
        /* Apple's device CA expired in 2014: its certificates are checked
         * for the signature and issuer, not for time. */
        if (mdm_cms_verify_attached(req->body, req->body_len, e->ota_trust, 1, &content, &signer,
                                    &err) != 0) {
            mdm_log(MDM_LOG_WARN, req->id, "enroll.ota_refused", "phase=1 reason=\"%s\"",
                    err.msg);
            mdm_resp_text(req, 400, err.msg);
            goto out;
        }
    }
    if (mdm_plist_load_dict(content.data, content.len, 1 << 20, &attrs) != 0) {
        mdm_log(MDM_LOG_WARN, req->id, "enroll.ota_refused", "reason=\"content is not a plist\"");
        mdm_resp_text(req, 400, "the signed content is not a plist dictionary");
        goto out;
    }
    const char *udid = mdm_pl_str(attrs, "UDID");
    char uq[200];
    if (!mdm_device_id_ok(udid)) {
        mdm_log(MDM_LOG_WARN, req->id, "enroll.ota_refused", "phase=%d udid=%s reason=\"%s\"",
                phase3 ? 3 : 1, mdm_logq(uq, sizeof(uq), udid),
                "the signed attributes have no usable UDID");
        mdm_resp_text(req, 400, "the signed attributes have no usable UDID");
        goto out;
    }
    if (!phase3) {
        if (auth_busy(req, ANSWER_TEXT))
            goto out;
        const char *challenge = mdm_pl_str(attrs, "CHALLENGE");
        struct ota_ctx o = {.challenge = challenge};
        int crc = challenge == NULL ? MDM_ENOTFOUND : mdm_store_update(s->store, ota_check_fn, &o);
        if (crc != 0) {
            ota_challenge_refuse(req, challenge, udid, crc);
            goto out;
        }
        /* The policy decides; phase 2 follows (ota_decided). */
        auth_job_t *j = auth_job_new(req, ota_decided);
        j->attrs = attrs;
        attrs = NULL;
        snprintf(j->owner, sizeof(j->owner), "%s", o.ch.owner);
        j->ar.query = NULL;
        j->ar.user = j->owner[0] ? j->owner : NULL;
        j->ar.device = j->attrs;
        run_auth(j);
        goto out;
    } else {
        /* Phase 3: the device proved the identity our CA issued; its final
         * profile holds the MDM payload, encrypted to that identity. */
        struct ota_signer os = {.owner = ""};
        int status = 0;
        const char *why = ota_signer_problem(s, signer, udid, &os, &status);
        if (why != NULL) {
            mdm_log(MDM_LOG_WARN, req->id, "enroll.ota_refused", "phase=3 udid=%s reason=\"%s\"",
                    mdm_logq(uq, sizeof(uq), udid), why);
            mdm_resp_text(req, status, why);
            goto out;
        }
        /* One live challenge per identity: a new phase 3 replaces the
         * challenge of the previous one, so that repeating it does not
         * fill the store. */
        struct challenge_ctx c = {.owner = os.owner[0] ? os.owner : NULL,
                                  .udid = udid,
                                  .purpose = MDM_CHALLENGE_SCEP,
                                  .ttl = s->cfg->scep_challenge_ttl_ms,
                                  .slot = os.fp};
        mdm_enroll_profile_opts_t po = {.include_scep = true, .include_mdm = true};
        int rc = mdm_store_update(s->store, challenge_fn, &c);
        po.challenge = c.ch.text;
        if (rc == 0)
            rc = mdm_enroll_build_profile(s, &po, &profile, &err);
        const mdm_profiles_t *pp = mdm_profiles_of(s);
        if (rc == 0 && (pp == NULL || pp->encrypt))
            rc = mdm_profile_encrypt_dict(profile, signer, &err);
        if (rc == 0)
            rc = sign_profile(s, profile, &out, &err);
        if (rc != 0) {
            ota_fail(req, 3, rc, &err, "the configuration profile could not be made");
            goto out;
        }
        mdm_log(MDM_LOG_INFO, req->id, "enroll.ota_phase3", "udid=%s encrypted=%s",
                mdm_logq(uq, sizeof(uq), udid), (pp == NULL || pp->encrypt) ? "true" : "false");
    }
    mdm_resp_send(req, 200, PROFILE_CTYPE, out.data, out.len);
out:
    X509_free(signer);
    plist_free(attrs);
    plist_free(profile);
    mdm_buf_free(&content);
    mdm_buf_free(&out);
}

/* ---- set-up -------------------------------------------------------------- */

int mdm_enroll_service_init(mdm_server_t *s, mdm_err_t *err)
{
    mdm_enroll_t *e = mdm_calloc(1, sizeof(*e));
    s->enroll = e;
    e->base_url = derive_base_url(s->cfg);
    if (s->cfg->enroll_ota_trust.n > 0) {
        int rc = mdm_tls_load_ca_store(&s->cfg->enroll_ota_trust, &e->ota_trust, err);
        if (rc != 0)
            return rc;
    }
    if (s->ca != NULL) {
        e->device_trust = X509_STORE_new();
        X509_STORE_add_cert(e->device_trust, s->ca->cert);
        for (int i = 0; i < sk_X509_num(s->ca->chain); i++)
            X509_STORE_add_cert(e->device_trust, sk_X509_value(s->ca->chain, i));
        ERR_clear_error(); /* the chain file may repeat the CA certificate */
        /* As in mdm_ca_verify_cert: the CA may be an intermediate whose
         * root is not configured, and it is a trust anchor itself. */
        X509_STORE_set_flags(e->device_trust, X509_V_FLAG_PARTIAL_CHAIN);
    }
    mdm_guard_opts_t go = {.name = "enroll",
                           .threshold = s->cfg->security_auth_fail_threshold,
                           .backoff_ms = s->cfg->security_auth_backoff_ms,
                           .backoff_max_ms = s->cfg->security_auth_backoff_max_ms,
                           .window_ms = s->cfg->security_auth_window_ms};
    e->guard = mdm_guard_new(&go);
    e->m_allowed = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_enroll_auth_total",
                              "result=\"allowed\"", "Enrollment sign-ins by result");
    e->m_denied = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_enroll_auth_total", "result=\"denied\"",
                             "Enrollment sign-ins by result");
    e->m_ota = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_enroll_ota_requests_total", NULL,
                          "Requests to the OTA profile service");
    e->m_busy = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_enroll_busy_total", NULL,
                           "Sign-ins refused because enroll.max_in_flight were waiting");
    mdm_router_add(&s->router, MDM_GET | MDM_POST, s->cfg->enroll_path, handle_enroll,
                   MDM_AUTH_PUBLIC, "enroll");
    mdm_router_add(&s->router, MDM_POST, s->cfg->enroll_ota_path, handle_ota, MDM_AUTH_PUBLIC,
                   "ota");
    return 0;
}

void mdm_enroll_service_free(mdm_server_t *s)
{
    mdm_enroll_t *e = s->enroll;
    if (e == NULL)
        return;
    X509_STORE_free(e->ota_trust);
    X509_STORE_free(e->device_trust);
    mdm_guard_free(e->guard);
    mdm_free(e->base_url);
    mdm_free(e);
    s->enroll = NULL;
}

/* ---- CLI ----------------------------------------------------------------- */

static const char enroll_profile_usage[] =
    "usage: moonmdm enroll-profile [--user NAME] [--out FILE] [-c FILE] [-d DIR]\n"
    "\n"
    "Prints a signed enrollment profile with a new one-time SCEP challenge (bound\n"
    "to --user when given), the same as /enroll gives after sign-in: for Apple\n"
    "Configurator and scripted set-ups. The challenge expires after\n"
    "scep.challenge_ttl.\n";

int mdm_cmd_enroll_profile(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"user", required_argument, NULL, 'u'},   {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *data_dir = NULL, *user = NULL, *outpath = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:d:u:o:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'u': user = optarg; break;
        case 'o': outpath = optarg; break;
        case 'h': fputs(enroll_profile_usage, stdout); return 0;
        default: fputs(enroll_profile_usage, stderr); return 2;
        }
    }
    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, config, data_dir) != 0)
        return 1;
    mdm_server_t s;
    memset(&s, 0, sizeof(s));
    s.cfg = &cfg;
    mdm_err_t err = {0};
    mdm_profiles_t signer;
    memset(&signer, 0, sizeof(signer));
    mdm_enroll_t e;
    memset(&e, 0, sizeof(e));
    mdm_buf_t out = MDM_BUF_INIT;
    plist_t profile = NULL;
    int exit_code = 1;
    mdm_store_config_t sc = {.path = cfg.store_path, .map_size = cfg.store_map_size,
                             .map_max = cfg.store_map_max, .sync = true,
                             .flags = MDM_STORE_AUTOFLUSH};
    if (mdm_store_open(&mdm_store_lmdb, &sc, &s.store, &err) != 0 ||
        mdm_ca_load(cfg.ca_cert, cfg.ca_key, cfg.ca_chain, cfg.tls_allow_insecure_key_mode, &s.ca,
                    &err) != 0 ||
        mdm_profiles_signer_load(&cfg, &signer, &err) != 0)
        goto fail;
    e.base_url = derive_base_url(&cfg);
    s.enroll = &e;
    s.profiles = &signer;
    struct challenge_ctx c = {.owner = user, .purpose = MDM_CHALLENGE_SCEP,
                              .ttl = cfg.scep_challenge_ttl_ms};
    int rc = mdm_store_update(s.store, challenge_fn, &c);
    if (rc != 0) {
        mdm_err_set(&err, rc, "cannot store the challenge: %s", mdm_strerror(rc));
        goto fail;
    }
    mdm_enroll_profile_opts_t o = {.user = user, .challenge = c.ch.text, .include_mdm = true,
                                   .include_scep = true};
    if (mdm_enroll_build_profile(&s, &o, &profile, &err) != 0 ||
        sign_profile(&s, profile, &out, &err) != 0)
        goto fail;
    FILE *f = outpath ? fopen(outpath, "wb") : stdout;
    if (f == NULL) {
        mdm_err_set(&err, MDM_EIO, "cannot write %s", outpath);
        goto fail;
    }
    fwrite(out.data, 1, out.len, f);
    if (outpath)
        fclose(f);
    else
        fflush(stdout);
    fprintf(stderr, "enrollment profile for %s: %zu bytes, challenge valid for %.0f minutes\n",
            user ? user : "(no user)", out.len, (double)cfg.scep_challenge_ttl_ms / 60000.0);
    exit_code = 0;
    goto out;
fail:
    fprintf(stderr, "moonmdm enroll-profile: %s\n", err.msg[0] ? err.msg : "failed");
out:
    plist_free(profile);
    mdm_buf_free(&out);
    mdm_free(e.base_url);
    mdm_profiles_signer_free(&signer);
    mdm_ca_free(s.ca);
    mdm_store_close(s.store);
    mdm_config_free(&cfg);
    return exit_code;
}
