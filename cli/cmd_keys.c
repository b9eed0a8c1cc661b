/* cmd_keys.c: `aicfn keys create|ls|revoke`: tenants' API keys (gateway/keys.h).
 *
 * It opens aicfn.db in the gateway's data directory directly, like `aicfn usage`. That
 * is how the first admin key comes to exist (no key can authorize its own creation over
 * the network), and it makes the database file's permissions the authority over keys:
 * whoever may write the gateway's data directory may manage keys, nobody else. The
 * gateway sees a new or revoked key on its next authentication (the NNG front caches a
 * check for at most a few seconds). Only hashes are stored; `create` prints the key
 * once. Not for: rate-limit state (that lives in the gateway's memory). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "cli/cli.h"
#include "common/tunables.h"
#include "gateway/db.h"
#include "gateway/keys.h"

/* The value of `flag` at argv[*i] ("--flag V" or "--flag=V"), advancing *i; NULL when
 * argv[*i] is another argument. A flag without its value is reported as NULL too. */
static const char *ks_flag(int argc, char **argv, int *i, const char *flag) {
    size_t n = strlen(flag);
    if (strncmp(argv[*i], flag, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0' || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

static void ks_help(FILE *out) {
    fprintf(
        out,
        "usage: aicfn keys create --tenant NAME [--admin | --worker] [--rate R/s] [--quota N/day] [--json]\n"
        "       aicfn keys ls [--json]\n"
        "       aicfn keys revoke KEY_ID\n"
        "  (each also takes --data-dir DIR: the gateway's data directory; default $AICFN_DATA_DIR,\n"
        "   else %s)\n"
        "\n"
        "create  makes a key for tenant NAME and prints it ONCE (only its hash is stored).\n"
        "        Without a role flag the key invokes functions, charged to NAME.\n"
        "        --admin: may do everything (deploy, rm, activate, ls, workers, coldstarts...);\n"
        "        --worker: for `aicfn worker --gateway ADDR --key KEY` on another host: registers\n"
        "        the worker, downloads artifacts and reads status, nothing else (it cannot invoke\n"
        "        or deploy; the workers it registers do receive calls, so keep it secret);\n"
        "        --rate: calls per second (token bucket, 0 = unlimited); --quota: calls per UTC\n"
        "        day (0 = unlimited); neither for a worker key, which makes no calls.\n"
        "ls      lists keys (id, tenant, role, limits, created, revoked); never secrets.\n"
        "revoke  revokes a key by its id (or the full key): HTTP refuses it at once, the NNG front\n"
        "        within 5 s (it trusts a key it checked for that long).\n"
        "Works on <data-dir>/aicfn.db directly, so run it where the gateway keeps its data.\n",
        AICFN_DEFAULT_DATA_DIR);
}

/* "10", "10/s" -> 10; "1000", "1000/day", "1000/d" -> 1000. */
static int ks_parse_count(const char *s, const char *suffix1, const char *suffix2, uint64_t max,
                          uint64_t *out) {
    char *end;
    if (s[0] < '0' || s[0] > '9') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || v > max) return -1;
    if (*end && strcmp(end, suffix1) != 0 && strcmp(end, suffix2) != 0) return -1;
    *out = v;
    return 0;
}

static void ks_time(uint64_t us, char *buf, size_t n) {
    if (us == 0) {
        snprintf(buf, n, "-");
        return;
    }
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Opens the gateway's database: `create` makes one when there is none (a first admin key
 * before the gateway's first start); ls and revoke need it to exist. */
static int ks_open(const char *data_dir, const char *sub, gw_db **db, aicfn_error *err) {
    gw_db_access access = strcmp(sub, "ls") == 0 ? GW_DB_READ_ONLY : GW_DB_READ_WRITE;
    int rc = gw_db_open_existing(data_dir, access, db, err);
    if (rc == AICFN_E_NOT_FOUND && strcmp(sub, "create") == 0) {
        aicfn_error_clear(err);
        rc = gw_db_open(data_dir, db, err);
        /* Said, since a mistyped directory would otherwise pass for a new one: the key
         * works only for a gateway started with this directory. */
        if (rc == AICFN_OK)
            fprintf(stderr,
                    "aicfn keys: no gateway database in %s yet: created one (the key serves a gateway "
                    "started with --data %s)\n",
                    data_dir, data_dir);
    }
    return rc;
}

int cli_cmd_keys(int argc, char **argv) {
    if (argc < 2) {
        ks_help(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        ks_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(sub, "create") && strcmp(sub, "ls") && strcmp(sub, "revoke"))
        return cli_usage_error("keys", "unknown subcommand '%s' (create, ls or revoke)", sub);
    const char *data_dir = getenv("AICFN_DATA_DIR"), *tenant = NULL, *target = NULL;
    gw_key_role role = GW_KEY_TENANT;
    bool json = false;
    uint64_t rate = 0, quota = 0;
    for (int i = 2; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            ks_help(stdout);
            return CLI_EXIT_OK;
        } else if ((v = ks_flag(argc, argv, &i, "--data-dir"))) {
            data_dir = v;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(sub, "create") && (v = ks_flag(argc, argv, &i, "--tenant"))) {
            if (!gw_tenant_name_valid(v))
                return cli_usage_error("keys", "--tenant '%s': 1..%d of [A-Za-z0-9_.@-]", v,
                                       AICFN_TENANT_MAX_BYTES);
            tenant = v;
        } else if (!strcmp(sub, "create") && (!strcmp(argv[i], "--admin") || !strcmp(argv[i], "--worker"))) {
            gw_key_role r = !strcmp(argv[i], "--admin") ? GW_KEY_ADMIN : GW_KEY_WORKER;
            if (role != GW_KEY_TENANT && role != r)
                return cli_usage_error("keys", "--admin and --worker exclude each other");
            role = r;
        } else if (!strcmp(sub, "create") && (v = ks_flag(argc, argv, &i, "--rate"))) {
            if (ks_parse_count(v, "/s", "/sec", UINT32_MAX, &rate) != 0)
                return cli_usage_error("keys", "--rate '%s' is not a rate (e.g. 10/s)", v);
        } else if (!strcmp(sub, "create") && (v = ks_flag(argc, argv, &i, "--quota"))) {
            if (ks_parse_count(v, "/day", "/d", UINT64_MAX, &quota) != 0)
                return cli_usage_error("keys", "--quota '%s' is not a daily quota (e.g. 1000/day)", v);
        } else if (!strcmp(sub, "revoke") && argv[i][0] != '-' && target == NULL) {
            target = argv[i];
        } else {
            return cli_usage_error("keys", "unknown or incomplete argument '%s'", argv[i]);
        }
    }
    if (!strcmp(sub, "create") && tenant == NULL)
        return cli_usage_error("keys", "create needs --tenant NAME");
    if (role == GW_KEY_WORKER && (rate || quota))
        return cli_usage_error("keys", "--rate and --quota limit calls; a worker key makes none");
    if (!strcmp(sub, "revoke") && target == NULL) return cli_usage_error("keys", "revoke needs a KEY_ID");
    if (data_dir == NULL || data_dir[0] == '\0') data_dir = AICFN_DEFAULT_DATA_DIR;

    aicfn_error err;
    aicfn_error_clear(&err);
    gw_db *db = NULL;
    int rc = ks_open(data_dir, sub, &db, &err);
    if (rc != AICFN_OK) return cli_fail(&err);
    if (!strcmp(sub, "create")) {
        char key[GW_KEY_STRING_MAX];
        gw_key_info info;
        rc = gw_keys_create(db, tenant, role, (uint32_t)rate, quota, key, &info, &err);
        gw_db_close(db);
        if (rc != AICFN_OK) return cli_fail(&err);
        if (json) {
            json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:I}", "key", key, "key_id", info.key_id,
                                  "tenant", info.tenant, "role", gw_key_role_name(info.role), "admin",
                                  info.role == GW_KEY_ADMIN, "rate_per_s", (json_int_t)info.rate_per_s,
                                  "quota_per_day", (json_int_t)info.quota_per_day);
            cli_print_json(j, "{}");
            json_decref(j);
        } else {
            printf("%s\n", key);
            char rs[32], qs[32];
            if (rate)
                snprintf(rs, sizeof rs, "%llu/s", (unsigned long long)rate);
            else
                snprintf(rs, sizeof rs, "unlimited");
            if (quota)
                snprintf(qs, sizeof qs, "%llu/day", (unsigned long long)quota);
            else
                snprintf(qs, sizeof qs, "unlimited");
            fprintf(stderr,
                    "created key %s for tenant %s%s%s (rate %s, quota %s); it is shown only this once\n",
                    info.key_id, info.tenant, info.role == GW_KEY_ADMIN ? " (admin)" : "",
                    info.role == GW_KEY_WORKER ? " (worker)" : "", rs, qs);
        }
        sodium_memzero(key, sizeof key);
        return CLI_EXIT_OK;
    }
    if (!strcmp(sub, "revoke")) {
        rc = gw_keys_revoke(db, target, &err);
        gw_db_close(db);
        if (rc != AICFN_OK) return cli_fail(&err);
        printf("revoked %.*s\n", GW_KEY_ID_LEN + 6, target);
        return CLI_EXIT_OK;
    }
    gw_key_info *keys = NULL;
    size_t n = 0;
    rc = gw_keys_list(db, &keys, &n, &err);
    gw_db_close(db);
    if (rc != AICFN_OK) return cli_fail(&err);
    if (json) {
        json_t *j = gw_keys_to_json(keys, n);
        cli_print_json(j, "[]");
        json_decref(j);
        free(keys);
        return CLI_EXIT_OK;
    }
    printf("%-14s %-20s %-6s %10s %12s %-21s %-21s\n", "KEY_ID", "TENANT", "ROLE", "RATE/S", "QUOTA/DAY",
           "CREATED", "REVOKED");
    for (size_t i = 0; i < n; i++) {
        char c[32], r[32], rate_s[24], quota_s[24];
        ks_time(keys[i].created_us, c, sizeof c);
        ks_time(keys[i].revoked_us, r, sizeof r);
        if (keys[i].rate_per_s)
            snprintf(rate_s, sizeof rate_s, "%u", (unsigned)keys[i].rate_per_s);
        else
            snprintf(rate_s, sizeof rate_s, "-");
        if (keys[i].quota_per_day)
            snprintf(quota_s, sizeof quota_s, "%llu", (unsigned long long)keys[i].quota_per_day);
        else
            snprintf(quota_s, sizeof quota_s, "-");
        printf("%-14s %-20s %-6s %10s %12s %-21s %-21s\n", keys[i].key_id, keys[i].tenant,
               gw_key_role_name(keys[i].role), rate_s, quota_s, c, r);
    }
    if (n == 0) printf("(no keys)\n");
    free(keys);
    return CLI_EXIT_OK;
}
