/* test_cache_fake.h: a fake load function for the model cache tests (unit and
 * concurrency). Keys are "m<N>"; model N has size sizes[N], takes delay_us[N] to load
 * (unload_delay_us[N] to unload) and fails halfway when fail[N] is set. It checks the cache's promises as it goes:
 * the bytes alive never exceed the budget, a model is never loaded twice while resident
 * (single-flight), and a model pinned by the test is never unloaded. Header-only (static)
 * so each test binary gets its own copy. */
#ifndef AICFN_TEST_CACHE_FAKE_H
#define AICFN_TEST_CACHE_FAKE_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loader/cache.h"

#define FAKE_MAX 64

typedef struct fake_loader {
    uint64_t budget;
    uint64_t sizes[FAKE_MAX];
    uint64_t delay_us[FAKE_MAX];
    uint64_t unload_delay_us[FAKE_MAX]; /* an unload holds the model's bytes this long first */
    int fail[FAKE_MAX];
    int fail_capacity[FAKE_MAX]; /* with fail: the device had no memory (AICFN_E_CAPACITY) */
    _Atomic uint64_t alive_bytes;
    _Atomic uint64_t max_alive_bytes;
    _Atomic int resident[FAKE_MAX];
    _Atomic int pins[FAKE_MAX]; /* maintained by the test around acquire/release */
    _Atomic uint64_t loads[FAKE_MAX];
    _Atomic uint64_t unloads[FAKE_MAX];
    _Atomic uint64_t prepares;
    _Atomic uint64_t aborts;
    _Atomic int violations;
    char violation[256];
} fake_loader;

typedef struct fake_model {
    int idx;
    uint64_t bytes;
} fake_model;

static void fake_sleep_us(uint64_t us) {
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000u), .tv_nsec = (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void fake_violation(fake_loader *f, const char *what, int idx) {
    if (atomic_fetch_add(&f->violations, 1) == 0)
        snprintf(f->violation, sizeof f->violation, "%s (m%d)", what, idx);
}

static int fake_prepare(void *arg, const char *key, const char *path, void **prep, uint64_t *bytes,
                        aicfn_error *err) {
    fake_loader *f = arg;
    (void)path;
    int idx = key[0] == 'm' ? atoi(key + 1) : -1;
    if (idx < 0 || idx >= FAKE_MAX || f->sizes[idx] == 0)
        return aicfn_error_set(err, AICFN_E_NOT_FOUND, "no fake model '%s'", key);
    fake_model *m = malloc(sizeof *m);
    if (!m) return aicfn_error_set(err, AICFN_E_NOMEM, "oom");
    m->idx = idx;
    m->bytes = f->sizes[idx];
    *prep = m;
    *bytes = m->bytes;
    atomic_fetch_add(&f->prepares, 1);
    return AICFN_OK;
}

static int fake_load(void *arg, void *prep, uint64_t max_bytes, void **model, uint64_t *alloc_bytes,
                     loader_timing *timing, aicfn_error *err) {
    fake_loader *f = arg;
    fake_model *m = prep;
    int idx = m->idx;
    if (m->bytes > max_bytes) fake_violation(f, "load asked for more than reserved", idx);
    if (f->fail[idx]) {
        fake_sleep_us(f->delay_us[idx] / 2);
        free(m);
        if (f->fail_capacity[idx])
            return aicfn_error_set(err, AICFN_E_CAPACITY, "fake model m%d: out of device memory", idx);
        return aicfn_error_set(err, AICFN_E_CORRUPT, "fake model m%d: frame 3 is corrupt", idx);
    }
    if (atomic_exchange(&f->resident[idx], 1) != 0) fake_violation(f, "loaded while already resident", idx);
    uint64_t now = atomic_fetch_add(&f->alive_bytes, m->bytes) + m->bytes;
    if (now > f->budget) fake_violation(f, "budget exceeded", idx);
    uint64_t mx = atomic_load(&f->max_alive_bytes);
    while (now > mx && !atomic_compare_exchange_weak(&f->max_alive_bytes, &mx, now)) {
    }
    atomic_fetch_add(&f->loads[idx], 1);
    if (f->delay_us[idx]) fake_sleep_us(f->delay_us[idx]);
    timing->total_us = f->delay_us[idx];
    timing->raw_bytes = m->bytes;
    timing->threads = 1;
    *alloc_bytes = m->bytes;
    *model = m;
    return AICFN_OK;
}

static void fake_abort(void *arg, void *prep) {
    fake_loader *f = arg;
    atomic_fetch_add(&f->aborts, 1);
    free(prep);
}

static void fake_unload(void *arg, void *model) {
    fake_loader *f = arg;
    fake_model *m = model;
    if (atomic_load(&f->pins[m->idx]) > 0) fake_violation(f, "pinned model unloaded", m->idx);
    if (f->unload_delay_us[m->idx]) fake_sleep_us(f->unload_delay_us[m->idx]);
    if (atomic_exchange(&f->resident[m->idx], 0) != 1)
        fake_violation(f, "unloaded while not resident", m->idx);
    atomic_fetch_sub(&f->alive_bytes, m->bytes);
    atomic_fetch_add(&f->unloads[m->idx], 1);
    free(m);
}

static const loader_cache_load_ops fake_ops = {
    .prepare = fake_prepare, .load = fake_load, .abort = fake_abort, .unload = fake_unload};

static loader_cache *fake_cache(fake_loader *f, uint64_t budget, const loader_evict_policy *policy) {
    f->budget = budget;
    loader_cache_config cfg = {.budget_bytes = budget, .ops = &fake_ops, .ops_arg = f, .policy = policy};
    loader_cache *c = NULL;
    aicfn_error err;
    if (loader_cache_create(&cfg, &c, &err) != AICFN_OK) {
        fprintf(stderr, "cache create: %s\n", err.msg);
        abort();
    }
    return c;
}

#endif
