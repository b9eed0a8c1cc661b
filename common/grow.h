/* grow.h: growing a heap array geometrically, with overflow checks. One helper for the
 * "append a row, doubling the capacity" loops, so none of them hand-rolls the arithmetic. */
#ifndef AICFN_COMMON_GROW_H
#define AICFN_COMMON_GROW_H

#include <stddef.h>

/* Ensures the array `arr` (capacity *cap elements of `elem` bytes) holds at least `need`
 * elements. Returns `arr` itself when it already does; otherwise a realloc'ed array of
 * max(need, 2 × *cap, 8) elements, updating *cap. Returns NULL on overflow or when out of
 * memory, leaving `arr` and *cap untouched (the caller still owns and frees `arr`). */
void *grow_array(void *arr, size_t *cap, size_t need, size_t elem);

#endif
