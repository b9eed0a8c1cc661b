/* fail.c: a handler that fails on purpose, to test that handler errors become error
 * replies and the worker keeps serving.
 * Request params:
 *   mode=request (default)  each request gets set_error(code, "fail handler: ...")
 *   mode=batch              invoke returns `code` for the whole batch
 *   mode=ok                 succeeds with an output "ok" (INT32 [1] = 1)
 *   mode=grow|grow_bytes|swap_data|swap_name|null_name|device|reshape
 *                           allocates "out" (FP32 [4, 2]) and then rewrites it: a larger
 *                           shape and nbytes, BYTES [2] with nbytes 1 MiB whose first
 *                           element fills the 32 bytes (its second length prefix lies past
 *                           them), its own data or name pointer, a NULL name before
 *                           allocating a second output, device memory, or (reshape, legal)
 *                           shape [8] within the same bytes
 *   code=N                  the aicfn_status to fail with (default AICFN_E_HANDLER)
 * Config param `init_fail=1` makes init fail with AICFN_E_INVALID. */
#include <stdlib.h>
#include <string.h>

#include "aicfn.h"

AICFN_FN_DECLARE_ABI()

AICFN_EXPORT int aicfn_fn_init(const aicfn_host_api *api, const aicfn_model *model,
                               const aicfn_fn_config *config, void **state) {
    (void)model;
    const char *f = api->find_param(config->params, config->n_params, "init_fail");
    *state = NULL;
    if (f && strcmp(f, "1") == 0) return AICFN_E_INVALID;
    return AICFN_OK;
}

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)state, (void)model;
    int batch_code = AICFN_OK;
    for (uint32_t i = 0; i < n; i++) {
        const char *mode = api->find_param(reqs[i].params, reqs[i].n_params, "mode");
        const char *c = api->find_param(reqs[i].params, reqs[i].n_params, "code");
        int code = c ? atoi(c) : AICFN_E_HANDLER;
        if (mode && strcmp(mode, "ok") == 0) {
            int64_t shape[1] = {1};
            aicfn_tensor *t = api->alloc_output(resps[i], "ok", AICFN_DTYPE_INT32, 1, shape, 0);
            if (t) *(int32_t *)t->data = 1;
        } else if (mode && (strcmp(mode, "grow") == 0 || strcmp(mode, "grow_bytes") == 0 ||
                            strcmp(mode, "swap_data") == 0 || strcmp(mode, "swap_name") == 0 ||
                            strcmp(mode, "null_name") == 0 || strcmp(mode, "device") == 0 ||
                            strcmp(mode, "reshape") == 0)) {
            static float mine[8];
            int64_t shape[2] = {4, 2};
            aicfn_tensor *t = api->alloc_output(resps[i], "out", AICFN_DTYPE_FP32, 2, shape, 0);
            if (!t) continue;
            if (strcmp(mode, "grow") == 0) {
                t->shape[0] = 1 << 20;
                t->nbytes = (uint64_t)(1 << 20) * 2 * sizeof(float);
            } else if (strcmp(mode, "grow_bytes") == 0) {
                unsigned char *d = t->data;
                d[0] = 28, d[1] = d[2] = d[3] = 0;
                t->dtype = AICFN_DTYPE_BYTES;
                t->ndim = 1;
                t->shape[0] = 2;
                t->nbytes = 1u << 20;
            } else if (strcmp(mode, "swap_data") == 0) {
                t->data = mine;
            } else if (strcmp(mode, "swap_name") == 0) {
                t->name = "out";
            } else if (strcmp(mode, "null_name") == 0) {
                t->name = NULL;
                (void)api->alloc_output(resps[i], "out2", AICFN_DTYPE_FP32, 2, shape, 0);
            } else if (strcmp(mode, "device") == 0) {
                t->mem = AICFN_MEM_DEVICE;
                t->device_id = 0;
            } else {
                t->ndim = 1;
                t->shape[0] = 8;
            }
        } else if (mode && strcmp(mode, "batch") == 0) {
            batch_code = code;
        } else {
            api->set_error(resps[i], code, "fail handler: failing request %u on purpose (code %d)", i, code);
        }
    }
    return batch_code;
}
