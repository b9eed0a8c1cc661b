/* test_cache_concurrency.c: the model cache under many threads (also run under TSan):
 * a random acquire/release storm over more models than fit, checking the budget, pins
 * and single-flight, also with kept models (kept and unkept meanwhile); and resident
 * hits staying fast while a slow load runs. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/clock.h"
#include "loader/cache.h"
#include "test_cache_fake.h"

enum { STORM_THREADS = 8, STORM_MODELS = 20, STORM_PAIRS = 10000 };

typedef struct storm {
    loader_cache *c;
    fake_loader *f;
    unsigned seed;
    int ops;
    int errors;     /* every failed acquire, and a pin of the wrong model */
    int unexpected; /* of those, all but AICFN_E_CAPACITY (first_unexpected: the first) */
    char first_error[AICFN_ERRMSG_MAX], first_unexpected[AICFN_ERRMSG_MAX];
    uint64_t cold, joined;
} storm;

static void storm_error(storm *s, int rc, const char *msg) {
    if (s->errors++ == 0) snprintf(s->first_error, sizeof s->first_error, "%s", msg);
    if (rc != AICFN_E_CAPACITY && s->unexpected++ == 0)
        snprintf(s->first_unexpected, sizeof s->first_unexpected, "%s (%s)", msg, aicfn_status_name(rc));
}

static void *storm_main(void *arg) {
    storm *s = arg;
    for (int i = 0; i < s->ops; i++) {
        s->seed = s->seed * 1103515245u + 12345u;
        int m = (int)((s->seed >> 16) % STORM_MODELS);
        char key[8];
        snprintf(key, sizeof key, "m%d", m);
        loader_cache_entry *e = NULL;
        loader_acquire_info info;
        aicfn_error err;
        int rc = loader_cache_acquire(s->c, key, NULL, clock_now_us() + 10000000, &e, &info, &err);
        if (rc != AICFN_OK) {
            storm_error(s, rc, err.msg);
            continue;
        }
        atomic_fetch_add(&s->f->pins[m], 1);
        fake_model *fm = loader_cache_entry_model(e);
        if (fm->idx != m) storm_error(s, AICFN_E_INTERNAL, "acquire pinned another model");
        s->cold += info.cold;
        s->joined += info.joined;
        if ((s->seed >> 8) % 4 == 0) fake_sleep_us(20); /* hold the pin a little */
        atomic_fetch_sub(&s->f->pins[m], 1);
        loader_cache_release(s->c, e);
    }
    return NULL;
}

/* The storms' cache: STORM_MODELS models of mixed sizes and load times (fake loader f,
 * reset) and a budget for 5 of the biggest. */
static loader_cache *storm_cache(fake_loader *f, uint64_t *budget) {
    memset(f, 0, sizeof *f);
    uint64_t biggest = 0;
    for (int i = 0; i < STORM_MODELS; i++) {
        f->sizes[i] = 1000 + 37 * (uint64_t)i;
        f->delay_us[i] = 50 + 10 * (uint64_t)(i % 5);
        if (f->sizes[i] > biggest) biggest = f->sizes[i];
    }
    *budget = 5 * biggest;
    return fake_cache(f, *budget, NULL);
}

static void storm_budget_pins_single_flight(void **state) {
    (void)state;
    static fake_loader f;
    uint64_t budget;
    loader_cache *c = storm_cache(&f, &budget);
    storm s[STORM_THREADS];
    pthread_t th[STORM_THREADS];
    for (int i = 0; i < STORM_THREADS; i++) {
        s[i] =
            (storm){.c = c, .f = &f, .seed = 7919u * (unsigned)(i + 1), .ops = STORM_PAIRS / STORM_THREADS};
        assert_int_equal(pthread_create(&th[i], NULL, storm_main, &s[i]), 0);
    }
    uint64_t cold = 0, joined = 0;
    for (int i = 0; i < STORM_THREADS; i++) {
        pthread_join(th[i], NULL);
        if (s[i].errors) fail_msg("thread %d: %d errors, first: %s", i, s[i].errors, s[i].first_error);
        cold += s[i].cold;
        joined += s[i].joined;
    }
    if (atomic_load(&f.violations)) fail_msg("%s", f.violation);
    assert_true(atomic_load(&f.max_alive_bytes) <= budget);
    loader_cache_counters k;
    loader_cache_get_counters(c, &k);
    /* Every miss either started the one load of that residency or joined it. */
    uint64_t loads = 0, unloads = 0;
    int resident = 0;
    for (int i = 0; i < STORM_MODELS; i++) {
        loads += atomic_load(&f.loads[i]);
        unloads += atomic_load(&f.unloads[i]);
        resident += atomic_load(&f.resident[i]);
        /* per key: each residency was loaded exactly once */
        assert_int_equal(atomic_load(&f.loads[i]) - atomic_load(&f.unloads[i]), atomic_load(&f.resident[i]));
    }
    assert_int_equal(k.loads, loads);
    assert_int_equal(k.load_failures, 0);
    assert_int_equal(k.hits + k.misses, STORM_PAIRS);
    assert_int_equal(k.misses, cold);
    assert_int_equal(cold - joined, loads);
    assert_int_equal(k.evictions, unloads);
    assert_true(loads > (uint64_t)STORM_MODELS); /* the budget forced reloads */
    loader_cache_status st;
    loader_cache_get_status(c, &st, NULL, 0);
    assert_true(st.used_bytes <= budget);
    assert_int_equal(st.n_entries, (uint32_t)resident);
    print_message("storm: %llu hits, %llu misses (%llu joined), %llu loads, %llu evictions, %llu thrash, "
                  "peak %llu/%llu\n",
                  (unsigned long long)k.hits, (unsigned long long)k.misses, (unsigned long long)joined,
                  (unsigned long long)loads, (unsigned long long)k.evictions,
                  (unsigned long long)k.thrash_reloads, (unsigned long long)atomic_load(&f.max_alive_bytes),
                  (unsigned long long)budget);
    loader_cache_destroy(c);
    assert_int_equal(atomic_load(&f.alive_bytes), 0);
}

/* Keeps and unkeeps model m2 over and over while the storm runs. */
typedef struct toggler {
    loader_cache *c;
    int rounds;
    int errors;
} toggler;

static void *toggler_main(void *arg) {
    toggler *t = arg;
    for (int i = 0; i < t->rounds; i++) {
        aicfn_error err;
        int rc = loader_cache_keep(t->c, "m2", NULL, clock_now_us() + 10000000, NULL, &err);
        if (rc != AICFN_OK && rc != AICFN_E_CAPACITY) t->errors++;
        fake_sleep_us(50);
        rc = loader_cache_unkeep(t->c, "m2", &err);
        if (rc != AICFN_OK && rc != AICFN_E_NOT_FOUND) t->errors++;
    }
    return NULL;
}

/* The same storm with m0 and m1 kept resident (scaling.min_workers) and m2 kept and
 * unkept meanwhile: the kept ones are loaded once and never evicted, the budget holds. */
static void storm_with_kept_models(void **state) {
    (void)state;
    static fake_loader f;
    uint64_t budget;
    loader_cache *c = storm_cache(&f, &budget);
    aicfn_error err;
    assert_int_equal(loader_cache_keep(c, "m0", NULL, 0, NULL, &err), AICFN_OK);
    assert_int_equal(loader_cache_keep(c, "m1", NULL, 0, NULL, &err), AICFN_OK);
    storm s[STORM_THREADS];
    pthread_t th[STORM_THREADS], tt;
    toggler tg = {.c = c, .rounds = 200};
    assert_int_equal(pthread_create(&tt, NULL, toggler_main, &tg), 0);
    for (int i = 0; i < STORM_THREADS; i++) {
        s[i] =
            (storm){.c = c, .f = &f, .seed = 104729u * (unsigned)(i + 1), .ops = STORM_PAIRS / STORM_THREADS};
        assert_int_equal(pthread_create(&th[i], NULL, storm_main, &s[i]), 0);
    }
    for (int i = 0; i < STORM_THREADS; i++) {
        pthread_join(th[i], NULL);
        /* CAPACITY is possible now (three kept models leave less room), nothing else. */
        if (s[i].unexpected)
            fail_msg("thread %d: %d errors other than AICFN_E_CAPACITY, first: %s", i, s[i].unexpected,
                     s[i].first_unexpected);
    }
    pthread_join(tt, NULL);
    assert_int_equal(tg.errors, 0);
    if (atomic_load(&f.violations)) fail_msg("%s", f.violation);
    assert_true(atomic_load(&f.max_alive_bytes) <= budget);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(atomic_load(&f.loads[i]), 1);
        assert_int_equal(atomic_load(&f.unloads[i]), 0);
        assert_int_equal(atomic_load(&f.resident[i]), 1);
    }
    for (int i = 0; i < STORM_MODELS; i++)
        assert_int_equal(atomic_load(&f.loads[i]) - atomic_load(&f.unloads[i]), atomic_load(&f.resident[i]));
    assert_true(atomic_load(&f.loads[5]) > 1); /* the others still cycled through the rest */
    loader_cache_destroy(c);
    assert_int_equal(atomic_load(&f.alive_bytes), 0);
}

typedef struct hitter {
    loader_cache *c;
    fake_loader *f;
    _Atomic int *stop;
    int model;
    uint64_t max_us;
    uint64_t n;
    int errors;
} hitter;

static void *hitter_main(void *arg) {
    hitter *h = arg;
    char key[8];
    snprintf(key, sizeof key, "m%d", h->model);
    while (!atomic_load(h->stop)) {
        loader_cache_entry *e;
        aicfn_error err;
        uint64_t t0 = clock_now_us();
        int rc = loader_cache_acquire(h->c, key, NULL, 0, &e, NULL, &err);
        uint64_t dt = clock_now_us() - t0;
        if (rc != AICFN_OK) {
            h->errors++;
            continue;
        }
        loader_cache_release(h->c, e);
        if (dt > h->max_us) h->max_us = dt;
        h->n++;
        fake_sleep_us(200);
    }
    return NULL;
}

static void resident_hits_unaffected_by_slow_load(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    const uint64_t slow_us = 1000000;
    for (int i = 0; i < 4; i++)
        f.sizes[i] = 100;
    f.sizes[9] = 500;
    f.delay_us[9] = slow_us;
    loader_cache *c = fake_cache(&f, 1000, NULL);
    aicfn_error err;
    for (int i = 0; i < 4; i++) {
        char key[8];
        snprintf(key, sizeof key, "m%d", i);
        assert_int_equal(loader_cache_preload(c, key, NULL, 0, NULL, &err), AICFN_OK);
    }
    _Atomic int stop = 0;
    enum { H = 4 };
    hitter hs[H];
    pthread_t th[H];
    for (int i = 0; i < H; i++) {
        hs[i] = (hitter){.c = c, .f = &f, .stop = &stop, .model = i};
        assert_int_equal(pthread_create(&th[i], NULL, hitter_main, &hs[i]), 0);
    }
    fake_sleep_us(20000);
    loader_acquire_info info;
    uint64_t t0 = clock_now_us();
    assert_int_equal(loader_cache_preload(c, "m9", NULL, 0, &info, &err), AICFN_OK);
    uint64_t load_us = clock_now_us() - t0;
    atomic_store(&stop, 1);
    uint64_t max_us = 0, n = 0;
    for (int i = 0; i < H; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(hs[i].errors, 0);
        if (hs[i].max_us > max_us) max_us = hs[i].max_us;
        n += hs[i].n;
    }
    print_message("slow load %llu us; %llu resident acquires during it, max latency %llu us\n",
                  (unsigned long long)load_us, (unsigned long long)n, (unsigned long long)max_us);
    assert_true(load_us >= slow_us);
    assert_true(n > 100);
    assert_true(max_us * 10 < load_us); /* resident calls never wait behind the load */
    loader_cache_destroy(c);
    if (atomic_load(&f.violations)) fail_msg("%s", f.violation);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(storm_budget_pins_single_flight),
        cmocka_unit_test(resident_hits_unaffected_by_slow_load),
        cmocka_unit_test(storm_with_kept_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
