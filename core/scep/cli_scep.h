/* The `challenge` and `cert` subcommands (SCEP challenges, issued
 * certificates and their revocation). Each takes the arguments after its
 * name (argv[0] is the subcommand) and returns the exit code. */
#ifndef MDM_SCEP_CLI_SCEP_H
#define MDM_SCEP_CLI_SCEP_H

int mdm_cmd_challenge(int argc, char **argv);
int mdm_cmd_cert(int argc, char **argv);

#endif
