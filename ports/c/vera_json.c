/* vera_json.c - the JSON dialect of adapter files (spec 4.1.1), with bounded work and memory.
 *
 * vj_check applies the dialect's whole-text rules in the spec's order; the tree is built only
 * for a text that passed the syntax, depth and number rules (so the builder recurses at most 64
 * levels), and the duplicate-key rule (7) is checked on the tree in the order objects end. */
#include "vera_internal.h"

#include <stdlib.h>
#include <string.h>

#define VJ_MAX_STRUCTURAL ((size_t)1 << 20) /* spec 4.1.1 rule 2 */
#define VJ_MAX_DEPTH 64                      /* rule 5 */
#define VJ_MAX_NUMBER_CHARS 100              /* rule 6 */

size_t vj_structural_count(const unsigned char *s, size_t n, size_t stop)
{
    /* spec 4.1.1 rule 2: '"', ',', '[' and '{' anywhere, strings included; stops past `stop` */
    size_t i, c = 0;
    for (i = 0; i < n; i++) {
        unsigned char b = s[i];
        c += (b == '"') | (b == ',') | (b == '[') | (b == '{');
        if (c > stop) return c;
    }
    return c;
}

int vj_valid_utf8(const unsigned char *s, size_t n)
{
    /* spec 4.1.1 rule 3: UTF-8 as RFC 3629 (no overlong forms, no surrogates, <= U+10FFFF) */
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        size_t need, j;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b < 0x80) { i++; continue; }
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b >= 0xE0 && b <= 0xEF) { need = 2; if (b == 0xE0) lo = 0xA0; if (b == 0xED) hi = 0x9F; }
        else if (b >= 0xF0 && b <= 0xF4) { need = 3; if (b == 0xF0) lo = 0x90; if (b == 0xF4) hi = 0x8F; }
        else return 0;
        if (n - i <= need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (j = 2; j <= need; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF) return 0;
        i += need + 1;
    }
    return 1;
}

static size_t skip_ws(const unsigned char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4_at(const unsigned char *s, size_t n, size_t i, uint32_t *cp)
{
    /* a backslash, 'u' and four hex digits at s[i] */
    int k;
    uint32_t v = 0;
    if (i > n || n - i < 6 || s[i] != '\\' || s[i + 1] != 'u') return 0;
    for (k = 2; k < 6; k++) {
        int h = hexval(s[i + (size_t)k]);
        if (h < 0) return 0;
        v = v << 4 | (uint32_t)h;
    }
    *cp = v;
    return 1;
}

/* A string token at s[i] == '"'; returns the index after its closing quote, or 0 (syntax).
 * spec 4.1.1 rule 4: strings are Unicode text, so a backslash-u escape of a surrogate must be a high one
 * (D800-DBFF) followed at once by an escaped low one (DC00-DFFF) (I-JSON, RFC 7493 2.1); a raw
 * surrogate (its 3-byte form, possible only in a document's text) is refused as well. */
static size_t scan_string(const unsigned char *s, size_t n, size_t i)
{
    i++;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"') return i + 1;
        if (c < 0x20) return 0; /* RFC 8259: control characters must be escaped */
        if (c == 0xED && i + 1 < n && s[i + 1] >= 0xA0) return 0; /* a raw surrogate */
        if (c == '\\') {
            if (i + 1 >= n) return 0;
            c = s[i + 1];
            if (c == 'u') {
                uint32_t cp, low;
                if (!hex4_at(s, n, i, &cp)) return 0;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return 0; /* a low surrogate without its high one */
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (!hex4_at(s, n, i + 6, &low) || low < 0xDC00 || low > 0xDFFF) return 0;
                    i += 12;
                    continue;
                }
                i += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", c) || c == 0) return 0;
            i += 2;
            continue;
        }
        i++;
    }
    return 0;
}

/* A number token at s[i]; returns the index after it or 0 (syntax); *is_float when it has a
 * fraction or an exponent. RFC 8259: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static size_t scan_number(const unsigned char *s, size_t n, size_t i, int *is_float)
{
    *is_float = 0;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return 0;
    if (s[i] == '0') i++;
    else if (s[i] >= '1' && s[i] <= '9') { while (i < n && s[i] >= '0' && s[i] <= '9') i++; }
    else return 0;
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        *is_float = 1;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        *is_float = 1;
    }
    return i;
}

/* An integer literal in [-2^63, 2^64) (rule 6): sets *neg, *mag. */
static int int_in_range(const unsigned char *s, size_t len, int *neg, uint64_t *mag)
{
    size_t i = 0;
    uint64_t m = 0;
    *neg = 0;
    if (s[0] == '-') { *neg = 1; i = 1; }
    if (len - i > 20) return 0;
    for (; i < len; i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (m > (UINT64_MAX - d) / 10) return 0;
        m = m * 10 + d;
    }
    if (*neg && m > ((uint64_t)1 << 63)) return 0;
    if (m == 0) *neg = 0; /* -0 is the integer 0 */
    *mag = m;
    return 1;
}

/* A non-integer literal: at most 100 characters and a finite binary64 value (rule 6). */
static int float_in_range(const unsigned char *s, size_t len, double *out)
{
    char buf[VJ_MAX_NUMBER_CHARS + 1];
    double v;
    if (len > VJ_MAX_NUMBER_CHARS) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    v = strtod(buf, NULL); /* correctly rounded in the C locale; overflow gives HUGE_VAL */
    if (!(v - v == 0.0)) return 0; /* inf or nan */
    *out = v;
    return 1;
}

static int literal(const unsigned char *s, size_t n, size_t i, const char *word)
{
    size_t k = strlen(word);
    return n - i >= k && memcmp(s + i, word, k) == 0;
}

int vj_check(const unsigned char *s, size_t n, size_t *bad_number, size_t *bad_len)
{
    /* spec 4.1.1 rules 4 (syntax), 5 (depth), 6 (numbers), checked as properties of the whole text:
     * syntax over all of it first, then depth, then the first number out of range in text order.
     * Iterative, with one bit per open container: any depth is judged without recursion. */
    unsigned char *stack = NULL; /* bit d: 1 when level d is an object */
    size_t depth = 0, maxdepth = 0, i, num_at = 0, num_len = 0;
    int have_bad = 0, verdict = VJ_SYNTAX;
    stack = (unsigned char *)calloc(n / 8 + 1, 1); /* at most n open containers */
    if (!stack) return VJ_NOMEM;
    i = skip_ws(s, n, 0);
    for (;;) {
        /* a value */
        if (i >= n) goto done;
        if (s[i] == '{' || s[i] == '[') {
            int obj = s[i] == '{';
            i = skip_ws(s, n, i + 1);
            if (obj) stack[depth / 8] = (unsigned char)(stack[depth / 8] | (1u << (depth % 8)));
            else stack[depth / 8] = (unsigned char)(stack[depth / 8] & ~(1u << (depth % 8)));
            depth++;
            if (depth > maxdepth) maxdepth = depth;
            if (i < n && s[i] == (obj ? '}' : ']')) { depth--; i++; goto after; }
            if (obj) {
                if (i >= n || s[i] != '"' || !(i = scan_string(s, n, i))) goto done;
                i = skip_ws(s, n, i);
                if (i >= n || s[i] != ':') goto done;
                i = skip_ws(s, n, i + 1);
            }
            continue;
        } else if (s[i] == '"') {
            if (!(i = scan_string(s, n, i))) goto done;
        } else if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9')) {
            int is_float, neg;
            uint64_t mag;
            double d;
            size_t e = scan_number(s, n, i, &is_float);
            if (!e) goto done;
            if (!have_bad && !(is_float ? float_in_range(s + i, e - i, &d) : int_in_range(s + i, e - i, &neg, &mag))) {
                have_bad = 1; num_at = i; num_len = e - i;
            }
            i = e;
        } else if (literal(s, n, i, "true")) i += 4;
        else if (literal(s, n, i, "false")) i += 5;
        else if (literal(s, n, i, "null")) i += 4;
        else goto done;
    after:
        i = skip_ws(s, n, i);
        if (depth == 0) {
            if (i != n) goto done;
            break;
        }
        {
            int obj = (stack[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1;
            if (i < n && s[i] == ',') {
                i = skip_ws(s, n, i + 1);
                if (obj) {
                    if (i >= n || s[i] != '"' || !(i = scan_string(s, n, i))) goto done;
                    i = skip_ws(s, n, i);
                    if (i >= n || s[i] != ':') goto done;
                    i = skip_ws(s, n, i + 1);
                }
                continue;
            }
            if (i < n && s[i] == (obj ? '}' : ']')) { depth--; i++; goto after; }
            goto done;
        }
    }
    if (maxdepth > VJ_MAX_DEPTH) verdict = VJ_DEPTH;
    else if (have_bad) { verdict = VJ_NUMBER; *bad_number = num_at; *bad_len = num_len; }
    else verdict = VJ_OK;
done:
    free(stack);
    return verdict;
}

/* ---- the tree ---------------------------------------------------------------------------- */

static uint32_t new_node(vj_doc *d)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        vj_node *p = (vj_node *)realloc(d->nodes, cap * sizeof *p);
        if (!p) return 0;
        d->nodes = p;
        d->cap = cap;
    }
    memset(&d->nodes[d->n], 0, sizeof d->nodes[0]);
    return (uint32_t)d->n++;
}

static void put_utf8(unsigned char **o, uint32_t c)
{
    /* code points as UTF-8; a lone surrogate (a \u escape) in its 3-byte form, which keeps byte
     * order equal to code-point order */
    unsigned char *p = *o;
    if (c < 0x80) *p++ = (unsigned char)c;
    else if (c < 0x800) { *p++ = (unsigned char)(0xC0 | (c >> 6)); *p++ = (unsigned char)(0x80 | (c & 63)); }
    else if (c < 0x10000) {
        *p++ = (unsigned char)(0xE0 | (c >> 12));
        *p++ = (unsigned char)(0x80 | ((c >> 6) & 63));
        *p++ = (unsigned char)(0x80 | (c & 63));
    } else {
        *p++ = (unsigned char)(0xF0 | (c >> 18));
        *p++ = (unsigned char)(0x80 | ((c >> 12) & 63));
        *p++ = (unsigned char)(0x80 | ((c >> 6) & 63));
        *p++ = (unsigned char)(0x80 | (c & 63));
    }
    *o = p;
}

static uint32_t hex4(const unsigned char *s)
{
    return (uint32_t)(hexval(s[0]) << 12 | hexval(s[1]) << 8 | hexval(s[2]) << 4 | hexval(s[3]));
}

/* Unescape the (valid) string token at s[i]; appends to the arena; returns the index after it. */
static size_t unescape(vj_doc *d, const unsigned char *s, size_t i, uint32_t *off, uint32_t *len)
{
    unsigned char *o = d->arena + d->alen, *start = o;
    i++;
    while (s[i] != '"') {
        if (s[i] != '\\') { *o++ = s[i++]; continue; }
        switch (s[i + 1]) {
        case 'b': *o++ = '\b'; i += 2; break;
        case 'f': *o++ = '\f'; i += 2; break;
        case 'n': *o++ = '\n'; i += 2; break;
        case 'r': *o++ = '\r'; i += 2; break;
        case 't': *o++ = '\t'; i += 2; break;
        case 'u': {
            uint32_t c = hex4(s + i + 2);
            i += 6;
            /* a high surrogate followed by an escaped low surrogate is one code point */
            if (c >= 0xD800 && c <= 0xDBFF && s[i] == '\\' && s[i + 1] == 'u') {
                uint32_t c2 = hex4(s + i + 2);
                if (c2 >= 0xDC00 && c2 <= 0xDFFF) {
                    c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00);
                    i += 6;
                }
            }
            put_utf8(&o, c);
            break;
        }
        default: *o++ = s[i + 1]; i += 2; break; /* " \ / */
        }
    }
    *off = (uint32_t)(start - d->arena);
    *len = (uint32_t)(o - start);
    d->alen += (size_t)(o - start);
    return i + 1;
}

static size_t build(vj_doc *d, const unsigned char *s, size_t n, size_t i, uint32_t *out);

static size_t build(vj_doc *d, const unsigned char *s, size_t n, size_t i, uint32_t *out)
{
    uint32_t me = new_node(d);
    vj_node *v;
    if (!me) return 0;
    *out = me;
    i = skip_ws(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        int obj = s[i] == '{';
        uint32_t last = 0;
        d->nodes[me].type = obj ? VJ_OBJ : VJ_ARR;
        i = skip_ws(s, n, i + 1);
        if (s[i] == (obj ? '}' : ']')) return i + 1;
        for (;;) {
            uint32_t koff = 0, klen = 0, child;
            if (obj) {
                i = unescape(d, s, i, &koff, &klen);
                i = skip_ws(s, n, i) + 1; /* ':' */
            }
            i = build(d, s, n, i, &child);
            if (!i) return 0;
            v = &d->nodes[child];
            v->key = koff;
            v->key_len = klen;
            if (last) d->nodes[last].next = child;
            else d->nodes[me].first = child;
            last = child;
            d->nodes[me].count++;
            i = skip_ws(s, n, i);
            if (s[i] == ',') { i = skip_ws(s, n, i + 1); continue; }
            return i + 1; /* the closer */
        }
    }
    v = &d->nodes[me];
    if (s[i] == '"') {
        v->type = VJ_STR;
        return unescape(d, s, i, &v->str, &v->str_len);
    }
    if (s[i] == 't') { v->type = VJ_TRUE; return i + 4; }
    if (s[i] == 'f') { v->type = VJ_FALSE; return i + 5; }
    if (s[i] == 'n') { v->type = VJ_NULL; return i + 4; }
    {
        int is_float, neg = 0;
        size_t e = scan_number(s, n, i, &is_float);
        if (is_float) { v->type = VJ_FLOAT; float_in_range(s + i, e - i, &v->num.d); }
        else { v->type = VJ_INT; int_in_range(s + i, e - i, &neg, &v->num.mag); v->neg = (unsigned char)neg; }
        return e;
    }
}

static int key_cmp(const vj_doc *d, uint32_t a, uint32_t b)
{
    const vj_node *x = &d->nodes[a], *y = &d->nodes[b];
    size_t m = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(d->arena + x->key, d->arena + y->key, m);
    if (c) return c;
    return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

typedef struct {
    const unsigned char *key;
    uint32_t len, node;
} member;

static int cmp_members(const void *a, const void *b)
{
    const member *x = (const member *)a, *y = (const member *)b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, m);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->node < y->node ? -1 : x->node > y->node; /* node index is text order */
}

/* rule 7: the first object (in the order objects end) with a repeated key; *dup its node. */
static int find_dup(const vj_doc *d, uint32_t v, uint32_t *dup, member *scratch)
{
    uint32_t c, k, cnt = 0, best = 0;
    const vj_node *x = &d->nodes[v];
    if (x->type != VJ_OBJ && x->type != VJ_ARR) return 0;
    for (c = x->first; c; c = d->nodes[c].next)
        if (find_dup(d, c, dup, scratch)) return 1;
    if (x->type != VJ_OBJ || x->count < 2) return 0;
    for (c = x->first; c; c = d->nodes[c].next) {
        scratch[cnt].key = d->arena + d->nodes[c].key;
        scratch[cnt].len = d->nodes[c].key_len;
        scratch[cnt++].node = c;
    }
    qsort(scratch, cnt, sizeof *scratch, cmp_members);
    for (k = 1; k < cnt; k++) /* a repeat: not the first of its run of equal keys */
        if (key_cmp(d, scratch[k - 1].node, scratch[k].node) == 0 && (!best || scratch[k].node < best))
            best = scratch[k].node;
    if (best) { *dup = best; return 1; }
    return 0;
}

int vj_parse(const unsigned char *s, size_t n, vj_doc *d, uint32_t *dup_key)
{
    /* call after vj_check gave VJ_OK; builds the tree and applies rule 7 */
    uint32_t root;
    member *scratch;
    memset(d, 0, sizeof *d);
    d->arena = (unsigned char *)malloc(n + 1);
    if (!d->arena) return VJ_NOMEM;
    new_node(d); /* node 0: "none" */
    if (d->n != 1) return VJ_NOMEM;
    if (!build(d, s, n, 0, &root)) return VJ_NOMEM;
    d->root = root;
    scratch = (member *)malloc(d->n * sizeof *scratch);
    if (!scratch) return VJ_NOMEM;
    *dup_key = 0;
    find_dup(d, root, dup_key, scratch);
    free(scratch);
    return *dup_key ? VJ_DUPLICATE : VJ_OK;
}

void vj_free(vj_doc *d)
{
    free(d->nodes);
    free(d->arena);
    memset(d, 0, sizeof *d);
}

uint32_t vj_get(const vj_doc *d, uint32_t obj, const char *key)
{
    size_t k = strlen(key);
    uint32_t c;
    if (!obj || d->nodes[obj].type != VJ_OBJ) return 0;
    for (c = d->nodes[obj].first; c; c = d->nodes[c].next)
        if (d->nodes[c].key_len == k && memcmp(d->arena + d->nodes[c].key, key, k) == 0) return c;
    return 0;
}

int vj_str_is(const vj_doc *d, uint32_t v, const char *want)
{
    size_t k = strlen(want);
    return v && d->nodes[v].type == VJ_STR && d->nodes[v].str_len == k &&
           memcmp(d->arena + d->nodes[v].str, want, k) == 0;
}
