/* Over-the-air enrollment: the enrollment page (GET/POST /enroll), the
 * signed enrollment profile (CA certificate, SCEP and MDM payloads), the
 * OTA profile service (POST /ota/profile, phases 1 and 3), and
 * `moonmdm enroll-profile`. Who may enroll is the policy's authenticate
 * hook's decision; without a hook nobody may. */
#ifndef MDM_ENROLL_H
#define MDM_ENROLL_H

#include <plist/plist.h>
#include <stdbool.h>

#include "server.h"
#include "util/buf.h"

/* What the authenticate hook sees. Secrets (password) never leave this
 * struct: not logged, not stored. */
typedef struct mdm_enroll_auth_req {
    const char *method, *path, *query;
    const char *remote_addr;
    const char *user, *password;   /* from the form, Basic, or NULL */
    const char *bearer;            /* Authorization: Bearer token, or NULL */
    const mdm_header_t *headers;
    size_t nheaders;
    plist_t form;                  /* form fields (dict of strings) or NULL */
    plist_t device;                /* OTA phase 1: the device attributes, or NULL */
} mdm_enroll_auth_req_t;

typedef struct mdm_enroll_auth {
    bool allow;
    char user[256];
    char reason[256];
} mdm_enroll_auth_t;

/* Called once the authenticate decision is in out. */
typedef void (*mdm_enroll_auth_done_fn)(void *arg);

/* The authenticate decision; the policy engine sets it when it loads.
 * Without one every request is denied ("no authenticate hook"). It fills
 * out and calls done(arg) exactly once: before it returns, or later from
 * a loop callback (password hashes are made in the thread pool); req,
 * out and reqid stay valid until then. */
typedef void (*mdm_enroll_auth_fn)(mdm_server_t *s, const mdm_enroll_auth_req_t *req,
                                   mdm_enroll_auth_t *out, const char *reqid,
                                   mdm_enroll_auth_done_fn done, void *arg);
void mdm_enroll_set_auth(mdm_server_t *s, mdm_enroll_auth_fn fn);

/* What goes into an enrollment profile. */
typedef struct mdm_enroll_profile_opts {
    const char *user;              /* enrolled user (SCEP subject), may be NULL */
    const char *challenge;         /* SCEP challenge */
    bool include_mdm;              /* false: SCEP only (OTA phase 2) */
    bool include_scep;
    bool profile_service;          /* the OTA phase-1 "Profile Service" payload instead */
    const char *identifier_suffix; /* appended to enroll.profile_identifier, may be NULL */
} mdm_enroll_profile_opts_t;

/* Builds the enrollment profile as a plist dict. */
int mdm_enroll_build_profile(mdm_server_t *s, const mdm_enroll_profile_opts_t *o, plist_t *out,
                             mdm_err_t *err);

/* The base URL devices use ("https://host:port", no trailing slash). */
const char *mdm_enroll_base_url(mdm_server_t *s);

/* The APNs topic for new enrollments (push certificate, else enroll.topic). */
const char *mdm_enroll_topic(mdm_server_t *s);

int mdm_enroll_service_init(mdm_server_t *s, mdm_err_t *err);
void mdm_enroll_service_free(mdm_server_t *s);

/* `moonmdm enroll-profile [--user NAME]`. */
int mdm_cmd_enroll_profile(int argc, char **argv);

#endif
