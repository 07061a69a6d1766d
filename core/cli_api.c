/* CLI commands that talk to a running server through the admin API:
 * `moonmdm device list|show|delete`, `moonmdm cmd send|show|cancel`,
 * `moonmdm push`. */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "mdm/cmdschema.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"

typedef struct api_client {
    char *url;
    char *key;
    char *cacert;
    bool enrolled;      /* device list --enrolled */
    int limit;          /* device list --limit N */
} api_client_t;

static const char api_options[] =
    "exit status: 0 done, 1 refused or failed (an answer of 400 or more, or\n"
    "none), 2 bad usage, 3 done for some targets only (207).\n"
    "\n"
    "connection options (defaults come from the config file):\n"
    "  -c, --config FILE     config file (finds the server address and CA)\n"
    "  -d, --data-dir DIR    data directory when there is no config file\n"
    "  -u, --url URL         server base URL (default: https://<first listen address>)\n"
    "  -k, --api-key KEY     API key (default: $MOONMDM_API_KEY)\n"
    "      --cacert FILE     CA to verify the server (default: <data_dir>/ca.crt)\n";

static size_t write_cb(char *p, size_t size, size_t n, void *arg)
{
    mdm_buf_append(arg, p, size * n);
    return size * n;
}

/* Performs one request; returns the HTTP status (or -1) with the body. */
static long api_call(const api_client_t *c, const char *method, const char *path,
                     const char *ctype, const void *body, size_t len, mdm_buf_t *out)
{
    CURL *curl = curl_easy_init();
    if (curl == NULL)
        return -1;
    char *url = mdm_sprintf("%s%s", c->url, path);
    char *auth = mdm_sprintf("Authorization: Bearer %s", c->key);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    char *ct = NULL;
    if (ctype) {
        ct = mdm_sprintf("Content-Type: %s", ctype);
        h = curl_slist_append(h, ct);
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    if (c->cacert)
        curl_easy_setopt(curl, CURLOPT_CAINFO, c->cacert);
    if (body != NULL) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    long status = -1;
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "moonmdm: %s %s: %s\n", method, url, curl_easy_strerror(rc));
    curl_slist_free_all(h);
    curl_easy_cleanup(curl);
    mdm_free(url);
    mdm_free(auth);
    mdm_free(ct);
    return status;
}

/* Prints the body (JSON pretty-printed when it parses) and maps the status
 * to an exit code: 0 done, 1 refused or failed (400 or more, or no answer),
 * 3 done for some targets only (207). */
static int print_result(long status, const mdm_buf_t *body)
{
    json_error_t je;
    json_t *j = body->len ? json_loadb(body->data, body->len, 0, &je) : NULL;
    if (j != NULL) {
        char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
        puts(s);
        free(s);
        json_decref(j);
    } else if (body->len) {
        fwrite(body->data, 1, body->len, stdout);
    }
    if (status < 0)
        return 1;
    if (status >= 400) {
        fprintf(stderr, "moonmdm: the server answered %ld\n", status);
        return 1;
    }
    if (status == 207) {
        fprintf(stderr, "moonmdm: the server answered 207: it failed for some targets\n");
        return 3;
    }
    return 0;
}

/* Parses the connection options; leaves optind at the first other word. */
static int client_setup(int argc, char **argv, api_client_t *c, const char *usage)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"url", required_argument, NULL, 'u'},    {"api-key", required_argument, NULL, 'k'},
        {"cacert", required_argument, NULL, 'C'}, {"help", no_argument, NULL, 'h'},
        {"enrolled", no_argument, NULL, 'E'},     {"limit", required_argument, NULL, 'L'},
        {NULL, 0, NULL, 0},
    };
    bool enrolled = false;
    int limit = 0;
    const char *config = NULL, *data_dir = NULL, *url = NULL, *key = NULL, *cacert = NULL;
    int ch;
    optind = 1;
    /* Options may come anywhere; the other words (verb, ids, key=value)
     * are moved behind them, in order. */
    while ((ch = getopt_long(argc, argv, "c:d:u:k:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'u': url = optarg; break;
        case 'k': key = optarg; break;
        case 'C': cacert = optarg; break;
        case 'E': enrolled = true; break;
        case 'L': limit = atoi(optarg); break;
        case 'h': printf("%s\n%s", usage, api_options); return 1;
        default: fprintf(stderr, "%s\n%s", usage, api_options); return 2;
        }
    }
    memset(c, 0, sizeof(*c));
    c->enrolled = enrolled;
    c->limit = limit;
    if (key == NULL)
        key = getenv("MOONMDM_API_KEY");
    if (key == NULL) {
        fprintf(stderr, "moonmdm: no API key: pass --api-key or set MOONMDM_API_KEY\n");
        return 2;
    }
    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, config, data_dir) != 0)
        return 2;
    if (url == NULL && cfg.listen.n > 0) {
        const char *a = cfg.listen.v[0];
        if (strncmp(a, "0.0.0.0:", 8) == 0)
            c->url = mdm_sprintf("https://127.0.0.1:%s", a + 8);
        else
            c->url = mdm_sprintf("https://%s", a);
    } else if (url != NULL) {
        c->url = mdm_strdup(url);
    } else {
        c->url = mdm_strdup("https://127.0.0.1:8443");
    }
    size_t ul = strlen(c->url);
    if (ul > 0 && c->url[ul - 1] == '/')
        c->url[ul - 1] = '\0';
    c->key = mdm_strdup(key);
    c->cacert = mdm_strdup(cacert ? cacert : cfg.ca_cert);
    mdm_config_free(&cfg);
    return 0;
}

static void client_free(api_client_t *c)
{
    mdm_free(c->url);
    mdm_free(c->key);
    mdm_free(c->cacert);
}

static char *escape_segment(const char *s)
{
    CURL *curl = curl_easy_init();
    char *e = curl_easy_escape(curl, s, 0);
    char *r = mdm_strdup(e ? e : "");
    curl_free(e);
    curl_easy_cleanup(curl);
    return r;
}

/* One page of a paged listing: GET path, with the cursor (when not NULL)
 * appended, into body. Returns the parsed answer when the server answered
 * 200 with JSON, else NULL (*st says what it answered). */
static json_t *get_page(api_client_t *c, mdm_buf_t *path, const char *cursor, mdm_buf_t *body,
                        long *st)
{
    if (cursor != NULL) {
        char *e = escape_segment(cursor);
        mdm_buf_printf(path, "%ccursor=%s", strchr(path->data, '?') ? '&' : '?', e);
        mdm_free(e);
    }
    mdm_buf_reset(body);
    *st = api_call(c, "GET", path->data, NULL, NULL, 0, body);
    mdm_buf_free(path);
    json_error_t je;
    return *st == 200 ? json_loadb(body->data, body->len, 0, &je) : NULL;
}

/* device list: every page (or the first N devices), as one list. */
static int list_devices(api_client_t *c, mdm_buf_t *body)
{
    json_t *all = json_array();
    char *cursor = NULL;
    long st = 200;
    /* Bounded: a page holds at least one device, so 10 million pages is
     * more than any fleet. */
    for (int page = 0; page < 10000000; page++) {
        size_t want = 1000;
        if (c->limit > 0 && (size_t)c->limit - json_array_size(all) < want)
            want = (size_t)c->limit - json_array_size(all);
        mdm_buf_t path = MDM_BUF_INIT;
        mdm_buf_printf(&path, "/v1/devices?limit=%zu%s", want, c->enrolled ? "&enrolled=true" : "");
        json_t *j = get_page(c, &path, cursor, body, &st);
        json_t *devs = json_object_get(j, "devices");
        if (!json_is_array(devs)) {
            json_decref(j);
            break; /* the server's answer (an error) is printed as it is */
        }
        json_array_extend(all, devs);
        const char *next = json_string_value(json_object_get(j, "next_cursor"));
        mdm_free(cursor);
        cursor = next && json_array_size(devs) > 0 ? mdm_strdup(next) : NULL;
        json_decref(j);
        if (cursor == NULL || (c->limit > 0 && json_array_size(all) >= (size_t)c->limit)) {
            json_t *o = json_object();
            json_object_set_new(o, "devices", all);
            json_object_set_new(o, "next_cursor", cursor ? json_string(cursor) : json_null());
            all = NULL;
            char *s = json_dumps(o, 0);
            json_decref(o);
            mdm_buf_reset(body);
            mdm_buf_puts(body, s);
            free(s);
            break;
        }
    }
    mdm_free(cursor);
    json_decref(all);
    return print_result(st, body);
}

/* cmd show: a command and all its targets. An answer holds at most 16 MiB
 * of reports; the pages after it (next_cursor) are merged into one. */
static int show_command(api_client_t *c, const char *uuid, mdm_buf_t *body)
{
    char *id = escape_segment(uuid);
    json_t *all = NULL;
    char *cursor = NULL;
    long st = 200;
    /* Bounded: a page holds at least one target, and a command at most
     * 100,000. */
    for (int page = 0; page < 200000; page++) {
        mdm_buf_t path = MDM_BUF_INIT;
        mdm_buf_printf(&path, "/v1/commands/%s", id);
        json_t *j = get_page(c, &path, cursor, body, &st);
        json_t *targets = json_object_get(j, "targets");
        if (!json_is_object(targets)) {
            json_decref(j);
            break; /* the server's answer (an error) is printed as it is */
        }
        const char *next = json_string_value(json_object_get(j, "next_cursor"));
        mdm_free(cursor);
        cursor = next && json_object_size(targets) > 0 ? mdm_strdup(next) : NULL;
        if (all == NULL)
            all = json_incref(j);
        else
            json_object_update(json_object_get(all, "targets"), targets);
        json_decref(j);
        if (cursor == NULL) {
            json_object_set_new(all, "next_cursor", json_null());
            char *s = json_dumps(all, 0);
            mdm_buf_reset(body);
            mdm_buf_puts(body, s);
            free(s);
            break;
        }
    }
    json_decref(all);
    mdm_free(cursor);
    mdm_free(id);
    return print_result(st, body);
}

static const char device_usage[] =
    "usage: moonmdm device list [--enrolled] [--limit N]   (every device, or the first N)\n"
    "       moonmdm device show ID\n"
    "       moonmdm device delete ID\n";

int mdm_cmd_device(int argc, char **argv)
{
    api_client_t c;
    int rc = client_setup(argc, argv, &c, device_usage);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    int exit_code = 2;
    mdm_buf_t body = MDM_BUF_INIT;
    const char *verb = optind < argc ? argv[optind] : "";
    if (strcmp(verb, "list") == 0) {
        exit_code = list_devices(&c, &body);
    } else if ((strcmp(verb, "show") == 0 || strcmp(verb, "delete") == 0) && optind + 1 < argc) {
        char *id = escape_segment(argv[optind + 1]);
        char *path = mdm_sprintf("/v1/devices/%s", id);
        long st = api_call(&c, verb[0] == 's' ? "GET" : "DELETE", path, NULL, NULL, 0, &body);
        exit_code = print_result(st, &body);
        mdm_free(id);
        mdm_free(path);
    } else {
        fputs(device_usage, stderr);
    }
    mdm_buf_free(&body);
    client_free(&c);
    return exit_code;
}

/* A plain value (not key:=JSON, not @FILE) as the schema types the key:
 * a string key keeps digits and true/false as text, a real key takes a
 * decimal number. Keys the schema does not type (and the options) follow
 * the value's look: true/false a boolean, digits an integer, else a
 * string. */
static json_t *typed_value(const mdm_schema_key_t *k, const char *v)
{
    if (k != NULL && k->type == MDM_T_STRING)
        return json_string(v);
    char *end;
    if (k != NULL && k->type == MDM_T_REAL) {
        double d = strtod(v, &end);
        if (*v && *end == '\0')
            return json_real(d);
    }
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
        return json_boolean(v[0] == 't');
    long long n = strtoll(v, &end, 10);
    return (*v && *end == '\0') ? json_integer(n) : json_string(v);
}

/* key=value: typed by the command's schema (typed_value), @file -> the
 * file as base64 data, key:=JSON -> raw JSON. schema may be NULL. */
static int parse_kv(const char *arg, json_t *obj, const mdm_cmd_schema_t *schema)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return -1;
    bool raw = eq > arg && eq[-1] == ':';
    char *key = mdm_strndup(arg, (size_t)(eq - arg - (raw ? 1 : 0)));
    const char *v = eq + 1;
    json_t *val = NULL;
    if (raw) {
        json_error_t je;
        val = json_loads(v, JSON_DECODE_ANY, &je);
        if (val == NULL)
            fprintf(stderr, "moonmdm: %s: not JSON: %s\n", key, je.text);
    } else if (v[0] == '@') {
        FILE *f = fopen(v + 1, "rb");
        if (f == NULL) {
            perror(v + 1);
        } else {
            mdm_buf_t b = MDM_BUF_INIT, b64 = MDM_BUF_INIT;
            char chunk[8192];
            size_t n;
            while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                mdm_buf_append(&b, chunk, n);
            fclose(f);
            mdm_base64_encode(&b64, b.data ? b.data : "", b.len);
            val = json_string(b64.data ? b64.data : "");
            mdm_buf_free(&b);
            mdm_buf_free(&b64);
        }
    } else {
        const mdm_schema_key_t *k =
            schema ? mdm_schema_key_find(schema->keys, schema->nkeys, key) : NULL;
        val = typed_value(k, v);
    }
    int rc = val ? 0 : -1;
    if (val)
        json_object_set_new(obj, key, val);
    mdm_free(key);
    return rc;
}

static const char cmd_usage[] =
    "usage: moonmdm cmd send ID[,ID...] RequestType [key=value ...] [priority=N ttl=1h ...]\n"
    "(an id that holds a comma is written with %2C, one with a percent sign with %25)\n"
    "       moonmdm cmd show UUID\n"
    "       moonmdm cmd list ID\n"
    "       moonmdm cmd cancel ID UUID\n"
    "\n"
    "Values take the type the command's schema gives the key: PIN=1234 is a\n"
    "string for DeviceLock. For keys the schema does not type and the options,\n"
    "true/false are booleans, digits integers, anything else a string. @FILE\n"
    "is the file's bytes (data), key:=JSON raw JSON (arrays, dicts, or\n"
    "key:='\"1234\"' to force a type).\n"
    "Example: moonmdm cmd send 0000-1111 DeviceInformation 'Queries:=[\"UDID\",\"OSVersion\"]'\n";

/* Appends the ids of a comma-separated list to targets, each %-decoded
 * after the split (an id that holds a comma is written with %2C, a percent
 * sign with %25). False, after a message, for a bad escape or %00. */
static bool add_targets(json_t *targets, const char *list)
{
    char *ids = mdm_strdup(list);
    bool ok = true;
    for (char *save = NULL, *t = strtok_r(ids, ",", &save); t && ok;
         t = strtok_r(NULL, ",", &save)) {
        mdm_buf_t id = MDM_BUF_INIT;
        ok = mdm_url_decode(&id, t, strlen(t), 0) == 0;
        if (ok)
            json_array_append_new(targets, json_stringn(id.data, id.len));
        else
            fprintf(stderr, "moonmdm cmd send: \"%s\": a bad %%-escape in the id\n", t);
        mdm_buf_free(&id);
    }
    mdm_free(ids);
    return ok;
}

int mdm_cmd_cmd(int argc, char **argv)
{
    api_client_t c;
    int rc = client_setup(argc, argv, &c, cmd_usage);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    int exit_code = 2;
    mdm_buf_t body = MDM_BUF_INIT;
    const char *verb = optind < argc ? argv[optind] : "";
    if (strcmp(verb, "send") == 0 && optind + 2 < argc) {
        json_t *req = json_object();
        json_t *targets = json_array();
        bool ok = add_targets(targets, argv[optind + 1]);
        json_object_set_new(req, "targets", targets);
        json_object_set_new(req, "request_type", json_string(argv[optind + 2]));
        const mdm_cmd_schema_t *schema = mdm_cmdschema_find(argv[optind + 2]);
        for (int i = optind + 3; i < argc && ok; i++) {
            if (parse_kv(argv[i], req, schema) != 0) {
                fprintf(stderr, "moonmdm cmd send: \"%s\": expected key=value\n", argv[i]);
                ok = false;
            }
        }
        if (ok) {
            char *s = json_dumps(req, JSON_COMPACT);
            long st = api_call(&c, "POST", "/v1/commands", "application/json", s, strlen(s),
                               &body);
            free(s);
            exit_code = print_result(st, &body);
        }
        json_decref(req);
    } else if (strcmp(verb, "show") == 0 && optind + 1 < argc) {
        exit_code = show_command(&c, argv[optind + 1], &body);
    } else if (strcmp(verb, "list") == 0 && optind + 1 < argc) {
        char *id = escape_segment(argv[optind + 1]);
        char *path = mdm_sprintf("/v1/devices/%s/commands", id);
        long st = api_call(&c, "GET", path, NULL, NULL, 0, &body);
        exit_code = print_result(st, &body);
        mdm_free(id);
        mdm_free(path);
    } else if (strcmp(verb, "cancel") == 0 && optind + 2 < argc) {
        char *id = escape_segment(argv[optind + 1]);
        char *uuid = escape_segment(argv[optind + 2]);
        char *path = mdm_sprintf("/v1/devices/%s/commands/%s", id, uuid);
        long st = api_call(&c, "DELETE", path, NULL, NULL, 0, &body);
        exit_code = print_result(st, &body);
        mdm_free(id);
        mdm_free(uuid);
        mdm_free(path);
    } else {
        fputs(cmd_usage, stderr);
    }
    mdm_buf_free(&body);
    client_free(&c);
    return exit_code;
}

static const char push_usage[] = "usage: moonmdm push ID [ID...]\n";

int mdm_cmd_push(int argc, char **argv)
{
    api_client_t c;
    int rc = client_setup(argc, argv, &c, push_usage);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    int exit_code = 2;
    if (optind < argc) {
        mdm_buf_t ids = MDM_BUF_INIT, body = MDM_BUF_INIT;
        for (int i = optind; i < argc; i++) {
            char *e = escape_segment(argv[i]);
            mdm_buf_printf(&ids, "%s%s", i > optind ? "," : "", e);
            mdm_free(e);
        }
        char *path = mdm_sprintf("/v1/push/%s", ids.data);
        long st = api_call(&c, "POST", path, NULL, NULL, 0, &body);
        exit_code = print_result(st, &body);
        mdm_free(path);
        mdm_buf_free(&ids);
        mdm_buf_free(&body);
    } else {
        fputs(push_usage, stderr);
    }
    client_free(&c);
    return exit_code;
}
