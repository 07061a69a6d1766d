/* moonmdm: an Apple MDM server. This file only picks the subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "mdm/enroll.h"
#include "policy.h"
#include "scep/cli_scep.h"

static const char usage[] =
    "usage: moonmdm <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve      run the server\n"
    "  init       create a data directory (CA, TLS certificate, API key, config)\n"
    "  config     print the default config, or check a config file\n"
    "  apikey     create, list and revoke admin API keys\n"
    "  db         back up, restore and check the store\n"
    "  challenge  make and list one-time SCEP challenges\n"
    "  cert       list, show and revoke issued certificates\n"
    "  device     list, show and delete devices (through the API)\n"
    "  cmd        send, show, list and cancel commands (through the API)\n"
    "  push       wake devices with a push (through the API)\n"
    "  policy     check, test and dry-run policies; reload the server's policy\n"
    "  enroll-profile  print a signed enrollment profile with a new challenge\n"
    "  profile    sign a profile, or encrypt it to a device certificate\n"
    "  version    print the version\n"
    "  help       print this help\n"
    "\n"
    "Every command has --help.\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return mdm_cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "init") == 0)
        return mdm_cmd_init(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0)
        return mdm_cmd_config(argc - 1, argv + 1);
    if (strcmp(cmd, "apikey") == 0)
        return mdm_cmd_apikey(argc - 1, argv + 1);
    if (strcmp(cmd, "db") == 0)
        return mdm_cmd_db(argc - 1, argv + 1);
    if (strcmp(cmd, "challenge") == 0)
        return mdm_cmd_challenge(argc - 1, argv + 1);
    if (strcmp(cmd, "cert") == 0)
        return mdm_cmd_cert(argc - 1, argv + 1);
    if (strcmp(cmd, "device") == 0)
        return mdm_cmd_device(argc - 1, argv + 1);
    if (strcmp(cmd, "cmd") == 0)
        return mdm_cmd_cmd(argc - 1, argv + 1);
    if (strcmp(cmd, "policy") == 0)
        return mdm_cmd_policy(argc - 1, argv + 1);
    if (strcmp(cmd, "push") == 0)
        return mdm_cmd_push(argc - 1, argv + 1);
    if (strcmp(cmd, "profile") == 0)
        return mdm_cmd_profile(argc - 1, argv + 1);
    if (strcmp(cmd, "enroll-profile") == 0)
        return mdm_cmd_enroll_profile(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        if (argc > 2 && strcmp(argv[2], "--help") == 0) {
            puts("usage: moonmdm version\n\nPrints the version of moonmdm and of its store schema.");
            return 0;
        }
        printf("moonmdm %s\n", MOONMDM_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    fprintf(stderr, "moonmdm: unknown command \"%s\"\n\n%s", cmd, usage);
    return 2;
}
