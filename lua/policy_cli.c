/* `moonmdm policy check|test|eval|reload`. check, test and eval work
 * without a server (eval opens the store read-only); reload asks the
 * running server through the admin API. */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "sandbox_internal.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"

static const char usage[] =
    "usage: moonmdm policy check [DIR] [--config FILE]\n"
    "       moonmdm policy test [DIR [TESTDIR]] [--tap] [--config FILE]\n"
    "       moonmdm policy eval --device ID --hook NAME [--input JSON] [--dir DIR]\n"
    "                           [--config FILE]\n"
    "       moonmdm policy reload [--config FILE] [--url URL] [--api-key KEY] [--cacert FILE]\n"
    "\n"
    "check   load and validate a policy set (default: policy.dir of the config); with\n"
    "        --config, profiles named in a `profiles` table must exist in the store\n"
    "test    run the *_test.lua files of TESTDIR (default DIR/tests)\n"
    "eval    run one hook against a stored device, read-only, and print the decision\n"
    "        (--input gives the hook's other argument as JSON, e.g. '{\"msg\": {...}}')\n"
    "reload  make the running server reload its policy and profiles.dir\n"
    "        (POST /v1/policy/reload)\n";

typedef struct opts {
    const char *config, *data_dir, *dir, *device, *hook, *input, *url, *api_key, *cacert;
    bool tap, config_given;
    const char *args[2];
    int nargs;
} opts_t;

static int parse_opts(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'D'},
        {"dir", required_argument, NULL, 'd'},    {"device", required_argument, NULL, 'v'},
        {"hook", required_argument, NULL, 'H'},   {"input", required_argument, NULL, 'i'},
        {"url", required_argument, NULL, 'u'},    {"api-key", required_argument, NULL, 'k'},
        {"cacert", required_argument, NULL, 'C'}, {"tap", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:u:k:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': o->config = optarg; o->config_given = true; break;
        case 'D': o->data_dir = optarg; break;
        case 'd': o->dir = optarg; break;
        case 'v': o->device = optarg; break;
        case 'H': o->hook = optarg; break;
        case 'i': o->input = optarg; break;
        case 'u': o->url = optarg; break;
        case 'k': o->api_key = optarg; break;
        case 'C': o->cacert = optarg; break;
        case 't': o->tap = true; break;
        case 'h': fputs(usage, stdout); return 1;
        default: fputs(usage, stderr); return 2;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (o->nargs == 2) {
            fputs(usage, stderr);
            return 2;
        }
        o->args[o->nargs++] = argv[i];
    }
    return 0;
}

static void print_error(const mdm_policy_error_t *e, const char *dir)
{
    char text[1400];
    mdm_policy_error_format(e, dir, text, sizeof(text));
    fprintf(stderr, "%s\n", text);
}

static int open_store_rdonly(const mdm_config_t *cfg, mdm_store_t **out)
{
    const mdm_store_ops_t *ops = mdm_store_backend(cfg->store_backend);
    mdm_store_config_t sc = {.path = cfg->store_path, .map_size = cfg->store_map_size,
                             .map_max = cfg->store_map_max, .flags = MDM_STORE_RDONLY};
    mdm_err_t err = {0};
    int rc = ops ? mdm_store_open(ops, &sc, out, &err) : MDM_ENOTSUP;
    if (rc != 0)
        fprintf(stderr, "moonmdm policy: cannot open the store %s: %s\n", cfg->store_path,
                err.msg[0] ? err.msg : mdm_strerror(rc));
    return rc;
}

static int cmd_check(opts_t *o, mdm_config_t *cfg, mdm_policy_settings_t *set)
{
    mdm_store_t *store = NULL;
    if (o->config_given && open_store_rdonly(cfg, &store) != 0)
        return 1;
    set->store = store;
    set->decision_log = false;
    mdm_policy_t *p = NULL;
    mdm_policy_error_t e;
    int rc = mdm_policy_load(set, &p, &e);
    if (rc != 0) {
        print_error(&e, set->dir);
    } else {
        printf("%s: ok, revision %.12s, %zu file%s, hooks:", set->dir, mdm_policy_revision(p),
               p->files.n, p->files.n == 1 ? "" : "s");
        for (int h = 0; h < MDM_POLICY_HOOK__COUNT; h++)
            if (mdm_policy_has_hook(p, h))
                printf(" %s", mdm_policy_hook_name(h));
        printf("%s\n", p->hooks ? "" : " none");
    }
    mdm_policy_release(p);
    if (store)
        mdm_store_close(store);
    return rc == 0 ? 0 : 1;
}

static int cmd_test(opts_t *o, mdm_policy_settings_t *set)
{
    int passed = 0, failed = 0;
    mdm_policy_error_t e;
    const char *tdir = o->nargs > 1 ? o->args[1] : NULL;
    int rc = mdm_policy_run_tests(set, tdir, o->tap, stdout, &passed, &failed, &e);
    fflush(stdout);
    if (rc != 0) {
        print_error(&e, set->dir);
        return 1;
    }
    return failed == 0 && passed > 0 ? 0 : 1;
}

static int cmd_eval(opts_t *o, mdm_config_t *cfg, mdm_policy_settings_t *set)
{
    if (o->hook == NULL) {
        fprintf(stderr, "moonmdm policy eval: --hook is required\n%s", usage);
        return 2;
    }
    json_t *input = NULL;
    if (o->input != NULL) {
        json_error_t je;
        input = json_loads(o->input, 0, &je);
        if (input == NULL || !json_is_object(input)) {
            fprintf(stderr, "moonmdm policy eval: --input must be a JSON object: %s\n",
                    input ? "not an object" : je.text);
            json_decref(input);
            return 2;
        }
    }
    mdm_store_t *store = NULL;
    mdm_policy_t *p = NULL;
    json_t *out = NULL;
    int code = 1;
    if (open_store_rdonly(cfg, &store) != 0)
        goto out;
    set->store = store;
    set->decision_log = false;
    mdm_policy_error_t e;
    if (mdm__policy_load(set, MDM__MODE_SERVER, NULL, &p, &e) != 0) {
        print_error(&e, set->dir);
        goto out;
    }
    mdm_err_t err = {0};
    int rc = mdm_policy_eval(p, store, o->device, o->hook, input, &out, &err);
    if (rc != 0) {
        fprintf(stderr, "moonmdm policy eval: %s\n", err.msg[0] ? err.msg : mdm_strerror(rc));
        code = rc == MDM_EINVAL ? 2 : 1;
        goto out;
    }
    char *s = json_dumps(out, JSON_INDENT(2));
    puts(s);
    free(s);
    const char *status = json_string_value(json_object_get(out, "status"));
    code = status && strcmp(status, "failed") == 0 ? 1 : 0;
out:
    json_decref(out);
    json_decref(input);
    mdm_policy_release(p);
    if (store)
        mdm_store_close(store);
    return code;
}

static size_t write_cb(char *ptr, size_t size, size_t n, void *arg)
{
    mdm_buf_append(arg, ptr, size * n);
    return size * n;
}

/* What a reload did to profiles.dir, and the files it could not load. */
static void print_profiles(json_t *p)
{
    if (p == NULL)
        return;
    printf("profiles.dir reloaded: %zu stored, %zu updated, %zu removed, %lld unchanged\n",
           json_array_size(json_object_get(p, "stored")),
           json_array_size(json_object_get(p, "updated")),
           json_array_size(json_object_get(p, "removed")),
           (long long)json_integer_value(json_object_get(p, "unchanged")));
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(p, "errors"), i, e)
    {
        const char *file = json_string_value(json_object_get(e, "file"));
        fprintf(stderr, "profiles.dir: %s%s%s (its profile stays as stored)\n",
                file ? file : "", file ? ": " : "",
                json_string_value(json_object_get(e, "error")));
    }
}

static int cmd_reload(opts_t *o, mdm_config_t *cfg)
{
    const char *key = o->api_key ? o->api_key : getenv("MOONMDM_API_KEY");
    if (key == NULL) {
        fprintf(stderr, "moonmdm policy reload: no API key: pass --api-key or set "
                        "MOONMDM_API_KEY\n");
        return 2;
    }
    char *base;
    if (o->url != NULL)
        base = mdm_strdup(o->url);
    else if (cfg->listen.n > 0 && strncmp(cfg->listen.v[0], "0.0.0.0:", 8) == 0)
        base = mdm_sprintf("https://127.0.0.1:%s", cfg->listen.v[0] + 8);
    else if (cfg->listen.n > 0)
        base = mdm_sprintf("https://%s", cfg->listen.v[0]);
    else
        base = mdm_strdup("https://127.0.0.1:8443");
    size_t bl = strlen(base);
    if (bl > 0 && base[bl - 1] == '/')
        base[bl - 1] = '\0';
    char *url = mdm_sprintf("%s/v1/policy/reload", base);
    char *auth = mdm_sprintf("Authorization: Bearer %s", key);
    mdm_buf_t body = MDM_BUF_INIT;
    CURL *curl = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, auth);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CAINFO, o->cacert ? o->cacert : cfg->ca_cert);
    long status = -1;
    CURLcode cc = curl_easy_perform(curl);
    if (cc == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "moonmdm policy reload: %s: %s\n", url, curl_easy_strerror(cc));
    curl_slist_free_all(h);
    curl_easy_cleanup(curl);
    int code = 1;
    json_error_t je;
    json_t *j = body.len ? json_loadb(body.data, body.len, 0, &je) : NULL;
    const char *what = json_string_value(json_object_get(j, "error"));
    /* The policy reloaded, and some profiles.dir files did not: bad ones
     * (422), or ones the store could not take (503). */
    bool profiles_failed = what != NULL &&
                           ((status == 422 && strcmp(what, "profiles") == 0) ||
                            (status == 503 && strcmp(what, "storage_unavailable") == 0 &&
                             json_object_get(j, "revision") != NULL));
    if ((status == 200 || profiles_failed) && j != NULL) {
        const char *rev = json_string_value(json_object_get(j, "revision"));
        printf("policy reloaded: revision %.12s (%s)\n", rev ? rev : "-",
               json_is_true(json_object_get(j, "changed")) ? "changed" : "unchanged");
        print_profiles(json_object_get(j, "profiles"));
        code = profiles_failed ? 1 : 0;
    } else if (status == 422 && j != NULL) {
        const char *detail = json_string_value(json_object_get(j, "detail"));
        fprintf(stderr, "policy reload failed, the running policy stays: %s\n",
                detail ? detail : "?");
        print_profiles(json_object_get(j, "profiles"));
    } else if (status >= 0) {
        fprintf(stderr, "moonmdm policy reload: the server answered %ld: %.*s\n", status,
                (int)(body.len > 500 ? 500 : body.len), body.data ? body.data : "");
    }
    json_decref(j);
    mdm_buf_free(&body);
    mdm_free(url);
    mdm_free(auth);
    mdm_free(base);
    return code;
}

int mdm_cmd_policy(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    opts_t o;
    int rc = parse_opts(argc - 1, argv + 1, &o);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    bool known = strcmp(verb, "check") == 0 || strcmp(verb, "test") == 0 ||
                 strcmp(verb, "eval") == 0 || strcmp(verb, "reload") == 0;
    if (!known) {
        fprintf(stderr, "moonmdm policy: unknown command \"%s\"\n%s", verb, usage);
        return 2;
    }
    /* Policy log lines would drown the output; eval shows them in its JSON. */
    mdm_log_setup(MDM_LOG_ERROR, 2);
    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, o.config, o.data_dir) != 0)
        return 2;
    if (strcmp(verb, "reload") == 0) {
        rc = cmd_reload(&o, &cfg);
        mdm_config_free(&cfg);
        return rc;
    }
    mdm_policy_settings_t set;
    mdm_err_t err = {0};
    if (mdm_policy_settings_from_config(&set, &cfg, &err) != 0) {
        fprintf(stderr, "moonmdm policy: %s\n", err.msg);
        mdm_config_free(&cfg);
        return 2;
    }
    if (o.dir != NULL)
        set.dir = o.dir;
    else if (o.nargs > 0 && strcmp(verb, "eval") != 0)
        set.dir = o.args[0];
    if (strcmp(verb, "check") == 0)
        rc = cmd_check(&o, &cfg, &set);
    else if (strcmp(verb, "test") == 0)
        rc = cmd_test(&o, &set);
    else
        rc = cmd_eval(&o, &cfg, &set);
    mdm_config_free(&cfg);
    return rc;
}
