/* vera_internal.h - the JSON dialect of spec 4.1.1, shared by vera_json.c and vera_reader.c. */
#ifndef VERA_INTERNAL_H
#define VERA_INTERNAL_H

#include "vera.h"

enum { VJ_OK = 0, VJ_SYNTAX, VJ_DEPTH, VJ_NUMBER, VJ_DUPLICATE, VJ_NOMEM };
enum { VJ_NULL = 1, VJ_TRUE, VJ_FALSE, VJ_INT, VJ_FLOAT, VJ_STR, VJ_ARR, VJ_OBJ };

typedef struct {
    unsigned char type, neg; /* neg: a negative integer (never for 0) */
    uint32_t count;          /* children of an array or object */
    uint32_t first, next;    /* first child; next sibling (0: none) */
    uint32_t key, key_len;   /* the member's key in the arena (children of objects) */
    uint32_t str, str_len;   /* a string's bytes in the arena (UTF-8; \u0000 possible) */
    union { uint64_t mag; double d; } num; /* VJ_INT: |value|; VJ_FLOAT: value */
} vj_node;

typedef struct {
    vj_node *nodes; /* node 0 is "none" */
    size_t n, cap;
    unsigned char *arena; /* unescaped strings */
    size_t alen;
    uint32_t root;
} vj_doc;

size_t vj_structural_count(const unsigned char *s, size_t n, size_t stop);
int vj_valid_utf8(const unsigned char *s, size_t n);
/* rules 4-6 on the whole text: VJ_OK, VJ_SYNTAX, VJ_DEPTH, VJ_NUMBER (first bad literal), VJ_NOMEM */
int vj_check(const unsigned char *s, size_t n, size_t *bad_number, size_t *bad_len);
/* after VJ_OK from vj_check: the tree, and rule 7 (VJ_DUPLICATE, *dup_key its node) */
int vj_parse(const unsigned char *s, size_t n, vj_doc *d, uint32_t *dup_key);
void vj_free(vj_doc *d);
uint32_t vj_get(const vj_doc *d, uint32_t obj, const char *key);
int vj_str_is(const vj_doc *d, uint32_t v, const char *want);

#endif
