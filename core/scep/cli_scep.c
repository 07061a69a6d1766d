/* `moonmdm challenge ...` and `moonmdm cert ...`: one-time SCEP challenges
 * and the certificates the CA issued. They work on the store directly, so
 * the server may be running (it sees new challenges at once, and rebuilds
 * its CRL when it notices a revocation). */
#include "scep/cli_scep.h"

#include <getopt.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "crypto/certdb.h"
#include "mdm/mdm.h"
#include "scep/challenge.h"
#include "scep/service.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"

/* ---- challenge ----------------------------------------------------------- */

static const char challenge_usage[] =
    "usage: moonmdm challenge new [--user NAME] [--udid UDID] [--ttl DURATION]\n"
    "                             [-c FILE] [-d DIR]\n"
    "       moonmdm challenge list [-c FILE] [-d DIR]\n"
    "       moonmdm challenge prune [-c FILE] [-d DIR]\n"
    "\n"
    "One-time SCEP challenges. `new` prints a challenge on stdout (shown only\n"
    "this once: the store keeps a hash of it); it is valid for --ttl (default\n"
    "scep.challenge_ttl, 1h) and is consumed by the first enrollment that uses\n"
    "it. --user records who it is for; the issued certificate remembers it.\n"
    "--udid ties the issued certificate (and its renewals) to that device: it\n"
    "can Authenticate as that UDID only.\n"
    "`list` shows the live challenges (purpose: scep or ota, owner, the device\n"
    "it is for and times, never the challenge);\n"
    "`prune` deletes the expired ones.\n"
    "\n"
    "options:\n"
    "  -u, --user NAME        owner of the challenge\n"
    "  -U, --udid UDID        the device the certificate is for (1-128 printable\n"
    "                         ASCII characters, no space or ':')\n"
    "  -t, --ttl DURATION     lifetime, e.g. 30m, 1h, 7d\n"
    "  -c, --config FILE      config file\n"
    "  -d, --data-dir DIR     data directory when no config file is found\n"
    "  -h, --help             this help\n";

struct cli_challenge_ctx {
    const char *owner;
    const char *udid; /* NULL: not for one device */
    uint64_t ttl_ms;
    mdm_challenge_t c;
};

static int cli_challenge_new_fn(mdm_txn_t *txn, void *arg)
{
    struct cli_challenge_ctx *c = arg;
    return mdm_challenge_create_for(txn, c->owner, c->udid, MDM_CHALLENGE_SCEP, c->ttl_ms,
                                    &c->c);
}

static int cli_challenge_print(const mdm_challenge_t *c, void *arg)
{
    int64_t now = *(int64_t *)arg;
    char created[32], expires[32], fp[17];
    mdm_time_format(created, c->created_ms);
    mdm_time_format(expires, c->expires_ms);
    mdm_hex_encode(fp, c->digest, 8);
    printf("%s  %-4s  %-24s  created %s  expires %s%s%s%s\n", fp,
           mdm_challenge_purpose_name(c->purpose), c->owner[0] ? c->owner : "-", created, expires,
           c->udid[0] ? "  udid=" : "", c->udid, c->expires_ms <= now ? "  (expired)" : "");
    return 0;
}

static int cli_challenge_list_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_challenge_list(txn, cli_challenge_print, arg);
}

static int cli_challenge_prune_fn(mdm_txn_t *txn, void *arg)
{
    return mdm_challenge_prune(txn, mdm_now_ms(), 0, arg);
}

int mdm_cmd_challenge(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"user", required_argument, NULL, 'u'},   {"ttl", required_argument, NULL, 't'},
        {"udid", required_argument, NULL, 'U'},   {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *data_dir = NULL, *user = "", *ttl = NULL, *udid = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:u:U:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'u': user = optarg; break;
        case 'U': udid = optarg; break;
        case 't': ttl = optarg; break;
        case 'h': fputs(challenge_usage, stdout); return 0;
        default: fputs(challenge_usage, stderr); return 2;
        }
    }
    if (optind >= argc || optind + 1 < argc) {
        fputs(challenge_usage, stderr);
        return 2;
    }
    const char *verb = argv[optind];
    if (strcmp(verb, "new") != 0 && strcmp(verb, "list") != 0 && strcmp(verb, "prune") != 0) {
        fprintf(stderr, "moonmdm challenge: unknown command \"%s\"\n\n%s", verb,
                challenge_usage);
        return 2;
    }
    if (strlen(user) > MDM_CHALLENGE_OWNER_MAX) {
        fprintf(stderr, "moonmdm challenge: --user is longer than %d bytes\n",
                MDM_CHALLENGE_OWNER_MAX);
        return 2;
    }
    if (udid != NULL && (strcmp(verb, "new") != 0 || !mdm_device_id_ok(udid))) {
        fprintf(stderr, "moonmdm challenge: --udid needs `new` and 1 to %d printable ASCII "
                        "characters without space or ':'\n", MDM_DEVICE_ID_MAX);
        return 2;
    }
    uint64_t ttl_ms = 0;
    if (ttl != NULL && (mdm_parse_duration_ms(ttl, &ttl_ms) != 0 || ttl_ms == 0)) {
        fprintf(stderr, "moonmdm challenge: --ttl \"%s\" is not a duration (e.g. 30m, 1h, 7d)\n",
                ttl);
        return 2;
    }
    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, config_path, data_dir) != 0)
        return 1;
    mdm_store_t *store = NULL;
    int exit_code = 1;
    if (mdm__cli_open_store(&cfg, strcmp(verb, "list") == 0, &store) != 0)
        goto out;
    if (strcmp(verb, "new") == 0) {
        struct cli_challenge_ctx a = {.owner = user,
                                      .udid = udid,
                                      .ttl_ms = ttl ? ttl_ms : cfg.scep_challenge_ttl_ms};
        int rc = mdm_store_update(store, cli_challenge_new_fn, &a);
        if (rc != 0) {
            fprintf(stderr, "moonmdm challenge: cannot create: %s\n", mdm_strerror(rc));
            goto out;
        }
        char expires[32];
        mdm_time_format(expires, a.c.expires_ms);
        printf("%s\n", a.c.text);
        fprintf(stderr,
                "one-time challenge%s%s%s%s, valid until %s; it is shown only this once\n",
                user[0] ? " for " : "", user, udid ? ", certificate tied to device " : "",
                udid ? udid : "", expires);
        exit_code = 0;
    } else if (strcmp(verb, "list") == 0) {
        int64_t now = mdm_now_ms();
        int rc = mdm_store_view(store, cli_challenge_list_fn, &now);
        exit_code = rc == 0 ? 0 : 1;
        if (rc != 0)
            fprintf(stderr, "moonmdm challenge: cannot list: %s\n", mdm_strerror(rc));
    } else {
        size_t removed = 0;
        int rc = mdm_store_update(store, cli_challenge_prune_fn, &removed);
        if (rc != 0) {
            fprintf(stderr, "moonmdm challenge: cannot prune: %s\n", mdm_strerror(rc));
            goto out;
        }
        printf("removed %zu expired challenge%s\n", removed, removed == 1 ? "" : "s");
        exit_code = 0;
    }
out:
    mdm_store_close(store);
    mdm_config_free(&cfg);
    return exit_code;
}

/* ---- cert ---------------------------------------------------------------- */

static const char cert_usage[] =
    "usage: moonmdm cert list [--revoked] [-c FILE] [-d DIR]\n"
    "       moonmdm cert show SERIAL [-c FILE] [-d DIR]\n"
    "       moonmdm cert revoke SERIAL [--reason N] [-c FILE] [-d DIR]\n"
    "\n"
    "The certificates the CA issued (SCEP enrollments and renewals). `list`\n"
    "prints one line per certificate: serial, status, not-after, owner= (the\n"
    "user who enrolled with it), udid= (the device it was issued for), subject;\n"
    "\"-\" stands for none.\n"
    "`show` prints a certificate's record (with the user who enrolled with\n"
    "it and the device the OTA profile service issued it for) and PEM.\n"
    "`revoke` marks it revoked; the CRL served at ca.crl_url (default\n"
    "/ca.crl) lists it from then on (a running server notices within a\n"
    "request). SERIAL is hexadecimal, with or without colons.\n"
    "\n"
    "options:\n"
    "  -r, --reason N         RFC 5280 CRLReason: 0 unspecified (default),\n"
    "                         1 keyCompromise, 2 cACompromise, 3 affiliationChanged,\n"
    "                         4 superseded, 5 cessationOfOperation, 6 certificateHold,\n"
    "                         9 privilegeWithdrawn, 10 aACompromise (8 removeFromCRL\n"
    "                         belongs in delta CRLs only)\n"
    "      --revoked          list only revoked certificates\n"
    "  -c, --config FILE      config file\n"
    "  -d, --data-dir DIR     data directory when no config file is found\n"
    "  -h, --help             this help\n";

struct cli_cert_list_ctx {
    mdm_txn_t *txn;
    bool only_revoked;
    size_t n;
};

/* Who enrolled with a certificate and the device it was issued for ("" for
 * none of either). */
static void cert_names(mdm_txn_t *txn, const unsigned char fp[32],
                       char owner[MDM_CHALLENGE_OWNER_MAX + 1],
                       char udid[MDM_CHALLENGE_UDID_MAX + 1])
{
    if (mdm_challenge_owner_of_cert(txn, fp, owner, MDM_CHALLENGE_OWNER_MAX + 1) != 0)
        owner[0] = '\0';
    if (mdm_challenge_udid_of_cert(txn, fp, udid, MDM_CHALLENGE_UDID_MAX + 1) != 0)
        udid[0] = '\0';
}

static int cli_cert_print(const mdm_certrec_t *r, void *arg)
{
    struct cli_cert_list_ctx *l = arg;
    if (l->only_revoked && !r->revoked)
        return 0;
    char na[32], owner[MDM_CHALLENGE_OWNER_MAX + 1], udid[MDM_CHALLENGE_UDID_MAX + 1];
    mdm_time_format(na, r->not_after_ms);
    cert_names(l->txn, r->sha256, owner, udid);
    const char *status = r->revoked ? "revoked" : r->not_after_ms < mdm_now_ms() ? "expired"
                                                                                 : "valid";
    /* Owners come from logins and admins: quoted, control bytes escaped. */
    char oq[4 * MDM_CHALLENGE_OWNER_MAX + 8], uq[4 * MDM_CHALLENGE_UDID_MAX + 8];
    printf("%-40s  %-7s  %s  owner=%s  udid=%s  %s\n", r->serial_hex, status, na,
           mdm_logq(oq, sizeof(oq), owner[0] ? owner : "-"),
           mdm_logq(uq, sizeof(uq), udid[0] ? udid : "-"), r->subject);
    l->n++;
    return 0;
}

static int cli_cert_list_fn(mdm_txn_t *txn, void *arg)
{
    struct cli_cert_list_ctx *l = arg;
    l->txn = txn;
    return mdm_certdb_list(txn, 0, 0, cli_cert_print, arg);
}

struct cli_cert_one {
    unsigned char serial[MDM_SERIAL_MAX];
    size_t len;
    int reason;
    mdm_certrec_t rec;
    /* Who enrolled with it, and the device it was issued for ("" if none). */
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
    char udid[MDM_CHALLENGE_UDID_MAX + 1];
};

static int cli_cert_show_fn(mdm_txn_t *txn, void *arg)
{
    struct cli_cert_one *o = arg;
    mdm_certrec_free(&o->rec);
    int rc = mdm_certdb_get_by_serial(txn, o->serial, o->len, &o->rec);
    if (rc != 0)
        return rc;
    cert_names(txn, o->rec.sha256, o->owner, o->udid);
    return 0;
}

static int cli_cert_revoke_fn(mdm_txn_t *txn, void *arg)
{
    struct cli_cert_one *o = arg;
    mdm_certrec_free(&o->rec);
    int rc = mdm_scep_revoke(txn, o->serial, o->len, o->reason, mdm_now_ms());
    if (rc == 0)
        rc = mdm_certdb_get_by_serial(txn, o->serial, o->len, &o->rec);
    return rc;
}

static void print_record(const struct cli_cert_one *o)
{
    const mdm_certrec_t *r = &o->rec;
    char nb[32], na[32], ra[32], fp[65];
    mdm_time_format(nb, r->not_before_ms);
    mdm_time_format(na, r->not_after_ms);
    mdm_hex_encode(fp, r->sha256, 32);
    printf("serial:          %s\n", r->serial_hex);
    printf("subject:         %s\n", r->subject);
    printf("sha256:          %s\n", fp);
    printf("valid:           %s .. %s\n", nb, na);
    printf("transaction id:  %s\n", r->transaction_id[0] ? r->transaction_id : "-");
    printf("enrollment:      %s\n", r->enrollment_id[0] ? r->enrollment_id : "-");
    printf("owner:           %s\n", o->owner[0] ? o->owner : "-");
    printf("issued for:      %s\n", o->udid[0] ? o->udid : "-");
    if (r->revoked) {
        mdm_time_format(ra, r->revoked_at_ms);
        printf("revoked:         %s (reason %d)\n", ra, r->reason);
    } else {
        printf("revoked:         no\n");
    }
}

int mdm_cmd_cert(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"reason", required_argument, NULL, 'r'}, {"revoked", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *data_dir = NULL, *reason = "0";
    bool only_revoked = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'r': reason = optarg; break;
        case 'R': only_revoked = true; break;
        case 'h': fputs(cert_usage, stdout); return 0;
        default: fputs(cert_usage, stderr); return 2;
        }
    }
    if (optind >= argc) {
        fputs(cert_usage, stderr);
        return 2;
    }
    const char *verb = argv[optind];
    bool is_list = strcmp(verb, "list") == 0;
    bool is_show = strcmp(verb, "show") == 0;
    bool is_revoke = strcmp(verb, "revoke") == 0;
    if (!(is_list && optind + 1 == argc) && !((is_show || is_revoke) && optind + 2 == argc)) {
        fputs(cert_usage, stderr);
        return 2;
    }
    struct cli_cert_one one;
    memset(&one, 0, sizeof(one));
    if (is_show || is_revoke) {
        if (mdm_serial_parse(argv[optind + 1], one.serial, &one.len) != 0) {
            fprintf(stderr, "moonmdm cert: \"%s\" is not a serial number (hexadecimal)\n",
                    argv[optind + 1]);
            return 2;
        }
        char *end = NULL;
        long r = strtol(reason, &end, 10);
        if (end == reason || *end != '\0' || r < 0 || r > 10 || r == 7 || r == 8) {
            fprintf(stderr, "moonmdm cert: --reason must be 0..10 but not 7 or 8 (see --help)\n");
            return 2;
        }
        one.reason = (int)r;
    }
    mdm_config_t cfg;
    if (mdm__cli_load_config(&cfg, config_path, data_dir) != 0)
        return 1;
    mdm_store_t *store = NULL;
    int exit_code = 1;
    if (mdm__cli_open_store(&cfg, !is_revoke, &store) != 0)
        goto out;
    if (is_list) {
        struct cli_cert_list_ctx l = {.only_revoked = only_revoked};
        int rc = mdm_store_view(store, cli_cert_list_fn, &l);
        if (rc != 0) {
            fprintf(stderr, "moonmdm cert: cannot list: %s\n", mdm_strerror(rc));
            goto out;
        }
        fprintf(stderr, "%zu certificate%s\n", l.n, l.n == 1 ? "" : "s");
        exit_code = 0;
        goto out;
    }
    int rc = mdm_store_view(store, cli_cert_show_fn, &one);
    if (rc == 0 && is_revoke)
        rc = mdm_store_update(store, cli_cert_revoke_fn, &one);
    if (rc == MDM_ENOTFOUND) {
        fprintf(stderr, "moonmdm cert: no certificate with serial %s was issued here\n",
                argv[optind + 1]);
        goto out;
    }
    if (rc != 0) {
        fprintf(stderr, "moonmdm cert: %s failed: %s\n", verb, mdm_strerror(rc));
        goto out;
    }
    if (is_revoke) {
        printf("revoked %s (reason %d)\n", one.rec.serial_hex, one.rec.reason);
    } else {
        print_record(&one);
        const unsigned char *p = one.rec.der;
        X509 *x = d2i_X509(NULL, &p, (long)one.rec.der_len);
        if (x != NULL)
            PEM_write_X509(stdout, x);
        X509_free(x);
    }
    exit_code = 0;
out:
    mdm_certrec_free(&one.rec);
    mdm_store_close(store);
    mdm_config_free(&cfg);
    return exit_code;
}
