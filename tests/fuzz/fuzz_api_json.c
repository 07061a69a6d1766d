/* Fuzz target: commands that admins submit through the API.
 *
 * An input that starts with '<' or "bplist" is a raw command plist, as
 * POST /v1/commands (application/x-apple-plist) and NanoMDM's
 * PUT /v1/enqueue take it: mdm_command_unwrap, then mdm_command_validate.
 * Any other input is "<RequestType>\n<JSON params>", as POST /v1/commands
 * takes JSON: mdm_command_build_json (an empty first line takes the
 * RequestType from the params' "RequestType").
 *
 * Properties checked (abort() when broken): a command the builder made
 * passes the validator; a valid command wraps into the device envelope
 * (mdm_command_wrap), which unwraps to the same CommandUUID and an equal
 * Command that validates again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdm/cmdschema.h"
#include "util/alloc.h"
#include "util/plist.h"

#define FUZZ_UUID "4D1C2A5E-0000-4000-8000-F022F022F022"

static void fail(const char *what, const mdm_err_t *err)
{
    fprintf(stderr, "fuzz_api_json: %s%s%s\n", what, err && err->msg[0] ? ": " : "",
            err && err->msg[0] ? err->msg : "");
    abort();
}

/* A valid command must survive the trip to the device and back. */
static void check_roundtrip(plist_t cmd)
{
    mdm_err_t err = {0};
    if (mdm_command_validate(cmd, &err) != 0)
        fail("a command that passed the checks does not validate", &err);
    char *xml = NULL;
    uint32_t len = 0;
    if (mdm_command_wrap(cmd, FUZZ_UUID, &xml, &len) != 0)
        fail("a valid command does not wrap", NULL);
    plist_t back = NULL;
    char uuid[64];
    if (mdm_command_unwrap(xml, len, &back, uuid, &err) != 0)
        fail("a wrapped command does not unwrap", &err);
    if (strcmp(uuid, FUZZ_UUID) != 0)
        fail("the CommandUUID changed on the way", NULL);
    unsigned char h1[32], h2[32];
    mdm_plist_hash(cmd, h1);
    mdm_plist_hash(back, h2);
    if (memcmp(h1, h2, sizeof(h1)) != 0)
        fail("the Command changed on the way", NULL);
    if (mdm_command_validate(back, &err) != 0)
        fail("a wrapped and unwrapped command no longer validates", &err);
    plist_free(back);
    mdm_free(xml);
}

static void raw_plist(const uint8_t *data, size_t size)
{
    plist_t cmd = NULL;
    char uuid[64];
    mdm_err_t err = {0};
    if (mdm_command_unwrap((const char *)data, size, &cmd, uuid, &err) != 0) {
        if (cmd != NULL)
            fail("mdm_command_unwrap failed but set *cmd_dict", &err);
        return;
    }
    if (mdm_command_validate(cmd, &err) == 0)
        check_roundtrip(cmd);
    plist_free(cmd);
}

static void json_params(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t rtlen = nl ? (size_t)(nl - data) : size;
    char *rt = mdm_malloc(rtlen + 1);
    memcpy(rt, data, rtlen);
    rt[rtlen] = '\0';
    const char *json = nl ? (const char *)nl + 1 : "";
    size_t jlen = nl ? size - rtlen - 1 : 0;

    json_error_t je;
    json_t *params = json_loadb(json, jlen, JSON_REJECT_DUPLICATES, &je);
    plist_t cmd = NULL;
    mdm_err_t err = {0};
    if (params != NULL && strlen(rt) == rtlen) {
        int rc = mdm_command_build_json(rt[0] ? rt : NULL, params, &cmd, &err);
        if (rc != 0 && cmd != NULL)
            fail("mdm_command_build_json failed but set *out_cmd", &err);
        if (rc == 0) {
            if (cmd == NULL)
                fail("mdm_command_build_json succeeded without a command", NULL);
            check_roundtrip(cmd);
        }
    }
    plist_free(cmd);
    json_decref(params);
    mdm_free(rt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 1 && (data[0] == '<' || (size >= 6 && memcmp(data, "bplist", 6) == 0)))
        raw_plist(data, size);
    else if (size > 0)
        json_params(data, size);
    return 0;
}
