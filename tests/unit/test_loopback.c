/* test_loopback.c: gw_addr_is_loopback, the check that keeps an --insecure-local
 * gateway (no API keys) off addresses other hosts can reach. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gateway/loopback.h"

static void loopback_addresses(void **state) {
    (void)state;
    assert_true(gw_addr_is_loopback("tcp://127.0.0.1:7070"));
    assert_true(gw_addr_is_loopback("tcp://127.8.9.10:0"));
    assert_true(gw_addr_is_loopback("tcp://localhost:7070"));
    assert_true(gw_addr_is_loopback("tcp://[::1]:7070"));
    assert_true(gw_addr_is_loopback("tcp6://[::1]:7070"));
    assert_true(gw_addr_is_loopback("ipc:///tmp/aicfn.sock"));
    assert_true(gw_addr_is_loopback("inproc://x"));
    assert_true(gw_addr_is_loopback("127.0.0.1:8080")); /* the HTTP front's HOST:PORT */
    assert_true(gw_addr_is_loopback("localhost:8080"));
}

static void other_addresses(void **state) {
    (void)state;
    assert_false(gw_addr_is_loopback("tcp://0.0.0.0:7070")); /* every interface */
    assert_false(gw_addr_is_loopback("tcp://*:7070"));
    assert_false(gw_addr_is_loopback("tcp://:7070"));
    assert_false(gw_addr_is_loopback("tcp://[::]:7070"));
    assert_false(gw_addr_is_loopback("tcp://10.1.2.3:7070"));
    assert_false(gw_addr_is_loopback("tcp://[::ffff:10.1.2.3]:7070"));
    assert_false(gw_addr_is_loopback("0.0.0.0:8080"));
    assert_false(gw_addr_is_loopback(":8080"));
    assert_false(gw_addr_is_loopback("ws://127.0.0.1:7070")); /* not a scheme the gateway serves */
    assert_false(gw_addr_is_loopback("tcp://[::1:7070"));
    assert_false(gw_addr_is_loopback("tcp://no-such-host.invalid:7070"));
    assert_false(gw_addr_is_loopback(NULL));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(loopback_addresses),
        cmocka_unit_test(other_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
