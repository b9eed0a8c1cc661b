/* test_respcache.c: the gateway's response cache (gateway/respcache.h): request keys
 * (every field counts, lengths delimit fields), hits and misses, expiry, LRU eviction
 * within the byte budget, replacement, and entries too large to keep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/respcache.h"

static wire_tensor tensor(const char *name, const void *data, uint64_t nbytes, int64_t d0, int64_t d1) {
    wire_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = AICFN_DTYPE_UINT8;
    t.ndim = d1 ? 2 : 1;
    t.shape[0] = d0;
    t.shape[1] = d1;
    t.data = data;
    t.nbytes = nbytes;
    return t;
}

static void key_of_tenant(const char *tenant, const char *fn, uint32_t ver, const wire_tensor *in, uint32_t n,
                          const char *params, uint8_t **k, size_t *len) {
    wire_invoke_req r;
    memset(&r, 0, sizeof r);
    r.fn = fn;
    r.inputs = in;
    r.n_inputs = n;
    r.params = (const uint8_t *)params;
    r.params_len = params ? strlen(params) : 0;
    aicfn_error e;
    assert_int_equal(gw_respcache_key(tenant, fn, ver, &r, 1u << 20, k, len, &e), AICFN_OK);
}

static void key_of(const char *fn, uint32_t ver, const wire_tensor *in, uint32_t n, const char *params,
                   uint8_t **k, size_t *len) {
    key_of_tenant("t", fn, ver, in, n, params, k, len);
}

static int key_eq(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    return la == lb && memcmp(a, b, la) == 0;
}

static void keys_tell_requests_apart(void **state) {
    (void)state;
    const char d6[] = "abcdef";
    wire_tensor base = tensor("x", d6, 6, 6, 0);
    uint8_t *k0, *k;
    size_t l0, l;
    key_of("f", 1, &base, 1, NULL, &k0, &l0);
    key_of("f", 1, &base, 1, NULL, &k, &l);
    assert_true(key_eq(k0, l0, k, l)); /* same request, same key */
    free(k);
    key_of("f", 2, &base, 1, NULL, &k, &l); /* version */
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    key_of("g", 1, &base, 1, NULL, &k, &l); /* function */
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    key_of_tenant("u", "f", 1, &base, 1, NULL, &k, &l); /* tenant: no hits across tenants */
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    key_of_tenant("tf", "", 1, &base, 1, NULL, &k, &l); /* bytes moved between tenant and name */
    uint8_t *k2;
    size_t l2;
    key_of_tenant("t", "f", 1, &base, 1, NULL, &k2, &l2);
    assert_false(key_eq(k2, l2, k, l));
    free(k);
    free(k2);
    key_of("f", 1, &base, 1,
           "\x81\xa1"
           "a\x01",
           &k, &l); /* params */
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    wire_tensor reshaped = tensor("x", d6, 6, 2, 3); /* same bytes, another shape */
    key_of("f", 1, &reshaped, 1, NULL, &k, &l);
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    wire_tensor renamed = tensor("y", d6, 6, 6, 0);
    key_of("f", 1, &renamed, 1, NULL, &k, &l);
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    wire_tensor changed = tensor("x", "abcdeg", 6, 6, 0);
    key_of("f", 1, &changed, 1, NULL, &k, &l);
    assert_false(key_eq(k0, l0, k, l));
    free(k);
    /* Moving bytes between a name and the next field never gives the same key. */
    wire_tensor two_a[2] = {tensor("ab", "c", 1, 1, 0), tensor("d", "", 0, 0, 0)};
    wire_tensor two_b[2] = {tensor("a", "bc", 2, 2, 0), tensor("d", "", 0, 0, 0)};
    uint8_t *ka, *kb;
    size_t la, lb;
    key_of("f", 1, two_a, 2, NULL, &ka, &la);
    key_of("f", 1, two_b, 2, NULL, &kb, &lb);
    assert_false(key_eq(ka, la, kb, lb));
    free(ka);
    free(kb);
    free(k0);
    /* Bounded. */
    wire_invoke_req r;
    memset(&r, 0, sizeof r);
    r.fn = "f";
    r.inputs = &base;
    r.n_inputs = 1;
    aicfn_error e;
    assert_int_equal(gw_respcache_key("t", "f", 1, &r, 16, &k, &l, &e), AICFN_E_TOO_LARGE);
    assert_null(k);
}

static void hit_miss_expiry_replace(void **state) {
    (void)state;
    gw_respcache *c;
    aicfn_error e;
    assert_int_equal(gw_respcache_create(0, &c, &e), AICFN_E_INVALID);
    assert_int_equal(gw_respcache_create(1u << 20, &c, &e), AICFN_OK);
    const uint8_t k1[] = "key-1", k2[] = "key-2";
    uint8_t *r;
    size_t n;
    assert_false(gw_respcache_get(c, k1, sizeof k1, 100, &r, &n));
    assert_null(r);
    gw_respcache_put(c, k1, sizeof k1, (const uint8_t *)"reply-1", 7, 1000);
    assert_true(gw_respcache_get(c, k1, sizeof k1, 999, &r, &n));
    assert_int_equal(n, 7);
    assert_memory_equal(r, "reply-1", 7);
    free(r);
    assert_false(gw_respcache_get(c, k2, sizeof k2, 999, &r, &n)); /* another key */
    /* A prefix of a stored key is another key. */
    assert_false(gw_respcache_get(c, k1, sizeof k1 - 1, 999, &r, &n));
    /* Replacing keeps one entry with the new reply. */
    gw_respcache_put(c, k1, sizeof k1, (const uint8_t *)"reply-1b", 8, 2000);
    assert_true(gw_respcache_get(c, k1, sizeof k1, 1500, &r, &n));
    assert_int_equal(n, 8);
    assert_memory_equal(r, "reply-1b", 8);
    free(r);
    gw_respcache_stats s = gw_respcache_get_stats(c);
    assert_int_equal(s.entries, 1);
    /* Expired at its deadline: a miss, and gone. */
    assert_false(gw_respcache_get(c, k1, sizeof k1, 2000, &r, &n));
    s = gw_respcache_get_stats(c);
    assert_int_equal(s.entries, 0);
    assert_int_equal(s.bytes, 0);
    assert_int_equal(s.expirations, 1);
    assert_int_equal(s.hits, 2);
    assert_int_equal(s.misses, 4);
    gw_respcache_destroy(c);
    gw_respcache_destroy(NULL);
}

static void lru_within_budget(void **state) {
    (void)state;
    gw_respcache *c;
    aicfn_error e;
    const uint64_t budget = 64u << 10;
    assert_int_equal(gw_respcache_create(budget, &c, &e), AICFN_OK);
    uint8_t reply[4000];
    memset(reply, 7, sizeof reply);
    char key[32];
    /* 100 entries of ~4 KB into 64 KiB: the budget holds, and it is used. */
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "k%03d", i);
        gw_respcache_put(c, (const uint8_t *)key, strlen(key), reply, sizeof reply, UINT64_MAX);
        /* k000 is used after every insert: always the most recent, never the victim. */
        uint8_t *r;
        size_t n;
        assert_true(gw_respcache_get(c, (const uint8_t *)"k000", 4, 1, &r, &n));
        free(r);
        gw_respcache_stats s = gw_respcache_get_stats(c);
        assert_true(s.bytes <= budget);
    }
    gw_respcache_stats s = gw_respcache_get_stats(c);
    assert_true(s.entries >= 10 && s.entries <= 16);
    assert_int_equal(s.evictions, 100 - s.entries);
    uint8_t *r;
    size_t n;
    assert_true(gw_respcache_get(c, (const uint8_t *)"k099", 4, 1, &r, &n)); /* the newest */
    free(r);
    assert_false(gw_respcache_get(c, (const uint8_t *)"k050", 4, 1, &r, &n)); /* an old one */
    /* Bigger than an eighth of the budget: not kept, nothing evicted for it. */
    uint64_t before = gw_respcache_get_stats(c).entries;
    uint8_t *big = calloc(1, budget / 4);
    assert_non_null(big);
    gw_respcache_put(c, (const uint8_t *)"big", 3, big, budget / 4, UINT64_MAX);
    free(big);
    assert_false(gw_respcache_get(c, (const uint8_t *)"big", 3, 1, &r, &n));
    s = gw_respcache_get_stats(c);
    assert_int_equal(s.entries, before);
    assert_int_equal(s.too_large, 1);
    gw_respcache_destroy(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keys_tell_requests_apart),
        cmocka_unit_test(hit_miss_expiry_replace),
        cmocka_unit_test(lru_within_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
