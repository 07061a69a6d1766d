#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "api/apikeys.h"
#include "config.h"
#include "server.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/misc.h"

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int mdm__cli_load_config(mdm_config_t *cfg, const char *config_path, const char *data_dir)
{
    mdm_err_t err = {0};
    char *guess = NULL;
    if (config_path == NULL)
        config_path = getenv("MOONMDM_CONFIG");
    if (config_path == NULL) {
        guess = mdm_sprintf("%s/moonmdm.conf.lua", data_dir ? data_dir : "./data");
        if (file_exists(guess))
            config_path = guess;
    }
    int rc = 0;
    if (config_path != NULL) {
        rc = mdm_config_load(cfg, config_path, &err);
        if (rc != 0) {
            fprintf(stderr, "moonmdm: config error: %s\n", err.msg);
            mdm_free(guess);
            return 1;
        }
        if (data_dir != NULL) {
            fprintf(stderr,
                    "moonmdm: note: --data-dir is ignored because the config file %s sets "
                    "data_dir\n",
                    config_path);
        }
    } else {
        mdm_config_defaults(cfg);
        if (data_dir != NULL) {
            mdm_free(cfg->data_dir);
            cfg->data_dir = mdm_strdup(data_dir);
        }
        mdm_config_finish(cfg);
    }
    mdm_free(guess);
    return 0;
}

static void strlist_set_one(mdm_strlist_t *l, const char *v, bool *replaced)
{
    if (!*replaced) {
        for (size_t i = 0; i < l->n; i++)
            mdm_free(l->v[i]);
        l->n = 0;
        *replaced = true;
    }
    l->v = mdm_realloc(l->v, (l->n + 1) * sizeof(char *));
    l->v[l->n++] = mdm_strdup(v);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static const char serve_usage[] =
    "usage: moonmdm serve [options]\n"
    "\n"
    "Runs the server until SIGINT or SIGTERM. SIGHUP reloads profiles.dir and the policy.\n"
    "\n"
    "options:\n"
    "  -c, --config FILE      config file (default: $MOONMDM_CONFIG, then\n"
    "                         <data-dir>/moonmdm.conf.lua, else the built-in defaults)\n"
    "  -d, --data-dir DIR     data directory when no config file sets it (default ./data)\n"
    "  -l, --listen ADDR      HTTPS address host:port, replaces `listen` (repeatable)\n"
    "  -p, --listen-plain ADDR  plain HTTP address, replaces `listen_plain` (repeatable)\n"
    "      --log-level LEVEL  debug, info, warn or error (overrides log.level)\n"
    "  -h, --help             this help\n";

int mdm_cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"data-dir", required_argument, NULL, 'd'},
        {"listen", required_argument, NULL, 'l'},
        {"listen-plain", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *data_dir = NULL, *log_level = NULL;
    const char *listens[16], *plains[16];
    size_t nlisten = 0, nplain = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:l:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'l':
            if (nlisten < 16)
                listens[nlisten++] = optarg;
            break;
        case 'p':
            if (nplain < 16)
                plains[nplain++] = optarg;
            break;
        case 'L': log_level = optarg; break;
        case 'h': fputs(serve_usage, stdout); return 0;
        default: fputs(serve_usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moonmdm serve: unexpected argument \"%s\"\n\n%s", argv[optind],
                serve_usage);
        return 2;
    }

    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, config_path, data_dir) != 0)
        return 1;
    bool replaced = false;
    for (size_t i = 0; i < nlisten; i++)
        strlist_set_one(&cfg.listen, listens[i], &replaced);
    replaced = false;
    for (size_t i = 0; i < nplain; i++)
        strlist_set_one(&cfg.listen_plain, plains[i], &replaced);
    int level = mdm_log_level_parse(log_level ? log_level : cfg.log_level);
    if (level < 0) {
        fprintf(stderr, "moonmdm serve: unknown log level \"%s\"\n", log_level);
        mdm_config_free(&cfg);
        return 2;
    }
    mdm_log_setup(level, 2);

    /* Private-key work runs on the libuv thread pool: one thread per core
     * (at least 2), unless the environment already says otherwise. */
    if (getenv("UV_THREADPOOL_SIZE") == NULL) {
        char n[32];
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(n, sizeof(n), "%ld", cores < 2 ? 2 : cores);
        setenv("UV_THREADPOOL_SIZE", n, 1);
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    mdm_server_t server;
    mdm_err_t err = {0};
    int exit_code = 0;
    int rc = mdm_server_init(&server, &loop, &cfg, &err);
    if (rc == 0)
        rc = mdm_server_listen(&server, &err);
    if (rc != 0) {
        mdm_log(MDM_LOG_ERROR, NULL, "server.start_failed", "error=\"%s\"", err.msg);
        fprintf(stderr, "moonmdm: cannot start: %s\n", err.msg);
        exit_code = 1;
        uv_walk(&loop, close_walk_cb, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        mdm_log(MDM_LOG_INFO, NULL, "server.ready",
                "version=%s config=%s data_dir=%s policy_dir=%s pid=%d", MOONMDM_VERSION,
                cfg.file ? cfg.file : "(defaults)", cfg.data_dir,
                cfg.policy_dir ? cfg.policy_dir : "-", (int)getpid());
        uv_run(&loop, UV_RUN_DEFAULT);
        exit_code = server.exit_code;
        uv_walk(&loop, close_walk_cb, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    mdm_server_free(&server);
    if (uv_loop_close(&loop) != 0)
        mdm_log(MDM_LOG_WARN, NULL, "server.loop_close_busy", NULL);
    mdm_metrics_reset();
    mdm_config_free(&cfg);
    /* Joins the thread pool: OpenSSL's per-thread state of the workers is
     * freed as they exit (leak checkers see a clean exit). */
    uv_library_shutdown();
    return exit_code;
}

/* ---- config -------------------------------------------------------------- */

static const char config_usage[] =
    "usage: moonmdm config defaults      print a config file with every default\n"
    "       moonmdm config check FILE    check a config file (exit 0 if valid)\n"
    "       moonmdm config docs          print the settings as a Markdown table\n";

int mdm_cmd_config(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(config_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    mdm_buf_t out = MDM_BUF_INIT;
    if (strcmp(argv[1], "defaults") == 0) {
        mdm_config_write_defaults(&out);
        fwrite(out.data, 1, out.len, stdout);
        mdm_buf_free(&out);
        return 0;
    }
    if (strcmp(argv[1], "docs") == 0) {
        mdm_config_write_markdown(&out);
        fwrite(out.data, 1, out.len, stdout);
        mdm_buf_free(&out);
        return 0;
    }
    if (strcmp(argv[1], "check") == 0 && argc == 3) {
        mdm_config_t cfg;
        mdm_err_t err = {0};
        if (mdm_config_load(&cfg, argv[2], &err) != 0) {
            fprintf(stderr, "moonmdm: config error: %s\n", err.msg);
            return 1;
        }
        printf("%s: ok\n", argv[2]);
        mdm_config_free(&cfg);
        return 0;
    }
    fputs(config_usage, stderr);
    return 2;
}

/* ---- apikey -------------------------------------------------------------- */

static const char apikey_usage[] =
    "usage: moonmdm apikey create [--role admin|read] [--name NAME] [-c FILE] [-d DIR]\n"
    "       moonmdm apikey list [-c FILE] [-d DIR]\n"
    "       moonmdm apikey revoke ID [-c FILE] [-d DIR]\n"
    "\n"
    "Manages admin API keys in the store (the server may be running). A new key\n"
    "is printed once; listings show only the key id (the prefix mdm_<id>).\n";

struct apikey_create_ctx {
    const char *name;
    int role;
    char key[MDM_APIKEY_LEN + 1];
    mdm_apikey_info_t info;
};

static int apikey_create_fn(mdm_txn_t *txn, void *arg)
{
    struct apikey_create_ctx *a = arg;
    return mdm_apikey_create(txn, a->name, a->role, a->key, &a->info);
}

static int apikey_print_cb(const mdm_apikey_info_t *info, void *arg)
{
    (void)arg;
    char created[32], revoked[32] = "-";
    mdm_time_format(created, info->created_ms);
    if (info->revoked_ms)
        mdm_time_format(revoked, info->revoked_ms);
    printf("mdm_%s  %-6s  %-20s  created %s  revoked %s\n", info->id,
           mdm_api_role_name(info->role), info->name[0] ? info->name : "-", created, revoked);
    return 0;
}

static int apikey_list_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_apikey_list(txn, apikey_print_cb, arg);
}

static int apikey_revoke_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_apikey_revoke(txn, arg, mdm_now_ms());
}

/* Opens the store of the config for a CLI command. */
int mdm__cli_open_store(const mdm_config_t *cfg, bool rdonly, mdm_store_t **out)
{
    mdm_err_t err = {0};
    mdm_store_config_t sc = {
        .path = cfg->store_path,
        .map_size = cfg->store_map_size,
        .map_max = cfg->store_map_max,
        .sync = true,
        .flags = MDM_STORE_AUTOFLUSH | (rdonly ? MDM_STORE_RDONLY : 0),
    };
    const mdm_store_ops_t *ops = mdm_store_backend(cfg->store_backend);
    if (ops == NULL) {
        fprintf(stderr, "moonmdm: unknown store backend \"%s\"\n", cfg->store_backend);
        return 1;
    }
    if (mdm_store_open(ops, &sc, out, &err) != 0) {
        fprintf(stderr, "moonmdm: cannot open the store %s: %s\n", cfg->store_path, err.msg);
        return 1;
    }
    return 0;
}

int mdm_cmd_apikey(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"role", required_argument, NULL, 'r'},   {"name", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *data_dir = NULL, *role = "admin", *name = "";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:r:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'r': role = optarg; break;
        case 'n': name = optarg; break;
        case 'h': fputs(apikey_usage, stdout); return 0;
        default: fputs(apikey_usage, stderr); return 2;
        }
    }
    if (optind >= argc) {
        fputs(apikey_usage, stderr);
        return 2;
    }
    const char *verb = argv[optind];
    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, config_path, data_dir) != 0)
        return 1;
    mdm_store_t *store = NULL;
    int exit_code = 1;
    bool rdonly = strcmp(verb, "list") == 0;
    if (mdm__cli_open_store(&cfg, rdonly, &store) != 0)
        goto out;
    if (strcmp(verb, "create") == 0) {
        struct apikey_create_ctx a = {.name = name, .role = mdm_api_role_parse(role)};
        if (a.role == 0) {
            fprintf(stderr, "moonmdm apikey: unknown role \"%s\" (admin or read)\n", role);
            exit_code = 2;
            goto out;
        }
        int rc = mdm_store_update(store, apikey_create_fn, &a);
        if (rc != 0) {
            fprintf(stderr, "moonmdm apikey: cannot create: %s\n", mdm_strerror(rc));
            goto out;
        }
        printf("%s\n", a.key);
        fprintf(stderr, "created API key mdm_%s (role %s); it is shown only this once\n",
                a.info.id, mdm_api_role_name(a.role));
        exit_code = 0;
    } else if (strcmp(verb, "list") == 0) {
        exit_code = mdm_store_view(store, apikey_list_fn, NULL) == 0 ? 0 : 1;
    } else if (strcmp(verb, "revoke") == 0 && optind + 1 < argc) {
        const char *id = argv[optind + 1];
        if (strncmp(id, "mdm_", 4) == 0)
            id += 4;
        char idbuf[MDM_APIKEY_ID_LEN + 1];
        snprintf(idbuf, sizeof(idbuf), "%s", id);
        int rc = mdm_store_update(store, apikey_revoke_fn, idbuf);
        if (rc == MDM_ENOTFOUND) {
            fprintf(stderr, "moonmdm apikey: no key with id %s\n", idbuf);
            goto out;
        }
        if (rc != 0) {
            fprintf(stderr, "moonmdm apikey: cannot revoke: %s\n", mdm_strerror(rc));
            goto out;
        }
        printf("revoked mdm_%s\n", idbuf);
        exit_code = 0;
    } else {
        fputs(apikey_usage, stderr);
        exit_code = 2;
    }
out:
    mdm_store_close(store);
    mdm_config_free(&cfg);
    return exit_code;
}
