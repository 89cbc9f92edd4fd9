/* example.c - validate a VeRA adapter file and rebuild its projections with the C port.
 *
 *   cc -std=c99 -O2 ports/c/vera.c ports/c/vera_json.c ports/c/vera_reader.c ports/c/example.c -lm
 *   ./a.out adapter.safetensors     # per group: sha256 of A and B made by this port; exit 0
 *                                    # an invalid file: its rule code (spec 4.6) and exit 1
 *   ./a.out --batch < commands      # the test driver (tests/ports/test_c_port.py)
 *   ./a.out --bench R N_IN N_OUT REPEAT   # timings for bench/rng.py
 */
#if defined(__linux__)
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE, for the bench's buffers only */
#endif
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif
#include "vera.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

static void print_field(FILE *f, const char *s, size_t n)
{
    /* printable ASCII as is, everything else (and '\') as \xNN: one token on one line */
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c < 0x7F && c != '\\') fputc(c, f);
        else fprintf(f, "\\x%02x", c);
    }
}

static uint32_t f32_bits(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

/* A and B of group index gi rebuilt into buffers (stored: read from the file); their sha256. */
static int rebuild(const vera_adapter *ad, size_t gi, char hexA[65], char hexB[65])
{
    uint64_t n_in, n_out;
    float *A, *B;
    unsigned char d[32];
    int rc = 0;
    vera_adapter_group_dims(ad, gi, &n_in, &n_out);
    A = (float *)malloc((size_t)(ad->r * n_in) * sizeof(float));
    B = (float *)malloc((size_t)(n_out * ad->r) * sizeof(float));
    if (!A || !B) rc = -1;
    else if (ad->generator == VERA_GEN_PHILOX)
        rc = vera_projection(ad->seed, ad->r, n_in, n_out, ad->groups[gi], A, B);
    else if (ad->generator == VERA_GEN_PEFT_MT19937)
        rc = vera_peft_projection(ad->seed, ad->r, n_in, n_out, A, B);
    else { /* stored: the file's tensors A, B or A.g, B.g (spec 4.4), float32 little-endian */
        char na[32], nb[32];
        if (ad->sharing == VERA_SHARED) { strcpy(na, "A"); strcpy(nb, "B"); }
        else { sprintf(na, "A.%lu", (unsigned long)ad->groups[gi]); sprintf(nb, "B.%lu", (unsigned long)ad->groups[gi]); }
        rc = vera_adapter_read_tensor(ad, vera_adapter_tensor(ad, na, strlen(na)), A, (size_t)(ad->r * n_in) * 4) ||
             vera_adapter_read_tensor(ad, vera_adapter_tensor(ad, nb, strlen(nb)), B, (size_t)(n_out * ad->r) * 4);
        if (!rc) { /* the bytes are little-endian: make them this machine's floats */
            size_t i;
            for (i = 0; i < (size_t)(ad->r * n_in); i++) {
                unsigned char *p = (unsigned char *)(A + i);
                uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                memcpy(A + i, &u, 4);
            }
            for (i = 0; i < (size_t)(n_out * ad->r); i++) {
                unsigned char *p = (unsigned char *)(B + i);
                uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                memcpy(B + i, &u, 4);
            }
        }
    }
    if (!rc) {
        vera_sha256_floats(A, (size_t)(ad->r * n_in), d);
        vera_hex(d, hexA);
        vera_sha256_floats(B, (size_t)(n_out * ad->r), d);
        vera_hex(d, hexB);
    }
    free(A);
    free(B);
    return rc;
}

/* The batch driver reads each file a second time from memory, from a buffer of exactly the file's
 * size (so a sanitized build sees any read past its end): the verdict must be the same. */
static int memory_agrees(const char *path, const vera_adapter *ad, const vera_error *err)
{
    FILE *f = fopen(path, "rb");
    long size;
    unsigned char *buf;
    vera_adapter *m;
    vera_error e;
    int rc, same;
    if (!f) return 0;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return 0; }
    buf = (unsigned char *)malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) { fclose(f); free(buf); return 0; }
    fclose(f);
    rc = vera_adapter_open_memory(buf, (size_t)size, NULL, &m, &e);
    if (ad) same = rc == 0 && m->n_groups == ad->n_groups && !memcmp(m->sha256, ad->sha256, ad->n_groups * sizeof *ad->sha256);
    else same = rc != 0 && !strcmp(e.code, err->code) && e.field_len == err->field_len &&
                !memcmp(e.field, err->field, e.field_len);
    if (rc == 0) vera_adapter_free(m);
    free(buf);
    return same;
}

static int check_file(const char *path, int batch)
{
    vera_adapter *ad;
    vera_error err;
    size_t gi;
    static const char *const GEN[] = {"philox4x32-10", "stored", "peft-mt19937"};
    if (vera_adapter_open(path, NULL, &ad, &err)) {
        if (batch && strncmp(err.code, "E4.6.0.", 7) != 0 && !memory_agrees(path, NULL, &err)) {
            printf("memory-read-differs\n");
            return 1;
        }
        if (batch) {
            printf("rejected %s ", err.code);
            print_field(stdout, err.field, err.field_len);
            printf("\n");
        } else {
            printf("%s ", err.code);
            print_field(stdout, err.field, err.field_len);
            printf(": %s\n", err.problem);
        }
        return 1;
    }
    if (batch && !memory_agrees(path, ad, NULL)) {
        printf("memory-read-differs\n");
        vera_adapter_free(ad);
        return 1;
    }
    if (batch) printf("accepted");
    else
        printf("valid: r=%lu, generator %s, %lu module(s), %lu projection group(s)\n", (unsigned long)ad->r,
               GEN[ad->generator], (unsigned long)ad->n_modules, (unsigned long)ad->n_groups);
    for (gi = 0; gi < ad->n_groups; gi++) {
        char a[65], b[65];
        if (rebuild(ad, gi, a, b)) {
            printf("%sgroup %lu: cannot rebuild the projection (out of memory)\n", batch ? " " : "", (unsigned long)ad->groups[gi]);
            vera_adapter_free(ad);
            return 2;
        }
        if (batch) printf(" %lu %s %s", (unsigned long)ad->groups[gi], a, b);
        else printf("group %lu  A %s\n         B %s\n", (unsigned long)ad->groups[gi], a, b);
    }
    if (batch) printf("\n");
    vera_adapter_free(ad);
    return 0;
}

static int batch(void)
{
    /* one command per line, one answer per line (tests/ports/test_c_port.py) */
    char line[8192], cmd[16], arg[8000];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long long seed, r, n_in, n_out, g, row, col, m, n, k;
        unsigned c[4], key[2];
        char which[4];
        if (sscanf(line, "%15s", cmd) != 1) continue;
        if (!strcmp(cmd, "philox") && sscanf(line, "%*s %x %x %x %x %x %x", &c[0], &c[1], &c[2], &c[3], &key[0], &key[1]) == 6) {
            uint32_t ctr[4], kk[2], w[4];
            int i;
            for (i = 0; i < 4; i++) ctr[i] = c[i];
            kk[0] = key[0]; kk[1] = key[1];
            vera_philox4x32_10(ctr, kk, w);
            printf("%08lx %08lx %08lx %08lx\n", (unsigned long)w[0], (unsigned long)w[1], (unsigned long)w[2], (unsigned long)w[3]);
        } else if (!strcmp(cmd, "proj") && sscanf(line, "%*s %llu %llu %llu %llu %llu", &seed, &r, &n_in, &n_out, &g) == 5) {
            /* the buffer API and the streaming checksums; both printed */
            float *A = (float *)malloc((size_t)(r * n_in) * 4), *B = (float *)malloc((size_t)(n_out * r) * 4);
            unsigned char d[32], sa[32], sb[32];
            char ha[65], hb[65], xa[65], xb[65];
            if (!A || !B || vera_projection(seed, r, n_in, n_out, (uint32_t)g, A, B) ||
                vera_projection_sha256(seed, r, n_in, n_out, (uint32_t)g, sa, sb)) {
                printf("error\n");
            } else {
                vera_sha256_floats(A, (size_t)(r * n_in), d); vera_hex(d, ha);
                vera_sha256_floats(B, (size_t)(n_out * r), d); vera_hex(d, hb);
                vera_hex(sa, xa); vera_hex(sb, xb);
                printf("%s %s %08lx %08lx %s %s\n", ha, hb, (unsigned long)f32_bits(vera_kaiming_bound(n_in)),
                       (unsigned long)f32_bits(vera_kaiming_bound(r)), xa, xb);
            }
            free(A);
            free(B);
        } else if (!strcmp(cmd, "word") && sscanf(line, "%*s %llu %llu %llu %llu %llu", &seed, &m, &g, &n, &k) == 5) {
            printf("%08lx\n", (unsigned long)vera_table_word(seed, (uint32_t)m, (uint32_t)g, (uint32_t)n, k));
        } else if (!strcmp(cmd, "elem") && sscanf(line, "%*s %llu %llu %llu %llu %llu %3s %llu %llu", &seed, &r, &n_in, &n_out, &g, which, &row, &col) == 8) {
            /* one element through the band API: row `row` of A (r, n_in) or of B (n_out, r) */
            size_t len = (size_t)(which[0] == 'A' ? n_in : r);
            float *buf = (float *)malloc(len * 4);
            int rc = !buf || (which[0] == 'A' ? vera_projection_A_rows(seed, r, n_in, (uint32_t)g, row, 1, buf)
                                              : vera_projection_B_rows(seed, r, row, 1, (uint32_t)g, buf));
            if (rc || col >= len) printf("error\n");
            else printf("%08lx\n", (unsigned long)f32_bits(buf[col]));
            free(buf);
        } else if (!strcmp(cmd, "peft") && sscanf(line, "%*s %llu %llu %llu %llu", &seed, &r, &n_in, &n_out) == 4) {
            float *A = (float *)malloc((size_t)(r * n_in) * 4), *B = (float *)malloc((size_t)(n_out * r) * 4);
            unsigned char d[32], sa[32], sb[32];
            char ha[65], hb[65], xa[65], xb[65];
            size_t i;
            if (!A || !B || vera_peft_projection(seed, r, n_in, n_out, A, B) || vera_peft_sha256(seed, r, n_in, n_out, sa, sb)) {
                printf("error\n");
            } else {
                vera_sha256_floats(A, (size_t)(r * n_in), d); vera_hex(d, ha);
                vera_sha256_floats(B, (size_t)(n_out * r), d); vera_hex(d, hb);
                vera_hex(sa, xa); vera_hex(sb, xb);
                printf("%s %s %s %s", ha, hb, xa, xb);
                for (i = 0; i < (size_t)(r * n_in); i++) printf(" %08lx", (unsigned long)f32_bits(A[i]));
                for (i = 0; i < (size_t)(n_out * r); i++) printf(" %08lx", (unsigned long)f32_bits(B[i]));
                printf("\n");
            }
            free(A);
            free(B);
        } else if (!strcmp(cmd, "vectors") && sscanf(line, "%*s %7999[^\n]", arg) == 1) {
            /* every module's lambda_d then lambda_b, as binary64 bits (vera_adapter_vector) */
            vera_adapter *ad;
            vera_error err;
            size_t i, j;
            if (vera_adapter_open(arg, NULL, &ad, &err)) { printf("rejected %s\n", err.code); continue; }
            for (i = 0; i < ad->n_modules; i++) {
                int which;
                for (which = 0; which < 2; which++) {
                    size_t cnt = (size_t)(which ? ad->modules[i].out_features : ad->r);
                    double *v = (double *)malloc((cnt ? cnt : 1) * sizeof(double));
                    if (!v || vera_adapter_vector(ad, i, which ? 'b' : 'd', v)) { printf(" error"); free(v); continue; }
                    for (j = 0; j < cnt; j++) {
                        uint64_t u;
                        memcpy(&u, v + j, 8);
                        printf(" %08lx%08lx", (unsigned long)(u >> 32), (unsigned long)(u & 0xFFFFFFFFu));
                    }
                    free(v);
                }
            }
            printf("\n");
            vera_adapter_free(ad);
        } else if (!strcmp(cmd, "file") && sscanf(line, "%*s %7999[^\n]", arg) == 1) {
            check_file(arg, 1);
        } else {
            printf("error\n");
        }
        fflush(stdout);
    }
    return 0;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float *bench_buffer(size_t n)
{
    /* the caller's buffers, allocated as NumPy allocates its arrays (the anchor of bench/rng.py):
     * where Linux offers transparent huge pages on request, large buffers ask for them */
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    void *p;
    size_t bytes = n * sizeof(float);
    if (posix_memalign(&p, (size_t)1 << 21, bytes ? bytes : 1)) return NULL;
    if (bytes >= ((size_t)1 << 22)) madvise(p, bytes, MADV_HUGEPAGE);
    return (float *)p;
#else
    return (float *)malloc(n * sizeof(float));
#endif
}

static int bench(int argc, char **argv)
{
    /* bench/rng.py: the first call into fresh memory (cold), then REPEAT warm calls into the same
     * buffers; one thread. Printed: cold seconds, best and median warm seconds. */
    unsigned long long r, n_in, n_out;
    int repeat, i;
    float *A, *B;
    double t, cold, *warm;
    volatile float sink;
    if (argc != 6) return 2;
    r = strtoull(argv[2], NULL, 10);
    n_in = strtoull(argv[3], NULL, 10);
    n_out = strtoull(argv[4], NULL, 10);
    repeat = atoi(argv[5]);
    if (repeat < 1) repeat = 1;
    A = bench_buffer((size_t)(r * n_in));
    B = bench_buffer((size_t)(n_out * r));
    warm = (double *)malloc((size_t)repeat * sizeof(double));
    if (!A || !B || !warm) return 2;
    t = now_s();
    if (vera_projection(1, r, n_in, n_out, 0, A, B)) return 2;
    cold = now_s() - t;
    for (i = 0; i < repeat; i++) {
        t = now_s();
        vera_projection((uint64_t)i, r, n_in, n_out, 0, A, B);
        warm[i] = now_s() - t;
    }
    sink = A[0] + B[0];
    (void)sink;
    qsort(warm, (size_t)repeat, sizeof *warm, cmp_double);
    printf("%.9f %.9f %.9f\n", cold, warm[0], warm[repeat / 2]);
    free(A);
    free(B);
    free(warm);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "--batch")) return batch();
    if (argc >= 2 && !strcmp(argv[1], "--bench")) return bench(argc, argv);
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s ADAPTER.safetensors | --batch | --bench R N_IN N_OUT REPEAT\n", argv[0]);
        return 2;
    }
    return check_file(argv[1], 0);
}
