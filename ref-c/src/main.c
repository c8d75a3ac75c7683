/*
 * modbatt-ref: runs known-answer cases given one per line on stdin and prints one result line per
 * case on stdout. A line is an operation name followed by key=value tokens (numbers in decimal,
 * byte strings in hex, lists comma-separated); the vector harness (tests/test_ref_c.py) only
 * flattens the JSON cases into this form. Operations and their answers: README.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modbatt.h"

#define MAX_TOKENS 32
#define BUF (2 * MB_MAX_PDU + 64)

typedef struct {
    char *key[MAX_TOKENS];
    char *val[MAX_TOKENS];
    int n;
} args;

static const char *get(const args *a, const char *key)
{
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->key[i], key) == 0)
            return a->val[i];
    return NULL;
}

static const char *need(const args *a, const char *key)
{
    const char *v = get(a, key);
    if (v == NULL) {
        fprintf(stderr, "missing %s\n", key);
        exit(2);
    }
    return v;
}

static long long num(const args *a, const char *key) { return strtoll(need(a, key), NULL, 10); }

static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s) / 2;
    if (n > cap) {
        fprintf(stderr, "hex value too long\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            exit(2);
        out[i] = (uint8_t)v;
    }
    return n;
}

static void hex(const char *key, const uint8_t *b, size_t n)
{
    printf(" %s=", key);
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
}

static void fields_of(const args *a, mb_id_fields *f)
{
    f->priority = (uint32_t)num(a, "priority");
    f->direction = (uint32_t)num(a, "direction");
    f->function = (uint32_t)num(a, "function");
    f->node = (uint32_t)num(a, "node");
    f->tier = get(a, "idtier") ? (int)num(a, "idtier") : -1;
}

static void channel_of(const args *a, mb_channel *ch)
{
    uint8_t secret[64];
    memset(ch, 0, sizeof *ch);
    ch->layout = mb_layout_by_name(need(a, "layout"));
    ch->tier = (int)num(a, "tier");
    ch->fd = (int)num(a, "fd");
    ch->direction = (int)num(a, "dir");
    ch->behind = get(a, "behind") ? (unsigned)num(a, "behind") : 64;
    /* A binding channel with a tier secret is the efficient profile's (symmetric); with pub/ctx, seed's. */
    ch->binding_mac = ch->tier == MB_TIER_BINDING && get(a, "secret") != NULL;
    if (ch->tier == MB_TIER_EXCHANGE || ch->tier == MB_TIER_PAIRING || ch->binding_mac) {
        size_t n = unhex(need(a, "secret"), secret, sizeof secret);
        if (mb_traffic_keys(secret, n, ch->tier, ch->direction, ch->classic_key, ch->fd_key))
            exit(3);
    } else if (ch->tier == MB_TIER_BINDING) {
        unhex(need(a, "pub"), ch->peer_point, MB_POINT_BYTES);
        ch->context_len = unhex(need(a, "ctx"), ch->context, sizeof ch->context);
    }
}

static void op_open(const args *a)
{
    mb_channel ch;
    mb_window w;
    uint8_t data[MB_MAX_PDU + 64], out[MB_MAX_PDU + 64];
    size_t out_len = 0;
    uint64_t fv = 0;
    channel_of(a, &ch);
    mb_window_init(&w, (unsigned)num(a, "size"), (int)num(a, "synced"));
    const char *acc = need(a, "accepted");
    for (char *end; *acc; acc = *end ? end + 1 : end) { /* accepted values, committed in order */
        uint64_t v = strtoull(acc, &end, 10);
        if (mb_window_check(&w, v) != MB_OK)
            exit(4);
        mb_window_commit(&w, v);
    }
    size_t len = unhex(need(a, "frame"), data, sizeof data);
    mb_status st = mb_open(&ch, &w, strtoull(need(a, "id"), NULL, 10), data, len, (int)num(a, "reassembled"), out,
                           &out_len, &fv);
    if (st != MB_OK) {
        printf("err %s", mb_status_name(st));
        return;
    }
    printf("ok");
    hex("payload", out, out_len);
    printf(" fv=%llu", (unsigned long long)fv);
}

static void op_protect(const args *a)
{
    mb_channel ch;
    mb_id_fields f;
    uint8_t payload[MB_MAX_PDU], out[MB_MAX_PDU + 128];
    size_t out_len = 0;
    uint32_t id = 0;
    int single = 0;
    channel_of(a, &ch);
    fields_of(a, &f);
    size_t n = unhex(need(a, "payload"), payload, sizeof payload);
    uint64_t fv = strtoull(need(a, "fv"), NULL, 10);
    mb_status st;
    if (ch.tier == MB_TIER_BINDING && !ch.binding_mac) {
        /* The signature comes from the vector (RFC 6979 signing is not part of this subset); the
         * reference builds what it covers and the unit around it, and checks it verifies. */
        uint8_t sig[MB_SIG_BYTES], tbs[MB_MAX_PDU + 512];
        size_t tbs_len;
        unhex(need(a, "sig"), sig, sizeof sig);
        mb_id_fields g = f;
        g.tier = ch.tier;
        if ((st = mb_id_encode(ch.layout, &g, &id)) == MB_OK && (st = mb_binding_tbs(&ch, id, fv, payload, n, tbs,
                                                                                        &tbs_len)) == MB_OK)
            st = mb_binding_unit(fv, payload, n, sig, out, &out_len);
        if (st == MB_OK) {
            mb_window w;
            uint8_t back[MB_MAX_PDU];
            size_t back_len;
            uint64_t got;
            mb_window_init(&w, 32, 1);
            st = mb_open(&ch, &w, id, out, out_len, 1, back, &back_len, &got); /* the signature must verify */
            single = out_len <= (ch.fd ? 64u : 8u);
        }
    } else {
        st = mb_protect(&ch, &f, fv, payload, n, &id, out, &out_len, &single);
    }
    if (st != MB_OK) {
        printf("err %s", mb_status_name(st));
        return;
    }
    printf("ok id=%lu", (unsigned long)id);
    hex("frame", out, out_len);
    printf(" single=%d", single);
}

static void op_window(const args *a)
{
    mb_window w;
    mb_window_init(&w, (unsigned)num(a, "size"), (int)num(a, "synced"));
    printf("ok outcomes=");
    const char *p = need(a, "values");
    for (int first = 1; *p; first = 0) {
        char *end;
        uint64_t v = strtoull(p, &end, 10);
        mb_status st = mb_window_check(&w, v);
        if (st == MB_OK)
            mb_window_commit(&w, v);
        printf("%s%s", first ? "" : ",", st == MB_OK ? "accepted" : mb_status_name(st));
        p = *end ? end + 1 : end;
    }
}

static void run(const char *op, const args *a)
{
    if (strcmp(op, "hkdf") == 0) {
        uint8_t ikm[256], salt[256], info[1024], okm[255 * 32];
        size_t ikm_len = unhex(need(a, "ikm"), ikm, sizeof ikm), info_len = unhex(need(a, "info"), info, sizeof info);
        const char *s = need(a, "salt");
        size_t salt_len = strcmp(s, "-") ? unhex(s, salt, sizeof salt) : 0;
        size_t len = (size_t)num(a, "len");
        if (mb_hkdf_sha256(ikm, ikm_len, strcmp(s, "-") ? salt : NULL, salt_len, info, info_len, okm, len)) {
            printf("err internal");
            return;
        }
        printf("ok");
        hex("okm", okm, len);
    } else if (strcmp(op, "traffic") == 0) {
        uint8_t secret[64], classic[32], fd[32];
        size_t n = unhex(need(a, "secret"), secret, sizeof secret);
        if (mb_traffic_keys(secret, n, (int)num(a, "tier"), (int)num(a, "dir"), classic, fd)) {
            printf("err internal");
            return;
        }
        printf("ok");
        hex("classic", classic, 32);
        hex("fd", fd, 32);
    } else if (strcmp(op, "bindmac") == 0) {
        uint8_t priv[32], own[MB_POINT_BYTES], peer[MB_POINT_BYTES], pid[64], sid[16], z[32], secret[32];
        unhex(need(a, "priv"), priv, sizeof priv);
        unhex(need(a, "own"), own, sizeof own);
        unhex(need(a, "peer"), peer, sizeof peer);
        unhex(need(a, "sid"), sid, sizeof sid);
        size_t pid_len = unhex(need(a, "pid"), pid, sizeof pid);
        if (mb_binding_mac_secret(priv, own, peer, need(a, "role")[0], pid, pid_len, sid, z, secret)) {
            printf("err internal");
            return;
        }
        printf("ok");
        hex("z", z, 32);
        hex("secret", secret, 32);
    } else if (strcmp(op, "iddec") == 0) {
        mb_id_fields f;
        mb_status st = mb_id_decode(mb_layout_by_name(need(a, "layout")), strtoull(need(a, "id"), NULL, 10), &f);
        if (st != MB_OK)
            printf("err %s", mb_status_name(st));
        else
            printf("ok priority=%u direction=%u function=%u node=%u tier=%d", f.priority, f.direction, f.function,
                   f.node, f.tier);
    } else if (strcmp(op, "idenc") == 0) {
        mb_id_fields f;
        uint32_t id;
        fields_of(a, &f);
        mb_status st = mb_id_encode(mb_layout_by_name(need(a, "layout")), &f, &id);
        if (st != MB_OK)
            printf("err %s", mb_status_name(st));
        else
            printf("ok id=%lu", (unsigned long)id);
    } else if (strcmp(op, "recon") == 0) {
        printf("ok value=%llu", (unsigned long long)mb_reconstruct((uint32_t)num(a, "t"), (unsigned)num(a, "bits"),
                                                                  num(a, "latest"), (uint32_t)num(a, "behind")));
    } else if (strcmp(op, "window") == 0) {
        op_window(a);
    } else if (strcmp(op, "protect") == 0) {
        op_protect(a);
    } else if (strcmp(op, "open") == 0) {
        op_open(a);
    } else {
        fprintf(stderr, "unknown operation %s\n", op);
        exit(2);
    }
}

int main(void)
{
    static char line[4 * BUF];
    while (fgets(line, sizeof line, stdin) != NULL) {
        args a = {0};
        char *save = NULL, *tok = strtok_r(line, " \n", &save), *op = tok;
        if (op == NULL)
            continue;
        while ((tok = strtok_r(NULL, " \n", &save)) != NULL && a.n < MAX_TOKENS) {
            char *eq = strchr(tok, '=');
            if (eq == NULL)
                return 2;
            *eq = '\0';
            a.key[a.n] = tok;
            a.val[a.n++] = eq + 1;
        }
        run(op, &a);
        printf("\n");
        fflush(stdout);
    }
    return 0;
}
