/* The subsystems of the server (CA, SCEP, MDM, policy, APNs, API), started
 * after the core and stopped before it. */
#ifndef MDM_MODULES_H
#define MDM_MODULES_H

#include "server.h"

int mdm__modules_init(mdm_server_t *s, mdm_err_t *err);
void mdm__modules_free(mdm_server_t *s);

#endif
