/* `moonmdm profile sign FILE` and `moonmdm profile encrypt FILE --cert
 * DEVICE.pem`: the server's profile signing and per-device encryption for
 * admins who prepare profiles by hand. */
#include <getopt.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "mdm/profiles.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/plist.h"

static const char profile_usage[] =
    "usage: moonmdm profile sign FILE [--out OUT] [-c CONFIG] [-d DIR]\n"
    "       moonmdm profile encrypt FILE --cert DEVICE.pem [--no-sign] [--out OUT] [-c CONFIG]\n"
    "\n"
    "sign:    checks FILE (a .mobileconfig: XML, binary or signed) and signs it with the\n"
    "         server certificate (tls.cert, tls.chain, tls.key), as the server signs the\n"
    "         profiles it sends.\n"
    "encrypt: moves the PayloadContent into EncryptedPayloadContent, encrypted to the\n"
    "         device certificate (AES-256-CBC, CMS), then signs the result (unless\n"
    "         --no-sign). The device certificate must have an RSA or EC key.\n"
    "\n"
    "The result goes to --out, or to standard output.\n";

static int read_file(const char *path, mdm_buf_t *out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        mdm_buf_append(out, chunk, n);
    fclose(f);
    return 0;
}

int mdm_cmd_profile(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"data-dir", required_argument, NULL, 'd'},
        {"cert", required_argument, NULL, 'C'},   {"out", required_argument, NULL, 'o'},
        {"no-sign", no_argument, NULL, 'N'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *data_dir = NULL, *cert_path = NULL, *outpath = NULL;
    bool sign = true;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:d:o:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'C': cert_path = optarg; break;
        case 'o': outpath = optarg; break;
        case 'N': sign = false; break;
        case 'h': fputs(profile_usage, stdout); return 0;
        default: fputs(profile_usage, stderr); return 2;
        }
    }
    if (optind + 2 != argc ||
        (strcmp(argv[optind], "sign") != 0 && strcmp(argv[optind], "encrypt") != 0)) {
        fputs(profile_usage, stderr);
        return 2;
    }
    bool encrypt = strcmp(argv[optind], "encrypt") == 0;
    const char *file = argv[optind + 1];
    if (encrypt && cert_path == NULL) {
        fprintf(stderr, "moonmdm profile encrypt: --cert DEVICE.pem is required\n");
        return 2;
    }
    mdm_config_t cfg;
    bool have_cfg = false;
    mdm_buf_t raw = MDM_BUF_INIT, xml = MDM_BUF_INIT, out = MDM_BUF_INIT;
    mdm_profiles_t signer;
    memset(&signer, 0, sizeof(signer));
    X509 *device = NULL;
    plist_t dict = NULL;
    mdm_err_t err = {0};
    mdm_profile_meta_t meta;
    int exit_code = 1;

    if (read_file(file, &raw) != 0) {
        fprintf(stderr, "moonmdm profile: cannot read %s\n", file);
        goto out;
    }
    if (mdm_profile_validate(raw.data, raw.len, NULL, &xml, &meta, &err) != 0) {
        fprintf(stderr, "moonmdm profile: %s: %s\n", file, err.msg);
        goto out;
    }
    if (encrypt) {
        if (mdm_cert_read_pem(cert_path, &device, &err) != 0) {
            fprintf(stderr, "moonmdm profile: %s\n", err.msg);
            goto out;
        }
        if (mdm_plist_load(xml.data, xml.len, &dict) != 0 ||
            mdm_profile_encrypt_dict(dict, device, &err) != 0) {
            fprintf(stderr, "moonmdm profile: cannot encrypt: %s\n",
                    err.msg[0] ? err.msg : "the profile does not parse");
            goto out;
        }
        mdm_plist_to_xml_buf(dict, &xml);
    }
    if (sign) {
        if (mdm__cli_load_config(&cfg, config, data_dir) != 0)
            goto out;
        have_cfg = true;
        cfg.profiles_sign = true;
        if (mdm_profiles_signer_load(&cfg, &signer, &err) != 0) {
            fprintf(stderr, "moonmdm profile: cannot load the signing identity: %s\n", err.msg);
            goto out;
        }
        if (mdm_cms_sign(signer.sign_cert, signer.sign_key, signer.sign_chain, xml.data, xml.len,
                         &out, &err) != 0) {
            fprintf(stderr, "moonmdm profile: cannot sign: %s\n", err.msg);
            goto out;
        }
    } else {
        mdm_buf_append(&out, xml.data, xml.len);
    }
    FILE *f = outpath ? fopen(outpath, "wb") : stdout;
    if (f == NULL) {
        fprintf(stderr, "moonmdm profile: cannot write %s\n", outpath);
        goto out;
    }
    fwrite(out.data, 1, out.len, f);
    if (outpath)
        fclose(f);
    else
        fflush(stdout);
    fprintf(stderr, "%s %s: %s (%zu bytes)\n", encrypt ? "encrypted" : "signed", meta.identifier,
            sign ? "signed with the server certificate" : "not signed", out.len);
    exit_code = 0;
out:
    plist_free(dict);
    X509_free(device);
    mdm_profiles_signer_free(&signer);
    if (have_cfg)
        mdm_config_free(&cfg);
    mdm_buf_free(&raw);
    mdm_buf_free(&xml);
    mdm_buf_free(&out);
    return exit_code;
}
