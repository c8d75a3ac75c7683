/* Receiver freshness: the replay window and truncated-value reconstruction (spec §5.4). */
#include "modbatt.h"

void mb_window_init(mb_window *w, unsigned size, int synced)
{
    w->highest = -1;
    w->bitmap = 0;
    w->size = size;
    w->synced = synced;
}

mb_status mb_window_check(const mb_window *w, uint64_t v)
{
    if (!w->synced)
        return MB_STALE;
    if ((int64_t)v > w->highest)
        return v > MB_FV_MAX ? MB_MALFORMED : MB_OK;
    uint64_t o = (uint64_t)(w->highest - (int64_t)v);
    if (o >= w->size)
        return MB_STALE;
    return (w->bitmap >> o) & 1 ? MB_REPLAY : MB_OK;
}

void mb_window_commit(mb_window *w, uint64_t v)
{
    uint64_t mask = w->size >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << w->size) - 1);
    if ((int64_t)v > w->highest) {
        uint64_t shift = (uint64_t)((int64_t)v - w->highest);
        w->bitmap = shift < w->size ? ((w->bitmap << shift) | 1) & mask : 1;
        w->highest = (int64_t)v;
    } else {
        w->bitmap |= (uint64_t)1 << (uint64_t)(w->highest - (int64_t)v);
    }
}

uint64_t mb_reconstruct(uint32_t truncated, unsigned bits, int64_t latest, uint32_t behind)
{
    uint64_t modulus = (uint64_t)1 << bits;
    int64_t low = latest + 1 - (int64_t)behind;
    if (low < 0)
        low = 0;
    return (uint64_t)low + (((uint64_t)truncated - (uint64_t)low) & (modulus - 1));
}
