/* The admin API (JSON over HTTPS, API keys checked by the router). */
#ifndef MDM_API_H
#define MDM_API_H

#include <jansson.h>
#include <stddef.h>

#include "mdm/enqueue.h"
#include "net/http.h"
#include "server.h"

/* Answers a store error: 503 storage_unavailable with Retry-After when
 * the disk or the map is full or the commit failed, else 500. */
void mdm_api_store_error(mdm_req_t *req, int rc);

/* The request body as a JSON object (jansson flags added), or NULL after
 * answering 400: error and detail when the body is not JSON or not an
 * object (with detail NULL, the parser's reason or "the body must be a
 * JSON object"); bad_request naming the field when a string in it, at any
 * depth, holds a NUL character (\u0000), which the C strings the routes
 * take would cut short. */
json_t *mdm_api_body_object(mdm_req_t *req, size_t flags, const char *error,
                            const char *detail);

/* s as text that a JSON string or key can hold: s itself when it is valid
 * UTF-8; otherwise a copy in req's arena in which every byte that is not
 * part of a UTF-8 character, and every '%', is written %XX (as in a URL
 * path, where such an enrollment id came from). The push answers key
 * their results by it, so that no id goes missing. */
const char *mdm_api_json_text(mdm_req_t *req, const char *s);

/* Sends j (reference stolen) as the JSON response. */
void mdm_api_send_json(mdm_req_t *req, int status, json_t *j);

/* Called once every push started by mdm_api_push_start has its answer.
 * results maps each id to {"status": "pushed", "apns_id": ...} or
 * {"status": ..., "error": ...}; it is borrowed (freed after the call). */
typedef void (*mdm_api_push_done_fn)(mdm_req_t *req, json_t *results, void *arg);

/* Wakes the given enrollments with a push and calls done(req, results, arg)
 * once APNs has answered for each of them (or it is known why no push was
 * sent), possibly before returning. Targets whose enqueue failed
 * (results[i].status not queued or duplicate) are skipped; results may be
 * NULL (push every id). ids must stay valid until done is called (the
 * request arena is fine). Without the push service every id answers "push
 * is not configured". */
void mdm_api_push_start(mdm_server_t *s, mdm_req_t *req, const char *const *ids, size_t n,
                        const mdm_target_result_t *results, mdm_api_push_done_fn done,
                        void *arg);

/* Registers PUT and GET /v1/pushcert (api_push.c; called by the APNs
 * service). */
void mdm_api_push_register(mdm_server_t *s);

/* Registers the device, command, enqueue and push routes. */
void mdm_api_mdm_register(mdm_server_t *s);

#endif
