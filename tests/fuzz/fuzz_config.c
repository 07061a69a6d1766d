/* Fuzz target: the config loader (mdm_config_load). The input is the text of
 * a config file, written to a temporary file and evaluated in the loader's
 * Lua sandbox, whose instruction and memory limits bound each input; the
 * checks of every setting, path resolution and the combination checks then
 * run on whatever table it returns.
 *
 * Property checked (abort() when broken): a failed load says why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char dir[64];
static char path[128];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/moonmdm-fuzz-config-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(path, sizeof(path), "%s/moonmdm.conf.lua", dir);
    atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0')
        setup();
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        perror(path);
        abort();
    }
    mdm_config_t cfg;
    mdm_err_t err = {0};
    if (mdm_config_load(&cfg, path, &err) == 0) {
        mdm_config_free(&cfg);
    } else if (err.msg[0] == '\0') {
        fprintf(stderr, "fuzz_config: the load failed without a message\n");
        abort();
    }
    return 0;
}
