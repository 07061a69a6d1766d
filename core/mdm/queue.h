/* The durable command queue (tables commands, queue, results, index).
 *
 * A command (UUID, RequestType, the full command plist as sent) is stored
 * once and queued for one or many enrollments. Per enrollment the queue is
 * ordered by priority (higher first), then by enqueue order:
 *
 *   queue:   <eid> \0 <255-priority> <seq be64>  ->  <uuid 36> <expires_at be64>
 *   results: <eid> \0 <uuid>                     ->  binary plist (status, times, result)
 *   index:   "cmdt\0" <uuid> \0 <eid>            ->  ""   (targets of a command)
 *   index:   "rexp\0" <completed_at be64> <eid> \0 <uuid> -> "" (retention)
 *
 * Every function takes the caller's transaction, so that a report's result
 * and the choice of the next command commit together. Status values:
 * Queued and NotNow (waiting); Acknowledged, Error, CommandFormatError,
 * Expired, Canceled, NotNowLimit, Cleared (terminal). */
#ifndef MDM_QUEUE_H
#define MDM_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"
#include "util/buf.h"

#define MDM_UUID_LEN 36

/* Room for a RequestType and its NUL. */
#define MDM_RTYPE_MAX 96

typedef struct mdm_command_info {
    char uuid[MDM_UUID_LEN + 1];
    char request_type[MDM_RTYPE_MAX];
    int priority;             /* 0..255, higher first */
    int64_t created_ms;
    int64_t expires_ms;       /* 0: never */
    unsigned char hash[32];   /* of the Command dict, for de-duplication */
} mdm_command_info_t;

/* Stores a command: plist is the complete command plist {CommandUUID,
 * Command} as it will be sent. */
int mdm_command_put(mdm_txn_t *txn, const mdm_command_info_t *info, const void *plist,
                    size_t len);

/* Reads a command's info (and its plist into plist_out if not NULL). */
int mdm_command_get(mdm_txn_t *txn, const char *uuid, mdm_command_info_t *info,
                    mdm_buf_t *plist_out);

enum mdm_enqueue_outcome {
    MDM_ENQ_QUEUED = 0,
    MDM_ENQ_DUPLICATE = 1,    /* dedupe asked and an identical command waits */
    MDM_ENQ_ALREADY = 2,      /* this command is already queued for the enrollment
                                 (named twice in one enqueue): nothing more queued */
};

/* Queues a stored command for one enrollment. With dedupe, an identical
 * command (same hash) already waiting for that enrollment means nothing is
 * queued; its UUID is written to dup_uuid. */
int mdm_queue_add(mdm_txn_t *txn, const char *eid, const mdm_command_info_t *info, bool dedupe,
                  int *outcome, char dup_uuid[MDM_UUID_LEN + 1]);

/* The next command to offer to eid: the first waiting entry by priority and
 * order that is not expired and was not answered NotNow in the current
 * session (a counter the caller increments at each Idle). Expired entries
 * met on the way are dropped with status Expired. Writes the command plist
 * to plist_out and marks it sent. MDM_ENOTFOUND when nothing is due. */
int mdm_queue_next(mdm_txn_t *txn, const char *eid, int64_t now_ms, int64_t session,
                   char uuid_out[MDM_UUID_LEN + 1], mdm_buf_t *plist_out);

enum mdm_report_outcome {
    MDM_REPORT_RECORDED = 0,  /* a waiting command got its result */
    MDM_REPORT_DUPLICATE = 1, /* the command was already terminal: ignored */
    MDM_REPORT_UNKNOWN = 2,   /* not a command of this enrollment: ignored */
    MDM_REPORT_NOTNOW = 3,    /* kept queued */
    MDM_REPORT_NOTNOW_LIMIT = 4, /* too many NotNow: dropped */
};

/* Records a device's report on a command. status is the report's Status;
 * raw is the whole report plist (kept as the result). session identifies
 * the device's current session (see mdm_queue_next): a NotNow command is
 * not offered again in the same session. When rtype is not NULL it gets
 * the command's RequestType (empty when the command is unknown). */
int mdm_queue_report(mdm_txn_t *txn, const char *eid, const char *uuid, const char *status,
                     const void *raw, size_t raw_len, int64_t now_ms, int64_t session,
                     uint64_t notnow_max, int *outcome, char rtype[MDM_RTYPE_MAX]);

/* Cancels a waiting command of eid (status Canceled). MDM_ENOTFOUND if it
 * is not waiting. */
int mdm_queue_cancel(mdm_txn_t *txn, const char *eid, const char *uuid, int64_t now_ms);

/* Drops every waiting command of eid with the given terminal status
 * (re-enrollment uses "Cleared"). *n gets the number dropped. */
int mdm_queue_clear(mdm_txn_t *txn, const char *eid, const char *status, int64_t now_ms,
                    size_t *n);

/* Number of waiting commands of eid. */
int mdm_queue_length(mdm_txn_t *txn, const char *eid, size_t *n);

/* Whether eid has no waiting command; reads at most one queue entry. */
int mdm_queue_empty(mdm_txn_t *txn, const char *eid, bool *empty);

/* A result record as stored (table results). Written in a fixed binary
 * layout ("mdR\x01", flags, nine 64-bit fields, status, RequestType, the
 * report); records written as plists by earlier versions are read too and
 * rewritten in the binary layout when they next change. */
typedef struct mdm_result_rec {
    bool has_status;
    char status[32];
    char request_type[MDM_RTYPE_MAX];
    int64_t queued_at, updated_at, sent_at, completed_at, notnow_at;
    int64_t notnow_session; /* -1: none */
    uint64_t notnow_count, priority, seq;
    bool has_raw;             /* the device's report, in raw (own copy) */
    mdm_buf_t raw;
    int at;                   /* where it was read from (queue.c; not stored) */
    int64_t expires_at;       /* read from a queue entry: the entry's expiry (not stored) */
} mdm_result_rec_t;

/* Decodes a stored result record into r (fields absent from a plist record
 * get their defaults). MDM_EPARSE when it is neither layout; r is then
 * empty. Free r with mdm_result_rec_free in every case. */
int mdm_result_rec_decode(const void *data, size_t len, mdm_result_rec_t *r);
/* Appends the binary layout of r to out (after resetting it). */
void mdm_result_rec_encode(const mdm_result_rec_t *r, mdm_buf_t *out);
void mdm_result_rec_free(mdm_result_rec_t *r);

/* One result record, decoded. */
typedef struct mdm_result {
    char uuid[MDM_UUID_LEN + 1];
    char eid[260];
    char status[32];
    char request_type[MDM_RTYPE_MAX];
    int64_t queued_ms, sent_ms, updated_ms, completed_ms, notnow_ms;
    uint64_t notnow_count;
    uint64_t seq;             /* the enqueue order (0 in records older than it) */
    const void *raw;          /* the device's report plist (valid during the callback) */
    size_t raw_len;
} mdm_result_t;

typedef int (*mdm_result_fn)(const mdm_result_t *r, void *arg);

/* Reads the result of (eid, uuid); the report plist is copied to raw_out
 * when not NULL (out->raw is NULL here). */
int mdm_result_get(mdm_txn_t *txn, const char *eid, const char *uuid, mdm_result_t *out,
                   mdm_buf_t *raw_out);

/* Calls fn for every result of eid (any order). */
int mdm_results_of_enrollment(mdm_txn_t *txn, const char *eid, mdm_result_fn fn, void *arg);

/* Calls fn for every target of command uuid, in enrollment id order; a
 * value other than 0 from fn ends the walk and is returned. */
int mdm_results_of_command(mdm_txn_t *txn, const char *uuid, mdm_result_fn fn, void *arg);

/* The same from the target from_eid on (inclusive; NULL: the first). */
int mdm_results_of_command_from(mdm_txn_t *txn, const char *uuid, const char *from_eid,
                                mdm_result_fn fn, void *arg);

/* Deletes up to max terminal results completed before cutoff_ms (and the
 * commands no target needs any more). *n gets the number deleted. */
int mdm_results_prune(mdm_txn_t *txn, int64_t cutoff_ms, size_t max, size_t *n);

/* Moving the waiting results of schemas 2 and 3 into their queue entries
 * (queue.c, "Where a result record is kept"). Readers find them where they
 * are, and each moves at its next change; this moves the rest, so that
 * queues of devices that stay away cost what new ones do. Call
 * mdm_queue_upgrade_txn in write transactions until done: each step looks
 * at a bounded number of queue entries and resumes where the last one
 * ended; the last records meta "queue_layout", so that later starts skip
 * it at once.
 *
 * mdm_queue_upgrade_step runs one step in its own update and counts it
 * only once that update is through: the store may run a transaction
 * function again (after growing a full map), and each run starts from the
 * last step that was kept. */
#define MDM_QUEUE_LAYOUT 4
typedef struct mdm_queue_upgrade {
    size_t scan_max; /* queue entries looked at per step (0: 20,000) */
    mdm_buf_t from;  /* the next queue key to look at */
    size_t scanned;  /* queue entries looked at */
    size_t moved;    /* results moved into their entries */
    bool done;
    /* The step in progress, kept by mdm_queue_upgrade_step. */
    mdm_buf_t step_from;
    size_t step_scanned, step_moved;
    bool step_done;
} mdm_queue_upgrade_t;
int mdm_queue_upgrade_step(mdm_store_t *store, mdm_queue_upgrade_t *u);
/* The transaction function of a step (u's counts do not move). */
int mdm_queue_upgrade_txn(mdm_txn_t *txn, mdm_queue_upgrade_t *u);
void mdm_queue_upgrade_free(mdm_queue_upgrade_t *u);

/* Deletes everything of eid: queue, results, index entries. */
int mdm_queue_forget(mdm_txn_t *txn, const char *eid);

/* True for the terminal status names. */
bool mdm_status_terminal(const char *status);

#endif
