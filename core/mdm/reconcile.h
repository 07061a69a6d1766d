/* Profile reconciliation: the policy says which profiles a device should
 * have (groups(), then profiles()); the core compares that with what it
 * installed (table installed) and queues InstallProfile for what is missing
 * or changed and RemoveProfile for what it manages and is no longer wanted.
 * Profiles the server did not install are never touched.
 *
 * installed/<eid>\0<identifier> -> binary plist {hash, state, command_uuid,
 * updated_at}; state is "pending" (InstallProfile queued), "installed"
 * (acknowledged), "failed" (the device refused that version: not retried
 * until the profile changes or a reconcile is forced) or "removing". */
#ifndef MDM_RECONCILE_H
#define MDM_RECONCILE_H

#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>

#include "policy.h"
#include "server.h"
#include "store/store.h"

typedef struct mdm_reconcile_stats {
    size_t installs, removals, missing_profiles;
    bool skipped;           /* the policy could not decide: nothing changed */
    char reason[160];
} mdm_reconcile_stats_t;

/* Builds the policy's device view for eid from its records (the caller
 * frees with mdm__policy_view_free). e may be NULL (loaded here). */
typedef struct mdm_policy_view {
    mdm_policy_device_t dev;
    plist_t enrollment, device, installed;
    bool own_enrollment;
    mdm_txn_t *txn;      /* lazy: where the device record is read from */
    bool device_read;    /* lazy: the record was read (device may be NULL) */
    mdm_rec_t *rec;      /* _rec: the enrollment record read in place */
    bool detached;       /* _detached: the device record comes from dev_bin */
    const void *dev_bin; /* its stored bytes (NULL: none) */
    size_t dev_len;
} mdm_policy_view_t;

int mdm__policy_view(mdm_txn_t *txn, const char *eid, plist_t e, mdm_policy_view_t *v);
/* A view over the enrollment record rec (its tree if it has one, else its
 * bytes read in place) that reads the device record only when the policy
 * first needs it: rec and txn must outlive the view, and the view must not
 * move (it points at itself). */
void mdm__policy_view_rec(mdm_txn_t *txn, const char *eid, mdm_rec_t *rec,
                          mdm_policy_view_t *v);
/* The same, for use after txn ends: the device record is parsed, on first
 * use, from dev_bin (its stored bytes, NULL when there is none); rec and
 * dev_bin must outlive the view. */
void mdm__policy_view_detached(mdm_txn_t *txn, const char *eid, mdm_rec_t *rec,
                               const void *dev_bin, size_t dev_len, mdm_policy_view_t *v);
void mdm__policy_view_free(mdm_policy_view_t *v);

/* Reconciles eid in txn. e is the enrollment record (its
 * reconciled_revision and reconciled_at are updated; the caller saves it).
 * force: also retry profiles the device refused. */
int mdm_reconcile(mdm_server_t *s, mdm_policy_t *pol, mdm_txn_t *txn, const char *reqid,
                  const char *eid, plist_t e, bool force, mdm_reconcile_stats_t *st);

/* True when eid should be reconciled at its next Idle: a new policy
 * revision, a change of the stored profiles (meta "profiles_revision"), new
 * facts, or a request for it. */
bool mdm_reconcile_due(mdm_txn_t *txn, mdm_policy_t *pol, mdm_rec_t *e,
                       mdm_rec_t *device); /* device: NULL for none */

/* Keeps the installed table current from a finished command: InstallProfile
 * and RemoveProfile results, and ProfileList answers. */
int mdm_reconcile_on_result(mdm_txn_t *txn, const char *eid, const char *request_type,
                            const char *status, const char *uuid, plist_t report, int64_t now);

/* Queues the Command dicts of a policy decision for eid. */
int mdm__enqueue_commands(mdm_txn_t *txn, const char *eid, plist_t commands, int64_t now,
                          size_t *n);

/* The installed table of eid as a dict identifier -> hash. */
plist_t mdm__installed_dict(mdm_txn_t *txn, const char *eid);

/* Calls fn for each profile entry of eid: its identifier and record
 * (hash, state: pending, installed, failed, removing or remove_failed;
 * command_uuid, updated_at, install_failures, remove_failures, failed_hash
 * of an update the device refused). fn may write. */
int mdm_reconcile_each(mdm_txn_t *txn, const char *eid,
                       int (*fn)(const char *id, plist_t rec, void *arg), void *arg);

/* Forgets eid's installed entries (device deleted). */
int mdm_reconcile_forget(mdm_txn_t *txn, const char *eid);

#endif
