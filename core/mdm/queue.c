#include "mdm/queue.h"

#include <plist/plist.h>
#include <stdio.h>
#include <string.h>

#include "util/alloc.h"
#include "util/log.h"
#include "util/plist.h"

#define EID_MAX 256

bool mdm_status_terminal(const char *s)
{
    return strcmp(s, "Queued") != 0 && strcmp(s, "NotNow") != 0;
}

/* ---- keys ---------------------------------------------------------------- */

/* Where a result record is kept. The result of a command that still waits
 * (Queued, NotNow) is small and changes at every connection of its device;
 * a finished one holds the device's report and does not change again.
 *
 * A waiting result lives in its command's queue entry, after the entry's
 * header (QHDR: the command UUID and the expiry), and the command's target
 * index entry (cmdt) holds the entry's position (QPOS bytes) so that a
 * report finds it without a scan. Queueing, sending, putting off and
 * finishing then rewrite the one leaf of the queue entry instead of one
 * more leaf elsewhere. A result moves to the usual key (eid NUL uuid) in
 * MDM_T_RESULTS when it finishes; a position left in cmdt after that
 * names no entry (sequence numbers are not reused).
 *
 * Earlier layouts are read as they are and move on their next change:
 * schema 3 kept waiting results under LIVE_MARK + the usual key, schema 2
 * under the usual key, both with a queue entry of QHDR bytes. No
 * enrollment id starts with a control character (eid_prefix refuses
 * them), so the ranges are apart. */
#define LIVE_MARK '\x01'
#define QHDR (MDM_UUID_LEN + 8)
#define QPOS 9
enum { AT_NONE = 0, AT_QUEUE, AT_LIVE, AT_DONE };

/* live: the prefix of the waiting results' range. */
static int eid_prefix_at(mdm_buf_t *k, const char *eid, bool live)
{
    size_t n = strlen(eid);
    if (n == 0 || n > EID_MAX || (unsigned char)eid[0] < 0x20)
        return MDM_EINVAL;
    mdm_buf_reset(k);
    if (live)
        mdm_buf_putc(k, LIVE_MARK);
    mdm_buf_append(k, eid, n);
    mdm_buf_putc(k, '\0');
    return 0;
}

static int eid_prefix(mdm_buf_t *k, const char *eid)
{
    return eid_prefix_at(k, eid, false);
}

/* A queue entry's position within its enrollment's queue: highest
 * priority first, then the order of enqueueing. */
static void queue_pos(unsigned char b[QPOS], int prio, uint64_t seq)
{
    b[0] = (unsigned char)(255 - (prio & 255));
    mdm_be64_put(b + 1, seq);
}

static int queue_key(mdm_buf_t *k, const char *eid, int prio, uint64_t seq)
{
    int rc = eid_prefix(k, eid);
    if (rc != 0)
        return rc;
    unsigned char b[QPOS];
    queue_pos(b, prio, seq);
    mdm_buf_append(k, b, QPOS);
    return 0;
}

/* Whether a queue entry's value names uuid. */
static bool qent_is(mdm_val_t v, const char *uuid)
{
    size_t n = strlen(uuid);
    return v.len >= QHDR && n <= MDM_UUID_LEN && strnlen(v.data, MDM_UUID_LEN) == n &&
           memcmp(v.data, uuid, n) == 0;
}

static int64_t qent_expires(mdm_val_t v)
{
    return (int64_t)mdm_be64_get((const unsigned char *)v.data + MDM_UUID_LEN);
}

static int result_key(mdm_buf_t *k, const char *eid, const char *uuid, bool live)
{
    int rc = eid_prefix_at(k, eid, live);
    if (rc != 0)
        return rc;
    if (strlen(uuid) > MDM_UUID_LEN)
        return MDM_EINVAL;
    mdm_buf_puts(k, uuid);
    return 0;
}

static void cmdt_key(mdm_buf_t *k, const char *uuid, const char *eid)
{
    mdm_buf_reset(k);
    mdm_buf_append(k, "cmdt", 5);
    mdm_buf_puts(k, uuid);
    mdm_buf_putc(k, '\0');
    if (eid)
        mdm_buf_puts(k, eid);
}

static void rexp_key(mdm_buf_t *k, int64_t completed, const char *eid, const char *uuid)
{
    unsigned char b[8];
    mdm_buf_reset(k);
    mdm_buf_append(k, "rexp", 5);
    mdm_be64_put(b, (uint64_t)completed);
    mdm_buf_append(k, b, 8);
    mdm_buf_puts(k, eid);
    mdm_buf_putc(k, '\0');
    mdm_buf_puts(k, uuid);
}

/* ---- commands ------------------------------------------------------------ */

int mdm_command_put(mdm_txn_t *txn, const mdm_command_info_t *info, const void *plist,
                    size_t len)
{
    plist_t d = plist_new_dict();
    mdm_pl_set_str(d, "request_type", info->request_type);
    mdm_pl_set_uint(d, "priority", (uint64_t)info->priority);
    mdm_pl_set_int(d, "created_at", info->created_ms);
    mdm_pl_set_int(d, "expires_at", info->expires_ms);
    mdm_pl_set_data(d, "hash", info->hash, 32);
    mdm_pl_set_data(d, "plist", plist, len);
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(d, &b);
    plist_free(d);
    int rc = mdm_txn_put(txn, MDM_T_COMMANDS, MDM_VAL_STR(info->uuid), MDM_VAL(b.data, b.len),
                         MDM_PUT_NOOVERWRITE);
    mdm_buf_free(&b);
    return rc;
}

int mdm_command_get(mdm_txn_t *txn, const char *uuid, mdm_command_info_t *info,
                    mdm_buf_t *plist_out)
{
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_COMMANDS, MDM_VAL_STR(uuid), &v);
    if (rc != 0)
        return rc;
    /* Read in place: the command is sent on every offer, and its record
     * needs no tree for that. */
    mdm_rec_t d;
    mdm_rec_init_bin(&d, v.data, v.len);
    if (!d.inplace && mdm_rec_tree(&d) == NULL) {
        mdm_rec_free(&d);
        return MDM_EPARSE;
    }
    if (info != NULL) {
        memset(info, 0, sizeof(*info));
        snprintf(info->uuid, sizeof(info->uuid), "%s", uuid);
        const char *rt = mdm_rec_str(&d, "request_type", info->request_type,
                                     sizeof(info->request_type));
        if (rt != info->request_type)
            snprintf(info->request_type, sizeof(info->request_type), "%s", rt ? rt : "");
        info->priority = (int)mdm_rec_uint(&d, "priority", 0);
        info->created_ms = mdm_rec_int(&d, "created_at", 0);
        info->expires_ms = mdm_rec_int(&d, "expires_at", 0);
        size_t hl = 0;
        const unsigned char *h = mdm_rec_data(&d, "hash", &hl);
        if (h && hl == 32)
            memcpy(info->hash, h, 32);
    }
    if (plist_out != NULL) {
        size_t pl = 0;
        const unsigned char *p = mdm_rec_data(&d, "plist", &pl);
        mdm_buf_reset(plist_out);
        if (p)
            mdm_buf_append(plist_out, p, pl);
    }
    mdm_rec_free(&d);
    return 0;
}

/* ---- results ------------------------------------------------------------- */

static const unsigned char RREC_MAGIC[4] = {'m', 'd', 'R', 1};
#define RREC_FIXED (4 + 1 + 9 * 8)
enum { RREC_HAS_STATUS = 1, RREC_HAS_RAW = 2 };

static void rrec_init(mdm_result_rec_t *r)
{
    memset(r, 0, sizeof(*r));
    r->notnow_session = -1;
}

void mdm_result_rec_free(mdm_result_rec_t *r)
{
    mdm_buf_free(&r->raw);
    rrec_init(r);
}

void mdm_result_rec_encode(const mdm_result_rec_t *r, mdm_buf_t *out)
{
    mdm_buf_reset(out);
    mdm_buf_append(out, RREC_MAGIC, 4);
    unsigned char flags = (unsigned char)((r->has_status ? RREC_HAS_STATUS : 0) |
                                          (r->has_raw ? RREC_HAS_RAW : 0));
    mdm_buf_putc(out, (char)flags);
    const uint64_t f[9] = {(uint64_t)r->queued_at,      (uint64_t)r->updated_at,
                           (uint64_t)r->sent_at,        (uint64_t)r->completed_at,
                           (uint64_t)r->notnow_at,      (uint64_t)r->notnow_session,
                           r->notnow_count,             r->priority,
                           r->seq};
    for (size_t i = 0; i < 9; i++) {
        unsigned char b[8];
        mdm_be64_put(b, f[i]);
        mdm_buf_append(out, b, 8);
    }
    size_t sl = strnlen(r->status, sizeof(r->status) - 1);
    size_t tl = strnlen(r->request_type, sizeof(r->request_type) - 1);
    mdm_buf_putc(out, (char)sl);
    mdm_buf_append(out, r->status, sl);
    mdm_buf_putc(out, (char)tl);
    mdm_buf_append(out, r->request_type, tl);
    if (r->has_raw) {
        unsigned char b[4] = {(unsigned char)(r->raw.len >> 24), (unsigned char)(r->raw.len >> 16),
                              (unsigned char)(r->raw.len >> 8), (unsigned char)r->raw.len};
        mdm_buf_append(out, b, 4);
        if (r->raw.len > 0)
            mdm_buf_append(out, r->raw.data, r->raw.len);
    }
}

/* A length-prefixed string of at most cap - 1 bytes, without NULs. */
static bool rrec_str(const unsigned char **p, const unsigned char *end, char *dst, size_t cap)
{
    if (*p >= end)
        return false;
    size_t n = **p;
    (*p)++;
    if (n >= cap || (size_t)(end - *p) < n || memchr(*p, '\0', n) != NULL)
        return false;
    memcpy(dst, *p, n);
    dst[n] = '\0';
    *p += n;
    return true;
}

static int rrec_decode_bin(const unsigned char *p, size_t len, mdm_result_rec_t *r)
{
    const unsigned char *end = p + len;
    if (len < RREC_FIXED + 2)
        return MDM_EPARSE;
    unsigned char flags = p[4];
    if ((flags & ~(RREC_HAS_STATUS | RREC_HAS_RAW)) != 0)
        return MDM_EPARSE;
    p += 5;
    uint64_t f[9];
    for (size_t i = 0; i < 9; i++, p += 8)
        f[i] = mdm_be64_get(p);
    r->queued_at = (int64_t)f[0];
    r->updated_at = (int64_t)f[1];
    r->sent_at = (int64_t)f[2];
    r->completed_at = (int64_t)f[3];
    r->notnow_at = (int64_t)f[4];
    r->notnow_session = (int64_t)f[5];
    r->notnow_count = f[6];
    r->priority = f[7];
    r->seq = f[8];
    r->has_status = (flags & RREC_HAS_STATUS) != 0;
    if (!rrec_str(&p, end, r->status, sizeof(r->status)) ||
        !rrec_str(&p, end, r->request_type, sizeof(r->request_type)))
        return MDM_EPARSE;
    if (!r->has_status && r->status[0] != '\0')
        return MDM_EPARSE;
    r->has_raw = (flags & RREC_HAS_RAW) != 0;
    if (r->has_raw) {
        if (end - p < 4)
            return MDM_EPARSE;
        size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        p += 4;
        if ((size_t)(end - p) < n)
            return MDM_EPARSE;
        if (n > 0)
            mdm_buf_append(&r->raw, p, n);
        p += n;
    }
    return p == end ? 0 : MDM_EPARSE;
}

/* A record of an earlier version: a plist dictionary. */
static int rrec_decode_plist(const void *data, size_t len, mdm_result_rec_t *r)
{
    plist_t d = NULL;
    if (mdm_plist_load_stored(data, len, &d) != 0)
        return MDM_EPARSE;
    if (plist_get_node_type(d) != PLIST_DICT) {
        plist_free(d);
        return MDM_EPARSE;
    }
    const char *st = mdm_pl_str(d, "status");
    const char *rt = mdm_pl_str(d, "request_type");
    r->has_status = st != NULL;
    snprintf(r->status, sizeof(r->status), "%s", st ? st : "");
    snprintf(r->request_type, sizeof(r->request_type), "%s", rt ? rt : "");
    r->queued_at = mdm_pl_int(d, "queued_at", 0);
    r->updated_at = mdm_pl_int(d, "updated_at", 0);
    r->sent_at = mdm_pl_int(d, "sent_at", 0);
    r->completed_at = mdm_pl_int(d, "completed_at", 0);
    r->notnow_at = mdm_pl_int(d, "notnow_at", 0);
    r->notnow_session = mdm_pl_int(d, "notnow_session", -1);
    r->notnow_count = mdm_pl_uint(d, "notnow_count", 0);
    r->priority = mdm_pl_uint(d, "priority", 0);
    r->seq = mdm_pl_uint(d, "seq", 0);
    size_t rl = 0;
    const unsigned char *raw = mdm_pl_data(d, "result", &rl);
    r->has_raw = raw != NULL;
    if (raw != NULL && rl > 0)
        mdm_buf_append(&r->raw, raw, rl);
    plist_free(d);
    return 0;
}

int mdm_result_rec_decode(const void *data, size_t len, mdm_result_rec_t *r)
{
    rrec_init(r);
    int rc = len >= 4 && memcmp(data, RREC_MAGIC, 4) == 0
                 ? rrec_decode_bin(data, len, r)
                 : rrec_decode_plist(data, len, r);
    if (rc != 0)
        mdm_result_rec_free(r);
    return rc;
}

/* The public view of a record; raw points into rec. */
static void result_view(const mdm_result_rec_t *rec, mdm_result_t *r)
{
    snprintf(r->status, sizeof(r->status), "%s", rec->has_status ? rec->status : "?");
    snprintf(r->request_type, sizeof(r->request_type), "%s", rec->request_type);
    r->queued_ms = rec->queued_at;
    r->sent_ms = rec->sent_at;
    r->updated_ms = rec->updated_at;
    r->completed_ms = rec->completed_at;
    r->notnow_ms = rec->notnow_at;
    r->notnow_count = rec->notnow_count;
    r->seq = rec->seq;
    r->raw = rec->has_raw ? rec->raw.data : NULL;
    r->raw_len = rec->has_raw ? rec->raw.len : 0;
}

/* The record bytes of a stored result: a queue entry holds them after its
 * header. */
static mdm_val_t rec_bytes(mdm_val_t v, int at)
{
    if (at == AT_QUEUE)
        return MDM_VAL((const char *)v.data + QHDR, v.len - QHDR);
    return v;
}

/* The waiting result of (eid, uuid) in its queue entry, found through the
 * position in the command's target index. v is the whole entry. */
static int result_in_queue(mdm_txn_t *txn, mdm_buf_t *k, const char *eid, const char *uuid,
                           mdm_val_t *v)
{
    mdm_val_t pos;
    cmdt_key(k, uuid, eid);
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(k->data, k->len), &pos);
    if (rc != 0)
        return rc;
    if (pos.len != QPOS)
        return MDM_ENOTFOUND; /* an earlier layout's index entry */
    rc = eid_prefix(k, eid);
    if (rc != 0)
        return rc;
    mdm_buf_append(k, pos.data, QPOS);
    rc = mdm_txn_get(txn, MDM_T_QUEUE, MDM_VAL(k->data, k->len), v);
    if (rc == 0 && (v->len <= QHDR || !qent_is(*v, uuid)))
        rc = MDM_ENOTFOUND;
    return rc;
}

/* The stored result of (eid, uuid), waiting or finished; *at tells where
 * (AT_NONE with MDM_ENOTFOUND). With AT_QUEUE, v is the whole queue entry
 * (rec_bytes gives the record). */
static int result_raw(mdm_txn_t *txn, const char *eid, const char *uuid, mdm_val_t *v, int *at)
{
    mdm_buf_t k = MDM_BUF_INIT;
    *at = AT_NONE;
    int rc = strlen(uuid) > MDM_UUID_LEN ? MDM_EINVAL : eid_prefix(&k, eid);
    if (rc == 0) {
        rc = result_in_queue(txn, &k, eid, uuid, v);
        if (rc == 0)
            *at = AT_QUEUE;
    }
    if (rc == MDM_ENOTFOUND) {
        rc = result_key(&k, eid, uuid, true);
        if (rc == 0)
            rc = mdm_txn_get(txn, MDM_T_RESULTS, MDM_VAL(k.data, k.len), v);
        if (rc == 0)
            *at = AT_LIVE;
    }
    if (rc == MDM_ENOTFOUND) {
        rc = result_key(&k, eid, uuid, false);
        if (rc == 0)
            rc = mdm_txn_get(txn, MDM_T_RESULTS, MDM_VAL(k.data, k.len), v);
        if (rc == 0)
            *at = AT_DONE;
    }
    mdm_buf_free(&k);
    return rc;
}

/* Decodes a stored result (as result_raw found it) into out. */
static int result_decode_at(mdm_val_t v, int at, mdm_result_rec_t *out)
{
    mdm_val_t r = rec_bytes(v, at);
    int rc = mdm_result_rec_decode(r.data, r.len, out);
    out->at = at;
    if (at == AT_QUEUE)
        out->expires_at = qent_expires(v);
    return rc;
}

static int result_load(mdm_txn_t *txn, const char *eid, const char *uuid, mdm_result_rec_t *out)
{
    mdm_val_t v;
    int at;
    int rc = result_raw(txn, eid, uuid, &v, &at);
    if (rc != 0) {
        rrec_init(out);
        return rc;
    }
    return result_decode_at(v, at, out);
}

/* A queue entry's value: its header, then the waiting result. */
static void qent_value(mdm_buf_t *b, const char *uuid, int64_t expires, const mdm_result_rec_t *r)
{
    mdm_buf_t rec = MDM_BUF_INIT;
    mdm_result_rec_encode(r, &rec);
    unsigned char h[QHDR];
    memset(h, 0, sizeof(h));
    memcpy(h, uuid, strnlen(uuid, MDM_UUID_LEN));
    mdm_be64_put(h + MDM_UUID_LEN, (uint64_t)expires);
    mdm_buf_reset(b);
    mdm_buf_append(b, h, QHDR);
    mdm_buf_append(b, rec.data, rec.len);
    mdm_buf_free(&rec);
}

/* Points the command's target index entry at the queue entry. */
static int cmdt_put(mdm_txn_t *txn, mdm_buf_t *k, const char *eid, const char *uuid,
                    const mdm_result_rec_t *r)
{
    unsigned char pos[QPOS];
    queue_pos(pos, (int)r->priority, r->seq);
    cmdt_key(k, uuid, eid);
    return mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(k->data, k->len), MDM_VAL(pos, QPOS), 0);
}

/* Deletes the copy of a result kept where an earlier layout put it. */
static int result_del_at(mdm_txn_t *txn, mdm_buf_t *k, const char *eid, const char *uuid, int at)
{
    int rc = result_key(k, eid, uuid, at == AT_LIVE);
    if (rc == 0)
        rc = mdm_txn_del(txn, MDM_T_RESULTS, MDM_VAL(k->data, k->len));
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Saves a waiting result into its queue entry. One read where an earlier
 * layout kept it: it moves into the entry, and the index learns the
 * entry's position. Without a queue entry (a damaged store) it stays where
 * it was. */
static int result_save_waiting(mdm_txn_t *txn, mdm_buf_t *k, mdm_buf_t *b, const char *eid,
                               const char *uuid, mdm_result_rec_t *r)
{
    int rc = queue_key(k, eid, (int)r->priority, r->seq);
    if (rc != 0)
        return rc;
    int64_t expires = r->expires_at;
    if (r->at != AT_QUEUE) {
        mdm_val_t q;
        rc = mdm_txn_get(txn, MDM_T_QUEUE, MDM_VAL(k->data, k->len), &q);
        if (rc == MDM_ENOTFOUND || (rc == 0 && !qent_is(q, uuid))) {
            rc = result_key(k, eid, uuid, r->at == AT_LIVE);
            if (rc == 0) {
                mdm_result_rec_encode(r, b);
                rc = mdm_txn_put(txn, MDM_T_RESULTS, MDM_VAL(k->data, k->len),
                                 MDM_VAL(b->data, b->len), 0);
            }
            return rc;
        }
        if (rc != 0)
            return rc;
        expires = qent_expires(q);
    }
    qent_value(b, uuid, expires, r);
    rc = mdm_txn_put(txn, MDM_T_QUEUE, MDM_VAL(k->data, k->len), MDM_VAL(b->data, b->len), 0);
    if (rc == 0 && r->at != AT_QUEUE) {
        rc = cmdt_put(txn, k, eid, uuid, r);
        if (rc == 0 && r->at != AT_NONE)
            rc = result_del_at(txn, k, eid, uuid, r->at);
    }
    if (rc == 0) {
        r->at = AT_QUEUE;
        r->expires_at = expires;
    }
    return rc;
}

/* Saves r where its status says: a waiting result in its queue entry, a
 * finished one under the usual key. A result finishes through finish(),
 * which deletes the queue entry first; a copy where an earlier layout kept
 * it is dropped. */
static int result_save(mdm_txn_t *txn, const char *eid, const char *uuid, mdm_result_rec_t *r)
{
    bool live = r->has_status && !mdm_status_terminal(r->status);
    mdm_buf_t k = MDM_BUF_INIT, b = MDM_BUF_INIT;
    int rc;
    if (live) {
        rc = result_save_waiting(txn, &k, &b, eid, uuid, r);
    } else {
        rc = result_key(&k, eid, uuid, false);
        if (rc == 0) {
            mdm_result_rec_encode(r, &b);
            rc = mdm_txn_put(txn, MDM_T_RESULTS, MDM_VAL(k.data, k.len),
                             MDM_VAL(b.data, b.len), 0);
        }
        if (rc == 0 && r->at == AT_LIVE)
            rc = result_del_at(txn, &k, eid, uuid, AT_LIVE);
        if (rc == 0)
            r->at = AT_DONE;
    }
    mdm_buf_free(&k);
    mdm_buf_free(&b);
    return rc;
}

static void rrec_set_status(mdm_result_rec_t *r, const char *status)
{
    r->has_status = true;
    snprintf(r->status, sizeof(r->status), "%s", status);
}

/* Deletes the queue entry of a waiting command, from the priority and
 * sequence kept in its result record. */
static int queue_entry_del(mdm_txn_t *txn, const char *eid, const mdm_result_rec_t *res)
{
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = queue_key(&k, eid, (int)res->priority, res->seq);
    if (rc == 0) {
        rc = mdm_txn_del(txn, MDM_T_QUEUE, MDM_VAL(k.data, k.len));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_buf_free(&k);
    return rc;
}

/* Indexes a finished result for pruning by its completion time. */
static int retention_index_put(mdm_txn_t *txn, const char *eid, const char *uuid,
                               int64_t completed)
{
    mdm_buf_t k = MDM_BUF_INIT;
    rexp_key(&k, completed, eid, uuid);
    int rc = mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(k.data, k.len), MDM_VAL("", 0), 0);
    mdm_buf_free(&k);
    return rc;
}

/* Saves res as finished with status at now, with its retention index
 * entry. */
static int finish_record(mdm_txn_t *txn, const char *eid, const char *uuid,
                         mdm_result_rec_t *res, const char *status, int64_t now)
{
    rrec_set_status(res, status);
    res->completed_at = now;
    res->updated_at = now;
    int rc = result_save(txn, eid, uuid, res);
    return rc != 0 ? rc : retention_index_put(txn, eid, uuid, now);
}

/* Makes a waiting result terminal: status, completion time, retention
 * index, queue entry removed. */
static int finish(mdm_txn_t *txn, const char *eid, const char *uuid, mdm_result_rec_t *res,
                  const char *status, int64_t now)
{
    int rc = queue_entry_del(txn, eid, res);
    return rc != 0 ? rc : finish_record(txn, eid, uuid, res, status, now);
}

/* Where a stored result was found, for the log. */
static const char *record_name(int at)
{
    switch (at) {
    case AT_QUEUE:
        return "queue";
    case AT_LIVE:
        return "results_waiting";
    case AT_DONE:
        return "results";
    default:
        return "none";
    }
}

/* A command whose queue entry or result cannot be used, for the log: its
 * enrollment, where its result record is (at), and the position of its
 * queue entry when key is one (the enrollment id, then the position). */
static void log_bad_entry(const char *event, const char *eid, mdm_val_t key, const char *uuid,
                          int at, const char *what)
{
    char eq[300], uq[100], where[64] = "";
    size_t n = strlen(eid) + 1;
    const unsigned char *pos = (const unsigned char *)key.data + n;
    if (key.len == n + QPOS)
        snprintf(where, sizeof(where), " priority=%d seq=%llu", 255 - pos[0],
                 (unsigned long long)mdm_be64_get(pos + 1));
    mdm_log(MDM_LOG_ERROR, NULL, event, "eid=%s command=%s record=%s%s detail=\"%s\"",
            mdm_logq(eq, sizeof(eq), eid), mdm_logq(uq, sizeof(uq), uuid), record_name(at), where,
            what);
}

/* A queue entry whose result is finished: no legal sequence leaves one
 * (finish() deletes the entry first), and it must not be offered again.
 * The entry goes; a result that only it (or an earlier layout's waiting
 * key) held is kept with the finished ones. */
static int drop_finished_entry(mdm_txn_t *txn, mdm_cursor_t *c, const char *eid,
                               mdm_val_t key, const char *uuid, mdm_result_rec_t *res,
                               int64_t now)
{
    log_bad_entry("queue.finished_entry_dropped", eid, key, uuid, res->at,
                  "a queue entry whose result is finished; dropped, not offered again");
    int rc = mdm_cursor_del(c);
    if (rc != 0 || res->at == AT_DONE)
        return rc;
    rc = result_save(txn, eid, uuid, res);
    return rc != 0 ? rc
                   : retention_index_put(txn, eid, uuid,
                                         res->completed_at != 0 ? res->completed_at : now);
}

/* ---- queueing ------------------------------------------------------------ */

int mdm_queue_add(mdm_txn_t *txn, const char *eid, const mdm_command_info_t *info, bool dedupe,
                  int *outcome, char dup_uuid[MDM_UUID_LEN + 1])
{
    *outcome = MDM_ENQ_QUEUED;
    mdm_buf_t k = MDM_BUF_INIT;
    /* One entry per command and enrollment: a second would stay behind
     * when the device answers the first (the index points at one). */
    mdm_val_t pos;
    cmdt_key(&k, info->uuid, eid);
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(k.data, k.len), &pos);
    if (rc == 0) {
        *outcome = MDM_ENQ_ALREADY;
        goto out;
    }
    if (rc != MDM_ENOTFOUND)
        goto out;
    rc = eid_prefix(&k, eid);
    if (rc != 0)
        goto out;
    if (dedupe) {
        mdm_cursor_t *c = NULL;
        rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
        if (rc != 0)
            goto out;
        mdm_val_t ck, cv;
        mdm_val_t prefix = MDM_VAL(k.data, k.len);
        for (rc = mdm_cursor_seek(c, prefix, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, prefix);
             rc = mdm_cursor_next(c, &ck, &cv)) {
            if (cv.len < MDM_UUID_LEN)
                continue;
            /* One past its time to live is dropped at the device's next
             * connection, unsent: it duplicates nothing. */
            if (cv.len >= QHDR && qent_expires(cv) != 0 && qent_expires(cv) <= info->created_ms)
                continue;
            char other[MDM_UUID_LEN + 1];
            memcpy(other, cv.data, MDM_UUID_LEN);
            other[MDM_UUID_LEN] = '\0';
            mdm_command_info_t oi;
            if (mdm_command_get(txn, other, &oi, NULL) == 0 &&
                memcmp(oi.hash, info->hash, 32) == 0) {
                *outcome = MDM_ENQ_DUPLICATE;
                if (dup_uuid)
                    memcpy(dup_uuid, other, MDM_UUID_LEN + 1);
                break;
            }
        }
        mdm_cursor_close(c);
        if (rc != 0 && rc != MDM_ENOTFOUND)
            goto out;
        rc = 0;
        if (*outcome == MDM_ENQ_DUPLICATE)
            goto out;
    }
    uint64_t seq = 0;
    rc = mdm_meta_get_u64(txn, "queue_seq", &seq);
    if (rc != 0 && rc != MDM_ENOTFOUND)
        goto out;
    seq++;
    rc = mdm_meta_put_u64(txn, "queue_seq", seq);
    if (rc != 0)
        goto out;
    rc = queue_key(&k, eid, info->priority, seq);
    if (rc != 0)
        goto out;
    /* The queue entry holds the waiting result; the command's target index
     * holds the entry's position. */
    mdm_result_rec_t res;
    rrec_init(&res);
    rrec_set_status(&res, "Queued");
    snprintf(res.request_type, sizeof(res.request_type), "%s", info->request_type);
    res.queued_at = info->created_ms;
    res.updated_at = info->created_ms;
    res.priority = (uint64_t)info->priority;
    res.seq = seq;
    mdm_buf_t v = MDM_BUF_INIT;
    qent_value(&v, info->uuid, info->expires_ms, &res);
    rc = mdm_txn_put(txn, MDM_T_QUEUE, MDM_VAL(k.data, k.len), MDM_VAL(v.data, v.len), 0);
    mdm_buf_free(&v);
    if (rc == 0)
        rc = cmdt_put(txn, &k, eid, info->uuid, &res);
    mdm_result_rec_free(&res);
out:
    mdm_buf_free(&k);
    return rc;
}

int mdm_queue_next(mdm_txn_t *txn, const char *eid, int64_t now_ms, int64_t session,
                   char uuid_out[MDM_UUID_LEN + 1], mdm_buf_t *plist_out)
{
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = eid_prefix(&k, eid);
    if (rc != 0) {
        mdm_buf_free(&k);
        return rc;
    }
    mdm_cursor_t *c = NULL;
    rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
    if (rc != 0) {
        mdm_buf_free(&k);
        return rc;
    }
    mdm_val_t prefix = MDM_VAL(k.data, k.len);
    mdm_val_t ck, cv;
    bool found = false;
    for (rc = mdm_cursor_seek(c, prefix, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, prefix);
         rc = mdm_cursor_next(c, &ck, &cv)) {
        if (cv.len < QHDR)
            continue;
        char uuid[MDM_UUID_LEN + 1];
        memcpy(uuid, cv.data, MDM_UUID_LEN);
        uuid[MDM_UUID_LEN] = '\0';
        int64_t expires = qent_expires(cv);
        mdm_result_rec_t res;
        /* The entry holds its result; one of an earlier layout is kept
         * elsewhere. */
        if (cv.len > QHDR)
            rc = result_decode_at(cv, AT_QUEUE, &res);
        else
            rc = result_load(txn, eid, uuid, &res);
        if (rc == MDM_ENOTFOUND) {
            /* A queue entry without its result cannot be answered for. */
            rc = mdm_cursor_del(c);
            if (rc != 0)
                break;
            continue;
        }
        if (rc == MDM_EPARSE) {
            /* A damaged record blocks nothing after it; it stays for a
             * person to look at (a re-enrollment clears it). */
            log_bad_entry("queue.entry_unreadable", eid, ck, uuid, res.at,
                          "the result record does not decode; skipped");
            rc = 0;
            continue;
        }
        if (rc != 0)
            break;
        if (res.has_status && mdm_status_terminal(res.status)) {
            rc = drop_finished_entry(txn, c, eid, ck, uuid, &res, now_ms);
            mdm_result_rec_free(&res);
            if (rc != 0)
                break;
            continue;
        }
        if (expires != 0 && expires <= now_ms) {
            rc = finish(txn, eid, uuid, &res, "Expired", now_ms);
            mdm_result_rec_free(&res);
            if (rc != 0)
                break;
            continue;
        }
        if (res.has_status && strcmp(res.status, "NotNow") == 0 &&
            res.notnow_session == session) {
            mdm_result_rec_free(&res);
            continue;
        }
        rc = mdm_command_get(txn, uuid, NULL, plist_out);
        if (rc == MDM_EPARSE) {
            /* It can never be sent; the commands behind it still can. */
            log_bad_entry("queue.command_unreadable", eid, ck, uuid, res.at,
                          "the command record does not decode; finished as Error");
            mdm_buf_reset(plist_out);
        }
        if (rc == MDM_ENOTFOUND || rc == MDM_EPARSE) {
            rc = finish(txn, eid, uuid, &res, "Error", now_ms);
            mdm_result_rec_free(&res);
            if (rc != 0)
                break;
            continue;
        }
        if (rc == 0) {
            res.sent_at = now_ms;
            res.updated_at = now_ms;
            rc = result_save(txn, eid, uuid, &res);
        }
        mdm_result_rec_free(&res);
        if (rc == 0) {
            memcpy(uuid_out, uuid, MDM_UUID_LEN + 1);
            found = true;
        }
        break;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&k);
    if (found)
        return 0;
    return rc == 0 ? MDM_ENOTFOUND : rc;
}

/* Finds the queue entries of eid that hold the command uuid by a scan of
 * eid's queue (for a result that does not decode, whose position is not
 * known), and deletes them when del; key gets the last one's key (eid's
 * prefix when there is none). */
static int queue_entries_of(mdm_txn_t *txn, const char *eid, const char *uuid, bool del,
                            mdm_buf_t *key)
{
    mdm_cursor_t *c = NULL;
    mdm_val_t k, v;
    int rc = eid_prefix(key, eid);
    if (rc == 0)
        rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
    if (rc != 0)
        return rc;
    mdm_buf_t prefix = MDM_BUF_INIT;
    mdm_buf_append(&prefix, key->data, key->len);
    mdm_val_t p = MDM_VAL(prefix.data, prefix.len);
    for (rc = mdm_cursor_seek(c, p, &k, &v); rc == 0 && mdm_val_has_prefix(k, p);
         rc = mdm_cursor_next(c, &k, &v)) {
        if (!qent_is(v, uuid))
            continue;
        mdm_buf_reset(key);
        mdm_buf_append(key, k.data, k.len);
        rc = del ? mdm_cursor_del(c) : 0;
        if (rc != 0)
            break;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&prefix);
    return rc == 0 || rc == MDM_ENOTFOUND ? 0 : rc;
}

/* A report for a command whose stored result does not decode. A final
 * report is recorded over it as a new result (of the command's request
 * type), so that the device is not refused for ever; the queue entry goes.
 * A NotNow changes nothing: the entry stays as it is (mdm_queue_next does
 * not offer it, mdm_queue_clear drops it) and the report is ignored. */
static int report_over_unreadable(mdm_txn_t *txn, const char *eid, const char *uuid,
                                  const char *status, const void *raw, size_t raw_len,
                                  int64_t now_ms, int at, int *outcome,
                                  char rtype[MDM_RTYPE_MAX])
{
    mdm_buf_t key = MDM_BUF_INIT;
    bool notnow = strcmp(status, "NotNow") == 0;
    int rc = queue_entries_of(txn, eid, uuid, !notnow, &key);
    if (rc == 0)
        log_bad_entry("queue.entry_unreadable", eid, MDM_VAL(key.data, key.len), uuid, at,
                      notnow ? "the result record does not decode; a NotNow for it is ignored"
                             : "the result record does not decode; the report is recorded "
                               "over it");
    mdm_buf_free(&key);
    if (rc != 0 || notnow) {
        *outcome = MDM_REPORT_UNKNOWN;
        return rc;
    }
    mdm_result_rec_t res;
    rrec_init(&res);
    mdm_command_info_t info;
    if (mdm_command_get(txn, uuid, &info, NULL) == 0)
        snprintf(res.request_type, sizeof(res.request_type), "%s", info.request_type);
    if (rtype != NULL)
        snprintf(rtype, MDM_RTYPE_MAX, "%s", res.request_type);
    res.at = at == AT_QUEUE ? AT_NONE : at;
    res.has_raw = true;
    if (raw_len > 0)
        mdm_buf_append(&res.raw, raw, raw_len);
    *outcome = at == AT_DONE ? MDM_REPORT_DUPLICATE : MDM_REPORT_RECORDED;
    rc = finish_record(txn, eid, uuid, &res, status, now_ms);
    mdm_result_rec_free(&res);
    return rc;
}

int mdm_queue_report(mdm_txn_t *txn, const char *eid, const char *uuid, const char *status,
                     const void *raw, size_t raw_len, int64_t now_ms, int64_t session,
                     uint64_t notnow_max, int *outcome, char rtype[MDM_RTYPE_MAX])
{
    if (rtype != NULL)
        rtype[0] = '\0';
    bool notnow = strcmp(status, "NotNow") == 0;
    if (!notnow && strcmp(status, "Acknowledged") != 0 && strcmp(status, "Error") != 0 &&
        strcmp(status, "CommandFormatError") != 0)
        return MDM_EINVAL;
    mdm_result_rec_t res;
    int rc = result_load(txn, eid, uuid, &res);
    if (rc == MDM_ENOTFOUND || rc == MDM_EINVAL) {
        *outcome = MDM_REPORT_UNKNOWN;
        return 0;
    }
    if (rc == MDM_EPARSE) {
        int at = res.at;
        mdm_result_rec_free(&res);
        return report_over_unreadable(txn, eid, uuid, status, raw, raw_len, now_ms, at, outcome,
                                      rtype);
    }
    if (rc != 0)
        return rc;
    if (rtype != NULL)
        snprintf(rtype, MDM_RTYPE_MAX, "%s", res.request_type);
    if (!res.has_status || mdm_status_terminal(res.status)) {
        *outcome = MDM_REPORT_DUPLICATE;
        mdm_result_rec_free(&res);
        return 0;
    }
    /* Never sent to this enrollment (it waits its turn, or it was sent on
     * the other channel of the same device): the device cannot have run
     * it here, so the report finishes nothing. */
    if (res.sent_at == 0) {
        *outcome = MDM_REPORT_UNKNOWN;
        mdm_result_rec_free(&res);
        return 0;
    }
    if (notnow) {
        uint64_t n = res.notnow_count + 1;
        res.notnow_count = n;
        res.notnow_at = now_ms;
        res.notnow_session = session;
        if (notnow_max > 0 && n > notnow_max) {
            *outcome = MDM_REPORT_NOTNOW_LIMIT;
            rc = finish(txn, eid, uuid, &res, "NotNowLimit", now_ms);
        } else {
            *outcome = MDM_REPORT_NOTNOW;
            rrec_set_status(&res, "NotNow");
            res.updated_at = now_ms;
            rc = result_save(txn, eid, uuid, &res);
        }
    } else {
        *outcome = MDM_REPORT_RECORDED;
        res.has_raw = true;
        mdm_buf_reset(&res.raw);
        if (raw_len > 0)
            mdm_buf_append(&res.raw, raw, raw_len);
        rc = finish(txn, eid, uuid, &res, status, now_ms);
    }
    mdm_result_rec_free(&res);
    return rc;
}

int mdm_queue_cancel(mdm_txn_t *txn, const char *eid, const char *uuid, int64_t now_ms)
{
    mdm_result_rec_t res;
    int rc = result_load(txn, eid, uuid, &res);
    if (rc != 0)
        return rc == MDM_EINVAL ? MDM_ENOTFOUND : rc;
    if (!res.has_status || mdm_status_terminal(res.status))
        rc = MDM_ENOTFOUND;
    else
        rc = finish(txn, eid, uuid, &res, "Canceled", now_ms);
    mdm_result_rec_free(&res);
    return rc;
}

int mdm_queue_clear(mdm_txn_t *txn, const char *eid, const char *status, int64_t now_ms,
                    size_t *n)
{
    *n = 0;
    for (;;) {
        /* Take the first waiting entry until none is left (each finish
         * deletes its queue entry, so the cursor starts afresh). */
        mdm_buf_t k = MDM_BUF_INIT;
        int rc = eid_prefix(&k, eid);
        mdm_cursor_t *c = NULL;
        if (rc == 0)
            rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
        mdm_val_t ck, cv;
        char uuid[MDM_UUID_LEN + 1] = "";
        mdm_buf_t key = MDM_BUF_INIT;
        if (rc == 0) {
            mdm_val_t prefix = MDM_VAL(k.data, k.len);
            rc = mdm_cursor_seek(c, prefix, &ck, &cv);
            if (rc == 0 && !mdm_val_has_prefix(ck, prefix))
                rc = MDM_ENOTFOUND;
            if (rc == 0) {
                if (cv.len >= MDM_UUID_LEN) {
                    memcpy(uuid, cv.data, MDM_UUID_LEN);
                    uuid[MDM_UUID_LEN] = '\0';
                }
                mdm_buf_append(&key, ck.data, ck.len);
            }
        }
        mdm_cursor_close(c);
        mdm_buf_free(&k);
        if (rc == MDM_ENOTFOUND) {
            mdm_buf_free(&key);
            return 0;
        }
        if (rc != 0) {
            mdm_buf_free(&key);
            return rc;
        }
        mdm_result_rec_t res;
        rc = uuid[0] ? result_load(txn, eid, uuid, &res) : MDM_ENOTFOUND;
        if (rc == MDM_EPARSE) {
            log_bad_entry("queue.entry_unreadable", eid, MDM_VAL(key.data, key.len), uuid,
                          res.at, "the result record does not decode; the entry is deleted");
            rc = MDM_ENOTFOUND;
        }
        if (rc == 0) {
            if (res.has_status && !mdm_status_terminal(res.status))
                rc = finish(txn, eid, uuid, &res, status, now_ms);
            mdm_result_rec_free(&res);
        }
        /* The entry goes whatever its result says, so that every pass
         * removes one (an entry whose result another one's index points
         * at would otherwise stay first for ever). */
        if (rc == 0 || rc == MDM_ENOTFOUND) {
            rc = mdm_txn_del(txn, MDM_T_QUEUE, MDM_VAL(key.data, key.len));
            if (rc == MDM_ENOTFOUND)
                rc = 0;
        }
        mdm_buf_free(&key);
        if (rc != 0)
            return rc;
        (*n)++;
    }
}

/* Counts the waiting commands of eid, stopping at limit (0: no limit). */
static int queue_count(mdm_txn_t *txn, const char *eid, size_t limit, size_t *n)
{
    *n = 0;
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = eid_prefix(&k, eid);
    mdm_cursor_t *c = NULL;
    if (rc == 0)
        rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
    if (rc == 0) {
        mdm_val_t prefix = MDM_VAL(k.data, k.len), ck, cv;
        for (rc = mdm_cursor_seek(c, prefix, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, prefix);
             rc = mdm_cursor_next(c, &ck, &cv)) {
            if (++*n == limit)
                break;
        }
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&k);
    return rc;
}

int mdm_queue_length(mdm_txn_t *txn, const char *eid, size_t *n)
{
    return queue_count(txn, eid, 0, n);
}

int mdm_queue_empty(mdm_txn_t *txn, const char *eid, bool *empty)
{
    size_t n = 0;
    int rc = queue_count(txn, eid, 1, &n);
    *empty = rc == 0 && n == 0;
    return rc;
}

int mdm_result_get(mdm_txn_t *txn, const char *eid, const char *uuid, mdm_result_t *out,
                   mdm_buf_t *raw_out)
{
    mdm_val_t v;
    int at;
    int rc = result_raw(txn, eid, uuid, &v, &at);
    if (rc != 0)
        return rc == MDM_EINVAL ? MDM_ENOTFOUND : rc;
    memset(out, 0, sizeof(*out));
    mdm_result_rec_t rec;
    rc = result_decode_at(v, at, &rec);
    if (rc == 0) {
        result_view(&rec, out);
        if (raw_out != NULL) {
            mdm_buf_reset(raw_out);
            if (out->raw)
                mdm_buf_append(raw_out, out->raw, out->raw_len);
        }
        out->raw = NULL;
        out->raw_len = 0;
        snprintf(out->uuid, sizeof(out->uuid), "%s", uuid);
        snprintf(out->eid, sizeof(out->eid), "%s", eid);
    }
    mdm_result_rec_free(&rec);
    return rc;
}

/* Calls fn with a decoded result (its raw bytes live until fn returns). */
static int call_with_result(mdm_val_t v, int at, const char *eid, size_t eidlen, const char *uuid,
                            size_t uuidlen, mdm_result_fn fn, void *arg)
{
    mdm_result_t r;
    memset(&r, 0, sizeof(r));
    mdm_result_rec_t rec;
    if (result_decode_at(v, at, &rec) != 0) {
        mdm_result_rec_free(&rec);
        return 0; /* an undecodable record is skipped, not fatal */
    }
    result_view(&rec, &r);
    snprintf(r.eid, sizeof(r.eid), "%.*s", (int)eidlen, eid);
    snprintf(r.uuid, sizeof(r.uuid), "%.*s", (int)uuidlen, uuid);
    int rc = fn(&r, arg);
    mdm_result_rec_free(&rec);
    return rc;
}

int mdm_results_of_enrollment(mdm_txn_t *txn, const char *eid, mdm_result_fn fn, void *arg)
{
    mdm_buf_t k = MDM_BUF_INIT;
    mdm_cursor_t *c = NULL;
    /* The waiting results in the queue entries, in queue order. */
    int rc = eid_prefix(&k, eid);
    if (rc == 0)
        rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
    if (rc == 0) {
        mdm_val_t prefix = MDM_VAL(k.data, k.len), ck, cv;
        for (rc = mdm_cursor_seek(c, prefix, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, prefix);
             rc = mdm_cursor_next(c, &ck, &cv)) {
            if (cv.len <= QHDR)
                continue; /* an earlier layout's: its result is kept apart */
            rc = call_with_result(cv, AT_QUEUE, eid, strlen(eid), cv.data,
                                  strnlen(cv.data, MDM_UUID_LEN), fn, arg);
            if (rc != 0)
                break;
        }
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_cursor_close(c);
    c = NULL;
    if (rc == 0)
        rc = mdm_cursor_open(txn, MDM_T_RESULTS, &c);
    /* Then those of earlier layouts, then the finished ones. */
    for (int live = 1; rc == 0 && live >= 0; live--) {
        rc = eid_prefix_at(&k, eid, live);
        if (rc != 0)
            break;
        mdm_val_t prefix = MDM_VAL(k.data, k.len), ck, cv;
        for (rc = mdm_cursor_seek(c, prefix, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, prefix);
             rc = mdm_cursor_next(c, &ck, &cv)) {
            rc = call_with_result(cv, live ? AT_LIVE : AT_DONE, eid, strlen(eid),
                                  (const char *)ck.data + prefix.len, ck.len - prefix.len, fn,
                                  arg);
            if (rc != 0)
                break;
        }
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&k);
    return rc;
}

int mdm_results_of_command(mdm_txn_t *txn, const char *uuid, mdm_result_fn fn, void *arg)
{
    return mdm_results_of_command_from(txn, uuid, NULL, fn, arg);
}

int mdm_results_of_command_from(mdm_txn_t *txn, const char *uuid, const char *from_eid,
                                mdm_result_fn fn, void *arg)
{
    mdm_buf_t k = MDM_BUF_INIT;
    cmdt_key(&k, uuid, NULL);
    size_t plen = k.len;
    if (from_eid != NULL)
        mdm_buf_puts(&k, from_eid);
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &c);
    if (rc == 0) {
        mdm_val_t prefix = MDM_VAL(k.data, plen), start = MDM_VAL(k.data, k.len), ck, cv;
        for (rc = mdm_cursor_seek(c, start, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, prefix);
             rc = mdm_cursor_next(c, &ck, &cv)) {
            char eid[EID_MAX + 1];
            size_t el = ck.len - prefix.len;
            if (el == 0 || el > EID_MAX)
                continue;
            memcpy(eid, (const char *)ck.data + prefix.len, el);
            eid[el] = '\0';
            mdm_val_t v;
            int at;
            if (result_raw(txn, eid, uuid, &v, &at) != 0)
                continue;
            rc = call_with_result(v, at, eid, el, uuid, strlen(uuid), fn, arg);
            if (rc != 0)
                break;
        }
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&k);
    return rc;
}

/* Deletes the command record when no target refers to it any more. */
static int command_gc(mdm_txn_t *txn, const char *uuid)
{
    mdm_buf_t k = MDM_BUF_INIT;
    cmdt_key(&k, uuid, NULL);
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &c);
    bool used = false;
    if (rc == 0) {
        mdm_val_t prefix = MDM_VAL(k.data, k.len), ck, cv;
        rc = mdm_cursor_seek(c, prefix, &ck, &cv);
        used = rc == 0 && mdm_val_has_prefix(ck, prefix);
        rc = (rc == 0 || rc == MDM_ENOTFOUND) ? 0 : rc;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&k);
    if (rc == 0 && !used) {
        rc = mdm_txn_del(txn, MDM_T_COMMANDS, MDM_VAL_STR(uuid));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    return rc;
}

static int forget_result(mdm_txn_t *txn, const char *eid, const char *uuid)
{
    mdm_buf_t k = MDM_BUF_INIT;
    int rc = 0;
    for (int live = 0; rc == 0 && live <= 1; live++) {
        rc = result_key(&k, eid, uuid, live);
        if (rc == 0)
            rc = mdm_txn_del(txn, MDM_T_RESULTS, MDM_VAL(k.data, k.len));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    if (rc == 0) {
        cmdt_key(&k, uuid, eid);
        rc = mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(k.data, k.len));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_buf_free(&k);
    if (rc == 0)
        rc = command_gc(txn, uuid);
    return rc;
}

int mdm_results_prune(mdm_txn_t *txn, int64_t cutoff_ms, size_t max, size_t *n)
{
    *n = 0;
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &c);
    if (rc != 0)
        return rc;
    mdm_val_t prefix = MDM_VAL("rexp", 5), ck, cv;
    for (rc = mdm_cursor_seek(c, prefix, &ck, &cv);
         rc == 0 && *n < max && mdm_val_has_prefix(ck, prefix); rc = mdm_cursor_next(c, &ck, &cv)) {
        if (ck.len < 5 + 8 + 2)
            continue;
        const unsigned char *p = (const unsigned char *)ck.data;
        int64_t completed = (int64_t)mdm_be64_get(p + 5);
        if (completed >= cutoff_ms)
            break;
        const char *rest = (const char *)p + 13;
        size_t restlen = ck.len - 13;
        const char *nul = memchr(rest, '\0', restlen);
        if (nul == NULL)
            continue;
        char eid[EID_MAX + 1], uuid[MDM_UUID_LEN + 1];
        size_t el = (size_t)(nul - rest), ul = restlen - el - 1;
        if (el == 0 || el > EID_MAX || ul > MDM_UUID_LEN)
            continue;
        memcpy(eid, rest, el);
        eid[el] = '\0';
        memcpy(uuid, nul + 1, ul);
        uuid[ul] = '\0';
        rc = mdm_cursor_del(c);
        if (rc == 0)
            rc = forget_result(txn, eid, uuid);
        if (rc != 0)
            break;
        (*n)++;
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

struct forget_ctx {
    mdm_txn_t *txn;
    char (*uuids)[MDM_UUID_LEN + 1];
    int64_t *completed;
    size_t n, cap;
};

static int collect_result(const mdm_result_t *r, void *arg)
{
    struct forget_ctx *f = arg;
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->uuids = mdm_realloc(f->uuids, f->cap * sizeof(*f->uuids));
        f->completed = mdm_realloc(f->completed, f->cap * sizeof(*f->completed));
    }
    memcpy(f->uuids[f->n], r->uuid, MDM_UUID_LEN + 1);
    f->completed[f->n] = r->completed_ms;
    f->n++;
    return 0;
}

int mdm_queue_forget(mdm_txn_t *txn, const char *eid)
{
    size_t cleared = 0;
    int rc = mdm_queue_clear(txn, eid, "Canceled", 0, &cleared);
    if (rc != 0)
        return rc;
    struct forget_ctx f = {.txn = txn};
    rc = mdm_results_of_enrollment(txn, eid, collect_result, &f);
    mdm_buf_t k = MDM_BUF_INIT;
    for (size_t i = 0; rc == 0 && i < f.n; i++) {
        rexp_key(&k, f.completed[i], eid, f.uuids[i]);
        int d = mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(k.data, k.len));
        if (d != 0 && d != MDM_ENOTFOUND)
            rc = d;
        if (rc == 0)
            rc = forget_result(txn, eid, f.uuids[i]);
    }
    mdm_buf_free(&k);
    mdm_free(f.uuids);
    mdm_free(f.completed);
    return rc;
}

/* ---- moving waiting results of earlier layouts --------------------------- */

/* At most this many queue entries are looked at in one transaction. */
#define UPGRADE_SCAN 20000

int mdm_queue_upgrade_txn(mdm_txn_t *txn, mdm_queue_upgrade_t *u)
{
    /* Each run starts from the last step kept. */
    mdm_buf_reset(&u->step_from);
    mdm_buf_append(&u->step_from, u->from.data ? u->from.data : "", u->from.len);
    u->step_scanned = u->step_moved = 0;
    u->step_done = false;
    uint64_t layout = 0;
    int rc = mdm_meta_get_u64(txn, "queue_layout", &layout);
    if (rc == 0 && layout >= MDM_QUEUE_LAYOUT) {
        u->step_done = true;
        return 0;
    }
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    /* The entries of the header alone, from where the last step ended. */
    mdm_buf_t keys = MDM_BUF_INIT; /* key, then the UUID, each NUL-terminated */
    size_t n = 0, scanned = 0;
    mdm_cursor_t *c = NULL;
    rc = mdm_cursor_open(txn, MDM_T_QUEUE, &c);
    mdm_val_t ck, cv;
    for (rc = rc ? rc : mdm_cursor_seek(c, MDM_VAL(u->from.data, u->from.len), &ck, &cv);
         rc == 0 && scanned < (u->scan_max ? u->scan_max : UPGRADE_SCAN);
         rc = mdm_cursor_next(c, &ck, &cv)) {
        scanned++;
        mdm_buf_reset(&u->step_from);
        mdm_buf_append(&u->step_from, ck.data, ck.len);
        mdm_buf_putc(&u->step_from, '\0'); /* the next key after this one */
        const char *nul = memchr(ck.data, '\0', ck.len);
        if (cv.len != QHDR || nul == NULL || (size_t)(nul - (const char *)ck.data) > EID_MAX)
            continue;
        mdm_buf_append(&keys, ck.data, (size_t)(nul - (const char *)ck.data));
        mdm_buf_putc(&keys, '\0');
        mdm_buf_append(&keys, cv.data, strnlen(cv.data, MDM_UUID_LEN));
        mdm_buf_putc(&keys, '\0');
        n++;
    }
    mdm_cursor_close(c);
    bool end = rc == MDM_ENOTFOUND;
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    const char *p = keys.data;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *eid = p, *uuid = p + strlen(p) + 1;
        p = uuid + strlen(uuid) + 1;
        mdm_result_rec_t res;
        int g = result_load(txn, eid, uuid, &res);
        /* Anything else (no result, a finished or undecodable one) is left
         * for `moonmdm db check` to report. */
        if (g == 0 && res.has_status && !mdm_status_terminal(res.status) && res.at != AT_QUEUE) {
            rc = result_save(txn, eid, uuid, &res);
            if (rc == 0 && res.at == AT_QUEUE)
                u->step_moved++;
        } else if (g != 0 && g != MDM_ENOTFOUND && g != MDM_EPARSE && g != MDM_EINVAL) {
            rc = g;
        }
        mdm_result_rec_free(&res);
    }
    mdm_buf_free(&keys);
    u->step_scanned = scanned;
    if (rc == 0 && end) {
        rc = mdm_meta_put_u64(txn, "queue_layout", MDM_QUEUE_LAYOUT);
        if (rc == 0)
            u->step_done = true;
    }
    return rc;
}

static int upgrade_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_queue_upgrade_txn(txn, arg);
}

int mdm_queue_upgrade_step(mdm_store_t *store, mdm_queue_upgrade_t *u)
{
    int rc = mdm_store_update(store, upgrade_fn, u);
    if (rc != 0)
        return rc;
    mdm_buf_t t = u->from;
    u->from = u->step_from;
    u->step_from = t;
    u->scanned += u->step_scanned;
    u->moved += u->step_moved;
    u->done = u->step_done;
    return 0;
}

void mdm_queue_upgrade_free(mdm_queue_upgrade_t *u)
{
    mdm_buf_free(&u->from);
    mdm_buf_free(&u->step_from);
}

