/* The APNs push service: wakes devices so that they connect and fetch their
 * commands (PROTOCOL.md section 7).
 *
 * An HTTP/2 client on libcurl's multi interface, driven by the server's
 * libuv loop (a uv_poll_t per socket, one uv_timer_t for curl's timeouts):
 * no thread per push and no blocking call on the loop. Requests are
 * multiplexed over a few long-lived connections per push certificate
 * (apns.connections); at most apns.max_in_flight are unanswered at once and
 * the rest wait in a queue. Each topic may hold an equal part of those
 * slots (split among the topics whose certificate is not blocked), so that
 * one whose requests stall cannot keep the others' pushes waiting.
 *
 * Pushes to one enrollment coalesce: while one is queued or in flight, and
 * for apns.coalesce_window after APNs accepted it (unless the device has
 * been seen since), further pushes to that enrollment wait for it and get
 * its result. 429, 5xx and connection failures are retried with
 * exponential backoff and jitter (apns.retry_max); 410 Unregistered and 400
 * BadDeviceToken / DeviceTokenNotForTopic mark the enrollment's token
 * invalid until its next TokenUpdate; 403 stops pushes for the certificate's
 * topic until a new certificate is installed. A sweep (apns.sweep_interval)
 * pushes enrollments that have commands waiting and have been silent for
 * apns.sweep_after. */
#ifndef MDM_APNS_H
#define MDM_APNS_H

#include <stdbool.h>
#include <stddef.h>

#include "apns/pushcert.h"
#include "server.h"

/* What became of one push. */
enum mdm_push_status {
    MDM_PUSH_PUSHED = 0,      /* APNs accepted it (apns_id is set) */
    MDM_PUSH_NO_TOKEN,        /* no push token yet (no TokenUpdate since enrolling) */
    MDM_PUSH_TOKEN_INVALID,   /* APNs refused the token; waiting for a TokenUpdate */
    MDM_PUSH_DISABLED,        /* the enrollment is checked out */
    MDM_PUSH_UNKNOWN,         /* no enrollment with this id */
    MDM_PUSH_NOT_CONFIGURED,  /* no push certificate is loaded at all */
    MDM_PUSH_ERROR,           /* anything else; error says what */
};

typedef struct mdm_push_result {
    int status;               /* enum mdm_push_status */
    const char *apns_id;      /* MDM_PUSH_PUSHED: the apns-id of the accepted push */
    const char *error;        /* otherwise: what went wrong, for people */
    int http_status;          /* the last APNs answer (0: none) */
    const char *reason;       /* APNs's "reason", or NULL */
    bool coalesced;           /* answered by a push that was already under way */
} mdm_push_result_t;

/* Receives the result of pushes[index]. The result is valid during the call. */
typedef void (*mdm_apns_result_fn)(void *arg, size_t index, const mdm_push_result_t *r);

/* Starts the service: push certificates from the config and the store, the
 * curl multi handle, the sweep; registers the /v1/pushcert routes and the
 * server's push_fn and topic_fn. */
int mdm_apns_service_init(mdm_server_t *s, mdm_err_t *err);

/* Stops it: pushes still waiting are answered with an error. */
void mdm_apns_service_free(mdm_server_t *s);

/* Pushes to each of eids[0..n) (copied) and calls cb(arg, i, result) once
 * per i, always from a later loop callback, never before this returns.
 * cb may be NULL (nobody waits). Returns MDM_ESTATE when the service is not
 * running (cb is then never called). */
int mdm_apns_push_batch(mdm_server_t *s, const char *const *eids, size_t n,
                        mdm_apns_result_fn cb, void *arg);

/* Fire and forget: pushes to each of eids[0..n); results go to the log and
 * the metrics only. (The policy engine's "push on revision" uses it.)
 * Returns the number of pushes queued (n), or MDM_ESTATE when the service
 * is not running. */
int mdm_apns_push_many(mdm_server_t *s, const char *const *eids, size_t n);

/* The device of eid was just heard from (a check-in or a report that was
 * answered): a push accepted earlier no longer stands for later commands,
 * as the device may have fetched its queue before they were queued; the
 * next push request for eid makes a push of its own. Cheap (one hash
 * lookup); does nothing when the service is not running. */
void mdm_apns_seen(mdm_server_t *s, const char *eid);

/* The enrollment eid has a new (or renewed) push token: a push already on
 * its way, or accepted, no longer answers for later requests. */
void mdm_apns_token_changed(mdm_server_t *s, const char *eid);

/* "pushed", "no_token", "token_invalid", "disabled", "unknown_enrollment",
 * "not_configured", "error". */
const char *mdm_push_status_name(int status);

/* Installs a push certificate uploaded through the API: refuses an expired
 * or not yet valid one (MDM_EEXPIRED) and, when replace_topic is not NULL,
 * one for another topic (MDM_EINVAL); stores it, replaces the certificate
 * of its topic at once (new connections use it; a topic stopped by a 403 is
 * pushed again). Takes ownership of pc in every case. */
int mdm_apns_pushcert_install(mdm_server_t *s, mdm_pushcert_t *pc, const char *replace_topic,
                              bool *replaced, mdm_err_t *err);

/* The certificates in use (for listing), or NULL when the service is off. */
const mdm_pushcerts_t *mdm_apns_pushcerts(mdm_server_t *s);

#endif
