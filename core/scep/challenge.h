/* One-time SCEP challenges (table MDM_T_CHALLENGES).
 *
 * A challenge is 32 random hex digits, handed out once (CLI, admin API, or
 * the enrollment flow, which binds it to a user). The store keeps only
 * its SHA-256 as the key, so that a copy of the database gives no usable
 * challenge. Value (fixed layout, big-endian):
 *   byte 0      version (3)
 *   bytes 1-8   expires_ms
 *   bytes 9-16  created_ms
 *   byte 17     purpose (MDM_CHALLENGE_SCEP or MDM_CHALLENGE_OTA)
 *   byte 18     length of the UDID (0: not made for one device)
 *   bytes 19-   the UDID, then the owner (UTF-8, no NUL; may be empty)
 * Version 2 values have no UDID (the owner starts at byte 18); version 1
 * values (written before purposes existed) have no purpose byte either
 * (the owner starts at byte 17) and read as MDM_CHALLENGE_SCEP.
 * A challenge is good only for its purpose: a SCEP challenge does not pass
 * the OTA profile service's phase 1, and the OTA challenge (which phase 1
 * checks with the authenticate hook) is no SCEP challenge.
 * A challenge is consumed (deleted) by its first successful use, in the
 * same write transaction that records what it was used for; a lost race
 * then reads as MDM_ENOTFOUND.
 *
 * The owner of a challenge that enrolled a certificate is kept in
 * MDM_T_INDEX under "scepowner\0" + SHA-256 of the certificate's DER, so
 * that the MDM layer can attach the user to the enrollment when the device
 * first authenticates with that certificate. Likewise the UDID of a
 * challenge made for one device (the OTA profile service knows it) is kept
 * under "scepudid\0" + SHA-256 of the certificate: the MDM layer lets that
 * certificate authenticate as that device only. */
#ifndef MDM_SCEP_CHALLENGE_H
#define MDM_SCEP_CHALLENGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Length of a challenge's text (hex digits). */
#define MDM_CHALLENGE_LEN 32
/* Longest owner name. */
#define MDM_CHALLENGE_OWNER_MAX 255
/* Longest UDID a challenge can be made for (its length is one byte). */
#define MDM_CHALLENGE_UDID_MAX 255

/* What a challenge is for. */
enum {
    MDM_CHALLENGE_SCEP = 1, /* a PKCSReq's challengePassword */
    MDM_CHALLENGE_OTA = 2,  /* the OTA profile service's phase 1 */
};

typedef struct mdm_challenge {
    char text[MDM_CHALLENGE_LEN + 1];        /* only filled by create */
    char owner[MDM_CHALLENGE_OWNER_MAX + 1]; /* "" when nobody */
    char udid[MDM_CHALLENGE_UDID_MAX + 1];   /* "" when not for one device */
    int purpose;                             /* MDM_CHALLENGE_SCEP or _OTA */
    int64_t created_ms;
    int64_t expires_ms;
    unsigned char digest[32];                /* SHA-256 of the text: the key */
} mdm_challenge_t;

/* Called for each challenge of a listing (text is empty). */
typedef int (*mdm_challenge_fn)(const mdm_challenge_t *c, void *arg);

/* Creates a challenge for purpose and owner (NULL or "" for nobody) that
 * expires ttl_ms from now and writes it to out. MDM_EINVAL for a ttl of 0,
 * an unknown purpose or an owner longer than MDM_CHALLENGE_OWNER_MAX. */
int mdm_challenge_create(mdm_txn_t *txn, const char *owner, int purpose, uint64_t ttl_ms,
                         mdm_challenge_t *out);

/* Like mdm_challenge_create, for the device udid (NULL or "" for none):
 * a certificate it enrolls is recorded as that device's. MDM_EINVAL also
 * for a udid longer than MDM_CHALLENGE_UDID_MAX. */
int mdm_challenge_create_for(mdm_txn_t *txn, const char *owner, const char *udid, int purpose,
                             uint64_t ttl_ms, mdm_challenge_t *out);

/* Like mdm_challenge_create_for, and deletes the challenge last made in the
 * same slot (32 bytes, e.g. the SHA-256 of the certificate it is made for)
 * if it is still there: a slot holds at most one live challenge. The slot
 * is kept in MDM_T_INDEX under "scepslot\0" + slot. */
int mdm_challenge_create_in_slot(mdm_txn_t *txn, const unsigned char slot[32], const char *owner,
                                 const char *udid, int purpose, uint64_t ttl_ms,
                                 mdm_challenge_t *out);

/* Deletes the slot entry and the challenge it names, if they are there
 * (a revoked certificate's phase-3 challenge must not be used). */
int mdm_challenge_slot_clear(mdm_txn_t *txn, const unsigned char slot[32]);

/* Whether the owner of a slot (see mdm_challenge_create_in_slot) may
 * still ask for a challenge, e.g. the certificate is known, valid and not
 * revoked. */
typedef bool (*mdm_challenge_slot_fn)(mdm_txn_t *txn, const unsigned char slot[32], void *arg);

/* Deletes slot entries that are of no more use: the challenge they name is
 * gone (used or pruned), or live(txn, slot, arg) says the slot's owner can
 * ask for no other. It reads at most max entries (max > 0), from the first
 * whose slot is at or after from; from then holds the slot to go on from
 * at the next call (all zero, the first one, after the last). The
 * challenges themselves stay (mdm_challenge_prune removes expired ones).
 * *removed gets the number of deleted entries. */
int mdm_challenge_slot_prune(mdm_txn_t *txn, unsigned char from[32], size_t max,
                             mdm_challenge_slot_fn live, void *arg, size_t *removed);

/* Checks a challenge for purpose without consuming it: 0 and out filled
 * (out may be NULL) when it exists, is for purpose and has not expired at
 * now_ms; MDM_ENOTFOUND for an unknown or already used one; MDM_EAUTH for
 * one made for another purpose (out->purpose tells which); MDM_EEXPIRED for
 * an expired one. */
int mdm_challenge_check(mdm_txn_t *txn, const char *text, int purpose, int64_t now_ms,
                        mdm_challenge_t *out);

/* Consumes a challenge: like mdm_challenge_check, and on success deletes
 * it in txn. An expired challenge is not deleted here (prune does), nor is
 * one for another purpose. */
int mdm_challenge_consume(mdm_txn_t *txn, const char *text, int purpose, int64_t now_ms,
                          mdm_challenge_t *out);

/* "scep", "ota" or "?" */
const char *mdm_challenge_purpose_name(int purpose);

/* Deletes challenges that expired before now_ms, at most max of them (0:
 * no limit); *removed (may be NULL) gets the count. */
int mdm_challenge_prune(mdm_txn_t *txn, int64_t now_ms, size_t max, size_t *removed);

/* Calls fn for every stored challenge (in key order, i.e. no useful order). */
int mdm_challenge_list(mdm_txn_t *txn, mdm_challenge_fn fn, void *arg);

/* Records the owner of the challenge a certificate was enrolled with.
 * An empty owner removes the record. */
int mdm_challenge_owner_record(mdm_txn_t *txn, const unsigned char cert_sha256[32],
                               const char *owner);

/* The owner recorded for a certificate; MDM_ENOTFOUND when none. out gets
 * at most n - 1 bytes and a NUL. */
int mdm_challenge_owner_of_cert(mdm_txn_t *txn, const unsigned char cert_sha256[32], char *out,
                                size_t n);

/* Records the UDID of the challenge a certificate was enrolled with (or
 * of the certificate it renews). An empty udid removes the record. */
int mdm_challenge_udid_record(mdm_txn_t *txn, const unsigned char cert_sha256[32],
                              const char *udid);

/* The UDID recorded for a certificate; MDM_ENOTFOUND when none (it may
 * then authenticate as any device). out gets at most n - 1 bytes and a
 * NUL. */
int mdm_challenge_udid_of_cert(mdm_txn_t *txn, const unsigned char cert_sha256[32], char *out,
                               size_t n);

#endif
