/* Internals of the Lua policy engine shared by the files in lua/: the
 * sandbox (a Lua state with a memory cap and per-call budgets), conversions
 * between Lua and plists/JSON, the `mdm` module, and the state of one
 * loaded policy set.
 * Nothing outside lua/ includes this; the public interface is policy.h. */
#ifndef MDM_LUA_SANDBOX_INTERNAL_H
#define MDM_LUA_SANDBOX_INTERNAL_H

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/metrics.h"
#include "config.h"
#include "policy.h"
#include "util/buf.h"
#include "store/store.h"

/* ---- sandbox.c ----------------------------------------------------------- */

/* Why a running call was stopped. */
enum {
    MDM__KILL_NONE = 0,
    MDM__KILL_TIME,
    MDM__KILL_INSNS,
    MDM__KILL_MEMORY,
    MDM__KILL_PATTERN,        /* a pattern match spent the instruction budget */
    MDM__KILL_DEFER,          /* mdm.password.verify needs a hash made off the loop:
                                 the call is run again once it is known */
    MDM__KILL_PASSWORDS,      /* too many passwords verified in one call */
};

/* The budget of the code running now (a hook call, loading, a test). */
typedef struct mdm__budget {
    bool active;
    int kill;                 /* MDM__KILL_*: set once the budget is spent */
    uint64_t start_ns;
    uint64_t deadline_ns;     /* monotonic; 0: none */
    uint64_t limit_ns;        /* for messages */
    uint64_t cpu_allow_ns;    /* processor time the call may use (to the first deadline) */
    uint64_t cpu_ref_ns;      /* the thread's processor time at most cpu_slack_ns before the start */
    uint64_t cpu_slack_ns;
    uint64_t waited_ns;       /* deadline moved by this much: the thread was not running */
    uint64_t insns;           /* instructions counted so far */
    uint64_t insn_limit;      /* 0: none */
    uint64_t clock_at;        /* library work: look at the clock when insns reaches this */
} mdm__budget_t;

/* A sandboxed Lua state. Its address is the allocator's user data, so it
 * must not move while the state lives. */
typedef struct mdm__sandbox {
    lua_State *L;
    size_t mem_used;
    size_t mem_max;
    size_t mem_peak;
    size_t alloc_unclocked;   /* bytes allocated since the allocator looked at the clock */
    mdm__budget_t b;
    uint64_t last_limit_ns;   /* the time limit of the budget that ended last */
} mdm__sandbox_t;

/* Creates the state with only the allowed libraries (see docs/POLICY.md,
 * "Sandbox"). On failure err holds the reason and sb->L is NULL. */
int mdm__sandbox_open(mdm__sandbox_t *sb, size_t mem_max, char *err, size_t errlen);
void mdm__sandbox_close(mdm__sandbox_t *sb);

/* Starts a budget for code about to run on thread L (limit_ns and
 * insn_limit: 0 for none); the previous budget is saved so that calls can
 * nest (a policy test calling a hook). */
void mdm__sandbox_begin(mdm__sandbox_t *sb, lua_State *L, uint64_t limit_ns, uint64_t insn_limit,
                        mdm__budget_t *saved);

/* Whether the running call has spent its time budget (see out_of_time in
 * sandbox.c): for a check when the call returned. */
bool mdm__sandbox_out_of_time(mdm__sandbox_t *sb);

/* Ends the budget begun with the matching mdm__sandbox_begin. Returns the
 * MDM__KILL_* reason the code was stopped for. */
int mdm__sandbox_end(mdm__sandbox_t *sb, lua_State *L, const mdm__budget_t *saved);

/* Charges work a C function is about to do (insns: about a nanosecond
 * each) to the running call, with a look at the clock now and then; raises
 * the budget's error when it is spent. Nothing without a budget. */
void mdm__sandbox_charge(lua_State *L, uint64_t insns);

/* Stops the running call for good with kill (MDM__KILL_*): raises an
 * error now and at every instruction after, so that no pcall can swallow
 * it. */
int mdm__sandbox_stop(lua_State *L, int kill);

/* Describes a failed lua_pcall (status, error value on top of L's stack,
 * kill reason) in buf: "file:line: message" when Lua knows where. A call
 * that returned LUA_OK after its budget was spent (the policy caught the
 * kill in a coroutine or a pcall and returned) counts as failed too: pass
 * LUA_OK and the kill reason. */
void mdm__sandbox_error(mdm__sandbox_t *sb, lua_State *L, int status, int kill, char *buf,
                        size_t len);

/* ---- lpattern.c ---------------------------------------------------------- */

/* Where pattern matching reports the steps it takes (an attempt to match
 * one character, a backtrack). charge() is given the steps taken since its
 * last call and returns how many more may be taken before the next call
 * (at least 1); it raises a Lua error to stop the matching. */
typedef struct mdm__lpattern_meter {
    uint64_t (*charge)(lua_State *L, uint64_t used);
} mdm__lpattern_meter_t;

/* Without a meter, the steps one call of the functions may take. */
#define MDM__LPATTERN_STEPS_MAX 20000000ull

/* The error when the steps run out. */
#define MDM__LPATTERN_BUDGET_TEXT "pattern matching exceeded its step budget"

/* Sets find, match, gmatch and gsub of the table at index table (the
 * string library) to this file's implementation of Lua 5.4 patterns, which
 * counts its steps with meter (NULL: MDM__LPATTERN_STEPS_MAX per call). */
void mdm__lpattern_install(lua_State *L, int table, const mdm__lpattern_meter_t *meter);

/* ---- convert.c ----------------------------------------------------------- */

/* Deepest nesting of tables converted either way. */
#define MDM__MAX_DEPTH 32

/* Pushes a plist as a Lua value: dictionaries and arrays become tables
 * (read-only proxies when readonly), data becomes a string of bytes, dates
 * numbers of seconds since the Unix epoch. Raises a Lua error for nesting
 * deeper than MDM__MAX_DEPTH. NULL pushes nil. */
void mdm__push_plist(lua_State *L, plist_t p, bool readonly);

/* The same, and frees p (also when Lua raises). */
void mdm__push_plist_owned(lua_State *L, plist_t p, bool readonly);

/* The string value of member name of the table at t, found without
 * allocating, or NULL. */
const char *mdm__raw_string_member(lua_State *L, int t, const char *name);

/* Converts the Lua value at idx to a plist without raising Lua errors.
 * Tables whose keys are 1..n become arrays, other tables dictionaries with
 * string keys; strings that are not UTF-8 (or hold NUL bytes) become data.
 * max_bytes bounds the strings and data held. Returns 0, or MDM_EINVAL /
 * MDM_ELIMIT with a message (path of the bad value first) in err. */
int mdm__lua_to_plist(lua_State *L, int idx, size_t max_bytes, plist_t *out, char *err,
                      size_t errlen);

/* Builds the Command dictionary of request type rt from the Lua table at
 * idx (its keys besides RequestType), converting by the command's schema
 * (bytes for <data>, seconds for <date>) and checking it with
 * mdm_command_build_json(). Never raises Lua errors. */
int mdm__lua_to_command(lua_State *L, int idx, const char *rt, plist_t *out, char *err,
                        size_t errlen);

/* Replaces the table on top of the stack with a read-only proxy of it. */
void mdm__make_readonly(lua_State *L);

/* Pushes a read-only deep copy of the value at idx (tables are copied,
 * proxies are kept as they are). */
void mdm__push_readonly_copy(lua_State *L, int idx);

/* True when the value at idx is a read-only proxy. */
bool mdm__is_readonly(lua_State *L, int idx);

/* Pushes the table behind the proxy at idx, or the value itself, for
 * walking it: a table whose metatable has __fill (the device view, whose
 * fields are made on first read) gets all its fields first, which may
 * raise a Lua error (memory; a view used after its call). Only metatables
 * the server made count (marked with mdm__fill_mark): a policy's own
 * __fill is never called, so no policy code runs while a value is walked. */
void mdm__push_unwrapped(lua_State *L, int idx);
extern const char mdm__fill_mark;

/* ---- api_mdm.c ------------------------------------------------------------ */

/* How mdm.kv reaches its values during a call. */
enum {
    MDM__KV_NONE = 0,   /* no kv at all (errors) */
    MDM__KV_MEMORY,     /* an in-memory table (policy tests, check, self_test) */
    MDM__KV_STORE,      /* the store: writes buffered, applied to txn when the hook succeeds */
    MDM__KV_READONLY,   /* the store, read-only: writes raise errors */
    MDM__KV_VIRTUAL,    /* eval: reads from txn, writes buffered and reported, never applied */
};

/* One call into the policy (a hook, loading, a test function). */
typedef struct mdm__call {
    int hook;                 /* MDM_POLICY_HOOK_*, or -1 */
    const char *reqid;        /* for log lines, or NULL */
    int kv;                   /* MDM__KV_* */
    mdm_txn_t *txn;           /* for MDM__KV_STORE and MDM__KV_VIRTUAL (and profile lookups) */
    bool kv_direct;           /* MDM__KV_MEMORY: write at once (test code itself) */
    json_t *logs;             /* when set, mdm.log lines are appended here too */
    json_t *kv_writes;        /* MDM__KV_VIRTUAL: the writes that would happen */
    int store_rc;             /* the first store error met */
    unsigned kv_changes;      /* mdm.kv writes and deletes of this call */
    bool probe;               /* a read-only try: when it wants to write, the caller
                                 calls again in a transaction, and that call is the
                                 one recorded */
    mdm_policy_pwcheck_t *pwcheck; /* the server's authenticate: password hashes are
                                 made off the loop (password.c), or NULL: inline */
} mdm__call_t;

/* Registry fields of a policy state, keyed by address (lua_rawgetp) so that
 * reaching them never allocates. */
extern const char mdm__reg_keys[8];
#define MDM__REG_CHUNKS ((const void *)&mdm__reg_keys[0])    /* file name -> compiled chunk */
#define MDM__REG_LOADED ((const void *)&mdm__reg_keys[1])    /* module name -> value */
#define MDM__REG_MDM ((const void *)&mdm__reg_keys[2])       /* the mdm module (real table) */
#define MDM__REG_CMDMT ((const void *)&mdm__reg_keys[3])     /* metatable of command objects */
#define MDM__REG_KVMEM ((const void *)&mdm__reg_keys[4])     /* MDM__KV_MEMORY: key -> bytes */
#define MDM__REG_KVPENDING ((const void *)&mdm__reg_keys[5]) /* writes of the running hook */
#define MDM__REG_PROFILES ((const void *)&mdm__reg_keys[6])  /* tests: identifier -> metadata */
#define MDM__REG_LIBSRC ((const void *)&mdm__reg_keys[7])    /* "(lib)/file" -> source, until required */

/* Modes of a policy state. */
enum {
    MDM__MODE_SERVER = 0,   /* hooks called by the server */
    MDM__MODE_CHECK,        /* `policy check`: load and validate only */
    MDM__MODE_TEST,         /* `policy test`: fixtures, frozen clock, mdm.test */
};

/* Opens the `mdm` module into the state (protected mode: pass it to
 * lua_pcall): builds the module, stores it in the registry and as the
 * global `mdm`, and routes print and os.time through it. */
int mdm__open_mdm(lua_State *L);

/* True when the value at idx is a command object made by mdm.command. */
bool mdm__is_command(lua_State *L, int idx);

/* The Command dictionary of the command object at idx (never raises). */
int mdm__command_to_plist(lua_State *L, int idx, plist_t *out, char *err, size_t errlen);

/* Applies the buffered mdm.kv writes of the running hook (protected mode). */
void mdm__kv_commit(lua_State *L);

/* Drops the buffered writes (no Lua errors). */
void mdm__kv_discard(lua_State *L);

/* ---- password.c --------------------------------------------------------- */

/* Distinct passwords one authenticate call may verify off the loop; one
 * more stops the call (MDM__KILL_PASSWORDS). */
#define MDM__PASSWORDS_MAX 4

/* Bytes of a password and of a hash that mdm.password takes. */
#define MDM__PASSWORD_MAX 1024
#define MDM__HASH_MAX 512

/* The password checks of one request (policy.h). done[] holds the pairs
 * hashed so far with their results; plain and hash, when set, the pair
 * the stopped run asked for. */
struct mdm_policy_pwcheck {
    struct {
        char *plain, *hash;
        bool ok;
    } done[MDM__PASSWORDS_MAX];
    size_t ndone;
    char *plain, *hash;
    uint64_t lua_ns;          /* time the runs of the hook have taken so far */
};

/* Checks what needs no hashing: the sizes, the kind of hash and its cost.
 * Returns true when the pair may be hashed, else false with why. */
bool mdm__password_usable(const char *plain, size_t pl, const char *hash, size_t hl, char *why,
                          size_t wlen);

/* Hashes plain with the salt and cost of hash: true when it matches (in
 * time that does not depend on where they differ). */
bool mdm__password_matches(const char *plain, const char *hash);

/* The result known for the pair: 1 (matches), 0, or -1 (not hashed yet). */
int mdm__pwcheck_lookup(const mdm_policy_pwcheck_t *pw, const char *plain, const char *hash);

/* Records the pair for hashing off the loop: 0, or MDM_ELIMIT when
 * MDM__PASSWORDS_MAX pairs are hashed already. */
int mdm__pwcheck_defer(mdm_policy_pwcheck_t *pw, const char *plain, const char *hash);

/* Forgets the pair recorded for hashing (a run stopped for another
 * reason first). */
void mdm__pwcheck_cancel(mdm_policy_pwcheck_t *pw);

/* ---- policy.c ----------------------------------------------------------- */

#define MDM__OUTCOMES 5 /* ok, error, timeout, memory, bad_return */

/* One loaded policy set (one revision). Shared by the requests that hold
 * it; freed when the last reference goes. */
/* Decision log entries waiting to be written: [16-byte key][u32 length]
 * [value]... (calls made outside a write transaction, e.g. an Idle that
 * changes nothing, so that logging them does not cost a commit each). */
typedef struct mdm__log_sink {
    mdm_buf_t buf;
    size_t n;
    uint64_t dropped;
} mdm__log_sink_t;

/* Writes the buffered entries in one store update; returns how many. */
size_t mdm__log_sink_flush(mdm_store_t *store, mdm__log_sink_t *sink);

struct mdm_policy {
    int refs;
    int mode;                  /* MDM__MODE_* */
    bool empty;                /* no policy set: every hook is absent */
    mdm__sandbox_t sb;
    char revision[65];         /* hex SHA-256 over the files */
    char name[65];             /* kv namespace: the set's `name`, or "default" */
    char *dir;
    char *lib_dir;
    char *test_dir;            /* MDM__MODE_TEST: the tests' directory */
    int64_t loaded_at_ms;
    mdm_strlist_t files;       /* relative names, sorted */
    unsigned hooks;            /* bit (1 << hook) for each hook present */
    int hook_ref[MDM_POLICY_HOOK__COUNT];
    int profiles_ref;          /* `profiles` given as a table, or LUA_NOREF */
    uint64_t budget_ns[MDM_POLICY_HOOK__COUNT];
    uint64_t instructions;
    uint64_t load_budget_ns;
    mdm_store_t *store;        /* for reads without a transaction, and the decision log */
    bool decision_log;
    bool decision_log_all;     /* also connect and result calls that decided nothing */
    mdm__log_sink_t *log_sink; /* or NULL */
    uint64_t seq;              /* decision log key sequence */
    mdm__call_t *call;         /* the call in progress, or NULL */
    double frozen_now;         /* MDM__MODE_TEST: what mdm.now() returns */
    mdm_metric_t *m_calls[MDM_POLICY_HOOK__COUNT][MDM__OUTCOMES];
    mdm_histogram_t *m_latency[MDM_POLICY_HOOK__COUNT];
    mdm_metric_t *m_memory;
    /* Circuit breaker (server mode): a hook that overran its budget
     * POLICY_STRIKES times in a row is not run for a while: it fails closed
     * at once instead of holding the event loop for its whole budget on
     * every request. The next call after the pause tries it again. */
    uint32_t strikes[MDM_POLICY_HOOK__COUNT];
    int64_t suspended_until_ms[MDM_POLICY_HOOK__COUNT];
    mdm_metric_t *m_suspended[MDM_POLICY_HOOK__COUNT];
};

/* The policy a state belongs to. */
static inline mdm_policy_t *mdm__policy_of(lua_State *L)
{
    return *(mdm_policy_t **)lua_getextraspace(L);
}

/* Current time for the policy in seconds (frozen in tests). */
double mdm__policy_now(mdm_policy_t *p);

/* mdm.test.call(hook, ...): runs the hook with the given Lua arguments
 * through the same path as the server (budget, checks of the decision,
 * fail-closed defaults) and returns the decision as a table with status
 * and error. */
int mdm__test_call(lua_State *L);

/* Loads a policy set in a mode (MDM__MODE_*); test_dir is the tests'
 * directory in MDM__MODE_TEST. */
int mdm__policy_load(const mdm_policy_settings_t *s, int mode, const char *test_dir,
                     mdm_policy_t **out, mdm_policy_error_t *e);

/* The inputs of one hook call (those the hook does not take stay NULL). */
typedef struct mdm__hook_input {
    const mdm_policy_auth_req_t *auth;
    plist_t a;                     /* scep: csr; checkin: msg; connect: report; result: result */
    plist_t b;                     /* scep: ctx */
    const mdm_policy_device_t *dev;
    const mdm_strlist_t *groups;   /* profiles */
} mdm__hook_input_t;

/* Runs a hook with the call settings of tmpl (kv mode, txn, captures) and
 * records the decision when log_decision. Returns 0 or a store error. */
int mdm__policy_call(mdm_policy_t *p, int hook, const mdm__call_t *tmpl,
                     const mdm__hook_input_t *in, bool log_decision, mdm_policy_decision_t *out);

/* Runs fn(L) (its argument: a light userdata ud) in protected mode under a
 * budget with call as the current call. On failure err holds "file:line:
 * message" and the result is MDM_EPOLICY. */
int mdm__policy_exec(mdm_policy_t *p, lua_CFunction fn, void *ud, uint64_t budget_ns,
                     uint64_t insns, mdm__call_t *call, char *err, size_t errlen);

/* Runs Lua source as a chunk of the policy (the doc samples, tests). */
int mdm__policy_run_chunk(mdm_policy_t *p, const char *src, size_t len, const char *chunkname,
                          uint64_t budget_ns, char *err, size_t errlen);

/* The decision as a dictionary, with "status" and "error" when
 * with_status (what policy tests show). A checkin answer (respond) is shown
 * whole only then; the decision log and eval name its keys only
 * (respond_keys), as it may hold an AuthToken or TokenData. */
plist_t mdm__decision_to_plist(int hook, const mdm_policy_decision_t *d, bool with_status);

/* Splits "file:line: message" into e (file "" and line 0 when absent). */
void mdm__policy_error_parse(const char *msg, mdm_policy_error_t *e);

/* The directories of a policy set (relative, "" first) for watching. */
int mdm__policy_dirs(const char *dir, mdm_strlist_t *out);

/* Frees a string list (as the config does). */
void mdm__strlist_free(mdm_strlist_t *l);
void mdm__strlist_push(mdm_strlist_t *l, const char *s);

#endif
