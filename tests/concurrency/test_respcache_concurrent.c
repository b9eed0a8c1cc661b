/* test_respcache_concurrent.c: 8 threads putting and getting 200 keys in a response
 * cache that holds about 30 of them (run under TSan too): every hit returns the reply
 * stored for exactly that key, and the byte budget is never exceeded. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/respcache.h"

#define THREADS 8
#define KEYS 200
#define OPS 20000
#define BUDGET (64u << 10)

typedef struct arg {
    gw_respcache *c;
    uint32_t seed;
    int bad, hits;
} arg;

/* The reply of key i: its length and bytes depend on i. */
static size_t reply_of(int i, uint8_t *buf) {
    size_t n = 1000 + (size_t)(i % 7) * 200;
    for (size_t k = 0; k < n; k++)
        buf[k] = (uint8_t)(i * 31 + (int)k);
    return n;
}

static void *run(void *p) {
    arg *a = p;
    uint8_t want[4000];
    char key[16];
    for (int op = 0; op < OPS; op++) {
        a->seed = a->seed * 1103515245u + 12345u;
        int i = (int)((a->seed >> 8) % KEYS);
        snprintf(key, sizeof key, "key-%d", i);
        size_t n = reply_of(i, want);
        if ((a->seed >> 4) & 1) {
            gw_respcache_put(a->c, (const uint8_t *)key, strlen(key), want, n, UINT64_MAX);
        } else {
            uint8_t *r;
            size_t len;
            if (gw_respcache_get(a->c, (const uint8_t *)key, strlen(key), 1, &r, &len)) {
                a->hits++;
                if (len != n || memcmp(r, want, n) != 0) a->bad++;
                free(r);
            }
        }
        if (gw_respcache_get_stats(a->c).bytes > BUDGET) a->bad++;
    }
    return NULL;
}

static void storm(void **state) {
    (void)state;
    gw_respcache *c;
    aicfn_error e;
    assert_int_equal(gw_respcache_create(BUDGET, &c, &e), AICFN_OK);
    pthread_t th[THREADS];
    arg args[THREADS];
    for (int t = 0; t < THREADS; t++) {
        args[t] = (arg){c, (uint32_t)(t + 1) * 2654435761u, 0, 0};
        assert_int_equal(pthread_create(&th[t], NULL, run, &args[t]), 0);
    }
    int hits = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(args[t].bad, 0);
        hits += args[t].hits;
    }
    gw_respcache_stats s = gw_respcache_get_stats(c);
    print_message("hits %d, entries %llu, bytes %llu, evictions %llu\n", hits, (unsigned long long)s.entries,
                  (unsigned long long)s.bytes, (unsigned long long)s.evictions);
    assert_true(hits > 0);
    assert_true(s.evictions > 0);
    assert_true(s.bytes <= BUDGET);
    gw_respcache_destroy(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(storm)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
