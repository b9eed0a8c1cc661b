/* abi_newer_minor.c: a handler built for a newer MINOR of the function ABI than the
 * worker knows (it might call helpers the worker lacks): the worker refuses it. */
#include "aicfn.h"

AICFN_FN_DECLARE_ABI_VERSION(AICFN_ABI_MAJOR, AICFN_ABI_MINOR + 1)

AICFN_EXPORT int aicfn_fn_invoke(const aicfn_host_api *api, void *state, const aicfn_model *model,
                                 const aicfn_request *reqs, aicfn_response *const *resps, uint32_t n) {
    (void)api, (void)state, (void)model, (void)reqs, (void)resps, (void)n;
    return AICFN_OK;
}
