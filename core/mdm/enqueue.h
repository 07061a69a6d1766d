/* Enqueueing a command for one or many enrollments in one transaction: the
 * entry point for the admin API, the NanoMDM-compatible API and policies. */
#ifndef MDM_ENQUEUE_H
#define MDM_ENQUEUE_H

#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mdm/queue.h"
#include "store/store.h"

enum mdm_target_status {
    MDM_TARGET_QUEUED = 0,
    MDM_TARGET_DUPLICATE,     /* dedupe: an identical command already waits */
    MDM_TARGET_UNKNOWN,       /* no such enrollment */
    MDM_TARGET_INVALID,       /* not a valid enrollment id */
};

typedef struct mdm_target_result {
    const char *id;
    int status;
    char dup_uuid[MDM_UUID_LEN + 1];
} mdm_target_result_t;

/* The longest time-to-live a command can have: ten years. */
#define MDM_TTL_MAX_MS ((int64_t)10 * 365 * 24 * 3600 * 1000)

typedef struct mdm_enqueue_req {
    plist_t command;          /* the Command dict (with RequestType) */
    const char *uuid;         /* NULL: a new UUID */
    int priority;             /* 0..255, higher first (default 0) */
    int64_t ttl_ms;           /* 0: no expiry; at most MDM_TTL_MAX_MS */
    bool dedupe;
    bool nopush;              /* do not wake the targets (read by the caller) */
    const char *const *targets;
    size_t ntargets;
} mdm_enqueue_req_t;

/* Stores the command and queues it for every target (results[i] tells what
 * happened to targets[i]). uuid_out gets the command UUID. Returns 0 even
 * when some targets failed; an error only for store failures or a UUID that
 * is already used (MDM_EEXIST). */
int mdm_enqueue(mdm_txn_t *txn, const mdm_enqueue_req_t *req, int64_t now_ms,
                char uuid_out[MDM_UUID_LEN + 1], mdm_target_result_t *results);

/* "queued", "duplicate", "unknown_enrollment", "invalid_id" */
const char *mdm_target_status_name(int status);

#endif
