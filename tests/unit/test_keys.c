/* test_keys.c: API keys (create, authenticate, wrong secret, revoke, list), no
 * plaintext secret in the database files, and the token bucket and daily quota. */
#include <setjmp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/keys.h"
#include "gateway/ledger.h"
#include "test_db_util.h"

typedef struct fx {
    char *dir;
    gw_db *db;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    f->dir = tdb_mkdtemp("keys");
    if (!f->dir || gw_db_open(f->dir, &f->db, NULL) != AICFN_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    assert_int_equal(gw_db_integrity_check(f->db, NULL), AICFN_OK);
    gw_db_close(f->db);
    tdb_rm_rf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void create_authenticate_revoke(void **state) {
    fx *f = *state;
    char key[GW_KEY_STRING_MAX];
    gw_key_info info, got;
    aicfn_error err;
    assert_int_equal(gw_keys_create(f->db, "alice", GW_KEY_ADMIN, 10, 1000, key, &info, &err), AICFN_OK);
    assert_int_equal(strlen(key), GW_KEY_STRING_LEN);
    assert_memory_equal(key, "aicfn_", 6);
    assert_memory_equal(key + 6, info.key_id, GW_KEY_ID_LEN);
    assert_int_equal(gw_keys_authenticate(f->db, key, &got, &err), AICFN_OK);
    assert_string_equal(got.tenant, "alice");
    assert_int_equal(got.role, GW_KEY_ADMIN);
    assert_int_equal(got.rate_per_s, 10);
    assert_int_equal(got.quota_per_day, 1000);
    assert_int_equal(got.revoked_us, 0);

    /* Wrong secret (last hex digit changed), unknown id, malformed. */
    char bad[GW_KEY_STRING_MAX];
    memcpy(bad, key, sizeof bad);
    bad[GW_KEY_STRING_LEN - 1] = bad[GW_KEY_STRING_LEN - 1] == '0' ? '1' : '0';
    assert_int_equal(gw_keys_authenticate(f->db, bad, &got, &err), AICFN_E_UNAUTHENTICATED);
    assert_non_null(strstr(err.msg, "wrong secret"));
    assert_null(strstr(err.msg, bad + 7 + GW_KEY_ID_LEN)); /* never echoes the secret */
    assert_string_equal(got.tenant, "");
    memcpy(bad, key, sizeof bad);
    bad[6] = bad[6] == 'a' ? 'b' : 'a';
    assert_int_equal(gw_keys_authenticate(f->db, bad, &got, &err), AICFN_E_UNAUTHENTICATED);
    assert_non_null(strstr(err.msg, "unknown"));
    const char *malformed[] = {"", "aicfn_", "Bearer x", "aicfn_zzzzzzzzzzzz_00", NULL};
    for (int i = 0; malformed[i]; i++)
        assert_int_equal(gw_keys_authenticate(f->db, malformed[i], &got, NULL), AICFN_E_UNAUTHENTICATED);
    assert_int_equal(gw_keys_authenticate(f->db, NULL, &got, NULL), AICFN_E_UNAUTHENTICATED);
    char upper[GW_KEY_STRING_MAX];
    memcpy(upper, key, sizeof upper);
    for (char *p = upper + 7 + GW_KEY_ID_LEN; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 32);
    if (strcmp(upper, key) != 0)
        assert_int_equal(gw_keys_authenticate(f->db, upper, &got, NULL), AICFN_E_UNAUTHENTICATED);

    /* A second key; list shows both without secrets. */
    char key2[GW_KEY_STRING_MAX];
    assert_int_equal(gw_keys_create(f->db, "bob", GW_KEY_TENANT, 0, 0, key2, NULL, &err), AICFN_OK);
    assert_string_not_equal(key, key2);
    gw_key_info *ks = NULL;
    size_t n = 0;
    assert_int_equal(gw_keys_list(f->db, &ks, &n, NULL), AICFN_OK);
    assert_int_equal(n, 2);
    assert_string_equal(ks[0].tenant, "alice");
    assert_string_equal(ks[1].tenant, "bob");
    json_t *j = gw_keys_to_json(ks, n);
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, key + 7 + GW_KEY_ID_LEN));
    free(text);
    json_decref(j);
    free(ks);
    uint64_t admins = 0;
    assert_int_equal(gw_keys_count_admins(f->db, &admins, NULL), AICFN_OK);
    assert_int_equal(admins, 1);

    /* Revoke by id (and by full key string). */
    assert_int_equal(gw_keys_revoke(f->db, info.key_id, &err), AICFN_OK);
    assert_int_equal(gw_keys_authenticate(f->db, key, &got, &err), AICFN_E_UNAUTHENTICATED);
    assert_non_null(strstr(err.msg, "revoked"));
    assert_int_equal(gw_keys_revoke(f->db, info.key_id, &err), AICFN_OK); /* idempotent */
    assert_int_equal(gw_keys_revoke(f->db, key2, &err), AICFN_OK);
    assert_int_equal(gw_keys_authenticate(f->db, key2, &got, &err), AICFN_E_UNAUTHENTICATED);
    assert_int_equal(gw_keys_revoke(f->db, "000000000000", &err), AICFN_E_NOT_FOUND);
    assert_int_equal(gw_keys_revoke(f->db, "../x", &err), AICFN_E_INVALID);
    assert_int_equal(gw_keys_count_admins(f->db, &admins, NULL), AICFN_OK);
    assert_int_equal(admins, 0);
    assert_int_equal(gw_keys_create(f->db, "bad tenant", GW_KEY_TENANT, 0, 0, key2, NULL, &err),
                     AICFN_E_INVALID);
}

/* Each role is stored and comes back from authenticate, the list and its JSON; a worker
 * key is not an admin (count_admins), and no unknown role is stored. */
static void roles_round_trip(void **state) {
    fx *f = *state;
    const gw_key_role roles[] = {GW_KEY_TENANT, GW_KEY_ADMIN, GW_KEY_WORKER};
    const char *tenants[] = {"t0", "t1", "t2"};
    char key[3][GW_KEY_STRING_MAX];
    gw_key_info info, got;
    aicfn_error err;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(gw_keys_create(f->db, tenants[i], roles[i], 0, 0, key[i], &info, &err), AICFN_OK);
        assert_int_equal(info.role, roles[i]);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(gw_keys_authenticate(f->db, key[i], &got, &err), AICFN_OK);
        assert_int_equal(got.role, roles[i]);
    }
    gw_key_info *ks = NULL;
    size_t n = 0;
    assert_int_equal(gw_keys_list(f->db, &ks, &n, NULL), AICFN_OK);
    assert_int_equal(n, 3);
    json_t *j = gw_keys_to_json(ks, n);
    assert_non_null(j);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ks[i].role, roles[i]);
        json_t *o = json_array_get(j, i);
        assert_string_equal(json_string_value(json_object_get(o, "role")), gw_key_role_name(roles[i]));
        assert_int_equal(json_is_true(json_object_get(o, "admin")), roles[i] == GW_KEY_ADMIN);
    }
    json_decref(j);
    free(ks);
    uint64_t admins = 0;
    assert_int_equal(gw_keys_count_admins(f->db, &admins, NULL), AICFN_OK);
    assert_int_equal(admins, 1);
    assert_int_equal(gw_keys_create(f->db, "t3", (gw_key_role)7, 0, 0, key[0], NULL, &err), AICFN_E_INVALID);
    assert_string_equal(gw_key_role_name(GW_KEY_WORKER), "worker");
}

static int contains(const unsigned char *hay, size_t n, const void *needle, size_t m) {
    if (!hay || m > n) return 0;
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0) return 1;
    return 0;
}

/* The fronts' cache: a hit does not read the database (a key revoked meanwhile still
 * passes until its entry expires, GW_KEY_CACHE_TTL_US); failures are not cached. */
static void key_cache_answers_without_the_database(void **state) {
    fx *f = *state;
    char key[GW_KEY_STRING_MAX];
    gw_key_info info, got;
    aicfn_error err;
    assert_int_equal(gw_keys_create(f->db, "carol", GW_KEY_TENANT, 7, 0, key, &info, &err), AICFN_OK);
    gw_key_cache *c = NULL;
    assert_int_equal(gw_key_cache_create(&c, &err), AICFN_OK);
    assert_int_equal(gw_key_cache_authenticate(c, f->db, key, &got, &err), AICFN_OK);
    assert_string_equal(got.tenant, "carol");
    assert_int_equal(got.rate_per_s, 7);
    assert_int_equal(gw_keys_revoke(f->db, info.key_id, &err), AICFN_OK);
    assert_int_equal(gw_keys_authenticate(f->db, key, &got, &err), AICFN_E_UNAUTHENTICATED);
    memset(&got, 0, sizeof got);
    assert_int_equal(gw_key_cache_authenticate(c, f->db, key, &got, &err), AICFN_OK); /* cached */
    assert_string_equal(got.tenant, "carol");
    /* A wrong key is refused, every time. */
    char wrong[GW_KEY_STRING_MAX];
    snprintf(wrong, sizeof wrong, "%s", key);
    wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == 'a' ? 'b' : 'a';
    for (int i = 0; i < 2; i++)
        assert_int_equal(gw_key_cache_authenticate(c, f->db, wrong, &got, &err), AICFN_E_UNAUTHENTICATED);
    /* Another cache (another front) reads the database and sees the revocation; its
     * refusal is not cached either: the key serves again as soon as the database says so
     * (the revocation undone by hand here). */
    gw_key_cache *c2 = NULL;
    assert_int_equal(gw_key_cache_create(&c2, &err), AICFN_OK);
    assert_int_equal(gw_key_cache_authenticate(c2, f->db, key, &got, &err), AICFN_E_UNAUTHENTICATED);
    gw_db_lock(f->db);
    assert_int_equal(gw_db_exec(f->db, "UPDATE tenants SET revoked_us = NULL", &err), AICFN_OK);
    gw_db_unlock(f->db);
    assert_int_equal(gw_key_cache_authenticate(c2, f->db, key, &got, &err), AICFN_OK);
    assert_string_equal(got.tenant, "carol");
    gw_key_cache_destroy(c2);
    gw_key_cache_destroy(c);
    gw_key_cache_destroy(NULL);
}

static void no_plaintext_in_db_files(void **state) {
    fx *f = *state;
    char keys[20][GW_KEY_STRING_MAX];
    for (int i = 0; i < 20; i++)
        assert_int_equal(gw_keys_create(f->db, "tenant", GW_KEY_TENANT, 0, 0, keys[i], NULL, NULL), AICFN_OK);
    /* Check the main file and the WAL, before and after a checkpoint. */
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            gw_db_lock(f->db);
            assert_int_equal(gw_db_exec(f->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL), AICFN_OK);
            gw_db_unlock(f->db);
        }
        const char *suffix[] = {"", "-wal"};
        int searched = 0;
        int found_id[20] = {0};
        for (int s = 0; s < 2; s++) {
            char path[1024];
            snprintf(path, sizeof path, "%s/aicfn.db%s", f->dir, suffix[s]);
            size_t len;
            unsigned char *bytes = tdb_read_file(path, &len);
            if (!bytes) continue;
            searched += len > 0;
            for (int i = 0; i < 20; i++) {
                const char *secret_hex = keys[i] + 7 + GW_KEY_ID_LEN;
                unsigned char secret_bin[32];
                sodium_hex2bin(secret_bin, 32, secret_hex, 64, NULL, NULL, NULL);
                assert_false(contains(bytes, len, secret_hex, 64));
                assert_false(contains(bytes, len, secret_hex, 16)); /* not even a prefix */
                assert_false(contains(bytes, len, secret_bin, 32));
                found_id[i] |= contains(bytes, len, keys[i] + 6, GW_KEY_ID_LEN);
            }
            free(bytes);
        }
        assert_true(searched >= 1);
        /* Positive control: the public key ids are found, so the search works. */
        for (int i = 0; i < 20; i++)
            assert_true(found_id[i]);
    }
}

static void token_bucket_and_quota(void **state) {
    (void)state;
    gw_limits *l = NULL;
    assert_int_equal(gw_limits_create(&l, NULL), AICFN_OK);
    uint32_t retry = 0;
    aicfn_error err;
    const uint64_t day = 86400ull * 1000000ull;
    uint64_t t0 = 20000 * day + 1000; /* just after a UTC midnight */
    /* Rate 5/s: a burst of 5, the 6th refused with retry-after 1 s. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(gw_limits_check(l, "a", 5, 0, t0, t0, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "a", 5, 0, t0, t0, &retry, &err), AICFN_E_QUOTA);
    assert_int_equal(retry, 1);
    assert_non_null(strstr(err.msg, "rate"));
    /* Another tenant is independent. */
    assert_int_equal(gw_limits_check(l, "b", 5, 0, t0, t0, &retry, &err), AICFN_OK);
    /* 200 ms later one token is back, not two. */
    assert_int_equal(gw_limits_check(l, "a", 5, 0, t0 + 200000, t0 + 200000, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "a", 5, 0, t0 + 200000, t0 + 200000, &retry, &err), AICFN_E_QUOTA);
    /* The bucket runs on the monotonic clock: a wall clock stepping back an hour neither
     * stalls it (a token is back 200 ms later) nor refills it. */
    assert_int_equal(gw_limits_check(l, "a", 5, 0, t0 + 200000, t0 - 3600000000ull, &retry, &err),
                     AICFN_E_QUOTA);
    assert_int_equal(gw_limits_check(l, "a", 5, 0, t0 + 400000, t0 - 3600000000ull, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "a", 5, 0, t0 + 400000, t0 - 3600000000ull, &retry, &err),
                     AICFN_E_QUOTA);
    /* Long idle: refilled to the burst, not beyond. */
    int ok = 0;
    for (int i = 0; i < 20; i++)
        ok += gw_limits_check(l, "a", 5, 0, t0 + 100 * 1000000ull, t0 + 100 * 1000000ull, &retry, NULL) == 0;
    assert_int_equal(ok, 5);
    /* Rate 0 = unlimited. */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(gw_limits_check(l, "u", 0, 0, t0, t0, &retry, NULL), AICFN_OK);
    /* ... and a call through such a key of a tenant whose other key is rated neither
     * drains nor refills that key's bucket: the burst of 5 is still there. */
    assert_int_equal(gw_limits_check(l, "m", 5, 0, t0, t0, &retry, NULL), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "m", 0, 0, t0, t0, &retry, NULL), AICFN_OK);
    ok = 0;
    for (int i = 0; i < 10; i++)
        ok += gw_limits_check(l, "m", 5, 0, t0, t0, &retry, NULL) == 0;
    assert_int_equal(ok, 4);
    /* Drained; an unlimited call 200 ms later does not take the token refilled since. */
    assert_int_equal(gw_limits_check(l, "m", 0, 0, t0 + 200000, t0 + 200000, &retry, NULL), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "m", 5, 0, t0 + 200000, t0 + 200000, &retry, NULL), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "m", 5, 0, t0 + 200000, t0 + 200000, &retry, NULL), AICFN_E_QUOTA);

    /* Quota 3/day: the 4th call is refused until midnight. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(gw_limits_check(l, "q", 0, 3, t0, t0, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "q", 0, 3, t0 + 1000000, t0 + 1000000, &retry, &err), AICFN_E_QUOTA);
    assert_non_null(strstr(err.msg, "daily quota"));
    uint64_t left_s = (day - 1000 - 1000000 + 999999) / 1000000;
    assert_int_equal(retry, left_s);
    assert_int_equal(gw_limits_check(l, "q", 0, 3, t0 + day, t0 + day, &retry, &err),
                     AICFN_OK); /* next day */
    /* The day only moves forward: a wall clock stepping back to yesterday grants no
     * second quota (2 calls left today, then refused until the coming midnight). */
    for (int i = 0; i < 2; i++)
        assert_int_equal(gw_limits_check(l, "q", 0, 3, t0 + day, t0 + day - 2000, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "q", 0, 3, t0 + day, t0 + day - 2000, &retry, &err), AICFN_E_QUOTA);
    assert_int_equal(retry, (day + 1000 + 999999) / 1000000);
    /* A refused call (rate) does not use quota. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(gw_limits_check(l, "r", 1, 2, t0, t0, &retry, NULL), i ? AICFN_E_QUOTA : 0);
    assert_int_equal(gw_limits_check(l, "r", 1, 2, t0 + 1000000, t0 + 1000000, &retry, NULL), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "r", 1, 2, t0 + 3000000, t0 + 3000000, &retry, NULL), AICFN_E_QUOTA);
    /* Seeding. */
    gw_limits_seed(l, "s", 10, t0);
    assert_int_equal(gw_limits_check(l, "s", 0, 10, t0, t0, &retry, NULL), AICFN_E_QUOTA);
    assert_int_equal(gw_limits_check(l, "s", 0, 11, t0, t0, &retry, NULL), AICFN_OK);
    gw_limits_destroy(l);
    gw_limits_destroy(NULL);
}

static void quota_seeded_from_ledger(void **state) {
    fx *f = *state;
    gw_ledger *led = NULL;
    assert_int_equal(gw_ledger_create(f->dir, 0, 0, 0, &led, NULL), AICFN_OK);
    const uint64_t day = 86400ull * 1000000ull;
    uint64_t now = 20000 * day + 5000000;
    for (int i = 0; i < 7; i++) {
        gw_invocation_record r = {.time_us = i < 2 ? now - day : now - 1000, .tenant = "t", .function = "f"};
        assert_int_equal(gw_ledger_submit_invocation(led, &r), AICFN_OK);
    }
    /* Calls the limits refused have rows too, but used no quota (as live). */
    for (int i = 0; i < 4; i++) {
        gw_invocation_record r = {
            .time_us = now - 500, .tenant = "t", .function = "f", .status = AICFN_E_QUOTA};
        assert_int_equal(gw_ledger_submit_invocation(led, &r), AICFN_OK);
    }
    gw_ledger_destroy(led);
    gw_limits *l = NULL;
    assert_int_equal(gw_limits_create(&l, NULL), AICFN_OK);
    assert_int_equal(gw_limits_seed_from_ledger(l, f->db, now, NULL), AICFN_OK);
    uint32_t retry;
    /* 5 calls today already: quota 6 admits one more. */
    assert_int_equal(gw_limits_check(l, "t", 0, 6, now, now, &retry, NULL), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "t", 0, 6, now, now, &retry, NULL), AICFN_E_QUOTA);
    gw_limits_destroy(l);
}

/* A call admitted and then never run for the gateway's reason gives its token and its
 * count today back. */
static void refund_gives_back_the_token_and_the_count(void **state) {
    (void)state;
    gw_limits *l = NULL;
    assert_int_equal(gw_limits_create(&l, NULL), AICFN_OK);
    uint32_t retry = 0;
    aicfn_error err;
    uint64_t t0 = 20000 * 86400ull * 1000000ull + 1000;
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t0, t0, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t0, t0, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t0, t0, &retry, &err), AICFN_E_QUOTA); /* rate */
    gw_limits_refund(l, "r", 2, t0);
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t0, t0, &retry, &err), AICFN_OK);
    /* The day's count: 2 admitted (one refunded, one again); a refund never passes the
     * bucket's capacity, and one for another day leaves this day's count alone. */
    gw_limits_refund(l, "r", 2, t0);
    gw_limits_refund(l, "r", 2, t0);
    gw_limits_refund(l, "r", 2, t0); /* count already 0: stays 0 */
    uint64_t t1 = t0 + 2000000;
    for (int i = 0; i < 2; i++)
        assert_int_equal(gw_limits_check(l, "r", 2, 3, t1, t1, &retry, &err), AICFN_OK);
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t1, t1, &retry, &err), AICFN_E_QUOTA); /* rate, cap 2 */
    uint64_t t2 = t1 + 2000000;
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t2, t2, &retry, &err), AICFN_OK); /* the 3rd today */
    gw_limits_refund(l, "r", 2, t2 - 86400ull * 1000000ull);                         /* yesterday's call */
    uint64_t t3 = t2 + 2000000;
    assert_int_equal(gw_limits_check(l, "r", 2, 3, t3, t3, &retry, &err), AICFN_E_QUOTA);
    assert_non_null(strstr(err.msg, "quota"));
    gw_limits_destroy(l);
}

/* Refusals over the limits get ledger rows at most AICFN_GW_REFUSED_ROWS_PER_S a second
 * per tenant; the next row written says how many went without. */
static void refusal_rows_are_bounded_per_tenant(void **state) {
    (void)state;
    gw_limits *l = NULL;
    assert_int_equal(gw_limits_create(&l, NULL), AICFN_OK);
    uint64_t t0 = 5000000, skipped = 99;
    for (int i = 0; i < AICFN_GW_REFUSED_ROWS_PER_S; i++)
        assert_true(gw_limits_refusal_recorded(l, "flood", t0, &skipped));
    assert_int_equal(skipped, 0);
    for (int i = 0; i < 1000; i++)
        assert_false(gw_limits_refusal_recorded(l, "flood", t0 + (uint64_t)i, &skipped));
    assert_true(gw_limits_refusal_recorded(l, "other", t0, NULL)); /* its own bucket */
    /* Half a second later half the bucket is back; the first says what went without. */
    uint64_t t1 = t0 + 500000;
    assert_true(gw_limits_refusal_recorded(l, "flood", t1, &skipped));
    assert_int_equal(skipped, 1000);
    for (int i = 1; i < AICFN_GW_REFUSED_ROWS_PER_S / 2; i++) {
        assert_true(gw_limits_refusal_recorded(l, "flood", t1, &skipped));
        assert_int_equal(skipped, 0);
    }
    assert_false(gw_limits_refusal_recorded(l, "flood", t1, &skipped));
    /* A clock read before another thread's (older) refills nothing and breaks nothing. The
     * two refused since are reported only 10 s after the last report. */
    assert_false(gw_limits_refusal_recorded(l, "flood", t0, &skipped));
    assert_true(gw_limits_refusal_recorded(l, "flood", t1 + 2000000, &skipped));
    assert_int_equal(skipped, 0);
    uint64_t t2 = t1 + AICFN_GW_REFUSED_REPORT_MS * 1000ull;
    assert_true(gw_limits_refusal_recorded(l, "flood", t2, &skipped));
    assert_int_equal(skipped, 2);
    gw_limits_destroy(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refusal_rows_are_bounded_per_tenant),
        cmocka_unit_test(refund_gives_back_the_token_and_the_count),
        cmocka_unit_test_setup_teardown(create_authenticate_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(roles_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(key_cache_answers_without_the_database, setup, teardown),
        cmocka_unit_test_setup_teardown(no_plaintext_in_db_files, setup, teardown),
        cmocka_unit_test(token_bucket_and_quota),
        cmocka_unit_test_setup_teardown(quota_seeded_from_ledger, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
