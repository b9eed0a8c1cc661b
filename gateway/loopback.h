/* loopback.h: whether a listen address is reachable from this host only, for
 * --insecure-local, which serves every caller as an administrator without an API key:
 * such a gateway must not listen where another host can reach it.
 * Not for: parsing addresses to listen on (NNG and libmicrohttpd do that). */
#ifndef AICFN_GATEWAY_LOOPBACK_H
#define AICFN_GATEWAY_LOOPBACK_H

#include <stdbool.h>

/* true for an ipc:// or inproc:// URL, and for a tcp:// (tcp4, tcp6) URL or a bare
 * HOST:PORT whose host resolves only to loopback addresses (127.0.0.0/8, ::1, or ::1's
 * IPv4-mapped form); false for a wildcard or empty host, any other address, a host that
 * does not resolve, or another scheme. */
bool gw_addr_is_loopback(const char *addr);

#endif
