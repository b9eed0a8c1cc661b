/* test_common.c: the error table, units parsing and dtype arithmetic in common/. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
// clang-format on

#include "common/dtype.h"
#include "common/durable.h"
#include "common/error.h"
#include "common/grow.h"
#include "common/units.h"

static void error_table_is_complete(void **state) {
    (void)state;
    for (int c = 0; c < AICFN_STATUS_COUNT; c++) {
        assert_string_not_equal(aicfn_status_name(c), "AICFN_E_UNKNOWN");
        assert_int_equal(aicfn_status_from_name(aicfn_status_name(c)), c);
        int h = aicfn_http_status(c);
        assert_true(h >= 200 && h < 600);
    }
    assert_int_equal(aicfn_http_status(AICFN_E_CAPACITY), 507);
    assert_int_equal(aicfn_http_status(AICFN_E_TOO_LARGE), 413);
    assert_int_equal(aicfn_http_status(AICFN_E_NOT_FOUND), 404);
    assert_string_equal(aicfn_status_name(999), "AICFN_E_UNKNOWN");
}

static void error_set_and_wrap(void **state) {
    (void)state;
    aicfn_error e;
    assert_int_equal(aicfn_error_set(&e, AICFN_E_IO, "reading %s", "x.bin"), AICFN_E_IO);
    aicfn_error_wrap(&e, "loading %s", "mlp");
    assert_string_equal(e.msg, "loading mlp: reading x.bin");
    assert_int_equal(e.code, AICFN_E_IO);
    assert_int_equal(aicfn_error_set(NULL, AICFN_E_INVALID, "ignored"), AICFN_E_INVALID);
}

static void units_sizes(void **state) {
    (void)state;
    uint64_t v;
    assert_int_equal(units_parse_size("512MiB", &v, NULL), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(units_parse_size("2GiB", &v, NULL), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(units_parse_size("4096", &v, NULL), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(units_parse_size("1GB", &v, NULL), 0);
    assert_int_equal(v, 1000000000ull);
    aicfn_error e;
    assert_int_equal(units_parse_size("12XB", &v, &e), AICFN_E_INVALID);
    assert_non_null(strstr(e.msg, "XB"));
    assert_int_equal(units_parse_size("", &v, NULL), AICFN_E_INVALID);
    assert_int_equal(units_parse_size("-1", &v, NULL), AICFN_E_INVALID);
    assert_int_equal(units_parse_size("99999999999999999999TiB", &v, NULL), AICFN_E_INVALID);
    assert_int_equal(units_parse_size("20000000TiB", &v, NULL), AICFN_E_INVALID);
}

static void units_durations(void **state) {
    (void)state;
    uint64_t us;
    assert_int_equal(units_parse_duration_us("250ms", &us, NULL), 0);
    assert_int_equal(us, 250000);
    assert_int_equal(units_parse_duration_us("5m", &us, NULL), 0);
    assert_int_equal(us, 300000000ull);
    assert_int_equal(units_parse_duration_us("1h", &us, NULL), 0);
    assert_int_equal(us, 3600000000ull);
    assert_int_equal(units_parse_duration_us("30", &us, NULL), 0);
    assert_int_equal(us, 30000000ull);
    assert_int_equal(units_parse_duration_us("3d", &us, NULL), AICFN_E_INVALID);
}

static void units_decimal(void **state) {
    (void)state;
    const uint64_t v[] = {0, 7, 10, 4294967295u, UINT64_MAX};
    const char *want[] = {"0", "7", "10", "4294967295", "18446744073709551615"};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char buf[UNITS_U64_DIGITS + 1];
        memset(buf, 'x', sizeof buf);
        size_t n = units_put_u64(buf, v[i]);
        assert_int_equal(n, strlen(want[i]));
        assert_memory_equal(buf, want[i], n);
        assert_int_equal(buf[n], 'x'); /* no NUL, nothing past the digits */
    }
}

static void dtype_facts(void **state) {
    (void)state;
    assert_int_equal(dtype_size(AICFN_DTYPE_BF16), 2);
    assert_int_equal(dtype_from_name("FP32"), AICFN_DTYPE_FP32);
    assert_int_equal(dtype_from_safetensors_name("BF16"), AICFN_DTYPE_BF16);
    assert_int_equal(dtype_from_safetensors_name("F32"), AICFN_DTYPE_FP32);
    assert_int_equal(dtype_from_safetensors_name("Q4"), AICFN_DTYPE_INVALID);
    int64_t shape[2] = {3, 4};
    uint64_t n;
    assert_int_equal(dtype_tensor_bytes(AICFN_DTYPE_FP32, shape, 2, &n), 0);
    assert_int_equal(n, 48);
    int64_t huge[3] = {1ll << 40, 1ll << 40, 4};
    assert_int_equal(dtype_tensor_bytes(AICFN_DTYPE_FP32, huge, 3, &n), -1);
    int64_t neg[1] = {-2};
    assert_int_equal(dtype_tensor_bytes(AICFN_DTYPE_FP32, neg, 1, &n), -1);
    /* Empty tensors: a zero dim anywhere gives 0 elements, but the other dims must not
     * overflow whatever their order. */
    int64_t zero_first[3] = {0, 1ll << 40, 1ll << 40}, zero_last[3] = {1ll << 40, 1ll << 40, 0};
    int64_t empty[2] = {5, 0};
    assert_int_equal(dtype_shape_elements(zero_first, 3, &n), -1);
    assert_int_equal(dtype_shape_elements(zero_last, 3, &n), -1);
    assert_int_equal(dtype_shape_elements(empty, 2, &n), 0);
    assert_int_equal(n, 0);
    /* Integer ranges, as int64. */
    int64_t lo, hi;
    assert_true(dtype_int_range(AICFN_DTYPE_UINT8, &lo, &hi));
    assert_true(lo == 0 && hi == 255);
    assert_true(dtype_int_range(AICFN_DTYPE_INT16, &lo, &hi));
    assert_true(lo == -32768 && hi == 32767);
    assert_true(dtype_int_range(AICFN_DTYPE_UINT64, &lo, &hi));
    assert_true(lo == 0 && hi == INT64_MAX);
    assert_true(dtype_int_range(AICFN_DTYPE_INT64, &lo, &hi));
    assert_true(lo == INT64_MIN && hi == INT64_MAX);
    assert_false(dtype_int_range(AICFN_DTYPE_FP32, &lo, &hi));
    assert_false(dtype_int_range(AICFN_DTYPE_BYTES, &lo, &hi));
}

static void grow_array_doubles_and_refuses_overflow(void **state) {
    (void)state;
    size_t cap = 0;
    int *a = grow_array(NULL, &cap, 1, sizeof *a);
    assert_non_null(a);
    assert_int_equal(cap, 8);
    for (int i = 0; i < 8; i++)
        a[i] = i;
    assert_ptr_equal(grow_array(a, &cap, 8, sizeof *a), a); /* fits: unchanged */
    int *b = grow_array(a, &cap, 9, sizeof *b);
    assert_non_null(b);
    assert_int_equal(cap, 16);
    assert_int_equal(b[7], 7); /* contents kept */
    size_t before = cap;
    assert_null(grow_array(b, &cap, SIZE_MAX / 2, sizeof *b)); /* would overflow */
    assert_int_equal(cap, before);
    free(b);
}

static void durable_mkdir_makes_once_and_names_failures(void **state) {
    (void)state;
    char base[] = "/tmp/aicfn-durable-XXXXXX";
    assert_non_null(mkdtemp(base));
    char dir[sizeof base + 16], deep[sizeof base + 32], file[sizeof base + 16];
    snprintf(dir, sizeof dir, "%s/data", base);
    snprintf(deep, sizeof deep, "%s/missing/data", base);
    snprintf(file, sizeof file, "%s/file", base);
    aicfn_error err;
    aicfn_error_clear(&err);
    int created = -1;
    assert_int_equal(durable_mkdir(dir, NULL, &created, &err), AICFN_OK);
    assert_int_equal(created, 1);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(durable_mkdir(dir, base, &created, &err), AICFN_OK); /* already there */
    assert_int_equal(created, 0);
    assert_int_equal(durable_mkdir(deep, NULL, &created, &err), AICFN_E_IO); /* no parent */
    assert_int_equal(created, 0);
    assert_non_null(strstr(err.msg, deep));
    assert_int_equal(durable_sync_dir(dir, &err), AICFN_OK);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(durable_sync_dir(file, &err), AICFN_E_IO); /* not a directory */
    assert_non_null(strstr(err.msg, file));
    unlink(file);
    rmdir(dir);
    assert_int_equal(rmdir(base), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_table_is_complete),
        cmocka_unit_test(error_set_and_wrap),
        cmocka_unit_test(units_sizes),
        cmocka_unit_test(units_durations),
        cmocka_unit_test(units_decimal),
        cmocka_unit_test(dtype_facts),
        cmocka_unit_test(grow_array_doubles_and_refuses_overflow),
        cmocka_unit_test(durable_mkdir_makes_once_and_names_failures),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
