/* The MDM endpoints over HTTP, and the background pruning of results. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "crypto/keys.h"
#include "mdm/mdm.h"
#include "mdm/queue.h"
#include "mdm/sigcache.h"
#include "scep/service.h"
#include "util/alloc.h"
#include "util/log.h"
#include "util/misc.h"

#define CHECKIN_CTYPE "application/x-apple-aspen-mdm-checkin"
#define PRUNE_INTERVAL_MS 10000
#define PRUNE_BATCH 500

static mdm_mdm_t *mdm_of(mdm_req_t *req)
{
    return req->server->mdm;
}

/* Finds who sent the request: an Mdm-Signature header when present (the
 * device signs every request when its profile set SignMessage), otherwise
 * the verified client certificate (TLS, or the proxy header). */
static int request_identity(mdm_mdm_t *m, mdm_req_t *req, mdm_identity_t *id, const char **why)
{
    memset(id, 0, sizeof(*id));
    const char *sig = mdm_req_header(req, "Mdm-Signature");
    if (sig != NULL && sig[0] != '\0')
        return mdm__verify_signature(m, sig, req->body, req->body_len, id, why);
    if (req->peer_cert == NULL) {
        *why = "no client certificate and no Mdm-Signature";
        return MDM_EAUTH;
    }
    /* The handshake checked the certificate's dates; a kept-alive
     * connection or a resumed TLS session lasts past them. */
    int64_t now = mdm_now_ms() / 1000;
    if ((req->peer_not_before != 0 && now < req->peer_not_before) ||
        (req->peer_not_after != 0 && now > req->peer_not_after)) {
        *why = "the client certificate is expired or not yet valid";
        return MDM_EAUTH;
    }
    id->cert = req->peer_cert;
    id->source = req->peer_cert_source;
    if (req->peer_fp_ok) {
        memcpy(id->fp, req->peer_fp, sizeof(id->fp));
    } else if (mdm_cert_sha256(id->cert, id->fp) != 0) {
        *why = "cannot hash the client certificate";
        return MDM_EAUTH;
    }
    return 0;
}

static void identity_free(mdm_identity_t *id)
{
    if (id->owned)
        X509_free(id->cert);
    id->cert = NULL;
}

static void answer(mdm_req_t *req, const mdm_outcome_t *out, bool report)
{
    char eidq[300], detq[300], typeq[200];
    int level = out->status >= 500 ? MDM_LOG_ERROR
                : out->status >= 400 && out->status != 410 ? MDM_LOG_WARN
                                                           : MDM_LOG_INFO;
    if (report)
        mdm_log(level, req->id, "mdm.report",
                "eid=%s status=%s http_status=%d next_command=%s policy_commands=%zu "
                "installs=%zu removals=%zu detail=%s",
                mdm_logq(eidq, sizeof(eidq), out->eid[0] ? out->eid : NULL),
                mdm_logq(typeq, sizeof(typeq), out->message_type[0] ? out->message_type : NULL),
                out->status,
                out->command_uuid[0] && out->body.len ? out->command_uuid : "-",
                out->policy_commands, out->installs, out->removals,
                mdm_logq(detq, sizeof(detq), out->detail[0] ? out->detail : NULL));
    else
        mdm_log(level, req->id, "mdm.checkin",
                "eid=%s type=%s http_status=%d policy_commands=%zu installs=%zu detail=%s",
                mdm_logq(eidq, sizeof(eidq), out->eid[0] ? out->eid : NULL),
                mdm_logq(typeq, sizeof(typeq), out->message_type[0] ? out->message_type : NULL),
                out->status, out->policy_commands, out->installs,
                mdm_logq(detq, sizeof(detq), out->detail[0] ? out->detail : NULL));
    if (out->status == 200) {
        /* "Nothing to do" needs no commit: whatever the open batch holds,
         * losing it leaves the device as if it had asked a moment earlier.
         * So an Idle answered from the read-only look does not wait for
         * other requests' fsync. */
        req->no_hold = out->unchanged;
        mdm_resp_send(req, 200, out->body.len ? out->ctype : NULL, out->body.data,
                      out->body.len);
    } else if (out->status == 403 || out->status == 410) {
        /* A plain refusal: no error document (com.apple.unrecognized.device
         * would make a real device unenroll). */
        mdm_resp_send(req, out->status, NULL, NULL, 0);
    } else {
        mdm_resp_text(req, out->status, out->detail[0] ? out->detail : "refused");
    }
}

/* Handles the message, answers, and hands a tree parsed ahead back in
 * pre->msg. */
static void process(mdm_mdm_t *m, mdm_req_t *req, const mdm_identity_t *id, mdm_parsed_t *pre,
                    bool report)
{
    mdm_outcome_t out;
    memset(&out, 0, sizeof(out));
    out.reqid = req->id;
    if (report)
        mdm__process_report(m, id, req->body, req->body_len, pre, &out);
    else
        mdm__process_checkin(m, id, req->body, req->body_len, pre, &out);
    answer(req, &out, report);
    mdm_buf_free(&out.body);
}

/* ---- large bodies: parsed in the thread pool ------------------------------ */

/* A large report (an InstalledApplicationList of thousands of apps, a
 * CertificateList) takes tens to hundreds of milliseconds to parse, which
 * would stop every other connection. Its body is parsed in the thread pool
 * and handled on the loop afterwards; the tree is freed in the pool too.
 * The connection parses nothing more until the answer, so a pipelined
 * request sees the report's effects. */
typedef struct parse_job {
    uv_work_t work;
    mdm_mdm_t *m;
    mdm_req_t *req;
    mdm_identity_t id; /* its certificate referenced: the connection may go first */
    bool report;
    size_t max_bytes;
    mdm_parsed_t parsed;
} parse_job_t;

static void parse_work(uv_work_t *w)
{
    parse_job_t *j = w->data;
    mdm__parse_body(j->req->body, j->req->body_len, j->max_bytes, j->report, &j->parsed);
}

static void free_work(uv_work_t *w)
{
    parse_job_t *j = w->data;
    plist_free(j->parsed.msg);
    j->parsed.msg = NULL;
    mdm_buf_free(&j->parsed.bin);
}

static void free_after(uv_work_t *w, int status)
{
    (void)status;
    mdm_free(w->data);
}

static void parse_after(uv_work_t *w, int status)
{
    parse_job_t *j = w->data;
    mdm_mdm_t *m = j->m;
    if (status == 0)
        process(m, j->req, &j->id, &j->parsed, j->report);
    else /* cancelled: the loop is going away */
        mdm_resp_text(j->req, 503, "the server is stopping");
    identity_free(&j->id);
    if ((j->parsed.msg != NULL || j->parsed.bin.data != NULL) &&
        uv_queue_work(m->server->loop, &j->work, free_work, free_after) == 0)
        return;
    plist_free(j->parsed.msg);
    mdm_buf_free(&j->parsed.bin);
    mdm_free(j);
}

/* Starts the parse of req's body in the thread pool. False when it could
 * not start (the caller then handles the request itself). */
static bool parse_in_pool(mdm_mdm_t *m, mdm_req_t *req, mdm_identity_t *id, bool report)
{
    parse_job_t *j = mdm_calloc(1, sizeof(*j));
    j->m = m;
    j->req = req;
    j->report = report;
    j->max_bytes = m->server->cfg->http_max_body_bytes;
    j->work.data = j;
    if (uv_queue_work(m->server->loop, &j->work, parse_work, parse_after) != 0) {
        mdm_free(j);
        return false;
    }
    /* The job takes the identity over (parse_work does not read it). A
     * certificate borrowed from the connection gets a reference of its
     * own: the connection may close before the parse is done. */
    j->id = *id;
    if (!j->id.owned && j->id.cert != NULL) {
        X509_up_ref(j->id.cert);
        j->id.owned = true;
    }
    id->owned = false;
    id->cert = NULL;
    mdm_req_pause_pipeline(req);
    mdm_metric_add(m->m_parsed_in_pool, 1);
    return true;
}

static void handle(mdm_req_t *req, bool report)
{
    mdm_mdm_t *m = mdm_of(req);
    mdm_identity_t id;
    const char *why = NULL;
    if (request_identity(m, req, &id, &why) != 0) {
        mdm_metric_add(m->m_refused, 1);
        bool bad_sig = mdm_req_header(req, "Mdm-Signature") != NULL;
        mdm_log(MDM_LOG_WARN, req->id, report ? "mdm.report" : "mdm.checkin",
                "http_status=%d detail=\"%s\" remote=%s", bad_sig ? 400 : 403, why,
                req->remote_addr);
        if (bad_sig)
            mdm_resp_text(req, 400, why);
        else
            mdm_resp_send(req, 403, NULL, NULL, 0);
        return;
    }
    if (req->body_len >= MDM_PARSE_IN_POOL_BYTES && parse_in_pool(m, req, &id, report))
        return;
    process(m, req, &id, NULL, report);
    identity_free(&id);
}

static void handle_checkin(mdm_req_t *req)
{
    handle(req, false);
}

static void handle_connect(mdm_req_t *req)
{
    handle(req, true);
}

/* One URL for both: check-ins carry their own Content-Type. */
static void handle_combined(mdm_req_t *req)
{
    const char *ct = mdm_req_header(req, "Content-Type");
    bool checkin = ct != NULL && strncasecmp(ct, CHECKIN_CTYPE, strlen(CHECKIN_CTYPE)) == 0;
    handle(req, !checkin);
}

/* The three paths. A path configured for both kinds (mdm.checkin_path the
 * same as mdm.connect_path, or either the same as mdm.path) takes both,
 * told apart by Content-Type: the combined route comes first and the
 * router takes the first match. */
static void add_routes(mdm_server_t *s)
{
    const mdm_config_t *cfg = s->cfg;
    mdm_router_add(&s->router, MDM_PUT, cfg->mdm_combined_path, handle_combined, MDM_AUTH_DEVICE,
                   "mdm");
    if (strcmp(cfg->mdm_checkin_path, cfg->mdm_connect_path) == 0)
        mdm_router_add(&s->router, MDM_PUT, cfg->mdm_checkin_path, handle_combined,
                       MDM_AUTH_DEVICE, "mdm");
    mdm_router_add(&s->router, MDM_PUT, cfg->mdm_checkin_path, handle_checkin, MDM_AUTH_DEVICE,
                   "mdm_checkin");
    mdm_router_add(&s->router, MDM_PUT, cfg->mdm_connect_path, handle_connect, MDM_AUTH_DEVICE,
                   "mdm_connect");
}

/* ---- pruning ------------------------------------------------------------- */

struct prune_ctx {
    int64_t cutoff;
    size_t n;
};

static int prune_txn(mdm_txn_t *txn, void *arg)
{
    struct prune_ctx *p = arg;
    return mdm_results_prune(txn, p->cutoff, PRUNE_BATCH, &p->n);
}

static void prune_cb(uv_timer_t *t)
{
    mdm_mdm_t *m = t->data;
    uint64_t keep = m->server->cfg->mdm_result_retention_ms;
    struct prune_ctx p = {.cutoff = mdm_now_ms() - (int64_t)keep};
    mdm_scep_prune_due(m->server);
    /* One small batch per tick; come back soon when there was more. */
    int rc = mdm_store_update(m->server->store, prune_txn, &p);
    if (rc != 0) {
        mdm_log(MDM_LOG_WARN, NULL, "mdm.prune_failed", "error=\"%s\"", mdm_strerror(rc));
        return;
    }
    if (p.n > 0)
        mdm_log(MDM_LOG_INFO, NULL, "mdm.pruned", "results=%zu retention_days=%.1f", p.n,
                (double)keep / 86400000.0);
    if (p.n == PRUNE_BATCH)
        uv_timer_start(t, prune_cb, 10, PRUNE_INTERVAL_MS);
}

/* ---- set-up -------------------------------------------------------------- */

/* Moves waiting results of earlier store layouts into their queue entries
 * before the first request, in steps of one transaction each. A store
 * that has been through it skips it with one read. A failure is logged and
 * the server starts anyway. */
static void upgrade_queue(mdm_server_t *s)
{
    mdm_queue_upgrade_t u = {.from = MDM_BUF_INIT, .step_from = MDM_BUF_INIT};
    int64_t t0 = mdm_now_ms(), last_log = t0;
    int rc = 0;
    while (rc == 0 && !u.done) {
        rc = mdm_queue_upgrade_step(s->store, &u);
        if (rc == 0)
            rc = mdm_store_flush(s->store);
        int64_t now = mdm_now_ms();
        if (rc == 0 && !u.done && now - last_log >= 2000) {
            mdm_log(MDM_LOG_INFO, NULL, "mdm.queue_upgrade_progress",
                    "queue_entries=%zu moved=%zu elapsed_ms=%lld", u.scanned, u.moved,
                    (long long)(now - t0));
            last_log = now;
        }
        if (u.done && u.scanned > 0) /* nothing to say when done before */
            mdm_log(MDM_LOG_INFO, NULL, "mdm.queue_upgraded",
                    "queue_entries=%zu moved=%zu elapsed_ms=%lld", u.scanned, u.moved,
                    (long long)(now - t0));
    }
    mdm_queue_upgrade_free(&u);
    /* Readers find the results not moved where they are: serve anyway. */
    if (rc != 0)
        mdm_log(MDM_LOG_WARN, NULL, "mdm.queue_upgrade_failed",
                "queue_entries=%zu moved=%zu error=\"%s\" detail=\"the results not moved are "
                "read where they are and move at their next change; the next start tries "
                "again\"",
                u.scanned, u.moved, mdm_strerror(rc));
}

int mdm_mdm_service_init(mdm_server_t *s, mdm_err_t *err)
{
    upgrade_queue(s);
    mdm_mdm_t *m = mdm_calloc(1, sizeof(*m));
    m->server = s;
    char *path = mdm_sprintf("%s/secret.key", s->cfg->data_dir);
    int rc = mdm_secretkey_load(path, true, s->cfg->tls_allow_insecure_key_mode, &m->secret, err);
    mdm_free(path);
    if (rc != 0) {
        mdm_free(m);
        return rc;
    }
    m->sigcache = mdm_sigcache_new(1u << 17);
    m->m_checkins = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_checkins_total", NULL,
                               "Check-in messages received");
    m->m_reports = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_reports_total", NULL,
                              "Command reports (including Idle) received");
    m->m_refused = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_refused_total", NULL,
                              "MDM requests refused (identity, binding, bad input)");
    m->m_commands_sent = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_commands_sent_total", NULL,
                                    "Commands handed to devices");
    m->m_parsed_in_pool = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_parsed_in_pool_total", NULL,
                                     "MDM message bodies large enough to be parsed in the "
                                     "thread pool");
    m->m_idle_fast = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_idle_without_write_total", NULL,
                                "Idle requests answered without a store write (nothing to do)");
    m->m_sig_verified = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_mdm_signature_chain_checks_total",
                                   NULL, "Mdm-Signature signer chains verified");
    m->m_sig_cache_hits = mdm_metric(MDM_METRIC_COUNTER,
                                     "moonmdm_mdm_signature_cache_hits_total", NULL,
                                     "Mdm-Signature signers found in the verified cache");
    s->mdm = m;
    add_routes(s);
    uv_timer_init(s->loop, &m->prune_timer);
    m->prune_timer.data = m;
    uv_timer_start(&m->prune_timer, prune_cb, PRUNE_INTERVAL_MS, PRUNE_INTERVAL_MS);
    uv_unref((uv_handle_t *)&m->prune_timer);
    return 0;
}

static void free_after_close(uv_handle_t *h)
{
    mdm_mdm_t *m = h->data;
    mdm_sigcache_free(m->sigcache);
    mdm_free(m);
}

void mdm_mdm_service_free(mdm_server_t *s)
{
    mdm_mdm_t *m = s->mdm;
    if (m == NULL)
        return;
    s->mdm = NULL;
    if (uv_is_closing((uv_handle_t *)&m->prune_timer)) {
        /* Closed by the server's final walk over every handle. */
        mdm_sigcache_free(m->sigcache);
        mdm_free(m);
        return;
    }
    uv_close((uv_handle_t *)&m->prune_timer, free_after_close);
    uv_run(s->loop, UV_RUN_NOWAIT);
}
