/* test_cache.c: the model cache's rules on one or a few threads, with a fake loader:
 * hits and misses, LRU eviction and its report, thrash, too-large models, everything
 * pinned until the deadline, a load failing with waiters, explicit evict, preload,
 * status, a pluggable policy and kept models (keep, unkeep). The many-thread tests are in tests/concurrency.
 */
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

static void assert_clean(fake_loader *f) {
    if (atomic_load(&f->violations)) fail_msg("%s", f->violation);
}

static void hit_miss_and_lru(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    for (int i = 0; i < 5; i++)
        f.sizes[i] = 100;
    loader_cache *c = fake_cache(&f, 300, NULL);
    aicfn_error err;
    loader_acquire_info info;
    loader_cache_entry *e;
    const char *keys[] = {"m0", "m1", "m2"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(loader_cache_acquire(c, keys[i], NULL, 0, &e, &info, &err), AICFN_OK);
        assert_true(info.cold);
        assert_false(info.joined);
        assert_int_equal(info.model_bytes, 100);
        assert_string_equal(loader_cache_entry_key(e), keys[i]);
        assert_non_null(loader_cache_entry_model(e));
        loader_cache_release(c, e);
    }
    /* Hit on m0 makes m1 the least recently used. */
    assert_int_equal(loader_cache_acquire(c, "m0", NULL, 0, &e, &info, &err), AICFN_OK);
    assert_false(info.cold);
    loader_cache_release(c, e);
    assert_int_equal(loader_cache_acquire(c, "m3", NULL, 0, &e, &info, &err), AICFN_OK);
    assert_true(info.cold);
    assert_int_equal(info.n_evictions, 1);
    assert_string_equal(info.evictions[0].key, "m1");
    assert_int_equal(info.evictions[0].bytes, 100);
    assert_false(info.thrash);
    loader_cache_release(c, e);
    assert_int_equal(atomic_load(&f.resident[1]), 0);
    /* Reloading m1 within the window is thrash once it happens: a reload that fails is
     * not counted (it evicts m2, LRU now), the one that then succeeds is. */
    f.fail[1] = 1;
    assert_int_equal(loader_cache_acquire(c, "m1", NULL, 0, &e, &info, &err), AICFN_E_CORRUPT);
    assert_false(info.thrash);
    loader_cache_counters k;
    loader_cache_get_counters(c, &k);
    assert_int_equal(k.thrash_reloads, 0);
    f.fail[1] = 0;
    assert_int_equal(loader_cache_acquire(c, "m1", NULL, 0, &e, &info, &err), AICFN_OK);
    assert_true(info.thrash);
    loader_cache_release(c, e);
    loader_cache_get_counters(c, &k);
    assert_int_equal(k.hits, 1);
    assert_int_equal(k.misses, 6);
    assert_int_equal(k.loads, 6);
    assert_int_equal(k.load_failures, 1);
    assert_int_equal(k.evictions, 2);
    assert_int_equal(k.thrash_reloads, 1);
    assert_int_equal(k.bytes_loaded, 500);
    loader_cache_status st;
    loader_cache_entry_status ents[8];
    loader_cache_get_status(c, &st, ents, 8);
    assert_int_equal(st.budget_bytes, 300);
    assert_int_equal(st.used_bytes, 300);
    assert_int_equal(st.n_entries, 3);
    assert_int_equal(st.n_returned, 3);
    assert_string_equal(ents[0].key, "m1"); /* most recently used first */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ents[i].state, LOADER_ENTRY_READY);
        assert_int_equal(ents[i].refcount, 0);
    }
    /* Fewer slots than entries: the most recent ones (m0 was used before m3 and m1). */
    loader_cache_get_status(c, &st, ents, 2);
    assert_int_equal(st.n_entries, 3);
    assert_int_equal(st.n_returned, 2);
    assert_string_equal(ents[0].key, "m1");
    assert_string_equal(ents[1].key, "m3");
    assert_string_equal(loader_entry_state_name(LOADER_ENTRY_EVICTING), "EVICTING");
    loader_cache_destroy(c);
    assert_int_equal(atomic_load(&f.alive_bytes), 0);
    assert_clean(&f);
}

static void too_large_fails_at_once(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[0] = 1001;
    loader_cache *c = fake_cache(&f, 1000, NULL);
    aicfn_error err;
    loader_cache_entry *e = (void *)1;
    uint64_t t0 = clock_now_us();
    assert_int_equal(loader_cache_acquire(c, "m0", NULL, clock_now_us() + 5000000, &e, NULL, &err),
                     AICFN_E_TOO_LARGE);
    assert_true(clock_now_us() - t0 < 1000000);
    assert_null(e);
    assert_non_null(strstr(err.msg, "1001"));
    assert_non_null(strstr(err.msg, "1000"));
    assert_int_equal(atomic_load(&f.aborts), 1);
    loader_cache_status st;
    loader_cache_get_status(c, &st, NULL, 0);
    assert_int_equal(st.n_entries, 0);
    assert_int_equal(st.used_bytes, 0);
    assert_int_equal(loader_cache_acquire(c, "m9", NULL, 0, &e, NULL, &err), AICFN_E_NOT_FOUND);
    /* The refusal loaded nothing; the missing model's manifest is a load that failed. */
    loader_cache_counters k;
    loader_cache_get_counters(c, &k);
    assert_int_equal(k.too_large, 1);
    assert_int_equal(k.loads, 1);
    assert_int_equal(k.load_failures, 1);
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* A cache with a budget for two 100-byte models (m0..m2 exist) holding m0 and m1, both
 * pinned (*a, *b): everything is pinned. */
static loader_cache *all_pinned_cache(fake_loader *f, loader_cache_entry **a, loader_cache_entry **b) {
    memset(f, 0, sizeof *f);
    f->sizes[0] = f->sizes[1] = f->sizes[2] = 100;
    loader_cache *c = fake_cache(f, 200, NULL);
    aicfn_error err;
    assert_int_equal(loader_cache_acquire(c, "m0", NULL, 0, a, NULL, &err), AICFN_OK);
    assert_int_equal(loader_cache_acquire(c, "m1", NULL, 0, b, NULL, &err), AICFN_OK);
    return c;
}

static void all_pinned_waits_for_deadline(void **state) {
    (void)state;
    static fake_loader f;
    aicfn_error err;
    loader_cache_entry *a, *b, *x;
    loader_cache *c = all_pinned_cache(&f, &a, &b);
    uint64_t t0 = clock_now_us();
    assert_int_equal(loader_cache_acquire(c, "m2", NULL, t0 + 150000, &x, NULL, &err), AICFN_E_CAPACITY);
    uint64_t waited = clock_now_us() - t0;
    assert_true(waited >= 140000);
    assert_true(waited < 3000000);
    assert_non_null(strstr(err.msg, "m2"));
    loader_cache_counters k;
    loader_cache_get_counters(c, &k);
    assert_int_equal(k.capacity_failures, 1);
    assert_int_equal(k.evictions, 0);
    assert_int_equal(k.loads, 2); /* m0 and m1: the give-up loaded nothing */
    assert_int_equal(k.load_failures, 0);
    /* Once one is released the same request succeeds and evicts it. */
    loader_cache_release(c, a);
    loader_acquire_info info;
    assert_int_equal(loader_cache_acquire(c, "m2", NULL, clock_now_us() + 150000, &x, &info, &err), AICFN_OK);
    assert_int_equal(info.n_evictions, 1);
    assert_string_equal(info.evictions[0].key, "m0");
    loader_cache_release(c, x);
    loader_cache_release(c, b);
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* A thread acquiring `key` (deadline_us 0: 10 s from its start) and releasing it. */
typedef struct joiner {
    loader_cache *c;
    const char *key;
    uint64_t deadline_us;
    int rc;
    uint64_t done_us;
    aicfn_error err;
    loader_acquire_info info;
} joiner;

static void *joiner_main(void *arg) {
    joiner *j = arg;
    loader_cache_entry *e = NULL;
    uint64_t deadline = j->deadline_us ? j->deadline_us : clock_now_us() + 10000000;
    j->rc = loader_cache_acquire(j->c, j->key, NULL, deadline, &e, &j->info, &j->err);
    j->done_us = clock_now_us();
    if (j->rc == AICFN_OK) loader_cache_release(j->c, e);
    return NULL;
}

/* n threads acquiring `key` at once (each released at once), all ended. */
static void join_all(loader_cache *c, const char *key, joiner *js, int n) {
    pthread_t th[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        js[i] = (joiner){.c = c, .key = key};
        assert_int_equal(pthread_create(&th[i], NULL, joiner_main, &js[i]), 0);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void failed_load_wakes_waiters(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[0] = 100;
    f.sizes[1] = 150;
    f.delay_us[1] = 200000;
    f.fail[1] = 1;
    loader_cache *c = fake_cache(&f, 200, NULL);
    aicfn_error err;
    assert_int_equal(loader_cache_preload(c, "m0", NULL, 0, NULL, &err), AICFN_OK);
    enum { N = 4 };
    joiner js[N];
    join_all(c, "m1", js, N);
    int joined = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(js[i].rc, AICFN_E_CORRUPT);
        assert_non_null(strstr(js[i].err.msg, "frame 3"));
        joined += js[i].info.joined;
    }
    loader_cache_counters k;
    loader_cache_get_counters(c, &k);
    /* Threads that arrived while the load ran joined it; each failure was one load. */
    assert_int_equal(k.load_failures, k.loads - 1);
    assert_true(k.loads - 1 + (uint64_t)joined == N);
    loader_cache_status st;
    loader_cache_entry_status ents[4];
    loader_cache_get_status(c, &st, ents, 4);
    assert_int_equal(st.used_bytes, 0); /* m0 was evicted to make room for m1, then m1 failed */
    assert_int_equal(st.n_entries, 0);
    assert_int_equal(atomic_load(&f.alive_bytes), 0);
    /* Nothing is left behind: the next try loads afresh (and fails again, alone). */
    loader_cache_entry *e;
    assert_int_equal(loader_cache_acquire(c, "m1", NULL, 0, &e, NULL, &err), AICFN_E_CORRUPT);
    f.fail[1] = 0;
    assert_int_equal(loader_cache_acquire(c, "m1", NULL, 0, &e, NULL, &err), AICFN_OK);
    loader_cache_release(c, e);
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* A load whose device allocation fails is AICFN_E_CAPACITY like a wait for room that
 * timed out, but only the latter is tried again by the calls that joined it: a device out
 * of memory is each waiter's error at once, not one more load per waiter. */
static void device_out_of_memory_is_every_waiters_error(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[1] = 150;
    f.delay_us[1] = 300000;
    f.fail[1] = 1;
    f.fail_capacity[1] = 1;
    loader_cache *c = fake_cache(&f, 200, NULL);
    enum { N = 4 };
    joiner js[N];
    join_all(c, "m1", js, N);
    int joined = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(js[i].rc, AICFN_E_CAPACITY);
        assert_non_null(strstr(js[i].err.msg, "out of device memory"));
        joined += js[i].info.joined;
    }
    assert_true(joined > 0);
    /* One load (one prepare) per call that did not join one. */
    assert_int_equal(atomic_load(&f.prepares), (uint64_t)(N - joined));
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* Joined calls keep their own deadlines while the loader waits for room. */
static void joined_calls_keep_their_own_deadlines(void **state) {
    (void)state;
    static fake_loader f;
    loader_cache_entry *a, *b;
    loader_cache *c = all_pinned_cache(&f, &a, &b);
    /* Everything pinned. The first call for m2 loads it and waits 200 ms for room; a call
     * that joins it with 5 s must not fail at 200 ms, and one that joins with 100 ms runs
     * out of capacity, not of load time. */
    uint64_t t0 = clock_now_us();
    joiner loader = {.c = c, .key = "m2", .deadline_us = t0 + 200000};
    joiner patient = {.c = c, .key = "m2", .deadline_us = t0 + 5000000};
    joiner hasty = {.c = c, .key = "m2", .deadline_us = t0 + 100000};
    pthread_t tl, tp, th;
    assert_int_equal(pthread_create(&tl, NULL, joiner_main, &loader), 0);
    fake_sleep_us(30000); /* the loader is waiting for room; the others join it */
    assert_int_equal(pthread_create(&tp, NULL, joiner_main, &patient), 0);
    assert_int_equal(pthread_create(&th, NULL, joiner_main, &hasty), 0);
    pthread_join(tl, NULL);
    pthread_join(th, NULL);
    assert_int_equal(loader.rc, AICFN_E_CAPACITY);
    assert_int_equal(hasty.rc, AICFN_E_CAPACITY);
    assert_non_null(strstr(hasty.err.msg, "no room"));
    fake_sleep_us(300000);      /* well past the loader's deadline: the patient call still waits */
    loader_cache_release(c, a); /* room at last */
    pthread_join(tp, NULL);
    if (patient.rc != AICFN_OK) fail_msg("the patient joined call failed: %s", patient.err.msg);
    assert_true(patient.done_us - t0 >= 500000);
    /* It made the load in the end (the one it joined failed): its record is its own. */
    assert_true(patient.info.cold);
    assert_false(patient.info.joined);
    loader_cache_release(c, b);
    loader_cache_destroy(c);
    assert_clean(&f);
}

static void single_flight_joins(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[0] = 10;
    f.delay_us[0] = 200000;
    loader_cache *c = fake_cache(&f, 100, NULL);
    enum { N = 6 };
    joiner js[N];
    join_all(c, "m0", js, N);
    int cold = 0, joined = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(js[i].rc, AICFN_OK);
        cold += js[i].info.cold;
        joined += js[i].info.joined;
        if (js[i].info.cold) assert_int_equal(js[i].info.timing.total_us, 200000);
    }
    assert_int_equal(atomic_load(&f.loads[0]), 1);
    assert_true(joined >= 1);
    assert_int_equal(cold, joined + 1);
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* A load frees its victims before it allocates, so their bytes and its reservation are
 * never on the device together: another load meanwhile takes the room that is really
 * free, not evicting a model it does not need to (budget 100: m1 50 and m2 30 resident,
 * m3 60 evicts m1, whose unload takes 300 ms; m4 10 fits beside m2 all the while). */
static void a_load_evicting_for_another_evicts_nothing_more(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[1] = 50;
    f.sizes[2] = 30;
    f.sizes[3] = 60;
    f.sizes[4] = 10;
    f.unload_delay_us[1] = 300000;
    loader_cache *c = fake_cache(&f, 100, NULL);
    joiner a[1], b[1];
    join_all(c, "m1", a, 1);
    join_all(c, "m2", b, 1); /* m1 is now the least recently used */
    assert_int_equal(a[0].rc, AICFN_OK);
    assert_int_equal(b[0].rc, AICFN_OK);
    pthread_t th;
    a[0] = (joiner){.c = c, .key = "m3"};
    assert_int_equal(pthread_create(&th, NULL, joiner_main, &a[0]), 0);
    loader_cache_status st;
    uint64_t until = clock_now_us() + 5000000;
    do {
        fake_sleep_us(1000);
        loader_cache_get_status(c, &st, NULL, 0);
    } while (st.evicting_bytes != 50 && clock_now_us() < until);
    assert_int_equal(st.evicting_bytes, 50); /* m1's unload is under way (300 ms) */
    join_all(c, "m4", b, 1);
    assert_int_equal(b[0].rc, AICFN_OK);
    assert_int_equal(b[0].info.n_evictions, 0);
    assert_int_equal(atomic_load(&f.unloads[2]), 0); /* m2 stays */
    assert_int_equal(atomic_load(&f.unloads[1]), 0); /* and m1 was still being freed meanwhile */
    pthread_join(th, NULL);
    assert_int_equal(a[0].rc, AICFN_OK);
    assert_int_equal(a[0].info.n_evictions, 1);
    assert_int_equal(atomic_load(&f.unloads[2]), 0);
    assert_int_equal(atomic_load(&f.max_alive_bytes), 100);
    loader_cache_get_status(c, &st, NULL, 0);
    assert_int_equal(st.used_bytes, 100);
    assert_int_equal(st.evicting_bytes, 0);
    loader_cache_destroy(c);
    assert_clean(&f);
}

static void explicit_evict(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[0] = 10;
    loader_cache *c = fake_cache(&f, 100, NULL);
    aicfn_error err;
    assert_int_equal(loader_cache_evict(c, "m0", &err), AICFN_E_NOT_FOUND);
    loader_cache_entry *e;
    assert_int_equal(loader_cache_acquire(c, "m0", NULL, 0, &e, NULL, &err), AICFN_OK);
    assert_int_equal(loader_cache_evict(c, "m0", &err), AICFN_E_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "in use"));
    loader_cache_release(c, e);
    assert_int_equal(loader_cache_evict(c, "m0", &err), AICFN_OK);
    assert_int_equal(atomic_load(&f.resident[0]), 0);
    loader_cache_status st;
    loader_cache_get_status(c, &st, NULL, 0);
    assert_int_equal(st.used_bytes, 0);
    assert_int_equal(st.counters.evictions, 1);
    assert_int_equal(loader_cache_acquire(c, "", NULL, 0, &e, NULL, &err), AICFN_E_INVALID);
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* A policy that evicts the largest candidate first. */
static size_t largest_first(void *arg, const loader_evict_candidate *cands, size_t n, uint64_t need,
                            size_t *victims) {
    (void)arg;
    size_t k = 0;
    uint64_t freed = 0;
    int used[16] = {0};
    while (freed < need && k < n) {
        size_t best = n;
        for (size_t i = 0; i < n; i++)
            if (!used[i] && (best == n || cands[i].bytes > cands[best].bytes)) best = i;
        used[best] = 1;
        victims[k++] = best;
        freed += cands[best].bytes;
    }
    return k;
}

static size_t bad_policy(void *arg, const loader_evict_candidate *cands, size_t n, uint64_t need,
                         size_t *victims) {
    (void)arg, (void)cands, (void)n, (void)need, (void)victims;
    return 0; /* frees nothing: the cache must not trust it */
}

/* Names one candidate twice: on paper it frees enough, in truth half of it. */
static size_t twice_policy(void *arg, const loader_evict_candidate *cands, size_t n, uint64_t need,
                           size_t *victims) {
    (void)arg, (void)cands, (void)need;
    if (n == 0) return 0;
    victims[0] = victims[1] = n - 1;
    return 2;
}

/* Makes m0..m(n-1) resident, in that order (m0 the least recently used). */
static void preload_m(loader_cache *c, int n) {
    aicfn_error err;
    for (int i = 0; i < n; i++) {
        char k[8];
        snprintf(k, sizeof k, "m%d", i);
        assert_int_equal(loader_cache_preload(c, k, NULL, 0, NULL, &err), AICFN_OK);
    }
}

static void pluggable_policy(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    f.sizes[0] = 50;
    f.sizes[1] = 20;
    f.sizes[2] = 20;
    f.sizes[3] = 30;
    loader_evict_policy pol = {.name = "largest", .choose = largest_first};
    loader_cache *c = fake_cache(&f, 100, &pol);
    aicfn_error err;
    loader_acquire_info info;
    preload_m(c, 3);
    assert_int_equal(loader_cache_preload(c, "m3", NULL, 0, &info, &err), AICFN_OK);
    assert_int_equal(info.n_evictions, 1);
    assert_string_equal(info.evictions[0].key, "m0"); /* LRU would also pick m0; check next */
    assert_int_equal(loader_cache_preload(c, "m0", NULL, 0, &info, &err), AICFN_OK);
    assert_int_equal(info.n_evictions, 1); /* needs 20 more: largest is m3 (30); LRU would take m1 */
    assert_string_equal(info.evictions[0].key, "m3");
    loader_cache_destroy(c);
    /* A policy that chooses too little is overridden by LRU. */
    memset(&f, 0, sizeof f);
    f.sizes[0] = f.sizes[1] = 60;
    loader_evict_policy bad = {.name = "bad", .choose = bad_policy};
    c = fake_cache(&f, 100, &bad);
    assert_int_equal(loader_cache_preload(c, "m0", NULL, 0, NULL, &err), AICFN_OK);
    assert_int_equal(loader_cache_preload(c, "m1", NULL, 0, &info, &err), AICFN_OK);
    assert_int_equal(info.n_evictions, 1);
    loader_cache_destroy(c);
    /* So is one that names a victim twice to seem to free enough: LRU takes the two
     * oldest of three 40-byte models to fit 70 bytes, and the budget holds. */
    memset(&f, 0, sizeof f);
    f.sizes[0] = f.sizes[1] = f.sizes[2] = 40;
    f.sizes[3] = 70;
    loader_evict_policy twice = {.name = "twice", .choose = twice_policy};
    c = fake_cache(&f, 120, &twice);
    preload_m(c, 3);
    assert_int_equal(loader_cache_preload(c, "m3", NULL, 0, &info, &err), AICFN_OK);
    assert_int_equal(info.n_evictions, 2);
    assert_string_equal(info.evictions[0].key, "m0");
    assert_string_equal(info.evictions[1].key, "m1");
    loader_cache_status st;
    loader_cache_get_status(c, &st, NULL, 0);
    assert_true(st.used_bytes <= 120);
    loader_cache_destroy(c);
    assert_clean(&f);
}

/* A kept model (scaling.min_workers) is never the policy's victim, however old; a load
 * that cannot fit beside the kept ones fails at once; unkeep and evict end the keep. */
static void kept_models_stay_resident(void **state) {
    (void)state;
    static fake_loader f;
    memset(&f, 0, sizeof f);
    for (int i = 0; i < 5; i++)
        f.sizes[i] = 100;
    f.sizes[4] = 250;
    loader_cache *c = fake_cache(&f, 300, NULL);
    aicfn_error err;
    loader_acquire_info info;
    assert_int_equal(loader_cache_keep(c, "m0", NULL, 0, &info, &err), AICFN_OK);
    assert_true(info.cold);
    /* m1..m3 cycle through the other 200 bytes; m0, the oldest, stays. */
    for (int round = 0; round < 3; round++)
        for (int i = 1; i <= 3; i++) {
            char k[8];
            snprintf(k, sizeof k, "m%d", i);
            assert_int_equal(loader_cache_preload(c, k, NULL, 0, &info, &err), AICFN_OK);
            for (uint32_t v = 0; v < info.n_evictions; v++)
                assert_string_not_equal(info.evictions[v].key, "m0");
        }
    assert_int_equal(atomic_load(&f.resident[0]), 1);
    loader_cache_status st;
    loader_cache_entry_status ents[8];
    loader_cache_get_status(c, &st, ents, 8);
    int seen = 0;
    for (uint32_t i = 0; i < st.n_returned; i++) {
        assert_int_equal(ents[i].kept, strcmp(ents[i].key, "m0") == 0);
        seen += ents[i].kept;
    }
    assert_int_equal(seen, 1);
    /* 250 bytes cannot fit beside the 100 kept: CAPACITY at once, not at the deadline. */
    uint64_t t0 = clock_now_us();
    assert_int_equal(loader_cache_preload(c, "m4", NULL, t0 + 5000000, NULL, &err), AICFN_E_CAPACITY);
    assert_true(clock_now_us() - t0 < 2000000);
    assert_non_null(strstr(err.msg, "kept resident"));
    /* Keeping an already resident model (m3, loaded last) loads nothing. */
    assert_int_equal(loader_cache_keep(c, "m3", NULL, 0, &info, &err), AICFN_OK);
    assert_false(info.cold);
    /* Unkept, m0 (the least recently used) is the next victim again. */
    assert_int_equal(loader_cache_unkeep(c, "m0", &err), AICFN_OK);
    assert_int_equal(loader_cache_unkeep(c, "nope", &err), AICFN_E_NOT_FOUND);
    assert_int_equal(loader_cache_preload(c, "m1", NULL, 0, &info, &err), AICFN_OK);
    assert_true(info.cold);
    assert_int_equal(info.n_evictions, 1);
    assert_string_equal(info.evictions[0].key, "m0");
    /* keep_resident keeps only what is READY now, loading nothing. */
    assert_int_equal(loader_cache_keep_resident(c, "m4", &err), AICFN_E_NOT_FOUND);
    assert_int_equal(atomic_load(&f.loads[4]), 0);
    assert_int_equal(loader_cache_keep_resident(c, "m1", &err), AICFN_OK);
    loader_cache_get_status(c, &st, ents, 8);
    for (uint32_t i = 0; i < st.n_returned; i++)
        assert_int_equal(ents[i].kept, strcmp(ents[i].key, "m1") == 0 || strcmp(ents[i].key, "m3") == 0);
    /* An explicit evict takes a kept model too. */
    assert_int_equal(loader_cache_evict(c, "m3", &err), AICFN_OK);
    assert_int_equal(atomic_load(&f.resident[3]), 0);
    loader_cache_destroy(c);
    assert_clean(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hit_miss_and_lru),
        cmocka_unit_test(too_large_fails_at_once),
        cmocka_unit_test(all_pinned_waits_for_deadline),
        cmocka_unit_test(failed_load_wakes_waiters),
        cmocka_unit_test(joined_calls_keep_their_own_deadlines),
        cmocka_unit_test(device_out_of_memory_is_every_waiters_error),
        cmocka_unit_test(single_flight_joins),
        cmocka_unit_test(a_load_evicting_for_another_evicts_nothing_more),
        cmocka_unit_test(explicit_evict),
        cmocka_unit_test(pluggable_policy),
        cmocka_unit_test(kept_models_stay_resident),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
