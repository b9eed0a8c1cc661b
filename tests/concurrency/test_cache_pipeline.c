/* test_cache_pipeline.c: the model cache with the real pipeline and host device under
 * several threads (also run under TSan): 6 packed snapshots, a budget for about 3, 4
 * threads acquiring at random and checking every tensor byte of what they get, while
 * the loads themselves run multi-threaded. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "loader/cache.h"
#include "loader/pipeline.h"
#include "snapshots/safetensors.h"
#include "snapshots/writer.h"

enum { MODELS = 6, THREADS = 4, OPS = 60 };

static char dir[64];
static char paths[MODELS][128];
static unsigned char *data[MODELS];
static uint64_t nbytes[MODELS];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/aicfn-test-cachepl-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    uint32_t x = 99;
    for (int i = 0; i < MODELS; i++) {
        int64_t shape[2] = {100 + 37 * i, 256};
        nbytes[i] = (uint64_t)shape[0] * 256 * 2;
        data[i] = malloc(nbytes[i]);
        if (!data[i]) return -1;
        for (uint64_t k = 0; k < nbytes[i]; k += 2) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            data[i][k] = (unsigned char)x;
            data[i][k + 1] = (unsigned char)(0x3c + (x >> 30)); /* bf16-like exponents */
        }
        char st[128], name[16];
        snprintf(st, sizeof st, "%s/m%d.safetensors", dir, i);
        snprintf(name, sizeof name, "w%d", i);
        snap_st_out_tensor t = {.name = name,
                                .dtype = AICFN_DTYPE_BF16,
                                .ndim = 2,
                                .shape = shape,
                                .data = data[i],
                                .nbytes = nbytes[i]};
        aicfn_error err;
        if (snap_st_write(st, &t, 1, &err) != AICFN_OK) return -1;
        snprintf(paths[i], sizeof paths[i], "%s/m%d.aicsnap", dir, i);
        snap_pack_opts o;
        snap_pack_opts_init(&o);
        o.chunk = 64u << 10;
        o.threads = 1;
        const char *in[] = {st};
        if (snap_pack(in, 1, paths[i], &o, NULL, &err) != AICFN_OK) {
            fprintf(stderr, "pack: %s\n", err.msg);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < MODELS; i++)
        free(data[i]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct worker {
    loader_cache *c;
    unsigned seed;
    int errors;
    char first[AICFN_ERRMSG_MAX];
} worker;

static void *worker_main(void *arg) {
    worker *w = arg;
    for (int i = 0; i < OPS; i++) {
        w->seed = w->seed * 1103515245u + 12345u;
        int m = (int)((w->seed >> 16) % MODELS);
        char key[8];
        snprintf(key, sizeof key, "m%d", m);
        loader_cache_entry *e;
        aicfn_error err;
        if (loader_cache_acquire(w->c, key, paths[m], 0, &e, NULL, &err) != AICFN_OK) {
            if (w->errors++ == 0) snprintf(w->first, sizeof w->first, "%s", err.msg);
            continue;
        }
        loader_model *lm = loader_cache_entry_model(e);
        if (memcmp(loader_model_tensor_ptr(lm, 0), data[m], nbytes[m]) != 0) {
            if (w->errors++ == 0) snprintf(w->first, sizeof w->first, "model %d bytes differ", m);
        }
        loader_cache_release(w->c, e);
    }
    return NULL;
}

static void concurrent_real_loads(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *dev;
    assert_int_equal(loader_device_host_open(64u << 20, &dev, &err), AICFN_OK);
    loader_pipeline_source src = {.device = dev, .threads = 2};
    uint64_t budget = 3 * loader_device_alloc_size(dev, nbytes[MODELS - 1] + 4096);
    loader_cache_config cfg = {.budget_bytes = budget, .ops = &loader_pipeline_cache_ops, .ops_arg = &src};
    loader_cache *c;
    assert_int_equal(loader_cache_create(&cfg, &c, &err), AICFN_OK);
    worker ws[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ws[i] = (worker){.c = c, .seed = 31u * (unsigned)(i + 1)};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &ws[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        if (ws[i].errors) fail_msg("thread %d: %d errors, first: %s", i, ws[i].errors, ws[i].first);
    }
    loader_cache_status st;
    loader_cache_get_status(c, &st, NULL, 0);
    assert_true(st.used_bytes <= budget);
    assert_true(st.counters.loads >= MODELS);
    assert_true(st.counters.evictions > 0);
    uint64_t f, tot;
    assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
    assert_true(tot - f <= budget); /* the device holds no more than the cache charged */
    assert_int_equal(tot - f, st.used_bytes);
    loader_cache_destroy(c);
    assert_int_equal(loader_device_mem_info(dev, &f, &tot, &err), AICFN_OK);
    assert_int_equal(f, tot);
    loader_device_close(dev);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(concurrent_real_loads)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
