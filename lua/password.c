/* Password checks for mdm.password.verify: which hashes are usable (kind
 * and cost), the hashing itself, and the per-request results of the
 * server's authenticate calls, whose hashes are made in the thread pool
 * (policy.h, mdm_policy_pwcheck_t). */
#include <crypt.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox_internal.h"
#include "util/alloc.h"
#include "util/misc.h"


/* The costs beyond which a hash is refused rather than hashed: each takes
 * about 3 to 6 s on one core of a 2024 server (bcrypt cost 12 takes
 * 0.24 s, yescrypt's default $y$j9T$ 0.08 s) and would hold a pool thread
 * that long for every sign-in, or for hours ($2b$31$). */
#define BCRYPT_COST_MAX 16
#define SHA512_ROUNDS_MAX 10000000ul
#define YESCRYPT_NLOG2_MAX 18          /* $y$jFT$: N = 2^18, r = 32: 1 GiB */
#define YESCRYPT_NR_LOG2_MAX (18 + 5)  /* log2(N * r) */

static const char itoa64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static int atoi64(char c)
{
    const char *p = c != '\0' ? strchr(itoa64, c) : NULL;
    return p != NULL ? (int)(p - itoa64) : -1;
}

/* Reads one of yescrypt's variable-length numbers at *s (its first
 * character says how many follow, the others carry 6 bits each) plus min.
 * Returns false when malformed or too big. */
static bool yescrypt_number(const char **s, uint32_t min, uint64_t *out)
{
    int c = atoi64(**s);
    if (c < 0)
        return false;
    (*s)++;
    uint64_t v = min;
    uint32_t start = 0, end = 47, extra = 0;
    while ((uint32_t)c > end) {
        v += (uint64_t)(end + 1 - start) << (6 * extra);
        start = end + 1;
        end = start + (62 - end) / 2;
        extra++;
    }
    v += (uint64_t)((uint32_t)c - start) << (6 * extra);
    for (uint32_t i = extra; i > 0; i--) {
        int d = atoi64(**s);
        if (d < 0)
            return false;
        (*s)++;
        v += (uint64_t)d << (6 * (i - 1));
    }
    *out = v;
    return v <= UINT32_MAX;
}

static unsigned log2_ceil(uint64_t v)
{
    unsigned n = 0;
    while (n < 64 && ((uint64_t)1 << n) < v)
        n++;
    return n;
}

/* "$y$" + flavour, log2(N), r, then '$': what libxcrypt makes. */
static bool yescrypt_ok(const char *h, char *why, size_t wlen)
{
    const char *s = h + 3;
    uint64_t flavour = 0, nlog2 = 0, r = 0;
    if (!yescrypt_number(&s, 0, &flavour) || !yescrypt_number(&s, 1, &nlog2) ||
        !yescrypt_number(&s, 1, &r)) {
        snprintf(why, wlen, "malformed yescrypt parameters");
        return false;
    }
    if (*s != '$') {
        snprintf(why, wlen, "yescrypt parameters beyond N and r (p, t, g, ROM) are not "
                            "accepted");
        return false;
    }
    if (nlog2 > YESCRYPT_NLOG2_MAX || nlog2 + log2_ceil(r) > YESCRYPT_NR_LOG2_MAX) {
        snprintf(why, wlen, "yescrypt cost N=2^%llu r=%llu is above N=2^%d r=32: refused",
                 (unsigned long long)nlog2, (unsigned long long)r, YESCRYPT_NLOG2_MAX);
        return false;
    }
    return true;
}

/* "$2b$NN$": NN is log2 of the rounds. */
static bool bcrypt_ok(const char *h, char *why, size_t wlen)
{
    const char *c = h + 4;
    if (c[0] < '0' || c[0] > '9' || c[1] < '0' || c[1] > '9' || c[2] != '$') {
        snprintf(why, wlen, "malformed bcrypt cost");
        return false;
    }
    int cost = (c[0] - '0') * 10 + (c[1] - '0');
    if (cost > BCRYPT_COST_MAX) {
        snprintf(why, wlen, "bcrypt cost %d is above %d: refused", cost, BCRYPT_COST_MAX);
        return false;
    }
    return true;
}

/* "$6$rounds=N$salt$...": without rounds= the default (5000). */
static bool sha512_ok(const char *h, char *why, size_t wlen)
{
    if (strncmp(h + 3, "rounds=", 7) != 0)
        return true;
    const char *d = h + 10;
    char *end = NULL;
    unsigned long rounds = *d >= '0' && *d <= '9' ? strtoul(d, &end, 10) : 0;
    if (end == NULL || *end != '$') {
        snprintf(why, wlen, "malformed sha512-crypt rounds");
        return false;
    }
    if (rounds > SHA512_ROUNDS_MAX) {
        snprintf(why, wlen, "sha512-crypt rounds %lu is above %lu: refused", rounds,
                 SHA512_ROUNDS_MAX);
        return false;
    }
    return true;
}

bool mdm__password_usable(const char *plain, size_t pl, const char *hash, size_t hl, char *why,
                          size_t wlen)
{
    if (pl > MDM__PASSWORD_MAX || hl > MDM__HASH_MAX || strlen(plain) != pl || strlen(hash) != hl) {
        snprintf(why, wlen, "password or hash too long or not text");
        return false;
    }
    if (strncmp(hash, "$y$", 3) == 0)
        return yescrypt_ok(hash, why, wlen);
    if (strncmp(hash, "$2b$", 4) == 0 || strncmp(hash, "$2a$", 4) == 0 ||
        strncmp(hash, "$2y$", 4) == 0)
        return bcrypt_ok(hash, why, wlen);
    if (strncmp(hash, "$6$", 3) == 0)
        return sha512_ok(hash, why, wlen);
    snprintf(why, wlen, "unsupported hash (use yescrypt $y$, bcrypt $2b$ or sha512-crypt $6$)");
    return false;
}

bool mdm__password_matches(const char *plain, const char *hash)
{
    struct crypt_data *cd = mdm_calloc(1, sizeof(*cd));
    const char *out = crypt_rn(plain, hash, cd, (int)sizeof(*cd));
    bool ok = out != NULL && out[0] != '*' && mdm_consttime_eq(out, strlen(out), hash,
                                                                strlen(hash));
    OPENSSL_cleanse(cd, sizeof(*cd));
    mdm_free(cd);
    return ok;
}

/* ---- the checks of one request ------------------------------------------------ */

mdm_policy_pwcheck_t *mdm_policy_pwcheck_new(void)
{
    return mdm_calloc(1, sizeof(mdm_policy_pwcheck_t));
}

static void wipe_free(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        mdm_free(s);
    }
}

static void drop_pending(mdm_policy_pwcheck_t *pw)
{
    wipe_free(pw->plain);
    mdm_free(pw->hash);
    pw->plain = pw->hash = NULL;
}

void mdm_policy_pwcheck_free(mdm_policy_pwcheck_t *pw)
{
    if (pw == NULL)
        return;
    for (size_t i = 0; i < pw->ndone; i++) {
        wipe_free(pw->done[i].plain);
        mdm_free(pw->done[i].hash);
    }
    drop_pending(pw);
    OPENSSL_cleanse(pw, sizeof(*pw));
    mdm_free(pw);
}

bool mdm_policy_pwcheck_pending(const mdm_policy_pwcheck_t *pw)
{
    return pw != NULL && pw->plain != NULL;
}

void mdm_policy_pwcheck_work(mdm_policy_pwcheck_t *pw)
{
    if (pw->ndone >= MDM__PASSWORDS_MAX) {
        /* Never recorded (mdm__pwcheck_defer refuses it); dropping it keeps
         * a caller from hashing for ever. */
        drop_pending(pw);
        return;
    }
    if (pw->plain == NULL)
        return;
    bool ok = mdm__password_matches(pw->plain, pw->hash);
    pw->done[pw->ndone].plain = pw->plain;
    pw->done[pw->ndone].hash = pw->hash;
    pw->done[pw->ndone].ok = ok;
    pw->ndone++;
    pw->plain = pw->hash = NULL;
}

int mdm__pwcheck_lookup(const mdm_policy_pwcheck_t *pw, const char *plain, const char *hash)
{
    for (size_t i = 0; i < pw->ndone; i++)
        if (strcmp(pw->done[i].plain, plain) == 0 && strcmp(pw->done[i].hash, hash) == 0)
            return pw->done[i].ok ? 1 : 0;
    return -1;
}

void mdm__pwcheck_cancel(mdm_policy_pwcheck_t *pw)
{
    drop_pending(pw);
}

int mdm__pwcheck_defer(mdm_policy_pwcheck_t *pw, const char *plain, const char *hash)
{
    drop_pending(pw);
    if (pw->ndone >= MDM__PASSWORDS_MAX)
        return MDM_ELIMIT;
    pw->plain = mdm_strdup(plain);
    pw->hash = mdm_strdup(hash);
    return 0;
}
