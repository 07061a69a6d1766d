#include "mdm/profiles.h"

#include "mdm/profiles_dir.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/apikeys.h"
#include "config.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

#define MAX_PROFILE_BYTES (8u << 20)

static void sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int len = 32;
    EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
    mdm_hex_encode(out, md, 32);
}

/* A key whose type Apple's schema gives (mdm/profiles/TopLevel.yaml and
 * CommonPayloadKeys.yaml). */
typedef struct key_rule {
    const char *key;
    plist_type type;
    bool required; /* present, and for a string not empty */
} key_rule_t;

static const key_rule_t top_rules[] = {
    {"PayloadIdentifier", PLIST_STRING, true},
    {"PayloadUUID", PLIST_STRING, true},
    {"PayloadType", PLIST_STRING, true},
    {"PayloadVersion", PLIST_UINT, true},
    {"IsEncrypted", PLIST_BOOLEAN, false},
    {"PayloadDescription", PLIST_STRING, false},
    {"PayloadDisplayName", PLIST_STRING, false},
    {"HasRemovalPasscode", PLIST_BOOLEAN, false},
    {"PayloadOrganization", PLIST_STRING, false},
    {"PayloadRemovalDisallowed", PLIST_BOOLEAN, false},
    {"PayloadScope", PLIST_STRING, false},
    {"RemovalDate", PLIST_DATE, false},
    {"DurationUntilRemoval", PLIST_REAL, false},
    {"PayloadExpirationDate", PLIST_DATE, false},
    {"TargetDeviceType", PLIST_UINT, false},
    {"ConsentText", PLIST_DICT, false},
};

static const key_rule_t payload_rules[] = {
    {"PayloadIdentifier", PLIST_STRING, true},
    {"PayloadUUID", PLIST_STRING, true},
    {"PayloadType", PLIST_STRING, true},
    {"PayloadVersion", PLIST_UINT, true},
    {"PayloadDescription", PLIST_STRING, false},
    {"PayloadDisplayName", PLIST_STRING, false},
    {"PayloadOrganization", PLIST_STRING, false},
};

static const char *type_name(plist_type t)
{
    static const char *const names[] = {
        [PLIST_BOOLEAN] = "a boolean", [PLIST_UINT] = "an integer", [PLIST_REAL] = "a number",
        [PLIST_STRING] = "a string",   [PLIST_ARRAY] = "an array",  [PLIST_DICT] = "a dictionary",
        [PLIST_DATE] = "a date",       [PLIST_DATA] = "data",
    };
    if ((size_t)t < sizeof(names) / sizeof(names[0]) && names[t] != NULL)
        return names[t];
    return "another type";
}

/* Checks the keys of dict that rules name; where prefixes the key in
 * the message (e.g. "PayloadContent[2]."). */
static int check_keys(plist_t dict, const key_rule_t *rules, size_t n, const char *where,
                      mdm_err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        const key_rule_t *r = &rules[i];
        plist_t v = plist_dict_get_item(dict, r->key);
        if (v == NULL) {
            if (r->required)
                return mdm_err_set(err, MDM_EINVAL, "%s%s: missing", where, r->key);
            continue;
        }
        plist_type t = plist_get_node_type(v);
        /* A whole number is a fine <real>. */
        bool ok = t == r->type || (r->type == PLIST_REAL && t == PLIST_UINT);
        if (!ok)
            return mdm_err_set(err, MDM_EINVAL, "%s%s: must be %s (got %s)", where, r->key,
                               type_name(r->type), type_name(t));
        if (r->required && t == PLIST_STRING && plist_get_string_ptr(v, NULL)[0] == '\0')
            return mdm_err_set(err, MDM_EINVAL, "%s%s: must not be empty", where, r->key);
    }
    return 0;
}

#define NRULES(a) (sizeof(a) / sizeof((a)[0]))

/* Checks each payload of PayloadContent: its common keys, and that no
 * PayloadUUID is used twice (a device refuses duplicates). */
static int check_payloads(plist_t content, const char *top_uuid, mdm_err_t *err)
{
    uint32_t n = plist_array_get_size(content);
    for (uint32_t i = 0; i < n; i++) {
        plist_t item = plist_array_get_item(content, i);
        char where[32];
        snprintf(where, sizeof(where), "PayloadContent[%u].", i);
        if (plist_get_node_type(item) != PLIST_DICT)
            return mdm_err_set(err, MDM_EINVAL, "PayloadContent[%u]: must be a dictionary (got "
                               "%s)", i, type_name(plist_get_node_type(item)));
        int rc = check_keys(item, payload_rules, NRULES(payload_rules), where, err);
        if (rc != 0)
            return rc;
        const char *iu = mdm_pl_str(item, "PayloadUUID");
        bool dup = strcmp(iu, top_uuid) == 0;
        for (uint32_t j = 0; j < i && !dup; j++) {
            const char *ou = mdm_pl_str(plist_array_get_item(content, j), "PayloadUUID");
            dup = ou != NULL && strcmp(ou, iu) == 0;
        }
        if (dup)
            return mdm_err_set(err, MDM_EINVAL,
                               "PayloadContent[%u]: PayloadUUID %.64s is used twice", i, iu);
    }
    return 0;
}

/* Checks the top level of a profile (a dictionary). */
static int check_profile(plist_t p, const char *expect_identifier, mdm_err_t *err)
{
    int rc = check_keys(p, top_rules, NRULES(top_rules), "", err);
    if (rc != 0)
        return rc;
    const char *id = mdm_pl_str(p, "PayloadIdentifier");
    const char *type = mdm_pl_str(p, "PayloadType");
    if (strlen(id) > MDM_PROFILE_ID_MAX)
        return mdm_err_set(err, MDM_EINVAL, "PayloadIdentifier: longer than %d bytes",
                           MDM_PROFILE_ID_MAX);
    if (strcmp(type, "Configuration") != 0)
        return mdm_err_set(err, MDM_EINVAL, "PayloadType: must be \"Configuration\" (got \"%.64s\")",
                           type);
    plist_t content = plist_dict_get_item(p, "PayloadContent");
    if (plist_dict_get_item(p, "EncryptedPayloadContent") != NULL ||
        mdm_pl_bool(p, "IsEncrypted", false))
        return mdm_err_set(err, MDM_EINVAL, "PayloadContent: upload the profile unencrypted; the "
                           "server encrypts it per device");
    if (content == NULL || plist_get_node_type(content) != PLIST_ARRAY)
        return mdm_err_set(err, MDM_EINVAL, "PayloadContent: missing or not an array");
    rc = check_payloads(content, mdm_pl_str(p, "PayloadUUID"), err);
    if (rc != 0)
        return rc;
    if (expect_identifier != NULL && strcmp(expect_identifier, id) != 0)
        return mdm_err_set(err, MDM_EINVAL,
                           "PayloadIdentifier \"%s\" does not match the identifier in the URL "
                           "\"%s\"",
                           id, expect_identifier);
    return 0;
}

int mdm_profile_validate(const void *data, size_t len, const char *expect_identifier,
                         mdm_buf_t *xml_out, mdm_profile_meta_t *meta, mdm_err_t *err)
{
    mdm_buf_t content = MDM_BUF_INIT;
    plist_t p = NULL;
    int rc = MDM_EINVAL;
    memset(meta, 0, sizeof(*meta));
    if (len == 0 || len > MAX_PROFILE_BYTES) {
        rc = mdm_err_set(err, MDM_EINVAL, "a profile must be between 1 byte and 8 MiB");
        goto out;
    }
    const unsigned char *b = data;
    if (b[0] == 0x30) {
        /* DER: a signed profile. Its own signature must hold; the signer
         * is replaced by the server's when it is sent. */
        if (mdm_cms_verify_attached(data, len, NULL, 0, &content, NULL, err) != 0) {
            rc = MDM_EINVAL;
            goto out;
        }
        data = content.data;
        len = content.len;
    }
    if (mdm_plist_load(data, len, &p) != 0) {
        rc = mdm_err_set(err, MDM_EINVAL, "not a property list (XML, binary or CMS-signed)");
        goto out;
    }
    if (plist_get_node_type(p) != PLIST_DICT) {
        rc = mdm_err_set(err, MDM_EINVAL, "the top level of a profile must be a dictionary");
        goto out;
    }
    rc = check_profile(p, expect_identifier, err);
    if (rc != 0)
        goto out;
    snprintf(meta->identifier, sizeof(meta->identifier), "%s", mdm_pl_str(p, "PayloadIdentifier"));
    snprintf(meta->uuid, sizeof(meta->uuid), "%s", mdm_pl_str(p, "PayloadUUID"));
    const char *dn = mdm_pl_str(p, "PayloadDisplayName");
    snprintf(meta->display_name, sizeof(meta->display_name), "%s", dn ? dn : "");
    mdm_plist_to_xml_buf(p, xml_out);
    sha256_hex(xml_out->data, xml_out->len, meta->hash);
    rc = 0;
out:
    plist_free(p);
    mdm_buf_free(&content);
    return rc;
}

/* Counts changes of the stored profiles (meta "profiles_revision"), so
 * that every enrollment is reconciled once after one (mdm_reconcile_due). */
static int bump_revision(mdm_txn_t *txn)
{
    uint64_t rev = 0;
    int rc = mdm_meta_get_u64(txn, "profiles_revision", &rev);
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    return mdm_meta_put_u64(txn, "profiles_revision", rev + 1);
}

static void meta_from(mdm_rec_t *r, mdm_profile_meta_t *meta);

int mdm_profile_put(mdm_txn_t *txn, const mdm_profile_meta_t *meta, const void *xml, size_t len)
{
    /* A new profile, or new content: devices that have it get the update. */
    mdm_profile_meta_t old;
    bool changed = mdm_profile_get(txn, meta->identifier, &old, NULL) != 0 ||
                   strcmp(old.hash, meta->hash) != 0;
    if (changed) {
        int rc = bump_revision(txn);
        if (rc != 0)
            return rc;
    }
    plist_t d = plist_new_dict();
    mdm_pl_set_str(d, "identifier", meta->identifier);
    mdm_pl_set_str(d, "uuid", meta->uuid);
    mdm_pl_set_str(d, "display_name", meta->display_name);
    mdm_pl_set_str(d, "hash", meta->hash);
    mdm_pl_set_int(d, "uploaded_at", meta->uploaded_ms);
    mdm_pl_set_str(d, "source", meta->source);
    if (meta->file[0] != '\0')
        mdm_pl_set_str(d, "file", meta->file);
    mdm_pl_set_data(d, "bytes", xml, len);
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(d, &b);
    plist_free(d);
    int rc = mdm_txn_put(txn, MDM_T_PROFILES, MDM_VAL_STR(meta->identifier), MDM_VAL(b.data, b.len),
                         0);
    mdm_buf_free(&b);
    return rc;
}

/* Copies a string of the record into dst ("" when absent). */
static void rec_copy(mdm_rec_t *r, const char *key, char *dst, size_t cap)
{
    const char *v = mdm_rec_str(r, key, dst, cap);
    if (v != dst)
        snprintf(dst, cap, "%s", v != NULL ? v : "");
}

/* Reads the metadata in place: the profile's bytes are not parsed (unless
 * a value is not plain ASCII). */
static void meta_from(mdm_rec_t *r, mdm_profile_meta_t *meta)
{
    memset(meta, 0, sizeof(*meta));
    rec_copy(r, "identifier", meta->identifier, sizeof(meta->identifier));
    rec_copy(r, "uuid", meta->uuid, sizeof(meta->uuid));
    rec_copy(r, "display_name", meta->display_name, sizeof(meta->display_name));
    rec_copy(r, "hash", meta->hash, sizeof(meta->hash));
    rec_copy(r, "source", meta->source, sizeof(meta->source));
    rec_copy(r, "file", meta->file, sizeof(meta->file));
    meta->uploaded_ms = mdm_rec_int(r, "uploaded_at", 0);
}

int mdm_profile_get(mdm_txn_t *txn, const char *identifier, mdm_profile_meta_t *meta,
                    mdm_buf_t *xml)
{
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_PROFILES, MDM_VAL_STR(identifier), &v);
    if (rc != 0)
        return rc;
    mdm_rec_t r;
    mdm_rec_init_bin(&r, v.data, v.len);
    if (meta)
        meta_from(&r, meta);
    if (xml) {
        size_t n = 0;
        const unsigned char *b = mdm_rec_data(&r, "bytes", &n);
        mdm_buf_reset(xml);
        if (b)
            mdm_buf_append(xml, b, n);
    }
    rc = r.failed ? MDM_EPARSE : 0;
    mdm_rec_free(&r);
    return rc;
}

int mdm_profile_delete(mdm_txn_t *txn, const char *identifier)
{
    int rc = mdm_txn_del(txn, MDM_T_PROFILES, MDM_VAL_STR(identifier));
    return rc == 0 ? bump_revision(txn) : rc;
}

int mdm_profile_list(mdm_txn_t *txn, mdm_profile_fn fn, void *arg)
{
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_PROFILES, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(c, &k, &v)) {
        mdm_rec_t r;
        mdm_profile_meta_t meta;
        mdm_rec_init_bin(&r, v.data, v.len);
        meta_from(&r, &meta);
        bool failed = r.failed;
        mdm_rec_free(&r);
        if (failed)
            continue;
        rc = fn(&meta, arg);
        if (rc != 0)
            break;
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

int mdm_profile_encrypt_dict(plist_t profile, X509 *cert, mdm_err_t *err)
{
    plist_t content = plist_dict_get_item(profile, "PayloadContent");
    if (content == NULL || plist_get_node_type(content) != PLIST_ARRAY)
        return mdm_err_set(err, MDM_EINVAL, "the profile has no PayloadContent to encrypt");
    mdm_buf_t xml = MDM_BUF_INIT, enc = MDM_BUF_INIT;
    mdm_plist_to_xml_buf(content, &xml);
    int rc = mdm_cms_encrypt(cert, EVP_aes_256_cbc(), xml.data, xml.len, &enc, err);
    if (rc == 0) {
        /* TopLevel: PayloadContent may be left out only when IsEncrypted
         * is true. */
        plist_dict_remove_item(profile, "PayloadContent");
        mdm_pl_set_data(profile, "EncryptedPayloadContent", enc.data, enc.len);
        mdm_pl_set_bool(profile, "IsEncrypted", true);
    }
    mdm_buf_free(&xml);
    mdm_buf_free(&enc);
    return rc;
}

int mdm_profile_render(const mdm_profiles_t *p, const void *xml, size_t len, X509 *device_cert,
                       mdm_buf_t *out, mdm_err_t *err)
{
    int rc = 0;
    mdm_buf_t plain = MDM_BUF_INIT;
    /* Never sent in the clear when encryption is on: no certificate, or a
     * key CMS cannot encrypt to, is an error. */
    if (p->encrypt && device_cert == NULL)
        return mdm_err_set(err, MDM_EINVAL,
                           "profiles.encrypt is on and the enrollment has no identity "
                           "certificate to encrypt to");
    if (p->encrypt) {
        plist_t d = NULL;
        if (mdm_plist_load(xml, len, &d) != 0)
            return mdm_err_set(err, MDM_EPARSE, "stored profile does not parse");
        rc = mdm_profile_encrypt_dict(d, device_cert, err);
        if (rc == 0)
            mdm_plist_to_xml_buf(d, &plain);
        plist_free(d);
        if (rc != 0)
            goto out;
    } else {
        mdm_buf_append(&plain, xml, len);
    }
    if (p->sign && p->sign_cert != NULL) {
        rc = mdm_cms_sign(p->sign_cert, p->sign_key, p->sign_chain, plain.data, plain.len, out,
                          err);
    } else {
        mdm_buf_reset(out);
        mdm_buf_append(out, plain.data, plain.len);
    }
out:
    mdm_buf_free(&plain);
    return rc;
}

/* ---- API ----------------------------------------------------------------- */

static json_t *meta_json(const mdm_profile_meta_t *m)
{
    char t[32];
    mdm_time_format(t, m->uploaded_ms);
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s*}", "identifier", m->identifier,
                     "uuid", m->uuid, "display_name", m->display_name, "hash", m->hash,
                     "uploaded_at", t, "source", m->source, "file",
                     m->file[0] != '\0' ? m->file : NULL);
}

struct put_ctx {
    mdm_profile_meta_t meta;
    mdm_buf_t xml;
    bool existed;
};

static int put_fn(mdm_txn_t *txn, void *arg)
{
    struct put_ctx *c = arg;
    mdm_val_t v;
    c->existed = mdm_txn_get(txn, MDM_T_PROFILES, MDM_VAL_STR(c->meta.identifier), &v) == 0;
    return mdm_profile_put(txn, &c->meta, c->xml.data, c->xml.len);
}

static void handle_put(mdm_req_t *req)
{
    struct put_ctx c;
    memset(&c, 0, sizeof(c));
    mdm_err_t err = {0};
    if (mdm_profile_validate(req->body, req->body_len, req->params[0], &c.xml, &c.meta, &err) !=
        0) {
        mdm_buf_free(&c.xml);
        mdm_resp_json_error(req, 400, "invalid_profile", err.msg);
        return;
    }
    c.meta.uploaded_ms = mdm_now_ms();
    snprintf(c.meta.source, sizeof(c.meta.source), "api");
    int rc = mdm_store_update(req->server->store, put_fn, &c);
    mdm_buf_free(&c.xml);
    if (rc != 0) {
        mdm_api_store_error(req, rc);
        return;
    }
    char q[300];
    mdm_log(MDM_LOG_INFO, req->id, "profile.stored", "identifier=%s hash=%.16s replaced=%s",
            mdm_logq(q, sizeof(q), c.meta.identifier), c.meta.hash, c.existed ? "true" : "false");
    mdm_api_send_json(req, c.existed ? 200 : 201, meta_json(&c.meta));
}

struct get_ctx {
    const char *id;
    mdm_profile_meta_t meta;
    mdm_buf_t xml;
};

static int get_fn(mdm_txn_t *txn, void *arg)
{
    struct get_ctx *c = arg;
    return mdm_profile_get(txn, c->id, &c->meta, &c->xml);
}

static void handle_get(mdm_req_t *req)
{
    struct get_ctx c = {.id = req->params[0]};
    int rc = mdm_store_view(req->server->store, get_fn, &c);
    if (rc != 0) {
        mdm_buf_free(&c.xml);
        if (rc == MDM_ENOTFOUND)
            mdm_resp_json_error(req, 404, "not_found", "no profile with this identifier");
        else
            mdm_api_store_error(req, rc);
        return;
    }
    mdm_buf_t raw = MDM_BUF_INIT;
    if (mdm_req_query(req, "raw", &raw, true) == 0) {
        mdm_resp_send(req, 200, "application/x-apple-aspen-config", c.xml.data, c.xml.len);
    } else {
        json_t *o = meta_json(&c.meta);
        json_object_set_new(o, "size", json_integer((json_int_t)c.xml.len));
        mdm_api_send_json(req, 200, o);
    }
    mdm_buf_free(&raw);
    mdm_buf_free(&c.xml);
}

static int list_cb(const mdm_profile_meta_t *m, void *arg)
{
    json_array_append_new(arg, meta_json(m));
    return 0;
}

static int list_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_profile_list(txn, list_cb, arg);
}

static void handle_list(mdm_req_t *req)
{
    json_t *arr = json_array();
    int rc = mdm_store_view(req->server->store, list_fn, arr);
    if (rc != 0) {
        json_decref(arr);
        mdm_api_store_error(req, rc);
        return;
    }
    mdm_api_send_json(req, 200, json_pack("{s:o}", "profiles", arr));
}

static int delete_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_profile_delete(txn, arg);
}

static void handle_delete(mdm_req_t *req)
{
    int rc = mdm_store_update(req->server->store, delete_fn, req->params[0]);
    if (rc == MDM_ENOTFOUND) {
        mdm_resp_json_error(req, 404, "not_found", "no profile with this identifier");
        return;
    }
    if (rc != 0) {
        mdm_api_store_error(req, rc);
        return;
    }
    mdm_api_send_json(req, 200, json_pack("{s:s}", "deleted", req->params[0]));
}

/* ---- set-up -------------------------------------------------------------- */

int mdm_profiles_service_init(mdm_server_t *s, mdm_err_t *err)
{
    const mdm_config_t *cfg = s->cfg;
    mdm_profiles_t *p = mdm_calloc(1, sizeof(*p));
    int rc = mdm_profiles_signer_load(cfg, p, err);
    if (rc != 0) {
        mdm_free(p);
        return rc;
    }
    s->profiles = p;
    if (cfg->profiles_dir != NULL) {
        rc = mdm__profiles_dir_load(s, cfg->profiles_dir, &p->dir, err);
        if (rc != 0)
            return rc;
    }
    mdm_router_add(&s->router, MDM_GET, "/v1/profiles", handle_list, MDM_AUTH_API_READ,
                   "v1_profiles");
    mdm_router_add(&s->router, MDM_GET, "/v1/profiles/{identifier}", handle_get,
                   MDM_AUTH_API_READ, "v1_profile");
    mdm_router_add(&s->router, MDM_PUT, "/v1/profiles/{identifier}", handle_put,
                   MDM_AUTH_API_ADMIN, "v1_profile_put");
    mdm_router_add(&s->router, MDM_DELETE, "/v1/profiles/{identifier}", handle_delete,
                   MDM_AUTH_API_ADMIN, "v1_profile_delete");
    return 0;
}

void mdm_profiles_service_free(mdm_server_t *s)
{
    mdm_profiles_t *p = s->profiles;
    if (p == NULL)
        return;
    mdm__profiles_dir_free(p->dir);
    mdm_profiles_signer_free(p);
    mdm_free(p);
    s->profiles = NULL;
}

int mdm_profiles_signer_load(const mdm_config_t *cfg, mdm_profiles_t *p, mdm_err_t *err)
{
    memset(p, 0, sizeof(*p));
    p->sign = cfg->profiles_sign;
    p->encrypt = cfg->profiles_encrypt;
    if (!p->sign)
        return 0;
    STACK_OF(X509) *certs = NULL;
    int rc = mdm_certs_read_pem(cfg->tls_cert, &certs, err);
    if (rc == 0)
        rc = mdm_key_read_pem(cfg->tls_key, cfg->tls_allow_insecure_key_mode, &p->sign_key, err);
    if (rc != 0) {
        sk_X509_pop_free(certs, X509_free);
        EVP_PKEY_free(p->sign_key);
        p->sign_key = NULL;
        return rc;
    }
    p->sign_cert = sk_X509_shift(certs);
    p->sign_chain = certs;
    if (cfg->tls_chain != NULL) {
        STACK_OF(X509) *more = NULL;
        if (mdm_certs_read_pem(cfg->tls_chain, &more, NULL) == 0) {
            X509 *x;
            while ((x = sk_X509_shift(more)) != NULL)
                sk_X509_push(p->sign_chain, x);
            sk_X509_free(more);
        }
    }
    return 0;
}

void mdm_profiles_signer_free(mdm_profiles_t *p)
{
    X509_free(p->sign_cert);
    EVP_PKEY_free(p->sign_key);
    sk_X509_pop_free(p->sign_chain, X509_free);
    memset(p, 0, sizeof(*p));
}

const mdm_profiles_t *mdm_profiles_of(mdm_server_t *s)
{
    return s->profiles;
}
