"""End-to-end tests of the gateway's one metrics registry and its shared rate limits, with
real processes on loopback (`aicfn gateway --http`), SQLite for the ledger and promtool
for /metrics.

Covers: after a mixed workload over BOTH fronts (msgpack over NNG and OIP over HTTP),
including refused calls, cold starts and LRU evictions, `promtool check metrics` passes;
aicfn_calls_total per function and status equals the ledger's invocation rows;
aicfn_cold_starts_total per function equals the cold_starts rows, the load-phase
histograms count every cold start; aicfn_evictions_total equals the evicted entries of
the cold_starts rows and aicfn_thrash_reloads_total the reloads that followed an
eviction; aicfn_workers_live and aicfn_queue_depth are exposed; a killed worker counts
in aicfn_worker_restarts_total. Rate limits on the NNG
front: a tenant with --rate 2/s gets AICFN_E_QUOTA with retry_after_s on a burst, the
HTTP front then refuses it too (one limiter for the gateway), and after waiting the call
succeeds.

Every wait is bounded.
"""
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import (PROTOCOL_VERSION, ROOT, aicfn_bin, call, create_key, free_port, handler, invoke_msg, next_id, run_cli,
                      tensor, wait_for)

E_QUOTA = 15


def start(procs, data: Path, memory="64MiB", insecure=True, key=None, extra=()):
    port, hport = free_port(), free_port()
    addr = f"tcp://127.0.0.1:{port}"
    args = [aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..1", "--worker-memory",
            memory, "--device", "host", "--http", f"127.0.0.1:{hport}"]
    if insecure:
        args.append("--insecure-local")
    args += list(extra)
    g = procs.start(args, name="gateway")

    def ready():
        if g.poll() is not None:
            raise RuntimeError(f"gateway exited with {g.poll()}: {g.stderr()[-3000:]}")
        m = {"v": PROTOCOL_VERSION, "t": "status", "id": next_id()}
        if key:
            m["key"] = key
        if not call(addr, m, timeout_ms=500).get("ok"):
            return False
        with socket.create_connection(("127.0.0.1", hport), timeout=0.5):
            return True

    wait_for(ready, 15, interval=0.05, what="gateway")
    return addr, hport, g


def deploy(addr, path, key=None):
    args = ["deploy", str(path), "--gateway", addr, "--json"]
    if key:
        args += ["--key", key]
    r = run_cli(args, timeout=120)
    assert r.returncode == 0, r.stderr


def http_req(port, method, path, body=None, headers=None, timeout=30):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def db_rows(data: Path, sql: str, args=()):
    con = sqlite3.connect(str(data / "aicfn.db"), timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def metric_value(text: str, name: str, labels: dict) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        base = series.split("{", 1)[0]
        if base == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def mlp_json():
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.tolist()}]})


def write_model_fn(d: Path, name: str):
    """A function with a 3 MiB model (echo handler)."""
    d.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(1).standard_normal(786432).astype("<f4")
    b = a.tobytes()
    h = json.dumps({"w": {"dtype": "F32", "shape": [786432], "data_offsets": [0, len(b)]}}).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    import struct
    (d / "w.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b)
    (d / "aicfn.yaml").write_text(f"name: {name}\nhandler: {handler('echo')}\nmodel: w.safetensors\n")
    return d


def test_metrics_every_front_match_ledger(procs, tmp_path):
    data = tmp_path / "data"
    # 5 MiB: mlp (7 KiB) and one 3 MiB model fit; the other 3 MiB model evicts it.
    addr, hport, g = start(procs, data, memory="5MiB")
    deploy(addr, ROOT / "examples" / "mlp")
    for n in ("mta", "mtb"):
        deploy(addr, write_model_fn(tmp_path / n, n))
    x16 = tensor("x", np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))
    # NNG: mlp, then a/b alternating (each call after the first two reloads an evicted model).
    assert call(addr, invoke_msg("mlp", [x16]), timeout_ms=30000)["ok"]
    for fn in ("mta", "mtb", "mta", "mtb"):
        r = call(addr, invoke_msg(fn, [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
        assert r["ok"] and r["cold"], r
        time.sleep(0.1)  # the worker unpins just after it replies
    # NNG refusals: unknown function, wrong input for mlp.
    assert not call(addr, invoke_msg("nosuch", [x16]))["ok"]
    assert not call(addr, invoke_msg("mlp", [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)["ok"]
    # HTTP: mlp ok x3, a bad shape, an unknown model.
    for _ in range(3):
        assert http_req(hport, "POST", "/v2/models/mlp/infer", mlp_json())[0] == 200
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert http_req(hport, "POST", "/v2/models/mlp/infer", bad)[0] != 200
    assert http_req(hport, "POST", "/v2/models/nosuch/infer", mlp_json())[0] == 404

    # The HTTP front answers an unknown model's 404 from its metadata lookup, before any
    # call: no ledger row, and not a call in the metrics either.
    n_calls = 1 + 4 + 2 + 4

    def ledger():
        rows = db_rows(data, "SELECT function, status, count(*) FROM invocations GROUP BY function, status")
        return rows if sum(r[2] for r in rows) >= n_calls else None

    calls = wait_for(ledger, 10, interval=0.05, what="ledger rows")
    cold = wait_for(lambda: (lambda r: r if len(r) >= 5 else None)(
        db_rows(data, "SELECT function, version, evicted FROM cold_starts ORDER BY id")), 10, interval=0.05,
        what="cold_starts rows")
    st, h, text = http_req(hport, "GET", "/metrics")
    assert st == 200 and "version=0.0.4" in h.get("Content-Type", "")
    text = text.decode()
    assert shutil.which("promtool"), "promtool not found (Debian's prometheus package; scripts/bootstrap.sh)"
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr

    # Calls: every ledger row once, whichever front it came by (and nothing else). A call
    # to a function the gateway does not know is labelled function="" (the ledger keeps
    # the name it asked for): made-up names must not add series.
    assert sum(r[2] for r in calls) == n_calls, calls
    deployed = {"mlp", "mta", "mtb"}
    labelled = Counter()
    for fn, status, n in calls:
        labelled[(fn if fn in deployed else "", status)] += n
    assert ("", "AICFN_E_NOT_FOUND") in labelled, calls  # the call to "nosuch"
    for (fn, status), n in labelled.items():
        assert metric_value(text, "aicfn_calls_total", {"function": fn, "status": status}) == n, (fn, status, n)
    assert 'function="nosuch"' not in text
    assert metric_value(text, "aicfn_calls_total", {}) == n_calls
    assert metric_value(text, "aicfn_call_duration_seconds_count", {"function": "mlp"}) == sum(
        n for fn, _, n in calls if fn == "mlp")

    # Cold starts, per function, and the phase histograms count each of them.
    per_fn = Counter(r[0] for r in cold)
    assert per_fn["mta"] == 2 and per_fn["mtb"] == 2 and per_fn["mlp"] >= 1, per_fn
    for fn, n in per_fn.items():
        assert metric_value(text, "aicfn_cold_starts_total", {"function": fn}) == n, (fn, n)
    for phase in ("read", "decompress", "filter", "copy", "total"):
        assert metric_value(text, "aicfn_load_duration_seconds_count", {"phase": phase}) == len(cold), phase

    # Evictions: the cold_starts rows' evicted lists; thrash: reloads of an evicted model.
    evicted_total, thrash, evicted = 0, Counter(), set()
    for fn, ver, ev in cold:
        if f"{fn}:{ver}" in evicted:
            thrash[fn] += 1
            evicted.discard(f"{fn}:{ver}")
        for e in json.loads(ev):
            evicted.add(e)
            evicted_total += 1
    assert evicted_total >= 3
    assert metric_value(text, "aicfn_evictions_total", {}) == evicted_total
    assert thrash["mta"] >= 1 and thrash["mtb"] >= 1
    for fn in per_fn:
        assert metric_value(text, "aicfn_thrash_reloads_total", {"function": fn}) == thrash[fn], fn

    # Gauges from the gateway's state.
    assert metric_value(text, "aicfn_workers_live", {}) == 1
    assert 'aicfn_queue_depth{function="mlp"} 0' in text
    assert metric_value(text, "aicfn_worker_restarts_total", {}) == 0
    assert metric_value(text, "aicfn_ledger_records_dropped_total", {}) == 0  # every call has its row
    assert metric_value(text, "aicfn_nng_stuck_closes_total", {}) == 0  # no NNG close hung (bounded_close.h)

    # A local worker killed while serving counts as a restart; the next call gets a new one.
    r = run_cli(["workers", "--gateway", addr, "--json"], timeout=10)
    pid, old_name = json.loads(r.stdout)[0]["pid"], json.loads(r.stdout)[0]["name"]
    assert f'aicfn_evictions_total{{worker="{old_name}"}}' in text
    os.kill(pid, signal.SIGKILL)

    def restarted():
        t = http_req(hport, "GET", "/metrics")[2].decode()
        return t if metric_value(t, "aicfn_worker_restarts_total", {}) == 1 else None

    text = wait_for(restarted, 10, interval=0.05, what="the restart counted")
    # Another input: the same one would be answered by the response cache (examples/mlp
    # has cache.responses) without any worker.
    x16b = tensor("x", np.linspace(-2, 2, 16, dtype=np.float32).reshape(1, 16))
    assert call(addr, invoke_msg("mlp", [x16b]), timeout_ms=30000)["ok"]
    assert metric_value(http_req(hport, "GET", "/metrics")[2].decode(), "aicfn_workers_live", {}) == 1
    # The dead worker's series went with it (local names never repeat: kept, they would
    # grow with every worker a scale from zero starts).
    wait_for(lambda: f'worker="{old_name}"' not in http_req(hport, "GET", "/metrics")[2].decode(), 10,
             interval=0.05, what=f"{old_name}'s series removed")


def test_nng_rate_limit_shared_with_http(procs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()

    admin, user = create_key(data, "ops", "--admin"), create_key(data, "acme", "--rate", "2/s")
    addr, hport, g = start(procs, data, insecure=False, key=admin)
    deploy(addr, ROOT / "examples" / "mlp", key=admin)
    x16 = tensor("x", np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))

    def inv():
        m = invoke_msg("mlp", [x16])
        m["key"] = user
        return call(addr, m, timeout_ms=30000)

    assert inv()["ok"]  # the cold start
    refused = None
    for _ in range(10):
        r = inv()
        if not r["ok"]:
            refused = r
            break
    assert refused is not None, "a burst over 2/s was never refused"
    assert refused["error"]["code"] == E_QUOTA and refused["error"]["name"] == "AICFN_E_QUOTA", refused
    assert "acme" in refused["error"]["message"]
    retry = refused["retry_after_s"]
    assert isinstance(retry, int) and 1 <= retry <= 2
    # The same tenant is refused on the HTTP front too: one limiter for the gateway.
    st, h, _ = http_req(hport, "POST", "/v2/models/mlp/infer", mlp_json(), {"Authorization": f"Bearer {user}"})
    assert st == 429 and "Retry-After" in h
    # The admin (no limit) is not affected.
    m = invoke_msg("mlp", [x16])
    m["key"] = admin
    assert call(addr, m, timeout_ms=30000)["ok"]
    time.sleep(retry)
    assert inv()["ok"]
    # Refused calls are ledger rows with AICFN_E_QUOTA.
    rows = wait_for(lambda: (lambda r: r if r and r[0][0] >= 2 else None)(
        db_rows(data, "SELECT count(*) FROM invocations WHERE tenant = 'acme' AND status = 'AICFN_E_QUOTA'")),
        10, interval=0.05, what="quota rows")
    assert rows[0][0] >= 2
    # /metrics needs an admin key here (its series name every tenant's functions)...
    st, _, body = http_req(hport, "GET", "/metrics")
    assert st == 401, (st, body)
    st, _, body = http_req(hport, "GET", "/metrics", headers={"Authorization": f"Bearer {user}"})
    assert st == 403 and b"needs an admin key" in body, (st, body)
    # ... and counts the refused calls, but only calls that ran are in the latency
    # histogram (a refusal is not a 0 s call).
    text = http_req(hport, "GET", "/metrics", headers={"Authorization": f"Bearer {admin}"})[2].decode()
    observed = metric_value(text, "aicfn_call_duration_seconds_count", {"function": "mlp"})
    assert metric_value(text, "aicfn_calls_total", {"function": "mlp", "version": "1", "status": "AICFN_E_QUOTA"}) >= 2
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations WHERE function = 'mlp' AND "
                                   "status = 'AICFN_OK'")[0][0] == observed, 10, interval=0.05,
             what=f"{observed} calls that ran, as many as the histogram observed")


def test_metrics_public_serves_without_a_key(procs, tmp_path):
    """`aicfn gateway --metrics-public` (a scraper on a private network) serves /metrics
    without a key while keys are checked; everything else still needs one."""
    data = tmp_path / "data"
    data.mkdir()
    admin = create_key(data, "ops", "--admin")
    addr, hport, g = start(procs, data, insecure=False, key=admin, extra=("--metrics-public",))
    st, _, body = http_req(hport, "GET", "/metrics")
    assert st == 200 and b"# TYPE aicfn_calls_total counter" in body, (st, body[:200])
    st, _, body = http_req(hport, "GET", "/v2/models/mlp")
    assert st == 401, (st, body)


def test_rm_forgets_the_removed_versions_series(procs, tmp_path):
    """`aicfn rm NAME:VER` drops that version's aicfn_calls_total series, `aicfn rm NAME`
    every series labelled with the function (as Triton drops an unloaded model's): the
    registry's cardinality follows what exists, not every version ever deployed."""
    data = tmp_path / "data"
    addr, hport, g = start(procs, data)
    deploy(addr, ROOT / "examples" / "echo")
    deploy(addr, ROOT / "examples" / "echo")
    x = tensor("x", np.arange(3, dtype=np.float32))
    for ref in ("echo:1", "echo:2"):
        m = invoke_msg("echo", [x])
        m["ver"] = int(ref.split(":")[1])
        assert call(addr, m, timeout_ms=30000)["ok"]

    def scrape():
        return http_req(hport, "GET", "/metrics")[2].decode()

    text = scrape()
    for v in ("1", "2"):
        assert metric_value(text, "aicfn_calls_total", {"function": "echo", "version": v}) == 1, text
    assert run_cli(["rm", "echo:1", "--gateway", addr], timeout=30).returncode == 0
    text = scrape()
    assert 'function="echo",version="1"' not in text
    assert metric_value(text, "aicfn_calls_total", {"function": "echo", "version": "2"}) == 1
    assert metric_value(text, "aicfn_call_duration_seconds_count", {"function": "echo"}) == 2
    assert run_cli(["rm", "echo", "--gateway", addr], timeout=30).returncode == 0
    text = scrape()
    assert 'function="echo"' not in text, [ln for ln in text.splitlines() if 'function="echo"' in ln]


def workers_json(addr):
    r = run_cli(["workers", "--gateway", addr, "--json"], timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def resident(addr, fn):
    return [w["name"] for w in workers_json(addr) for m in w["models"] if m["function"] == fn and m["state"] == "READY"]


def test_repository_load_unload(procs, tmp_path):
    import tritonclient.http as tritonhttp  # tests/requirements.txt
    from tritonclient.utils import InferenceServerException
    data = tmp_path / "data"
    addr, hport, g = start(procs, data, memory="16MiB")
    deploy(addr, ROOT / "examples" / "mlp")
    deploy(addr, write_model_fn(tmp_path / "big", "big"))
    c = tritonhttp.InferenceServerClient(url=f"127.0.0.1:{hport}", network_timeout=60.0)
    try:
        assert workers_json(addr) == []  # scale from zero: nothing runs yet
        # load: starts a worker and makes the model resident, with no call (no ledger row).
        c.load_model("big")
        assert len(resident(addr, "big")) == 1
        c.load_model("mlp")
        assert resident(addr, "mlp") == resident(addr, "big")  # routed to the worker with room
        c.load_model("big")  # already resident: a no-op
        # The first call after a load is warm.
        r = call(addr, invoke_msg("big", [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
        assert r["ok"] and r["cold"] is False, r
        time.sleep(0.1)  # the worker unpins just after it replies
        # unload: evicted from every worker that has it; the other model stays.
        c.unload_model("big")
        assert resident(addr, "big") == []
        assert len(resident(addr, "mlp")) == 1
        r = call(addr, invoke_msg("big", [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
        assert r["ok"] and r["cold"] is True, r
        # A model pinned by a call in flight is not unloaded: a clear error, and it stays.
        slow = tmp_path / "slow"
        write_model_fn(slow, "slow")
        (slow / "aicfn.yaml").write_text(f"name: slow\nhandler: {handler('test_sleep')}\nmodel: w.safetensors\n"
                                         "limits: { timeout: 20s }\n")
        deploy(addr, slow)
        c.load_model("slow")
        box = {}
        t = threading.Thread(target=lambda: box.update(r=call(addr, invoke_msg(
            "slow", [tensor("x", np.arange(3, dtype=np.float32))], params={"sleep_ms": "1500"}), timeout_ms=30000)))
        t.start()
        try:
            wait_for(lambda: any(m["function"] == "slow" and m["pinned"] for w in workers_json(addr)
                                 for m in w["models"]) or None, 5, interval=0.05, what="slow pinned")
            with pytest.raises(InferenceServerException) as ei:
                c.unload_model("slow")
            assert "pinned" in str(ei.value), str(ei.value)
        finally:
            t.join(30)
        assert box["r"]["ok"], box
        assert len(resident(addr, "slow")) == 1
        # Unknown model: a clear error.
        with pytest.raises(InferenceServerException) as ei:
            c.load_model("nosuch")
        assert "not found" in str(ei.value).lower()
        # A function without a model cannot be loaded.
        (tmp_path / "nomodel").mkdir()
        (tmp_path / "nomodel" / "aicfn.yaml").write_text(f"name: nomodel\nhandler: {handler('echo')}\n")
        deploy(addr, tmp_path / "nomodel")
        with pytest.raises(InferenceServerException) as ei:
            c.load_model("nomodel")
        assert "no model" in str(ei.value)
    finally:
        c.close()
    # Loads are not invocations: the ledger has only the two calls above.
    time.sleep(0.3)
    rows = db_rows(data, "SELECT function FROM invocations ORDER BY id")
    assert rows == [("big",), ("big",), ("slow",)], rows
