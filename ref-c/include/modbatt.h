/*
 * modbatt reference C: the firmware-facing subset of the Modbatt protocol, written from the
 * specification (docs/spec/key-schedule.md §4.4, docs/spec/frames.md §5, docs/spec/ids.md §7).
 * C99 + OpenSSL libcrypto. No dynamic allocation on the frame path.
 */
#ifndef MODBATT_H
#define MODBATT_H

#include <stddef.h>
#include <stdint.h>

/* Rejection reasons (spec §6); the strings are the wire names of the vectors. */
typedef enum {
    MB_OK = 0,
    MB_MALFORMED,
    MB_OVERSIZED,
    MB_BAD_MAC,
    MB_BAD_SIGNATURE,
    MB_STALE,
    MB_REPLAY,
    MB_WRONG_LEVEL,
    MB_TIER_TOO_LOW,
    MB_INTERNAL /* a library failure, never a verdict on the input */
} mb_status;

const char *mb_status_name(mb_status s);

/* Tiers are the level codes of spec §5.1. */
enum { MB_TIER_NONE = 0, MB_TIER_EXCHANGE = 1, MB_TIER_PAIRING = 2, MB_TIER_BINDING = 3 };

#define MB_FV_BYTES 7
#define MB_FV_MAX ((uint64_t)0x00FFFFFFFFFFFFFFull) /* 2^56 - 1 */
#define MB_MAX_PDU 4095u
#define MB_KEY_BYTES 32
#define MB_SIG_BYTES 64
#define MB_POINT_BYTES 33

/* ---- key schedule (spec §4) ---------------------------------------------------------------- */

/* HKDF-SHA256 (RFC 5869); salt may be NULL (absent). Returns 0 on success. */
int mb_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                   const uint8_t *info, size_t info_len, uint8_t *okm, size_t okm_len);

/* The classic (CCM) and FD (GCM) traffic keys of a symmetric tier in one direction (spec §4.4):
 * exchange, pairing, or binding under the efficient profile (its tier secret the binding MAC secret). */
int mb_traffic_keys(const uint8_t *tier_secret, size_t secret_len, int tier, int direction,
                    uint8_t classic_key[MB_KEY_BYTES], uint8_t fd_key[MB_KEY_BYTES]);

/* The efficient profile's binding MAC secret of one session (spec §4.3): HKDF-SHA256 over the ECDH
 * secret z of one's own binding key (private scalar priv, public own_point) and the partner's
 * (peer_point), info = label || pairing id || session id || Q_a || Q_b, with role 'a' or 'b' saying
 * which of the two points is one's own. Writes z too. Returns 0 on success, -1 on a bad input. */
int mb_binding_mac_secret(const uint8_t priv[32], const uint8_t own_point[MB_POINT_BYTES],
                          const uint8_t peer_point[MB_POINT_BYTES], char role, const uint8_t *pairing_id,
                          size_t pairing_id_len, const uint8_t session_id[16], uint8_t z[32],
                          uint8_t secret[MB_KEY_BYTES]);

/* ---- identifier layouts (spec §7) ------------------------------------------------------------ */

typedef struct {
    uint32_t priority, direction, function, node;
    int tier; /* MB_TIER_*, or -1 when the layout does not signal it */
} mb_id_fields;

typedef struct mb_layout mb_layout;

const mb_layout *mb_layout_by_name(const char *name);
int mb_layout_bits(const mb_layout *layout);
/* Encode: returns MB_OK and *id, or MB_MALFORMED when a value does not fit. */
mb_status mb_id_encode(const mb_layout *layout, const mb_id_fields *f, uint32_t *id);
/* Decode an untrusted identifier (spec §7 steps 1-4). */
mb_status mb_id_decode(const mb_layout *layout, uint64_t id, mb_id_fields *f);

/* ---- freshness (spec §5.4) ------------------------------------------------------------------- */

typedef struct {
    int64_t highest;  /* -1 before the first accepted value */
    uint64_t bitmap;  /* bit i set <=> highest - i accepted */
    unsigned size;    /* 1..64 */
    int synced;
} mb_window;

void mb_window_init(mb_window *w, unsigned size, int synced);
mb_status mb_window_check(const mb_window *w, uint64_t v);
void mb_window_commit(mb_window *w, uint64_t v);
uint64_t mb_reconstruct(uint32_t truncated, unsigned bits, int64_t latest, uint32_t behind);

/* ---- secured frames (spec §5) ---------------------------------------------------------------- */

typedef struct {
    const mb_layout *layout;
    int tier;
    int fd;          /* 0 classic (8-byte field), 1 FD (64-byte field) */
    int direction;   /* key direction d of the nonce */
    int binding_mac; /* binding tier under the efficient profile: the symmetric formats, keys from the
                      * binding MAC secret, multi-frame only (spec §5.1); 0: signed (seed) */
    uint8_t classic_key[MB_KEY_BYTES];
    uint8_t fd_key[MB_KEY_BYTES];
    uint8_t peer_point[MB_POINT_BYTES]; /* binding: the signer's compressed public key (the peer's when
                                         * receiving, one's own when sending; in the signed bytes too) */
    uint8_t context[255];               /* binding: signature context c, 0 or 2..255 bytes */
    size_t context_len;
    unsigned behind; /* classic reconstruction reach, 64 */
} mb_channel;

/* Sender side of the symmetric tiers (the binding tier too under the efficient profile) and of tier
 * none: writes the unit into out (at most MB_MAX_PDU bytes) and the identifier with the tier stamped in. */
mb_status mb_protect(const mb_channel *ch, const mb_id_fields *fields, uint64_t fv, const uint8_t *payload,
                     size_t n, uint32_t *id, uint8_t *out, size_t *out_len, int *single_frame);

/* Binding tier, sender: the bytes the signature covers (spec §5.1) and the unit around a signature. */
mb_status mb_binding_tbs(const mb_channel *ch, uint32_t id, uint64_t fv, const uint8_t *payload, size_t n,
                         uint8_t *tbs, size_t *tbs_len);
mb_status mb_binding_unit(uint64_t fv, const uint8_t *payload, size_t n, const uint8_t sig[MB_SIG_BYTES],
                          uint8_t *out, size_t *out_len);

/* Receiver: spec §5.5, every check in order; on MB_OK the payload is in out and *fv is set. */
mb_status mb_open(const mb_channel *ch, mb_window *w, uint64_t id, const uint8_t *data, size_t len, int reassembled,
                  uint8_t *out, size_t *out_len, uint64_t *fv);

#endif
