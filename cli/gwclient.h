/* gwclient.h: what the gateway subcommands (deploy, ls, rm, coldstarts, workers, and
 * invoke's gateway mode) share to talk to a gateway: finding its address and the API
 * key, opening a REQ client, and one request/reply round trip with the reply's head
 * checked. Not for: the message contents of each command (they build their own). */
#ifndef AICFN_CLI_GWCLIENT_H
#define AICFN_CLI_GWCLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "common/rpc.h"
#include "common/wire.h"

/* The gateway address: `flag` when not NULL, else $AICFN_GATEWAY, else
 * AICFN_DEFAULT_GATEWAY. Never NULL. */
const char *cli_gateway_addr(const char *flag);

/* The API key: `flag` when not NULL, else $AICFN_KEY, else NULL (an --insecure-local
 * gateway needs none). */
const char *cli_api_key(const char *flag);

/* Opens a REQ client dialing the gateway; the first dial must succeed (a clear
 * AICFN_E_UNAVAILABLE naming the address otherwise). */
int cli_gw_open(const char *addr, rpc_client **out, aicfn_error *err);

/* Starts a request map: {v, t, id[, key]} plus `extra` more pairs the caller writes. */
void cli_gw_begin(wire_writer *w, const char *type, const char *key, uint32_t extra);

/* Sends the request in `w`, waits up to timeout_ms, parses the reply into *doc (the
 * caller calls wire_doc_fini and rpc_msg_free(*reply) on success) and checks its head:
 * an error reply returns its code with its message in err. */
int cli_gw_call(rpc_client *c, wire_writer *w, uint32_t timeout_ms, rpc_msg **reply, wire_doc *doc,
                aicfn_error *err);

/* cli_gw_open + cli_gw_call + close: one round trip to the gateway at `addr` (the reply
 * and doc outlive the client; the caller finishes them as for cli_gw_call). */
int cli_gw_request(const char *addr, wire_writer *w, uint32_t timeout_ms, rpc_msg **reply, wire_doc *doc,
                   aicfn_error *err);

/* One round trip whose reply carries `json` (ls, coldstarts, workers, status): returns
 * the parsed JSON (new reference) in *out. */
int cli_gw_json(const char *addr, const char *key, wire_writer *w, uint32_t timeout_ms, json_t **out,
                aicfn_error *err);

/* A query with no fields of its own (`ls`, `workers`): cli_gw_begin + cli_gw_json with
 * the usual 10 s timeout. */
int cli_gw_query(const char *gateway, const char *key, const char *type, json_t **out, aicfn_error *err);

/* Whether the gateway's status lists `feature` in "features" (docs/protocol.md §8): a
 * gateway without it ignores the message keys that feature brings. */
int cli_gw_has_feature(const char *gateway, const char *key, const char *feature, bool *has,
                       aicfn_error *err);

/* Registers a worker listening on `addr` (reachable from the gateway: tcp:// across
 * hosts) with the gateway, under `name` (NULL: the gateway names it). The gateway dials
 * it and routes calls to it, and may end it with an `exit` carrying `exit_token` (NULL:
 * none sent). Blocks up to 10 s. */
int cli_gw_register(const char *gateway, const char *key, const char *name, const char *addr,
                    const char *exit_token, aicfn_error *err);

/* A flag's value: "--flag VALUE" (advancing *i) or "--flag=VALUE"; NULL otherwise. */
const char *cli_flag_value(int argc, char **argv, int *i, const char *flag);

#endif
