#include "mdm/enqueue.h"

#include <stdio.h>
#include <string.h>

#include "mdm/certauth.h"
#include "mdm/cmdschema.h"
#include "util/alloc.h"
#include "util/misc.h"
#include "util/plist.h"

const char *mdm_target_status_name(int status)
{
    switch (status) {
    case MDM_TARGET_QUEUED: return "queued";
    case MDM_TARGET_DUPLICATE: return "duplicate";
    case MDM_TARGET_UNKNOWN: return "unknown_enrollment";
    case MDM_TARGET_INVALID: return "invalid_id";
    }
    return "?";
}

int mdm_enqueue(mdm_txn_t *txn, const mdm_enqueue_req_t *req, int64_t now_ms,
                char uuid_out[MDM_UUID_LEN + 1], mdm_target_result_t *results)
{
    mdm_command_info_t info;
    memset(&info, 0, sizeof(info));
    if (req->uuid != NULL && req->uuid[0] != '\0') {
        if (!mdm_command_uuid_ok(req->uuid))
            return MDM_EINVAL;
        snprintf(info.uuid, sizeof(info.uuid), "%s", req->uuid);
    } else {
        mdm_uuid(info.uuid);
    }
    const char *rt = mdm_pl_str(req->command, "RequestType");
    if (rt == NULL || req->ttl_ms < 0 || req->ttl_ms > MDM_TTL_MAX_MS)
        return MDM_EINVAL;
    snprintf(info.request_type, sizeof(info.request_type), "%s", rt);
    info.priority = req->priority < 0 ? 0 : req->priority > 255 ? 255 : req->priority;
    info.created_ms = now_ms;
    info.expires_ms = req->ttl_ms > 0 ? now_ms + req->ttl_ms : 0;
    mdm_plist_hash(req->command, info.hash);

    plist_t full = plist_new_dict();
    mdm_pl_set_str(full, "CommandUUID", info.uuid);
    plist_dict_set_item(full, "Command", plist_copy(req->command));
    mdm_buf_t xml = MDM_BUF_INIT;
    mdm_plist_to_xml_buf(full, &xml);
    plist_free(full);
    int rc = mdm_command_put(txn, &info, xml.data, xml.len);
    mdm_buf_free(&xml);
    if (rc != 0)
        return rc;
    size_t queued = 0;
    for (size_t i = 0; i < req->ntargets; i++) {
        const char *id = req->targets[i];
        mdm_target_result_t *r = &results[i];
        r->id = id;
        r->dup_uuid[0] = '\0';
        if (id == NULL || id[0] == '\0' || strlen(id) > MDM_ENROLLMENT_ID_MAX) {
            r->status = MDM_TARGET_INVALID;
            continue;
        }
        mdm_val_t v;
        rc = mdm_txn_get(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(id), &v);
        if (rc == MDM_ENOTFOUND) {
            r->status = MDM_TARGET_UNKNOWN;
            continue;
        }
        if (rc != 0)
            return rc;
        int outcome = 0;
        rc = mdm_queue_add(txn, id, &info, req->dedupe, &outcome, r->dup_uuid);
        if (rc != 0)
            return rc;
        r->status = outcome == MDM_ENQ_DUPLICATE ? MDM_TARGET_DUPLICATE : MDM_TARGET_QUEUED;
        if (outcome == MDM_ENQ_QUEUED)
            queued++;
    }
    if (queued == 0) {
        /* Nothing refers to the command: do not keep it. */
        rc = mdm_txn_del(txn, MDM_T_COMMANDS, MDM_VAL_STR(info.uuid));
        if (rc != 0 && rc != MDM_ENOTFOUND)
            return rc;
    }
    memcpy(uuid_out, info.uuid, MDM_UUID_LEN + 1);
    return 0;
}
