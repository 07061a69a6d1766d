#include "api/api.h"

json_t *mdm_api_push_results(mdm_server_t *s, const char *const *ids, size_t n,
                             const mdm_target_result_t *results)
{
    json_t *out = json_object();
    for (size_t i = 0; i < n; i++) {
        if (results != NULL && results[i].status != MDM_TARGET_QUEUED &&
            results[i].status != MDM_TARGET_DUPLICATE)
            continue;
        json_t *o = json_object();
        if (s->push_fn == NULL)
            json_object_set_new(o, "error",
                                json_string("push is not configured (no APNs push certificate)"));
        else
            s->push_fn(s, ids[i], o);
        json_object_set_new(out, ids[i], o);
    }
    return out;
}
