/* Starts and stops the server's subsystems in dependency order. */
#include "modules.h"

#include "crypto/ca.h"
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
    return 0;
}

void mdm__modules_free(mdm_server_t *s)
{
    mdm_ca_free(s->ca);
    s->ca = NULL;
}
