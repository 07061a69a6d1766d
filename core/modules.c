/* Starts and stops the server's subsystems in dependency order. */
#include "modules.h"

#include "api/api.h"
#include "apns/apns.h"
#include "crypto/ca.h"
#include "mdm/mdm.h"
#include "mdm/enroll.h"
#include "mdm/policy_glue.h"
#include "mdm/profiles.h"
#include "policy.h"
#include "scep/service.h"
#include "util/alloc.h"
#include "util/log.h"

int mdm__modules_init(mdm_server_t *s, mdm_err_t *err)
{
    const mdm_config_t *cfg = s->cfg;
    int rc = mdm_ca_load(cfg->ca_cert, cfg->ca_key, cfg->ca_chain,
                         cfg->tls_allow_insecure_key_mode, &s->ca, err);
    if (rc != 0)
        return rc;
    s->ca->validity_ms = cfg->ca_validity_ms;
    if (cfg->ca_crl_url != NULL)
        s->ca->crl_url = mdm_strdup(cfg->ca_crl_url);
    rc = mdm_scep_service_init(s, err);
    if (rc != 0)
        return rc;
    rc = mdm_mdm_service_init(s, err);
    if (rc != 0)
        return rc;
    /* Profiles before the policy: a policy's profile map is checked
     * against the stored profiles when it loads. */
    rc = mdm_profiles_service_init(s, err);
    if (rc != 0)
        return rc;
    rc = mdm_policy_service_init(s, err);
    if (rc != 0)
        return rc;
    rc = mdm_apns_service_init(s, err);
    if (rc != 0)
        return rc;
    mdm_api_mdm_register(s);
    rc = mdm_enroll_service_init(s, err);
    if (rc != 0)
        return rc;
    mdm_policy_glue_init(s);
    return 0;
}

void mdm__modules_free(mdm_server_t *s)
{
    mdm_apns_service_free(s);
    mdm_scep_service_free(s);
    mdm_enroll_service_free(s);
    mdm_profiles_service_free(s);
    mdm_policy_service_free(s);
    mdm_mdm_service_free(s);
    mdm_ca_free(s->ca);
    s->ca = NULL;
}
