/* no_invoke.c: a handler that declares its ABI but lacks the required aicfn_fn_invoke:
 * the worker refuses it, naming the missing symbol. */
#include "aicfn.h"

AICFN_FN_DECLARE_ABI()

AICFN_EXPORT int aicfn_fn_init(const aicfn_host_api *api, const aicfn_model *model,
                               const aicfn_fn_config *config, void **state) {
    (void)api, (void)model, (void)config;
    *state = 0;
    return AICFN_OK;
}
