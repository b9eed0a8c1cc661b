/* mhd.c: libmicrohttpd loaded with dlopen on first use (see mhd.h). */
#include "gateway/mhd.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;
static gw_mhd_api mhd_api;
static const gw_mhd_api *mhd_loaded; /* &mhd_api once every symbol resolved */
static char mhd_error[256];

typedef struct mhd_symbol {
    const char *name;
    size_t off;
} mhd_symbol;

#define MHD_SYM(field, symbol) {#symbol, offsetof(gw_mhd_api, field)}
static const mhd_symbol mhd_symbols[] = {
    MHD_SYM(start_daemon, MHD_start_daemon),
    MHD_SYM(stop_daemon, MHD_stop_daemon),
    MHD_SYM(quiesce_daemon, MHD_quiesce_daemon),
    MHD_SYM(get_daemon_info, MHD_get_daemon_info),
    MHD_SYM(get_connection_info, MHD_get_connection_info),
    MHD_SYM(lookup_connection_value, MHD_lookup_connection_value),
    MHD_SYM(suspend_connection, MHD_suspend_connection),
    MHD_SYM(resume_connection, MHD_resume_connection),
    MHD_SYM(create_response_from_buffer, MHD_create_response_from_buffer),
    MHD_SYM(create_response_from_buffer_with_free_callback, MHD_create_response_from_buffer_with_free_callback),
    MHD_SYM(add_response_header, MHD_add_response_header),
    MHD_SYM(queue_response, MHD_queue_response),
    MHD_SYM(destroy_response, MHD_destroy_response),
};

_Static_assert(sizeof(void *) == sizeof mhd_api.start_daemon, "function pointers are as wide as void *");

static void mhd_load_once(void) {
    void *h = dlopen(GW_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *why = dlerror();
        snprintf(mhd_error, sizeof mhd_error, "%s", why ? why : "dlopen failed");
        return;
    }
    for (size_t i = 0; i < sizeof mhd_symbols / sizeof mhd_symbols[0]; i++) {
        void *f = dlsym(h, mhd_symbols[i].name);
        if (f == NULL) {
            snprintf(mhd_error, sizeof mhd_error, "symbol %s missing", mhd_symbols[i].name);
            dlclose(h);
            return;
        }
        /* POSIX guarantees a function's address round-trips through dlsym's void *. */
        memcpy((char *)&mhd_api + mhd_symbols[i].off, &f, sizeof f);
    }
    mhd_loaded = &mhd_api;
}

const gw_mhd_api *gw_mhd_load(aicfn_error *err) {
    pthread_once(&mhd_once, mhd_load_once);
    if (mhd_loaded == NULL)
        aicfn_error_set(err, AICFN_E_UNSUPPORTED,
                        "the HTTP front needs %s (Debian package libmicrohttpd12): %s", GW_MHD_SONAME,
                        mhd_error);
    return mhd_loaded;
}

const gw_mhd_api *gw_mhd(void) {
    pthread_once(&mhd_once, mhd_load_once); /* the load's writes are seen (a no-op after it) */
    return mhd_loaded;
}
