/* loopback.c: gw_addr_is_loopback (loopback.h): the host part of a listen address,
 * resolved with getaddrinfo, and every address it gives checked for loopback. */
#include "gateway/loopback.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

static bool lb_is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

bool gw_addr_is_loopback(const char *addr) {
    if (addr == NULL) return false;
    if (strncmp(addr, "ipc://", 6) == 0 || strncmp(addr, "inproc://", 9) == 0) return true;
    static const char *const tcp[] = {"tcp://", "tcp4://", "tcp6://"};
    for (size_t i = 0; i < sizeof tcp / sizeof tcp[0]; i++)
        if (strncmp(addr, tcp[i], strlen(tcp[i])) == 0) {
            addr += strlen(tcp[i]);
            break;
        }
    if (strstr(addr, "://")) return false; /* another scheme */
    char host[256];
    const char *end;
    if (addr[0] == '[') { /* [v6]:port */
        end = strchr(addr, ']');
        if (end == NULL) return false;
        addr++;
    } else {
        end = strrchr(addr, ':');
        if (end == NULL) end = addr + strlen(addr);
    }
    size_t n = (size_t)(end - addr);
    if (n == 0 || n >= sizeof host) return false;
    memcpy(host, addr, n);
    host[n] = '\0';
    if (strcmp(host, "*") == 0) return false;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || ai == NULL) return false;
    bool all = true;
    for (const struct addrinfo *p = ai; p && all; p = p->ai_next)
        all = lb_is_loopback(p->ai_addr);
    freeaddrinfo(ai);
    return all;
}
