/* oip.h: the Open Inference Protocol v2 (KServe / Triton REST) JSON documents, and
 * their translation to and from aicfn's named tensors (wire_tensor, design.md §4).
 *
 * Covers: the inference request (JSON tensors, flat data or data nested exactly as the
 * shape says, and the binary tensor data extension: a JSON header of
 * Inference-Header-Content-Length bytes followed by raw tensor bytes, sized per input by
 * parameters.binary_data_size), the inference
 * response (JSON data or binary_data outputs), model metadata, server metadata, the
 * repository index, and error bodies {"error": "..."}.
 * Not for: HTTP transport, routing or authentication (gateway/http.c), nor calling
 * workers.
 *
 * Every function here is pure (no global state) and may be called from any thread. All
 * input is untrusted: sizes, counts, nesting and numbers are checked, and a failure
 * returns AICFN_E_INVALID / AICFN_E_UNSUPPORTED / AICFN_E_TOO_LARGE with a message that
 * names the tensor ("input 'x': ..."). */
#ifndef AICFN_GATEWAY_OIP_H
#define AICFN_GATEWAY_OIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/wire.h"

/* The HTTP header that carries the JSON part's length when binary tensor data follows. */
#define OIP_HEADER_LENGTH "Inference-Header-Content-Length"

/* An output the client asked for. */
typedef struct oip_output_req {
    char *name;  /* owned by the request */
    bool binary; /* parameters.binary_data (default: the request's binary_data_output) */
} oip_output_req;

/* A parsed inference request. Produced by oip_request_parse, freed by oip_request_free. */
typedef struct oip_request {
    char *id;            /* the request's "id", "" when absent; owned */
    wire_tensor *inputs; /* n_inputs tensors with unique names; names owned by the request;
                          * data owned by the request, except binary-extension data, which
                          * points into the body given to oip_request_parse (keep the body
                          * alive as long as the request) */
    uint32_t n_inputs;
    oip_output_req *outputs; /* requested outputs in order; NULL/0 = all outputs */
    uint32_t n_outputs;
    bool binary_output; /* parameters.binary_data_output */
    uint8_t *params;    /* the request's "parameters" object as one msgpack map (the wire
                         * `params`), owned; NULL when absent */
    size_t params_len;
    void *priv_; /* owned allocations (internal) */
} oip_request;

/* Parses an inference request body of `len` bytes. `json_len` is the value of the
 * Inference-Header-Content-Length header (the length of the JSON part, <= len), or
 * len when the header is absent; bytes after the JSON part are binary tensor data, and
 * must be consumed exactly by the inputs' binary_data_size parameters in input order.
 * Checks: a JSON object with at most AICFN_HTTP_MAX_JSON_VALUES values; 1..AICFN_MAX_TENSORS
 * inputs with unique names of 1..AICFN_MAX_NAME_BYTES bytes; datatype an OIP name; shape
 * <= AICFN_MAX_DIMS non-negative dims; data element count == product(shape) (data may be
 * flat or nested); each value representable in the datatype (integers in range: UINT64
 * values past 2^63-1 only as binary data, since jansson refuses larger JSON integers; BOOL
 * true/false, BYTES strings; FP16/BF16/FP32 rounded to nearest even, overflow refused);
 * binary data sized exactly product(shape) x element size (BYTES: well-formed 4-byte
 * length-prefixed elements); "parameters" what a worker hands a handler (at most
 * AICFN_MAX_PARAMS entries with names under AICFN_MAX_NAME_BYTES, each a string without
 * NUL, a number, a bool or null). Errors: AICFN_E_INVALID naming the problem,
 * AICFN_E_UNSUPPORTED (unknown datatype), AICFN_E_TOO_LARGE (values), AICFN_E_NOMEM.
 * On success fills *out (free with oip_request_free); on failure *out holds nothing to
 * free. */
int oip_request_parse(const uint8_t *body, size_t len, size_t json_len, oip_request *out, aicfn_error *err);

/* Frees everything a request owns. NULL and a zeroed request are accepted. */
void oip_request_free(oip_request *r);

/* Checks the request's inputs against declared input metadata (from the manifest):
 * every input is declared, its datatype matches, and its shape matches (same rank; a
 * declared dim of -1 matches any size); every declared input is present. n_specs == 0
 * means the function declares nothing, and everything is accepted. AICFN_E_INVALID
 * naming the tensor otherwise. */
typedef struct gw_tensor_spec gw_tensor_spec;
int oip_request_check(const oip_request *r, const gw_tensor_spec *specs, size_t n_specs, aicfn_error *err);

/* Checks the request's requested outputs against declared output metadata: each must be
 * declared (AICFN_E_INVALID naming it, the message the response encoder would give
 * after the call ran); n_specs == 0: nothing declared, anything may be asked. */
int oip_request_check_outputs(const oip_request *r, const gw_tensor_spec *specs, size_t n_specs,
                              aicfn_error *err);

/* An encoded response body: the JSON part, then binary output data when any output was
 * sent with binary_data. json_len == len when there is no binary part (Content-Type
 * application/json); otherwise the HTTP front sends Inference-Header-Content-Length:
 * json_len and Content-Type application/octet-stream. `body` is malloc'd, caller frees. */
typedef struct oip_body {
    uint8_t *body;
    size_t len;
    size_t json_len;
} oip_body;

/* An upper bound of the memory oip_response_encode takes for these outputs, peak and
 * body together: the bytes of each output sent as binary data, and OIP_JSON_VALUE_BYTES
 * per element of each sent as JSON (its jansson value while the document is built, then
 * its text; BYTES elements their text too), up to the output past which the JSON values
 * exceed AICFN_HTTP_MAX_JSON_VALUES (the encoder refuses there). What an HTTP front counts
 * against its memory budget before encoding. */
#define OIP_JSON_VALUE_BYTES 80
size_t oip_response_size_bound(const oip_request *req, const wire_tensor *outputs, uint32_t n_outputs);

/* Encodes an inference response for `model`/`version` with the request's id, selecting
 * and ordering outputs per req->outputs (a requested output the function did not
 * produce is AICFN_E_INVALID naming it). JSON data: integers, BOOL as true/false,
 * FP16/BF16/FP32/FP64 as numbers, BYTES as strings (a non-UTF-8 BYTES element or a
 * NaN/Inf float cannot be JSON, nor a UINT64 past 2^63-1, which jansson's int64 integers
 * cannot hold exactly: AICFN_E_UNSUPPORTED, asking for binary_data). `req` may
 * be NULL (all outputs as JSON). Outputs are checked with the same rules as inputs. */
int oip_response_encode(const char *model, uint32_t version, const oip_request *req,
                        const wire_tensor *outputs, uint32_t n_outputs, oip_body *out, aicfn_error *err);

/* {"error": msg, "code": code, "name": "AICFN_E_..."} as a malloc'd NUL-terminated
 * string (never NULL unless out of memory; invalid UTF-8 in msg is replaced). OIP v2
 * defines only "error"; code and name tell apart the aicfn errors that share an HTTP
 * status (AICFN_E_QUOTA and AICFN_E_OVERLOADED are both 429), as in docs/protocol.md §6. */
char *oip_error_json(int code, const char *msg);

/* Model metadata: {"name", "versions": [...], "platform": "aicfn", "inputs": [...],
 * "outputs": [...]} with each tensor as {"name", "datatype", "shape"} (-1 = variable).
 * `versions` lists the versions that exist (n_versions may be 0). Returns a malloc'd
 * string, or NULL when out of memory. */
char *oip_model_metadata_json(const char *name, const uint32_t *versions, size_t n_versions,
                              const gw_tensor_spec *inputs, size_t n_inputs, const gw_tensor_spec *outputs,
                              size_t n_outputs);

/* Server metadata: {"name": name, "version": version, "extensions": [...]} (malloc'd). */
char *oip_server_metadata_json(const char *name, const char *version, const char *const *extensions,
                               size_t n_extensions);

#endif
