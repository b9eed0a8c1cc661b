/* registry.c: function versions in aicfn.db, the function config's JSON form, and the
 * read side of the workers table.
 *
 * Not for: artifact files (artifacts.c), the ledger and the workers table's writes
 * (ledger.c), routing. */
#include "gateway/registry.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "gateway/artifacts.h"

/* ---- Names ---------------------------------------------------------------------- */

bool gw_fn_name_valid(const char *name) {
    if (!name || !name[0]) return false;
    size_t n = strlen(name);
    if (n > AICFN_FN_NAME_MAX_BYTES) return false;
    if (!isalnum((unsigned char)name[0])) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(isalnum(c) || c == '_' || c == '.' || c == '-')) return false;
    }
    return true;
}

int gw_fn_ref_parse(const char *ref, char *name_out, uint32_t *version, aicfn_error *err) {
    *version = 0;
    name_out[0] = '\0';
    if (!ref) return aicfn_error_set(err, AICFN_E_INVALID, "missing function reference");
    const char *colon = strchr(ref, ':');
    size_t nlen = colon ? (size_t)(colon - ref) : strlen(ref);
    if (nlen == 0 || nlen > AICFN_FN_NAME_MAX_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "invalid function reference '%.80s'", ref);
    memcpy(name_out, ref, nlen);
    name_out[nlen] = '\0';
    if (!gw_fn_name_valid(name_out)) {
        name_out[0] = '\0';
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "invalid function name in '%.80s' (want [A-Za-z0-9_.-], starting with a "
                               "letter or digit, at most %d bytes)",
                               ref, AICFN_FN_NAME_MAX_BYTES);
    }
    if (colon) {
        const char *v = colon + 1;
        if (!*v || strlen(v) > 9) goto bad_version;
        for (const char *p = v; *p; p++)
            if (!isdigit((unsigned char)*p)) goto bad_version;
        unsigned long x = strtoul(v, NULL, 10);
        if (x == 0) goto bad_version;
        *version = (uint32_t)x;
    }
    return AICFN_OK;
bad_version:
    name_out[0] = '\0';
    return aicfn_error_set(err, AICFN_E_INVALID, "invalid version in '%.80s' (want NAME:N with N >= 1)", ref);
}

/* ---- Config ---------------------------------------------------------------------- */

void gw_fn_config_init(gw_fn_config *c) {
    memset(c, 0, sizeof *c);
    c->max_batch = AICFN_DEFAULT_MAX_BATCH;
    c->max_delay_us = AICFN_DEFAULT_MAX_DELAY_US;
    c->timeout_us = (uint64_t)AICFN_DEFAULT_TIMEOUT_MS * 1000u;
    c->max_request_bytes = AICFN_DEFAULT_REQUEST_BYTES;
    c->min_workers = 0;
    c->max_workers = 1;
    c->idle_timeout_us = (uint64_t)AICFN_DEFAULT_IDLE_TIMEOUT_MS * 1000u;
    c->cache_responses = false;
    c->cache_ttl_us = 0;
    c->idempotent = false;
}

void gw_fn_config_clear(gw_fn_config *c) {
    if (!c) return;
    free(c->inputs);
    free(c->outputs);
    for (size_t i = 0; i < c->n_params; i++) {
        free((char *)c->params[i].key);
        free((char *)c->params[i].value);
    }
    free(c->params);
    gw_fn_config_init(c);
}

int gw_fn_config_add_param(gw_fn_config *c, const char *key, size_t key_len, const char *value,
                           size_t value_len, aicfn_error *err) {
    if (key_len == 0 || key_len >= AICFN_MAX_NAME_BYTES || memchr(key, 0, key_len))
        return aicfn_error_set(err, AICFN_E_INVALID, "params: a key must be 1..%d bytes without NUL",
                               AICFN_MAX_NAME_BYTES - 1);
    if (value_len > AICFN_PARAM_VALUE_MAX || memchr(value, 0, value_len))
        return aicfn_error_set(err, AICFN_E_INVALID, "params.%.*s: a value must be at most %d bytes without NUL",
                               (int)key_len, key, AICFN_PARAM_VALUE_MAX);
    if (c->n_params >= AICFN_MAX_PARAMS)
        return aicfn_error_set(err, AICFN_E_INVALID, "params: more than %d", AICFN_MAX_PARAMS);
    size_t total = key_len + value_len;
    for (size_t i = 0; i < c->n_params; i++)
        total += strlen(c->params[i].key) + strlen(c->params[i].value);
    if (total > AICFN_PARAMS_TOTAL_MAX)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "params: %zu bytes of keys and values, at most %u (every call carries them)", total,
                               AICFN_PARAMS_TOTAL_MAX);
    for (size_t i = 0; i < c->n_params; i++)
        if (strlen(c->params[i].key) == key_len && memcmp(c->params[i].key, key, key_len) == 0)
            return aicfn_error_set(err, AICFN_E_INVALID, "params: duplicate key '%.*s'", (int)key_len, key);
    aicfn_param *p = realloc(c->params, (c->n_params + 1) * sizeof *p);
    if (!p) return aicfn_error_set(err, AICFN_E_NOMEM, "params: out of memory");
    c->params = p;
    char *k = strndup(key, key_len), *v = strndup(value, value_len);
    if (!k || !v) {
        free(k);
        free(v);
        return aicfn_error_set(err, AICFN_E_NOMEM, "params: out of memory");
    }
    c->params[c->n_params++] = (aicfn_param){.key = k, .value = v};
    return AICFN_OK;
}

static int reg_validate_tensors(const gw_tensor_spec *t, size_t n, const char *what, aicfn_error *err) {
    if (n > AICFN_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_INVALID, "%s: %zu tensors, at most %d", what, n,
                               AICFN_MAX_TENSORS);
    for (size_t i = 0; i < n; i++) {
        if (!t[i].name[0]) return aicfn_error_set(err, AICFN_E_INVALID, "%s[%zu]: empty name", what, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(t[i].name, t[j].name) == 0)
                return aicfn_error_set(err, AICFN_E_INVALID, "%s: duplicate tensor name '%s'", what,
                                       t[i].name);
        if (t[i].dtype <= AICFN_DTYPE_INVALID || t[i].dtype >= AICFN_DTYPE_COUNT)
            return aicfn_error_set(err, AICFN_E_INVALID, "%s '%s': invalid dtype", what, t[i].name);
        if (t[i].ndim > AICFN_MAX_DIMS)
            return aicfn_error_set(err, AICFN_E_INVALID, "%s '%s': %u dims, at most %d", what, t[i].name,
                                   t[i].ndim, AICFN_MAX_DIMS);
        for (unsigned d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] < -1)
                return aicfn_error_set(err, AICFN_E_INVALID, "%s '%s': dim %u is %lld (want >= 0, or -1)",
                                       what, t[i].name, d, (long long)t[i].shape[d]);
    }
    return AICFN_OK;
}

int gw_fn_config_validate(const gw_fn_config *c, aicfn_error *err) {
    if (c->max_batch < 1 || c->max_batch > AICFN_MAX_BATCH)
        return aicfn_error_set(err, AICFN_E_INVALID, "batching.max_batch: %u, want 1..%d", c->max_batch,
                               AICFN_MAX_BATCH);
    if (c->max_delay_us > AICFN_MAX_DELAY_US_MAX)
        return aicfn_error_set(err, AICFN_E_INVALID, "batching.max_delay_us: %llu, at most %llu",
                               (unsigned long long)c->max_delay_us,
                               (unsigned long long)AICFN_MAX_DELAY_US_MAX);
    if (c->timeout_us < 1 || c->timeout_us > AICFN_MAX_TIMEOUT_US)
        return aicfn_error_set(err, AICFN_E_INVALID, "limits.timeout: %llu us, want 1 us..1 h",
                               (unsigned long long)c->timeout_us);
    if (c->max_request_bytes < 1 || c->max_request_bytes > AICFN_MAX_MESSAGE_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "limits.max_request_bytes: %llu, want 1..%u",
                               (unsigned long long)c->max_request_bytes, AICFN_MAX_MESSAGE_BYTES);
    if (c->max_workers < 1 || c->max_workers > AICFN_MAX_WORKERS)
        return aicfn_error_set(err, AICFN_E_INVALID, "scaling.max_workers: %u, want 1..%d", c->max_workers,
                               AICFN_MAX_WORKERS);
    if (c->min_workers > c->max_workers)
        return aicfn_error_set(err, AICFN_E_INVALID, "scaling.min_workers (%u) exceeds max_workers (%u)",
                               c->min_workers, c->max_workers);
    const uint64_t year_us = 366ull * 86400ull * 1000000ull;
    if (c->idle_timeout_us > year_us)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "scaling.idle_timeout: %llu s, at most 366 days (31622400 s)",
                               (unsigned long long)(c->idle_timeout_us / 1000000));
    if (c->cache_ttl_us > year_us)
        return aicfn_error_set(err, AICFN_E_INVALID, "cache.ttl: %llu s, at most 366 days (31622400 s)",
                               (unsigned long long)(c->cache_ttl_us / 1000000));
    int rc = reg_validate_tensors(c->inputs, c->n_inputs, "inputs", err);
    if (!rc) rc = reg_validate_tensors(c->outputs, c->n_outputs, "outputs", err);
    return rc;
}

static json_t *reg_tensors_json(const gw_tensor_spec *t, size_t n) {
    json_t *arr = json_array();
    if (!arr) return NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (unsigned d = 0; shape && d < t[i].ndim; d++)
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        json_t *o = shape ? json_pack("{s:s, s:s, s:o}", "name", t[i].name, "datatype",
                                      dtype_name(t[i].dtype), "shape", shape)
                          : NULL;
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *gw_fn_config_to_json(const gw_fn_config *c) {
    json_t *in = reg_tensors_json(c->inputs, c->n_inputs);
    json_t *out = reg_tensors_json(c->outputs, c->n_outputs);
    if (!in || !out) {
        json_decref(in);
        json_decref(out);
        return NULL;
    }
    json_t *j = json_pack("{s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I, s:I}, s:{s:b, s:I}, s:b, s:o, s:o}",
                     "batching", "max_batch", (json_int_t)c->max_batch, "max_delay_us",
                     (json_int_t)c->max_delay_us, "limits", "timeout_us", (json_int_t)c->timeout_us,
                     "max_request_bytes", (json_int_t)c->max_request_bytes, "scaling", "min_workers",
                     (json_int_t)c->min_workers, "max_workers", (json_int_t)c->max_workers, "idle_timeout_us",
                     (json_int_t)c->idle_timeout_us, "cache", "responses", (int)c->cache_responses, "ttl_us",
                     (json_int_t)c->cache_ttl_us, "idempotent", (int)c->idempotent, "inputs", in, "outputs",
                     out);
    if (j && c->n_params) { /* only when there are any: older configs keep their canonical form */
        json_t *p = json_object();
        for (size_t i = 0; p && i < c->n_params; i++)
            if (json_object_set_new(p, c->params[i].key, json_string(c->params[i].value)) != 0) {
                json_decref(p);
                p = NULL;
            }
        if (!p || json_object_set_new(j, "params", p) != 0) {
            json_decref(j);
            return NULL;
        }
    }
    return j;
}

/* A field of an object: a name and where to store it. */
typedef enum { REG_U32, REG_U64, REG_BOOL } reg_kind;
typedef struct reg_field {
    const char *key;
    reg_kind kind;
    void *dst;
} reg_field;

static int reg_fields(const json_t *obj, const char *where, const reg_field *f, size_t nf, aicfn_error *err) {
    if (!json_is_object(obj))
        return aicfn_error_set(err, AICFN_E_INVALID, "config.%s: expected an object", where);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        size_t i = 0;
        while (i < nf && strcmp(f[i].key, key) != 0)
            i++;
        if (i == nf)
            return aicfn_error_set(err, AICFN_E_INVALID, "config.%s: unknown key '%.64s'", where, key);
        if (f[i].kind == REG_BOOL) {
            if (!json_is_boolean(v))
                return aicfn_error_set(err, AICFN_E_INVALID, "config.%s.%s: expected a boolean", where, key);
            *(bool *)f[i].dst = json_is_true(v);
            continue;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return aicfn_error_set(err, AICFN_E_INVALID, "config.%s.%s: expected a non-negative integer",
                                   where, key);
        json_int_t x = json_integer_value(v);
        if (f[i].kind == REG_U32) {
            if (x > UINT32_MAX)
                return aicfn_error_set(err, AICFN_E_INVALID, "config.%s.%s: too large", where, key);
            *(uint32_t *)f[i].dst = (uint32_t)x;
        } else {
            *(uint64_t *)f[i].dst = (uint64_t)x;
        }
    }
    return AICFN_OK;
}

static int reg_tensors_from_json(const json_t *arr, const char *where, gw_tensor_spec **out, size_t *n,
                                 aicfn_error *err) {
    if (!json_is_array(arr))
        return aicfn_error_set(err, AICFN_E_INVALID, "config.%s: expected an array", where);
    size_t cnt = json_array_size(arr);
    if (cnt > AICFN_MAX_TENSORS)
        return aicfn_error_set(err, AICFN_E_INVALID, "config.%s: %zu tensors, at most %d", where, cnt,
                               AICFN_MAX_TENSORS);
    if (cnt == 0) return AICFN_OK;
    gw_tensor_spec *t = calloc(cnt, sizeof *t);
    if (!t) return aicfn_error_set(err, AICFN_E_NOMEM, "config.%s", where);
    *out = t;
    *n = cnt;
    for (size_t i = 0; i < cnt; i++) {
        json_t *o = json_array_get(arr, i);
        if (!json_is_object(o))
            return aicfn_error_set(err, AICFN_E_INVALID, "config.%s[%zu]: expected an object", where, i);
        const char *key;
        json_t *v;
        bool have_name = false, have_dtype = false;
        json_object_foreach(o, key, v) {
            if (strcmp(key, "name") == 0) {
                if (!json_is_string(v) || json_string_length(v) == 0 ||
                    json_string_length(v) > AICFN_MAX_NAME_BYTES ||
                    strlen(json_string_value(v)) != json_string_length(v))
                    return aicfn_error_set(err, AICFN_E_INVALID, "config.%s[%zu].name: expected a name",
                                           where, i);
                memcpy(t[i].name, json_string_value(v), json_string_length(v) + 1);
                have_name = true;
            } else if (strcmp(key, "datatype") == 0) {
                t[i].dtype = json_is_string(v) ? dtype_from_name(json_string_value(v)) : AICFN_DTYPE_INVALID;
                if (t[i].dtype == AICFN_DTYPE_INVALID)
                    return aicfn_error_set(err, AICFN_E_INVALID, "config.%s[%zu].datatype: unknown dtype",
                                           where, i);
                have_dtype = true;
            } else if (strcmp(key, "shape") == 0) {
                if (!json_is_array(v) || json_array_size(v) > AICFN_MAX_DIMS)
                    return aicfn_error_set(err, AICFN_E_INVALID,
                                           "config.%s[%zu].shape: expected an array of at most %d dims",
                                           where, i, AICFN_MAX_DIMS);
                t[i].ndim = (unsigned)json_array_size(v);
                for (unsigned d = 0; d < t[i].ndim; d++) {
                    json_t *dv = json_array_get(v, d);
                    if (!json_is_integer(dv) || json_integer_value(dv) < -1)
                        return aicfn_error_set(err, AICFN_E_INVALID,
                                               "config.%s[%zu].shape[%u]: expected an integer >= -1", where,
                                               i, d);
                    t[i].shape[d] = json_integer_value(dv);
                }
            } else {
                return aicfn_error_set(err, AICFN_E_INVALID, "config.%s[%zu]: unknown key '%.64s'", where, i,
                                       key);
            }
        }
        if (!have_name || !have_dtype)
            return aicfn_error_set(err, AICFN_E_INVALID, "config.%s[%zu]: missing %s", where, i,
                                   have_name ? "datatype" : "name");
    }
    return AICFN_OK;
}

int gw_fn_config_from_json(const json_t *j, gw_fn_config *c, aicfn_error *err) {
    gw_fn_config_init(c);
    if (!json_is_object(j)) return aicfn_error_set(err, AICFN_E_INVALID, "config: expected a JSON object");
    const char *key;
    json_t *v;
    int rc = AICFN_OK;
    json_object_foreach((json_t *)j, key, v) {
        if (strcmp(key, "batching") == 0) {
            reg_field f[] = {{"max_batch", REG_U32, &c->max_batch},
                             {"max_delay_us", REG_U64, &c->max_delay_us}};
            rc = reg_fields(v, key, f, 2, err);
        } else if (strcmp(key, "limits") == 0) {
            reg_field f[] = {{"timeout_us", REG_U64, &c->timeout_us},
                             {"max_request_bytes", REG_U64, &c->max_request_bytes}};
            rc = reg_fields(v, key, f, 2, err);
        } else if (strcmp(key, "scaling") == 0) {
            reg_field f[] = {{"min_workers", REG_U32, &c->min_workers},
                             {"max_workers", REG_U32, &c->max_workers},
                             {"idle_timeout_us", REG_U64, &c->idle_timeout_us}};
            rc = reg_fields(v, key, f, 3, err);
        } else if (strcmp(key, "cache") == 0) {
            reg_field f[] = {{"responses", REG_BOOL, &c->cache_responses},
                             {"ttl_us", REG_U64, &c->cache_ttl_us}};
            rc = reg_fields(v, key, f, 2, err);
        } else if (strcmp(key, "idempotent") == 0) {
            if (!json_is_boolean(v))
                rc = aicfn_error_set(err, AICFN_E_INVALID, "config.idempotent: expected a boolean");
            else
                c->idempotent = json_is_true(v);
        } else if (strcmp(key, "inputs") == 0) {
            if (c->inputs)
                rc = aicfn_error_set(err, AICFN_E_INVALID, "config.inputs: duplicate");
            else
                rc = reg_tensors_from_json(v, key, &c->inputs, &c->n_inputs, err);
        } else if (strcmp(key, "outputs") == 0) {
            if (c->outputs)
                rc = aicfn_error_set(err, AICFN_E_INVALID, "config.outputs: duplicate");
            else
                rc = reg_tensors_from_json(v, key, &c->outputs, &c->n_outputs, err);
        } else if (strcmp(key, "params") == 0) {
            if (!json_is_object(v) || c->n_params)
                rc = aicfn_error_set(err, AICFN_E_INVALID, "config.params: expected one object of strings");
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv) {
                if (rc) break;
                if (!json_is_string(pv))
                    rc = aicfn_error_set(err, AICFN_E_INVALID, "config.params.%.64s: expected a string", pk);
                else
                    rc = gw_fn_config_add_param(c, pk, strlen(pk), json_string_value(pv), json_string_length(pv),
                                                err);
            }
        } else {
            rc = aicfn_error_set(err, AICFN_E_INVALID, "config: unknown key '%.64s'", key);
        }
        if (rc) break;
    }
    if (!rc) rc = gw_fn_config_validate(c, err);
    if (rc) gw_fn_config_clear(c);
    return rc;
}

int gw_fn_config_from_string(const char *text, gw_fn_config *c, aicfn_error *err) {
    gw_fn_config_init(c);
    size_t len = text ? strnlen(text, (size_t)AICFN_MAX_MESSAGE_BYTES + 1) : 0;
    if (!text || len > AICFN_MAX_MESSAGE_BYTES)
        return aicfn_error_set(err, AICFN_E_INVALID, "config: missing or larger than %u bytes",
                               AICFN_MAX_MESSAGE_BYTES);
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return aicfn_error_set(err, AICFN_E_INVALID, "config: JSON error at line %d column %d: %s", je.line,
                               je.column, je.text);
    int rc = gw_fn_config_from_json(j, c, err);
    json_decref(j);
    return rc;
}

/* ---- Functions ------------------------------------------------------------------ */

void gw_function_clear(gw_function *f) {
    if (!f) return;
    free(f->config_json);
    memset(f, 0, sizeof *f);
}

void gw_function_array_free(gw_function *fs, size_t n) {
    if (!fs) return;
    for (size_t i = 0; i < n; i++)
        gw_function_clear(&fs[i]);
    free(fs);
}

#define REG_FN_COLS                                                                                          \
    "name, version, handler_hash, handler_bytes, snapshot_hash, snapshot_bytes, model_raw_bytes, config, "   \
    "created_us, active"

static int reg_row_function(gw_db *db, sqlite3_stmt *st, gw_function *f, aicfn_error *err) {
    (void)db;
    memset(f, 0, sizeof *f);
    gw_db_column_text(st, 0, f->name, sizeof f->name);
    f->version = (uint32_t)sqlite3_column_int64(st, 1);
    gw_db_column_text(st, 2, f->handler_hash, sizeof f->handler_hash);
    f->handler_bytes = (uint64_t)sqlite3_column_int64(st, 3);
    gw_db_column_text(st, 4, f->snapshot_hash, sizeof f->snapshot_hash);
    f->snapshot_bytes = (uint64_t)sqlite3_column_int64(st, 5);
    f->model_raw_bytes = (uint64_t)sqlite3_column_int64(st, 6);
    f->config_json = gw_db_column_strdup(st, 7);
    f->created_us = (uint64_t)sqlite3_column_int64(st, 8);
    f->active = sqlite3_column_int(st, 9) != 0;
    if (!f->config_json) return aicfn_error_set(err, AICFN_E_NOMEM, "reading function %s", f->name);
    return AICFN_OK;
}

bool gw_deploy_id_valid(const char *id) {
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > GW_DEPLOY_ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '.' || c == ':' || c == '-';
        if (!ok) return false;
    }
    return true;
}

/* A function config JSON parsed, validated and re-serialized by this gateway (every field,
 * defaults included, keys sorted): two configs that mean the same compare equal. */
static int reg_canonical_config(const char *json, char **out, aicfn_error *err) {
    *out = NULL;
    gw_fn_config cfg;
    int rc = gw_fn_config_from_string(json, &cfg, err);
    if (rc) return rc;
    json_t *cj = gw_fn_config_to_json(&cfg);
    gw_fn_config_clear(&cfg);
    *out = cj ? json_dumps(cj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(cj);
    return *out ? AICFN_OK : aicfn_error_set(err, AICFN_E_NOMEM, "serializing a config");
}

/* The version of `name` that deploy `deploy_id` made, if any (lock and transaction
 * held): AICFN_OK with *version (0: none); AICFN_E_EXISTS when that version holds other
 * content than `spec` and `config` (the canonical config; the stored one is made
 * canonical again, as an older gateway may have written fewer fields). */
static int reg_find_deploy_locked(gw_db *db, const gw_function_spec *spec, const char *config,
                                  uint32_t *version, aicfn_error *err) {
    *version = 0;
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db,
                        "SELECT version, handler_hash, coalesce(snapshot_hash, ''), config FROM functions "
                        "WHERE name = ?1 AND deploy_id = ?2",
                        &st, err);
    if (rc) return rc;
    gw_db_bind_text(st, 1, spec->name);
    gw_db_bind_text(st, 2, spec->deploy_id);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        uint32_t v = (uint32_t)sqlite3_column_int64(st, 0);
        const char *h = (const char *)sqlite3_column_text(st, 1),
                   *sn = (const char *)sqlite3_column_text(st, 2),
                   *c = (const char *)sqlite3_column_text(st, 3);
        char *stored = NULL;
        aicfn_error ignored;
        bool same = h && sn && c && strcmp(h, spec->handler_hash) == 0 &&
                    strcmp(sn, spec->snapshot_hash ? spec->snapshot_hash : "") == 0 &&
                    reg_canonical_config(c, &stored, &ignored) == AICFN_OK && strcmp(stored, config) == 0;
        free(stored);
        rc = same
                 ? AICFN_OK
                 : aicfn_error_set(err, AICFN_E_EXISTS,
                                   "deploy id '%s' already made %s:%u, with another handler, model or config",
                                   spec->deploy_id, spec->name, v);
        if (same) *version = v;
    } else if (s != SQLITE_DONE) {
        rc = gw_db_error(db, s, err, "deploy: looking up the deploy id");
    }
    gw_db_done(st);
    return rc;
}

/* Runs one write statement of the registry (lock held, in a transaction): ?1 is `name`,
 * and ?2, when the statement has it, `version`. `what` names it in an error. */
static int reg_run(gw_db *db, const char *sql, const char *name, uint32_t version, const char *what,
                   aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db, sql, &st, err);
    if (rc) return rc;
    gw_db_bind_text(st, 1, name);
    if (sqlite3_bind_parameter_count(st) >= 2) sqlite3_bind_int64(st, 2, version);
    int s = sqlite3_step(st);
    gw_db_done(st);
    return s == SQLITE_DONE ? AICFN_OK : gw_db_error(db, s, err, what);
}

/* Ends NAME's canary (version 0), or only one sending calls to `version` (lock held, in
 * a transaction). */
static int reg_end_canary_locked(gw_db *db, const char *name, uint32_t version, aicfn_error *err) {
    return reg_run(db,
                   "UPDATE function_names SET canary_version = NULL, canary_percent = 0 "
                   "WHERE name = ?1 AND (?2 = 0 OR canary_version = ?2)",
                   name, version, "ending the canary", err);
}

int gw_registry_deploy(gw_db *db, const gw_function_spec *spec, uint32_t *version_out, bool *existing_out,
                       aicfn_error *err) {
    *version_out = 0;
    if (existing_out) *existing_out = false;
    if (!gw_fn_name_valid(spec->name))
        return aicfn_error_set(
            err, AICFN_E_INVALID,
            "invalid function name '%.80s' (want [A-Za-z0-9_.-], starting with a letter or "
            "digit, at most %d bytes)",
            spec->name ? spec->name : "", AICFN_FN_NAME_MAX_BYTES);
    if (!gw_hash_hex_valid(spec->handler_hash))
        return aicfn_error_set(err, AICFN_E_INVALID, "deploy %s: invalid handler hash", spec->name);
    if (spec->snapshot_hash && !gw_hash_hex_valid(spec->snapshot_hash))
        return aicfn_error_set(err, AICFN_E_INVALID, "deploy %s: invalid snapshot hash", spec->name);
    if (spec->handler_bytes > INT64_MAX || spec->snapshot_bytes > INT64_MAX ||
        spec->model_raw_bytes > INT64_MAX)
        return aicfn_error_set(err, AICFN_E_INVALID, "deploy %s: size out of range", spec->name);
    if (spec->deploy_id && !gw_deploy_id_valid(spec->deploy_id))
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "deploy %s: invalid deploy id (want 1..%d bytes of [A-Za-z0-9_.:-])",
                               spec->name, GW_DEPLOY_ID_MAX);
    /* Store a canonical config: parsed, validated and re-serialized. */
    char *config = NULL;
    int rc = reg_canonical_config(spec->config_json ? spec->config_json : "{}", &config, err);
    if (rc) return aicfn_error_wrap(err, "deploy %s", spec->name);

    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    uint32_t version = 0;
    rc = gw_db_begin(db, err);
    if (rc) goto out;
    if (spec->deploy_id) {
        rc = reg_find_deploy_locked(db, spec, config, &version, err);
        if (rc || version) {
            gw_db_rollback(db); /* nothing was written */
            if (!rc) {
                *version_out = version;
                if (existing_out) *existing_out = true;
            }
            goto out;
        }
    }
    /* Bump the per-name counter (never reused, even after rm). */
    rc = gw_db_stmt(db,
                    "INSERT INTO function_names(name, last_version) VALUES (?1, 1) "
                    "ON CONFLICT(name) DO UPDATE SET last_version = last_version + 1 RETURNING last_version",
                    &st, err);
    if (rc) goto fail;
    gw_db_bind_text(st, 1, spec->name);
    int s = sqlite3_step(st);
    if (s != SQLITE_ROW) {
        rc = gw_db_error(db, s, err, "deploy: allocating a version");
        goto fail;
    }
    int64_t v = sqlite3_column_int64(st, 0);
    gw_db_done(st);
    if (v < 1 || v > UINT32_MAX) {
        rc = aicfn_error_set(err, AICFN_E_INTERNAL, "deploy %s: version counter out of range", spec->name);
        goto fail;
    }
    version = (uint32_t)v;
    if (!spec->inactive) {
        if ((rc = reg_run(db, "UPDATE functions SET active = 0 WHERE name = ?1 AND active = 1", spec->name, 0,
                          "deploy: deactivating older versions", err)))
            goto fail;
        /* A new active version ends any canary, as an activate does. */
        if ((rc = reg_end_canary_locked(db, spec->name, 0, err))) goto fail;
    }
    rc = gw_db_stmt(db,
                    "INSERT INTO functions(name, version, handler_hash, handler_bytes, snapshot_hash, "
                    "snapshot_bytes, model_raw_bytes, config, created_us, active, deploy_id, staged) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?11, ?10, ?12)",
                    &st, err);
    if (rc) goto fail;
    gw_db_bind_text(st, 1, spec->name);
    sqlite3_bind_int64(st, 2, version);
    gw_db_bind_text(st, 3, spec->handler_hash);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)spec->handler_bytes);
    gw_db_bind_text(st, 5, spec->snapshot_hash);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)spec->snapshot_bytes);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)spec->model_raw_bytes);
    gw_db_bind_text(st, 8, config);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)clock_wall_us());
    gw_db_bind_text(st, 10, spec->deploy_id);
    sqlite3_bind_int(st, 11, !spec->inactive);
    sqlite3_bind_int(st, 12, spec->inactive);
    if ((s = sqlite3_step(st)) != SQLITE_DONE) {
        rc = gw_db_error(db, s, err, "deploy: inserting the version");
        goto fail;
    }
    gw_db_done(st);
    st = NULL;
    rc = gw_db_commit(db, err);
    if (rc) goto out;
    *version_out = version;
    goto out;
fail:
    gw_db_done(st);
    gw_db_rollback(db);
out:
    gw_db_unlock(db);
    free(config);
    if (rc) aicfn_error_wrap(err, "deploy %s", spec->name);
    return rc;
}

static int reg_get_locked(gw_db *db, const char *name, uint32_t version, gw_function *out, aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc;
    if (version == 0) {
        rc = gw_db_stmt(db, "SELECT " REG_FN_COLS " FROM functions WHERE name = ?1 AND active = 1", &st, err);
    } else {
        rc = gw_db_stmt(db, "SELECT " REG_FN_COLS " FROM functions WHERE name = ?1 AND version = ?2", &st,
                        err);
        if (!rc) sqlite3_bind_int64(st, 2, version);
    }
    if (rc) return rc;
    gw_db_bind_text(st, 1, name);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        rc = reg_row_function(db, st, out, err);
    } else if (s == SQLITE_DONE) {
        if (version)
            rc = aicfn_error_set(err, AICFN_E_NOT_FOUND, "function %s:%u not found", name, version);
        else
            rc = aicfn_error_set(err, AICFN_E_NOT_FOUND, "function %s not found (no active version)", name);
    } else {
        rc = gw_db_error(db, s, err, "looking up a function");
    }
    gw_db_done(st);
    return rc;
}

int gw_registry_get(gw_db *db, const char *name, uint32_t version, gw_function *out, aicfn_error *err) {
    memset(out, 0, sizeof *out);
    if (!gw_fn_name_valid(name)) return aicfn_error_set(err, AICFN_E_INVALID, "invalid function name");
    gw_db_lock(db);
    int rc = reg_get_locked(db, name, version, out, err);
    gw_db_unlock(db);
    if (rc) gw_function_clear(out);
    return rc;
}

int gw_registry_resolve(gw_db *db, const char *ref, gw_function *out, aicfn_error *err) {
    memset(out, 0, sizeof *out);
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t version;
    int rc = gw_fn_ref_parse(ref, name, &version, err);
    if (rc) return rc;
    return gw_registry_get(db, name, version, out, err);
}

/* Whether name:version exists (AICFN_E_NOT_FOUND naming it when not) and, in *active,
 * whether it is the active version. Lock held; `what` names the operation in errors. */
static int reg_version_locked(gw_db *db, const char *name, uint32_t version, const char *what, bool *active,
                              aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db, "SELECT active FROM functions WHERE name = ?1 AND version = ?2", &st, err);
    if (rc) return rc;
    gw_db_bind_text(st, 1, name);
    sqlite3_bind_int64(st, 2, version);
    int s = sqlite3_step(st);
    *active = s == SQLITE_ROW && sqlite3_column_int(st, 0) == 1;
    gw_db_done(st);
    if (s == SQLITE_DONE) return aicfn_error_set(err, AICFN_E_NOT_FOUND, "function %s:%u not found", name, version);
    if (s != SQLITE_ROW) return gw_db_error(db, s, err, what);
    return AICFN_OK;
}

int gw_registry_set_canary(gw_db *db, const char *name, uint32_t version, uint32_t percent,
                           aicfn_error *err) {
    if (!gw_fn_name_valid(name))
        return aicfn_error_set(err, AICFN_E_INVALID, "canary: invalid function name");
    if (percent > 99)
        return aicfn_error_set(err, AICFN_E_INVALID,
                               "canary: %u%% of the calls (1 to 99; activate the version for all of them)",
                               percent);
    if (percent && version == 0) return aicfn_error_set(err, AICFN_E_INVALID, "canary: name the version");
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_begin(db, err);
    if (rc) goto out;
    int s;
    if (percent || version) {
        bool active;
        if ((rc = reg_version_locked(db, name, version, "canary", &active, err))) goto fail;
        if (active && percent) {
            rc = aicfn_error_set(err, AICFN_E_INVALID, "canary: %s:%u is the active version already", name,
                                 version);
            goto fail;
        }
    }
    if (percent) {
        rc = gw_db_stmt(db,
                        "UPDATE function_names SET canary_version = ?2, canary_percent = ?3 WHERE name = ?1",
                        &st, err);
        if (rc) goto fail;
        gw_db_bind_text(st, 1, name);
        sqlite3_bind_int64(st, 2, version);
        sqlite3_bind_int64(st, 3, percent);
        s = sqlite3_step(st);
        gw_db_done(st);
        if (s != SQLITE_DONE) {
            rc = gw_db_error(db, s, err, "canary");
            goto fail;
        }
    } else if ((rc = reg_end_canary_locked(db, name, 0, err))) {
        goto fail;
    }
    rc = gw_db_commit(db, err);
    goto out;
fail:
    gw_db_done(st);
    gw_db_rollback(db);
out:
    gw_db_unlock(db);
    return rc;
}

int gw_registry_get_canary(gw_db *db, const char *name, uint32_t *version, uint32_t *percent,
                           aicfn_error *err) {
    *version = *percent = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(
        db, "SELECT coalesce(canary_version, 0), canary_percent FROM function_names WHERE name = ?1", &st,
        err);
    if (!rc) {
        gw_db_bind_text(st, 1, name);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            *version = (uint32_t)sqlite3_column_int64(st, 0);
            *percent = (uint32_t)sqlite3_column_int64(st, 1);
        } else if (s != SQLITE_DONE) {
            rc = gw_db_error(db, s, err, "reading the canary");
        }
        gw_db_done(st);
    }
    gw_db_unlock(db);
    return rc;
}

int gw_registry_activate(gw_db *db, const char *name, uint32_t version, aicfn_error *err) {
    if (!gw_fn_name_valid(name) || version == 0)
        return aicfn_error_set(err, AICFN_E_INVALID, "activate: invalid function reference");
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_begin(db, err);
    if (rc) goto out;
    bool active;
    if ((rc = reg_version_locked(db, name, version, "activate", &active, err))) goto fail;
    if ((rc = reg_run(db, "UPDATE functions SET active = 0 WHERE name = ?1 AND active = 1", name, 0,
                      "activate", err)) ||
        (rc = reg_run(db, "UPDATE functions SET active = 1, staged = 0 WHERE name = ?1 AND version = ?2",
                      name, version, "activate", err)) ||
        (rc = reg_end_canary_locked(db, name, 0, err)))
        goto fail;
    rc = gw_db_commit(db, err);
    goto out;
fail:
    gw_db_done(st);
    gw_db_rollback(db);
out:
    gw_db_unlock(db);
    return rc;
}

/* One row of gw_registry_list: a function and the version it shows. */
static int reg_fill_summary(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    (void)arg;
    (void)err;
    gw_function_summary *e = elem;
    gw_db_column_text(st, 0, e->name, sizeof e->name);
    e->active_version = (uint32_t)sqlite3_column_int64(st, 1);
    e->latest_version = (uint32_t)sqlite3_column_int64(st, 2);
    e->n_versions = (uint32_t)sqlite3_column_int64(st, 3);
    e->handler_bytes = (uint64_t)sqlite3_column_int64(st, 4);
    e->snapshot_bytes = (uint64_t)sqlite3_column_int64(st, 5);
    e->model_raw_bytes = (uint64_t)sqlite3_column_int64(st, 6);
    e->created_us = (uint64_t)sqlite3_column_int64(st, 7);
    gw_fn_config cfg;
    const char *cj = (const char *)sqlite3_column_text(st, 8);
    if (gw_fn_config_from_string(cj && cj[0] ? cj : "{}", &cfg, NULL) != AICFN_OK) gw_fn_config_init(&cfg);
    e->min_workers = cfg.min_workers;
    e->max_workers = cfg.max_workers;
    e->idle_timeout_us = cfg.idle_timeout_us;
    gw_fn_config_clear(&cfg);
    e->canary_version = (uint32_t)sqlite3_column_int64(st, 9);
    e->canary_percent = (uint32_t)sqlite3_column_int64(st, 10);
    if (!e->canary_percent) e->canary_version = 0;
    return AICFN_OK;
}

int gw_registry_list(gw_db *db, gw_function_summary **out, size_t *n, aicfn_error *err) {
    *out = NULL;
    *n = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    /* The shown row is the active version, else the newest. */
    int rc =
        gw_db_stmt(db,
                   "SELECT f.name, "
                   "  (SELECT version FROM functions a WHERE a.name = f.name AND a.active = 1), "
                   "  max(f.version), count(*), "
                   "  s.handler_bytes, s.snapshot_bytes, s.model_raw_bytes, max(f.created_us), s.config, "
                   "  (SELECT coalesce(canary_version, 0) FROM function_names n WHERE n.name = f.name), "
                   "  (SELECT canary_percent FROM function_names n WHERE n.name = f.name) "
                   "FROM functions f JOIN functions s ON s.name = f.name AND s.version = "
                   "  coalesce((SELECT version FROM functions a WHERE a.name = f.name AND a.active = 1), "
                   "           (SELECT max(version) FROM functions b WHERE b.name = f.name)) "
                   "GROUP BY f.name ORDER BY f.name",
                   &st, err);
    void *arr = NULL;
    size_t cnt = 0, cap = 0;
    if (!rc)
        rc = gw_db_collect(db, st, sizeof(gw_function_summary), reg_fill_summary, NULL, &arr, &cnt, &cap,
                           "listing functions", err);
    gw_db_unlock(db);
    if (rc) {
        free(arr);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return AICFN_OK;
}

static int reg_fill_function(void *db, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    return reg_row_function(db, st, elem, err);
}

int gw_registry_versions(gw_db *db, const char *name, gw_function **out, size_t *n, aicfn_error *err) {
    *out = NULL;
    *n = 0;
    if (!gw_fn_name_valid(name)) return aicfn_error_set(err, AICFN_E_INVALID, "invalid function name");
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc =
        gw_db_stmt(db, "SELECT " REG_FN_COLS " FROM functions WHERE name = ?1 ORDER BY version", &st, err);
    void *arr = NULL;
    size_t cnt = 0, cap = 0;
    if (!rc) {
        gw_db_bind_text(st, 1, name);
        rc = gw_db_collect(db, st, sizeof(gw_function), reg_fill_function, db, &arr, &cnt, &cap,
                           "listing versions", err);
    }
    gw_db_unlock(db);
    if (rc) {
        gw_function_array_free(arr, cnt);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return AICFN_OK;
}

json_t *gw_function_summaries_to_json(const gw_function_summary *s, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *o = json_pack(
            "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I}}", "name", s[i].name,
            "active_version", (json_int_t)s[i].active_version, "latest_version",
            (json_int_t)s[i].latest_version, "versions", (json_int_t)s[i].n_versions, "handler_bytes",
            (json_int_t)s[i].handler_bytes, "snapshot_bytes", (json_int_t)s[i].snapshot_bytes,
            "model_raw_bytes", (json_int_t)s[i].model_raw_bytes, "created_us", (json_int_t)s[i].created_us,
            "scaling", "min_workers", (json_int_t)s[i].min_workers, "max_workers",
            (json_int_t)s[i].max_workers, "idle_timeout_us", (json_int_t)s[i].idle_timeout_us);
        json_t *canary = s[i].canary_percent
                             ? json_pack("{s:I, s:I}", "version", (json_int_t)s[i].canary_version, "percent",
                                         (json_int_t)s[i].canary_percent)
                             : json_null();
        if (o && (!canary || json_object_set_new(o, "canary", canary) != 0)) {
            json_decref(o);
            o = NULL;
        }
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static int reg_fill_hash(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    (void)arg;
    (void)err;
    gw_db_column_text(st, 0, elem, GW_HASH_HEX_LEN + 1);
    return AICFN_OK;
}

/* Collects the hashes referenced by the rows about to be removed, into a candidate list. */
static int reg_collect_hashes(gw_db *db, const char *name, uint32_t version, char (**hs)[GW_HASH_HEX_LEN + 1],
                              size_t *nh, aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc =
        gw_db_stmt(db,
                   "SELECT handler_hash FROM functions WHERE name = ?1 AND (?2 = 0 OR version = ?2) "
                   "UNION SELECT snapshot_hash FROM functions WHERE name = ?1 AND (?2 = 0 OR version = ?2) "
                   "AND snapshot_hash IS NOT NULL",
                   &st, err);
    if (rc) return rc;
    gw_db_bind_text(st, 1, name);
    sqlite3_bind_int64(st, 2, version);
    size_t cap = 0;
    void *arr = *hs;
    rc = gw_db_collect(db, st, GW_HASH_HEX_LEN + 1, reg_fill_hash, NULL, &arr, nh, &cap,
                       "rm: collecting hashes", err);
    *hs = arr;
    return rc;
}

static int reg_in_use_locked(gw_db *db, const char *hash, aicfn_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db,
                        "SELECT EXISTS(SELECT 1 FROM functions WHERE handler_hash = ?1) OR "
                        "EXISTS(SELECT 1 FROM functions WHERE snapshot_hash = ?1)",
                        &st, err);
    if (rc) return -rc;
    gw_db_bind_text(st, 1, hash);
    int s = sqlite3_step(st);
    int r =
        s == SQLITE_ROW ? sqlite3_column_int(st, 0) != 0 : -gw_db_error(db, s, err, "checking an artifact");
    gw_db_done(st);
    return r;
}

int gw_registry_artifact_in_use(gw_db *db, const char *hash, aicfn_error *err) {
    gw_db_lock(db);
    int r = reg_in_use_locked(db, hash, err);
    gw_db_unlock(db);
    return r;
}

int gw_registry_remove(gw_db *db, const char *ref, uint32_t *removed, char (**orphans)[GW_HASH_HEX_LEN + 1],
                       size_t *n_orphans, aicfn_error *err) {
    *removed = 0;
    if (orphans) *orphans = NULL;
    if (n_orphans) *n_orphans = 0;
    char name[AICFN_FN_NAME_MAX_BYTES + 1];
    uint32_t version;
    int rc = gw_fn_ref_parse(ref, name, &version, err);
    if (rc) return rc;
    char(*hs)[GW_HASH_HEX_LEN + 1] = NULL;
    size_t nh = 0;
    sqlite3_stmt *st = NULL;
    int s;
    gw_db_lock(db);
    if ((rc = gw_db_begin(db, err))) goto out;
    if ((rc = reg_collect_hashes(db, name, version, &hs, &nh, err))) goto fail;
    rc = gw_db_stmt(db, "SELECT 1 FROM functions WHERE name = ?1 AND (?2 = 0 OR version = ?2) AND active = 1",
                    &st, err);
    if (rc) goto fail;
    gw_db_bind_text(st, 1, name);
    sqlite3_bind_int64(st, 2, version);
    if ((s = sqlite3_step(st)) != SQLITE_ROW && s != SQLITE_DONE) {
        rc = gw_db_error(db, s, err, "rm");
        goto fail;
    }
    bool removes_active = s == SQLITE_ROW;
    gw_db_done(st);
    rc = gw_db_stmt(db, "DELETE FROM functions WHERE name = ?1 AND (?2 = 0 OR version = ?2)", &st, err);
    if (rc) goto fail;
    gw_db_bind_text(st, 1, name);
    sqlite3_bind_int64(st, 2, version);
    if ((s = sqlite3_step(st)) != SQLITE_DONE) {
        rc = gw_db_error(db, s, err, "rm");
        goto fail;
    }
    gw_db_done(st);
    int changes = sqlite3_changes(gw_db_sqlite(db));
    if (changes == 0) {
        rc = version ? aicfn_error_set(err, AICFN_E_NOT_FOUND, "function %s:%u not found", name, version)
                     : aicfn_error_set(err, AICFN_E_NOT_FOUND, "function %s not found", name);
        goto fail;
    }
    /* A canary sending calls to a removed version ends. */
    if ((rc = reg_end_canary_locked(db, name, version, err))) goto fail;
    /* If the active version went, the newest remaining one that was not staged takes
     * over (a staged version goes live only by an activate). A canary of the version
     * now active has nothing left to split, nor has one when no version is active (only
     * staged ones remain): the plain NAME then serves nothing until an activate. */
    if (removes_active &&
        ((rc = reg_run(db,
                       "UPDATE functions SET active = 1 WHERE name = ?1 AND version = "
                       "(SELECT max(version) FROM functions WHERE name = ?1 AND staged = 0)",
                       name, 0, "rm: activating the newest remaining version", err)) ||
         (rc = reg_run(db,
                       "UPDATE function_names SET canary_version = NULL, canary_percent = 0 WHERE name = ?1 "
                       "AND coalesce(canary_version = (SELECT version FROM functions WHERE name = ?1 "
                       "AND active = 1), 1)",
                       name, 0, "rm: ending the canary", err))))
        goto fail;
    /* Keep only the hashes nothing references any more. */
    size_t keep = 0;
    for (size_t i = 0; i < nh; i++) {
        int r = reg_in_use_locked(db, hs[i], err);
        if (r < 0) {
            rc = -r;
            goto fail;
        }
        if (!r) memmove(hs[keep++], hs[i], GW_HASH_HEX_LEN + 1);
    }
    nh = keep;
    if ((rc = gw_db_commit(db, err))) goto out;
    *removed = (uint32_t)changes;
    if (orphans && nh) {
        *orphans = hs;
        *n_orphans = nh;
        hs = NULL;
    }
    goto out;
fail:
    gw_db_done(st);
    gw_db_rollback(db);
out:
    gw_db_unlock(db);
    free(hs);
    return rc;
}

/* ---- Workers -------------------------------------------------------------------- */

static int reg_fill_worker(void *arg, sqlite3_stmt *st, void *elem, aicfn_error *err) {
    (void)arg;
    (void)err;
    gw_worker_row *w = elem;
    gw_db_column_text(st, 0, w->id, sizeof w->id);
    gw_db_column_text(st, 1, w->address, sizeof w->address);
    gw_db_column_text(st, 2, w->device, sizeof w->device);
    w->budget_bytes = (uint64_t)sqlite3_column_int64(st, 3);
    w->pid = sqlite3_column_int64(st, 4);
    w->started_us = (uint64_t)sqlite3_column_int64(st, 5);
    w->last_seen_us = (uint64_t)sqlite3_column_int64(st, 6);
    gw_db_column_text(st, 7, w->state, sizeof w->state);
    return AICFN_OK;
}

int gw_registry_worker_list(gw_db *db, gw_worker_row **out, size_t *n, aicfn_error *err) {
    *out = NULL;
    *n = 0;
    gw_db_lock(db);
    sqlite3_stmt *st = NULL;
    int rc = gw_db_stmt(db,
                        "SELECT id, address, device, budget_bytes, pid, started_us, last_seen_us, state "
                        "FROM workers ORDER BY id",
                        &st, err);
    void *arr = NULL;
    size_t cnt = 0, cap = 0;
    if (!rc)
        rc = gw_db_collect(db, st, sizeof(gw_worker_row), reg_fill_worker, NULL, &arr, &cnt, &cap,
                           "listing workers", err);
    gw_db_unlock(db);
    if (rc) {
        free(arr);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return AICFN_OK;
}
