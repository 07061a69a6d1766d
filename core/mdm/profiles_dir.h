/* profiles.dir: the .mobileconfig files of a directory, kept in the
 * profiles table with source "dir" and the name of the file.
 *
 * At start the directory is loaded before the server listens, and a bad
 * file stops the start. A reload (SIGHUP, POST /v1/policy/reload) stores
 * new and changed files and deletes the profiles whose file is gone; a
 * bad file is reported and the profile it held stays as it was stored.
 * A reload reads and validates the files in the thread pool (a directory
 * of large profiles takes a while) and writes the store on the loop. With
 * policy.watch the directory is watched, and a change reloads it once the
 * directory has been quiet for 200 ms. */
#ifndef MDM_PROFILES_DIR_H
#define MDM_PROFILES_DIR_H

#include <jansson.h>

#include "server.h"
#include "util/err.h"

typedef struct mdm_profiles_dir mdm_profiles_dir_t;

/* Loads dir into the store at start; err names the first bad file. On
 * success *out is the state reloads use. */
int mdm__profiles_dir_load(mdm_server_t *s, const char *dir, mdm_profiles_dir_t **out,
                           mdm_err_t *err);

/* Called on the loop when a reload is done. report is {"dir", "stored",
 * "updated", "removed" (identifiers), "unchanged" (a count), "errors"
 * ([{"file", "error"}])}, borrowed; NULL when profiles.dir is not set. */
typedef void (*mdm_profiles_reload_cb)(mdm_server_t *s, json_t *report, void *arg);

/* Reloads profiles.dir and then calls done (at once when it is not set).
 * A reload asked while one runs waits for it and then runs again, so that
 * it sees every change made before it was asked. */
void mdm_profiles_reload(mdm_server_t *s, mdm_profiles_reload_cb done, void *arg);

/* Frees the state (after the loop has ended: no reload runs). */
void mdm__profiles_dir_free(mdm_profiles_dir_t *d);

#endif
