/* gwclient.c: the gateway subcommands' shared client plumbing (see gwclient.h). */
#include "cli/gwclient.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/tunables.h"

const char *cli_gateway_addr(const char *flag) {
    if (flag && flag[0]) return flag;
    const char *env = getenv("AICFN_GATEWAY");
    if (env && env[0]) return env;
    return AICFN_DEFAULT_GATEWAY;
}

const char *cli_api_key(const char *flag) {
    if (flag && flag[0]) return flag;
    const char *env = getenv("AICFN_KEY");
    return env && env[0] ? env : NULL;
}

int cli_gw_open(const char *addr, rpc_client **out, aicfn_error *err) {
    rpc_client_opts o = {.recv_max = AICFN_MAX_MESSAGE_BYTES, .send_max = AICFN_MAX_MESSAGE_BYTES};
    int rc = rpc_client_open(out, addr, &o, err);
    if (rc != AICFN_OK) aicfn_error_wrap(err, "gateway %s (is `aicfn gateway` running? see --gateway)", addr);
    return rc;
}

static uint64_t gwc_id(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) & ((1ull << 53) - 1);
}

void cli_gw_begin(wire_writer *w, const char *type, const char *key, uint32_t extra) {
    wire_put_map(w, 3 + (key ? 1 : 0) + extra);
    wire_kv_u64(w, "v", AICFN_PROTOCOL_VERSION);
    wire_kv_str(w, "t", type);
    wire_kv_u64(w, "id", gwc_id());
    if (key) wire_kv_str(w, "key", key);
}

int cli_gw_call(rpc_client *c, wire_writer *w, uint32_t timeout_ms, rpc_msg **reply, wire_doc *doc,
                aicfn_error *err) {
    memset(doc, 0, sizeof *doc);
    *reply = NULL;
    int rc = wire_writer_status(w, err);
    if (rc != AICFN_OK) return rc;
    rc = rpc_call_sync(c, w->data, w->len, timeout_ms, reply, err);
    if (rc != AICFN_OK) return rc;
    rc = wire_doc_parse(doc, rpc_msg_data(*reply), rpc_msg_len(*reply), NULL, err);
    wire_reply_head h;
    if (rc == AICFN_OK) rc = wire_decode_reply_head(doc, &h, err);
    if (rc == AICFN_OK && !h.ok) rc = aicfn_error_set(err, h.code, "%s", h.message ? h.message : "");
    if (rc != AICFN_OK) {
        wire_doc_fini(doc);
        rpc_msg_free(*reply);
        *reply = NULL;
    }
    return rc;
}

int cli_gw_request(const char *addr, wire_writer *w, uint32_t timeout_ms, rpc_msg **reply, wire_doc *doc,
                   aicfn_error *err) {
    rpc_client *c = NULL;
    int rc = cli_gw_open(addr, &c, err);
    if (rc != AICFN_OK) return rc;
    rc = cli_gw_call(c, w, timeout_ms, reply, doc, err);
    rpc_client_close(c);
    return rc;
}

int cli_gw_json(const char *addr, const char *key, wire_writer *w, uint32_t timeout_ms, json_t **out,
                aicfn_error *err) {
    (void)key;
    *out = NULL;
    rpc_msg *reply = NULL;
    wire_doc doc;
    int rc = cli_gw_request(addr, w, timeout_ms, &reply, &doc, err);
    if (rc == AICFN_OK) {
        const char *text = NULL;
        rc = wire_get_cstr(&doc, &doc.root, "reply", "json", true, 0, &text, err);
        if (rc == AICFN_OK) {
            json_error_t je;
            *out = json_loads(text, JSON_DECODE_ANY, &je);
            if (!*out) rc = aicfn_error_set(err, AICFN_E_PROTOCOL, "gateway sent bad JSON: %s", je.text);
        }
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
    }
    return rc;
}

int cli_gw_query(const char *gateway, const char *key, const char *type, json_t **out, aicfn_error *err) {
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, type, cli_api_key(key), 0);
    int rc = cli_gw_json(cli_gateway_addr(gateway), NULL, &w, 10000, out, err);
    wire_writer_fini(&w);
    return rc;
}

const char *cli_flag_value(int argc, char **argv, int *i, const char *flag) {
    size_t n = strlen(flag);
    if (strncmp(argv[*i], flag, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] == 0 && *i + 1 < argc) return argv[++*i];
    return NULL;
}

int cli_gw_has_feature(const char *gateway, const char *key, const char *feature, bool *has,
                       aicfn_error *err) {
    *has = false;
    json_t *st = NULL;
    int rc = cli_gw_query(gateway, key, "status", &st, err);
    if (rc != AICFN_OK) return rc;
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(st, "features"), i, f) {
        if (json_is_string(f) && strcmp(json_string_value(f), feature) == 0) *has = true;
    }
    json_decref(st);
    return AICFN_OK;
}

int cli_gw_register(const char *gateway, const char *key, const char *name, const char *addr,
                    const char *exit_token, aicfn_error *err) {
    rpc_client *c = NULL;
    int rc = cli_gw_open(gateway, &c, err);
    if (rc != AICFN_OK) return rc;
    wire_writer w;
    wire_writer_init(&w);
    cli_gw_begin(&w, "register", key, 1 + (name != NULL) + (exit_token != NULL));
    wire_kv_str(&w, "addr", addr);
    if (name) wire_kv_str(&w, "name", name);
    if (exit_token) wire_kv_str(&w, "ctl", exit_token);
    rpc_msg *reply = NULL;
    wire_doc doc;
    rc = cli_gw_call(c, &w, 10000, &reply, &doc, err);
    wire_writer_fini(&w);
    if (rc == AICFN_OK) {
        wire_doc_fini(&doc);
        rpc_msg_free(reply);
    } else {
        aicfn_error_wrap(err, "registering %s with gateway %s", addr, gateway);
    }
    rpc_client_close(c);
    return rc;
}
