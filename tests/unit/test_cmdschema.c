/* Tests of mdm/cmdschema: the generated table (count, order, lookups, a few
 * known commands' keys and channels), building commands from JSON (every
 * kind of value, arrays of several-form dictionaries, <any>), every error
 * message form with its exact text, validation of Command dictionaries,
 * and the {CommandUUID, Command} envelope both ways, XML and binary.
 *
 * The count is what tools/gen_mdm_schema.py reported for Apple's 66 command
 * files; the schema/fresh ctest checks that the table matches the YAML. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdm/cmdschema.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/plistjson.h"

#define GENERATED_COMMANDS 66

/* ---- helpers ---------------------------------------------------------------- */

static json_t *json(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (j == NULL)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    return j;
}

static void assert_json(const json_t *j, const char *want)
{
    if (j == NULL)
        fail_msg("no JSON value; want %s", want);
    char *have = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (have == NULL || strcmp(have, want) != 0)
        fail_msg("JSON differs\nwant: %s\nhave: %s", want, have ? have : "(null)");
    free(have);
}

/* Builds rt from params (JSON text), which must succeed and validate. */
static plist_t build_ok(const char *rt, const char *params)
{
    json_t *j = json(params);
    plist_t cmd = NULL;
    mdm_err_t err = {0};
    int rc = mdm_command_build_json(rt, j, &cmd, &err);
    json_decref(j);
    if (rc != 0)
        fail_msg("%s %s: rc %d: %s", rt ? rt : "(null)", params, rc, err.msg);
    assert_non_null(cmd);
    rc = mdm_command_validate(cmd, &err);
    if (rc != 0)
        fail_msg("%s %s built but does not validate: %s", rt ? rt : "(null)", params, err.msg);
    return cmd;
}

/* Builds and compares the Command as JSON. */
static void assert_build(const char *rt, const char *params, const char *want)
{
    plist_t cmd = build_ok(rt, params);
    json_t *j = mdm_plist_to_json(cmd);
    assert_json(j, want);
    json_decref(j);
    plist_free(cmd);
}

static void expect_build_error(const char *rt, const char *params, int want_rc, const char *want)
{
    json_t *j = json(params);
    plist_t cmd = NULL;
    mdm_err_t err = {0};
    int rc = mdm_command_build_json(rt, j, &cmd, &err);
    json_decref(j);
    if (rc != want_rc || strcmp(err.msg, want) != 0)
        fail_msg("%s %s\nwant rc %d: %s\nhave rc %d: %s", rt ? rt : "(null)", params, want_rc,
                 want, rc, rc ? err.msg : "(success)");
    assert_null(cmd);
}

static void expect_validate_error(plist_t cmd, int want_rc, const char *want)
{
    mdm_err_t err = {0};
    int rc = mdm_command_validate(cmd, &err);
    if (rc != want_rc || strcmp(err.msg, want) != 0)
        fail_msg("want rc %d: %s\nhave rc %d: %s", want_rc, want, rc,
                 rc ? err.msg : "(success)");
}

/* A Command dictionary with RequestType rt and the given members. */
static plist_t cmd_dict(const char *rt)
{
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "RequestType", plist_new_string(rt));
    return d;
}

static const mdm_schema_key_t *key_of(const char *rt, const char *name)
{
    const mdm_cmd_schema_t *cs = mdm_cmdschema_find(rt);
    assert_non_null(cs);
    const mdm_schema_key_t *k = mdm_schema_key_find(cs->keys, cs->nkeys, name);
    if (k == NULL)
        fail_msg("%s has no key %s", rt, name);
    return k;
}

/* Walks a key tree checking that it is well formed. */
static void check_keys(const char *rt, const mdm_schema_key_t *keys, size_t n, int depth)
{
    assert_true(depth < 16);
    for (size_t i = 0; i < n; i++) {
        const mdm_schema_key_t *k = &keys[i];
        if (k->name == NULL || k->name[0] == '\0')
            fail_msg("%s: key without a name", rt);
        assert_true(k->type <= MDM_T_ANY);
        if (k->nsub > 0 && k->type != MDM_T_ARRAY && k->type != MDM_T_DICT)
            fail_msg("%s.%s: a %s with sub-keys", rt, k->name, mdm_vtype_name(k->type));
        if (k->nvalues > 0)
            assert_non_null(k->values);
        if (k->discriminator != NULL && (k->type != MDM_T_ARRAY || k->nsub < 2))
            fail_msg("%s.%s: discriminator on a one-form key", rt, k->name);
        if (k->type == MDM_T_ARRAY && k->nsub > 1 && k->discriminator == NULL)
            fail_msg("%s.%s: several forms without a discriminator", rt, k->name);
        check_keys(rt, k->sub, k->nsub, depth + 1);
    }
}

/* ---- the table ----------------------------------------------------------------- */

static void test_table(void **state)
{
    (void)state;
    assert_int_equal(mdm_cmdschema_count(), GENERATED_COMMANDS);
    for (size_t i = 0; i < mdm_cmdschema_count(); i++) {
        const mdm_cmd_schema_t *cs = mdm_cmdschema_at(i);
        assert_non_null(cs);
        if (i > 0 && strcmp(mdm_cmdschema_at(i - 1)->request_type, cs->request_type) >= 0)
            fail_msg("table not sorted at %zu: %s, %s", i, mdm_cmdschema_at(i - 1)->request_type,
                     cs->request_type);
        assert_ptr_equal(mdm_cmdschema_find(cs->request_type), cs);
        size_t fl = strlen(cs->file);
        if (fl < 6 || strcmp(cs->file + fl - 5, ".yaml") != 0)
            fail_msg("%s: file %s", cs->request_type, cs->file);
        assert_int_equal(cs->device_channel, cs->device_os != 0);
        assert_int_equal(cs->user_channel, cs->user_os != 0);
        assert_true(cs->device_channel || cs->user_channel);
        check_keys(cs->request_type, cs->keys, cs->nkeys, 0);
    }
    assert_null(mdm_cmdschema_at(GENERATED_COMMANDS));
    assert_null(mdm_cmdschema_find("devicelock"));
    assert_null(mdm_cmdschema_find(""));
    assert_null(mdm_cmdschema_find(NULL));
    assert_null(mdm_cmdschema_find("ZZZ"));
    assert_null(mdm_cmdschema_find("AAA"));

    const char *known[][2] = {
        {"DeviceLock", "device.lock.yaml"},
        {"DeviceInformation", "information.device.yaml"},
        {"InstallProfile", "profile.install.yaml"},
        {"EraseDevice", "device.erase.yaml"},
        {"Settings", "settings.yaml"},
        {"ScheduleOSUpdate", "system.update.schedule.yaml"},
        {"AccountConfiguration", "account.configuration.yaml"},
        {"UnlockUserAccount", "user.unlock.yaml"},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        const mdm_cmd_schema_t *cs = mdm_cmdschema_find(known[i][0]);
        if (cs == NULL || strcmp(cs->file, known[i][1]) != 0)
            fail_msg("%s: want file %s, have %s", known[i][0], known[i][1],
                     cs ? cs->file : "(missing)");
    }
}

static void test_table_details(void **state)
{
    (void)state;
    const mdm_cmd_schema_t *lock = mdm_cmdschema_find("DeviceLock");
    assert_true(lock->device_channel);
    assert_false(lock->user_channel);
    assert_int_equal(lock->os, MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS |
                                   MDM_OS_SHARED_IPAD);
    assert_int_equal(lock->nkeys, 3);
    assert_int_equal(key_of("DeviceLock", "PIN")->type, MDM_T_STRING);
    assert_int_equal(key_of("DeviceLock", "PIN")->flags & MDM_SKF_REQUIRED, 0);
    assert_int_equal(lock->nresponse_keys, 1);
    assert_string_equal(lock->response_keys[0], "MessageResult");

    /* Only the user channel (macOS). */
    const mdm_cmd_schema_t *ext = mdm_cmdschema_find("ActiveNSExtensions");
    assert_false(ext->device_channel);
    assert_true(ext->user_channel);
    assert_int_equal(ext->user_os, MDM_OS_MACOS);

    const mdm_cmd_schema_t *prof = mdm_cmdschema_find("InstallProfile");
    assert_true(prof->device_channel);
    assert_true(prof->user_channel);
    assert_int_equal(prof->user_os, MDM_OS_MACOS | MDM_OS_SHARED_IPAD);
    const mdm_schema_key_t *payload = key_of("InstallProfile", "Payload");
    assert_int_equal(payload->type, MDM_T_DATA);
    assert_int_equal(payload->flags & MDM_SKF_REQUIRED, MDM_SKF_REQUIRED);

    /* Shared iPad only on iOS. */
    const mdm_cmd_schema_t *logout = mdm_cmdschema_find("LogOutUser");
    assert_int_equal(logout->os, MDM_OS_SHARED_IPAD);

    const mdm_cmd_schema_t *info = mdm_cmdschema_find("DeviceInformation");
    assert_string_equal(info->response_keys[0], "QueryResponses");
    const mdm_schema_key_t *q = key_of("DeviceInformation", "Queries");
    assert_int_equal(q->type, MDM_T_ARRAY);
    assert_int_equal(q->nsub, 1);
    assert_int_equal(q->sub[0].type, MDM_T_STRING);
    assert_true(q->sub[0].flags & MDM_SKF_VALUES_ADVISORY);
    assert_true(q->sub[0].nvalues > 50);
    assert_string_equal(q->sub[0].values[0], "UDID");

    const mdm_schema_key_t *settings = key_of("Settings", "Settings");
    assert_string_equal(settings->discriminator, "Item");
    assert_int_equal(settings->nsub, 19);

    const mdm_schema_key_t *ob = key_of("EraseDevice", "ObliterationBehavior");
    assert_int_equal(ob->nvalues, 4);
    assert_string_equal(ob->values[3], "Always");

    /* Integer rangelists are kept as text. */
    const mdm_schema_key_t *flags = key_of("InstallApplication", "ManagementFlags");
    assert_int_equal(flags->nvalues, 3);
    assert_string_equal(flags->values[1], "4");

    const mdm_schema_key_t *manifest = key_of("InstallEnterpriseApplication", "Manifest");
    assert_int_equal(manifest->nsub, 1);
    assert_true(manifest->sub[0].flags & MDM_SKF_WILDCARD);
    assert_ptr_equal(mdm_schema_key_find(manifest->sub, manifest->nsub, "anything"),
                     &manifest->sub[0]);

    assert_string_equal(mdm_vtype_name(MDM_T_DICT), "dictionary");
    assert_string_equal(mdm_cmdschema_suggest("DeviceLok"), "DeviceLock");
    assert_string_equal(mdm_cmdschema_suggest("devicelock"), "DeviceLock");
    assert_string_equal(mdm_cmdschema_suggest("InstalProfile"), "InstallProfile");
    assert_null(mdm_cmdschema_suggest("Frobnicate"));
}

/* ---- building ------------------------------------------------------------------- */

static void test_build_commands(void **state)
{
    (void)state;
    assert_build("DeviceLock", "{\"Message\":\"Call me\",\"PhoneNumber\":\"+1 555 0100\","
                               "\"PIN\":\"123456\"}",
                 "{\"Message\":\"Call me\",\"PIN\":\"123456\",\"PhoneNumber\":\"+1 555 0100\","
                 "\"RequestType\":\"DeviceLock\"}");
    assert_build("DeviceLock", "{}", "{\"RequestType\":\"DeviceLock\"}");
    /* RequestType from the parameters, or repeated there. */
    assert_build(NULL, "{\"RequestType\":\"ProfileList\",\"ManagedOnly\":true}",
                 "{\"ManagedOnly\":true,\"RequestType\":\"ProfileList\"}");
    assert_build("ProfileList", "{\"RequestType\":\"ProfileList\"}",
                 "{\"RequestType\":\"ProfileList\"}");

    /* Query names Apple does not list yet are passed on (devices ignore them). */
    assert_build("DeviceInformation", "{\"Queries\":[\"UDID\",\"SerialNumber\",\"FutureQuery\"]}",
                 "{\"Queries\":[\"UDID\",\"SerialNumber\",\"FutureQuery\"],"
                 "\"RequestType\":\"DeviceInformation\"}");

    assert_build("EraseDevice",
                 "{\"PIN\":\"123456\",\"ObliterationBehavior\":\"DoNotObliterate\","
                 "\"PreserveDataPlan\":false,\"ReturnToService\":{\"Enabled\":true,"
                 "\"WiFiProfileData\":\"PD94bWw+\"}}",
                 "{\"ObliterationBehavior\":\"DoNotObliterate\",\"PIN\":\"123456\","
                 "\"PreserveDataPlan\":false,\"RequestType\":\"EraseDevice\","
                 "\"ReturnToService\":{\"Enabled\":true,\"WiFiProfileData\":\"PD94bWw+\"}}");

    assert_build("ScheduleOSUpdate",
                 "{\"Updates\":[{\"ProductKey\":\"iOSUpdate22A3354\","
                 "\"InstallAction\":\"InstallASAP\",\"MaxUserDeferrals\":3,"
                 "\"Priority\":\"High\"},{\"InstallAction\":\"Default\"}]}",
                 "{\"RequestType\":\"ScheduleOSUpdate\",\"Updates\":[{\"InstallAction\":"
                 "\"InstallASAP\",\"MaxUserDeferrals\":3,\"Priority\":\"High\",\"ProductKey\":"
                 "\"iOSUpdate22A3354\"},{\"InstallAction\":\"Default\"}]}");

    /* Settings: an array of dictionaries of several forms, chosen by Item. */
    assert_build("Settings",
                 "{\"Settings\":[{\"Item\":\"DeviceName\",\"DeviceName\":\"Lab 1\"},"
                 "{\"Item\":\"Bluetooth\",\"Enabled\":false},"
                 "{\"Item\":\"ApplicationAttributes\",\"Identifier\":\"com.example.app\","
                 "\"Attributes\":{\"VPNUUID\":\"A1\",\"AssociatedDomains\":[\"example.com\"]}},"
                 "{\"Item\":\"SharedDeviceConfiguration\",\"PasscodePolicy\":"
                 "{\"AutoLockTime\":60,\"PasscodeLockGracePeriod\":7}},"
                 "{\"Item\":\"ApplicationConfiguration\",\"Identifier\":\"x\","
                 "\"Configuration\":{\"url\":\"https://a\",\"n\":[1,2.5,{\"deep\":true}]}}]}",
                 "{\"RequestType\":\"Settings\",\"Settings\":["
                 "{\"DeviceName\":\"Lab 1\",\"Item\":\"DeviceName\"},"
                 "{\"Enabled\":false,\"Item\":\"Bluetooth\"},"
                 "{\"Attributes\":{\"AssociatedDomains\":[\"example.com\"],\"VPNUUID\":\"A1\"},"
                 "\"Identifier\":\"com.example.app\",\"Item\":\"ApplicationAttributes\"},"
                 "{\"Item\":\"SharedDeviceConfiguration\",\"PasscodePolicy\":"
                 "{\"AutoLockTime\":60,\"PasscodeLockGracePeriod\":7}},"
                 "{\"Configuration\":{\"n\":[1,2.5,{\"deep\":true}],\"url\":\"https://a\"},"
                 "\"Identifier\":\"x\",\"Item\":\"ApplicationConfiguration\"}]}");
}

static void test_build_types(void **state)
{
    (void)state;
    /* <data>: base64 in, bytes out. */
    const char *profile = "<?xml version=\"1.0\"?><plist><dict/></plist>\n";
    mdm_buf_t b64 = MDM_BUF_INIT;
    mdm_base64_encode(&b64, profile, strlen(profile));
    char *params = mdm_sprintf("{\"Payload\":\"%s\"}", b64.data);
    plist_t cmd = build_ok("InstallProfile", params);
    plist_t payload = plist_dict_get_item(cmd, "Payload");
    assert_true(PLIST_IS_DATA(payload));
    uint64_t len = 0;
    const char *bytes = plist_get_data_ptr(payload, &len);
    assert_int_equal(len, strlen(profile));
    assert_memory_equal(bytes, profile, len);
    /* RequestType comes first. */
    plist_dict_iter it = NULL;
    char *first = NULL;
    plist_t v = NULL;
    plist_dict_new_iter(cmd, &it);
    plist_dict_next_item(cmd, it, &first, &v);
    assert_string_equal(first, "RequestType");
    free(first);
    free(it);
    plist_free(cmd);
    mdm_free(params);
    mdm_buf_free(&b64);

    /* <integer> takes JSON integers, <boolean> booleans. */
    cmd = build_ok("ScheduleOSUpdate",
                   "{\"Updates\":[{\"InstallAction\":\"Default\",\"MaxUserDeferrals\":-1}]}");
    plist_t upd = plist_array_get_item(plist_dict_get_item(cmd, "Updates"), 0);
    plist_t defer = plist_dict_get_item(upd, "MaxUserDeferrals");
    assert_true(PLIST_IS_UINT(defer));
    uint64_t n = 0;
    plist_get_uint_val(defer, &n);
    assert_int_equal((int64_t)n, -1);
    plist_free(cmd);

    /* <any> keeps JSON types as they are. */
    cmd = build_ok("InstallApplication",
                   "{\"iTunesStoreID\":361309726,\"Configuration\":{\"s\":\"AAAA\",\"i\":1,"
                   "\"r\":0.5,\"b\":true,\"a\":[]}}");
    plist_t conf = plist_dict_get_item(cmd, "Configuration");
    assert_true(PLIST_IS_STRING(plist_dict_get_item(conf, "s")));
    assert_true(PLIST_IS_REAL(plist_dict_get_item(conf, "r")));
    assert_true(PLIST_IS_ARRAY(plist_dict_get_item(conf, "a")));
    plist_free(cmd);
}

static void test_build_errors(void **state)
{
    (void)state;
    expect_build_error("DeviceLock", "{\"PIN\":123456}", MDM_EINVAL,
                       "DeviceLock.PIN: expected a string, got integer");
    expect_build_error("DeviceInformation", "{\"Queries\":[\"UDID\",\"Model\",7]}", MDM_EINVAL,
                       "DeviceInformation.Queries[2]: expected a string, got integer");
    expect_build_error("DeviceInformation", "{\"Queries\":\"UDID\"}", MDM_EINVAL,
                       "DeviceInformation.Queries: expected an array, got string");
    expect_build_error("DeviceLock", "{\"Pin\":\"123456\"}", MDM_EINVAL,
                       "DeviceLock: unknown key \"Pin\" (did you mean \"PIN\"?)");
    expect_build_error("DeviceLock", "{\"Mesage\":\"x\"}", MDM_EINVAL,
                       "DeviceLock: unknown key \"Mesage\" (did you mean \"Message\"?)");
    expect_build_error("DeviceLock", "{\"Zzzzzzzz\":1}", MDM_EINVAL,
                       "DeviceLock: unknown key \"Zzzzzzzz\"");
    expect_build_error("DeviceConfigured", "{\"Foo\":1}", MDM_EINVAL,
                       "DeviceConfigured: unknown key \"Foo\"");
    expect_build_error("InstallProfile", "{}", MDM_EINVAL,
                       "InstallProfile: missing required key \"Payload\"");
    expect_build_error("EraseDevice", "{\"ObliterationBehavior\":\"Sometimes\"}", MDM_EINVAL,
                       "EraseDevice.ObliterationBehavior: \"Sometimes\" is not one of "
                       "\"Default\", \"DoNotObliterate\", \"ObliterateWithWarning\", \"Always\"");
    expect_build_error("EraseDevice", "{\"ObliterationBehavior\":\"always\"}", MDM_EINVAL,
                       "EraseDevice.ObliterationBehavior: \"always\" is not one of "
                       "\"Default\", \"DoNotObliterate\", \"ObliterateWithWarning\", \"Always\" "
                       "(did you mean \"Always\"?)");
    expect_build_error("RestartDevice", "{\"NotifyUser\":\"yes\"}", MDM_EINVAL,
                       "RestartDevice.NotifyUser: expected a boolean, got string");
    expect_build_error("RestartDevice", "{\"KextPaths\":[\"/a\",null]}", MDM_EINVAL,
                       "RestartDevice.KextPaths[1]: expected a string, got null");
    expect_build_error("ScheduleOSUpdate",
                       "{\"Updates\":[{\"InstallAction\":\"Default\",\"MaxUserDeferrals\":3.0}]}",
                       MDM_EINVAL,
                       "ScheduleOSUpdate.Updates[0].MaxUserDeferrals: expected an integer, "
                       "got real");
    expect_build_error("ScheduleOSUpdate", "{\"Updates\":[{\"InstallAction\":\"Now\"}]}",
                       MDM_EINVAL,
                       "ScheduleOSUpdate.Updates[0].InstallAction: \"Now\" is not one of "
                       "\"Default\", \"DownloadOnly\", \"InstallASAP\", \"NotifyOnly\", "
                       "\"InstallLater\", \"InstallForceRestart\"");
    expect_build_error("ScheduleOSUpdate", "{\"Updates\":[{\"ProductKey\":\"x\"}]}", MDM_EINVAL,
                       "ScheduleOSUpdate.Updates[0]: missing required key \"InstallAction\"");
    expect_build_error("InstallProfile", "{\"Payload\":\"!!!not base64\"}", MDM_EINVAL,
                       "InstallProfile.Payload: not valid base64");
    expect_build_error("InstallProfile", "{\"Payload\":5}", MDM_EINVAL,
                       "InstallProfile.Payload: expected data (a base64 string), got integer");
    expect_build_error("EraseDevice", "{\"ReturnToService\":[]}", MDM_EINVAL,
                       "EraseDevice.ReturnToService: expected a dictionary, got array");
    expect_build_error("EraseDevice", "{\"ReturnToService\":{}}", MDM_EINVAL,
                       "EraseDevice.ReturnToService: missing required key \"Enabled\"");
    expect_build_error("EraseDevice", "{\"ReturnToService\":{\"Enabled\":true,\"Wifi\":1}}",
                       MDM_EINVAL,
                       "EraseDevice.ReturnToService: unknown key \"Wifi\"");
    expect_build_error("InstallApplication", "{\"Configuration\":{\"a\":{\"b\":null}}}",
                       MDM_EINVAL,
                       "InstallApplication.Configuration.a.b: null has no property-list form");
    /* Quotes and control bytes in what the caller sent are escaped. */
    expect_build_error("EraseDevice", "{\"ObliterationBehavior\":\"a\\\"b\\n\"}", MDM_EINVAL,
                       "EraseDevice.ObliterationBehavior: \"a\\\"b\\x0a\" is not one of "
                       "\"Default\", \"DoNotObliterate\", \"ObliterateWithWarning\", \"Always\"");
    json_t *nul = json_object();
    json_object_set_new(nul, "PIN", json_stringn("12\0" "34", 5));
    plist_t cmd = NULL;
    mdm_err_t err = {0};
    assert_int_equal(mdm_command_build_json("DeviceLock", nul, &cmd, &err), MDM_EINVAL);
    assert_string_equal(err.msg, "DeviceLock.PIN: string contains a NUL character");
    json_decref(nul);
}

static void test_build_settings_errors(void **state)
{
    (void)state;
    expect_build_error("Settings", "{\"Settings\":[\"x\"]}", MDM_EINVAL,
                       "Settings.Settings[0]: expected a dictionary, got string");
    expect_build_error("Settings", "{\"Settings\":[{\"Enabled\":true}]}", MDM_EINVAL,
                       "Settings.Settings[0]: missing required key \"Item\"");
    expect_build_error("Settings", "{\"Settings\":[{\"Item\":4}]}", MDM_EINVAL,
                       "Settings.Settings[0].Item: expected a string, got integer");
    expect_build_error("Settings",
                       "{\"Settings\":[{\"Item\":\"Bluetooth\",\"Enabled\":true},"
                       "{\"Item\":\"Bluetooth\",\"Enabled\":\"yes\"}]}",
                       MDM_EINVAL, "Settings.Settings[1].Enabled: expected a boolean, got string");
    expect_build_error("Settings", "{\"Settings\":[{\"Item\":\"Bluetooth\"}]}", MDM_EINVAL,
                       "Settings.Settings[0]: missing required key \"Enabled\"");
    expect_build_error("Settings",
                       "{\"Settings\":[{\"Item\":\"Bluetooth\",\"Enabled\":true,"
                       "\"DeviceName\":\"x\"}]}",
                       MDM_EINVAL, "Settings.Settings[0]: unknown key \"DeviceName\"");

    /* A misspelt Item lists the forms (cut to fit) and suggests one. */
    json_t *j = json("{\"Settings\":[{\"Item\":\"Bluetoth\",\"Enabled\":true}]}");
    plist_t cmd = NULL;
    mdm_err_t err = {0};
    assert_int_equal(mdm_command_build_json("Settings", j, &cmd, &err), MDM_EINVAL);
    const char *head = "Settings.Settings[0].Item: \"Bluetoth\" is not one of \"Wallpaper\", "
                       "\"DataRoaming\", \"VoiceRoaming\", \"PersonalHotspot\", \"Bluetooth\", ";
    const char *tail = " more) (did you mean \"Bluetooth\"?)";
    size_t ml = strlen(err.msg), tl = strlen(tail);
    if (strncmp(err.msg, head, strlen(head)) != 0 || ml < tl ||
        strcmp(err.msg + ml - tl, tail) != 0)
        fail_msg("have: %s", err.msg);
    json_decref(j);
}

static void test_build_request_type(void **state)
{
    (void)state;
    expect_build_error("DeviceLok", "{}", MDM_ENOTFOUND,
                       "unknown RequestType \"DeviceLok\" (did you mean \"DeviceLock\"?)");
    expect_build_error("Frobnicate", "{}", MDM_ENOTFOUND, "unknown RequestType \"Frobnicate\"");
    expect_build_error(NULL, "{\"RequestType\":\"devicelock\"}", MDM_ENOTFOUND,
                       "unknown RequestType \"devicelock\" (did you mean \"DeviceLock\"?)");
    expect_build_error(NULL, "{\"PIN\":\"1\"}", MDM_EINVAL, "missing RequestType");
    expect_build_error("DeviceLock", "{\"RequestType\":\"EraseDevice\"}", MDM_EINVAL,
                       "RequestType \"EraseDevice\" in the parameters does not match "
                       "\"DeviceLock\"");
    expect_build_error("DeviceLock", "{\"RequestType\":1}", MDM_EINVAL,
                       "RequestType: expected a string, got integer");
    expect_build_error("DeviceLock", "[]", MDM_EINVAL,
                       "command parameters must be a JSON object, got array");
}

static void test_build_limits(void **state)
{
    (void)state;
    /* Configuration is at depth 1; 31 dictionaries inside reach 32. */
    char want[128];
    for (int extra = 31; extra <= 33; extra++) {
        mdm_buf_t b = MDM_BUF_INIT;
        mdm_buf_puts(&b, "{\"Configuration\":");
        for (int i = 0; i < extra; i++)
            mdm_buf_puts(&b, "{\"k\":");
        mdm_buf_puts(&b, "{}");
        for (int i = 0; i < extra; i++)
            mdm_buf_puts(&b, "}");
        mdm_buf_puts(&b, "}");
        json_t *j = json(b.data);
        plist_t cmd = NULL;
        mdm_err_t err = {0};
        int rc = mdm_command_build_json("InstallApplication", j, &cmd, &err);
        if (extra < 32) {
            if (rc != 0)
                fail_msg("%d levels: %s", extra + 1, err.msg);
            assert_int_equal(mdm_command_validate(cmd, &err), 0);
            plist_free(cmd);
        } else {
            /* Configuration takes any keys: the first <any> value is "k". */
            snprintf(want, sizeof(want),
                     "InstallApplication.Configuration.k: nested deeper than %d levels",
                     MDM_CMD_MAX_DEPTH);
            if (rc != MDM_ELIMIT || strcmp(err.msg, want) != 0)
                fail_msg("%d levels: rc %d: %s", extra + 1, rc, err.msg);
        }
        json_decref(j);
        mdm_buf_free(&b);
    }

    /* More than MDM_CMD_MAX_BYTES of data. */
    size_t n = ((size_t)MDM_CMD_MAX_BYTES / 3 + 2) * 4;
    char *big = mdm_malloc(n + 1);
    memset(big, 'A', n);
    big[n] = '\0';
    json_t *j = json_object();
    json_object_set_new(j, "Payload", json_stringn(big, n));
    mdm_free(big);
    plist_t cmd = NULL;
    mdm_err_t err = {0};
    assert_int_equal(mdm_command_build_json("InstallProfile", j, &cmd, &err), MDM_ELIMIT);
    snprintf(want, sizeof(want), "InstallProfile.Payload: the command holds more than %u bytes",
             MDM_CMD_MAX_BYTES);
    assert_string_equal(err.msg, want);
    assert_null(cmd);
    json_decref(j);
}

/* ---- validation ------------------------------------------------------------------- */

static void test_validate(void **state)
{
    (void)state;
    plist_t d = cmd_dict("DeviceLock");
    plist_dict_set_item(d, "PIN", plist_new_uint(123456));
    expect_validate_error(d, MDM_EINVAL, "DeviceLock.PIN: expected a string, got integer");
    plist_dict_set_item(d, "PIN", plist_new_string("123456"));
    expect_validate_error(d, 0, "");
    plist_dict_set_item(d, "Pin", plist_new_string("1"));
    expect_validate_error(d, MDM_EINVAL, "DeviceLock: unknown key \"Pin\" (did you mean \"PIN\"?)");
    plist_free(d);

    d = cmd_dict("DeviceInformation");
    plist_t q = plist_new_array();
    plist_array_append_item(q, plist_new_string("UDID"));
    plist_array_append_item(q, plist_new_string("Model"));
    plist_array_append_item(q, plist_new_bool(1));
    plist_dict_set_item(d, "Queries", q);
    expect_validate_error(d, MDM_EINVAL,
                          "DeviceInformation.Queries[2]: expected a string, got boolean");
    plist_free(d);

    d = cmd_dict("InstallProfile");
    expect_validate_error(d, MDM_EINVAL, "InstallProfile: missing required key \"Payload\"");
    plist_dict_set_item(d, "Payload", plist_new_string("PD94"));
    expect_validate_error(d, MDM_EINVAL, "InstallProfile.Payload: expected data, got string");
    plist_dict_set_item(d, "Payload", plist_new_data("<?x", 3));
    expect_validate_error(d, 0, "");
    plist_free(d);

    d = cmd_dict("EraseDevice");
    plist_dict_set_item(d, "ObliterationBehavior", plist_new_string("Never"));
    expect_validate_error(d, MDM_EINVAL,
                          "EraseDevice.ObliterationBehavior: \"Never\" is not one of "
                          "\"Default\", \"DoNotObliterate\", \"ObliterateWithWarning\", "
                          "\"Always\"");
    plist_free(d);

    d = cmd_dict("Settings");
    plist_t s = plist_new_array();
    plist_t item = plist_new_dict();
    plist_dict_set_item(item, "Item", plist_new_string("TimeZone"));
    plist_dict_set_item(item, "TimeZone", plist_new_date(0, 0));
    plist_array_append_item(s, item);
    plist_dict_set_item(d, "Settings", s);
    expect_validate_error(d, MDM_EINVAL,
                          "Settings.Settings[0].TimeZone: expected a string, got date");
    plist_dict_set_item(item, "TimeZone", plist_new_string("Europe/Paris"));
    expect_validate_error(d, 0, "");
    plist_dict_set_item(item, "Item", plist_new_string("Timezone"));
    mdm_err_t err = {0};
    assert_int_equal(mdm_command_validate(d, &err), MDM_EINVAL);
    if (strstr(err.msg, "Settings.Settings[0].Item: \"Timezone\" is not one of") != err.msg ||
        strstr(err.msg, "(did you mean \"TimeZone\"?)") == NULL)
        fail_msg("have: %s", err.msg);
    plist_free(d);

    /* The envelope's own keys. */
    plist_t arr = plist_new_array();
    expect_validate_error(arr, MDM_EINVAL, "Command: expected a dictionary, got array");
    plist_free(arr);
    expect_validate_error(NULL, MDM_EINVAL, "Command: expected a dictionary, got nothing");
    d = plist_new_dict();
    expect_validate_error(d, MDM_EINVAL, "Command: missing required key \"RequestType\"");
    plist_dict_set_item(d, "RequestType", plist_new_uint(1));
    expect_validate_error(d, MDM_EINVAL, "Command.RequestType: expected a string, got integer");
    plist_dict_set_item(d, "RequestType", plist_new_string("EraseDevise"));
    expect_validate_error(d, MDM_ENOTFOUND,
                          "unknown RequestType \"EraseDevise\" (did you mean \"EraseDevice\"?)");
    plist_free(d);

    /* <any>: anything but UIDs, and not too deep; <real> takes integers. */
    d = cmd_dict("InstallApplication");
    plist_t conf = plist_new_dict();
    plist_dict_set_item(conf, "d", plist_new_date(5, 0));
    plist_dict_set_item(conf, "u", plist_new_uid(3));
    plist_dict_set_item(d, "Configuration", conf);
    expect_validate_error(d, MDM_EINVAL,
                          "InstallApplication.Configuration.u: a UID value is not allowed in a "
                          "command");
    plist_dict_remove_item(conf, "u");
    expect_validate_error(d, 0, "");
    plist_t deep = plist_new_dict();
    for (int i = 0; i < 40; i++) {
        plist_t outer = plist_new_dict();
        plist_dict_set_item(outer, "k", deep);
        deep = outer;
    }
    plist_dict_set_item(conf, "deep", deep);
    assert_int_equal(mdm_command_validate(d, &err), MDM_ELIMIT);
    if (strstr(err.msg, "InstallApplication.Configuration.deep.k.k.") != err.msg ||
        strstr(err.msg, ": nested deeper than 32 levels") == NULL)
        fail_msg("have: %s", err.msg);
    plist_free(d);
}

/* Every command built from JSON validates, and JSON -> plist -> JSON is
 * stable. */
static void test_validate_round_trip(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"DeviceLock", "{\"Message\":\"m\",\"PIN\":\"123456\"}"},
        {"DeviceInformation", "{\"Queries\":[\"UDID\",\"OSVersion\"]}"},
        {"InstallProfile", "{\"Payload\":\"PD94bWw+\"}"},
        {"EraseDevice", "{\"PIN\":\"000000\",\"ReturnToService\":{\"Enabled\":false}}"},
        {"Settings", "{\"Settings\":[{\"Item\":\"HostName\",\"HostName\":\"h\"},"
                     "{\"Item\":\"MDMOptions\",\"MDMOptions\":{\"BootstrapTokenAllowed\":true}}]}"},
        {"ScheduleOSUpdate", "{\"Updates\":[{\"InstallAction\":\"DownloadOnly\"}]}"},
        {"AccountConfiguration", "{\"AutoSetupAdminAccounts\":[{\"shortName\":\"admin\","
                                 "\"passwordHash\":\"AAEC\",\"hidden\":true}]}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        plist_t cmd = build_ok(cases[i][0], cases[i][1]);
        json_t *out = mdm_plist_to_json(cmd);
        json_t *in = json(cases[i][1]);
        json_object_set_new(in, "RequestType", json_string(cases[i][0]));
        if (!json_equal(in, out)) {
            char *a = json_dumps(in, JSON_SORT_KEYS), *b = json_dumps(out, JSON_SORT_KEYS);
            fail_msg("%s round trip\nin:  %s\nout: %s", cases[i][0], a, b);
        }
        /* And the plist's JSON builds the same command again. */
        plist_t again = NULL;
        mdm_err_t err = {0};
        assert_int_equal(mdm_command_build_json(NULL, out, &again, &err), 0);
        json_t *out2 = mdm_plist_to_json(again);
        assert_true(json_equal(out, out2));
        json_decref(out2);
        plist_free(again);
        json_decref(in);
        json_decref(out);
        plist_free(cmd);
    }
}

/* ---- the envelope ------------------------------------------------------------------ */

static void unwrap_ok(const char *data, size_t len, const char *want_uuid, const char *want_json)
{
    plist_t cmd = NULL;
    char uuid[64];
    mdm_err_t err = {0};
    int rc = mdm_command_unwrap(data, len, &cmd, uuid, &err);
    if (rc != 0)
        fail_msg("unwrap: rc %d: %s", rc, err.msg);
    assert_string_equal(uuid, want_uuid);
    json_t *j = mdm_plist_to_json(cmd);
    assert_json(j, want_json);
    json_decref(j);
    assert_int_equal(mdm_command_validate(cmd, &err), 0);
    plist_free(cmd);
}

static void expect_unwrap_error(const char *data, int want_rc, const char *want)
{
    plist_t cmd = NULL;
    char uuid[64];
    mdm_err_t err = {0};
    int rc = mdm_command_unwrap(data, strlen(data), &cmd, uuid, &err);
    if (rc != want_rc || strcmp(err.msg, want) != 0)
        fail_msg("%s\nwant rc %d: %s\nhave rc %d: %s", data, want_rc, want, rc,
                 rc ? err.msg : "(success)");
    assert_null(cmd);
    assert_string_equal(uuid, "");
}

static void test_wrap_unwrap(void **state)
{
    (void)state;
    plist_t cmd = build_ok("DeviceLock", "{\"Message\":\"<Lost> & found\",\"PIN\":\"123456\"}");
    const char *want = "{\"Message\":\"<Lost> & found\",\"PIN\":\"123456\","
                       "\"RequestType\":\"DeviceLock\"}";
    char *xml = NULL;
    uint32_t len = 0;
    assert_int_equal(mdm_command_wrap(cmd, "5D0B7A52-2C39-4E7B-9E7F-0D1C2B3A4F5E", &xml, &len), 0);
    assert_int_equal(strlen(xml), len);
    if (strstr(xml, "<key>CommandUUID</key>") == NULL ||
        strstr(xml, "<string>5D0B7A52-2C39-4E7B-9E7F-0D1C2B3A4F5E</string>") == NULL ||
        strstr(xml, "<string>&lt;Lost&gt; &amp; found</string>") == NULL ||
        strncmp(xml, "<?xml", 5) != 0)
        fail_msg("wrapped: %s", xml);
    unwrap_ok(xml, len, "5D0B7A52-2C39-4E7B-9E7F-0D1C2B3A4F5E", want);

    /* The same envelope as a binary plist. */
    plist_t root = NULL;
    plist_from_xml(xml, len, &root);
    char *bin = NULL;
    uint32_t blen = 0;
    plist_to_bin(root, &bin, &blen);
    unwrap_ok(bin, blen, "5D0B7A52-2C39-4E7B-9E7F-0D1C2B3A4F5E", want);

    /* Without CommandUUID: the caller assigns one. (plist_to_bin does
     * nothing unless *bin is NULL.) */
    plist_to_bin_free(bin);
    bin = NULL;
    plist_dict_remove_item(root, "CommandUUID");
    plist_to_bin(root, &bin, &blen);
    unwrap_ok(bin, blen, "", want);
    plist_to_bin_free(bin);
    plist_free(root);
    mdm_free(xml);

    char *x = NULL;
    uint32_t n = 7;
    assert_int_equal(mdm_command_wrap(cmd, NULL, &x, &n), MDM_EINVAL);
    assert_int_equal(mdm_command_wrap(cmd, "", &x, &n), MDM_EINVAL);
    char longid[65];
    memset(longid, 'A', 64);
    longid[64] = '\0';
    assert_int_equal(mdm_command_wrap(cmd, longid, &x, &n), MDM_EINVAL);
    longid[63] = '\0';
    assert_int_equal(mdm_command_wrap(cmd, longid, &x, &n), 0);
    mdm_free(x);
    plist_t arr = plist_new_array();
    assert_int_equal(mdm_command_wrap(arr, "u", &x, &n), MDM_EINVAL);
    assert_null(x);
    assert_int_equal(n, 0);
    plist_free(arr);
    plist_free(cmd);
}

#define PL(body) "<plist version=\"1.0\">" body "</plist>"

static void test_unwrap_errors(void **state)
{
    (void)state;
    /* Validation is the caller's next step, not unwrap's. */
    const char *unknown = PL("<dict><key>Command</key><dict><key>RequestType</key>"
                             "<string>Future</string><key>X</key><true/></dict></dict>");
    plist_t cmd = NULL;
    char uuid[64];
    mdm_err_t err = {0};
    assert_int_equal(mdm_command_unwrap(unknown, strlen(unknown), &cmd, uuid, &err), 0);
    assert_int_equal(mdm_command_validate(cmd, &err), MDM_ENOTFOUND);
    assert_string_equal(err.msg, "unknown RequestType \"Future\"");
    plist_free(cmd);

    expect_unwrap_error(PL("<array/>"), MDM_EINVAL,
                        "command plist: expected a dictionary, got array");
    expect_unwrap_error(PL("<dict><key>CommandUUID</key><string>u</string></dict>"), MDM_EINVAL,
                        "command plist: missing required key \"Command\"");
    expect_unwrap_error(PL("<dict><key>Command</key><string>x</string></dict>"), MDM_EINVAL,
                        "Command: expected a dictionary, got string");
    expect_unwrap_error(PL("<dict><key>Command</key><dict/></dict>"), MDM_EINVAL,
                        "Command: missing required key \"RequestType\"");
    expect_unwrap_error(PL("<dict><key>Command</key><dict><key>RequestType</key><integer>1"
                           "</integer></dict></dict>"),
                        MDM_EINVAL, "Command.RequestType: expected a string, got integer");
    expect_unwrap_error(PL("<dict><key>CommandUUID</key><integer>5</integer><key>Command</key>"
                           "<dict><key>RequestType</key><string>ProfileList</string></dict>"
                           "</dict>"),
                        MDM_EINVAL,
                        "CommandUUID: expected 1 to 36 printable ASCII characters without spaces");
    expect_unwrap_error(PL("<dict><key>CommandUUID</key><string>a b</string><key>Command</key>"
                           "<dict><key>RequestType</key><string>ProfileList</string></dict>"
                           "</dict>"),
                        MDM_EINVAL,
                        "CommandUUID: expected 1 to 36 printable ASCII characters without spaces");
    expect_unwrap_error(PL("<dict><key>CommandUUID</key><string>0123456789012345678901234567890123456"
                           "</string><key>Command</key><dict><key>RequestType</key><string>"
                           "ProfileList</string></dict></dict>"),
                        MDM_EINVAL,
                        "CommandUUID: expected 1 to 36 printable ASCII characters without spaces");
    expect_unwrap_error("not a plist", MDM_EPARSE, "not a valid XML property list");
    expect_unwrap_error("", MDM_EPARSE, "empty property list");

    /* Deeper than a command may be (plus the two envelope levels). */
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_buf_puts(&b, "<plist><dict><key>Command</key><dict><key>RequestType</key>"
                     "<string>InstallApplication</string><key>Configuration</key>");
    for (int i = 0; i < MDM_CMD_MAX_DEPTH + 1; i++)
        mdm_buf_puts(&b, "<array>");
    for (int i = 0; i < MDM_CMD_MAX_DEPTH + 1; i++)
        mdm_buf_puts(&b, "</array>");
    mdm_buf_puts(&b, "</dict></dict></plist>");
    char want[96];
    snprintf(want, sizeof(want), "property list is nested deeper than %d levels",
             MDM_CMD_MAX_DEPTH + 2);
    expect_unwrap_error(b.data, MDM_ELIMIT, want);
    mdm_buf_free(&b);

    char tiny[1] = {'<'};
    snprintf(want, sizeof(want), "command plist is larger than %u bytes", MDM_CMD_MAX_BYTES);
    assert_int_equal(
        mdm_command_unwrap(tiny, (size_t)MDM_CMD_MAX_BYTES + 1, &cmd, uuid, &err), MDM_ELIMIT);
    assert_string_equal(err.msg, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_table_details),
        cmocka_unit_test(test_build_commands),
        cmocka_unit_test(test_build_types),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_build_settings_errors),
        cmocka_unit_test(test_build_request_type),
        cmocka_unit_test(test_build_limits),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_validate_round_trip),
        cmocka_unit_test(test_wrap_unwrap),
        cmocka_unit_test(test_unwrap_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
