/* Plugs the policy engine into enrollment (authenticate) and SCEP (scep). */
#ifndef MDM_POLICY_GLUE_H
#define MDM_POLICY_GLUE_H

#include "server.h"

void mdm_policy_glue_init(mdm_server_t *s);

#endif
