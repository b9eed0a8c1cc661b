/* fuzz_oip.c: libFuzzer harness for the Open Inference Protocol v2 request parser
 * (gateway/oip.c). The first 2 input bytes choose how much of the rest is the JSON
 * header (the Inference-Header-Content-Length value); the rest follows as binary tensor
 * data. A parsed request is checked against a fixed input spec and encoded back as a
 * response with its own inputs as outputs, so the encoder sees parser output too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/oip.h"
#include "gateway/registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t split = (size_t)data[0] | ((size_t)data[1] << 8);
    data += 2;
    size -= 2;
    size_t json_len = split == 0 || split > size ? size : split;
    oip_request r;
    aicfn_error err;
    if (oip_request_parse(data, size, json_len, &r, &err) != AICFN_OK) return 0;
    static const gw_tensor_spec spec[1] = {{.name = "x", .dtype = AICFN_DTYPE_FP32, .ndim = 2, .shape = {-1, 4}}};
    (void)oip_request_check(&r, spec, 1, &err);
    oip_body b;
    if (oip_response_encode("m", 1, &r, r.inputs, r.n_inputs, &b, &err) == AICFN_OK) free(b.body);
    oip_request_free(&r);
    return 0;
}
