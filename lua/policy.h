/* The Lua policy engine: loads a policy set (a directory whose init.lua
 * returns a table of hooks), runs its hooks in a sandbox with budgets, swaps
 * in new revisions without a restart, and records every decision.
 * docs/POLICY.md is the authoring guide; this header is the C side.
 *
 * Using it from a request handler:
 *
 *     mdm_policy_t *pol = mdm_policy_acquire(server);   // pins one revision
 *     mdm_policy_device_t dev = {.eid = eid, .enrollment = e, .device = d,
 *                                .first_checkin = is_new};
 *     mdm_policy_decision_t out;
 *     int rc = mdm_policy_checkin(pol, txn, req->id, &dev, msg, &out);
 *     if (rc != 0) ...                 // a store error: return it from the txn function
 *     if (out.status == MDM_POLICY_FAILED) ...   // fail closed (out already says so)
 *     ... out.reject, out.reason, out.commands (array of Command dicts) ...
 *     mdm_policy_decision_free(&out);
 *     mdm_policy_release(pol);
 *
 * Every hook function fills out completely, whatever happens: status is
 * MDM_POLICY_OK (the hook ran and returned a valid decision),
 * MDM_POLICY_ABSENT (the set has no such hook: apply the core's default) or
 * MDM_POLICY_FAILED (the hook raised an error, ran out of time, instructions
 * or memory, or returned something malformed; error says what, with file and
 * line, and the other fields hold the fail-closed decision). The return value
 * is 0, or a negative store error met while writing mdm.kv values or the
 * decision log into txn: return it from the transaction function so that the
 * store can roll back (or grow the map and run the request again).
 *
 * txn is the request's write transaction (from mdm_store_update): mdm.kv
 * writes are applied to it when the hook succeeds, and the decision log
 * entry is written in it. With txn NULL, mdm.kv is read-only (reads and the
 * decision log use their own transactions, so do not pass NULL from inside
 * a transaction function, and do not pass a view's read transaction).
 *
 * All functions run on the loop thread (but mdm_policy_pwcheck_work). */
#ifndef MDM_POLICY_H
#define MDM_POLICY_H

#include <jansson.h>
#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "store/store.h"
#include "util/err.h"
#include "util/plist.h"

typedef struct mdm_server mdm_server_t;

/* One loaded policy set (one revision), reference counted. */
typedef struct mdm_policy mdm_policy_t;

/* The hooks, in the order docs/POLICY.md lists them. */
typedef enum mdm_policy_hook {
    MDM_POLICY_HOOK_AUTHENTICATE = 0,
    MDM_POLICY_HOOK_SCEP,
    MDM_POLICY_HOOK_CHECKIN,
    MDM_POLICY_HOOK_GROUPS,
    MDM_POLICY_HOOK_PROFILES,
    MDM_POLICY_HOOK_CONNECT,
    MDM_POLICY_HOOK_RESULT,
    MDM_POLICY_HOOK_SELF_TEST,
    MDM_POLICY_HOOK__COUNT
} mdm_policy_hook_t;

/* "authenticate", "scep", ... ; NULL when out of range. */
const char *mdm_policy_hook_name(int hook);

/* The hook of a name, or -1. */
int mdm_policy_hook_parse(const char *name);

typedef enum mdm_policy_status {
    MDM_POLICY_OK = 0,
    MDM_POLICY_ABSENT = 1,
    MDM_POLICY_FAILED = 2,
} mdm_policy_status_t;

/* "ok", "absent", "failed". */
const char *mdm_policy_status_name(int status);

typedef enum mdm_policy_scep_decision {
    MDM_POLICY_SCEP_DENY = 0,
    MDM_POLICY_SCEP_ISSUE = 1,
    MDM_POLICY_SCEP_PENDING = 2,
} mdm_policy_scep_decision_t;

/* The outcome of one hook call. Fields a hook does not decide stay
 * zero/empty. Free with mdm_policy_decision_free(). */
typedef struct mdm_policy_decision {
    mdm_policy_status_t status;
    char error[512];           /* FAILED: "file:line: message" (or just the message) */
    /* authenticate: allow is true only when the hook said allow = true */
    bool allow;
    char *user;                /* authenticate: the user to enroll as, or NULL */
    mdm_strlist_t groups;      /* authenticate: groups for the new enrollment */
    /* scep: DENY unless the hook said "issue" or "pending" */
    mdm_policy_scep_decision_t scep;
    /* checkin: true to refuse the message (a failed hook refuses Authenticate) */
    bool reject;
    char *reason;              /* authenticate, scep, checkin: why (for logs), or NULL */
    plist_t commands;          /* checkin, connect, result: array of Command dictionaries
                                  (RequestType first), never NULL after a call */
    plist_t facts;             /* result: dictionary of facts to store, never NULL */
    plist_t respond;           /* checkin: the answer's dictionary (UserAuthenticate,
                                  GetToken), or NULL */
    mdm_strlist_t names;       /* groups: group names; profiles: profile identifiers */
} mdm_policy_decision_t;

void mdm_policy_decision_free(mdm_policy_decision_t *d);

/* The password checks of one authenticate request from the server, which
 * hashes them off the event loop. With one in mdm_policy_auth_req_t,
 * mdm.password.verify(plain, hash) answers from the results it holds; for
 * a pair it has not seen it records the pair and stops the hook: the call
 * decides nothing (status FAILED), writes no kv value, logs no decision,
 * and mdm_policy_pwcheck_pending() is true. The caller then runs
 * mdm_policy_pwcheck_work() in the thread pool and calls the hook again
 * (in a new transaction), until nothing is pending. Results are kept for
 * that one request; the plain texts are wiped when it is freed. */
typedef struct mdm_policy_pwcheck mdm_policy_pwcheck_t;

mdm_policy_pwcheck_t *mdm_policy_pwcheck_new(void);
void mdm_policy_pwcheck_free(mdm_policy_pwcheck_t *pw);

/* True when the last call stopped for a password hash. */
bool mdm_policy_pwcheck_pending(const mdm_policy_pwcheck_t *pw);

/* Hashes the pending pair and keeps the result. Runs on any thread; the
 * loop must not touch pw meanwhile. */
void mdm_policy_pwcheck_work(mdm_policy_pwcheck_t *pw);

/* What authenticate(req) sees. password is passed to the hook but never
 * logged or recorded. */
typedef struct mdm_policy_auth_req {
    const char *username;
    const char *password;
    const char *remote_addr;   /* "ip:port", or NULL */
    const char *user_agent;    /* or NULL */
    plist_t extra;             /* more fields (a dictionary, e.g. other form fields), or NULL;
                                  keys that look secret are masked in the decision log */
    mdm_policy_pwcheck_t *pwcheck; /* the server: hash passwords off the loop (above);
                                      NULL: mdm.password.verify hashes at once */
} mdm_policy_auth_req_t;

/* The device a device hook is about. The Lua `device` table is built from
 * these (docs/POLICY.md, "The device table"); every pointer may be NULL
 * except eid. Nothing here is changed or kept. */
typedef struct mdm_policy_device {
    const char *eid;           /* enrollment id (UDID, or "<device id>:<user>") */
    plist_t enrollment;        /* the enrollments/<eid> record */
    mdm_rec_t *enrollment_rec; /* or, when set, that record read in place (it is
                                  used instead of enrollment) */
    plist_t device;            /* the devices/<device id> record */
    plist_t installed;         /* dictionary: profile identifier -> hash (string or data) */
    plist_t groups;            /* array of strings: last known groups; NULL: the device
                                  record's "groups" array */
    bool first_checkin;        /* a new enrollment (also true when the enrollment record
                                  says new_enrollment) */
    int64_t seen_at_ms;        /* non-zero: last_seen reads this, not the record's (a
                                  request that is about to record it) */
    /* When device is NULL and this is set, the device record is read on
     * first use: device_record(record_arg, true) returns it (owned by the
     * caller, the same on every call; NULL when there is none), and
     * device_record(record_arg, false) returns it only if already read. */
    plist_t (*device_record)(void *record_arg, bool load);
    void *record_arg;
} mdm_policy_device_t;

/* Loads the enrollment record eid and the device record it points to from
 * the store (for eval and for callers that have neither at hand). When no
 * enrollment exists, eid is tried as a device id. Free with
 * mdm_policy_device_free(). MDM_ENOTFOUND when neither exists. */
int mdm_policy_device_load(mdm_txn_t *txn, const char *eid, mdm_policy_device_t *out);
void mdm_policy_device_free(mdm_policy_device_t *d);

/* ---- the hooks --------------------------------------------------------- */

/* authenticate(req) -> {allow, user, groups, reason}. */
int mdm_policy_authenticate(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                            const mdm_policy_auth_req_t *req, mdm_policy_decision_t *out);

/* scep(csr, ctx) -> "issue" | "deny" | "pending" | {decision, reason}. csr
 * and ctx are dictionaries the caller fills (docs/POLICY.md lists the keys
 * the core passes); either may be NULL (an empty table). */
int mdm_policy_scep(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid, plist_t csr, plist_t ctx,
                    mdm_policy_decision_t *out);

/* checkin(device, msg) -> {reject, reason, commands}. msg is the check-in
 * message dictionary. A failed hook rejects an Authenticate message and
 * accepts other messages with no commands. */
int mdm_policy_checkin(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                       const mdm_policy_device_t *dev, plist_t msg, mdm_policy_decision_t *out);

/* groups(device) -> list of names (out->names). FAILED: keep the last known
 * groups. */
int mdm_policy_groups(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                      const mdm_policy_device_t *dev, mdm_policy_decision_t *out);

/* profiles(device, groups) -> list of identifiers (out->names). A policy
 * may also give `profiles` as a table {group = {identifiers}, ["*"] =
 * {...}}: the device gets those of its groups and of "*". FAILED: keep the
 * last known profiles (install and remove nothing). */
int mdm_policy_profiles(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                        const mdm_policy_device_t *dev, const mdm_strlist_t *groups,
                        mdm_policy_decision_t *out);

/* connect(device, report) -> {commands}. report is the command report
 * dictionary (Status, CommandUUID, ...). FAILED: no commands. */
int mdm_policy_connect(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                       const mdm_policy_device_t *dev, plist_t report, mdm_policy_decision_t *out);

/* connect() without a transaction, to find out whether an Idle needs any
 * write: mdm.kv reads see the store, writes are only noted. *wants_write
 * is true when the hook queued commands or wrote kv values: the caller
 * then calls mdm_policy_connect in a write transaction (the hook runs
 * again). The decision is logged either way. */
int mdm_policy_connect_probe(mdm_policy_t *p, const char *reqid, const mdm_policy_device_t *dev,
                             plist_t report, mdm_policy_decision_t *out, bool *wants_write);

/* result(device, result) -> {commands, facts}. result is the report of a
 * finished command with "RequestType" added by the caller. FAILED: nothing. */
int mdm_policy_result(mdm_policy_t *p, mdm_txn_t *txn, const char *reqid,
                      const mdm_policy_device_t *dev, plist_t result, mdm_policy_decision_t *out);

/* ---- policy sets --------------------------------------------------------- */

/* What loading needs; mdm_policy_settings_from_config() fills it. */
typedef struct mdm_policy_settings {
    const char *dir;           /* the policy directory */
    const char *lib_dir;       /* shipped helpers; NULL: $MOONMDM_LUA_LIB, else
                                  MOONMDM_SOURCE_DIR "/lua/lib" */
    size_t memory_max;         /* bytes (0: 64 MiB) */
    uint64_t budget_ms[MDM_POLICY_HOOK__COUNT]; /* per hook (0: 50 ms) */
    uint64_t instructions;     /* per hook call (0: 20 million) */
    uint64_t load_budget_ms;   /* loading and self_test (0: 2 s) */
    mdm_store_t *store;        /* the store, or NULL (no kv outside tests, no decision log,
                                  no profile checks) */
    bool decision_log;         /* record decisions (needs store) */
    bool decision_log_all;     /* also connect and result calls that decided nothing */
    void *log_sink;            /* server: decision log entries of calls without a
                                  transaction are buffered here and written by the
                                  engine's timer (NULL: written at once) */
} mdm_policy_settings_t;

/* Fills s from the config (dir and budgets; store is left NULL). Fails
 * with a message for a malformed policy.hook_budgets entry. s->dir points
 * into cfg. */
int mdm_policy_settings_from_config(mdm_policy_settings_t *s, const mdm_config_t *cfg,
                                    mdm_err_t *err);

/* Where a load failed. */
typedef struct mdm_policy_error {
    char file[256];            /* relative to the policy directory ("" when unknown) */
    int line;                  /* 0 when unknown */
    char message[512];
} mdm_policy_error_t;

/* Formats e as "file:line: message" (dir/ prefixed to file when given). */
void mdm_policy_error_format(const mdm_policy_error_t *e, const char *dir, char *buf, size_t len);

/* Loads and validates the policy set in s->dir: reads every .lua file
 * (subdirectories included, tests/ and hidden names excluded), compiles
 * them, runs init.lua, checks the table it returns (docs/POLICY.md,
 * "Loading and reload") and runs self_test. On success *out holds one
 * reference. On failure (MDM_EPOLICY, MDM_ENOTFOUND when the directory or
 * init.lua is missing) e says where. */
int mdm_policy_load(const mdm_policy_settings_t *s, mdm_policy_t **out, mdm_policy_error_t *e);

/* A policy with no hooks (every call answers MDM_POLICY_ABSENT). */
mdm_policy_t *mdm_policy_new_empty(void);

/* Reference counting: acquire pins the server's current policy for a
 * request (never NULL: an empty policy when none is loaded); a reload in
 * between does not affect the holder. */
mdm_policy_t *mdm_policy_acquire(mdm_server_t *s);
mdm_policy_t *mdm_policy_ref(mdm_policy_t *p);
void mdm_policy_release(mdm_policy_t *p);

/* The revision (hex SHA-256 over sorted file names and contents; "" for
 * the empty policy) and the kv namespace. */
const char *mdm_policy_revision(const mdm_policy_t *p);
const char *mdm_policy_name(const mdm_policy_t *p);

/* True when the set has the hook. */
bool mdm_policy_has_hook(const mdm_policy_t *p, int hook);

/* ---- the server side ---------------------------------------------------- */

/* Loads policy.dir (a missing directory or init.lua gives the empty policy
 * and a warning; a broken set fails start-up), registers /v1/policy,
 * /v1/policy/reload, /v1/policy/eval and /v1/decisions, sets
 * server->on_reload (SIGHUP), watches the directory (policy.watch) and
 * prunes the decision log. */
int mdm_policy_service_init(mdm_server_t *s, mdm_err_t *err);
void mdm_policy_service_free(mdm_server_t *s);

/* Builds, validates and swaps in the policy set of policy.dir. On failure
 * the running revision stays, and the error is logged, counted and kept
 * for GET /v1/policy. *changed tells whether the revision changed (may be
 * NULL). Returns 0 or MDM_EPOLICY/MDM_ENOTFOUND with e filled. */
int mdm_policy_reload(mdm_server_t *s, bool *changed, mdm_policy_error_t *e);

/* GET /v1/policy: {revision, name, loaded_at, dir, files, hooks,
 * last_error, reloads, failures}. */
json_t *mdm_policy_status_json(mdm_server_t *s);

/* Loads the set in dir with the server's settings, without swapping it in
 * (POST /v1/policy/eval with a candidate "dir"). */
int mdm_policy_load_candidate(mdm_server_t *s, const char *dir, mdm_policy_t **out,
                              mdm_policy_error_t *e);

/* Registers the routes of the policy API (core/api/api_policy.c). */
void mdm_api_policy_register(mdm_server_t *s);

/* Dry run: runs one hook of p for the stored device `device_id` inside a
 * read-only view of the store, changing nothing (mdm.kv writes are
 * collected, not applied; no decision is logged). input (may be NULL) gives
 * the hook's other argument(s) as JSON: checkin {msg}, connect {report},
 * result {result}, scep {csr, ctx}, authenticate {req}; hook "profiles"
 * runs groups first. *out is {hook, device, revision, status, error,
 * decision, groups, logs, kv_writes, duration_us}. Returns 0, MDM_ENOTFOUND
 * (no such device) or MDM_EINVAL (bad hook or input) with err set. */
int mdm_policy_eval(mdm_policy_t *p, mdm_store_t *store, const char *device_id, const char *hook,
                    const json_t *input, json_t **out, mdm_err_t *err);

/* Writes the decision log entries the server holds back (they go to the
 * store every timer tick) now; GET /v1/decisions calls it before reading. */
void mdm_policy_flush_decisions(mdm_server_t *s);

/* GET /v1/decisions: the newest entries first, filtered by device (eid)
 * and hook when given. */
int mdm_policy_decisions_json(mdm_store_t *store, const char *device, const char *hook,
                              size_t limit, json_t **out);

/* Prunes the decision log: deletes at most batch of the oldest entries
 * that are older than max_age_ms or beyond max_count. *deleted says how
 * many went. */
int mdm_policy_decisions_prune(mdm_store_t *store, uint64_t max_count, uint64_t max_age_ms,
                               size_t batch, size_t *deleted);

/* ---- policy tests --------------------------------------------------------- */

/* Runs every *_test.lua in test_dir (NULL: <dir>/tests) against the set in
 * s->dir, printing to out (TAP when tap, else failures and a summary line
 * "N passed, N failed"). Counts go to *passed / *failed. Returns 0 when
 * every test ran (passed or not), or an error when the policy or a test
 * file cannot be loaded (e says where). */
int mdm_policy_run_tests(const mdm_policy_settings_t *s, const char *test_dir, bool tap, FILE *out,
                         int *passed, int *failed, mdm_policy_error_t *e);

/* `moonmdm policy check|test|eval|reload` (lua/policy_cli.c). */
int mdm_cmd_policy(int argc, char **argv);

#endif
