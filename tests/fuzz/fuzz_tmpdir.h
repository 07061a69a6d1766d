/* The temporary data directory of a fuzz target that runs a real store:
 * removed with everything in it when the target exits. */
#ifndef MDM_FUZZ_TMPDIR_H
#define MDM_FUZZ_TMPDIR_H

#include <ftw.h>
#include <stdio.h>

static int fuzz_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Removes dir and what it holds (symlinks are removed, not followed). */
static void fuzz_remove_tree(const char *dir)
{
    nftw(dir, fuzz_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
