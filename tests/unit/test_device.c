/* test_device.c: one test suite for the device interface (loader/device.h), instantiated
 * for every backend: host always; CUDA when built with CUDA and a GPU is visible (else
 * its instance skips and says why). Also the `--device` spec parsing. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/error.h"
#include "loader/device.h"

#ifdef AICFN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct backend {
    const char *spec;
    loader_device *dev;
    char why[256];
} backend;

static backend host_be = {.spec = "host"};
static backend cuda_be = {.spec = "cuda"};

#define HOST_BUDGET (64ull << 20)

static int be_setup(void **state) {
    backend *b = *state;
    aicfn_error err;
    b->dev = NULL;
    b->why[0] = '\0';
    if (strcmp(b->spec, "cuda") == 0 && loader_cuda_device_count(b->why, sizeof b->why) == 0) return 0;
    int rc = loader_device_open(b->spec, HOST_BUDGET, &b->dev, &err);
    if (rc != AICFN_OK) snprintf(b->why, sizeof b->why, "%s", err.msg);
    return 0;
}

static int be_teardown(void **state) {
    backend *b = *state;
    loader_device_close(b->dev);
    b->dev = NULL;
    return 0;
}

#define NEED_DEVICE(b)                                                                                       \
    do {                                                                                                     \
        if (!(b)->dev) {                                                                                     \
            print_message("skipping %s instance: %s\n", (b)->spec, (b)->why);                                \
            skip();                                                                                          \
        }                                                                                                    \
    } while (0)

/* Reads device bytes back into host memory (the interface has no reverse copy). */
static void read_back(loader_device *dev, const loader_dev_buf *buf, uint64_t off, void *dst, size_t n) {
    if (loader_device_is_host(dev)) {
        memcpy(dst, (char *)buf->ptr + off, n);
        return;
    }
#ifdef AICFN_HAVE_CUDA
    assert_int_equal(cudaMemcpy(dst, (char *)buf->ptr + off, n, cudaMemcpyDeviceToHost), cudaSuccess);
#else
    fail_msg("non-host device without CUDA");
#endif
}

static void dev_identity(void **state) {
    backend *b = *state;
    NEED_DEVICE(b);
    const char *name = loader_device_name(b->dev);
    assert_non_null(name);
    assert_true(strncmp(name, b->spec, strlen(b->spec)) == 0);
    assert_int_equal(loader_device_is_host(b->dev), strcmp(b->spec, "host") == 0);
}

static void dev_alloc_free_mem_info(void **state) {
    backend *b = *state;
    NEED_DEVICE(b);
    aicfn_error err;
    uint64_t f0, t0, f1, t1;
    assert_int_equal(loader_device_mem_info(b->dev, &f0, &t0, &err), AICFN_OK);
    assert_true(t0 > 0 && f0 <= t0);
    uint64_t want = 3u << 20;
    uint64_t expect = loader_device_alloc_size(b->dev, want);
    assert_true(expect >= want);
    loader_dev_buf buf;
    assert_int_equal(loader_device_alloc(b->dev, want, &buf, &err), AICFN_OK);
    assert_non_null(buf.ptr);
    assert_int_equal(buf.bytes, expect);
    assert_int_equal(loader_device_mem_info(b->dev, &f1, &t1, &err), AICFN_OK);
    assert_int_equal(t1, t0);
    assert_true(f1 <= f0 - want);
    loader_device_free(b->dev, &buf);
    assert_null(buf.ptr);
    loader_device_free(b->dev, &buf); /* zeroed: accepted */
    assert_int_equal(loader_device_mem_info(b->dev, &f1, &t1, &err), AICFN_OK);
    if (loader_device_is_host(b->dev)) assert_int_equal(f1, f0);
    assert_int_equal(loader_device_alloc(b->dev, 0, &buf, &err), AICFN_E_INVALID);
}

static void dev_alloc_too_much_is_capacity(void **state) {
    backend *b = *state;
    NEED_DEVICE(b);
    aicfn_error err;
    uint64_t f, t;
    assert_int_equal(loader_device_mem_info(b->dev, &f, &t, &err), AICFN_OK);
    loader_dev_buf buf;
    int rc = loader_device_alloc(b->dev, t + (1ull << 30), &buf, &err);
    assert_int_equal(rc, AICFN_E_CAPACITY);
    assert_null(buf.ptr);
    assert_true(strlen(err.msg) > 0);
}

static void dev_copy_roundtrip(void **state) {
    backend *b = *state;
    NEED_DEVICE(b);
    aicfn_error err;
    size_t n = 1u << 20;
    loader_dev_buf buf;
    assert_int_equal(loader_device_alloc(b->dev, 2 * n, &buf, &err), AICFN_OK);
    unsigned char *src = malloc(n), *back = malloc(n);
    assert_non_null(src);
    assert_non_null(back);
    for (size_t i = 0; i < n; i++)
        src[i] = (unsigned char)(i * 131 + 7);
    loader_ticket t;
    assert_int_equal(loader_device_copy_to_device(b->dev, &buf, n, src, n, &t, &err), AICFN_OK);
    assert_int_equal(loader_device_wait(b->dev, t, &err), AICFN_OK);
    assert_int_equal(loader_device_wait(b->dev, t, &err), AICFN_OK); /* twice is fine */
    read_back(b->dev, &buf, n, back, n);
    assert_memory_equal(src, back, n);
    /* Out of bounds is refused, not written. */
    assert_int_equal(loader_device_copy_to_device(b->dev, &buf, 2 * n - 10, src, 11, &t, &err),
                     AICFN_E_INVALID);
    assert_non_null(strstr(err.msg, "outside"));
    assert_int_equal(loader_device_copy_to_device(b->dev, &buf, UINT64_MAX, src, 1, &t, &err),
                     AICFN_E_INVALID);
    assert_int_equal(loader_device_sync(b->dev, &err), AICFN_OK);
    loader_device_free(b->dev, &buf);
    free(src);
    free(back);
}

/* Many async copies through staging buffers (when the backend has them) land intact. */
static void dev_staging_many_copies(void **state) {
    backend *b = *state;
    NEED_DEVICE(b);
    aicfn_error err;
    const size_t piece = 256u << 10;
    const int pieces = 64;
    loader_dev_buf buf;
    assert_int_equal(loader_device_alloc(b->dev, piece * pieces, &buf, &err), AICFN_OK);
    unsigned char *src = malloc(piece * pieces), *back = malloc(piece * pieces);
    assert_non_null(src);
    assert_non_null(back);
    for (size_t i = 0; i < piece * pieces; i++)
        src[i] = (unsigned char)((i >> 3) ^ (i * 17));
    int staged = loader_device_has_staging(b->dev);
    if (!staged) {
        loader_staging s;
        assert_int_equal(loader_device_staging_acquire(b->dev, &s, &err), AICFN_E_UNSUPPORTED);
    }
    for (int p = 0; p < pieces; p++) {
        const unsigned char *from = src + (size_t)p * piece;
        loader_staging s = {0};
        if (staged) {
            assert_int_equal(loader_device_staging_acquire(b->dev, &s, &err), AICFN_OK);
            assert_true(s.cap >= piece);
            memcpy(s.ptr, from, piece);
            from = s.ptr;
        }
        loader_ticket t;
        assert_int_equal(
            loader_device_copy_to_device(b->dev, &buf, (uint64_t)p * piece, from, piece, &t, &err), AICFN_OK);
        if (staged) loader_device_staging_release(b->dev, &s, t);
    }
    assert_int_equal(loader_device_sync(b->dev, &err), AICFN_OK);
    read_back(b->dev, &buf, 0, back, piece * pieces);
    assert_memory_equal(src, back, piece * pieces);
    loader_device_free(b->dev, &buf);
    free(src);
    free(back);
}

typedef struct copier {
    loader_device *dev;
    loader_dev_buf *buf;
    const unsigned char *src;
    size_t off, n;
    int rc;
} copier;

static void *copier_main(void *arg) {
    copier *c = arg;
    aicfn_error err;
    c->rc = AICFN_OK;
    for (size_t done = 0; done < c->n && c->rc == AICFN_OK; done += 64u << 10) {
        size_t len = c->n - done < (64u << 10) ? c->n - done : (64u << 10);
        loader_staging s = {0};
        const unsigned char *from = c->src + c->off + done;
        if (loader_device_has_staging(c->dev)) {
            c->rc = loader_device_staging_acquire(c->dev, &s, &err);
            if (c->rc != AICFN_OK) break;
            memcpy(s.ptr, from, len);
            from = s.ptr;
        }
        loader_ticket t = 0;
        c->rc = loader_device_copy_to_device(c->dev, c->buf, c->off + done, from, len, &t, &err);
        if (s.ptr) loader_device_staging_release(c->dev, &s, c->rc == AICFN_OK ? t : 0);
        if (c->rc == AICFN_OK) c->rc = loader_device_wait(c->dev, t, &err);
    }
    return NULL;
}

static void dev_concurrent_copies(void **state) {
    backend *b = *state;
    NEED_DEVICE(b);
    aicfn_error err;
    enum { T = 4 };
    const size_t each = 1u << 20;
    loader_dev_buf buf;
    assert_int_equal(loader_device_alloc(b->dev, each * T, &buf, &err), AICFN_OK);
    unsigned char *src = malloc(each * T), *back = malloc(each * T);
    assert_non_null(src);
    assert_non_null(back);
    for (size_t i = 0; i < each * T; i++)
        src[i] = (unsigned char)(i * 2654435761u >> 13);
    pthread_t th[T];
    copier cs[T];
    for (int i = 0; i < T; i++) {
        cs[i] = (copier){.dev = b->dev, .buf = &buf, .src = src, .off = (size_t)i * each, .n = each};
        assert_int_equal(pthread_create(&th[i], NULL, copier_main, &cs[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(cs[i].rc, AICFN_OK);
    }
    assert_int_equal(loader_device_sync(b->dev, &err), AICFN_OK);
    read_back(b->dev, &buf, 0, back, each * T);
    assert_memory_equal(src, back, each * T);
    loader_device_free(b->dev, &buf);
    free(src);
    free(back);
}

/* ---- Selection ---- */
static void open_specs(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *d = NULL;
    assert_int_equal(loader_device_open("bogus", 0, &d, &err), AICFN_E_INVALID);
    assert_null(d);
    assert_non_null(strstr(err.msg, "bogus"));
    assert_int_equal(loader_device_open("cuda:x", 0, &d, &err), AICFN_E_INVALID);
    assert_int_equal(loader_device_open("cuda:1x", 0, &d, &err), AICFN_E_INVALID);
    assert_int_equal(loader_device_open("host", 12345678, &d, &err), AICFN_OK);
    uint64_t f, t;
    assert_int_equal(loader_device_mem_info(d, &f, &t, &err), AICFN_OK);
    assert_int_equal(t, 12345678);
    loader_device_close(d);
    loader_device_close(NULL);

    char why[256];
    int gpus = loader_cuda_device_count(why, sizeof why);
    assert_int_equal(loader_device_open("auto", 1u << 20, &d, &err), AICFN_OK);
    if (gpus == 0) {
        assert_true(loader_device_is_host(d));
        /* Without a GPU, `cuda` fails clearly. */
        loader_device *c = NULL;
        int rc = loader_device_open("cuda", 0, &c, &err);
        assert_null(c);
#ifdef AICFN_HAVE_CUDA
        assert_int_equal(rc, AICFN_E_UNAVAILABLE);
        assert_non_null(strstr(err.msg, "cuda"));
        print_message("cuda without a GPU: %s\n", err.msg);
#else
        assert_int_equal(rc, AICFN_E_UNSUPPORTED);
        assert_non_null(strstr(err.msg, "not built"));
#endif
    } else {
        assert_false(loader_device_is_host(d));
    }
    loader_device_close(d);
    assert_int_equal(loader_device_open("cuda:999", 0, &d, &err), gpus ? AICFN_E_UNAVAILABLE :
#ifdef AICFN_HAVE_CUDA
                                                                       AICFN_E_UNAVAILABLE
#else
                                                                       AICFN_E_UNSUPPORTED
#endif
    );
}

static void host_budget_enforced(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *d;
    assert_int_equal(loader_device_host_open(1u << 20, &d, &err), AICFN_OK);
    loader_dev_buf a, c;
    assert_int_equal(loader_device_alloc(d, 700u << 10, &a, &err), AICFN_OK);
    assert_int_equal(loader_device_alloc(d, 700u << 10, &c, &err), AICFN_E_CAPACITY);
    assert_non_null(strstr(err.msg, "budget"));
    loader_device_free(d, &a);
    assert_int_equal(loader_device_alloc(d, 700u << 10, &c, &err), AICFN_OK);
    loader_device_free(d, &c);
    loader_device_close(d);
    assert_int_equal(loader_device_host_open(0, &d, &err), AICFN_E_INVALID);
}

/* The host device keeps the last freed large mapping and hands it to the next allocation
 * it can hold: same address, trimmed, reported free by mem_info, still under the budget. */
static void host_reuses_the_last_freed_large_mapping(void **state) {
    (void)state;
    aicfn_error err;
    loader_device *d;
    const uint64_t budget = 16u << 20;
    assert_int_equal(loader_device_host_open(budget, &d, &err), AICFN_OK);
    loader_dev_buf a, b, c, e;
    assert_int_equal(loader_device_alloc(d, 4u << 20, &a, &err), AICFN_OK);
    memset(a.ptr, 0xAB, (size_t)a.bytes);
    void *first = a.ptr;
    loader_device_free(d, &a);
    uint64_t free_b, total_b;
    assert_int_equal(loader_device_mem_info(d, &free_b, &total_b, &err), AICFN_OK);
    assert_int_equal(free_b, budget); /* the kept mapping counts as free */

    const uint64_t want = (3u << 20) + 100;
    assert_int_equal(loader_device_alloc(d, want, &b, &err), AICFN_OK);
    assert_ptr_equal(b.ptr, first);
    /* Not a new mapping (that would read zeros): like cudaMalloc, reused memory is not
     * cleared below the requested size. */
    assert_int_equal(((const unsigned char *)b.ptr)[0], 0xAB);
    assert_int_equal(((const unsigned char *)b.ptr)[want - 1], 0xAB);
    assert_int_equal(b.bytes, loader_device_alloc_size(d, want));
    const unsigned char *tail = (const unsigned char *)b.ptr + want;
    for (uint64_t i = 0; i < b.bytes - want; i++) assert_int_equal(tail[i], 0); /* tail cleared */
    assert_int_equal(loader_device_mem_info(d, &free_b, &total_b, &err), AICFN_OK);
    assert_int_equal(free_b, budget - b.bytes);

    /* The rest of the budget is allocatable, and not one page more. */
    assert_int_equal(loader_device_alloc(d, budget - b.bytes, &c, &err), AICFN_OK);
    assert_int_equal(loader_device_alloc(d, 4096, &e, &err), AICFN_E_CAPACITY);
    loader_device_free(d, &c);
    loader_device_free(d, &b);
    loader_device_close(d);
}

#define T(be, f)                                                                                             \
    { #be "/" #f, f, be_setup, be_teardown, &be }
#define SUITE(be)                                                                                            \
    T(be, dev_identity), T(be, dev_alloc_free_mem_info), T(be, dev_alloc_too_much_is_capacity),              \
        T(be, dev_copy_roundtrip), T(be, dev_staging_many_copies), T(be, dev_concurrent_copies)

int main(void) {
    const struct CMUnitTest tests[] = {
        SUITE(host_be),
        SUITE(cuda_be),
        cmocka_unit_test(open_specs),
        cmocka_unit_test(host_budget_enforced),
        cmocka_unit_test(host_reuses_the_last_freed_large_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
