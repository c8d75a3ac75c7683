/* Key schedule: HKDF-SHA256 and the CAN traffic keys (spec §4.4). */
#include <string.h>

#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "modbatt.h"

int mb_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                   const uint8_t *info, size_t info_len, uint8_t *okm, size_t okm_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    int ok = ctx != NULL && EVP_PKEY_derive_init(ctx) > 0 && EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) > 0 &&
             EVP_PKEY_CTX_set1_hkdf_key(ctx, ikm, (int)ikm_len) > 0;
    /* An absent salt is HKDF's default of HashLen zero bytes (RFC 5869 §2.2). */
    static const uint8_t zeros[32] = {0};
    if (ok)
        ok = salt != NULL ? EVP_PKEY_CTX_set1_hkdf_salt(ctx, salt, (int)salt_len) > 0
                          : EVP_PKEY_CTX_set1_hkdf_salt(ctx, zeros, sizeof zeros) > 0;
    if (ok && info_len > 0)
        ok = EVP_PKEY_CTX_add1_hkdf_info(ctx, info, (int)info_len) > 0;
    size_t out = okm_len;
    if (ok)
        ok = EVP_PKEY_derive(ctx, okm, &out) > 0 && out == okm_len;
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

int mb_traffic_keys(const uint8_t *tier_secret, size_t secret_len, int tier, int direction,
                    uint8_t classic_key[MB_KEY_BYTES], uint8_t fd_key[MB_KEY_BYTES])
{
    static const char base[] = "modbatt/v2/can/traffic-key";
    static const char ccm[] = "aes-256-ccm-32";
    static const char gcm[] = "aes-256-gcm-128";
    uint8_t info[sizeof base - 1 + 2 + sizeof gcm - 1];
    size_t n = sizeof base - 1;
    if ((tier != MB_TIER_EXCHANGE && tier != MB_TIER_PAIRING) || (direction != 0 && direction != 1) ||
        secret_len < MB_KEY_BYTES)
        return -1;
    memcpy(info, base, n);
    info[n++] = (uint8_t)tier;
    info[n++] = (uint8_t)direction;
    memcpy(info + n, ccm, sizeof ccm - 1);
    if (mb_hkdf_sha256(tier_secret, secret_len, NULL, 0, info, n + sizeof ccm - 1, classic_key, MB_KEY_BYTES))
        return -1;
    memcpy(info + n, gcm, sizeof gcm - 1);
    return mb_hkdf_sha256(tier_secret, secret_len, NULL, 0, info, n + sizeof gcm - 1, fd_key, MB_KEY_BYTES);
}
