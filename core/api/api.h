/* The admin API (JSON over HTTPS, API keys checked by the router). */
#ifndef MDM_API_H
#define MDM_API_H

#include <jansson.h>
#include <stddef.h>

#include "mdm/enqueue.h"
#include "net/http.h"
#include "server.h"

/* Sends j (reference stolen) as the JSON response. */
void mdm_api_send_json(mdm_req_t *req, int status, json_t *j);

/* Wakes the given enrollments with a push and returns, per id, an object
 * {"apns_id": ...} or {"error": ...}. Targets whose enqueue failed
 * (results[i].status not queued or duplicate) are skipped. results may be
 * NULL (push every id). The push service sets server->push_fn; without it
 * every id answers "push is not configured". */
json_t *mdm_api_push_results(mdm_server_t *s, const char *const *ids, size_t n,
                             const mdm_target_result_t *results);

/* Registers the device, command, enqueue and push routes. */
void mdm_api_mdm_register(mdm_server_t *s);

#endif
