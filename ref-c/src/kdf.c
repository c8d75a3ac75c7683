/* Key schedule: HKDF-SHA256, the CAN traffic keys (spec §4.4) and the binding MAC secret (spec §4.3). */
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>

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
    if ((tier != MB_TIER_EXCHANGE && tier != MB_TIER_PAIRING && tier != MB_TIER_BINDING) ||
        (direction != 0 && direction != 1) ||
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

/* A P-256 key from a compressed point, with the private scalar when priv is not NULL. */
static EVP_PKEY *p256_key(const uint8_t *priv, const uint8_t point[MB_POINT_BYTES])
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    BIGNUM *d = priv != NULL ? BN_bin2bn(priv, 32, NULL) : NULL;
    if (bld && ctx && (priv == NULL || d) &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, MB_POINT_BYTES) &&
        (d == NULL || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d)) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &pkey, priv != NULL ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    BN_clear_free(d);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

int mb_binding_mac_secret(const uint8_t priv[32], const uint8_t own_point[MB_POINT_BYTES],
                          const uint8_t peer_point[MB_POINT_BYTES], char role, const uint8_t *pairing_id,
                          size_t pairing_id_len, const uint8_t session_id[16], uint8_t z[32],
                          uint8_t secret[MB_KEY_BYTES])
{
    static const char label[] = "modbatt/v2/pairing/binding-mac-secret";
    uint8_t info[sizeof label - 1 + 64 + 16 + 2 * MB_POINT_BYTES];
    size_t n = sizeof label - 1, z_len = 32;
    int ok = -1;
    if ((role != 'a' && role != 'b') || pairing_id_len > 64)
        return -1;
    EVP_PKEY *own = p256_key(priv, own_point), *peer = p256_key(NULL, peer_point); /* on-curve points only */
    EVP_PKEY_CTX *ctx = own != NULL ? EVP_PKEY_CTX_new_from_pkey(NULL, own, NULL) : NULL;
    if (ctx == NULL || peer == NULL || EVP_PKEY_derive_init(ctx) <= 0 || EVP_PKEY_derive_set_peer(ctx, peer) <= 0 ||
        EVP_PKEY_derive(ctx, z, &z_len) <= 0 || z_len != 32)
        goto done;
    /* info = label || pairing id || session id || Q_a || Q_b: entity a's point first, whoever derives */
    memcpy(info, label, n);
    memcpy(info + n, pairing_id, pairing_id_len);
    n += pairing_id_len;
    memcpy(info + n, session_id, 16);
    n += 16;
    memcpy(info + n, role == 'a' ? own_point : peer_point, MB_POINT_BYTES);
    memcpy(info + n + MB_POINT_BYTES, role == 'a' ? peer_point : own_point, MB_POINT_BYTES);
    n += 2 * MB_POINT_BYTES;
    ok = mb_hkdf_sha256(z, 32, NULL, 0, info, n, secret, MB_KEY_BYTES);
done:
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(own);
    EVP_PKEY_free(peer);
    return ok;
}
