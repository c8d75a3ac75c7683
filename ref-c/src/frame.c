/* Secured frame codec (spec §5.1-5.5). */
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "modbatt.h"

#define CLASSIC_TAG 4
#define FD_TAG 16
#define CLASSIC_OVERHEAD (1 + CLASSIC_TAG)         /* FV low byte + tag */
#define FD_OVERHEAD (MB_FV_BYTES + 1 + FD_TAG)     /* FV + pad count + tag = 24 */
#define BINDING_OVERHEAD (MB_FV_BYTES + MB_SIG_BYTES) /* 71 */

static const char SIG_LABEL[] = "modbatt/v2/sig/can-frame";

const char *mb_status_name(mb_status s)
{
    static const char *names[] = {"ok", "malformed", "oversized", "bad_mac", "bad_signature", "stale",
                                  "replay", "wrong_level", "tier_too_low", "internal"};
    return names[s];
}

static size_t field_size(const mb_channel *ch) { return ch->fd ? 64 : 8; }

/* The largest unit that travels as one frame: none for the binding tier, multi-frame only in every
 * profile (spec §5.1), so its framing follows from the identifier. */
static size_t single_field(const mb_channel *ch) { return ch->tier == MB_TIER_BINDING ? 0 : field_size(ch); }

/* A binding channel that signs (seed) rather than seals (efficient). */
static int signs(const mb_channel *ch) { return ch->tier == MB_TIER_BINDING && !ch->binding_mac; }

/* The smallest valid CAN FD data length >= x (x <= 64). */
static size_t fdlen(size_t x)
{
    static const size_t lengths[] = {12, 16, 20, 24, 32, 48, 64};
    if (x <= 8)
        return x;
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++)
        if (x <= lengths[i])
            return lengths[i];
    return 0;
}

static void put_fv(uint8_t *out, uint64_t fv)
{
    for (int i = MB_FV_BYTES - 1; i >= 0; i--, fv >>= 8)
        out[i] = (uint8_t)fv;
}

static uint64_t get_fv(const uint8_t *in)
{
    uint64_t fv = 0;
    for (int i = 0; i < MB_FV_BYTES; i++)
        fv = (fv << 8) | in[i];
    return fv;
}

/* N = d[1] || I[4] || FV[7], I with bit 31 set for a 29-bit identifier (spec §5.2). */
static void nonce(const mb_channel *ch, uint32_t id, uint64_t fv, uint8_t n[12])
{
    uint32_t i = id | (mb_layout_bits(ch->layout) == 29 ? 0x80000000u : 0);
    n[0] = (uint8_t)ch->direction;
    n[1] = (uint8_t)(i >> 24);
    n[2] = (uint8_t)(i >> 16);
    n[3] = (uint8_t)(i >> 8);
    n[4] = (uint8_t)i;
    put_fv(n + 5, fv);
}

/* One AEAD operation. gcm selects GCM (16-byte tag) or CCM (4-byte tag); aad may be empty.
 * Encrypt: ct and tag out. Decrypt: ct and tag in, pt out; MB_BAD_MAC when the tag fails. */
static mb_status aead(int gcm, int encrypt, const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad,
                      size_t aad_len, const uint8_t *in, size_t n, uint8_t *out, uint8_t *tag)
{
    const size_t tag_len = gcm ? FD_TAG : CLASSIC_TAG;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    mb_status st = MB_INTERNAL;
    int len = 0;
    if (c == NULL)
        return MB_INTERNAL;
    if (EVP_CipherInit_ex(c, gcm ? EVP_aes_256_gcm() : EVP_aes_256_ccm(), NULL, NULL, NULL, encrypt) <= 0 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) <= 0)
        goto done;
    /* CCM fixes the tag length before the key (NIST SP 800-38C: M is a parameter of the mode). */
    if (!gcm && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, (int)tag_len, encrypt ? NULL : tag) <= 0)
        goto done;
    if (EVP_CipherInit_ex(c, NULL, NULL, key, iv, encrypt) <= 0)
        goto done;
    if (!gcm && EVP_CipherUpdate(c, NULL, &len, NULL, (int)n) <= 0) /* CCM: the message length first */
        goto done;
    if (aad_len > 0 && EVP_CipherUpdate(c, NULL, &len, aad, (int)aad_len) <= 0)
        goto done;
    if (gcm && !encrypt && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, (int)tag_len, tag) <= 0)
        goto done;
    if (EVP_CipherUpdate(c, out, &len, in, (int)n) <= 0) {
        st = encrypt ? MB_INTERNAL : MB_BAD_MAC; /* CCM verifies the tag here */
        goto done;
    }
    if (EVP_CipherFinal_ex(c, out + len, &len) <= 0) {
        st = encrypt ? MB_INTERNAL : MB_BAD_MAC; /* GCM verifies the tag here */
        goto done;
    }
    if (encrypt && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, (int)tag_len, tag) <= 0)
        goto done;
    st = MB_OK;
done:
    EVP_CIPHER_CTX_free(c);
    return st;
}

static uint32_t stamp(const mb_channel *ch, const mb_id_fields *fields, mb_status *st)
{
    mb_id_fields f = *fields;
    uint32_t id = 0;
    f.tier = ch->tier; /* step 1 of §5.3: the channel's tier, whatever the caller said */
    *st = mb_id_encode(ch->layout, &f, &id);
    return id;
}

mb_status mb_protect(const mb_channel *ch, const mb_id_fields *fields, uint64_t fv, const uint8_t *payload,
                     size_t n, uint32_t *id, uint8_t *out, size_t *out_len, int *single_frame)
{
    mb_status st;
    uint8_t iv[12];
    *id = stamp(ch, fields, &st);
    if (st != MB_OK)
        return st;
    if (fv > MB_FV_MAX)
        return MB_MALFORMED;
    nonce(ch, *id, fv, iv);
    if (ch->tier == MB_TIER_NONE) {
        size_t len = n;
        if (ch->fd && n <= single_field(ch))
            len = fdlen(n);
        if (len > MB_MAX_PDU)
            return MB_OVERSIZED;
        memcpy(out, payload, n);
        memset(out + n, 0, len - n);
        *out_len = len;
    } else if (signs(ch)) {
        return MB_INTERNAL; /* signed binding units are built with mb_binding_unit around a signature */
    } else if (!ch->fd) {
        /* C[n] || FV low byte || T[4] */
        if (n + CLASSIC_OVERHEAD > MB_MAX_PDU)
            return MB_OVERSIZED;
        st = aead(0, 1, ch->classic_key, iv, NULL, 0, payload, n, out, out + n + 1);
        if (st != MB_OK)
            return st;
        out[n] = (uint8_t)(fv & 0xFF);
        *out_len = n + CLASSIC_OVERHEAD;
    } else {
        /* FV[7] || p || C[n] || T[16] || 00 x p */
        size_t u = n + FD_OVERHEAD;
        if (u > MB_MAX_PDU)
            return MB_OVERSIZED;
        uint8_t p = (uint8_t)(u <= single_field(ch) ? fdlen(u) - u : 0);
        put_fv(out, fv);
        out[MB_FV_BYTES] = p;
        st = aead(1, 1, ch->fd_key, iv, &p, 1, payload, n, out + MB_FV_BYTES + 1, out + MB_FV_BYTES + 1 + n);
        if (st != MB_OK)
            return st;
        memset(out + u, 0, p);
        *out_len = u + p;
    }
    *single_frame = *out_len <= single_field(ch);
    return MB_OK;
}

mb_status mb_binding_tbs(const mb_channel *ch, uint32_t id, uint64_t fv, const uint8_t *payload, size_t n,
                         uint8_t *tbs, size_t *tbs_len)
{
    /* len(L) || L || Q || K || N || payload, Q = the signer's compressed public key (the label is
     * key-hiding), K = len(c) || c or empty (spec §5.1) */
    size_t k = 0, label_len = sizeof SIG_LABEL - 1;
    tbs[k++] = (uint8_t)label_len;
    memcpy(tbs + k, SIG_LABEL, label_len);
    k += label_len;
    memcpy(tbs + k, ch->peer_point, MB_POINT_BYTES);
    k += MB_POINT_BYTES;
    if (ch->context_len > 0) {
        if (ch->context_len < 2 || ch->context_len > 255)
            return MB_MALFORMED;
        tbs[k++] = (uint8_t)ch->context_len;
        memcpy(tbs + k, ch->context, ch->context_len);
        k += ch->context_len;
    }
    nonce(ch, id, fv, tbs + k);
    k += 12;
    memcpy(tbs + k, payload, n);
    *tbs_len = k + n;
    return MB_OK;
}

mb_status mb_binding_unit(uint64_t fv, const uint8_t *payload, size_t n, const uint8_t sig[MB_SIG_BYTES],
                          uint8_t *out, size_t *out_len)
{
    if (n + BINDING_OVERHEAD > MB_MAX_PDU)
        return MB_OVERSIZED;
    put_fv(out, fv);
    memcpy(out + MB_FV_BYTES, payload, n);
    memcpy(out + MB_FV_BYTES + n, sig, MB_SIG_BYTES);
    *out_len = n + BINDING_OVERHEAD;
    return MB_OK;
}

/* ECDSA P-256 / SHA-256 over msg with a raw r || s signature and a compressed public key. */
static mb_status verify_p256(const uint8_t point[MB_POINT_BYTES], const uint8_t *msg, size_t len,
                             const uint8_t sig[MB_SIG_BYTES])
{
    static const uint8_t order[32] = {0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF,
                                      0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17,
                                      0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51};
    /* floor(n / 2): suite v1 signers emit low S only (s <= n/2), so (r, n - s) is no second signature. */
    static const uint8_t half_order[32] = {0x7F, 0xFF, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00, 0x7F, 0xFF, 0xFF,
                                           0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xDE, 0x73, 0x7D, 0x56, 0xD3, 0x8B,
                                           0xCF, 0x42, 0x79, 0xDC, 0xE5, 0x61, 0x7E, 0x31, 0x92, 0xA8};
    static const uint8_t zero[32] = {0};
    /* r and s must lie in [1, n-1], and s in [1, n/2]: anything else no signer makes (malformed,
     * spec §5.5 step 7), checked before any curve arithmetic. */
    for (int i = 0; i < 2; i++)
        if (memcmp(sig + 32 * i, zero, 32) == 0 || memcmp(sig + 32 * i, order, 32) >= 0)
            return MB_MALFORMED;
    if (memcmp(sig + 32, half_order, 32) > 0)
        return MB_MALFORMED;
    mb_status st = MB_INTERNAL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pkey = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    unsigned char *der = NULL;
    int der_len;
    if (!bld || !kctx || !md || !es || !r || !s ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, MB_POINT_BYTES) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL || EVP_PKEY_fromdata_init(kctx) <= 0)
        goto done;
    if (EVP_PKEY_fromdata(kctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        st = MB_BAD_SIGNATURE; /* no valid key: nothing verifies */
        goto done;
    }
    if (!ECDSA_SIG_set0(es, r, s))
        goto done;
    r = s = NULL; /* owned by es now */
    if ((der_len = i2d_ECDSA_SIG(es, &der)) <= 0 || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pkey) <= 0)
        goto done;
    st = EVP_DigestVerify(md, der, (size_t)der_len, msg, len) == 1 ? MB_OK : MB_BAD_SIGNATURE;
done:
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(kctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return st;
}

mb_status mb_open(const mb_channel *ch, mb_window *w, uint64_t id64, const uint8_t *data, size_t len, int reassembled,
                  uint8_t *out, size_t *out_len, uint64_t *fv_out)
{
    mb_id_fields f;
    mb_status st = mb_id_decode(ch->layout, id64, &f); /* step 1 */
    uint8_t iv[12];
    uint64_t fv;
    if (st != MB_OK)
        return st;
    uint32_t id = (uint32_t)id64;
    if (f.tier >= 0 && f.tier != ch->tier) /* step 2 */
        return f.tier < ch->tier ? MB_TIER_TOO_LOW : MB_WRONG_LEVEL;
    size_t limit = reassembled ? MB_MAX_PDU : single_field(ch); /* step 3 */
    if (len > limit)
        return MB_OVERSIZED;
    if (ch->fd && !reassembled && len > 8 && fdlen(len) != len)
        return MB_MALFORMED;
    if (ch->tier == MB_TIER_NONE) { /* step 4 */
        memcpy(out, data, len);
        *out_len = len;
        *fv_out = 0;
        return MB_OK;
    }
    size_t overhead = signs(ch) ? BINDING_OVERHEAD : ch->fd ? FD_OVERHEAD : CLASSIC_OVERHEAD;
    if (len < overhead) /* step 5 */
        return MB_MALFORMED;
    if (signs(ch)) { /* step 7 */
        uint8_t tbs[1 + sizeof SIG_LABEL + MB_POINT_BYTES + 256 + 12 + MB_MAX_PDU];
        size_t tbs_len, n = len - BINDING_OVERHEAD;
        fv = get_fv(data);
        if ((st = mb_window_check(w, fv)) != MB_OK)
            return st;
        if ((st = mb_binding_tbs(ch, id, fv, data + MB_FV_BYTES, n, tbs, &tbs_len)) != MB_OK)
            return st;
        if ((st = verify_p256(ch->peer_point, tbs, tbs_len, data + len - MB_SIG_BYTES)) != MB_OK)
            return st;
        memcpy(out, data + MB_FV_BYTES, n);
        *out_len = n;
    } else if (!ch->fd) { /* step 6 */
        uint8_t tag[CLASSIC_TAG];
        size_t n = len - CLASSIC_OVERHEAD;
        fv = mb_reconstruct(data[n], 8, w->highest, ch->behind);
        if ((st = mb_window_check(w, fv)) != MB_OK)
            return st;
        nonce(ch, id, fv, iv);
        memcpy(tag, data + n + 1, CLASSIC_TAG);
        if ((st = aead(0, 0, ch->classic_key, iv, NULL, 0, data, n, out, tag)) != MB_OK)
            return st;
        *out_len = n;
    } else { /* step 8 */
        uint8_t p = data[MB_FV_BYTES], tag[FD_TAG];
        if (p != 0) {
            if (p > len - FD_OVERHEAD)
                return MB_MALFORMED;
            for (size_t i = len - p; i < len; i++)
                if (data[i] != 0)
                    return MB_MALFORMED;
        }
        fv = get_fv(data);
        if ((st = mb_window_check(w, fv)) != MB_OK)
            return st;
        nonce(ch, id, fv, iv);
        size_t n = len - p - FD_OVERHEAD;
        memcpy(tag, data + len - p - FD_TAG, FD_TAG);
        if ((st = aead(1, 0, ch->fd_key, iv, &p, 1, data + MB_FV_BYTES + 1, n, out, tag)) != MB_OK)
            return st;
        *out_len = n;
    }
    mb_window_commit(w, fv); /* step 9 */
    *fv_out = fv;
    return MB_OK;
}
