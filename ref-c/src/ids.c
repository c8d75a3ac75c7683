/* CAN identifier layouts as tables (spec §7). */
#include <string.h>

#include "modbatt.h"

enum { SIG_NONE, SIG_FLAG_LEVEL, SIG_LEVEL3 };
enum { F_NODE, F_FUNCTION, F_PRIORITY, F_DIRECTION, F_FLAG, F_LEVEL, F_COUNT };

typedef struct {
    int present;
    int nseg;
    struct { int lsb, width; } seg[2]; /* least significant segment first */
    int offset;
} field_def;

struct mb_layout {
    const char *name;
    int bits;
    int tier_signal;
    field_def f[F_COUNT];
};

#define SEG1(l, w) {1, 1, {{l, w}, {0, 0}}, 0}

static const mb_layout LAYOUTS[] = {
    {"seed", 29, SIG_FLAG_LEVEL,
     {[F_NODE] = SEG1(0, 8), [F_FUNCTION] = SEG1(8, 9), [F_PRIORITY] = SEG1(26, 3), [F_DIRECTION] = SEG1(20, 1),
      [F_FLAG] = SEG1(17, 1), [F_LEVEL] = SEG1(18, 2)}},
    {"legacy-app", 11, SIG_NONE,
     {[F_FUNCTION] = SEG1(0, 8), [F_NODE] = {1, 1, {{8, 3}, {0, 0}}, -4}}},
    {"legacy-module", 29, SIG_NONE, {[F_NODE] = SEG1(0, 8), [F_FUNCTION] = SEG1(18, 11)}},
    {"j1939", 29, SIG_LEVEL3,
     {[F_NODE] = SEG1(0, 8), [F_FUNCTION] = {1, 2, {{8, 9}, {20, 6}}, 0}, [F_LEVEL] = SEG1(17, 3),
      [F_PRIORITY] = SEG1(26, 3)}},
};

const mb_layout *mb_layout_by_name(const char *name)
{
    for (size_t i = 0; i < sizeof LAYOUTS / sizeof LAYOUTS[0]; i++)
        if (strcmp(LAYOUTS[i].name, name) == 0)
            return &LAYOUTS[i];
    return NULL;
}

int mb_layout_bits(const mb_layout *layout) { return layout->bits; }

static int width(const field_def *d)
{
    int w = 0;
    for (int i = 0; i < d->nseg; i++)
        w += d->seg[i].width;
    return w;
}

static uint64_t used_mask(const mb_layout *l)
{
    uint64_t m = 0;
    for (int k = 0; k < F_COUNT; k++)
        for (int i = 0; l->f[k].present && i < l->f[k].nseg; i++)
            m |= (((uint64_t)1 << l->f[k].seg[i].width) - 1) << l->f[k].seg[i].lsb;
    return m;
}

/* Stores value - offset; MB_MALFORMED when it does not fit the field. */
static mb_status insert(const field_def *d, int64_t value, uint32_t *id)
{
    int64_t raw = value - d->offset;
    if (raw < 0 || raw >= ((int64_t)1 << width(d)))
        return MB_MALFORMED;
    for (int i = 0; i < d->nseg; i++) {
        *id |= (uint32_t)(raw & ((1 << d->seg[i].width) - 1)) << d->seg[i].lsb;
        raw >>= d->seg[i].width;
    }
    return MB_OK;
}

static int64_t extract(const field_def *d, uint64_t id)
{
    int64_t v = 0;
    int shift = 0;
    for (int i = 0; i < d->nseg; i++) {
        v |= (int64_t)((id >> d->seg[i].lsb) & ((1u << d->seg[i].width) - 1)) << shift;
        shift += d->seg[i].width;
    }
    return v + d->offset;
}

mb_status mb_id_encode(const mb_layout *l, const mb_id_fields *f, uint32_t *id)
{
    const uint32_t values[] = {[F_NODE] = f->node, [F_FUNCTION] = f->function, [F_PRIORITY] = f->priority,
                               [F_DIRECTION] = f->direction};
    *id = 0;
    for (int k = F_NODE; k <= F_DIRECTION; k++)
        if (l->f[k].present && insert(&l->f[k], values[k], id) != MB_OK)
            return MB_MALFORMED;
    if (l->tier_signal == SIG_NONE)
        return f->tier > MB_TIER_NONE ? MB_MALFORMED : MB_OK;
    int tier = f->tier < 0 ? MB_TIER_NONE : f->tier;
    if (insert(&l->f[F_LEVEL], tier, id) != MB_OK)
        return MB_MALFORMED;
    if (l->tier_signal == SIG_FLAG_LEVEL && insert(&l->f[F_FLAG], tier != MB_TIER_NONE, id) != MB_OK)
        return MB_MALFORMED;
    return MB_OK;
}

mb_status mb_id_decode(const mb_layout *l, uint64_t id, mb_id_fields *f)
{
    uint32_t *out[] = {[F_NODE] = &f->node, [F_FUNCTION] = &f->function, [F_PRIORITY] = &f->priority,
                       [F_DIRECTION] = &f->direction};
    memset(f, 0, sizeof *f);
    f->tier = -1;
    if (id >> l->bits)                                        /* step 1 */
        return MB_MALFORMED;
    if (id & (~used_mask(l) & (((uint64_t)1 << l->bits) - 1))) /* step 2: reserved bits */
        return MB_MALFORMED;
    for (int k = F_NODE; k <= F_DIRECTION; k++) {             /* step 3 */
        if (!l->f[k].present)
            continue;
        int64_t v = extract(&l->f[k], id);
        if (v < 0)
            return MB_MALFORMED;
        *out[k] = (uint32_t)v;
    }
    if (l->tier_signal == SIG_NONE)                           /* step 4 */
        return MB_OK;
    int64_t level = extract(&l->f[F_LEVEL], id);
    if (level > MB_TIER_BINDING)
        return MB_MALFORMED;
    if (l->tier_signal == SIG_FLAG_LEVEL && extract(&l->f[F_FLAG], id) != (level != MB_TIER_NONE))
        return MB_MALFORMED;
    f->tier = (int)level;
    return MB_OK;
}
