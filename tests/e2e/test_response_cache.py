"""End to end: the gateway's response cache (gateway/respcache.h) with a real gateway
and worker on loopback.

Covers: a function deployed with `cache: {responses: true, ttl}` answers an identical
request from the gateway (cached: true, same outputs, none of the worker's keys) without
running the handler (its count file proves it); another input or other params run it; a
function without the cache always runs; after the ttl the handler runs again; every call
has its ledger row, the cached ones with cached = 1 and no worker.
"""
import time

import numpy as np

from conftest import call, handler, invoke_msg, output, tensor, wait_for
from test_gateway import db_rows, deploy, start_gateway, write_manifest


def counted(path):
    return len(path.read_text().split()) if path.exists() else 0


def test_identical_requests_are_served_from_the_cache(procs, tmp_path):
    so = handler("test_sleep")
    write_manifest(tmp_path / "cachedfn",
                   f"name: cachedfn\nhandler: {so}\ncache: {{ responses: true, ttl: 2s }}\n")
    write_manifest(tmp_path / "plainfn", f"name: plainfn\nhandler: {so}\n")
    addr, data, _ = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, tmp_path / "cachedfn")
    deploy(addr, tmp_path / "plainfn")
    counts = tmp_path / "count.txt"
    params = {"count_file": str(counts)}

    def run(fn, x, rid, p=params):
        m = invoke_msg(fn, [tensor("x", np.array(x, dtype=np.float32))], params=p, rid=rid)
        r = call(addr, m, timeout_ms=20000)
        assert r["ok"], r
        assert r["id"] == rid
        return r

    first = run("cachedfn", [1, 2, 3], 1001)
    assert not first.get("cached") and counted(counts) == 1
    again = run("cachedfn", [1, 2, 3], 1002)
    assert again["cached"] is True and again["cold"] is False
    assert counted(counts) == 1  # the handler did not run
    np.testing.assert_array_equal(output(again, "x"), np.array([1, 2, 3], dtype=np.float32))
    assert "st" not in again and "cs" not in again and "batch" not in again
    assert set(again["timing"]) == {"total"}

    # Another input, or other params: a different request, so it runs.
    other = run("cachedfn", [1, 2, 4], 1003)
    assert not other.get("cached") and counted(counts) == 2
    np.testing.assert_array_equal(output(other, "x"), np.array([1, 2, 4], dtype=np.float32))
    run("cachedfn", [1, 2, 3], 1004, p={**params, "sleep_ms": "1"})
    assert counted(counts) == 3

    # No cache configured: every call runs.
    run("plainfn", [1, 2, 3], 1005)
    plain = run("plainfn", [1, 2, 3], 1006)
    assert not plain.get("cached") and counted(counts) == 5

    # After the ttl (2 s) the entry is gone: the handler runs again, and refills it.
    time.sleep(2.2)
    late = run("cachedfn", [1, 2, 3], 1007)
    assert not late.get("cached") and counted(counts) == 6
    assert run("cachedfn", [1, 2, 3], 1008)["cached"] is True
    assert counted(counts) == 6

    # One ledger row per call; the two cache hits say so and name no worker.
    rows = wait_for(lambda: (lambda r: r if len(r) >= 8 else None)(db_rows(
        data, "SELECT request_id, cached, worker, status, exec_us FROM invocations ORDER BY request_id")),
        10, interval=0.05, what="8 ledger rows")
    by_id = {r[0]: r[1:] for r in rows}
    assert len(by_id) == 8
    for rid in ("1002", "1008"):
        cached, worker, status, exec_us = by_id[rid]
        assert (cached, worker, status, exec_us) == (1, None, "AICFN_OK", 0)
    for rid in ("1001", "1003", "1004", "1005", "1006", "1007"):
        cached, worker, status, _ = by_id[rid]
        assert cached == 0 and worker is not None and status == "AICFN_OK"
