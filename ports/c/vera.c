/* vera.c - the VeRA kit in C99: generator (spec 1), projections (spec 2), SHA-256 (FIPS 180-4,
 * for spec 2.6) and the adapter-file reader (spec 4). See vera.h for the interface. */
#include "vera.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================================== */
/* spec 1.1: constants of Random123's philox.h                                              */
#define PHILOX_M0 0xD2511F53u /* PHILOX_M4x32_0 */
#define PHILOX_M1 0xCD9E8D57u /* PHILOX_M4x32_1 */
#define PHILOX_W0 0x9E3779B9u /* PHILOX_W32_0 */
#define PHILOX_W1 0xBB67AE85u /* PHILOX_W32_1 */
#define PHILOX_ROUNDS 10
/* counters per call of the inner kernel: 16 independent lanes hide the multiply latency (the
 * compiler keeps them in vector registers where it can: SSE2 at -O2 on x86-64); measured in thread
 * CPU time, 16 lanes took 0.78x the time of 4 (bench/rng.py, ports/c/README.md) */
#define LANES 16

void vera_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    int i;
    for (i = 0; i < PHILOX_ROUNDS; i++) { /* spec 1.2: round i uses (k0 + i*W0, k1 + i*W1) */
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void vera_key_of_seed(uint64_t seed, uint32_t key[2])
{
    key[0] = (uint32_t)(seed & 0xFFFFFFFFu); /* spec 1.3: s mod 2^32 */
    key[1] = (uint32_t)(seed >> 32);         /* s div 2^32 */
}

uint32_t vera_table_word(uint64_t seed, uint32_t m, uint32_t g, uint32_t n, uint64_t k)
{
    uint32_t key[2], ctr[4], w[4];
    vera_key_of_seed(seed, key);
    ctr[0] = n; ctr[1] = (uint32_t)(k / 4); ctr[2] = m; ctr[3] = g; /* spec 1.4 */
    vera_philox4x32_10(ctr, key, w);
    return w[k % 4];
}

float vera_kaiming_bound(uint64_t fan_in)
{
    /* spec 1.6: 6.0 / fan_in and sqrt correctly rounded binary64, then RNE to binary32
     * (fan_in < 2^53 converts exactly; the spec's fan_in is at most 2^34) */
    return (float)sqrt(6.0 / (double)fan_in);
}

/* spec 1.5: s = 2*(u >> 8) + 1 - 2^24 = ((u >> 7) | 1) - 2^24, exact in int32 and binary32;
 * value = float32(s) * scale with scale = bound * 2^-24 (exact): the one rounding. */
static float word_value(uint32_t u, float scale)
{
    return (float)((int32_t)((u >> 7) | 1u) - (int32_t)16777216) * scale;
}

float vera_word_to_float(uint32_t u, float bound)
{
    return word_value(u, bound * (1.0f / 16777216.0f));
}

/* LANES counters at once, lanes independent: the compiler keeps them in vector lanes and overlaps
 * their multiplies. Counter of lane j: (c0[j], c1, c2, c3); w[i][j] is its word i. */
static void philox_lanes(const uint32_t c0in[LANES], uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                      uint32_t k1, uint32_t w[4][LANES])
{
    uint32_t a[LANES], b[LANES], c[LANES], d[LANES];
    int i, j;
    for (j = 0; j < LANES; j++) { a[j] = c0in[j]; b[j] = c1; c[j] = c2; d[j] = c3; }
    for (i = 0; i < PHILOX_ROUNDS; i++) {
        for (j = 0; j < LANES; j++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * a[j], p1 = (uint64_t)PHILOX_M1 * c[j];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ b[j] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ d[j] ^ k1;
            a[j] = n0;
            b[j] = (uint32_t)p1;
            c[j] = n2;
            d[j] = (uint32_t)p0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (j = 0; j < LANES; j++) { w[0][j] = a[j]; w[1][j] = b[j]; w[2][j] = c[j]; w[3][j] = d[j]; }
}

#define WORD_LIMIT ((uint64_t)1 << 32) /* spec 1.4: each counter word below 2^32 */

int vera_projection_A_rows(uint64_t seed, uint64_t r, uint64_t n_in, uint32_t group, uint64_t k0,
                           uint64_t rows, float *out)
{
    /* spec 2.1: A[k, n] = value(T[0, g][n, k]), bound from fan_in = n_in; rows k0..k0+rows-1 */
    uint32_t key[2], w[4][LANES], ns[LANES];
    float scale;
    uint64_t q, n, k1 = k0 + rows;
    if (r < 1 || r > 4 * WORD_LIMIT || n_in < 1 || n_in > WORD_LIMIT || k1 < k0 || k1 > r)
        return VERA_EINVAL;
    vera_key_of_seed(seed, key);
    scale = vera_kaiming_bound(n_in) * (1.0f / 16777216.0f);
    for (q = k0 / 4; q * 4 < k1; q++) {
        int j, lo = (int)(q * 4 < k0 ? k0 - q * 4 : 0), hi = (int)(q * 4 + 4 > k1 ? k1 - q * 4 : 4);
        for (n = 0; n < n_in; n += LANES) {
            int lane, lanes = (int)(n_in - n < LANES ? n_in - n : LANES);
            for (lane = 0; lane < LANES; lane++) ns[lane] = (uint32_t)(n + (uint64_t)lane);
            philox_lanes(ns, (uint32_t)q, 0u, group, key[0], key[1], w); /* counter (n, k div 4, 0, g) */
            for (j = lo; j < hi; j++) {
                float *row = out + (size_t)(q * 4 + (uint64_t)j - k0) * (size_t)n_in + (size_t)n;
                if (lanes == LANES) {
                    for (lane = 0; lane < LANES; lane++) row[lane] = word_value(w[j][lane], scale);
                } else {
                    for (lane = 0; lane < lanes; lane++) row[lane] = word_value(w[j][lane], scale);
                }
            }
        }
    }
    return VERA_OK;
}

int vera_projection_B_rows(uint64_t seed, uint64_t r, uint64_t n0, uint64_t rows, uint32_t group,
                           float *out)
{
    /* spec 2.1: B[n, k] = value(T[1, g][n, k]), bound from fan_in = r; rows n0..n0+rows-1 */
    uint32_t key[2], w[4][LANES], ns[LANES];
    float scale;
    uint64_t q, n, n1 = n0 + rows;
    if (r < 1 || r > 4 * WORD_LIMIT || n1 < n0 || n1 > WORD_LIMIT)
        return VERA_EINVAL;
    vera_key_of_seed(seed, key);
    scale = vera_kaiming_bound(r) * (1.0f / 16777216.0f);
    for (n = n0; n < n1; n += LANES) {
        int lane, lanes = (int)(n1 - n < LANES ? n1 - n : LANES);
        for (lane = 0; lane < LANES; lane++) ns[lane] = (uint32_t)(n + (uint64_t)lane);
        for (q = 0; q * 4 < r; q++) {
            int j, hi = (int)(r - q * 4 < 4 ? r - q * 4 : 4);
            philox_lanes(ns, (uint32_t)q, 1u, group, key[0], key[1], w); /* counter (n, k div 4, 1, g) */
            for (lane = 0; lane < lanes; lane++) {
                float *row = out + (size_t)(n - n0 + (uint64_t)lane) * (size_t)r + (size_t)(q * 4);
                for (j = 0; j < hi; j++) row[j] = word_value(w[j][lane], scale);
            }
        }
    }
    return VERA_OK;
}

int vera_projection(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, uint32_t group,
                    float *A, float *B)
{
    if (r < 1 || r > 4 * WORD_LIMIT || n_in < 1 || n_in > WORD_LIMIT || n_out < 1 || n_out > WORD_LIMIT)
        return VERA_EINVAL;
    if (A && vera_projection_A_rows(seed, r, n_in, group, 0, r, A) != VERA_OK) return VERA_EINVAL;
    if (B && vera_projection_B_rows(seed, r, 0, n_out, group, B) != VERA_OK) return VERA_EINVAL;
    return VERA_OK;
}

/* ======================================================================================== */
/* spec 2.5.3: MT19937 (Matsumoto & Nishimura 1998, init_genrand of 2002) and torch's uniform_ */
#define MT_N 624
#define MT_M 397
typedef struct { uint32_t s[MT_N]; int i; } mt19937;

static void mt_init(mt19937 *mt, uint32_t seed)
{
    int i;
    mt->s[0] = seed;
    for (i = 1; i < MT_N; i++)
        mt->s[i] = 1812433253u * (mt->s[i - 1] ^ (mt->s[i - 1] >> 30)) + (uint32_t)i;
    mt->i = MT_N;
}

static uint32_t mt_next(mt19937 *mt)
{
    uint32_t y;
    if (mt->i >= MT_N) {
        int k;
        for (k = 0; k < MT_N; k++) {
            y = (mt->s[k] & 0x80000000u) | (mt->s[(k + 1) % MT_N] & 0x7FFFFFFFu);
            mt->s[k] = mt->s[(k + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908B0DFu : 0u);
        }
        mt->i = 0;
    }
    y = mt->s[mt->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    y ^= y >> 18;
    return y;
}

typedef struct { double lo, span; } peft_uniform;

static peft_uniform peft_bounds(uint64_t fan_in)
{
    /* spec 2.5.3 step 3: bound = sqrt(3.0) * (sqrt(2) / sqrt(fan_in)) in binary64; float32 bounds */
    peft_uniform u;
    double bound = sqrt(3.0) * (sqrt(2.0) / sqrt((double)fan_in));
    float b32 = (float)bound;
    u.lo = -(double)b32;
    u.span = (double)b32 - u.lo; /* hi - lo, exact */
    return u;
}

static float peft_value(mt19937 *mt, peft_uniform u)
{
    /* spec 2.5.3 step 4: x = (draw & 0xFFFFFF) * 2^-24; RNE_binary32(x * (hi - lo) + lo) in binary64.
     * x has 24 bits and hi - lo 24 bits, so the product is exact and a fused multiply-add
     * gives the same result. */
    double x = (double)(mt_next(mt) & 0xFFFFFFu) * (1.0 / 16777216.0);
    return (float)(x * u.span + u.lo);
}

int vera_peft_projection(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, float *A, float *B)
{
    mt19937 mt;
    peft_uniform ua, ub;
    size_t i, na, nb;
    if (r < 1 || n_in < 1 || n_out < 1 || r > SIZE_MAX / n_in || r > SIZE_MAX / n_out) return VERA_EINVAL;
    mt_init(&mt, (uint32_t)(seed & 0xFFFFFFFFu)); /* step 1: torch keeps the low 32 bits */
    ua = peft_bounds(n_in);
    ub = peft_bounds(r);
    na = (size_t)(r * n_in);
    nb = (size_t)(n_out * r);
    for (i = 0; i < na; i++) { /* step 2: A (r, n_in) first, row-major */
        float v = peft_value(&mt, ua);
        if (A) A[i] = v;
    }
    if (B)
        for (i = 0; i < nb; i++) B[i] = peft_value(&mt, ub); /* then B (n_out, r) */
    return VERA_OK;
}

/* ======================================================================================== */
/* SHA-256, FIPS 180-4 section 6.2                                                          */
static const uint32_t SHA_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, hh;
    int t;
    for (t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 | (uint32_t)p[4 * t + 2] << 8 | p[4 * t + 3];
    for (t = 16; t < 64; t++) {
        uint32_t s0 = ROTR(w[t - 15], 7) ^ ROTR(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = ROTR(w[t - 2], 17) ^ ROTR(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
    for (t = 0; t < 64; t++) {
        uint32_t t1 = hh + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + SHA_K[t] + w[t];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void vera_sha256_init(vera_sha256 *s)
{
    static const uint32_t H0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(s->h, H0, sizeof H0);
    s->length = 0;
    s->used = 0;
}

void vera_sha256_update(vera_sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    s->length += n;
    if (s->used) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take; p += take; n -= take;
        if (s->used < 64) return;
        sha_block(s->h, s->block);
        s->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) sha_block(s->h, p);
    if (n) { memcpy(s->block, p, n); s->used = n; }
}

void vera_sha256_final(vera_sha256 *s, unsigned char digest[32])
{
    uint64_t bits = s->length * 8;
    unsigned char pad[72];
    size_t padlen = (s->used < 56 ? 56 : 120) - s->used, i;
    memset(pad, 0, sizeof pad);
    pad[0] = 0x80; /* FIPS 180-4 5.1.1: a 1 bit, zeros, the 64-bit length */
    for (i = 0; i < 8; i++) pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    vera_sha256_update(s, pad, padlen + 8);
    for (i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(s->h[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        digest[4 * i + 3] = (unsigned char)s->h[i];
    }
}

static void sha_floats(vera_sha256 *s, const float *v, size_t n)
{
    unsigned char buf[4096];
    while (n) {
        size_t i, m = n < sizeof buf / 4 ? n : sizeof buf / 4;
        for (i = 0; i < m; i++) { /* spec 2.6: binary32, little-endian */
            uint32_t u;
            memcpy(&u, v + i, 4);
            buf[4 * i] = (unsigned char)u; buf[4 * i + 1] = (unsigned char)(u >> 8);
            buf[4 * i + 2] = (unsigned char)(u >> 16); buf[4 * i + 3] = (unsigned char)(u >> 24);
        }
        vera_sha256_update(s, buf, 4 * m);
        v += m; n -= m;
    }
}

void vera_sha256_floats(const float *values, size_t n, unsigned char digest[32])
{
    vera_sha256 s;
    vera_sha256_init(&s);
    sha_floats(&s, values, n);
    vera_sha256_final(&s, digest);
}

void vera_hex(const unsigned char digest[32], char hex[65])
{
    static const char X[] = "0123456789abcdef";
    int i;
    for (i = 0; i < 32; i++) { hex[2 * i] = X[digest[i] >> 4]; hex[2 * i + 1] = X[digest[i] & 15]; }
    hex[64] = '\0';
}


/* spec 2.6: the checksums of a projection pair, made a band at a time (memory O(n_in + r)). */
int vera_projection_sha256(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, uint32_t group,
                           unsigned char A[32], unsigned char B[32])
{
    vera_sha256 s;
    float *buf;
    uint64_t k, n, band;
    if (r < 1 || r > 4 * WORD_LIMIT || n_in < 1 || n_in > WORD_LIMIT || n_out < 1 || n_out > WORD_LIMIT)
        return VERA_EINVAL;
    band = r < 16384 ? 16384 / r : 1; /* rows of B per band */
    if (band > n_out) band = n_out;
    if ((uint64_t)4 * n_in > SIZE_MAX / sizeof(float) || band * r > SIZE_MAX / sizeof(float)) return VERA_EINVAL;
    buf = (float *)malloc((size_t)(4 * n_in > band * r ? 4 * n_in : band * r) * sizeof(float));
    if (!buf) return VERA_EINVAL;
    vera_sha256_init(&s);
    for (k = 0; k < r; k += 4) { /* A (r, n_in): four rows per Philox block */
        uint64_t rows = r - k < 4 ? r - k : 4;
        vera_projection_A_rows(seed, r, n_in, group, k, rows, buf);
        sha_floats(&s, buf, (size_t)(rows * n_in));
    }
    vera_sha256_final(&s, A);
    vera_sha256_init(&s);
    for (n = 0; n < n_out; n += band) { /* B (n_out, r) */
        uint64_t rows = n_out - n < band ? n_out - n : band;
        vera_projection_B_rows(seed, r, n, rows, group, buf);
        sha_floats(&s, buf, (size_t)(rows * r));
    }
    vera_sha256_final(&s, B);
    free(buf);
    return VERA_OK;
}

int vera_peft_sha256(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, unsigned char A[32],
                     unsigned char B[32])
{
    mt19937 mt;
    peft_uniform u;
    vera_sha256 s;
    float buf[1024];
    uint64_t left;
    int which;
    if (r < 1 || n_in < 1 || n_out < 1 || r > UINT64_MAX / n_in || r > UINT64_MAX / n_out) return VERA_EINVAL;
    mt_init(&mt, (uint32_t)(seed & 0xFFFFFFFFu));
    for (which = 0; which < 2; which++) { /* spec 2.5.3: A (r, n_in) then B (n_out, r), one stream */
        u = peft_bounds(which == 0 ? n_in : r);
        left = which == 0 ? r * n_in : n_out * r;
        vera_sha256_init(&s);
        while (left) {
            size_t i, m = left < 1024 ? (size_t)left : 1024;
            for (i = 0; i < m; i++) buf[i] = peft_value(&mt, u);
            sha_floats(&s, buf, m);
            left -= m;
        }
        vera_sha256_final(&s, which == 0 ? A : B);
    }
    return VERA_OK;
}
