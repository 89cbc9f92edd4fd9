/* vera.h - VeRA kit port in C99: the generator (spec 1), the projections (spec 2), SHA-256
 * checksums (spec 2.6) and a strict reader of adapter files (spec 4), from the text of spec/.
 *
 * No dependencies beyond the C library (libm's sqrt; POSIX open/fstat/pread where available
 * for the path checks of spec 4.6 step 0). Compile vera.c with your program, link with -lm.
 * Clause numbers in comments refer to spec/ of the VeRA reference kit (version 1.1).
 */
#ifndef VERA_H
#define VERA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- spec 1: Philox4x32-10 ------------------------------------------------------------ */

/* spec 1.1-1.2: out = Philox4x32-10(counter ctr, key) with Random123's constants. */
void vera_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* spec 1.3: key = (seed mod 2^32, seed div 2^32). */
void vera_key_of_seed(uint64_t seed, uint32_t key[2]);

/* spec 1.4: T[m, g][n, k] = word (k mod 4) of Philox4x32-10((n, k div 4, m, g), key). */
uint32_t vera_table_word(uint64_t seed, uint32_t m, uint32_t g, uint32_t n, uint64_t k);

/* spec 1.6: bound = RNE_binary32(sqrt_binary64(6.0 / fan_in)); fan_in >= 1. */
float vera_kaiming_bound(uint64_t fan_in);

/* spec 1.5: the word u as a binary32 value in (-bound, bound). */
float vera_word_to_float(uint32_t u, float bound);

/* ---- spec 2: projections into caller-provided buffers --------------------------------- */

#define VERA_OK 0
#define VERA_EINVAL (-1) /* an argument out of the range of spec 1.4 / 2.1 */

/* spec 2.1: A (r, n_in) and B (n_out, r), binary32, row-major, for group g of seed.
 * A must hold r*n_in floats, B n_out*r floats (either may be NULL to skip it).
 * Ranges (spec 1.4): 1 <= r <= 2^34, 1 <= n_in, n_out <= 2^32 (the counter word n), g < 2^32;
 * returns VERA_EINVAL otherwise. */
int vera_projection(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, uint32_t group,
                    float *A, float *B);

/* The same values a band at a time, for streaming: rows k0..k0+rows-1 of A (rows*n_in floats,
 * row-major), or rows n0..n0+rows-1 of B (rows*r floats). */
int vera_projection_A_rows(uint64_t seed, uint64_t r, uint64_t n_in, uint32_t group, uint64_t k0,
                           uint64_t rows, float *out);
int vera_projection_B_rows(uint64_t seed, uint64_t r, uint64_t n0, uint64_t rows, uint32_t group,
                           float *out);

/* spec 2.5.3: PEFT's projections (MT19937 stream, torch's uniform_), A (r, n_in) then B (n_out, r). */
int vera_peft_projection(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, float *A, float *B);

/* ---- SHA-256 (FIPS 180-4), for the checksums of spec 2.6 ------------------------------- */

typedef struct {
    uint32_t h[8];
    uint64_t length; /* bytes hashed so far */
    unsigned char block[64];
    size_t used;
} vera_sha256;

void vera_sha256_init(vera_sha256 *s);
void vera_sha256_update(vera_sha256 *s, const void *data, size_t n);
void vera_sha256_final(vera_sha256 *s, unsigned char digest[32]);
/* spec 2.6: the checksum of n binary32 values: their little-endian bytes. */
void vera_sha256_floats(const float *values, size_t n, unsigned char digest[32]);
/* 64 lowercase hex digits and a NUL. */
void vera_hex(const unsigned char digest[32], char hex[65]);

/* spec 2.6: the checksums of A and B computed a band at a time (memory O(n_in + r), no full
 * matrix), for Philox (spec 2.1) and for peft-mt19937 (spec 2.5.3). */
int vera_projection_sha256(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, uint32_t group,
                           unsigned char A[32], unsigned char B[32]);
int vera_peft_sha256(uint64_t seed, uint64_t r, uint64_t n_in, uint64_t n_out, unsigned char A[32],
                     unsigned char B[32]);

/* ---- spec 4: the adapter file -------------------------------------------------------- */

enum vera_generator { VERA_GEN_PHILOX = 0, VERA_GEN_STORED = 1, VERA_GEN_PEFT_MT19937 = 2 };
enum vera_sharing { VERA_SHARED = 0, VERA_PER_MODULE = 1 };
enum vera_tensor_layout { VERA_LAYOUT_PER_MODULE = 0, VERA_LAYOUT_PACKED = 1 };
enum vera_dtype { VERA_F64 = 0, VERA_F32 = 1, VERA_F16 = 2, VERA_BF16 = 3 };

/* A rejection (spec 4.6): the rule's code and field are normative; the problem is ours.
 * field holds at most 120 characters (spec 4.6.1) as UTF-8 (lone surrogates of \u escapes
 * as their 3-byte form), NUL-terminated; field_len counts its bytes (it may hold a NUL). */
#define VERA_FIELD_MAX 484
typedef struct {
    char code[16];
    char field[VERA_FIELD_MAX];
    size_t field_len;
    char problem[160];
} vera_error;

typedef struct {
    uint64_t max_projection_elements; /* spec 4.6 step 22; 0 means the default 2^28 */
    int skip_checksums;               /* nonzero: skip step 26 (the default verifies) */
} vera_options;

typedef struct {
    char *name; /* module_prefix + name, NUL-terminated ASCII (spec 4.3) */
    uint64_t in_features, out_features;
    int conv1d; /* layout: 0 linear, 1 conv1d */
} vera_module;

typedef struct {
    char *name; /* NUL-terminated; name_len bytes (a name may hold \u0000) */
    size_t name_len;
    int dtype; /* enum vera_dtype */
    int ndim;
    uint64_t shape[16];
    uint64_t begin, end; /* data_offsets, relative to the data section */
} vera_tensor;

typedef struct vera_adapter vera_adapter;
struct vera_adapter {
    int spec_major, spec_minor;
    uint64_t r;
    int generator; /* enum vera_generator */
    uint64_t seed; /* unused for stored */
    uint64_t n_in, n_out;
    int sharing;       /* enum vera_sharing */
    int tensor_layout; /* enum vera_tensor_layout */
    int vector_dtype;  /* enum vera_dtype */
    double d_initial, dropout;
    size_t n_modules;
    vera_module *modules;
    size_t n_extra;
    char **extra; /* extra tensor names */
    size_t n_groups;
    uint32_t *groups;                /* group numbers: {0} or {1..M} (spec 2.4) */
    unsigned char (*sha256)[2][32];  /* per group: A, B as the file records them */
    size_t n_tensors;
    vera_tensor *tensors; /* ascending name order */
    uint64_t data_start;  /* file offset of the data section: 8 + N */
    void *source_;        /* private */
};

/* Read and check an adapter file (spec 4.6, every step in order). Returns 0 and sets *out, or
 * nonzero with *err filled (its code E4.6.<step>.<n>). Free with vera_adapter_free. */
int vera_adapter_open(const char *path, const vera_options *opt, vera_adapter **out, vera_error *err);
/* The same for a file held in memory; buf must outlive the adapter. */
int vera_adapter_open_memory(const void *buf, size_t len, const vera_options *opt, vera_adapter **out,
                             vera_error *err);
void vera_adapter_free(vera_adapter *ad);

/* The tensor named name (name_len bytes), or NULL. */
const vera_tensor *vera_adapter_tensor(const vera_adapter *ad, const char *name, size_t name_len);
/* Copy a tensor's stored bytes (end - begin of them) into buf. 0 on success. */
int vera_adapter_read_tensor(const vera_adapter *ad, const vera_tensor *t, void *buf, size_t bufsize);
/* Module i's lambda_d (r values) or lambda_b (out_features values) as binary64 (exact for every
 * vector dtype), from either tensor layout (spec 4.4). which: 'd' or 'b'. 0 on success. */
int vera_adapter_vector(const vera_adapter *ad, size_t module, char which, double *out);
/* The checksums of group index gi (0..n_groups-1) computed by this port: generated from the
 * seed (philox, peft-mt19937) or hashed from the stored tensors, a band at a time (memory
 * O(n_in + r)). 0 on success. */
int vera_adapter_projection_sha256(const vera_adapter *ad, size_t gi, unsigned char A[32],
                                   unsigned char B[32]);
/* n_in, n_out of group index gi (spec 2.4). */
void vera_adapter_group_dims(const vera_adapter *ad, size_t gi, uint64_t *n_in, uint64_t *n_out);

#ifdef __cplusplus
}
#endif
#endif /* VERA_H */
