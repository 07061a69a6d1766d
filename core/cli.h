/* The subcommands of the moonmdm binary. Each takes the arguments after
 * its name (argv[0] is the subcommand) and returns the process exit code. */
#ifndef MDM_CLI_H
#define MDM_CLI_H

#include <stdbool.h>

int mdm_cmd_serve(int argc, char **argv);
int mdm_cmd_init(int argc, char **argv);
int mdm_cmd_config(int argc, char **argv);
int mdm_cmd_apikey(int argc, char **argv);
int mdm_cmd_device(int argc, char **argv);
int mdm_cmd_cmd(int argc, char **argv);
int mdm_cmd_push(int argc, char **argv);
int mdm_cmd_profile(int argc, char **argv);
/* moonmdm db backup|restore|check (core/cli_db.c). */
int mdm_cmd_db(int argc, char **argv);

/* Finds the config file: --config, $MOONMDM_CONFIG, <data-dir>/moonmdm.conf.lua,
 * or none (defaults). Loads it into cfg; prints errors; returns 0 or 1. */
struct mdm_config;
int mdm__cli_load_config(struct mdm_config *cfg, const char *config_path, const char *data_dir);

/* Opens the store the config names (read-only when asked); prints the
 * reason and returns 1 when it cannot. */
struct mdm_store;
int mdm__cli_open_store(const struct mdm_config *cfg, bool rdonly, struct mdm_store **out);

#endif
