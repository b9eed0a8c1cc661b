/* mhd.h: libmicrohttpd, loaded when the HTTP front starts rather than linked.
 *
 * Only `aicfn gateway --http` serves HTTP, and libmicrohttpd brings GnuTLS and eight
 * more libraries with it: linked into the one `aicfn` binary they cost every process
 * about 1.4 ms at start (mapping, relocations, GnuTLS's constructor), a local worker's
 * cold start included. The front loads the library (the soname of the Debian package
 * it is built against) the first time it starts, and calls it through this table.
 *
 * Not for: HTTP itself (gateway/http.c). */
#ifndef AICFN_GATEWAY_MHD_H
#define AICFN_GATEWAY_MHD_H

#include <microhttpd.h>

#include "common/error.h"

/* The functions the front uses, with the library's own prototypes. */
typedef struct gw_mhd_api {
    __typeof__(&MHD_start_daemon) start_daemon;
    __typeof__(&MHD_stop_daemon) stop_daemon;
    __typeof__(&MHD_quiesce_daemon) quiesce_daemon;
    __typeof__(&MHD_get_daemon_info) get_daemon_info;
    __typeof__(&MHD_get_connection_info) get_connection_info;
    __typeof__(&MHD_lookup_connection_value) lookup_connection_value;
    __typeof__(&MHD_suspend_connection) suspend_connection;
    __typeof__(&MHD_resume_connection) resume_connection;
    __typeof__(&MHD_create_response_from_buffer) create_response_from_buffer;
    __typeof__(&MHD_create_response_from_buffer_with_free_callback) create_response_from_buffer_with_free_callback;
    __typeof__(&MHD_add_response_header) add_response_header;
    __typeof__(&MHD_queue_response) queue_response;
    __typeof__(&MHD_destroy_response) destroy_response;
} gw_mhd_api;

/* The library's soname: the ABI this code is built against. */
#define GW_MHD_SONAME "libmicrohttpd.so.12"

/* Loads the library once (thread-safe; kept loaded for the process's life) and returns
 * the table, or NULL with AICFN_E_UNSUPPORTED naming the library and dlerror's reason
 * (not installed, or a symbol missing). */
const gw_mhd_api *gw_mhd_load(aicfn_error *err);

/* The table, once gw_mhd_load succeeded (any thread; never NULL then). */
const gw_mhd_api *gw_mhd(void);

#endif
