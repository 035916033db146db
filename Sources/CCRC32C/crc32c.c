// CRC32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78), the
// iSCSI header and data digest: RFC 7143 §13.1, RFC 3720 Appendix B.4.
#include "crc32c.h"
#include <string.h>

static uint32_t table[8][256];
static int table_ready;
static int use_hw = -1;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = table[0][i];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xff] ^ (c >> 8);
            table[t][i] = c;
        }
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

/// Slicing-by-8 software fallback.
static uint32_t crc32c_sw(uint32_t crc, const uint8_t *p, size_t len) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();
    while (len && ((uintptr_t)p & 7)) { crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8); len--; }
    while (len >= 8) {
        uint64_t w; memcpy(&w, p, 8);
        w ^= crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][(w >> 56) & 0xff];
        p += 8; len -= 8;
    }
    while (len--) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
#include <pthread.h>

// The crc32 instruction has a latency of 3 cycles and a throughput of 1, so one
// dependent stream runs at a third of the unit's speed. Three streams over
// adjacent blocks run at full speed; their CRCs are then joined by shifting the
// first over the following block's length in zeros (CRC is linear over GF(2)
// when the register is not complemented, as here) and xoring in the next.
#define CRC32C_LONG 8192
#define CRC32C_SHORT 256

// shift_long[k][b]: the register after CRC32C_LONG zero bytes, starting from
// byte b in position k of the register (and zeros elsewhere); same for short.
static uint32_t shift_long[4][256];
static uint32_t shift_short[4][256];
static pthread_once_t shift_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw_zeros(uint32_t crc, size_t len) {
    uint64_t c = crc;
    for (size_t i = 0; i < len; i += 8) c = __builtin_ia32_crc32di(c, 0);
    return (uint32_t)c;
}

static void build_shift_table(uint32_t table[4][256], size_t len) {
    uint32_t bit[32];
    for (int b = 0; b < 32; b++) bit[b] = crc32c_hw_zeros(1u << b, len);
    for (int k = 0; k < 4; k++) {
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t r = 0;
            for (int b = 0; b < 8; b++) if (v & (1u << b)) r ^= bit[8 * k + b];
            table[k][v] = r;
        }
    }
}

static void build_shift_tables(void) {
    build_shift_table(shift_long, CRC32C_LONG);
    build_shift_table(shift_short, CRC32C_SHORT);
}

static inline uint32_t shift(uint32_t table[4][256], uint32_t crc) {
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

// Three streams over the next 3 x `block` bytes at *p, joined into `c`; advances *p.
__attribute__((target("sse4.2")))
static inline uint64_t crc32c_3way(uint64_t c, const uint8_t **p, size_t block, uint32_t table[4][256]) {
    const uint8_t *q = *p;
    const uint8_t *end = q + block;
    uint64_t c1 = 0, c2 = 0;
    do {
        uint64_t w0, w1, w2;
        memcpy(&w0, q, 8); memcpy(&w1, q + block, 8); memcpy(&w2, q + 2 * block, 8);
        c = __builtin_ia32_crc32di(c, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
        q += 8;
    } while (q < end);
    c = shift(table, (uint32_t)c) ^ (uint32_t)c1;
    c = shift(table, (uint32_t)c) ^ (uint32_t)c2;
    *p = q + 2 * block;
    return c;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); len--; }
    if (len >= 3 * CRC32C_SHORT) pthread_once(&shift_once, build_shift_tables);
    for (; len >= 3 * CRC32C_LONG; len -= 3 * CRC32C_LONG) c = crc32c_3way(c, &p, CRC32C_LONG, shift_long);
    for (; len >= 3 * CRC32C_SHORT; len -= 3 * CRC32C_SHORT) c = crc32c_3way(c, &p, CRC32C_SHORT, shift_short);
    while (len >= 8) { uint64_t w; memcpy(&w, p, 8); c = __builtin_ia32_crc32di(c, w); p += 8; len -= 8; }
    while (len--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

int livemount_crc32c_hardware(void) {
    if (use_hw < 0) {
#if defined(__x86_64__)
        __builtin_cpu_init();
        use_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
        use_hw = 0;
#endif
    }
    return use_hw;
}

uint32_t livemount_crc32c_update_portable(uint32_t crc, const void *data, size_t len) {
    return crc32c_sw(crc, (const uint8_t *)data, len);
}

uint32_t livemount_crc32c_update(uint32_t crc, const void *data, size_t len) {
#if defined(__x86_64__)
    if (livemount_crc32c_hardware()) return crc32c_hw(crc, (const uint8_t *)data, len);
#endif
    return crc32c_sw(crc, (const uint8_t *)data, len);
}
