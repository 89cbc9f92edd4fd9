/* vera_reader.c - the adapter file reader: spec 4.6, every step in the spec's order, with the
 * spec's rule codes. Bounded: the header length is checked against the limit and the file size
 * before it is read (steps 2-3), its text is bounded before it is parsed (spec 4.1.1), every
 * data_offsets is checked against the file before any tensor byte is read (steps 6-7), the
 * projection size before anything is generated (step 22); tensors and projections are then
 * streamed in chunks (steps 25-26), so no read goes past the file and no allocation follows
 * a number from the file unchecked. */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif
#include "vera_internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#define VERA_POSIX 1
#endif

#define MAX_HEADER_BYTES 100000000u           /* spec 4.1: safetensors' MAX_HEADER_SIZE */
#define MAX_STRUCTURAL ((size_t)1 << 20)       /* spec 4.1.1 rule 2 */
#define MAX_DIMS 16                            /* spec 4.1 */
#define DEFAULT_MAX_PROJECTION ((uint64_t)1 << 28) /* spec 4.6 step 22 */
#define EXCERPT 120                            /* spec 4.6.1 */
#define CHUNK ((size_t)1 << 20)

/* ---- where the bytes come from ---------------------------------------------------------- */
typedef struct {
    const unsigned char *mem;
    FILE *fp;
    int fd;
    uint64_t size;
} vsrc;

static int src_read(vsrc *s, uint64_t off, void *buf, size_t n)
{
    /* exactly n bytes at off, all inside the file (0), or -1 */
    if (off > s->size || n > s->size - off) return -1;
    if (s->mem) { memcpy(buf, s->mem + off, n); return 0; }
#ifdef VERA_POSIX
    if (s->fd >= 0) {
        size_t got = 0;
        while (got < n) {
            ssize_t k = pread(s->fd, (char *)buf + got, n - got, (off_t)(off + got));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return -1; /* the file shrank while we read it */
            got += (size_t)k;
        }
        return 0;
    }
#endif
    if (s->fp) {
        if (off > (uint64_t)LONG_MAX) return -1;
        if (fseek(s->fp, (long)off, SEEK_SET) != 0) return -1;
        return fread(buf, 1, n, s->fp) == n ? 0 : -1;
    }
    return -1;
}

static void src_close(vsrc *s)
{
#ifdef VERA_POSIX
    if (s->fd >= 0) close(s->fd);
#endif
    if (s->fp) fclose(s->fp);
    free(s);
}

/* ---- verdicts ------------------------------------------------------------------------- */
static int fail_bytes(vera_error *e, const char *code, const unsigned char *field, size_t len,
                      const char *problem)
{
    /* spec 4.6.1: a field from the file is cut to 117 characters and "..." past 120 */
    size_t i, chars = 0, cut = len;
    for (i = 0; i < len; i++) chars += (field[i] & 0xC0) != 0x80;
    if (chars > EXCERPT) {
        size_t c = 0;
        for (i = 0; i < len; i++) {
            if ((field[i] & 0xC0) != 0x80) {
                if (c == EXCERPT - 3) break;
                c++;
            }
        }
        cut = i;
    }
    if (!e) return -1;
    memset(e, 0, sizeof *e);
    strncpy(e->code, code, sizeof e->code - 1);
    memcpy(e->field, field, cut);
    e->field_len = cut;
    if (cut < len) { memcpy(e->field + cut, "...", 3); e->field_len += 3; }
    e->field[e->field_len] = '\0';
    strncpy(e->problem, problem, sizeof e->problem - 1);
    return -1;
}

static int fail(vera_error *e, const char *code, const char *field, const char *problem)
{
    return fail_bytes(e, code, (const unsigned char *)field, strlen(field), problem);
}

/* ---- the reader's state ------------------------------------------------------------------ */
typedef struct {
    char *name;
    size_t len;
    int role; /* 0 vector, 1 projection, 2 extra */
    int dtype;
    int ndim; /* -1: any shape */
    uint64_t shape[2];
} expected;

typedef struct {
    vera_error *err;
    vsrc *src;
    vera_adapter *ad;
    unsigned char *hdr;
    vj_doc H, D;
    uint32_t meta, doc;
    uint32_t *nodes; /* header entries, in the order of ad->tensors */
    expected *exp;
    size_t n_exp;
    unsigned char *later; /* modules repeating an earlier name */
} reader;

#define NODE(doc, i) ((doc).nodes[(i)])
#define STR(doc, i) ((doc).arena + (doc).nodes[(i)].str)
#define KEY(doc, i) ((doc).arena + (doc).nodes[(i)].key)

static int bytes_cmp(const unsigned char *a, size_t la, const unsigned char *b, size_t lb)
{
    /* code point order: UTF-8 byte order (also for the 3-byte form of lone surrogates) */
    size_t m = la < lb ? la : lb;
    int c = memcmp(a, b, m);
    if (c) return c;
    return la < lb ? -1 : la > lb;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const vera_tensor *x = (const vera_tensor *)a, *y = (const vera_tensor *)b;
    return bytes_cmp((const unsigned char *)x->name, x->name_len, (const unsigned char *)y->name, y->name_len);
}

static int cmp_offsets(const void *a, const void *b)
{
    const uint64_t *x = (const uint64_t *)a, *y = (const uint64_t *)b;
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

static int cmp_exp_name(const void *a, const void *b)
{
    const expected *x = *(const expected *const *)a, *y = *(const expected *const *)b;
    return bytes_cmp((const unsigned char *)x->name, x->len, (const unsigned char *)y->name, y->len);
}

typedef struct {
    const unsigned char *s;
    size_t len, idx;
} named;

static int cmp_named(const void *a, const void *b)
{
    const named *x = (const named *)a, *y = (const named *)b;
    int c = bytes_cmp(x->s, x->len, y->s, y->len);
    if (c) return c;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* later[i] = 1 when names[i] repeats an earlier name (NULL names are skipped); O(n log n) */
static unsigned char *repeats(named *names, size_t n)
{
    size_t i, m = 0;
    unsigned char *later = (unsigned char *)calloc(n + 1, 1);
    named *tmp = (named *)malloc((n + 1) * sizeof *tmp);
    if (!later || !tmp) { free(later); free(tmp); return NULL; }
    for (i = 0; i < n; i++)
        if (names[i].s) tmp[m++] = names[i];
    qsort(tmp, m, sizeof *tmp, cmp_named);
    for (i = 1; i < m; i++)
        if (bytes_cmp(tmp[i - 1].s, tmp[i - 1].len, tmp[i].s, tmp[i].len) == 0) later[tmp[i].idx] = 1;
    free(tmp);
    return later;
}

static size_t itemsize(int dtype) { return dtype == VERA_F64 ? 8 : dtype == VERA_F32 ? 4 : 2; }

static int dtype_of(const vj_doc *d, uint32_t v)
{
    if (vj_str_is(d, v, "F64")) return VERA_F64;
    if (vj_str_is(d, v, "F32")) return VERA_F32;
    if (vj_str_is(d, v, "F16")) return VERA_F16;
    if (vj_str_is(d, v, "BF16")) return VERA_BF16;
    return -1;
}

static int is_uint(const vj_doc *d, uint32_t v) { return v && d->nodes[v].type == VJ_INT && !d->nodes[v].neg; }
static int absent(uint32_t v) { return !v; } /* spec 4.3 "Values" (1.2): null is a value, not absence */
static int int_ge1(const vj_doc *d, uint32_t v) { return is_uint(d, v) && d->nodes[v].num.mag >= 1; }

/* ---- steps 1-7: the container (spec 4.1, 4.6) -------------------------------------------- */
static int json_verdict(reader *R, const unsigned char *s, size_t n, vj_doc *doc, const char *const codes[4],
                        const char *field)
{
    size_t at, len;
    uint32_t dup;
    int v = vj_check(s, n, &at, &len);
    if (v == VJ_NOMEM) return fail(R->err, "ENOMEM", field, "out of memory");
    if (v == VJ_SYNTAX) return fail(R->err, codes[0], field, "not valid JSON (RFC 8259)");
    if (v == VJ_DEPTH) return fail(R->err, codes[1], field, "nested deeper than 64 levels");
    if (v == VJ_NUMBER) return fail(R->err, codes[2], field, "a number out of range");
    v = vj_parse(s, n, doc, &dup);
    if (v == VJ_NOMEM) return fail(R->err, "ENOMEM", field, "out of memory");
    if (v == VJ_DUPLICATE) return fail(R->err, codes[3], field, "duplicate key");
    return 0;
}

static int read_header(reader *R)
{
    static const char *const codes[4] = {"E4.6.4.4", "E4.6.4.5", "E4.6.4.6", "E4.6.4.7"};
    static const unsigned char onnx_next[7] = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42};
    unsigned char prefix[8];
    uint64_t n = 0, size = R->src->size, got;
    size_t count = 0, i, j, nt;
    vera_adapter *ad = R->ad;
    uint32_t c;
    uint64_t (*spans)[2];
    if (size < 8) return fail(R->err, "E4.6.1.1", "header", "file shorter than the 8-byte length prefix");
    if (src_read(R->src, 0, prefix, 8)) return fail(R->err, "E4.6.1.1", "header", "cannot read the length prefix");
    for (i = 0; i < 8; i++) n |= (uint64_t)prefix[i] << (8 * i); /* little-endian u64 */
    if (n > MAX_HEADER_BYTES || n > size - 8) {
        /* step 2: name the kinds of file people confuse with adapters */
        int onnx = prefix[0] == 0x08 && prefix[1] >= 1 && prefix[1] <= 0x7F && memchr(onnx_next, prefix[2], 7);
        if (onnx) return fail(R->err, "E4.6.2.1", "file", "this is an ONNX model, not a VeRA adapter");
        if (memcmp(prefix, "PK\x03\x04", 4) == 0)
            return fail(R->err, "E4.6.2.2", "file", "this is a zip archive (a PyTorch checkpoint?), not a VeRA adapter");
    }
    if (n > MAX_HEADER_BYTES) return fail(R->err, "E4.6.2.3", "header", "length exceeds the limit of 100000000 bytes");
    if (n > size - 8) return fail(R->err, "E4.6.3.1", "header", "length runs past the end of the file");
    R->hdr = (unsigned char *)malloc((size_t)n + 1); /* n <= 10^8 and <= the file's size */
    if (!R->hdr) return fail(R->err, "ENOMEM", "header", "out of memory");
    /* step 4, spec 4.1.1 rules 1-2: counted while reading, so a hostile header is refused after
     * its first megabytes */
    for (got = 0; got < n; got += CHUNK) {
        size_t k = n - got < CHUNK ? (size_t)(n - got) : CHUNK;
        if (src_read(R->src, 8 + got, R->hdr + got, k))
            return fail(R->err, "E4.6.3.1", "header", "length runs past the end of the file");
        if (got == 0 && R->hdr[0] != '{')
            return fail(R->err, "E4.6.4.1", "header", "must begin with '{' (no byte-order mark or leading whitespace)");
        count += vj_structural_count(R->hdr + got, k, MAX_STRUCTURAL);
        if (count > MAX_STRUCTURAL)
            return fail(R->err, "E4.6.4.2", "header", "more than 1048576 of its bytes are '\"', ',', '[' or '{'");
    }
    if (n == 0) return fail(R->err, "E4.6.4.1", "header", "must begin with '{' (no byte-order mark or leading whitespace)");
    if (!vj_valid_utf8(R->hdr, (size_t)n)) return fail(R->err, "E4.6.4.3", "header", "not valid UTF-8");
    if (json_verdict(R, R->hdr, (size_t)n, &R->H, codes, "header")) return -1;
    ad->data_start = 8 + n;
    /* step 5 */
    R->meta = vj_get(&R->H, R->H.root, "__metadata__");
    if (absent(R->meta)) return fail(R->err, "E4.6.5.1", "__metadata__", "missing");
    if (NODE(R->H, R->meta).type != VJ_OBJ) return fail(R->err, "E4.6.5.2", "__metadata__", "must map strings to strings");
    for (c = NODE(R->H, R->meta).first; c; c = NODE(R->H, c).next)
        if (NODE(R->H, c).type != VJ_STR) return fail(R->err, "E4.6.5.2", "__metadata__", "must map strings to strings");
    /* step 6: the tensor entries in ascending name order */
    nt = NODE(R->H, R->H.root).count - 1;
    ad->tensors = (vera_tensor *)calloc(nt + 1, sizeof *ad->tensors);
    if (!ad->tensors) return fail(R->err, "ENOMEM", "header", "out of memory");
    for (c = NODE(R->H, R->H.root).first, i = 0; c; c = NODE(R->H, c).next) {
        vera_tensor *t;
        if (c == R->meta) continue;
        t = &ad->tensors[i++];
        t->name = (char *)KEY(R->H, c); /* points into the header's arena until the end */
        t->name_len = NODE(R->H, c).key_len;
        t->begin = c; /* the entry's node, for now */
    }
    ad->n_tensors = nt;
    qsort(ad->tensors, nt, sizeof *ad->tensors, cmp_tensor_name);
    {
        uint64_t data_size = size - 8 - n;
        for (i = 0; i < nt; i++) {
            vera_tensor *t = &ad->tensors[i];
            uint32_t e = (uint32_t)t->begin, dt, sh, off, x;
            const unsigned char *nm = (const unsigned char *)t->name;
            uint64_t nbytes, b, en;
            int zero = 0;
            dt = vj_get(&R->H, e, "dtype");
            sh = vj_get(&R->H, e, "shape");
            off = vj_get(&R->H, e, "data_offsets");
            if (NODE(R->H, e).type != VJ_OBJ || NODE(R->H, e).count != 3 || !dt || !sh || !off)
                return fail_bytes(R->err, "E4.6.6.1", nm, t->name_len, "header entry must have exactly dtype, shape and data_offsets");
            t->dtype = dtype_of(&R->H, dt);
            if (t->dtype < 0) return fail_bytes(R->err, "E4.6.6.2", nm, t->name_len, "dtype is not allowed (F64, F32, F16, BF16)");
            if (NODE(R->H, sh).type != VJ_ARR) return fail_bytes(R->err, "E4.6.6.3", nm, t->name_len, "shape must be a list of non-negative integers");
            for (x = NODE(R->H, sh).first; x; x = NODE(R->H, x).next)
                if (!is_uint(&R->H, x)) return fail_bytes(R->err, "E4.6.6.3", nm, t->name_len, "shape must be a list of non-negative integers");
            if (NODE(R->H, sh).count > MAX_DIMS) return fail_bytes(R->err, "E4.6.6.4", nm, t->name_len, "shape has more than 16 dimensions");
            if (NODE(R->H, off).type != VJ_ARR || NODE(R->H, off).count != 2 || !is_uint(&R->H, NODE(R->H, off).first) ||
                !is_uint(&R->H, NODE(R->H, NODE(R->H, off).first).next))
                return fail_bytes(R->err, "E4.6.6.5", nm, t->name_len, "data_offsets must be two non-negative integers");
            b = NODE(R->H, NODE(R->H, off).first).num.mag;
            en = NODE(R->H, NODE(R->H, NODE(R->H, off).first).next).num.mag;
            /* spec 4.1 Sizes: itemsize times the non-zero dimensions, one factor at a time, stopping
             * once past the data section: no wrap, zero-size tensors included */
            nbytes = itemsize(t->dtype);
            t->ndim = (int)NODE(R->H, sh).count;
            for (x = NODE(R->H, sh).first, j = 0; x; x = NODE(R->H, x).next, j++) {
                uint64_t d = NODE(R->H, x).num.mag;
                t->shape[j] = d;
                if (!d) { zero = 1; continue; }
                if (d > data_size / nbytes) { nbytes = data_size + 1; break; }
                nbytes *= d;
            }
            if (nbytes > data_size)
                return fail_bytes(R->err, "E4.6.6.6", nm, t->name_len, "shape and dtype need more than the bytes of the data section");
            if (zero) nbytes = 0;
            if (en < b || en - b != nbytes)
                return fail_bytes(R->err, "E4.6.6.7", nm, t->name_len, "data_offsets do not match shape and dtype");
            if (en > data_size)
                return fail_bytes(R->err, "E4.6.6.8", nm, t->name_len, "data_offsets run past the end of the data");
            t->begin = b;
            t->end = en;
        }
        /* step 7: the data section covered exactly, in ascending (begin, end) */
        spans = (uint64_t(*)[2])malloc((nt + 1) * sizeof *spans);
        if (!spans) return fail(R->err, "ENOMEM", "header", "out of memory");
        for (i = 0; i < nt; i++) { spans[i][0] = ad->tensors[i].begin; spans[i][1] = ad->tensors[i].end; }
        qsort(spans, nt, sizeof *spans, cmp_offsets);
        got = 0;
        for (i = 0; i < nt; i++) {
            if (spans[i][0] != got) { free(spans); return fail(R->err, "E4.6.7.1", "header", "tensor data is not contiguous"); }
            got = spans[i][1];
        }
        free(spans);
        if (got != data_size) return fail(R->err, "E4.6.7.2", "header", "bytes after the last tensor");
    }
    return 0;
}

/* ---- steps 8-21: the metadata document (spec 4.3) --------------------------------------- */
static int is_part_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static int is_dotted(const unsigned char *s, size_t n)
{
    /* spec 4.3: [A-Za-z0-9_-]+ parts joined by '.' */
    size_t i, part = 0;
    if (n == 0) return 0;
    for (i = 0; i < n; i++) {
        if (s[i] == '.') { if (!part) return 0; part = 0; }
        else if (is_part_char(s[i])) part++;
        else return 0;
    }
    return part > 0;
}

static int is_prefix(const unsigned char *s, size_t n)
{
    /* spec 4.3 module_prefix: empty, or dotted parts each followed by '.' */
    return n == 0 || (s[n - 1] == '.' && is_dotted(s, n - 1));
}

static int is_hex64(const vj_doc *d, uint32_t v)
{
    size_t i;
    if (!v || d->nodes[v].type != VJ_STR || d->nodes[v].str_len != 64) return 0;
    for (i = 0; i < 64; i++) {
        unsigned char c = d->arena[d->nodes[v].str + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

static int parse_version(const vj_doc *d, uint32_t v, int *major, int *minor)
{
    /* spec 4.8: MAJOR.MINOR, each 0 or a decimal without leading zero of at most 9 digits */
    const unsigned char *s;
    size_t n, i = 0;
    int part;
    if (!v || d->nodes[v].type != VJ_STR) return 0;
    s = d->arena + d->nodes[v].str;
    n = d->nodes[v].str_len;
    for (part = 0; part < 2; part++) {
        size_t start = i;
        long val = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (i - start < 9) val = val * 10 + (s[i] - '0');
            i++;
        }
        if (i == start || i - start > 9 || (s[start] == '0' && i - start > 1)) return 0;
        if (part == 0) { *major = (int)val; if (i >= n || s[i] != '.') return 0; i++; }
        else *minor = (int)val;
    }
    return i == n;
}

static int one_of(const vj_doc *d, uint32_t v, const char *const *names, int count)
{
    int i;
    for (i = 0; i < count; i++)
        if (vj_str_is(d, v, names[i])) return i;
    return -1;
}

static const char *const KNOWN_FIELDS[] = {"r", "generator", "seed", "n_in", "n_out", "sharing",
                                           "projection_sha256", "modules", "module_prefix", "tensor_layout",
                                           "vector_dtype", "d_initial", "dropout", "extra_tensors",
                                           "base_model", "provenance"};
static const char *const GENERATORS[] = {"philox4x32-10", "stored", "peft-mt19937"}; /* spec 2.5 */
static const char *const SHARINGS[] = {"shared", "per-module"};                    /* spec 2.4 */
static const char *const LAYOUTS[] = {"linear", "conv1d"};
static const char *const TENSOR_LAYOUTS[] = {"per-module", "packed"};
static const char *const VECTOR_DTYPES[] = {"float64", "float32", "float16", "bfloat16"}; /* = enum order */

static int number_is(const vj_doc *d, uint32_t v) { return v && (d->nodes[v].type == VJ_INT || d->nodes[v].type == VJ_FLOAT); }

static double number_value(const vj_doc *d, uint32_t v)
{
    const vj_node *x = &d->nodes[v];
    if (x->type == VJ_FLOAT) return x->num.d;
    return x->neg ? -(double)x->num.mag : (double)x->num.mag;
}

static int equals_int(const vj_doc *d, uint32_t v, uint64_t g)
{
    /* an integer literal (spec 4.3 "Values", 1.2: no fraction or exponent, -0 is 0) equal to g:
     * 1.0 and true are not the group 1 */
    const vj_node *x;
    if (!v) return 0;
    x = &d->nodes[v];
    return x->type == VJ_INT && x->num.mag == g && (!x->neg || g == 0);
}

static int name_cmp_nodes(const vj_doc *d, uint32_t a, uint32_t b)
{
    return bytes_cmp(d->arena + d->nodes[a].key, d->nodes[a].key_len, d->arena + d->nodes[b].key, d->nodes[b].key_len);
}

static int hexdigit(unsigned char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

static int read_document(reader *R)
{
    static const char *const codes[4] = {"E4.6.10.3", "E4.6.10.4", "E4.6.10.5", "E4.6.10.6"};
    vera_adapter *ad = R->ad;
    vj_doc *H = &R->H, *D = &R->D;
    uint32_t fmt, ver, cfg, v, c, mods, root;
    size_t i, k;
    unsigned char *prefix;
    size_t plen;
    /* step 8: the magic; a file without it is named if it is a PEFT adapter */
    fmt = vj_get(H, R->meta, "vera_format");
    if (!fmt) {
        for (i = 0; i < ad->n_tensors; i++) {
            const char *nm = ad->tensors[i].name;
            size_t ln = ad->tensors[i].name_len;
            int peft = ln >= 17 && memcmp(nm, "base_model.model.", 17) == 0;
            for (k = 0; !peft && k + 12 <= ln; k++) peft = memcmp(nm + k, "vera_lambda_", 12) == 0;
            if (peft) return fail(R->err, "E4.6.8.1", "vera_format", "this is a PEFT adapter: use `vera-ref convert --from-peft`");
        }
        return fail(R->err, "E4.6.8.2", "vera_format", "missing: a plain safetensors file without VeRA metadata, not a VeRA adapter");
    }
    if (!vj_str_is(H, fmt, "vera-adapter")) return fail(R->err, "E4.6.8.3", "vera_format", "expected 'vera-adapter'");
    /* step 9 */
    ver = vj_get(H, R->meta, "vera_spec_version");
    if (!ver) return fail(R->err, "E4.6.9.1", "vera_spec_version", "missing");
    if (!parse_version(H, ver, &ad->spec_major, &ad->spec_minor) || ad->spec_major != 1)
        return fail(R->err, "E4.6.9.2", "vera_spec_version", "unsupported version (this reader supports 1.x)");
    /* step 10: the document's text under spec 4.1.1 (its own characters counted by rule 2: escapes
     * in the header can spell structural characters the header's count did not see) */
    cfg = vj_get(H, R->meta, "vera_config");
    if (!cfg) return fail(R->err, "E4.6.10.1", "vera_config", "missing");
    if (vj_structural_count(STR(*H, cfg), NODE(*H, cfg).str_len, MAX_STRUCTURAL) > MAX_STRUCTURAL)
        return fail(R->err, "E4.6.10.2", "vera_config", "more than 1048576 of its characters are '\"', ',', '[' or '{'");
    if (json_verdict(R, STR(*H, cfg), NODE(*H, cfg).str_len, D, codes, "vera_config")) return -1;
    root = D->root;
    if (NODE(*D, root).type != VJ_OBJ) return fail(R->err, "E4.6.10.7", "vera_config", "must be a JSON object");
    /* step 11: the first unknown field in ascending order; a newer minor version may add fields (4.8) */
    if (ad->spec_minor <= 1) {
        uint32_t first = 0;
        for (c = NODE(*D, root).first; c; c = NODE(*D, c).next) {
            int known = 0;
            for (k = 0; k < sizeof KNOWN_FIELDS / sizeof *KNOWN_FIELDS; k++)
                if (NODE(*D, c).key_len == strlen(KNOWN_FIELDS[k]) && memcmp(KEY(*D, c), KNOWN_FIELDS[k], NODE(*D, c).key_len) == 0)
                    known = 1;
            if (!known && (!first || name_cmp_nodes(D, c, first) < 0)) first = c;
        }
        if (first) return fail_bytes(R->err, "E4.6.11.1", KEY(*D, first), NODE(*D, first).key_len, "unknown field");
    }
    /* step 12 */
    v = vj_get(D, root, "r");
    if (absent(v)) return fail(R->err, "E4.6.12.1", "r", "missing");
    if (!int_ge1(D, v)) return fail(R->err, "E4.6.12.2", "r", "must be an integer >= 1");
    ad->r = NODE(*D, v).num.mag;
    /* step 13 */
    v = vj_get(D, root, "generator");
    if (absent(v)) return fail(R->err, "E4.6.13.1", "generator", "missing");
    ad->generator = one_of(D, v, GENERATORS, 3);
    if (ad->generator < 0) return fail(R->err, "E4.6.13.2", "generator", "must be one of philox4x32-10, stored, peft-mt19937");
    /* step 14: spec 1.3, a decimal string in [0, 2^64) without sign or leading zero */
    v = vj_get(D, root, "seed");
    if (ad->generator == VERA_GEN_STORED) {
        if (!absent(v)) return fail(R->err, "E4.6.14.1", "seed", "must be absent for the stored generator");
    } else {
        const unsigned char *s;
        size_t n;
        uint64_t seed = 0;
        if (absent(v)) return fail(R->err, "E4.6.14.2", "seed", "missing");
        if (NODE(*D, v).type != VJ_STR) return fail(R->err, "E4.6.14.3", "seed", "must be a decimal string in [0, 2^64)");
        s = STR(*D, v);
        n = NODE(*D, v).str_len;
        if (n == 0 || n > 20 || (s[0] == '0' && n > 1)) return fail(R->err, "E4.6.14.3", "seed", "must be a decimal string in [0, 2^64)");
        for (i = 0; i < n; i++) {
            uint64_t dgt = (uint64_t)(s[i] - '0');
            if (s[i] < '0' || s[i] > '9' || seed > (UINT64_MAX - dgt) / 10)
                return fail(R->err, "E4.6.14.3", "seed", "must be a decimal string in [0, 2^64)");
            seed = seed * 10 + dgt;
        }
        ad->seed = seed;
    }
    /* step 15 */
    v = vj_get(D, root, "sharing");
    if (absent(v)) return fail(R->err, "E4.6.15.1", "sharing", "missing");
    ad->sharing = one_of(D, v, SHARINGS, 2);
    if (ad->sharing < 0) return fail(R->err, "E4.6.15.2", "sharing", "must be one of shared, per-module");
    if (ad->generator == VERA_GEN_PEFT_MT19937 && ad->sharing != VERA_SHARED)
        return fail(R->err, "E4.6.15.3", "sharing", "the peft-mt19937 generator supports only 'shared'");
    /* step 16: module_prefix, then the list, then each entry (all its rules before the next) */
    v = vj_get(D, root, "module_prefix");
    if (v && (NODE(*D, v).type != VJ_STR || !is_prefix(STR(*D, v), NODE(*D, v).str_len)))
        return fail(R->err, "E4.6.16.1", "module_prefix", "must be empty or dotted path parts each ending in '.'");
    prefix = v ? STR(*D, v) : NULL;
    plen = v ? NODE(*D, v).str_len : 0;
    mods = vj_get(D, root, "modules");
    if (absent(mods)) return fail(R->err, "E4.6.16.2", "modules", "missing");
    if (NODE(*D, mods).type != VJ_ARR || NODE(*D, mods).count == 0) return fail(R->err, "E4.6.16.3", "modules", "must be a non-empty list");
    ad->modules = (vera_module *)calloc(NODE(*D, mods).count, sizeof *ad->modules);
    if (!ad->modules) return fail(R->err, "ENOMEM", "modules", "out of memory");
    ad->n_modules = NODE(*D, mods).count;
    {   /* the full names (module_prefix + name) of entries that have a string name */
        named *names = (named *)calloc(ad->n_modules + 1, sizeof *names);
        if (!names) return fail(R->err, "ENOMEM", "modules", "out of memory");
        for (c = NODE(*D, mods).first, i = 0; c; c = NODE(*D, c).next, i++) {
            uint32_t nm = NODE(*D, c).first;
            char *full;
            if (NODE(*D, c).type != VJ_ARR || (NODE(*D, c).count != 3 && NODE(*D, c).count != 4) || NODE(*D, nm).type != VJ_STR)
                continue;
            full = (char *)malloc(plen + NODE(*D, nm).str_len + 1);
            if (!full) { free(names); return fail(R->err, "ENOMEM", "modules", "out of memory"); }
            if (plen) memcpy(full, prefix, plen);
            memcpy(full + plen, STR(*D, nm), NODE(*D, nm).str_len);
            full[plen + NODE(*D, nm).str_len] = '\0';
            ad->modules[i].name = full;
            names[i].s = (const unsigned char *)full;
            names[i].len = plen + NODE(*D, nm).str_len;
            names[i].idx = i;
        }
        R->later = repeats(names, ad->n_modules);
        free(names);
        if (!R->later) return fail(R->err, "ENOMEM", "modules", "out of memory");
    }
    for (c = NODE(*D, mods).first, i = 0; c; c = NODE(*D, c).next, i++) {
        char where[40];
        uint32_t nm, fi, fo, lay = 0;
        vera_module *m = &ad->modules[i];
        sprintf(where, "modules[%lu]", (unsigned long)i);
        if (NODE(*D, c).type != VJ_ARR || (NODE(*D, c).count != 3 && NODE(*D, c).count != 4))
            return fail(R->err, "E4.6.16.4", where, "must be [name, in_features, out_features] or [name, in_features, out_features, layout]");
        nm = NODE(*D, c).first;
        fi = NODE(*D, nm).next;
        fo = NODE(*D, fi).next;
        if (NODE(*D, c).count == 4) lay = NODE(*D, fo).next;
        if (NODE(*D, nm).type != VJ_STR || !is_dotted((const unsigned char *)m->name, plen + NODE(*D, nm).str_len))
            return fail(R->err, "E4.6.16.5", where, "name must make a dotted module path");
        if (R->later[i]) /* every earlier entry passed its rules, so the earlier name is a module */
            return fail(R->err, "E4.6.16.6", "modules", "duplicate module");
        if (!int_ge1(D, fi)) return fail(R->err, "E4.6.16.7", where, "in_features must be an integer >= 1");
        if (!int_ge1(D, fo)) return fail(R->err, "E4.6.16.8", where, "out_features must be an integer >= 1");
        m->in_features = NODE(*D, fi).num.mag;
        m->out_features = NODE(*D, fo).num.mag;
        m->conv1d = lay ? one_of(D, lay, LAYOUTS, 2) : 0;
        if (m->conv1d < 0) return fail(R->err, "E4.6.16.9", where, "layout must be one of linear, conv1d");
    }
    /* step 17 */
    {
        uint64_t max_in = 0, max_out = 0;
        for (i = 0; i < ad->n_modules; i++) {
            if (ad->modules[i].in_features > max_in) max_in = ad->modules[i].in_features;
            if (ad->modules[i].out_features > max_out) max_out = ad->modules[i].out_features;
        }
        v = vj_get(D, root, "n_in");
        if (absent(v)) return fail(R->err, "E4.6.17.1", "n_in", "missing");
        if (!int_ge1(D, v)) return fail(R->err, "E4.6.17.2", "n_in", "must be an integer >= 1");
        ad->n_in = NODE(*D, v).num.mag;
        v = vj_get(D, root, "n_out");
        if (absent(v)) return fail(R->err, "E4.6.17.3", "n_out", "missing");
        if (!int_ge1(D, v)) return fail(R->err, "E4.6.17.4", "n_out", "must be an integer >= 1");
        ad->n_out = NODE(*D, v).num.mag;
        if (ad->n_in != max_in) return fail(R->err, "E4.6.17.5", "n_in", "must equal the largest in_features of the modules");
        if (ad->n_out != max_out) return fail(R->err, "E4.6.17.6", "n_out", "must equal the largest out_features of the modules");
    }
    /* step 18 */
    v = vj_get(D, root, "vector_dtype");
    if (absent(v)) return fail(R->err, "E4.6.18.1", "vector_dtype", "missing");
    ad->vector_dtype = one_of(D, v, VECTOR_DTYPES, 4);
    if (ad->vector_dtype < 0) return fail(R->err, "E4.6.18.2", "vector_dtype", "must be one of float64, float32, float16, bfloat16");
    v = vj_get(D, root, "tensor_layout");
    ad->tensor_layout = v ? one_of(D, v, TENSOR_LAYOUTS, 2) : VERA_LAYOUT_PER_MODULE;
    if (ad->tensor_layout < 0) return fail(R->err, "E4.6.18.3", "tensor_layout", "must be one of per-module, packed");
    /* step 19: numbers (booleans are not numbers) */
    v = vj_get(D, root, "d_initial");
    if (v && !number_is(D, v)) return fail(R->err, "E4.6.19.1", "d_initial", "must be a finite number");
    ad->d_initial = v ? number_value(D, v) : 0.1;
    v = vj_get(D, root, "dropout");
    if (v) {
        int ok = number_is(D, v);
        if (ok && NODE(*D, v).type == VJ_INT) ok = NODE(*D, v).num.mag == 0;
        if (ok && NODE(*D, v).type == VJ_FLOAT) ok = NODE(*D, v).num.d >= 0.0 && NODE(*D, v).num.d < 1.0;
        if (!ok) return fail(R->err, "E4.6.19.2", "dropout", "must be a number in [0, 1)");
    }
    ad->dropout = v ? number_value(D, v) : 0.0;
    /* step 20 */
    v = vj_get(D, root, "extra_tensors");
    if (v) {
        if (NODE(*D, v).type != VJ_ARR) return fail(R->err, "E4.6.20.1", "extra_tensors", "must be a list of tensor names");
        for (c = NODE(*D, v).first; c; c = NODE(*D, c).next)
            if (NODE(*D, c).type != VJ_STR || !is_dotted(STR(*D, c), NODE(*D, c).str_len))
                return fail(R->err, "E4.6.20.1", "extra_tensors", "must be a list of tensor names");
        ad->extra = (char **)calloc(NODE(*D, v).count + 1, sizeof *ad->extra);
        if (!ad->extra) return fail(R->err, "ENOMEM", "extra_tensors", "out of memory");
        {
            named *names = (named *)calloc(NODE(*D, v).count + 1, sizeof *names);
            unsigned char *later;
            int twice = 0;
            if (!names) return fail(R->err, "ENOMEM", "extra_tensors", "out of memory");
            for (c = NODE(*D, v).first, i = 0; c; c = NODE(*D, c).next, i++) {
                names[i].s = STR(*D, c);
                names[i].len = NODE(*D, c).str_len;
                names[i].idx = i;
            }
            later = repeats(names, NODE(*D, v).count);
            free(names);
            if (!later) return fail(R->err, "ENOMEM", "extra_tensors", "out of memory");
            for (i = 0; i < NODE(*D, v).count; i++) twice |= later[i];
            free(later);
            if (twice) return fail(R->err, "E4.6.20.2", "extra_tensors", "lists a name twice");
        }
        for (c = NODE(*D, v).first; c; c = NODE(*D, c).next) {
            ad->extra[ad->n_extra] = (char *)malloc(NODE(*D, c).str_len + 1);
            if (!ad->extra[ad->n_extra]) return fail(R->err, "ENOMEM", "extra_tensors", "out of memory");
            memcpy(ad->extra[ad->n_extra], STR(*D, c), NODE(*D, c).str_len);
            ad->extra[ad->n_extra++][NODE(*D, c).str_len] = '\0';
        }
    }
    v = vj_get(D, root, "base_model");
    if (!absent(v)) {
        uint32_t first = 0;
        if (NODE(*D, v).type != VJ_OBJ) return fail(R->err, "E4.6.20.3", "base_model", "must map strings to strings");
        for (c = NODE(*D, v).first; c; c = NODE(*D, c).next) {
            size_t kl = NODE(*D, c).key_len;
            const unsigned char *kk = KEY(*D, c);
            int known = (kl == 4 && !memcmp(kk, "name", 4)) || (kl == 8 && !memcmp(kk, "revision", 8)) ||
                        (kl == 11 && !memcmp(kk, "fingerprint", 11));
            if (NODE(*D, c).type != VJ_STR) return fail(R->err, "E4.6.20.3", "base_model", "must map strings to strings");
            if (!known && (!first || name_cmp_nodes(D, c, first) < 0)) first = c;
        }
        if (first) {
            size_t kl = NODE(*D, first).key_len;
            unsigned char *f = (unsigned char *)malloc(11 + kl);
            int rc;
            if (!f) return fail(R->err, "ENOMEM", "base_model", "out of memory");
            memcpy(f, "base_model.", 11);
            memcpy(f + 11, KEY(*D, first), kl);
            rc = fail_bytes(R->err, "E4.6.20.4", f, 11 + kl, "unknown field");
            free(f);
            return rc;
        }
        c = vj_get(D, v, "fingerprint");
        if (c && !is_hex64(D, c)) return fail(R->err, "E4.6.20.5", "base_model.fingerprint", "must be 64 lowercase hex digits");
    }
    v = vj_get(D, root, "provenance");
    if (v && NODE(*D, v).type != VJ_OBJ) return fail(R->err, "E4.6.20.6", "provenance", "must be a JSON object");
    /* step 21: one {group, A, B} per pair in group order (spec 2.4) */
    ad->n_groups = ad->sharing == VERA_SHARED ? 1 : ad->n_modules;
    ad->groups = (uint32_t *)calloc(ad->n_groups, sizeof *ad->groups);
    ad->sha256 = (unsigned char(*)[2][32])calloc(ad->n_groups, sizeof *ad->sha256);
    if (!ad->groups || !ad->sha256) return fail(R->err, "ENOMEM", "projection_sha256", "out of memory");
    for (i = 0; i < ad->n_groups; i++) ad->groups[i] = ad->sharing == VERA_SHARED ? 0u : (uint32_t)(i + 1);
    v = vj_get(D, root, "projection_sha256");
    if (absent(v)) return fail(R->err, "E4.6.21.1", "projection_sha256", "missing");
    if (NODE(*D, v).type != VJ_ARR || NODE(*D, v).count != ad->n_groups)
        return fail(R->err, "E4.6.21.2", "projection_sha256", "must list {group, A, B} for each group in order");
    for (c = NODE(*D, v).first, i = 0; c; c = NODE(*D, c).next, i++)
        if (NODE(*D, c).type != VJ_OBJ || !equals_int(D, vj_get(D, c, "group"), ad->groups[i]))
            return fail(R->err, "E4.6.21.2", "projection_sha256", "must list {group, A, B} for each group in order");
    for (c = NODE(*D, v).first; c; c = NODE(*D, c).next)
        if (NODE(*D, c).count != 3 || !vj_get(D, c, "A") || !vj_get(D, c, "B"))
            return fail(R->err, "E4.6.21.2", "projection_sha256", "must list {group, A, B} for each group in order");
    for (c = NODE(*D, v).first, i = 0; c; c = NODE(*D, c).next, i++) {
        int ab;
        for (ab = 0; ab < 2; ab++) {
            uint32_t h = vj_get(D, c, ab ? "B" : "A");
            if (!is_hex64(D, h)) return fail(R->err, "E4.6.21.3", "projection_sha256", "checksum must be 64 lowercase hex digits");
            for (k = 0; k < 32; k++)
                ad->sha256[i][ab][k] = (unsigned char)(hexdigit(STR(*D, h)[2 * k]) << 4 | hexdigit(STR(*D, h)[2 * k + 1]));
        }
    }
    return 0;
}

/* ---- steps 22-26: tensors against the document (spec 4.4, 4.5, 2.6) ---------------------- */
void vera_adapter_group_dims(const vera_adapter *ad, size_t gi, uint64_t *n_in, uint64_t *n_out)
{
    if (ad->sharing == VERA_SHARED) { *n_in = ad->n_in; *n_out = ad->n_out; }
    else { *n_in = ad->modules[gi].in_features; *n_out = ad->modules[gi].out_features; }
}

static int add_expected(reader *R, const char *a, const char *b, int role, int dtype, int ndim, uint64_t s0, uint64_t s1)
{
    expected *e = &R->exp[R->n_exp];
    size_t la = strlen(a), lb = strlen(b);
    e->name = (char *)malloc(la + lb + 1);
    if (!e->name) return -1;
    memcpy(e->name, a, la);
    memcpy(e->name + la, b, lb + 1);
    e->len = la + lb;
    e->role = role;
    e->dtype = dtype;
    e->ndim = ndim;
    e->shape[0] = s0;
    e->shape[1] = s1;
    R->n_exp++;
    return 0;
}

static const vera_tensor *find_tensor(const vera_adapter *ad, const char *name, size_t len)
{
    size_t lo = 0, hi = ad->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = bytes_cmp((const unsigned char *)ad->tensors[mid].name, ad->tensors[mid].name_len,
                          (const unsigned char *)name, len);
        if (c == 0) return &ad->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const vera_tensor *vera_adapter_tensor(const vera_adapter *ad, const char *name, size_t name_len)
{
    return find_tensor(ad, name, name_len);
}

static int finite_values(const unsigned char *p, size_t n, int dtype)
{
    /* spec 4.6 step 25: an exponent field of all ones is NaN or infinity */
    size_t i;
    switch (dtype) {
    case VERA_F64: for (i = 0; i + 8 <= n; i += 8) if ((p[i + 7] & 0x7F) == 0x7F && (p[i + 6] & 0xF0) == 0xF0) return 0; break;
    case VERA_F32: for (i = 0; i + 4 <= n; i += 4) if ((p[i + 3] & 0x7F) == 0x7F && (p[i + 2] & 0x80)) return 0; break;
    case VERA_F16: for (i = 0; i + 2 <= n; i += 2) if ((p[i + 1] & 0x7C) == 0x7C) return 0; break;
    default: for (i = 0; i + 2 <= n; i += 2) if ((p[i + 1] & 0x7F) == 0x7F && (p[i] & 0x80)) return 0; break;
    }
    return 1;
}

static int hash_tensor(const vera_adapter *ad, const vera_tensor *t, unsigned char out[32])
{
    unsigned char buf[65536];
    vera_sha256 s;
    uint64_t off;
    vera_sha256_init(&s);
    for (off = t->begin; off < t->end; off += sizeof buf) {
        size_t k = t->end - off < sizeof buf ? (size_t)(t->end - off) : sizeof buf;
        if (src_read((vsrc *)ad->source_, ad->data_start + off, buf, k)) return -1;
        vera_sha256_update(&s, buf, k);
    }
    vera_sha256_final(&s, out);
    return 0;
}

int vera_adapter_projection_sha256(const vera_adapter *ad, size_t gi, unsigned char A[32], unsigned char B[32])
{
    uint64_t n_in, n_out;
    if (gi >= ad->n_groups) return -1;
    vera_adapter_group_dims(ad, gi, &n_in, &n_out);
    if (ad->generator == VERA_GEN_PHILOX)
        return vera_projection_sha256(ad->seed, ad->r, n_in, n_out, ad->groups[gi], A, B);
    if (ad->generator == VERA_GEN_PEFT_MT19937) return vera_peft_sha256(ad->seed, ad->r, n_in, n_out, A, B);
    {
        char na[32], nb[32];
        const vera_tensor *ta, *tb;
        if (ad->sharing == VERA_SHARED) { strcpy(na, "A"); strcpy(nb, "B"); }
        else { sprintf(na, "A.%lu", (unsigned long)ad->groups[gi]); sprintf(nb, "B.%lu", (unsigned long)ad->groups[gi]); }
        ta = find_tensor(ad, na, strlen(na));
        tb = find_tensor(ad, nb, strlen(nb));
        if (!ta || !tb || hash_tensor(ad, ta, A) || hash_tensor(ad, tb, B)) return -1;
        return 0;
    }
}

static int check_tensors(reader *R, uint64_t max_elements)
{
    vera_adapter *ad = R->ad;
    size_t i, k, n_vera;
    uint64_t total = 0;
    expected **sorted;
    int vcode = ad->vector_dtype; /* enum order equals VECTOR_DTYPES: F64, F32, F16, BF16 */
    /* step 22: r * sum(n_in_g + n_out_g), saturating, before anything is generated */
    for (i = 0; i < ad->n_groups; i++) {
        uint64_t a, b, sum, term;
        vera_adapter_group_dims(ad, i, &a, &b);
        sum = a > UINT64_MAX - b ? UINT64_MAX : a + b;
        term = sum > UINT64_MAX / ad->r ? UINT64_MAX : sum * ad->r;
        total = total > UINT64_MAX - term ? UINT64_MAX : total + term;
    }
    if (total > max_elements)
        return fail(R->err, "E4.6.22.1", "projection", "elements exceed the limit (raise max_projection_elements to allow it)");
    /* spec 4.4: the expected tensors, in order */
    R->exp = (expected *)calloc(2 * ad->n_modules + 2 * ad->n_groups + ad->n_extra + 2, sizeof *R->exp);
    if (!R->exp) return fail(R->err, "ENOMEM", "tensors", "out of memory");
    if (ad->tensor_layout == VERA_LAYOUT_PACKED) {
        uint64_t sum_out = 0;
        for (i = 0; i < ad->n_modules; i++)
            sum_out = sum_out > UINT64_MAX - ad->modules[i].out_features ? UINT64_MAX : sum_out + ad->modules[i].out_features;
        if (add_expected(R, "lambda_d", "", 0, vcode, 2, ad->n_modules, ad->r) ||
            add_expected(R, "lambda_b", "", 0, vcode, 1, sum_out, 0))
            return fail(R->err, "ENOMEM", "tensors", "out of memory");
    } else {
        for (i = 0; i < ad->n_modules; i++)
            if (add_expected(R, ad->modules[i].name, ".lambda_d", 0, vcode, 1, ad->r, 0) ||
                add_expected(R, ad->modules[i].name, ".lambda_b", 0, vcode, 1, ad->modules[i].out_features, 0))
                return fail(R->err, "ENOMEM", "tensors", "out of memory");
    }
    if (ad->generator == VERA_GEN_STORED) {
        for (i = 0; i < ad->n_groups; i++) {
            char na[32], nb[32];
            uint64_t n_in, n_out;
            vera_adapter_group_dims(ad, i, &n_in, &n_out);
            if (ad->sharing == VERA_SHARED) { strcpy(na, "A"); strcpy(nb, "B"); }
            else { sprintf(na, "A.%lu", (unsigned long)ad->groups[i]); sprintf(nb, "B.%lu", (unsigned long)ad->groups[i]); }
            if (add_expected(R, na, "", 1, VERA_F32, 2, ad->r, n_in) || add_expected(R, nb, "", 1, VERA_F32, 2, n_out, ad->r))
                return fail(R->err, "ENOMEM", "tensors", "out of memory");
        }
    }
    n_vera = R->n_exp;
    for (i = 0; i < ad->n_extra; i++)
        if (add_expected(R, ad->extra[i], "", 2, -1, -1, 0, 0)) return fail(R->err, "ENOMEM", "tensors", "out of memory");
    sorted = (expected **)malloc((R->n_exp + 1) * sizeof *sorted);
    if (!sorted) return fail(R->err, "ENOMEM", "tensors", "out of memory");
    for (i = 0; i < R->n_exp; i++) sorted[i] = &R->exp[i];
    /* step 23.1: an extra tensor named like a VeRA tensor */
    qsort(sorted, n_vera, sizeof *sorted, cmp_exp_name);
    for (i = n_vera; i < R->n_exp; i++) {
        expected key = R->exp[i], *kp = &key;
        if (bsearch(&kp, sorted, n_vera, sizeof *sorted, cmp_exp_name)) {
            free(sorted);
            return fail_bytes(R->err, "E4.6.23.1", (const unsigned char *)key.name, key.len, "extra tensor has the name of a VeRA tensor");
        }
    }
    /* 23.2: each expected tensor present, in the order of spec 4.4 */
    for (i = 0; i < R->n_exp; i++)
        if (!find_tensor(ad, R->exp[i].name, R->exp[i].len)) {
            free(sorted);
            return fail_bytes(R->err, "E4.6.23.2", (const unsigned char *)R->exp[i].name, R->exp[i].len, "missing");
        }
    /* 23.3: no other tensor, in ascending name order */
    qsort(sorted, R->n_exp, sizeof *sorted, cmp_exp_name);
    for (i = 0; i < ad->n_tensors; i++) {
        expected key, *kp = &key;
        key.name = ad->tensors[i].name;
        key.len = ad->tensors[i].name_len;
        if (!bsearch(&kp, sorted, R->n_exp, sizeof *sorted, cmp_exp_name)) {
            free(sorted);
            return fail_bytes(R->err, "E4.6.23.3", (const unsigned char *)key.name, key.len,
                              "unexpected tensor (not a module vector, projection or listed extra tensor)");
        }
    }
    free(sorted);
    /* step 24: shapes and dtypes, every tensor before step 25 */
    for (i = 0; i < R->n_exp; i++) {
        const expected *e = &R->exp[i];
        const vera_tensor *t = find_tensor(ad, e->name, e->len);
        const unsigned char *nm = (const unsigned char *)e->name;
        if (e->ndim >= 0) {
            int same = t->ndim == e->ndim;
            for (k = 0; same && k < (size_t)e->ndim; k++) same = t->shape[k] == e->shape[k];
            if (!same) return fail_bytes(R->err, "E4.6.24.1", nm, e->len, "shape differs from the expected shape");
        }
        if (e->role == 0 && t->dtype != e->dtype) return fail_bytes(R->err, "E4.6.24.2", nm, e->len, "dtype differs from vector_dtype");
        if (e->role == 1 && t->dtype != VERA_F32) return fail_bytes(R->err, "E4.6.24.3", nm, e->len, "dtype must be F32 for a stored projection");
    }
    /* step 25: finite values, read a chunk at a time */
    for (i = 0; i < R->n_exp; i++) {
        const vera_tensor *t = find_tensor(ad, R->exp[i].name, R->exp[i].len);
        unsigned char buf[65536];
        uint64_t off;
        for (off = t->begin; off < t->end; off += sizeof buf) {
            size_t m = t->end - off < sizeof buf ? (size_t)(t->end - off) : sizeof buf;
            if (src_read(R->src, ad->data_start + off, buf, m))
                return fail_bytes(R->err, "E4.6.6.8", (const unsigned char *)t->name, t->name_len, "data_offsets run past the end of the data");
            if (!finite_values(buf, m, t->dtype))
                return fail_bytes(R->err, "E4.6.25.1", (const unsigned char *)t->name, t->name_len, "contains non-finite values (NaN or infinity)");
        }
    }
    return 0;
}

static int check_checksums(reader *R)
{
    /* step 26: A then B of each group in group order, computed by this port */
    vera_adapter *ad = R->ad;
    size_t i;
    for (i = 0; i < ad->n_groups; i++) {
        unsigned char got[2][32];
        if (vera_adapter_projection_sha256(ad, i, got[0], got[1]))
            return fail(R->err, "ENOMEM", "projection", "cannot compute the projection");
        if (memcmp(got[0], ad->sha256[i][0], 32))
            return fail(R->err, "E4.6.26.1", "projection_sha256", "A differs from what the generator gives");
        if (memcmp(got[1], ad->sha256[i][1], 32))
            return fail(R->err, "E4.6.26.1", "projection_sha256", "B differs from what the generator gives");
    }
    return 0;
}

/* ---- the public entry points --------------------------------------------------------- */
void vera_adapter_free(vera_adapter *ad)
{
    size_t i;
    if (!ad) return;
    for (i = 0; i < ad->n_modules; i++) free(ad->modules[i].name);
    free(ad->modules);
    for (i = 0; i < ad->n_extra; i++) free(ad->extra[i]);
    free(ad->extra);
    for (i = 0; i < ad->n_tensors; i++) free(ad->tensors[i].name);
    free(ad->tensors);
    free(ad->groups);
    free(ad->sha256);
    if (ad->source_) src_close((vsrc *)ad->source_);
    free(ad);
}

static int run(vsrc *src, const vera_options *opt, vera_adapter **out, vera_error *err)
{
    reader R;
    int rc;
    size_t i;
    uint64_t max_el = opt && opt->max_projection_elements ? opt->max_projection_elements : DEFAULT_MAX_PROJECTION;
    memset(&R, 0, sizeof R);
    R.err = err;
    R.src = src;
    R.ad = (vera_adapter *)calloc(1, sizeof *R.ad);
    *out = NULL;
    if (!R.ad) { src_close(src); return fail(err, "ENOMEM", "file", "out of memory"); }
    R.ad->source_ = src;
    rc = read_header(&R);
    if (!rc) {
        /* the tensor names point into the header's arena: give them their own copies */
        for (i = 0; i < R.ad->n_tensors && !rc; i++) {
            char *copy = (char *)malloc(R.ad->tensors[i].name_len + 1);
            if (!copy) { rc = fail(err, "ENOMEM", "header", "out of memory"); break; }
            memcpy(copy, R.ad->tensors[i].name, R.ad->tensors[i].name_len);
            copy[R.ad->tensors[i].name_len] = '\0';
            R.ad->tensors[i].name = copy;
        }
        for (; i < R.ad->n_tensors; i++) R.ad->tensors[i].name = NULL;
    } else {
        for (i = 0; i < R.ad->n_tensors; i++) R.ad->tensors[i].name = NULL;
    }
    if (!rc) rc = read_document(&R);
    if (!rc) rc = check_tensors(&R, max_el);
    if (!rc && !(opt && opt->skip_checksums)) rc = check_checksums(&R);
    for (i = 0; i < R.n_exp; i++) free(R.exp[i].name);
    free(R.exp);
    free(R.later);
    vj_free(&R.H);
    vj_free(&R.D);
    free(R.hdr);
    if (rc) { vera_adapter_free(R.ad); return rc; }
    *out = R.ad;
    return 0;
}

int vera_adapter_open_memory(const void *buf, size_t len, const vera_options *opt, vera_adapter **out, vera_error *err)
{
    vsrc *s = (vsrc *)calloc(1, sizeof *s);
    if (!s) return fail(err, "ENOMEM", "file", "out of memory");
    s->mem = (const unsigned char *)buf;
    s->fd = -1;
    s->size = len;
    return run(s, opt, out, err);
}

int vera_adapter_open(const char *path, const vera_options *opt, vera_adapter **out, vera_error *err)
{
    vsrc *s;
    *out = NULL;
#ifdef VERA_POSIX
    {
        /* step 0: only a regular file is read; a FIFO, socket or device is refused without blocking */
        struct stat st;
        int fd;
        if (stat(path, &st) != 0) {
            if (errno == ENOENT) return fail(err, "E4.6.0.1", "path", "no such file");
            return fail(err, "E4.6.0.5", "path", "cannot be read");
        }
        if (S_ISDIR(st.st_mode)) {
            size_t n = strlen(path);
            char *p = (char *)malloc(n + 21);
            struct stat cs;
            int peft;
            if (!p) return fail(err, "ENOMEM", "path", "out of memory");
            memcpy(p, path, n);
            memcpy(p + n, "/adapter_config.json", 21);
            peft = stat(p, &cs) == 0 && S_ISREG(cs.st_mode);
            free(p);
            if (peft) return fail(err, "E4.6.0.2", "path", "is a directory holding a PEFT adapter (adapter_config.json)");
            return fail(err, "E4.6.0.3", "path", "is a directory, not a file");
        }
        if (!S_ISREG(st.st_mode)) return fail(err, "E4.6.0.4", "path", "is not a regular file (a FIFO, socket or device)");
        fd = open(path, O_RDONLY | O_NONBLOCK);
        if (fd < 0) {
            if (errno == ENOENT) return fail(err, "E4.6.0.1", "path", "no such file");
            return fail(err, "E4.6.0.5", "path", "cannot be read");
        }
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return fail(err, "E4.6.0.4", "path", "is not a regular file (a FIFO, socket or device)");
        }
        s = (vsrc *)calloc(1, sizeof *s);
        if (!s) { close(fd); return fail(err, "ENOMEM", "path", "out of memory"); }
        s->fd = fd;
        s->size = (uint64_t)st.st_size;
        return run(s, opt, out, err);
    }
#else
    {
        FILE *fp = fopen(path, "rb");
        long size;
        if (!fp) return fail(err, "E4.6.0.1", "path", "no such file or cannot be read");
        if (fseek(fp, 0, SEEK_END) != 0 || (size = ftell(fp)) < 0) {
            fclose(fp);
            return fail(err, "E4.6.0.5", "path", "cannot be read");
        }
        s = (vsrc *)calloc(1, sizeof *s);
        if (!s) { fclose(fp); return fail(err, "ENOMEM", "path", "out of memory"); }
        s->fp = fp;
        s->fd = -1;
        s->size = (uint64_t)size;
        return run(s, opt, out, err);
    }
#endif
}

int vera_adapter_read_tensor(const vera_adapter *ad, const vera_tensor *t, void *buf, size_t bufsize)
{
    if (!t || t->end - t->begin > bufsize) return -1;
    return src_read((vsrc *)ad->source_, ad->data_start + t->begin, buf, (size_t)(t->end - t->begin));
}

static double decode_value(const unsigned char *p, int dtype)
{
    /* little-endian stored values (spec 4.1), exactly as binary64 */
    uint64_t u = 0;
    int i;
    switch (dtype) {
    case VERA_F64: {
        double d;
        for (i = 7; i >= 0; i--) u = u << 8 | p[i];
        memcpy(&d, &u, 8);
        return d;
    }
    case VERA_F32: {
        float f;
        uint32_t w = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        memcpy(&f, &w, 4);
        return f;
    }
    case VERA_BF16: {
        float f;
        uint32_t w = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
        memcpy(&f, &w, 4);
        return f;
    }
    default: { /* F16 */
        unsigned h = (unsigned)p[0] | (unsigned)p[1] << 8, e = (h >> 10) & 31, m = h & 1023;
        double v = e ? ldexp((double)(m | 1024), (int)e - 25) : ldexp((double)m, -24);
        if (e == 31) v = m ? (double)NAN : (double)INFINITY;
        return (h & 0x8000) ? -v : v;
    }
    }
}

int vera_adapter_vector(const vera_adapter *ad, size_t module, char which, double *out)
{
    const vera_tensor *t;
    uint64_t first = 0, count, i;
    size_t isz = itemsize(ad->vector_dtype);
    unsigned char buf[8];
    if (module >= ad->n_modules || (which != 'd' && which != 'b')) return -1;
    count = which == 'd' ? ad->r : ad->modules[module].out_features;
    if (ad->tensor_layout == VERA_LAYOUT_PACKED) { /* spec 4.4: lambda_d (M, r); lambda_b concatenated */
        t = find_tensor(ad, which == 'd' ? "lambda_d" : "lambda_b", 8);
        if (which == 'd') first = module * ad->r;
        else for (i = 0; i < module; i++) first += ad->modules[i].out_features;
    } else {
        size_t n = strlen(ad->modules[module].name);
        char *name = (char *)malloc(n + 10);
        if (!name) return -1;
        memcpy(name, ad->modules[module].name, n);
        memcpy(name + n, which == 'd' ? ".lambda_d" : ".lambda_b", 10);
        t = find_tensor(ad, name, n + 9);
        free(name);
    }
    if (!t) return -1;
    for (i = 0; i < count; i++) {
        if (src_read((vsrc *)ad->source_, ad->data_start + t->begin + (first + i) * isz, buf, isz)) return -1;
        out[i] = decode_value(buf, ad->vector_dtype);
    }
    return 0;
}
