/* grow.c: geometric growth of heap arrays (see grow.h). */
#include "common/grow.h"

#include <stdint.h>
#include <stdlib.h>

void *grow_array(void *arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return arr;
    size_t ncap = *cap > SIZE_MAX / 2 ? need : *cap * 2;
    if (ncap < need) ncap = need;
    if (ncap < 8) ncap = 8;
    if (elem != 0 && ncap > SIZE_MAX / elem) return NULL;
    void *na = realloc(arr, ncap * elem);
    if (na == NULL) return NULL;
    *cap = ncap;
    return na;
}
