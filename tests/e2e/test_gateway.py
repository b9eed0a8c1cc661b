"""End-to-end tests of `aicfn gateway` with its local worker pool: real processes on
loopback, the CLI (deploy, ls, workers, coldstarts) and the raw protocol (pynng+msgpack).

Covers: deploy + invoke (cold then warm; a second deploy becomes active while NAME:1 stays
invokable), LRU eviction with three models and a budget for two (cold flags and the
cold_starts rows' evicted lists), single flight (20 simultaneous first calls -> one cold
start), scale to zero (idle worker exits; the next call spawns one, spawn_us > 0), kill -9
of a worker with calls in flight (idempotent calls retried and succeed, others get
AICFN_E_WORKER_LOST, nothing runs twice, one ledger row per call), kill -9 of the gateway
after an acknowledged deploy (still there after restart, integrity_check ok, the dead
gateway's worker row marked lost), the workers table mirroring the pool (ready with its
pid, exited after scale to zero or a clean stop, lost after kill -9, one row refresh per
status poll and not per call, `aicfn workers --history`), and hostile
clients (handshake drops, a 2^40-byte length header, malformed msgpack) while others work.
Every wait is bounded.
"""
import hashlib
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pynng
import pytest

from conftest import (E_OVERLOADED, E_PROTOCOL, E_TIMEOUT, E_TOO_LARGE, OK, PROTOCOL_VERSION, ROOT, aicfn_bin, bytes_tensor, call, create_key, call_raw, free_port, handler,
                      gw_msg, invoke_msg, next_id, output, run_cli, tensor, wait_for)

E_WORKER_LOST = 12


# ---- helpers ----

def start_gateway(procs, tmp_path: Path, workers="0..2", memory="64MiB", idle="5m", name="gateway", data=None,
                  port=None, env=None, extra=()):
    port = port or free_port()
    addr = f"tcp://127.0.0.1:{port}"
    data = data or (tmp_path / "data")
    args = ["aicfn-placeholder", "gateway", "--listen", addr, "--data", data, "--workers", workers,
            "--worker-memory", memory, "--device", "host", "--idle-timeout", idle, "--insecure-local",
            *extra]
    from conftest import aicfn_bin
    args[0] = aicfn_bin()
    g = procs.start(args, name=name, env=env)

    def ready():
        if g.poll() is not None:
            raise RuntimeError(f"gateway exited with {g.poll()}: {g.stderr()[-3000:]}")
        return call(addr, {"v": PROTOCOL_VERSION, "t": "status", "id": next_id()}, timeout_ms=500).get("ok")

    wait_for(ready, 15, interval=0.05, what=f"gateway on {addr}")
    return addr, data, g


def deploy(addr, path) -> int:
    r = run_cli(["deploy", str(path), "--gateway", addr, "--json"], timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["version"]


def workers(addr):
    r = run_cli(["workers", "--gateway", addr, "--json"], timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def db_rows(data: Path, sql: str, args=()):
    con = sqlite3.connect(str(data / "aicfn.db"), timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def wait_rows(data, sql, args, n, timeout=10):
    return wait_for(lambda: (lambda r: r if len(r) >= n else None)(db_rows(data, sql, args)), timeout,
                    interval=0.05, what=f"{n} rows of {sql}")


def cold_start_count(addr, data: Path, fn: str) -> int:
    """fn's cold_starts rows with every record submitted so far committed: the gateway
    submits a call's records before it replies to the call, and commits its ledger before
    it answers `coldstarts` (gateway/front_nng.c), whose count must agree with the table."""
    r = call(addr, {"v": PROTOCOL_VERSION, "t": "coldstarts", "id": next_id(), "fn": fn}, timeout_ms=10000)
    assert r["ok"], r
    summary = json.loads(r["json"])
    n = db_rows(data, "SELECT COUNT(*) FROM cold_starts WHERE function = ?", (fn,))[0][0]
    assert [x["count"] for x in summary if x["function"] == fn] == ([n] if n else []), (summary, n)
    return n


def worker_row(data: Path, name: str):
    """The workers-table row of worker `name` as a dict (or None), read through a separate
    read-only connection while the gateway writes (WAL readers never block the writer)."""
    con = sqlite3.connect(f"file:{data / 'aicfn.db'}?mode=ro", uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        r = con.execute("SELECT id, address, device, budget_bytes, pid, started_us, last_seen_us, state "
                        "FROM workers WHERE id = ?", (name,)).fetchone()
        return dict(r) if r else None
    finally:
        con.close()


def wait_worker_row(data: Path, name: str, state: str, timeout=15):
    return wait_for(lambda: (lambda r: r if r and r["state"] == state else None)(worker_row(data, name)),
                    timeout, interval=0.05, what=f"worker {name}'s row to say {state!r}")


def gateway_status(addr) -> dict:
    r = call(addr, {"v": PROTOCOL_VERSION, "t": "status", "id": next_id()}, timeout_ms=5000)
    assert r["ok"], r
    return json.loads(r["json"])


def write_manifest(d: Path, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "aicfn.yaml").write_text(text)
    return d


def write_safetensors(path: Path, tensors: dict):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def mlp_x(scale: float = 1.0) -> np.ndarray:
    return (np.linspace(-1, 1, 16, dtype=np.float32) * scale).reshape(1, 16)


def mlp_input(scale: float = 1.0):
    """An mlp input; examples/mlp keeps replies in the gateway's response cache
    (cache.responses), so a call meant to reach a worker again uses another `scale`."""
    return tensor("x", mlp_x(scale))


def mlp_reference(x: np.ndarray) -> np.ndarray:
    """The logits of examples/mlp for `x`, by an independent numpy forward pass (float64)."""
    raw = (ROOT / "examples" / "mlp" / "weights.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    w = {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4")
         .reshape(v["shape"]) for k, v in hdr.items() if k != "__metadata__"}
    h = np.maximum(x.astype(np.float64) @ w["fc1.weight"].T + w["fc1.bias"], 0)
    return h @ w["fc2.weight"].T + w["fc2.bias"]


# ---- tests ----

def test_deploy_invoke_versions(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path)
    assert deploy(addr, ROOT / "examples" / "mlp") == 1
    # Each call below that must reach a worker has an input of its own: examples/mlp keeps
    # replies in the response cache, and a cache hit is never cold and runs nothing.
    r1 = call(addr, invoke_msg("mlp", [mlp_input(1.0)]), timeout_ms=30000)
    assert r1["ok"], r1
    assert r1["cold"] is True and not r1.get("cached"), r1
    assert np.allclose(output(r1, "logits"), mlp_reference(mlp_x(1.0)), rtol=1e-4, atol=1e-4)
    r2 = call(addr, invoke_msg("mlp", [mlp_input(2.0)]), timeout_ms=30000)
    assert r2["ok"], r2
    assert r2["cold"] is False and not r2.get("cached"), r2
    assert np.allclose(output(r2, "logits"), mlp_reference(mlp_x(2.0)), rtol=1e-4, atol=1e-4)

    # A second deploy is version 2 and active; version 1 stays invokable, on a worker.
    assert deploy(addr, ROOT / "examples" / "mlp") == 2
    ls = json.loads(run_cli(["ls", "--gateway", addr, "--json"]).stdout)
    row = [x for x in ls if x["name"] == "mlp"][0]
    assert row["active_version"] == 2 and row["latest_version"] == 2
    ra = call(addr, invoke_msg("mlp", [mlp_input(3.0)], rid=777001), timeout_ms=30000)
    m1 = invoke_msg("mlp", [mlp_input(4.0)], rid=777002)
    m1["ver"] = 1
    rb = call(addr, m1, timeout_ms=30000)
    assert ra["ok"] and rb["ok"], (ra, rb)
    assert not ra.get("cached") and not rb.get("cached"), (ra, rb)
    assert np.allclose(output(ra, "logits"), mlp_reference(mlp_x(3.0)), rtol=1e-4, atol=1e-4)
    assert np.allclose(output(rb, "logits"), mlp_reference(mlp_x(4.0)), rtol=1e-4, atol=1e-4)
    rows = wait_rows(data, "SELECT request_id, version, status, cached, worker IS NOT NULL FROM invocations "
                           "WHERE request_id IN (?, ?) ORDER BY request_id", ("777001", "777002"), 2)
    assert rows == [("777001", 2, "AICFN_OK", 0, 1), ("777002", 1, "AICFN_OK", 0, 1)]
    # Unknown function and version: clear errors.
    r = call(addr, invoke_msg("nope", [mlp_input()]))
    assert not r["ok"] and r["error"]["code"] == 6
    m9 = invoke_msg("mlp", [mlp_input()])
    m9["ver"] = 9
    r = call(addr, m9)
    assert not r["ok"] and r["error"]["code"] == 6
    # The cold start was recorded, with the spawn of the worker that served it.
    cs = db_rows(data, "SELECT function, version, spawn_us, raw_bytes FROM cold_starts WHERE function='mlp'")
    assert len(cs) >= 1 and cs[0][2] > 0 and cs[0][3] > 0
    out = run_cli(["coldstarts", "mlp", "--gateway", addr])
    assert out.returncode == 0 and "decompress" in out.stdout


def test_activate_rolls_back_without_removing(procs, tmp_path):
    # `aicfn activate NAME:VER` moves NAME's traffic to an existing version (a rollback
    # after a bad deploy) and back; no version is removed.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    d = tmp_path / "roll"
    d.mkdir()
    write_manifest(d, f"name: roll\nhandler: {handler('echo')}\n")
    assert deploy(addr, d) == 1
    assert deploy(addr, d) == 2

    def served_by(rid):
        r = call(addr, invoke_msg("roll", [tensor("x", np.arange(2, dtype=np.float32))], rid=rid), timeout_ms=20000)
        assert r["ok"], r
        return wait_rows(data, "SELECT version FROM invocations WHERE request_id = ?", (str(rid),), 1)[0][0]

    def active():
        ls = json.loads(run_cli(["ls", "--gateway", addr, "--json"]).stdout)
        row = [x for x in ls if x["name"] == "roll"][0]
        return row["active_version"], row["versions"]

    assert served_by(880001) == 2
    r = run_cli(["activate", "roll:1", "--gateway", addr])
    assert r.returncode == 0 and r.stdout.strip() == "activated roll:1", (r.stdout, r.stderr)
    assert active() == (1, 2)
    assert served_by(880002) == 1
    r = run_cli(["activate", "roll:9", "--gateway", addr])
    assert r.returncode == 1 and "AICFN_E_NOT_FOUND" in r.stderr, r.stderr
    r = run_cli(["activate", "roll", "--gateway", addr])
    assert r.returncode == 2, r.stderr
    assert active() == (1, 2)
    r = run_cli(["activate", "roll:2", "--gateway", addr, "--json"])
    assert r.returncode == 0 and json.loads(r.stdout) == {"name": "roll", "version": 2}, r.stdout
    assert served_by(880003) == 2


def test_lru_eviction_three_models_budget_for_two(procs, tmp_path):
    # Three 3 MiB models, one worker with 7 MiB: two fit, the third evicts the LRU one.
    echo = handler("echo")
    for n in ("lrua", "lrub", "lruc"):
        d = tmp_path / n
        d.mkdir()
        write_safetensors(d / "w.safetensors", {"w": np.random.default_rng(1).standard_normal(786432).astype(np.float32)})
        write_manifest(d, f"name: {n}\nhandler: {echo}\nmodel: w.safetensors\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", memory="7MiB")
    for n in ("lrua", "lrub", "lruc"):
        deploy(addr, tmp_path / n)

    def inv(fn):
        r = call(addr, invoke_msg(fn, [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
        assert r["ok"], r
        # The worker unpins a model just after it replies: let it, so that each call
        # starts with nothing pinned and the LRU order alone picks the victim.
        time.sleep(0.1)
        return r["cold"]

    assert inv("lrua") is True
    assert inv("lrub") is True
    assert inv("lrua") is False
    assert inv("lruc") is True   # evicts lrub (least recently used)
    assert inv("lrua") is False
    assert inv("lrub") is True   # evicts lruc (lrua was used after it)
    rows = wait_rows(data, "SELECT function, evicted FROM cold_starts ORDER BY id", (), 4)
    assert [r[0] for r in rows] == ["lrua", "lrub", "lruc", "lrub"]
    assert json.loads(rows[0][1]) == [] and json.loads(rows[1][1]) == []
    assert json.loads(rows[2][1]) == ["lrub:1"]
    assert json.loads(rows[3][1]) == ["lruc:1"]
    pool = workers(addr)
    assert len(pool) == 1
    resident = sorted(m["function"] for m in pool[0]["models"] if m["state"] == "READY")
    assert resident == ["lrua", "lrub"]


def test_a_deadline_too_short_for_its_model_load_starts_no_load(procs, tmp_path):
    """A call whose model is not resident, with less time left than that model's last load
    took, is refused (AICFN_E_TIMEOUT, naming both) without a load: a load, once started,
    runs to its end and evicts other models, so a caller with deadline_ms 1 could have
    loads (and evictions) made for nothing. The first load of a model has nothing to go by
    and is tried."""
    echo = handler("echo")
    for n, seed in (("biga", 1), ("bigb", 2)):
        d = tmp_path / n
        d.mkdir()
        write_safetensors(d / "w.safetensors",
                          {"w": np.random.default_rng(seed).standard_normal(3 << 20).astype(np.float32)})
        write_manifest(d, f"name: {n}\nhandler: {echo}\nmodel: w.safetensors\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", memory="16MiB")  # one 12 MiB model
    for n in ("biga", "bigb"):
        deploy(addr, tmp_path / n)
    x = tensor("x", np.arange(3, dtype=np.float32))
    r = call(addr, invoke_msg("biga", [x]), timeout_ms=30000)
    assert r["ok"] and r["cold"], r
    load_us = r["timing"]["load"]
    assert load_us > 1000, r["timing"]  # 12 MiB: over 1 ms to load, the deadline below
    time.sleep(0.1)
    r = call(addr, invoke_msg("bigb", [x]), timeout_ms=30000)  # evicts biga
    assert r["ok"] and r["cold"], r
    # The gateway sees bigb unpinned (from the worker's next status): biga's call could
    # evict it now, rather than wait in the queue.
    wait_for(lambda: any(m["function"] == "bigb" and m["state"] == "READY" and not m["pinned"]
                         for m in workers(addr)[0]["models"]), 10, interval=0.1, what="bigb unpinned")
    r = call(addr, invoke_msg("biga", [x], deadline_ms=1), timeout_ms=30000)
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_TIMEOUT", r
    assert "not loaded" in r["error"]["message"], r
    # Nothing was loaded: bigb is still the resident one, and biga's cold starts are one.
    resident = sorted(m["function"] for m in workers(addr)[0]["models"] if m["state"] == "READY")
    assert resident == ["bigb"], resident
    time.sleep(0.3)  # the ledger's flush interval
    assert db_rows(data, "SELECT count(*) FROM cold_starts WHERE function = 'biga'") == [(1,)]
    # With time enough, it loads.
    r = call(addr, invoke_msg("biga", [x], deadline_ms=20000), timeout_ms=30000)
    assert r["ok"] and r["cold"], r



def test_a_short_deadline_waits_for_a_busy_worker_holding_its_model(procs, tmp_path):
    """The refusal above is for a model resident nowhere. A function allowed two workers
    whose only holder is busy would get a new replica (a spawn): a call with less time
    left than the model's load takes no new replica then, but waits for the holder
    (here it is answered at its deadline by the queue, not refused at once as 'not
    loaded'), and no worker is spawned for it."""
    d = tmp_path / "slowm"
    d.mkdir()
    write_safetensors(d / "w.safetensors",
                      {"w": np.random.default_rng(3).standard_normal(3 << 21).astype(np.float32)})
    write_manifest(d, f"name: slowm\nhandler: {handler('test_sleep')}\nmodel: w.safetensors\n"
                      "scaling: {max_workers: 2}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2", memory="64MiB")
    deploy(addr, d)
    r = call(addr, invoke_msg("slowm", []), timeout_ms=30000)
    load_us = r["timing"]["load"]
    assert r["ok"] and r["cold"] and load_us > 4000, r  # 24 MiB
    busy = {}
    t = threading.Thread(target=lambda: busy.update(
        r=call(addr, invoke_msg("slowm", [], params={"sleep_ms": "2000"}), timeout_ms=30000)))
    t.start()
    wait_for(lambda: [w["in_flight"] for w in workers(addr)] == [1], 10, interval=0.05,
             what="its one worker busy")
    # Less than the load took, yet more than routing takes: it reaches the router alive.
    short = max(2, load_us // 2000)
    r = call(addr, invoke_msg("slowm", [], deadline_ms=short), timeout_ms=30000)
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_TIMEOUT", r
    assert "not loaded" not in r["error"]["message"], r
    t.join(30)
    assert busy["r"]["ok"] and not busy["r"]["cold"], busy
    assert len(workers(addr)) == 1  # nothing spawned for the short call
    time.sleep(0.3)  # the ledger's flush interval
    assert db_rows(data, "SELECT count(*) FROM cold_starts WHERE function = 'slowm'") == [(1,)]


def test_manifest_params_reach_the_handlers_init(procs, tmp_path):
    """A manifest's `params` are the function's handler params: stored with the version,
    sent to the worker with its spec, and given to init as text (test_sleep reads
    init_file and sleep_ms from them); a new version with other params gets its own."""
    d = tmp_path / "pfn"
    inits = tmp_path / "inits.txt"
    write_manifest(d, f"name: pfn\nhandler: {handler('test_sleep')}\n"
                      f"params: {{init_file: \"{inits}\", sleep_ms: 150}}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    assert deploy(addr, d) == 1
    t0 = time.monotonic()
    r = call(addr, invoke_msg("pfn", []), timeout_ms=20000)
    assert r["ok"], r
    assert time.monotonic() - t0 >= 0.15 and r["timing"].get("exec", 0) >= 150_000, r["timing"]  # sleep_ms from params
    assert inits.read_text() == "init\n"
    cfg = json.loads(db_rows(data, "SELECT config FROM functions WHERE name = 'pfn' AND version = 1")[0][0])
    assert cfg["params"] == {"init_file": str(inits), "sleep_ms": "150"}, cfg
    write_manifest(d, f"name: pfn\nhandler: {handler('test_sleep')}\nparams: {{sleep_ms: 0}}\n")
    assert deploy(addr, d) == 2
    r = call(addr, invoke_msg("pfn", []), timeout_ms=20000)
    assert r["ok"] and r["timing"].get("exec", 0) < 100_000, r["timing"]  # a zero phase is not sent
    assert inits.read_text() == "init\n"  # version 2 has no init_file

def test_twenty_first_calls_register_the_function_once(procs, tmp_path):
    """20 simultaneous first calls of a function on one worker: the worker registers it
    (dlopen, the handler's init) once, the others wait for that registration, and all
    succeed (init_file gets one line)."""
    d = tmp_path / "once"
    inits = tmp_path / "inits.txt"
    write_manifest(d, f"name: once\nhandler: {handler('test_sleep')}\n"
                      f"params: {{init_file: \"{inits}\", sleep_ms: 20}}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="1..1")
    assert deploy(addr, d) == 1
    results = [None] * 20
    barrier = threading.Barrier(20)

    def one(i):
        barrier.wait(timeout=10)
        results[i] = call(addr, invoke_msg("once", [tensor("x", np.array([[i]], dtype=np.float32))]),
                          timeout_ms=60000)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=90)
    assert all(r is not None and r["ok"] for r in results), results
    assert inits.read_text() == "init\n", inits.read_text()


def test_single_flight_twenty_first_calls(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2")
    deploy(addr, ROOT / "examples" / "mlp")
    results = [None] * 20
    barrier = threading.Barrier(20)

    def one(i):
        barrier.wait(timeout=10)
        # An input per call: none may be answered by the response cache instead of a worker.
        results[i] = call(addr, invoke_msg("mlp", [mlp_input(1.0 + i)]), timeout_ms=60000)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=90)
    assert all(r is not None and r["ok"] and not r.get("cached") for r in results), results
    # Every call was answered, so its records were submitted: wait until the 20 invocation
    # rows are committed, then count the cold starts with the ledger flushed.
    wait_for(lambda: db_rows(data, "SELECT COUNT(*) FROM invocations WHERE function='mlp'")[0][0] >= 20, 10,
             what="20 ledger rows")
    assert db_rows(data, "SELECT COUNT(*), SUM(cached) FROM invocations WHERE function='mlp'") == [(20, 0)]
    assert cold_start_count(addr, data, "mlp") == 1


def fake_worker_status(cold_starts=0):
    """The `w` of a status reply from a worker written from the protocol (protocol.md
    section 5): idle, holding nothing, on host memory."""
    return {"worker": "fake", "device": "host", "host": True, "uptime_ms": 1,
            "st": {"budget": 1 << 30, "used": 0, "free": 1 << 30, "queued": 0, "inflight": 0, "draining": False,
                   "models": []},
            "queues": [], "counters": {"invocations": 0, "errors": 0, "cold_starts": cold_starts, "evictions": 0,
                                       "batches": 0}}


# The answer of a worker written from the protocol to a call it did not run (its deadline passed).
TIMED_OUT = {"ok": False, "error": {"code": E_TIMEOUT, "name": "AICFN_E_TIMEOUT",
                                    "message": "deadline passed: not executed"}}


class ProtocolWorker:
    """A worker written from the protocol (protocol.md section 5): a Rep0 socket on a free
    loopback port whose `contexts` threads each take a request and send back `answer(req)`
    (a reply's keys; `v` and `id` are added), until close(). Every receive times out after
    200 ms, so each loop is bounded by the test; `answer` may block (with contexts > 1 the
    others go on serving)."""

    def __init__(self, answer, contexts=1):
        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.sock = pynng.Rep0(listen=self.addr)
        self.stopping = threading.Event()
        self.ctxs, self.threads = [], []
        for _ in range(contexts):
            ctx = self.sock.new_context()
            ctx.recv_timeout = 200
            self.ctxs.append(ctx)
            self.threads.append(threading.Thread(target=self._serve, args=(ctx, answer), daemon=True))
            self.threads[-1].start()

    def _serve(self, ctx, answer):
        while not self.stopping.is_set():
            try:
                req = msgpack.unpackb(ctx.recv(), raw=False)
            except pynng.Timeout:
                continue
            except pynng.Closed:
                return
            ctx.send(msgpack.packb({"v": PROTOCOL_VERSION, "id": req["id"], **answer(req)}))

    def register(self, gw_addr, name="fake"):
        """Registers at the gateway on gw_addr under `name`: the gateway's answer."""
        return call(gw_addr, {"v": PROTOCOL_VERSION, "t": "register", "id": next_id(), "addr": self.addr,
                              "name": name})

    def close(self):  # idempotent
        if self.stopping.is_set():
            return
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=5)
        for ctx in self.ctxs:
            ctx.close()
        self.sock.close()


def test_load_its_calls_gave_up_on_is_still_a_cold_start(procs, tmp_path):
    # A load that outlasted every call waiting for it is reported by the worker's status
    # answers (w.loads, protocol.md section 5; the worker side is test_worker's
    # abandoned_load_is_reported_in_the_next_status). Here a registered worker written from
    # the protocol answers the gateway's status polls: the first lists an unnumbered load
    # (a worker that takes no ack: listed once), and every answer lists a numbered one
    # (seq 5) in its first three answers and until a poll acknowledges it, as a worker
    # does for a gateway that may lose an answer. The gateway records each once in
    # cold_starts, with spawn_us and queue_us 0, and its polls acknowledge seq 5.
    write_manifest(tmp_path / "big", f"name: big\nhandler: {handler('echo')}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, tmp_path / "big")
    polls, acks = [], []
    load = {"fn": "big", "ver": 1,
            "timing": {"load": 250000, "total": 250000, "read": 1000, "decompress": 200000, "filter": 30000},
            "cs": {"cbytes": 3 << 20, "rbytes": 4 << 20, "evicted": []}}

    def answer(req):
        w = fake_worker_status(cold_starts=1)
        acks.append(req.get("ack"))
        # The first answer also lists a load of a version that was never deployed: a
        # worker's word makes no cold-start row (nor metric series) for it.
        w["loads"] = [] if polls else [load, dict(load, fn="nosuch")]
        if (req.get("ack") or 0) < 5 or len(polls) < 3:  # listed again: as if an answer was lost
            w["loads"].append(dict(load, seq=5))
        polls.append(req.get("t"))
        return {"ok": True, "w": w}

    fake = ProtocolWorker(answer)
    try:
        r = fake.register(addr)
        assert r["ok"], r
        rows = wait_rows(data, "SELECT function, version, worker, raw_bytes, compressed_bytes, spawn_us, queue_us, "
                               "decompress_us, total_us FROM cold_starts", (), 2, timeout=15)
        wait_for(lambda: 5 in acks and len(polls) >= acks.index(5) + 2, 15, what="seq 5 acknowledged, then a poll")
        assert acks[0] == 0 and all(a is not None for a in acks), acks
        assert db_rows(data, "SELECT COUNT(*) FROM cold_starts")[0][0] == 2  # each recorded once
        assert rows == [("big", 1, "fake", 4 << 20, 3 << 20, 0, 0, 200000, 250000)] * 2, rows
        assert "a load its calls gave up on became resident" in g.stderr()
        assert cold_start_count(addr, data, "big") == 2
        assert "lists a load of nosuch:1, not a deployed version: ignored" in g.stderr()
    finally:
        fake.close()



def test_a_load_its_calls_gave_up_on_is_billed_to_them(procs, tmp_path):
    """A call that made a load and gave up before it ended (its deadline passed) pays for
    it all the same, as it would have had it waited: its worker lists the load with the
    calls of the batch that made it (w.loads' makers and calls), and the gateway adds the
    load's device time to that call's ledger row (load_gpu_us, what `aicfn usage` bills).
    256 MiB of random bytes take far longer to load than the call's 10 ms."""
    d = tmp_path / "huge"
    d.mkdir()
    bits = np.random.default_rng(8).integers(0, 2**32, 64 << 20, dtype=np.uint32)
    write_safetensors(d / "w.safetensors", {"w": bits.view(np.float32)})
    write_manifest(d, f"name: huge\nhandler: {handler('echo')}\nmodel: w.safetensors\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="1..1", memory="512MiB")
    deploy(addr, ROOT / "examples" / "echo")
    deploy(addr, d)
    # The worker is up and serving (its start is not part of what the call waits for).
    assert call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.float32))]), timeout_ms=30000)["ok"]
    r = call(addr, invoke_msg("huge", [], deadline_ms=10, rid=770001), timeout_ms=30000)
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_TIMEOUT", r
    (total,), = wait_rows(data, "SELECT total_us FROM cold_starts WHERE function = 'huge'", (), 1, timeout=20)

    def billed():
        rows = db_rows(data, "SELECT status, load_gpu_us, call_id FROM invocations WHERE request_id = '770001'")
        return rows if rows and rows[0][1] > 0 else None

    ((status, load_gpu, call_id),) = wait_for(billed, 10, what="the load billed to the call that made it")
    assert status == "AICFN_E_TIMEOUT" and call_id is not None, (status, call_id)
    assert 5000 <= load_gpu <= total, (load_gpu, total)  # the load outlasted the call; at most its wait
    assert "the abandoned load is billed to" not in g.stderr()  # to all (one) of its makers


def test_a_workers_word_bills_only_calls_that_timed_out_there(procs, tmp_path):
    """What a worker says a call cost is believed only as far as the gateway can check it:
    a registered worker written from the protocol answers a call with AICFN_E_TIMEOUT,
    then lists loads that call made. The gateway bills the call its share (the load over
    the batch's three makers), not the two other ids listed (calls it never saw time out
    there), not twice for a load listed again under another seq, and a share larger than
    the time since the call went there is cut to that time; so are a reply's handler and
    cold-start times."""
    write_manifest(tmp_path / "big", f"name: big\nhandler: {handler('echo')}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, tmp_path / "big")
    timed_out = []  # (gid, when answered)
    listed = []
    cs = {"cbytes": 3 << 20, "rbytes": 4 << 20, "evicted": []}

    def load(seq, share, makers, calls):
        return {"seq": seq, "fn": "big", "ver": 1, "makers": makers, "calls": calls, "cs": cs,
                "timing": {"load": 30000, "total": 30000, "cold_share": share}}

    def answer(req):
        if req.get("t") == "invoke" and len(timed_out) == 2:  # the third: run, it says, for 12 days
            return {"ok": True, "outputs": [], "batch": 1, "cold": True,
                    "timing": {"total": 10**12, "exec": 10**12, "cold_share": 10**12}}
        if req.get("t") == "invoke":
            timed_out.append((req["gid"], time.monotonic()))
            return TIMED_OUT
        w = fake_worker_status()
        if len(timed_out) == 2 and time.monotonic() - timed_out[1][1] > 0.1 and not listed:
            (a, _), (b, _) = timed_out
            w["loads"] = [load(1, 30000, 3, [a, 999999, b + 1000]), load(2, 30000, 3, [a]),
                          load(3, 10**12, 1, [b])]
            listed.append(True)
        return {"ok": True, "w": w}

    fake = ProtocolWorker(answer)
    try:
        r = fake.register(addr)
        assert r["ok"], r
        for rid in (880001, 880002):
            r = call(addr, invoke_msg("big", [], rid=rid), timeout_ms=20000)
            assert not r["ok"] and r["error"]["name"] == "AICFN_E_TIMEOUT", r
        wait_for(lambda: listed, 15, what="the loads listed")
        wait_rows(data, "SELECT 1 FROM cold_starts WHERE function = 'big'", (), 3, timeout=15)

        def charged():
            rows = dict(db_rows(data, "SELECT request_id, load_gpu_us FROM invocations WHERE function = 'big'"))
            return rows if rows.get("880001") and rows.get("880002") else None

        rows = wait_for(charged, 10, what="both calls charged")
        assert rows["880001"] == 10000, rows  # 30000 over 3 makers, once though listed twice
        # 10^12 claimed: cut to the time from the call's sending to the loads' listing
        assert 100000 <= rows["880002"] <= (time.monotonic() - timed_out[1][1] + 1) * 1e6, rows
        assert "billed to 1 of the 3 calls that made it" in g.stderr()
        assert "billed to 0 of the 3 calls that made it" in g.stderr()
        # A reply's own claims are cut the same way: to the time the call spent there.
        t0 = time.monotonic()
        r = call(addr, invoke_msg("big", [], rid=880003), timeout_ms=20000)
        took_us = (time.monotonic() - t0) * 1e6
        assert r["ok"], r
        (gpu, load_gpu), = wait_rows(data, "SELECT gpu_us, load_gpu_us FROM invocations WHERE request_id = '880003'",
                                     (), 1)
        assert gpu <= took_us and load_gpu <= took_us, (gpu, load_gpu, took_us)
        assert "there: capped" in g.stderr()
    finally:
        fake.close()


def test_a_load_listed_before_its_calls_timeout_is_billed_to_it(procs, tmp_path):
    """A worker's status and its replies reach the gateway on different threads, so a status
    listing an abandoned load can be handled before the timeout reply of the call that made
    it. A registered worker written from the protocol answers that way round: it holds the
    call, lists the load (30 ms, one maker, seq 1) in the next status answer, and answers
    the call AICFN_E_TIMEOUT only once a later poll acknowledges seq 1 (the gateway has
    handled the listing). The gateway holds the share for the call and bills it when the
    timeout comes, once."""
    write_manifest(tmp_path / "big", f"name: big\nhandler: {handler('echo')}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, tmp_path / "big")
    held = []  # the call's gid, once it came
    listed = threading.Event()
    acked = threading.Event()
    answered = threading.Event()

    def answer(req):  # two contexts: the call is held on one while the other answers polls
        if req.get("t") == "invoke":
            held.append(req["gid"])
            acked.wait(15)
            answered.set()
            return TIMED_OUT
        if listed.is_set() and req.get("ack", 0) >= 1:
            acked.set()
        w = fake_worker_status()
        if held and not listed.is_set():
            w["loads"] = [{"seq": 1, "fn": "big", "ver": 1, "makers": 1, "calls": [held[0]],
                           "cs": {"cbytes": 3 << 20, "rbytes": 4 << 20, "evicted": []},
                           "timing": {"load": 30000, "total": 30000, "cold_share": 30000}}]
            listed.set()  # a later poll's ack >= 1 comes after this answer was handled
        return {"ok": True, "w": w}

    fake = ProtocolWorker(answer, contexts=2)
    try:
        r = fake.register(addr)
        assert r["ok"], r
        r = call(addr, invoke_msg("big", [], rid=880101), timeout_ms=20000)
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_TIMEOUT", r
        assert acked.is_set() and answered.is_set()
        wait_rows(data, "SELECT 1 FROM cold_starts WHERE function = 'big'", (), 1, timeout=15)
        charged = wait_for(lambda: [v for v, in db_rows(data, "SELECT load_gpu_us FROM invocations "
                                                          "WHERE request_id = '880101'") if v] or None,
                           10, what="the call charged")
        assert charged == [30000], charged
        assert "pays its share of an abandoned load listed before its timeout" in g.stderr()
    finally:
        fake.close()


def test_a_worker_under_a_dead_ones_name_cannot_bill_its_calls(procs, tmp_path):
    """The gateway believes a worker's list of calls an abandoned load was for only for
    calls that worker (the gateway's record of it, not its name) answered AICFN_E_TIMEOUT.
    A registered worker written from the protocol times a call out and goes away; once the
    gateway counts it dead, another registers under its name and lists a load made for
    that call. The load is a cold start all the same, billed to no one."""
    write_manifest(tmp_path / "big", f"name: big\nhandler: {handler('echo')}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, tmp_path / "big")
    timed_out = []  # gids the first worker answered AICFN_E_TIMEOUT

    def answer(loads):
        def respond(req):
            if req.get("t") == "invoke":
                timed_out.append(req["gid"])
                return TIMED_OUT
            return {"ok": True, "w": dict(fake_worker_status(), loads=loads())}
        return respond

    first = ProtocolWorker(answer(lambda: []))
    second = None
    try:
        assert first.register(addr)["ok"]
        r = call(addr, invoke_msg("big", [], rid=880201), timeout_ms=20000)
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_TIMEOUT", r
        assert len(timed_out) == 1
        first.close()
        second = ProtocolWorker(answer(lambda: [
            {"seq": 1, "fn": "big", "ver": 1, "makers": 1, "calls": timed_out[:1],
             "cs": {"cbytes": 3 << 20, "rbytes": 4 << 20, "evicted": []},
             "timing": {"load": 30000, "total": 30000, "cold_share": 30000}}]))
        # Refused while the gateway still counts the first one alive (its polls fail first).
        wait_for(lambda: second.register(addr)["ok"], 30, interval=0.5, what="the name free again")
        wait_rows(data, "SELECT 1 FROM cold_starts WHERE function = 'big'", (), 1, timeout=15)
        wait_for(lambda: "billed to 0 of the 1 calls that made it" in g.stderr(), 10, what="the load billed")
        rows = db_rows(data, "SELECT load_gpu_us FROM invocations WHERE request_id = '880201'")
        assert rows == [(0,)], rows
    finally:
        first.close()
        if second:
            second.close()


def test_deploy_refuses_a_handler_built_for_another_abi(procs, tmp_path):
    # aicfn deploy loads the handler once before it uploads anything, as a worker will: one
    # built for another function ABI (or missing its required symbols) is refused there,
    # with the worker's message, instead of failing every call after a deploy that
    # succeeded.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    write_manifest(tmp_path / "old", f"name: old\nhandler: {handler('test_abi_mismatch')}\n")
    r = run_cli(["deploy", str(tmp_path / "old"), "--gateway", addr], timeout=120)
    assert r.returncode != 0, r.stdout
    assert "built for function ABI" in r.stderr and "AICFN_E_ABI" in r.stderr, r.stderr
    assert not list((data / "artifacts").glob("[0-9a-f]" * 64)), "nothing uploaded"
    write_manifest(tmp_path / "noinvoke", f"name: noinvoke\nhandler: {handler('test_no_invoke')}\n")
    r = run_cli(["deploy", str(tmp_path / "noinvoke"), "--gateway", addr], timeout=120)
    assert r.returncode != 0 and "missing required symbol aicfn_fn_invoke" in r.stderr, r.stderr
    deploy(addr, ROOT / "examples" / "echo")  # a good one goes through


def test_coldstarts_answers_while_the_database_is_locked(procs, tmp_path):
    """`coldstarts` first commits what the ledger holds, but a database that cannot take
    it (another process holds its write lock: a stalled or full disk looks the same to the
    writer) does not hold the admin thread nor fail the query: the answer comes within
    about a second with the rows committed so far, and the admin thread serves on."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, ROOT / "examples" / "mlp")
    assert call(addr, invoke_msg("mlp", [mlp_input()]), timeout_ms=30000)["ok"]
    assert cold_start_count(addr, data, "mlp") == 1
    db = sqlite3.connect(data / "aicfn.db", timeout=5, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        assert call(addr, invoke_msg("mlp", [mlp_input(0.5)]), timeout_ms=30000)["ok"]  # its row waits
        t0 = time.monotonic()
        r = call(addr, {"v": PROTOCOL_VERSION, "t": "coldstarts", "id": next_id(), "fn": "mlp"}, timeout_ms=10000)
        took = time.monotonic() - t0
        assert r["ok"], r
        assert json.loads(r["json"])[0]["count"] == 1, r
        assert took < 4, took
        r = call(addr, {"v": PROTOCOL_VERSION, "t": "ls", "id": next_id()}, timeout_ms=10000)
        assert r["ok"], r  # the admin thread serves on
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert "coldstarts: answered without the records still queued" in g.stderr()
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations WHERE function = 'mlp'")[0][0] == 2, 10,
             what="the waiting row committed once the lock is gone")


def test_the_default_relative_data_directory_serves_calls(procs, tmp_path):
    # With no --data the gateway keeps its data in ./aicfn-data, a relative path. Workers
    # take handler and snapshot paths only when absolute (they need not share the
    # gateway's working directory), so the gateway resolves it: a deployed function serves
    # calls on local workers.
    from conftest import aicfn_bin
    addr = f"tcp://127.0.0.1:{free_port()}"
    procs.start([aicfn_bin(), "gateway", "--listen", addr, "--workers", "0..1", "--worker-memory", "64MiB",
                 "--device", "host", "--insecure-local"], name="gateway", cwd=tmp_path)
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id()}, timeout_ms=500).get("ok"), 15,
             interval=0.05, what="the gateway")
    deploy(addr, ROOT / "examples" / "echo")
    r = call(addr, invoke_msg("echo", [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
    assert r["ok"], r
    assert np.array_equal(output(r, "x"), np.arange(3, dtype=np.float32))
    assert (tmp_path / "aicfn-data" / "aicfn.db").exists()


def test_gateway_and_keys_find_one_data_directory(procs, tmp_path):
    # $AICFN_DATA_DIR names the data directory for the gateway as for `aicfn keys`, so a
    # key made with the variable set serves the gateway started with it; `keys create`
    # says when it makes a database that no gateway has used yet.
    data = tmp_path / "srv"
    r = run_cli(["keys", "create", "--tenant", "ops", "--admin"], env={"AICFN_DATA_DIR": str(data)})
    assert r.returncode == 0, r.stderr
    admin = r.stdout.strip()
    assert "created one" in r.stderr and str(data) in r.stderr, r.stderr
    addr = f"tcp://127.0.0.1:{free_port()}"
    procs.start([aicfn_bin(), "gateway", "--listen", addr, "--workers", "0..0", "--device", "host"], name="gateway",
                env={"AICFN_DATA_DIR": str(data)}, cwd=tmp_path)
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": admin}, timeout_ms=500).get("ok"),
             15, interval=0.05, what="the gateway, taking the key made in $AICFN_DATA_DIR")
    assert (data / "gateway.lock").exists() and not (tmp_path / "aicfn-data").exists()
    r = run_cli(["keys", "create", "--tenant", "acme", "--data-dir", str(data)])
    assert r.returncode == 0 and "created one" not in r.stderr, r.stderr

def test_insecure_local_is_refused_off_loopback(tmp_path):
    # --insecure-local makes every caller an administrator (deploy runs native code): the
    # gateway refuses it on an address other hosts can reach, NNG front or HTTP front,
    # before it opens anything.
    for extra in (["--listen", f"tcp://0.0.0.0:{free_port()}"],
                  ["--listen", f"tcp://127.0.0.1:{free_port()}", "--http", f"0.0.0.0:{free_port()}"]):
        r = run_cli(["gateway", "--data", str(tmp_path / "data"), "--workers", "0..0", "--device", "host",
                     "--insecure-local", *extra], timeout=20)
        assert r.returncode != 0, r.stdout
        assert "--insecure-local serves" in r.stderr and "0.0.0.0" in r.stderr, r.stderr
        assert "loopback" in r.stderr, r.stderr


def test_gateway_durations_are_bounded(tmp_path):
    # Timers add these to clock times: a value that would overflow (someone's "never") is a
    # usage error, not an upload aborted at once.
    for flag in ("--upload-timeout", "--idle-timeout"):
        r = run_cli(["gateway", "--data", str(tmp_path / "data"), flag, "18446744073709551615us"], timeout=20)
        assert r.returncode == 2 and "from 1us to 7d" in r.stderr, (flag, r.stderr)


def test_administrative_requests_are_bounded_before_they_queue(procs, tmp_path):
    # Administrative requests wait for the gateway's one admin thread: one past
    # AICFN_GW_ADMIN_MAX_BYTES (1 MiB; an upload chunk may carry its 4 MiB chunk more) is
    # refused at once with AICFN_E_TOO_LARGE, and the gateway goes on answering.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    r = call(addr, gw_msg("status", pad=b"x" * (2 << 20)))
    assert not r["ok"] and r["error"]["code"] == E_TOO_LARGE and "at most 1048576" in r["error"]["message"], r
    r = call(addr, gw_msg("upload_chunk", upload=1, offset=0, data=b"x" * (6 << 20)))
    assert not r["ok"] and r["error"]["code"] == E_TOO_LARGE, r
    r = call(addr, gw_msg("upload_chunk", upload=1, offset=0, data=b"x" * (4 << 20)))
    # A chunk's size passes the bound; the upload it names does not exist.
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_NOT_FOUND", r
    assert call(addr, gw_msg("status"))["ok"]


def test_second_gateway_on_one_data_dir_is_refused(procs, tmp_path):
    # A second gateway on the same --data would remove the first's uploads in progress and
    # mark its live workers lost: it is refused before it touches anything, naming the
    # holder, and the first keeps serving, the upload begun before included.
    addr, data, g = start_gateway(procs, tmp_path, workers="1..1")
    wait_for(lambda: [w for w in workers(addr) if w["state"] == "ready"], 15, what="a ready worker")
    blob = bytes(range(256)) * 64
    digest = hashlib.sha256(blob * 2).hexdigest()

    begin = call(addr, gw_msg("upload_begin", hash=digest, size=2 * len(blob)))
    assert begin["ok"], begin
    assert call(addr, gw_msg("upload_chunk", upload=begin["upload"], offset=0, data=blob))["ok"]
    r = run_cli(["gateway", "--listen", f"tcp://127.0.0.1:{free_port()}", "--data", str(data), "--workers", "0..1",
                 "--device", "host", "--insecure-local"], timeout=20)
    assert r.returncode != 0
    assert f"is in use by another gateway (pid {g.p.pid}" in r.stderr, r.stderr
    more = call(addr, gw_msg("upload_chunk", upload=begin["upload"], offset=len(blob), data=blob))
    assert more["ok"], more
    done = call(addr, gw_msg("upload_commit", upload=begin["upload"]))
    assert done["ok"], done
    assert [w["state"] for w in workers(addr)] == ["ready"]
    assert "lost" not in [r[0] for r in db_rows(data, "SELECT state FROM workers")]


def test_deploy_id_makes_a_deploy_idempotent(procs, tmp_path):
    # --deploy-id: the same deploy made again (a CI job run twice) returns the version it
    # made and changes nothing; the same id with other content is refused; no id, a new
    # version each time.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    echo = ROOT / "examples" / "echo"

    def dep(*extra, path=echo):
        return run_cli(["deploy", str(path), "--gateway", addr, *extra], timeout=120)

    r = dep("--deploy-id", "ci-41:echo", "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout.strip().splitlines()[-1])
    assert (first["version"], first["existing"], first["deploy_id"]) == (1, False, "ci-41:echo"), first
    assert deploy(addr, echo) == 2  # no id: a new version
    r = dep("--deploy-id", "ci-41:echo")
    assert r.returncode == 0 and r.stdout.strip() == "echo:1 unchanged (deploy id ci-41:echo made it)", r
    ls = json.loads(run_cli(["ls", "--gateway", addr, "--json"]).stdout)
    row = [x for x in ls if x["name"] == "echo"][0]
    assert row["active_version"] == 2 and row["latest_version"] == 2, row  # nothing changed
    changed = tmp_path / "echo2"
    changed.mkdir()
    (changed / "echo.c").write_bytes((echo / "echo.c").read_bytes())
    (changed / "aicfn.yaml").write_text((echo / "aicfn.yaml").read_text().replace("timeout: 5s", "timeout: 6s"))
    r = dep("--deploy-id", "ci-41:echo", path=changed)
    assert r.returncode == 1 and "AICFN_E_EXISTS" in r.stderr and "echo:1" in r.stderr, r.stderr
    r = dep("--deploy-id", "ci 41")
    assert r.returncode == 2 and "--deploy-id" in r.stderr, r.stderr
    rows = db_rows(data, "SELECT version, deploy_id FROM functions WHERE name = 'echo' ORDER BY version")
    assert [v for v, _ in rows] == [1, 2] and rows[0][1] == "ci-41:echo", rows
    assert len(rows[1][1]) == 32 and set(rows[1][1]) <= set("0123456789abcdef"), rows  # a random id


def test_deploy_sees_a_failed_build_with_sigchld_ignored(procs, tmp_path):
    """A parent that ignores SIGCHLD hands that to `aicfn deploy`, whose build children are
    then reaped unasked: a failed build (its status lost) passed for a success and the
    deploy failed later, opening a handler.so that was never made. The deploy now says
    the build failed, and a good source still deploys."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.c").write_text("#include \"aicfn.h\"\nthis is not C;\n")
    (bad / "aicfn.yaml").write_text("name: bad\nhandler: bad.c\n")

    def deploy_ignoring_sigchld(path):
        return subprocess.run([str(aicfn_bin()), "deploy", str(path), "--gateway", addr], capture_output=True,
                              text=True, timeout=120, cwd=ROOT,
                              preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))

    r = deploy_ignoring_sigchld(bad)
    assert r.returncode == 1, r.stderr
    assert "building handler" in r.stderr and "cc failed" in r.stderr, r.stderr
    r = deploy_ignoring_sigchld(ROOT / "examples" / "echo")
    assert r.returncode == 0, r.stderr
    assert call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.float32))]), timeout_ms=20000)["ok"]


def test_gateway_started_with_sigchld_ignored_still_sees_how_workers_die(procs, tmp_path):
    """An inherited SIGCHLD of SIG_IGN has the kernel reap the pool's workers unasked: the
    gateway's waitpid failed (ECHILD) and a worker killed with -9 was logged as a clean
    exit. aicfn resets SIGCHLD at start; the kill is seen as such."""
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    g = procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", tmp_path / "data", "--workers", "1..1",
                     "--device", "host", "--insecure-local"], name="gateway",
                    preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    wait_for(lambda: workers(addr) and workers(addr)[0]["state"] == "ready", 15, what="the worker ready")
    pid = workers(addr)[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: f"(pid {pid}) exited" in g.stderr(), 10, what="the worker's exit reported")
    assert f"(pid {pid}) exited on signal 9" in g.stderr(), g.stderr()[-2000:]


def test_deploy_no_activate_stages_a_version(procs, tmp_path):
    # Blue/green: --no-activate registers echo:2 beside the active echo:1; calls to echo
    # keep going to 1, echo:2 answers when named, and activate switches.
    addr, data, g = start_gateway(procs, tmp_path)
    assert deploy(addr, ROOT / "examples" / "echo") == 1
    r = run_cli(["deploy", str(ROOT / "examples" / "echo"), "--gateway", addr, "--no-activate", "--json"],
                timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["version"], out["activated"], out["existing"]) == (2, False, False), out

    def active():
        ls = json.loads(run_cli(["ls", "--gateway", addr, "--json"]).stdout)
        row = [x for x in ls if x["name"] == "echo"][0]
        return row["active_version"], row["latest_version"]

    assert active() == (1, 2)
    x = tensor("x", np.arange(3, dtype=np.float32))
    for rid, ver in ((880001, 0), (880002, 2)):
        m = invoke_msg("echo", [x], rid=rid)
        if ver:
            m["ver"] = ver
        r = call(addr, m, timeout_ms=20000)
        assert r["ok"], r
    r = run_cli(["activate", "echo:2", "--gateway", addr])
    assert r.returncode == 0, r.stderr
    assert active() == (2, 2)
    r = call(addr, invoke_msg("echo", [x], rid=880003), timeout_ms=20000)
    assert r["ok"], r
    rows = wait_rows(data, "SELECT request_id, version FROM invocations WHERE request_id IN (?, ?, ?) "
                           "ORDER BY request_id", ("880001", "880002", "880003"), 3)
    assert rows == [("880001", 1), ("880002", 2), ("880003", 2)], rows


class FakeGateway:
    """A gateway that answers `aicfn deploy` from a thread: status (with `features`, or
    none, as a gateway from before them), upload_begin (every artifact already stored)
    and deploy, whose first message it takes but drops the connection instead of
    answering (the answer is lost). `deploys` holds the deploy messages it got."""

    def __init__(self, features):
        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.features = features
        self.deploys = []
        self.stop = threading.Event()
        self.listening = threading.Event()
        self.thread = threading.Thread(target=self.serve)

    def serve(self):
        with pynng.Rep0(listen=self.addr, recv_timeout=200) as s:
            self.listening.set()
            deadline = time.monotonic() + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    m = s.recv_msg()
                except pynng.Timeout:
                    continue
                req = msgpack.unpackb(m.bytes, raw=False)
                rep = {"v": PROTOCOL_VERSION, "id": req["id"], "ok": True}
                if req["t"] == "status":
                    st = {"listen": self.addr}
                    if self.features is not None:
                        st["features"] = self.features
                    rep["json"] = json.dumps(st)
                elif req["t"] == "upload_begin":
                    rep.update(upload=0, exists=True)
                elif req["t"] == "deploy":
                    self.deploys.append(req)
                    if len(self.deploys) == 1:
                        m.pipe.close()  # taken, but the answer is lost
                        continue
                    rep.update(name=req["name"], version=7)
                    if self.features is not None:
                        rep["existing"] = True
                else:
                    rep = {"v": PROTOCOL_VERSION, "id": req["id"], "ok": False,
                           "error": {"code": E_PROTOCOL, "name": "AICFN_E_PROTOCOL", "message": req["t"]}}
                s.send(msgpack.packb(rep, use_bin_type=True))

    def deploy(self, *extra):
        self.thread.start()
        try:
            # The deploy dials once: it must find the listener bound (a fresh clone's run
            # once started the CLI first and got "Connection refused").
            assert self.listening.wait(10), "the fake gateway never listened"
            return run_cli(["deploy", str(ROOT / "examples" / "echo"), "--gateway", self.addr, *extra], timeout=60)
        finally:
            self.stop.set()
            self.thread.join(10)


def test_deploy_asks_again_with_the_same_id_when_the_answer_is_lost():
    # The gateway took the deploy but its answer never came: `aicfn deploy` sends the same
    # message again, with the same (random) deploy id, after a pause, and reports the
    # version as its own: the gateway's `existing` can only mean this run's first message.
    g = FakeGateway(["deploy_id", "deploy_activate", "worker_keys"])
    r = g.deploy("--json")
    assert r.returncode == 0, r.stderr
    ids = [d["deploy_id"] for d in g.deploys]
    assert len(ids) == 2 and ids[0] == ids[1] and len(ids[0]) == 32, ids
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["version"], out["existing"], out["activated"], out["deploy_id"]) == (7, False, True, ids[0]), out
    assert "asking again in 1 s" in r.stderr, r.stderr


def test_deploy_to_a_gateway_without_deploy_ids():
    # A gateway from before deploy ids would make a second version of a deploy sent
    # again, and would activate a --no-activate one: the deploy is sent once, without
    # the keys, and the flags that need them are refused.
    g = FakeGateway(None)
    r = g.deploy()
    assert r.returncode == 1 and "keeps no deploy ids" in r.stderr, r.stderr
    assert len(g.deploys) == 1 and "deploy_id" not in g.deploys[0] and "activate" not in g.deploys[0], g.deploys
    for flags, what in ((["--no-activate"], "cannot stage"), (["--deploy-id", "x1"], "keeps no deploy ids")):
        g = FakeGateway(None)
        r = g.deploy(*flags)
        assert r.returncode == 1 and "AICFN_E_UNSUPPORTED" in r.stderr and what in r.stderr, r.stderr
        assert g.deploys == [], g.deploys


def test_deploy_asks_the_gateway_before_it_packs():
    # A wrong --gateway (or a gateway that refuses the key) fails before the handler is
    # built and the model packed (minutes for a large model), not after.
    port = free_port()  # nobody listens there
    r = run_cli(["deploy", str(ROOT / "examples" / "mlp"), "--gateway", f"tcp://127.0.0.1:{port}"], timeout=60)
    assert r.returncode == 1 and "AICFN_E_UNAVAILABLE" in r.stderr, r.stderr
    assert "packed" not in r.stderr, r.stderr


def test_deploy_packs_in_tmpdir_and_clears_what_killed_deploys_left(procs, tmp_path):
    # The snapshot is as large as the model: packed under $TMPDIR (not a fixed /tmp, often
    # a small tmpfs), removed afterwards, and the folder a killed deploy left (its
    # process gone) removed by the next deploy; a live deploy's folder, and another
    # host's (a shared TMPDIR), are left alone.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    t = tmp_path / "tmpdir"
    t.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())[:63] or "host"
    host += f"-{os.stat('/proc/self/ns/pid').st_ino}"  # and the pid namespace
    stale = t / f"aicfn-deploy-{host}-{dead.pid}-AbC123"
    stale.mkdir()
    (stale / "model.aicsnap").write_bytes(b"x" * 4096)
    live = t / f"aicfn-deploy-{host}-{os.getpid()}-XyZ789"
    live.mkdir()
    elsewhere = t / f"aicfn-deploy-otherhost-{dead.pid}-AbC123"  # a shared TMPDIR: not ours to judge
    elsewhere.mkdir()
    seen = []
    stop = threading.Event()

    def watch():  # the deploy's own folder, while it exists; bounded by stop and 150 s
        end = time.monotonic() + 150
        while not stop.is_set() and time.monotonic() < end:
            seen.extend(p.name for p in t.iterdir()
                        if p.name not in (stale.name, live.name, elsewhere.name) and p.name not in seen)
            time.sleep(0.005)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        r = run_cli(["deploy", ROOT / "examples" / "mlp", "--gateway", addr, "--json"], env={"TMPDIR": str(t)},
                    timeout=120)
    finally:
        stop.set()
        w.join(timeout=5)
    assert r.returncode == 0, r.stderr
    assert not stale.exists()
    assert live.exists()
    assert sorted(p.name for p in t.iterdir()) == sorted([live.name, elsewhere.name])  # its own is gone too
    assert any(n.startswith("aicfn-deploy-") for n in seen), seen


def test_cold_start_total_includes_the_handler_init(procs, tmp_path):
    # The worker times the handler's init after the model wait, apart from it: a cold
    # start's total holds both, also when the load takes longer than the init (a 64 MiB
    # model, stored: 6 ms or more to load; a 3 ms init).
    d = tmp_path / "slowinit"
    d.mkdir()
    bits = np.random.default_rng(6).integers(0, 2**32, 16 << 20, dtype=np.uint32)
    write_safetensors(d / "w.safetensors", {"w": bits.view(np.float32)})
    write_manifest(d, f"name: slowinit\nhandler: {handler('test_sleep')}\nmodel: w.safetensors\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", memory="256MiB",
                                  env={"AICFN_TEST_INIT_SLEEP_MS": "3"})
    deploy(addr, d)
    r = call(addr, invoke_msg("slowinit", [], rid=660001), timeout_ms=30000)
    assert r["ok"] and r["cold"], r
    (load_us,) = wait_rows(data, "SELECT load_us FROM invocations WHERE request_id = '660001'", (), 1)[0]
    (spawn, queue, init, total), = wait_rows(data, "SELECT spawn_us, queue_us, init_us, total_us FROM cold_starts "
                                                   "WHERE function = 'slowinit'", (), 1)
    assert init >= 3000, init
    assert total == spawn + queue + load_us + init, (spawn, queue, load_us, init, total)


def test_scale_to_zero_and_respawn(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", idle="1s")
    deploy(addr, ROOT / "examples" / "mlp")
    r = call(addr, invoke_msg("mlp", [mlp_input()]), timeout_ms=30000)
    assert r["ok"] and r["cold"]
    pool = workers(addr)
    assert len(pool) == 1
    pid = pool[0]["pid"]
    assert pid > 0

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie of the gateway counts as alive until reaped; read its state.
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True
        return False

    wait_for(gone, 15, interval=0.1, what="the idle worker to exit")
    wait_for(lambda: workers(addr) == [], 10, interval=0.1, what="an empty pool")
    r = call(addr, invoke_msg("mlp", [mlp_input(0.5)]), timeout_ms=30000)
    assert r["ok"] and r["cold"] is True
    pool = workers(addr)
    assert len(pool) == 1 and pool[0]["pid"] != pid
    rows = wait_rows(data, "SELECT spawn_us FROM cold_starts WHERE function='mlp' ORDER BY id", (), 2)
    assert len(rows) == 2 and all(s > 0 for (s,) in rows), rows


def test_worker_that_cannot_start_is_retried_with_back_off(procs, tmp_path):
    """--workers 1..1 with workers that die at start (no cuda:99 anywhere): the gateway
    starts them again after 100, 200, 400... ms, not at every maintenance tick, and a call
    that finds no worker says why."""
    addr, data, g = start_gateway(procs, tmp_path, workers="1..1", extra=("--device", "cuda:99"))
    t0 = time.monotonic()
    wait_for(lambda: g.stderr().count("exited with status") >= 2, 10, interval=0.05,
             what="two failed starts")
    deploy(addr, ROOT / "examples" / "echo")
    r = call(addr, invoke_msg("echo", [bytes_tensor("text", [b"x"])], deadline_ms=1500), timeout_ms=10000)
    assert not r["ok"], r
    assert "before they are ready" in r["error"]["message"] or "exited before it was ready" in \
        r["error"]["message"], r
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # a window of at least 3 s
    elapsed = time.monotonic() - t0
    starts = g.stderr().count("started worker")
    # 100 + 200 + 400 + 800 + 1600 ms of back-off: about 5 starts in 3 s (a tick-paced
    # retry made over 100); the window may run somewhat past 3 s on a loaded machine.
    assert 2 <= starts <= 4 + int(elapsed // 1.5), (starts, elapsed, g.stderr()[-2000:])
    assert "no local worker starts for 100 ms" in g.stderr()
    assert "no local worker starts for 400 ms" in g.stderr()


def test_call_waiting_for_a_worker_that_dies_at_start_is_routed_again(procs, tmp_path):
    """A call waits for a local worker that dies before it is ready (its socket's path is
    taken by a directory, so its listener fails): the call was never sent, so it is routed
    again, to the next worker started after the back-off, and succeeds."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, ROOT / "examples" / "echo")
    run_dir = Path(data) / "run"
    assert run_dir.is_dir(), "the run directory fell back to a temporary one: the test needs data/run"
    (run_dir / f"w{g.p.pid}-1.ipc").mkdir()  # the first local worker's listening path
    r = call(addr, invoke_msg("echo", [bytes_tensor("text", [b"again"])], deadline_ms=20000), timeout_ms=30000)
    assert r["ok"], (r, g.stderr()[-3000:])
    assert r["outputs"][0]["data"] == b"\x05\x00\x00\x00again", r
    err = g.stderr()
    assert "w1 died before it was ready" in err, err[-3000:]
    pool = workers(addr)
    assert [w["name"] for w in pool] == ["w2"], pool


def test_calls_read_the_registry_while_a_deploy_waits_for_the_database(procs, tmp_path):
    """An administrative write (here an rm) waiting for aicfn.db's write lock, which
    another process holds, does not hold up calls that must read the registry (a
    function not yet cached): they read on a connection of their own (WAL)."""
    addr, data, g = start_gateway(procs, tmp_path, workers="1..1")
    deploy(addr, ROOT / "examples" / "echo")
    deploy(addr, write_manifest(tmp_path / "echo2", f"name: echo2\nhandler: {handler('echo')}\n"))
    r = call(addr, invoke_msg("echo", [bytes_tensor("text", [b"warm"])]), timeout_ms=30000)
    assert r["ok"], r
    con = sqlite3.connect(str(data / "aicfn.db"), timeout=5, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # the write lock, as `aicfn keys create` takes it
    try:
        rm_reply = {}
        t = threading.Thread(target=lambda: rm_reply.update(call(addr, gw_msg("rm", ref="nosuch"),
                                                                 timeout_ms=20000)))
        t.start()
        time.sleep(0.5)  # the rm is on the admin thread, waiting for the lock
        t0 = time.monotonic()
        r = call(addr, invoke_msg("echo2", [bytes_tensor("text", [b"x"])]), timeout_ms=10000)
        took = time.monotonic() - t0
        assert r["ok"], r
        assert took < 2.0, f"a call waited {took:.2f} s behind an rm waiting for the database"
        # Nor does `status`, which any key may send: answered at once, never queued
        # behind the admin thread (a tenant polling it could fill that queue).
        t0 = time.monotonic()
        st = call(addr, gw_msg("status"), timeout_ms=3000)
        assert st["ok"] and time.monotonic() - t0 < 2.0, st
        assert t.is_alive(), "the rm did not wait for the lock: the test proves nothing"
    finally:
        con.execute("COMMIT")
        con.close()
    t.join(20)
    assert rm_reply.get("ok") is False and rm_reply["error"]["name"] == "AICFN_E_NOT_FOUND", rm_reply


def slow_fini_worker(procs, tmp_path, **gateway_args):
    """A gateway with one local worker serving `slowfini`, whose handler's fini takes 2.5 s
    and then writes the returned marker file; after one call, so the fini will run."""
    marker = tmp_path / "fini-done"
    env = dict(os.environ, AICFN_TEST_FINI_SLEEP_MS="2500", AICFN_TEST_FINI_FILE=str(marker))
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", env=env, **gateway_args)
    write_manifest(tmp_path / "slowfini", f"name: slowfini\nhandler: {handler('test_sleep')}\n")
    deploy(addr, tmp_path / "slowfini")
    r = call(addr, invoke_msg("slowfini", [tensor("x", np.arange(4, dtype="<f4"))]), timeout_ms=30000)
    assert r["ok"], r
    return addr, g, marker


def assert_finished_its_teardown(g, marker):
    """The worker exited with status 0 (not SIGKILLed) after its fini wrote the marker."""
    wait_for(lambda: "exited" in g.stderr(), 20, interval=0.1, what="the worker to exit")
    log = g.stderr()
    assert "exited with status 0" in log and "signal 9" not in log, log[-2000:]
    assert marker.read_text() == "fini\n"


def test_drained_worker_finishes_its_teardown(procs, tmp_path):
    """An idle worker asked to leave (scale to zero) closes its listener, then runs its
    handlers' fini: the gateway's next status poll finds the link gone, and must leave the
    worker the SIGTERM grace to finish rather than SIGKILL it."""
    addr, g, marker = slow_fini_worker(procs, tmp_path, idle="1s")
    assert_finished_its_teardown(g, marker)


def test_worker_stopped_from_outside_finishes_its_teardown(procs, tmp_path):
    """A local worker sent SIGTERM from outside the gateway (an operator, a process group or
    cgroup being stopped) drains, closes its listener and runs its handlers' fini; the
    gateway, seeing the link drop, signals it again: that second SIGTERM, after a clean
    drain, must not cut the fini short."""
    addr, g, marker = slow_fini_worker(procs, tmp_path)
    (pid,) = [w["pid"] for w in workers(addr)]
    os.kill(pid, signal.SIGTERM)
    assert_finished_its_teardown(g, marker)


def thread_switches(pid: int) -> dict:
    """Voluntary context switches so far per thread name of process `pid`: how often each
    thread went to sleep (waited), which is what a spinning thread does too often. The
    involuntary ones (preemptions) count the machine's load, not the thread's wake-ups."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (t / "comm").read_text().strip()
            lines = (t / "status").read_text().splitlines()
        except FileNotFoundError:  # the thread exited meanwhile
            continue
        n = sum(int(l.split()[1]) for l in lines if l.startswith("voluntary_ctxt"))
        out[comm] = out.get(comm, 0) + n
    return out


def test_function_versions_not_called_leave_the_cache(procs, tmp_path):
    """The gateway keeps in memory the function versions in use, not every version ever
    called: one not called for --function-cache-idle is dropped (functions_cached in its
    status) and read again from aicfn.db when called next, with the same result; one
    with a call in flight is never dropped."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", extra=["--function-cache-idle", "1s"])
    write_manifest(tmp_path / "slow", f"name: slow\nhandler: {handler('test_sleep')}\n")
    versions = [deploy(addr, tmp_path / "slow") for _ in range(3)]
    assert versions == [1, 2, 3]
    x = tensor("x", np.arange(3, dtype=np.float32))
    for v in versions:
        assert call(addr, {**invoke_msg("slow", [x]), "ver": v}, timeout_ms=20000)["ok"]
    assert gateway_status(addr)["functions_cached"] >= 3
    # A call to version 2 in flight for 3 s: versions 1 and 3 leave, 2 stays until it is done.
    slow = []
    t = threading.Thread(target=lambda: slow.append(
        call(addr, {**invoke_msg("slow", [x], params={"sleep_ms": "3000"}), "ver": 2}, timeout_ms=20000)))
    t.start()
    wait_for(lambda: gateway_status(addr)["functions_cached"] == 1, 10, interval=0.1,
             what="the idle versions to leave the cache")
    t.join(timeout=20)
    assert slow and slow[0]["ok"], slow
    wait_for(lambda: gateway_status(addr)["functions_cached"] == 0, 10, interval=0.1,
             what="the last version to leave the cache")
    for v in (3, 1):
        r = call(addr, {**invoke_msg("slow", [x]), "ver": v}, timeout_ms=20000)
        assert r["ok"] and np.array_equal(output(r, "x"), np.arange(3, dtype=np.float32)), r
    r = call(addr, invoke_msg("slow", [x]), timeout_ms=20000)  # the active version, by name
    assert r["ok"], r
    assert gateway_status(addr)["functions_cached"] == 2
    assert g.poll() is None


def test_cache_keeps_the_functions_of_resident_models(procs, tmp_path):
    """A function whose model is on a worker stays in the gateway's cache past
    --function-cache-idle: its scaling.idle_timeout is found there, and the model is
    unloaded when it is due (dropping the entry first left the model resident for good).
    Once the model is gone, the entry goes too."""
    model_fn(tmp_path / "lasting", "lasting", handler("echo"), "scaling: { idle_timeout: 3s }\n", seed=23)
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", extra=["--function-cache-idle", "1s"])
    deploy(addr, tmp_path / "lasting")
    r = call(addr, invoke_msg("lasting", [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
    assert r["ok"] and r["cold"], r
    t0 = time.monotonic()
    time.sleep(2)  # past the cache's idle time, before the model's
    assert gateway_status(addr)["functions_cached"] == 1
    wait_for(lambda: not any(m["function"] == "lasting" for w in workers(addr) for m in w["models"]), 10,
             interval=0.1, what="the idle model to be unloaded")
    assert time.monotonic() - t0 >= 2.5
    wait_for(lambda: gateway_status(addr)["functions_cached"] == 0, 10, interval=0.1,
             what="its entry to leave the cache")


def test_canary_takes_its_share_of_the_calls(procs, tmp_path):
    """`aicfn activate NAME:VER --canary P` sends P % of the calls to the plain NAME to VER
    (the rest to the active version, which stays so); NAME:VER calls go where they say;
    `ls` shows the canary; activating VER ends it and takes every call."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    write_manifest(tmp_path / "cfn", f"name: cfn\nhandler: {handler('echo')}\n")
    assert deploy(addr, tmp_path / "cfn") == 1
    r = run_cli(["deploy", str(tmp_path / "cfn"), "--gateway", addr, "--no-activate", "--json"], timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["version"] == 2, r.stderr
    r = run_cli(["activate", "cfn:2", "--canary", "30", "--gateway", addr], timeout=10)
    assert r.returncode == 0 and "30% of the calls to cfn go to cfn:2" in r.stdout, (r.stdout, r.stderr)
    r = run_cli(["ls", "--gateway", addr, "--json"], timeout=10)
    row = json.loads(r.stdout)[0]
    assert row["active_version"] == 1 and row["canary"] == {"version": 2, "percent": 30}, row
    r = run_cli(["activate", "cfn:1", "--canary", "30", "--gateway", addr], timeout=10)
    assert r.returncode == 1 and "active version already" in r.stderr, r.stderr
    x = tensor("x", np.arange(2, dtype=np.float32))

    def versions_served(n, fn="cfn"):
        before = db_rows(data, "SELECT count(*) FROM invocations")[0][0]
        for _ in range(n):
            assert call(addr, invoke_msg(fn, [x]), timeout_ms=20000)["ok"]
        wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations")[0][0] == before + n, 15,
                 what="the calls' ledger rows")
        rows = db_rows(data, "SELECT version, count(*) FROM invocations WHERE id > (SELECT max(id) - ? FROM "
                             "invocations) GROUP BY version", (n,))
        return dict(rows)

    served = versions_served(200)
    assert set(served) == {1, 2} and 45 <= served[2] <= 75, served  # 60 expected: 30 of every 100
    assert call(addr, {**invoke_msg("cfn", [x]), "ver": 1}, timeout_ms=20000)["ok"]
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations")[0][0] == 201, 15, what="cfn:1's row")
    r = run_cli(["activate", "cfn:2", "--gateway", addr], timeout=10)
    assert r.returncode == 0, r.stderr
    r = run_cli(["ls", "--gateway", addr, "--json"], timeout=10)
    row = json.loads(r.stdout)[0]
    assert row["active_version"] == 2 and row["canary"] is None, row
    assert versions_served(20) == {2: 20}


def test_canary_shares_are_per_function_and_refusals_name_the_canary(procs, tmp_path):
    """Each function's canary gets its own share whatever other calls interleave (two 1 %
    canaries, calls alternating between them, each gets 2 of 200), and a call refused at
    the canary's version (its max_request_bytes here) is recorded against that version."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    for name, limit in (("ca", "8MiB"), ("cb", "4")):
        write_manifest(tmp_path / name, f"name: {name}\nhandler: {handler('echo')}\n")
        assert deploy(addr, tmp_path / name) == 1
        write_manifest(tmp_path / name, f"name: {name}\nhandler: {handler('echo')}\n"
                                        f"limits: {{ max_request_bytes: {limit} }}\n")
        r = run_cli(["deploy", str(tmp_path / name), "--gateway", addr, "--no-activate"], timeout=120)
        assert r.returncode == 0, r.stderr
        r = run_cli(["activate", f"{name}:2", "--canary", "1", "--gateway", addr], timeout=10)
        assert r.returncode == 0, r.stderr
    x = tensor("x", np.arange(2, dtype=np.float32))  # 8 bytes: over cb:2's limit
    codes = {"ca": [], "cb": []}
    for i in range(400):
        fn = "ca" if i % 2 == 0 else "cb"
        codes[fn].append(call(addr, invoke_msg(fn, [x]), timeout_ms=20000).get("error", {}).get("code", 0))
    assert codes["ca"].count(0) == 200 and codes["cb"].count(E_TOO_LARGE) == 2, codes
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations")[0][0] == 400, 15, what="the ledger rows")
    rows = dict(((f, v, s), n) for f, v, s, n in db_rows(
        data, "SELECT function, version, status, count(*) FROM invocations GROUP BY function, version, status"))
    assert rows == {("ca", 1, "AICFN_OK"): 198, ("ca", 2, "AICFN_OK"): 2, ("cb", 1, "AICFN_OK"): 198,
                    ("cb", 2, "AICFN_E_TOO_LARGE"): 2}, rows


def test_canary_is_refused_by_a_gateway_without_canaries(tmp_path):
    """A gateway older than canaries would ignore `canary` and activate the version for
    every call: the CLI asks its features first and sends nothing."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    rep = pynng.Rep0(listen=addr, recv_timeout=200)
    seen, stop = [], threading.Event()

    def serve():  # bounded: stops when told, each receive times out
        while not stop.is_set():
            try:
                req = msgpack.unpackb(rep.recv(), raw=False)
            except pynng.Timeout:
                continue
            seen.append(req.get("t"))
            r = {"v": PROTOCOL_VERSION, "id": req["id"], "ok": True,
                 "json": json.dumps({"features": ["deploy_id", "deploy_activate", "worker_keys"]})}
            rep.send(msgpack.packb(r))

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        r = run_cli(["activate", "f:2", "--canary", "10", "--gateway", addr], timeout=30)
    finally:
        stop.set()
        th.join(timeout=5)
        rep.close()
    assert r.returncode == 1 and "has no canaries" in r.stderr, (r.returncode, r.stderr)
    assert seen == ["status"], seen


def test_removed_versions_no_longer_hold_their_model(procs, tmp_path):
    """Versions sharing a model: once one with idle_timeout 0 (never) is removed, the
    remaining version's idle_timeout unloads the model; the removed version's entry (kept
    only while it spoke for the model) neither blocks the unload nor stays cached."""
    d = model_fn(tmp_path / "m", "m", handler("echo"), "scaling: { idle_timeout: 0 }\n", seed=31)
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", extra=["--function-cache-idle", "1s"])
    x = tensor("x", np.arange(3, dtype=np.float32))
    assert deploy(addr, d) == 1
    assert call(addr, invoke_msg("m", [x]), timeout_ms=30000)["ok"]
    write_manifest(d, f"name: m\nhandler: {handler('echo')}\nmodel: w.safetensors\nscaling: {{ idle_timeout: 2s }}\n")
    assert deploy(addr, d) == 2  # the same weights: the same model
    assert call(addr, invoke_msg("m", [x]), timeout_ms=30000)["ok"]
    r = run_cli(["rm", "m:1", "--gateway", addr], timeout=30)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not any(m["function"] == "m" for w in workers(addr) for m in w["models"]), 15,
             interval=0.1, what="the model to be unloaded after m:2's idle_timeout")


def test_idle_gateway_sleeps(procs, tmp_path):
    # A gateway with a live worker and no calls must not spin: the maintenance thread ticks
    # every 250 ms (every 20 ms only while calls run or queue, or workers start or die)
    # and the pool thread sleeps on the workers' pidfds. They used to wake 50 and 100
    # times a second.
    addr, data, g = start_gateway(procs, tmp_path, workers="1..1")
    deploy(addr, ROOT / "examples" / "echo")
    x = tensor("x", np.arange(4, dtype=np.int32))
    r = call(addr, invoke_msg("echo", [x]), timeout_ms=30000)
    assert r["ok"], r
    time.sleep(0.5)  # let the call's bookkeeping settle
    before = thread_switches(g.p.pid)
    time.sleep(2.0)
    after = thread_switches(g.p.pid)
    assert {"aicfn:maint", "aicfn:pool"} <= set(before), sorted(before)
    woke = {name: after[name] - before[name] for name in ("aicfn:maint", "aicfn:pool")}
    assert woke["aicfn:maint"] <= 20 and woke["aicfn:pool"] <= 4, woke
    # Asleep, it still answers at once.
    r = call(addr, invoke_msg("echo", [x]), timeout_ms=10000)
    assert r["ok"] and r["cold"] is False, r


def test_workers_table_follows_the_pool_to_scale_to_zero(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", idle="2s")
    deploy(addr, ROOT / "examples" / "echo")
    t_before_us = time.time_ns() // 1000
    r = call(addr, invoke_msg("echo", [tensor("x", np.arange(4, dtype=np.int32))]), timeout_ms=30000)
    assert r["ok"], r
    # What a client sees of an invoke reply is exactly docs/protocol.md's reply table
    # (section 8: forwarded unchanged, the worker's `st` summary included).
    assert {"v", "id", "ok", "outputs", "timing", "st"} <= set(r) <= {"v", "id", "ok", "outputs", "cold", "timing",
                                                                      "batch", "cs", "st"}, sorted(r)
    assert {"budget", "used", "free", "queued", "inflight", "draining", "models"} <= set(r["st"]), r["st"]
    pool = workers(addr)
    assert len(pool) == 1
    w = pool[0]
    # `aicfn workers --json`: pid, state, start and last status times (wall-clock µs).
    assert w["pid"] > 0 and w["state"] == "ready" and w["local"] is True
    assert t_before_us - 5_000_000 <= w["started_us"] <= w["last_seen_us"] <= time.time_ns() // 1000 + 5_000_000
    # The row mirrors the live worker, committed while the gateway runs.
    row = wait_worker_row(data, w["name"], "ready")
    assert row["pid"] == w["pid"] and row["address"] == w["address"] and row["device"] == w["device"]
    assert row["budget_bytes"] == w["budget_bytes"] > 0
    assert row["started_us"] == w["started_us"] and row["last_seen_us"] >= row["started_us"]
    # The status polls (every 1 s) refresh last_seen_us, also while the worker drains.
    first_seen = row["last_seen_us"]
    wait_for(lambda: (worker_row(data, w["name"]) or {}).get("last_seen_us", 0) > first_seen, 10, interval=0.1,
             what="a status poll to refresh last_seen_us")
    # Idle for 2 s: drained (scale to zero); once it exits, its row says so.
    row = wait_worker_row(data, w["name"], "exited", timeout=20)
    assert row["pid"] == w["pid"]
    wait_for(lambda: not Path(f"/proc/{w['pid']}").exists() or
             Path(f"/proc/{w['pid']}/stat").read_text().split()[2] == "Z", 10, what="the drained worker to exit")
    assert workers(addr) == []
    # The next call starts a new worker with a new name: the old row is kept as it was.
    r = call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.int32))]), timeout_ms=30000)
    assert r["ok"], r
    w2 = workers(addr)[0]
    assert w2["name"] != w["name"] and w2["pid"] != w["pid"]
    assert wait_worker_row(data, w2["name"], "ready")["pid"] == w2["pid"]
    assert worker_row(data, w["name"])["state"] == "exited"
    # A clean stop of the gateway drains its workers: exited, not lost.
    assert g.stop(timeout=20) == 0
    assert worker_row(data, w2["name"])["state"] == "exited"


def test_workers_table_lost_worker_and_no_row_per_call(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, ROOT / "examples" / "echo")
    x = tensor("x", np.arange(4, dtype=np.int32))
    assert call(addr, invoke_msg("echo", [x]), timeout_ms=30000)["ok"]
    w = workers(addr)[0]
    wait_worker_row(data, w["name"], "ready")

    # last_seen_us is refreshed once per status poll, never per call: 200 calls add
    # their 200 ledger rows and only about one worker row per second.
    def committed_settled():
        a = gateway_status(addr)["ledger_committed"]
        time.sleep(0.3)  # > the ledger's 100 ms flush interval
        b = gateway_status(addr)["ledger_committed"]
        return b if a == b else None

    before = wait_for(committed_settled, 10, interval=0.0, what="the ledger to settle")
    t0 = time.monotonic()
    for _ in range(200):
        assert call(addr, invoke_msg("echo", [x]), timeout_ms=10000)["ok"]
    after = wait_for(lambda: (lambda c: c if c is not None and c >= before + 200 else None)(committed_settled()),
                     10, interval=0.0, what="200 ledger rows")
    took = time.monotonic() - t0
    worker_rows = after - before - 200
    assert 0 <= worker_rows <= took + 3, (worker_rows, took)

    # kill -9: the worker is lost, not exited; its replacement gets a new name and row.
    os.kill(w["pid"], signal.SIGKILL)
    row = wait_worker_row(data, w["name"], "lost")
    assert row["pid"] == w["pid"]
    r = call(addr, invoke_msg("echo", [x]), timeout_ms=30000)
    assert r["ok"], r
    w2 = workers(addr)[0]
    assert w2["name"] != w["name"]
    assert wait_worker_row(data, w2["name"], "ready")["pid"] == w2["pid"]
    assert worker_row(data, w["name"])["state"] == "lost"
    # The lost worker's socket and fault note are gone from the run directory; the new
    # worker's socket is there.
    sock = lambda x: x["address"].rsplit("/", 1)[1]  # noqa: E731
    run = sorted(p.name for p in (data / "run").iterdir())
    assert [n for n in run if n.endswith(".ipc")] == [sock(w2)], run
    assert not any(n.startswith(sock(w)[:-len("ipc")]) for n in run), run
    # `aicfn workers --history` reads the rows back, newest first.
    h = run_cli(["workers", "--history", "--data-dir", data, "--json"])
    assert h.returncode == 0, h.stderr
    hist = json.loads(h.stdout)
    assert [(x["name"], x["state"], x["pid"]) for x in hist] == [(w2["name"], "ready", w2["pid"]),
                                                                (w["name"], "lost", w["pid"])]
    h = run_cli(["workers", "--history", "--data-dir", data])
    assert h.returncode == 0 and "lost" in h.stdout and w["name"] in h.stdout, h
    # A device name a worker reported is shown safely: no escape sequence reaches the
    # terminal, and bytes that are not UTF-8 still make valid JSON.
    con = sqlite3.connect(str(data / "aicfn.db"), timeout=5)
    with con:
        con.execute("UPDATE workers SET device = CAST(? AS BLOB) WHERE id = ?", (b"\x1b]0;pwned\x07gpu\xff", w["name"]))
    con.close()
    h = subprocess.run([str(aicfn_bin()), "workers", "--history", "--data-dir", str(data)], capture_output=True,
                       timeout=30)
    assert h.returncode == 0 and b"\x1b" not in h.stdout and b"\x07" not in h.stdout, h
    assert b"?]0;pwned?gpu" in h.stdout, h.stdout
    h = run_cli(["workers", "--history", "--data-dir", data, "--json"])
    assert h.returncode == 0, h.stderr
    assert [x["device"] for x in json.loads(h.stdout) if x["name"] == w["name"]] == ["\x1b]0;pwned\x07gpu?"], h.stdout


def test_kill_worker_with_calls_in_flight(procs, tmp_path):
    sleep_so = handler("test_sleep")
    write_manifest(tmp_path / "slowi", f"name: slowi\nhandler: {sleep_so}\nlimits: {{ timeout: 20s }}\nidempotent: true\n")
    write_manifest(tmp_path / "slown", f"name: slown\nhandler: {sleep_so}\nlimits: {{ timeout: 20s }}\nidempotent: false\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2")
    deploy(addr, tmp_path / "slowi")
    deploy(addr, tmp_path / "slown")
    counts = tmp_path / "count.txt"
    counts.write_text("")
    results = {}
    ids = {"slowi": [880001, 880002, 880003], "slown": [880011, 880012, 880013]}

    def one(fn, rid, i):
        m = invoke_msg(fn, [tensor("x", np.array([i], dtype=np.float32))],
                       params={"sleep_ms": "1500", "count_file": str(counts)}, rid=rid)
        results[rid] = call(addr, m, timeout_ms=60000)

    ts = []
    for fn in ("slowi", "slown"):
        for i, rid in enumerate(ids[fn]):
            ts.append(threading.Thread(target=one, args=(fn, rid, i + (10 if fn == "slown" else 0))))
    for t in ts:
        t.start()
    # Wait until both functions have a call executing, then kill -9 the worker(s).
    wait_for(lambda: {"880001", "880011"} & set(counts.read_text().split()) and
             len(set(counts.read_text().split()) & {str(x) for x in ids["slowi"]}) >= 1 and
             len(set(counts.read_text().split()) & {str(x) for x in ids["slown"]}) >= 1, 20,
             what="calls of both functions running")
    pool = workers(addr)
    assert pool
    for w in pool:
        os.kill(w["pid"], signal.SIGKILL)
    for t in ts:
        t.join(timeout=60)
    assert len(results) == 6
    for rid in ids["slowi"]:
        assert results[rid]["ok"], results[rid]
    lost = [rid for rid in ids["slown"] if not results[rid]["ok"]]
    assert lost, "a non-idempotent call was in flight when its worker died"
    for rid in lost:
        assert results[rid]["error"]["code"] == E_WORKER_LOST, results[rid]
    lines = counts.read_text().split()
    for rid in ids["slown"]:
        assert lines.count(str(rid)) <= 1, (rid, lines)       # never run twice
    for rid in ids["slowi"]:
        assert 1 <= lines.count(str(rid)) <= 2, (rid, lines)  # at most the killed run + one retry
    # One ledger row per call.
    want = [str(x) for x in ids["slowi"] + ids["slown"]]
    marks = ",".join("?" * len(want))
    wait_for(lambda: db_rows(data, f"SELECT COUNT(*) FROM invocations WHERE request_id IN ({marks})", want)[0][0] == 6,
             10, what="6 ledger rows")
    rows = db_rows(data, f"SELECT request_id, COUNT(*) FROM invocations WHERE request_id IN ({marks}) "
                         "GROUP BY request_id", want)
    assert all(n == 1 for _, n in rows) and len(rows) == 6
    lost_rows = db_rows(data, f"SELECT status FROM invocations WHERE request_id IN ({','.join('?' * len(lost))})",
                        [str(x) for x in lost])
    assert all(s == "AICFN_E_WORKER_LOST" for (s,) in lost_rows)


def test_kill_gateway_after_deploy(procs, tmp_path):
    port = free_port()
    addr, data, g = start_gateway(procs, tmp_path, port=port)
    assert deploy(addr, ROOT / "examples" / "echo") == 1
    assert call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.int32))]), timeout_ms=30000)["ok"]
    w = workers(addr)[0]
    wpid = w["pid"]
    assert wait_worker_row(data, w["name"], "ready")["pid"] == wpid
    g.p.kill()
    g.p.wait(timeout=10)
    assert worker_row(data, w["name"])["state"] == "ready"  # nobody left to say otherwise
    # Its worker dies with it (PR_SET_PDEATHSIG), leaving no orphan.
    wait_for(lambda: not Path(f"/proc/{wpid}").exists() or Path(f"/proc/{wpid}/stat").read_text().split()[2] == "Z",
             10, what="the dead gateway's worker to exit")
    left = list((data / "run").glob("*.ipc"))
    assert left  # SIGKILL left the worker's socket file behind
    addr2, _, g2 = start_gateway(procs, tmp_path, port=port, data=data, name="gateway2")
    # The new gateway marked the dead one's worker lost before it answered anything.
    assert worker_row(data, w["name"])["state"] == "lost"
    ls = json.loads(run_cli(["ls", "--gateway", addr2, "--json"]).stdout)
    assert [x["name"] for x in ls] == ["echo"]
    r = call(addr2, invoke_msg("echo", [tensor("x", np.arange(5, dtype=np.int32))]), timeout_ms=30000)
    assert r["ok"] and np.array_equal(output(r, "x"), np.arange(5, dtype=np.int32))
    # Its own worker continues the numbering: the dead gateway's row stays as it is.
    w2 = workers(addr2)[0]
    assert w2["name"] != w["name"]
    assert wait_worker_row(data, w2["name"], "ready")["pid"] == w2["pid"]
    assert worker_row(data, w["name"])["state"] == "lost"
    assert db_rows(data, "PRAGMA integrity_check") == [("ok",)]
    # The restarted gateway removed the dead one's worker sockets.
    assert all(not p.exists() for p in left)


def test_hostile_clients(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path)
    deploy(addr, ROOT / "examples" / "echo")
    host, port = "127.0.0.1", int(addr.rsplit(":", 1)[1])
    stop = threading.Event()
    good = {"ok": 0, "bad": 0}
    errors = []

    def steady():
        try:
            for _ in range(100000):  # bounded in count, and by `stop`
                if stop.is_set():
                    return
                r = call(addr, invoke_msg("echo", [tensor("x", np.arange(4, dtype=np.float32))]),
                         timeout_ms=20000)
                good["ok" if r.get("ok") else "bad"] += 1
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(e))

    # A warm worker first, so that the steady client's calls run alongside the attacks
    # below rather than one cold start outlasting them all.
    assert call(addr, invoke_msg("echo", [tensor("x", np.arange(4, dtype=np.float32))]), timeout_ms=20000)["ok"]
    t = threading.Thread(target=steady)
    t.start()
    try:
        wait_for(lambda: good["ok"] > 0 or errors, 20, what="the steady client's first reply")
        before = good["ok"]
        # 1. 100 connections that drop during the SP handshake.
        for i in range(100):
            s = socket.create_connection((host, port), timeout=5)
            if i % 2:
                s.sendall(b"\x00SP\x00")
            s.close()
        # 2. A length header announcing 2^40 bytes: refused (connection closed), nothing allocated.
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"\x00SP\x00\x00\x30\x00\x00")
        s.settimeout(5)
        peer = s.recv(8)
        assert len(peer) == 8
        s.sendall(struct.pack(">Q", 1 << 40) + b"\x00" * 64)
        closed = False
        try:
            closed = s.recv(16) == b""
        except (ConnectionResetError, socket.timeout):
            closed = True
        s.close()
        assert closed
        rss_kb = int([l for l in Path(f"/proc/{g.p.pid}/status").read_text().splitlines()
                      if l.startswith("VmRSS")][0].split()[1])
        assert rss_kb < 512 * 1024
        # 3. Malformed msgpack gets an error reply; the connection and the gateway stay up.
        with pynng.Req0(recv_timeout=5000, send_timeout=5000) as q:
            q.dial(addr, block=True)
            for junk in (b"\xc1", b"\x85\xa1v", b"\xdf\xff\xff\xff\xff", b"\x81\xa1v\x01" + b"\x00" * 3):
                q.send(junk)
                r = __import__("msgpack").unpackb(q.recv(), raw=False)
                assert r["ok"] is False and r["error"]["code"] == E_PROTOCOL
            # A request without an id, invoke or administrative: refused, naming the key.
            for kind in ("invoke", "ls", "status"):
                q.send(__import__("msgpack").packb({"v": 1, "t": kind, "fn": "echo", "inputs": []}))
                r = __import__("msgpack").unpackb(q.recv(), raw=False)
                assert r["ok"] is False and r["error"]["code"] == E_PROTOCOL, (kind, r)
                assert f"'{kind}' request without key 'id'" in r["error"]["message"], (kind, r)
        # The listener still accepts and serves.
        r = call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.float32))]), timeout_ms=20000)
        assert r["ok"]
        # The steady client keeps being served: 20 more replies than before the attacks.
        wait_for(lambda: good["ok"] >= before + 20 or errors or not t.is_alive(), 20,
                 what="20 more replies to the steady client")
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive(), "the steady client is stuck"
    assert not errors, (errors, good)
    assert good["ok"] >= before + 20 and good["bad"] == 0, (before, good)
    assert g.poll() is None


def test_sigterm_with_requests_queued_exits(procs, tmp_path):
    """SIGTERM while a peer keeps requests queued beyond the front's contexts and replies
    flowing: the gateway drains and exits cleanly within 10 s. Before, NNG 1.5.2's
    nng_close hung for ever here in 2 of 3 runs (rpc_server_destroy now stops and closes
    its contexts first, nng #1813), and most other runs took 30 s: a worker started for
    the load and stopped before its link connected kept its first status poll queued
    until the poll's deadline (a dead worker's calls now fail at once). The peer is raw
    TCP speaking SP as a REQ socket, pipelining invocations of echo."""
    addr, data, g = start_gateway(procs, tmp_path)
    deploy(addr, ROOT / "examples" / "echo")
    assert call(addr, invoke_msg("echo", [tensor("x", np.arange(4, dtype=np.float32))]), timeout_ms=20000)["ok"]
    s = socket.create_connection(("127.0.0.1", int(addr.rsplit(":", 1)[1])), timeout=5)
    s.sendall(b"\x00SP\x00\x00\x30\x00\x00")  # a REQ peer
    peer = b""
    while len(peer) < 8:
        chunk = s.recv(8 - len(peer))
        assert chunk, "the gateway closed the connection during the handshake"
        peer += chunk
    body = __import__("msgpack").packb(invoke_msg("echo", [tensor("x", np.arange(4, dtype=np.float32))]),
                                       use_bin_type=True)
    stop = threading.Event()
    replies = [0]

    def reader():
        buf = b""
        while not stop.is_set():
            try:
                chunk = s.recv(65536)
            except (socket.timeout, OSError):
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8 and len(buf) >= 8 + struct.unpack(">Q", buf[:8])[0]:
                n = struct.unpack(">Q", buf[:8])[0]
                buf = buf[8 + n:]
                replies[0] += 1

    def writer():
        sent = 0
        while not stop.is_set() and sent < 200000:  # bounded in count, and by `stop`
            frames = b"".join(struct.pack(">QI", 4 + len(body), 0x80000000 | (sent + i + 1)) + body
                              for i in range(50))
            try:
                s.sendall(frames)
            except OSError:
                return
            sent += 50

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 20
        while replies[0] < 500 and time.time() < deadline:
            time.sleep(0.01)
        assert replies[0] >= 500, (replies, g.stderr()[-3000:])
        g.signal(signal.SIGTERM)
        try:
            rc = g.wait(timeout=10)
        except Exception:  # noqa: BLE001 - reported by the assertion below
            rc = None
        assert rc == 0, (f"gateway did not exit cleanly within 10 s of SIGTERM (rc {rc}); {replies[0]} replies; "
                         f"its log ends: {g.stderr()[-3000:]}")
    finally:
        stop.set()
        s.close()
        for t in threads:
            t.join(timeout=30)


def test_protocol_client_from_docs(procs, tmp_path):
    """The client written only from docs/protocol.md invokes mlp through the gateway."""
    client = ROOT / "tests" / "e2e" / "protocol_client.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("protocol_client", client)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    addr, data, g = start_gateway(procs, tmp_path)
    deploy(addr, ROOT / "examples" / "mlp")
    # Two inputs, so that the second call is warm on the worker and not a response-cache hit.
    x1, x2 = mlp_x(1.0), mlp_x(2.0)
    with mod.Client(addr) as c:
        first = c.invoke("mlp", {"x": x1})
        second = c.invoke("mlp", {"x": x2})
        with pytest.raises(mod.AicfnError) as ei:
            c.invoke("no-such-function", {"x": x1})
    assert first.cold and not second.cold
    assert not first.raw.get("cached") and not second.raw.get("cached"), (first.raw, second.raw)
    assert ei.value.code == 6
    # Against an independent numpy forward pass of the example's weights.
    for rep, x in ((first, x1), (second, x2)):
        assert np.allclose(np.asarray(rep.outputs["logits"], dtype=np.float64), mlp_reference(x), rtol=1e-4,
                           atol=1e-4)


def test_remote_worker_registers(procs, tmp_path):
    from conftest import aicfn_bin
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, ROOT / "examples" / "echo")
    # No local pool and no worker yet: a call waits (bounded by its deadline) and times out.
    r = call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.float32))], deadline_ms=300),
             timeout_ms=10000)
    assert not r["ok"] and r["error"]["code"] == 9, r
    waddr = f"tcp://127.0.0.1:{free_port()}"
    w = procs.start([aicfn_bin(), "worker", "--listen", waddr, "--device", "host", "--memory", "64MiB",
                     "--id", "remote1", "--gateway", addr, "--cache-dir", tmp_path / "cache"], name="remote")
    wait_for(lambda: any(x["name"] == "remote1" and x["state"] == "ready" for x in workers(addr)), 15,
             interval=0.05, what="the remote worker to register")
    r = call(addr, invoke_msg("echo", [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=20000)
    assert r["ok"] and np.array_equal(output(r, "x"), np.arange(3, dtype=np.float32))
    pool = workers(addr)
    assert [x["name"] for x in pool] == ["remote1"] and pool[0]["local"] is False
    # Its workers-table row: the registered name, no pid (not the gateway's child).
    row = wait_worker_row(data, "remote1", "ready")
    assert row["pid"] is None and row["address"] == waddr and row["last_seen_us"] >= row["started_us"] > 0

    def register(name, waddr2):
        return call(addr, {"v": PROTOCOL_VERSION, "t": "register", "id": next_id(), "addr": waddr2,
                           "name": name}, timeout_ms=5000)

    # One live worker per name (the row's key): another address under a live worker's name
    # is refused as INVALID (two workers with one --id), not EXISTS, which tells a worker
    # that the gateway knows it (docs/protocol.md §8); w<N> names belong to local workers.
    r = register("remote1", f"tcp://127.0.0.1:{free_port()}")
    assert not r["ok"] and r["error"]["code"] == 1 and "already named 'remote1'" in r["error"]["message"], r
    r = register("remote1", waddr)  # the same worker again: a renewal
    assert not r["ok"] and r["error"]["code"] == 20, r
    r = register("w5", f"tcp://127.0.0.1:{free_port()}")
    assert not r["ok"] and r["error"]["code"] == 1, r
    assert [x["name"] for x in workers(addr)] == ["remote1"]


def test_crash_twice_backs_off_that_request_only(procs, tmp_path):
    write_manifest(tmp_path / "crashy", f"name: crashy\nhandler: {handler('test_crash')}\nidempotent: true\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2")
    deploy(addr, tmp_path / "crashy")
    deploy(addr, ROOT / "examples" / "echo")
    x = tensor("x", np.arange(3, dtype=np.float32))
    # Crashes its worker, is retried once on another, crashes it too: WORKER_LOST.
    r = call(addr, invoke_msg("crashy", [x], params={"crash": "1"}), timeout_ms=30000)
    assert not r["ok"] and r["error"]["code"] == E_WORKER_LOST, r
    # The same request is now refused at once (back-off), not run a third time.
    r = call(addr, invoke_msg("crashy", [x], params={"crash": "1"}), timeout_ms=30000)
    assert not r["ok"] and r["error"]["code"] == 10 and "crashed" in r["error"]["message"], r
    # Other requests of the function, and other functions, are unaffected.
    r = call(addr, invoke_msg("crashy", [x]), timeout_ms=30000)
    assert r["ok"] and np.array_equal(output(r, "x"), np.arange(3, dtype=np.float32))
    r = call(addr, invoke_msg("echo", [x]), timeout_ms=30000)
    assert r["ok"]


def test_copy_that_waited_while_its_request_crashed_twice_is_refused(procs, tmp_path):
    """The crash back-off also holds for copies of the request that were already waiting
    when it began: a copy queued behind a full worker while another copy crashes it a
    second time is refused (AICFN_E_UNAVAILABLE) when its turn comes, not run a third time.
    56 calls of a slow serial function fill the only worker; copies A and B of a request
    that crashed once queue behind them; A goes first when a slot frees and crashes the
    worker; B waits for the replacement and is refused there."""
    addr, g, x = sleep_fn_gateway(procs, tmp_path, "busy", "60s", "1..1")
    deploy(addr, write_manifest(tmp_path / "crashy", f"name: crashy\nhandler: {handler('test_crash')}\n"))
    crash = invoke_msg("crashy", [x], params={"crash": "1"})
    r = call(addr, crash, timeout_ms=30000)
    assert not r["ok"] and r["error"]["code"] == E_WORKER_LOST, r
    wait_for(lambda: [w["state"] for w in workers(addr)] == ["ready"], 20, interval=0.05,
             what="the replacement worker")
    results = {}

    def one(key, msg):
        results[key] = call(addr, msg, timeout_ms=60000)

    fill = [threading.Thread(target=one, args=(i, invoke_msg("busy", [x], params={"sleep_ms": "2000"})))
            for i in range(56)]
    for t in fill:
        t.start()
    wait_for(lambda: gateway_status(addr)["in_flight"] >= 56, 10, interval=0.02, what="56 calls on the worker")
    copies = []
    for key in ("A", "B"):
        copies.append(threading.Thread(target=one, args=(key, dict(crash, id=next_id()))))
        copies[-1].start()
        wait_for(lambda: gateway_status(addr)["queued"] >= len(copies), 5, interval=0.01, what=f"copy {key} queued")
    for t in fill + copies:
        t.join(timeout=60)
    assert not results["A"]["ok"] and results["A"]["error"]["code"] == E_WORKER_LOST, results["A"]
    assert not results["B"]["ok"] and results["B"]["error"]["code"] == 10, results["B"]
    assert "crashed its worker 2 times" in results["B"]["error"]["message"], results["B"]
    assert g.stderr().count("the handler of crashy:1 crashed it") == 2


def test_crash_is_charged_to_the_faulting_call_alone(procs, tmp_path):
    """A handler that aborts names, through its worker's fault note, the call it ran: the
    crash is charged to that request alone. A call of another function in flight on the
    same worker (not idempotent: it fails with WORKER_LOST) is a bystander, and after two
    such crashes it is still accepted while the crashing request is refused."""
    sleep_so = handler("test_sleep")
    write_manifest(tmp_path / "slow", f"name: slow\nhandler: {sleep_so}\nlimits: {{ timeout: 20s }}\n")
    write_manifest(tmp_path / "crashy", f"name: crashy\nhandler: {handler('test_crash')}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, tmp_path / "slow")
    deploy(addr, tmp_path / "crashy")
    counts = tmp_path / "count.txt"
    x = tensor("x", np.arange(3, dtype=np.float32))
    slow_params = {"sleep_ms": "1500", "count_file": str(counts)}
    for round_ in range(2):
        counts.write_text("")
        res = {}
        t = threading.Thread(target=lambda: res.update(
            r=call(addr, invoke_msg("slow", [x], params=slow_params), timeout_ms=30000)))
        t.start()
        wait_for(lambda: counts.read_text().strip() != "", 20, what="the slow call running")
        r = call(addr, invoke_msg("crashy", [x], params={"crash": "1"}), timeout_ms=30000)
        assert not r["ok"] and r["error"]["code"] == E_WORKER_LOST, r
        t.join(timeout=30)
        assert not t.is_alive()
        assert not res["r"]["ok"] and res["r"]["error"]["code"] == E_WORKER_LOST, res["r"]
    r = call(addr, invoke_msg("slow", [x], params=slow_params), timeout_ms=30000)
    assert r["ok"], r
    r = call(addr, invoke_msg("crashy", [x], params={"crash": "1"}), timeout_ms=30000)
    assert not r["ok"] and r["error"]["code"] == 10 and "crashed its worker 2 times" in r["error"]["message"], r
    assert "the handler of crashy:1 crashed it (signal 6)" in g.stderr()


def test_tenant_whose_calls_keep_crashing_a_function_is_refused_it(procs, tmp_path):
    """Crash back-off per request is evaded by changing one byte of it. A tenant whose
    calls crashed a function's workers 5 times (AICFN_CRASH_TENANT_MAX), each with a
    request of its own, is refused that function for 60 s, whatever it sends; another
    tenant is still served, and the refused tenant may still call other functions."""
    data = tmp_path / "data"
    data.mkdir()
    admin, mallory, acme = create_key(data, "ops", "--admin"), create_key(data, "mallory"), create_key(data, "acme")
    write_manifest(tmp_path / "crashy", f"name: crashy\nhandler: {handler('test_crash')}\n")
    addr = f"tcp://127.0.0.1:{free_port()}"
    g = procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..1",
                     "--worker-memory", "64MiB", "--device", "host"], name="gateway")
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": admin}, timeout_ms=500).get("ok"),
             15, interval=0.05, what="the gateway")
    for d in (tmp_path / "crashy", ROOT / "examples" / "echo"):
        r = run_cli(["deploy", str(d), "--gateway", addr], env={"AICFN_KEY": admin}, timeout=120)
        assert r.returncode == 0, r.stderr
    x = tensor("x", np.arange(3, dtype=np.float32))

    def invoke(key, fn, params=None):
        m = invoke_msg(fn, [x], params=params)
        m["key"] = key
        return call(addr, m, timeout_ms=30000)

    for i in range(5):  # five different requests, each crashing the worker once
        r = invoke(mallory, "crashy", {"crash": "1", "nonce": str(i)})
        assert not r["ok"] and r["error"]["code"] == E_WORKER_LOST, (i, r)
    r = invoke(mallory, "crashy", {"nonce": "harmless"})
    assert not r["ok"] and r["error"]["code"] == 10, r
    assert "calls of tenant 'mallory' crashed its workers 5 times" in r["error"]["message"], r
    assert invoke(acme, "crashy")["ok"]
    assert invoke(mallory, "echo")["ok"]
    assert "calls of tenant 'mallory' crashed its workers 5 times: its calls are refused" in g.stderr()


def test_crash_is_not_charged_to_another_call_with_the_same_id(procs, tmp_path):
    """Callers choose ids, and they collide (every HTTP front numbers from 1, NNG clients
    count): a call of the same function in flight behind the crashing one, with the
    same id but another request, is a bystander. The fault note names calls by the
    gateway's own id (gid); it named them by the caller's, so after two such crashes the
    innocent request was refused for 60 s."""
    write_manifest(tmp_path / "crashy", f"name: crashy\nhandler: {handler('test_crash')}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, tmp_path / "crashy")
    x = tensor("x", np.arange(3, dtype=np.float32))
    warm = call(addr, invoke_msg("crashy", [x]), timeout_ms=30000)
    assert warm["ok"], warm
    for round_ in range(2):
        res = {}
        a = threading.Thread(target=lambda: res.update(a=call(
            addr, invoke_msg("crashy", [x], params={"crash": "1", "sleep_ms": "600"}, rid=777), timeout_ms=30000)))
        a.start()
        wait_for(lambda: gateway_status(addr)["in_flight"] >= 1, 10, interval=0.01, what="the crashing call sent")
        b = threading.Thread(target=lambda: res.update(b=call(
            addr, invoke_msg("crashy", [x], params={"sleep_ms": "1"}, rid=777), timeout_ms=30000)))
        b.start()
        a.join(timeout=30)
        b.join(timeout=30)
        assert not res["a"]["ok"] and res["a"]["error"]["code"] == E_WORKER_LOST, res["a"]
        wait_for(lambda: g.stderr().count("the handler of crashy:1 crashed it") >= round_ + 1, 10,
                 what="the fault note read")
    r = call(addr, invoke_msg("crashy", [x], params={"sleep_ms": "1"}, rid=777), timeout_ms=30000)
    assert r["ok"], r  # the bystander's request was never charged
    r = call(addr, invoke_msg("crashy", [x], params={"crash": "1", "sleep_ms": "600"}, rid=778), timeout_ms=30000)
    assert not r["ok"] and "crashed its worker 2 times" in r["error"]["message"], r


def test_death_is_charged_once_per_request(procs, tmp_path):
    """Two copies of one request in flight when their worker is killed (no fault note:
    every call in flight is charged) count one crash, not two: both are retried, and the
    request is not refused afterwards."""
    sleep_so = handler("test_sleep")
    write_manifest(tmp_path / "slowi",
                   f"name: slowi\nhandler: {sleep_so}\nlimits: {{ timeout: 20s }}\nidempotent: true\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, tmp_path / "slowi")
    counts = tmp_path / "count.txt"
    counts.write_text("")
    x = tensor("x", np.arange(3, dtype=np.float32))
    params = {"sleep_ms": "1500", "count_file": str(counts)}
    res = []
    ts = [threading.Thread(target=lambda: res.append(
        call(addr, invoke_msg("slowi", [x], params=params), timeout_ms=60000))) for _ in range(2)]
    for t in ts:
        t.start()
    wait_for(lambda: counts.read_text().strip() != "", 20, what="a copy running")
    pool = workers(addr)
    assert len(pool) == 1 and pool[0]["in_flight"] == 2, pool
    os.kill(pool[0]["pid"], signal.SIGKILL)
    for t in ts:
        t.join(timeout=60)
    assert len(res) == 2 and all(r["ok"] for r in res), res
    r = call(addr, invoke_msg("slowi", [x], params=params), timeout_ms=30000)
    assert r["ok"], r


def test_calls_refused_by_a_draining_worker_go_elsewhere(procs, tmp_path):
    """A worker SIGTERMed from outside the gateway drains: it finishes the call it runs and
    refuses new ones without running them (not_run). The gateway sends those to another
    worker, though the function is not idempotent, instead of failing them."""
    sleep_so = handler("test_sleep")
    write_manifest(tmp_path / "slow", f"name: slow\nhandler: {sleep_so}\nlimits: {{ timeout: 20s }}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2")
    deploy(addr, tmp_path / "slow")
    counts = tmp_path / "count.txt"
    counts.write_text("")
    x = tensor("x", np.arange(3, dtype=np.float32))
    res = {}
    # The long call outlasts the pool's 5 s SIGKILL grace: a drain the gateway did not start
    # must not start that grace before the worker's calls are done.
    t = threading.Thread(target=lambda: res.update(r=call(
        addr, invoke_msg("slow", [x], params={"sleep_ms": "7000", "count_file": str(counts)}), timeout_ms=30000)))
    t.start()
    wait_for(lambda: counts.read_text().strip() != "", 20, what="the long call running")
    pool = workers(addr)
    assert len(pool) == 1, pool
    os.kill(pool[0]["pid"], signal.SIGTERM)
    r = call(addr, invoke_msg("slow", [x], params={"sleep_ms": "0", "count_file": str(counts)}), timeout_ms=30000)
    assert r["ok"], r
    t.join(timeout=30)
    assert res["r"]["ok"], res["r"]  # the drain let it finish
    assert counts.read_text().split().count(str(r["id"])) == 1  # ran once, on the other worker


def test_calls_never_wait_on_a_registered_worker_that_never_answers(procs, tmp_path):
    """A worker registered at an address nobody listens on never answers its first status:
    calls go to the workers that are ready, not into a wait on it that outlasts their
    deadlines."""
    sleep_so = handler("test_sleep")
    write_manifest(tmp_path / "nm", f"name: nm\nhandler: {sleep_so}\nlimits: {{ timeout: 3s }}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, tmp_path / "nm")
    x = tensor("x", np.arange(3, dtype=np.float32))
    assert call(addr, invoke_msg("nm", [x]), timeout_ms=20000)["ok"]
    r = call(addr, {"v": PROTOCOL_VERSION, "t": "register", "id": next_id(),
                    "addr": f"tcp://127.0.0.1:{free_port()}", "name": "ghost"})
    assert r["ok"], r
    res = {}
    t0 = time.monotonic()

    def one(k):
        m = invoke_msg("nm", [tensor("x", np.array([k], dtype=np.float32))], params={"sleep_ms": "100"})
        res[k] = (call(addr, m, timeout_ms=20000), time.monotonic() - t0)

    ts = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    assert len(res) == 4
    for k, (r, took) in res.items():
        assert r["ok"], (k, r, took)
        assert took < 10, (k, took)


def test_registered_workers_are_bounded(procs, tmp_path):
    """--max-remote-workers: past the bound a registration is refused with
    AICFN_E_CAPACITY, while a registered worker renewing its registration is not."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0", extra=("--max-remote-workers", "2"))
    listeners = [pynng.Rep0(listen=f"tcp://127.0.0.1:{free_port()}") for _ in range(3)]
    try:
        addrs = [s.listeners[0].url for s in listeners]

        def register(a, name):
            return call(addr, {"v": PROTOCOL_VERSION, "t": "register", "id": next_id(), "addr": a, "name": name})

        assert register(addrs[0], "ra")["ok"] and register(addrs[1], "rb")["ok"]
        r = register(addrs[2], "rc")
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_CAPACITY" and "--max-remote-workers" in \
            r["error"]["message"], r
        r = register(addrs[0], "ra")  # a renewal: answered as before, not refused for room
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_EXISTS", r
    finally:
        for s in listeners:
            s.close()
    # Local and registered workers share the 256 the router sees.
    r = run_cli(["gateway", "--listen", f"tcp://127.0.0.1:{free_port()}", "--data", tmp_path / "d2",
                 "--insecure-local", "--workers", "0..250", "--max-remote-workers", "10"], timeout=20)
    assert r.returncode == 1 and "at most 6" in r.stderr, r.stderr


def test_run_directory_is_private(procs, tmp_path):
    """The run directory holds the worker sockets the gateway dials and the fault notes
    workers write: a run/ that is a symlink (or that others may write) is refused; with a
    data directory whose path is too long for socket names, it is a fresh mkdtemp
    directory in /tmp that serves the workers and is gone after a clean stop."""
    data = tmp_path / "data"
    data.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / "run").symlink_to(elsewhere)
    r = run_cli(["gateway", "--listen", f"tcp://127.0.0.1:{free_port()}", "--data", data, "--insecure-local",
                 "--workers", "0..1"], timeout=20)
    assert r.returncode == 1 and "a symlink" in r.stderr, r.stderr
    (data / "run").unlink()

    longdata = tmp_path / ("d" * 90)
    before = set(Path("/tmp").glob("aicfn-run-*"))
    addr, _, g = start_gateway(procs, tmp_path, workers="0..1", data=longdata)
    deploy(addr, ROOT / "examples" / "echo")
    r = call(addr, invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.float32))]), timeout_ms=20000)
    assert r["ok"], r
    mine = set(Path("/tmp").glob("aicfn-run-*")) - before
    assert len(mine) == 1, mine
    run = mine.pop()
    assert run.stat().st_mode & 0o777 == 0o700 and len(run.name) == len("aicfn-run-XXXXXX"), run
    g.signal(signal.SIGTERM)
    assert g.wait(30) == 0
    assert not run.exists(), list(run.iterdir())


def sleep_fn_gateway(procs, tmp_path, name, timeout, workers, extra=()):
    """A gateway with function `name` (the test_sleep handler: it sleeps params.sleep_ms,
    one call at a time) deployed and warmed by one call. Returns (addr, gateway, input)."""
    write_manifest(tmp_path / name,
                   f"name: {name}\nhandler: {handler('test_sleep')}\nlimits: {{ timeout: {timeout} }}\n")
    addr, data, g = start_gateway(procs, tmp_path, workers=workers, extra=extra)
    deploy(addr, tmp_path / name)
    x = tensor("x", np.arange(2, dtype=np.float32))
    assert call(addr, invoke_msg(name, [x]), timeout_ms=20000)["ok"]
    return addr, g, x


def test_second_sigterm_stops_the_gateway_at_once(procs, tmp_path):
    """The first SIGTERM stops the gateway cleanly, waiting for calls in flight; a second
    one ends it at once, exit status 1 (its local workers die with it)."""
    addr, g, x = sleep_fn_gateway(procs, tmp_path, "slow", "60s", "1..1")
    pid = workers(addr)[0]["pid"]
    outcome = []

    def slow_call():  # the gateway stops under it: the call ends with an error or a receive error
        try:
            outcome.append(call(addr, invoke_msg("slow", [x], params={"sleep_ms": "20000"}), timeout_ms=30000))
        except pynng.NNGException as e:
            outcome.append(e)

    t = threading.Thread(target=slow_call, daemon=True)
    t.start()
    wait_for(lambda: gateway_status(addr)["in_flight"] == 1, 10, what="the call running")
    g.signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in g.stderr(), 5, what="the stop")
    time.sleep(0.3)
    assert g.poll() is None  # the call in flight holds the stop
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    assert g.wait(timeout=5) == 1
    assert time.monotonic() - t0 < 3
    assert "received a second SIGTERM" in g.stderr()
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
             10, what="its worker gone with it")
    t.join(timeout=40)
    assert len(outcome) == 1 and not (isinstance(outcome[0], dict) and outcome[0].get("ok")), outcome


def test_stuck_worker_is_killed_and_replaced(procs, tmp_path):
    addr, g, x = sleep_fn_gateway(procs, tmp_path, "stuck", "1s", "0..1")
    pid = workers(addr)[0]["pid"]
    t0 = time.monotonic()
    r = call(addr, invoke_msg("stuck", [x], params={"sleep_ms": "30000"}), timeout_ms=30000)
    took = time.monotonic() - t0
    assert not r["ok"] and r["error"]["code"] == 9, r
    assert took < 15, took  # timeout (1 s) + grace, not the handler's 30 s
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
             10, what="the stuck worker to be killed")
    r = call(addr, invoke_msg("stuck", [x]), timeout_ms=20000)
    assert r["ok"]
    assert workers(addr)[0]["pid"] != pid


def test_short_deadline_never_gets_a_healthy_worker_killed(procs, tmp_path):
    """A caller's deadline_ms bounds when its call may start, not how long the worker may
    take: a call that started in time and runs 5.6 s (its function allows 20 s) with a
    200 ms deadline is answered when it ends, and its worker lives on. The gateway used
    to count a call stuck at the caller's deadline + 5 s and kill the worker: any caller
    could have healthy workers killed."""
    addr, g, x = sleep_fn_gateway(procs, tmp_path, "patient", "20s", "1..1")
    pid = workers(addr)[0]["pid"]
    r = call(addr, invoke_msg("patient", [x], params={"sleep_ms": "5600"}, deadline_ms=200), timeout_ms=30000)
    assert r["ok"], r
    assert workers(addr)[0]["pid"] == pid
    assert "killing the worker" not in g.stderr()


def test_a_busy_worker_is_never_sent_more_calls_than_it_can_receive(procs, tmp_path):
    """A worker receives at most AICFN_NNG_CONTEXTS (64) messages at once; a message past
    those waits inside NNG, and so does the gateway's status poll behind it, until the
    poll fails and the gateway drops a healthy worker. The gateway sends a worker at most
    56 call messages (8 contexts kept for polls and model operations); the rest of the
    calls wait in the gateway's queue. 90 calls of a serial 40 ms function: the gateway
    never has more than 56 of them on the worker, the others queue, all succeed, and the
    worker is the same process at the end."""
    addr, g, x = sleep_fn_gateway(procs, tmp_path, "busy", "60s", "1..1")
    pid = workers(addr)[0]["pid"]
    n = 90
    results = [None] * n

    def one(i):
        results[i] = call(addr, invoke_msg("busy", [x], params={"sleep_ms": "40"}), timeout_ms=60000)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    seen_queued, most_sent = 0, 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(t.is_alive() for t in ts):
        st = gateway_status(addr)
        seen_queued = max(seen_queued, st["queued"])
        most_sent = max(most_sent, st["in_flight"])
        time.sleep(0.05)
    for t in ts:
        t.join(timeout=60)
    assert all(r is not None and r["ok"] for r in results), [r for r in results if not r or not r["ok"]][:3]
    assert 0 < most_sent <= 56, most_sent
    assert seen_queued > 0, seen_queued
    assert workers(addr)[0]["pid"] == pid
    assert "dropping it" not in g.stderr()


def test_front_refuses_invocations_past_its_bound_and_still_answers_status(procs, tmp_path):
    """--max-requests 16 keeps 4 contexts for administrative requests: 12 invocations are
    held at once (a slow serial function keeps them), the rest of 20 simultaneous ones
    are refused at once with AICFN_E_OVERLOADED instead of waiting in NNG without a
    deadline, and a status request is answered while the 12 are held."""
    addr, g, x = sleep_fn_gateway(procs, tmp_path, "slow", "60s", "1..1", extra=("--max-requests", "16"))
    n = 20
    results, took = [None] * n, [None] * n
    barrier = threading.Barrier(n + 1)

    def one(i):
        barrier.wait(timeout=10)
        t0 = time.monotonic()
        results[i] = call(addr, invoke_msg("slow", [x], params={"sleep_ms": "400"}), timeout_ms=60000)
        took[i] = time.monotonic() - t0

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    barrier.wait(timeout=10)
    # The first held call ends 400 ms after it started: catch the 12 held before.
    wait_for(lambda: (lambda s: s["in_flight"] + s["queued"] >= 12)(gateway_status(addr)), 5, interval=0.02,
             what="12 invocations held")
    t0 = time.monotonic()
    st = gateway_status(addr)  # with the invocations held
    status_took = time.monotonic() - t0
    for t in ts:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    refused = [i for i in range(n) if not results[i]["ok"]]
    assert refused, "no invocation was refused"
    assert all(results[i]["error"]["code"] == E_OVERLOADED for i in refused), [results[i] for i in refused]
    assert all(took[i] < 1.0 for i in refused), [took[i] for i in refused]
    assert n - len(refused) >= 12, len(refused)
    assert st["in_flight"] + st["queued"] >= 11 and status_took < 1.0, (st, status_took)


def start_two_tenants_and_a_slow_function(procs, tmp_path):
    """A gateway with one local worker (serial) and the function `slow` (test_sleep, 60 s
    timeout), and keys for an admin and two tenants: (addr, admin, hog, other, x), x a
    tensor to call it with."""
    from conftest import aicfn_bin
    data = tmp_path / "data"
    data.mkdir()
    admin, hog, other = create_key(data, "ops", "--admin"), create_key(data, "hog"), create_key(data, "other")
    write_manifest(tmp_path / "slow", f"name: slow\nhandler: {handler('test_sleep')}\nlimits: {{ timeout: 60s }}\n")
    addr = f"tcp://127.0.0.1:{free_port()}"
    procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "1..1",
                 "--worker-memory", "64MiB", "--device", "host"], name="gateway")
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": admin}, timeout_ms=500).get("ok"),
             15, interval=0.05, what="the gateway")
    r = run_cli(["deploy", str(tmp_path / "slow"), "--gateway", addr], env={"AICFN_KEY": admin}, timeout=120)
    assert r.returncode == 0, r.stderr
    x = tensor("x", np.arange(2, dtype=np.float32))
    return addr, admin, hog, other, x


def test_full_queue_is_shared_between_tenants(procs, tmp_path):
    """One tenant keeps a slow function's queue full (256 calls waiting behind 56 sent to
    its one serial worker); another tenant's call still gets in: the first tenant's newest
    queued call gives way (AICFN_E_OVERLOADED, naming why) and the newcomer waits in its
    place until its deadline (AICFN_E_TIMEOUT, not refused). The first tenant's own calls
    past the full queue are refused as before (gateway/fairq.h)."""
    from conftest import E_TIMEOUT
    addr, admin, hog, other, x = start_two_tenants_and_a_slow_function(procs, tmp_path)

    def invoke(key, sleep_ms, deadline_ms):
        m = invoke_msg("slow", [x], params={"sleep_ms": str(sleep_ms)}, deadline_ms=deadline_ms)
        m["key"] = key
        return call(addr, m, timeout_ms=deadline_ms + 30000)

    assert invoke(hog, 0, 20000)["ok"]  # warm: the worker is up and holds the function

    def status():
        st = call(addr, {"v": 1, "t": "status", "id": next_id(), "key": admin}, timeout_ms=2000)
        return json.loads(st["json"])

    def queued():
        return status()["queued"]

    n = 330  # 56 sent to the worker + 256 queued + 18 refused
    results = [None] * n

    def one(i, sleep_ms):
        try:
            results[i] = invoke(hog, sleep_ms, 9000)
        except pynng.NNGException as e:
            results[i] = e

    # The first call holds the serial worker 15 s, so no call ends (and the queue does not
    # move) while the test looks at it, however long starting the others takes.
    ts = [threading.Thread(target=one, args=(0, 15000), daemon=True)]
    ts[0].start()
    wait_for(lambda: status()["in_flight"] >= 1, 10, interval=0.02, what="the first call sent")
    ts += [threading.Thread(target=one, args=(i, 0), daemon=True) for i in range(1, n)]
    for t in ts[1:]:
        t.start()
    wait_for(lambda: queued() == 256, 20, interval=0.05, what="the hog's calls filling the queue")
    t0 = time.monotonic()
    theirs = invoke(other, 0, 1500)
    assert not theirs["ok"] and theirs["error"]["code"] == E_TIMEOUT, theirs
    assert time.monotonic() - t0 >= 1.2  # it waited in the queue; it was not refused at once
    for t in ts:
        t.join(timeout=60)
    assert all(isinstance(r, dict) for r in results), [r for r in results if not isinstance(r, dict)][:3]
    gave_way = [r for r in results if not r["ok"] and "gave way to another tenant" in r["error"]["message"]]
    full = [r for r in results if not r["ok"] and "calls already queued" in r["error"]["message"]]
    assert len(gave_way) == 1 and gave_way[0]["error"]["code"] == E_OVERLOADED, gave_way
    assert "255 more of them were this tenant's" in gave_way[0]["error"]["message"], gave_way
    assert len(full) >= n - 56 - 256, len(full)
    assert all(r["error"]["code"] == E_OVERLOADED for r in full)


def test_queued_calls_are_served_in_turn_between_tenants(procs, tmp_path):
    """One tenant has a slow function's one serial worker full (56 calls sent to it) and
    more calls queued at the gateway; another tenant's calls, sent after all of them, are
    not served after the whole backlog: the queue serves the tenants in turn, one call
    each, each tenant's own calls in the order they came (gateway/fairq.h)."""
    addr, admin, hog, other, x = start_two_tenants_and_a_slow_function(procs, tmp_path)

    def status():
        st = call(addr, {"v": 1, "t": "status", "id": next_id(), "key": admin}, timeout_ms=2000)
        return json.loads(st["json"])

    done = []  # (tenant, i) in the order the replies came
    lock = threading.Lock()

    def one(key, name, i, sleep_ms):
        m = invoke_msg("slow", [x], params={"sleep_ms": str(sleep_ms)}, deadline_ms=40000)
        m["key"] = key
        rep = call(addr, m, timeout_ms=70000)
        with lock:
            done.append((name, i, rep.get("ok"), rep.get("error")))

    assert call(addr, dict(invoke_msg("slow", [x], params={"sleep_ms": "0"}), key=hog))["ok"]  # warm
    n_hog = 70
    # The first call holds the serial worker 3 s, so nothing ends while the rest line up.
    ts = [threading.Thread(target=one, args=(hog, "hog", 0, 3000), daemon=True)]
    ts[0].start()
    wait_for(lambda: status()["in_flight"] >= 1, 10, interval=0.02, what="the first call sent")
    ts += [threading.Thread(target=one, args=(hog, "hog", i, 40), daemon=True) for i in range(1, n_hog)]
    for t in ts[1:]:
        t.start()
    wait_for(lambda: (lambda s: s["in_flight"] + s["queued"] == n_hog)(status()), 20, interval=0.05,
             what="the hog's calls sent or queued")
    queued = status()["queued"]
    assert queued >= 10, queued  # the worker took at most 56: the rest wait at the gateway
    mine = []
    for i in range(3):  # one after the other, so that they come in this order
        mine.append(threading.Thread(target=one, args=(other, "other", i, 40), daemon=True))
        mine[-1].start()
        wait_for(lambda: status()["queued"] == queued + i + 1, 10, interval=0.02, what=f"the other's call {i} queued")
    assert done == [], done  # all of them were in place before the first call ended
    for t in ts + mine:
        t.join(timeout=60)
    assert len(done) == n_hog + 3 and all(ok for _, _, ok, _ in done), [d for d in done if not d[2]][:3]
    # Each tenant's calls in the order they came ...
    assert [i for name, i, _, _ in done if name == "other"] == [0, 1, 2], done
    # ... and the queue, once the worker's 56 were done, took the tenants in turn:
    # hog, other, hog, other, hog, other, then the rest of the hog's.
    order = [name for name, _, _, _ in done][n_hog - queued:]
    assert order[:7] == ["hog", "other", "hog", "other", "hog", "other", "hog"], order
    assert order[7:] == ["hog"] * (queued - 4), order


def test_api_keys_on_the_nng_front(procs, tmp_path):
    from conftest import aicfn_bin
    data = tmp_path / "data"
    data.mkdir()

    admin, user = create_key(data, "ops", "--admin"), create_key(data, "acme")
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    g = procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..1",
                     "--worker-memory", "64MiB", "--device", "host"], name="gateway")
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": user}, timeout_ms=500).get("ok"),
             15, interval=0.05, what="the gateway")
    # Deploy needs an admin key.
    r = run_cli(["deploy", ROOT / "examples" / "echo", "--gateway", addr, "--key", user])
    assert r.returncode == 1 and "AICFN_E_FORBIDDEN" in r.stderr
    r = run_cli(["deploy", ROOT / "examples" / "echo", "--gateway", addr], env={"AICFN_KEY": admin})
    assert r.returncode == 0, r.stderr
    x = tensor("x", np.arange(2, dtype=np.float32))
    r = call(addr, invoke_msg("echo", [x]))
    assert not r["ok"] and r["error"]["code"] == 13
    m = invoke_msg("echo", [x])
    m["key"] = user[:-4] + "0000"
    r = call(addr, m)
    assert not r["ok"] and r["error"]["code"] == 13
    # A wrong key of any length up to protocol.md's 1024 bytes is unauthenticated (401),
    # not malformed; past 1024 bytes it is a protocol error.
    for bad, code in (("k" * 200, 13), ("k" * 1024, 13), ("k" * 1025, E_PROTOCOL)):
        m = invoke_msg("echo", [x])
        m["key"] = bad
        r = call(addr, m)
        assert not r["ok"] and r["error"]["code"] == code, (len(bad), r)
    # Function names: longer than 64 bytes is a protocol error, bad characters invalid.
    for fn, code in (("f" * 65, E_PROTOCOL), ("f" * 300, E_PROTOCOL), ("f/g", 1)):
        m = invoke_msg(fn, [x])
        m["key"] = user
        r = call(addr, m)
        assert not r["ok"] and r["error"]["code"] == code, (fn, r)
    # A worker name over 63 characters is refused as invalid, as other bad names are.
    r = call(addr, {**gw_msg("register", addr="tcp://127.0.0.1:1", name="n" * 64), "key": admin})
    assert not r["ok"] and r["error"]["code"] == 1 and "worker name" in r["error"]["message"], r
    m = invoke_msg("echo", [x], rid=990001)
    m["key"] = user
    r = call(addr, m, timeout_ms=20000)
    assert r["ok"]
    rows = wait_rows(data, "SELECT tenant FROM invocations WHERE request_id = '990001'", (), 1)
    assert rows == [("acme",)]



def test_an_upload_belongs_to_the_key_that_began_it(procs, tmp_path):
    # Another admin key cannot write into, commit or abort an upload (AICFN_E_FORBIDDEN),
    # and a tenant key is refused as for any administrative message; neither ends it. Once
    # the key that began it is revoked, nobody can go on with it: the gateway aborts it
    # (within about a second, not at the 2-minute idle timeout).
    data = tmp_path / "data"
    data.mkdir()
    a, b, user = create_key(data, "ops", "--admin"), create_key(data, "ops2", "--admin"), create_key(data, "acme")
    addr = f"tcp://127.0.0.1:{free_port()}"
    procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..0", "--device", "host"],
                name="gateway")
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": a}, timeout_ms=500).get("ok"),
             15, interval=0.05, what="the gateway")
    blob = bytes(range(256)) * 64
    begin = call(addr, {**gw_msg("upload_begin", hash=hashlib.sha256(blob * 2).hexdigest(), size=2 * len(blob)),
                        "key": a})
    assert begin["ok"], begin
    token = begin["upload"]
    r = call(addr, {**gw_msg("upload_chunk", upload=token, offset=0, data=blob), "key": a})
    assert r["ok"] and r["received"] == len(blob), r
    tmp = data / "artifacts" / "tmp"
    assert len(list(tmp.iterdir())) == 1
    for t, extra in (("upload_chunk", {"offset": len(blob), "data": blob}), ("upload_commit", {}),
                     ("upload_abort", {})):
        r = call(addr, {**gw_msg(t, upload=token, **extra), "key": b})
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_FORBIDDEN", (t, r)
        assert "another key" in r["error"]["message"], r
        r = call(addr, {**gw_msg(t, upload=token, **extra), "key": user})  # not an admin: refused, nothing ends
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_FORBIDDEN", (t, r)
    assert len(list(tmp.iterdir())) == 1
    assert run_cli(["keys", "revoke", a.split("_")[1], "--data-dir", str(data)]).returncode == 0
    # The front trusts a checked key for 5 s (keys.h GW_KEY_CACHE_TTL_US).
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": a}).get("error", {}).get("name")
             == "AICFN_E_UNAUTHENTICATED", 15, interval=0.2, what="the revocation seen")
    r = call(addr, {**gw_msg("upload_chunk", upload=token, offset=len(blob), data=blob), "key": a})
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_UNAUTHENTICATED", r
    t0 = time.monotonic()
    wait_for(lambda: not any(tmp.iterdir()), 10, interval=0.05, what="the revoked key's upload aborted")
    assert time.monotonic() - t0 < 10
    r = call(addr, {**gw_msg("upload_abort", upload=token), "key": b})
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_NOT_FOUND", r  # gone, for anyone

def test_daily_quota_counts_every_call_of_the_tenant(procs, tmp_path):
    # Quotas are per tenant (protocol.md section 6): calls through a key of the tenant that
    # has no limits count too, before a restart as after it (the count is then seeded from
    # the ledger, which holds every call).
    from conftest import aicfn_bin
    data = tmp_path / "data"
    data.mkdir()
    admin = create_key(data, "ops", "--admin")
    free, capped = create_key(data, "acme"), create_key(data, "acme", "--quota", "5/day")
    addr = f"tcp://127.0.0.1:{free_port()}"
    args = [aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..1", "--worker-memory",
            "64MiB", "--device", "host"]

    def start(name):
        g = procs.start(args, name=name)
        wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": admin}, timeout_ms=500).get("ok"),
                 15, interval=0.05, what="the gateway")
        return g

    g = start("gateway")
    r = run_cli(["deploy", ROOT / "examples" / "echo", "--gateway", addr], env={"AICFN_KEY": admin})
    assert r.returncode == 0, r.stderr

    def inv(key):
        m = invoke_msg("echo", [tensor("x", np.arange(2, dtype=np.float32))])
        m["key"] = key
        r = call(addr, m, timeout_ms=20000)
        return "ok" if r["ok"] else r["error"]["name"]

    assert [inv(free) for _ in range(3)] == ["ok"] * 3
    assert [inv(capped) for _ in range(3)] == ["ok", "ok", "AICFN_E_QUOTA"]
    assert inv(free) == "ok"  # no limit of its own
    # The refused call's row names the version that would have served it, as a served
    # call's does (the call asked for the active version).
    rows = wait_rows(data, "SELECT version FROM invocations WHERE status = 'AICFN_E_QUOTA'", (), 1)
    assert rows == [(1,)], rows
    g.stop()
    g = start("gateway2")
    assert inv(capped) == "AICFN_E_QUOTA"
    # A caller past its limits that keeps sending cannot grow aicfn.db at its rate: its
    # refusals get at most 10 ledger rows a second (all are refused and counted), and the
    # next row written after a pause says how many went without.
    before = db_rows(data, "SELECT count(*) FROM invocations WHERE status = 'AICFN_E_QUOTA'")[0][0]
    t0 = time.monotonic()
    assert [inv(capped) for _ in range(60)] == ["AICFN_E_QUOTA"] * 60
    took = time.monotonic() - t0
    time.sleep(1.1)
    assert inv(capped) == "AICFN_E_QUOTA"
    wait_for(lambda: "counted but not written to the ledger" in g.stderr(), 10, what="the unwritten count")
    count = "SELECT count(*) FROM invocations WHERE status = 'AICFN_E_QUOTA'"
    wait_for(lambda: db_rows(data, count)[0][0] - before >= 10, 10, what="the refusals' rows committed")
    time.sleep(0.3)  # any more rows committed too (the ledger commits every 100 ms)
    rows = db_rows(data, count)[0][0] - before
    assert 10 <= rows <= 10 + 10 * took + 2, (rows, took)


# ---- per-function scaling (aicfn.yaml scaling: min_workers, max_workers, idle_timeout) ----

def model_fn(d: Path, name: str, handler_so: Path, extra: str = "", seed: int = 1, floats: int = 65536) -> Path:
    """A function directory with its own small model (the seed makes its snapshot, so its
    model key, distinct from the other functions')."""
    d.mkdir(parents=True, exist_ok=True)
    write_safetensors(d / "w.safetensors",
                      {"w": np.random.default_rng(seed).standard_normal(floats).astype(np.float32)})
    return write_manifest(d, f"name: {name}\nhandler: {handler_so}\nmodel: w.safetensors\n{extra}")


def holders(addr, fn, state="READY"):
    """Names of the live workers holding function fn's model in `state`."""
    return sorted(w["name"] for w in workers(addr)
                  if any(m["function"] == fn and m["state"] == state for m in w["models"]))


def test_scaling_min_workers_keeps_a_worker_warm(procs, tmp_path):
    echo = handler("echo")
    model_fn(tmp_path / "coldfn", "coldfn", echo, seed=11)
    warm_dir = model_fn(tmp_path / "warmfn", "warmfn", echo, "scaling: { min_workers: 1, max_workers: 2 }\n", seed=12)
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2", idle="1s")
    x = tensor("x", np.arange(3, dtype=np.float32))
    # Without min_workers: the worker that served the call exits after the gateway's idle timeout.
    deploy(addr, tmp_path / "coldfn")
    assert call(addr, invoke_msg("coldfn", [x]), timeout_ms=30000)["ok"]
    assert len(workers(addr)) == 1
    wait_for(lambda: workers(addr) == [], 15, interval=0.1, what="the idle worker of coldfn to exit")
    # min_workers 1: once deployed, a worker holds the model READY without any call...
    deploy(addr, warm_dir)
    held = wait_for(lambda: holders(addr, "warmfn"), 15, interval=0.05, what="warmfn's model to be kept warm")
    assert len(held) == 1
    # ...and keeps it past the gateway's idle timeout (1 s) while it has no call.
    time.sleep(2.5)
    assert holders(addr, "warmfn") == held
    assert [w["name"] for w in workers(addr)] == held
    assert db_rows(data, "SELECT COUNT(*) FROM invocations WHERE function = 'warmfn'")[0][0] == 0
    # The first call finds it loaded.
    r = call(addr, invoke_msg("warmfn", [x]), timeout_ms=30000)
    assert r["ok"] and r["cold"] is False, r
    # The keep-warm load was a cold start like any other: one cold_starts row, with the
    # spawn of the worker it started and its phases.
    assert cold_start_count(addr, data, "warmfn") == 1
    (spawn_us, raw, total), = db_rows(data, "SELECT spawn_us, raw_bytes, total_us FROM cold_starts "
                                            "WHERE function = 'warmfn'")
    assert spawn_us > 0 and raw > 0 and total >= spawn_us, (spawn_us, raw, total)
    # `aicfn ls --json` shows the scaling in effect.
    ls = {f["name"]: f for f in json.loads(run_cli(["ls", "--gateway", addr, "--json"]).stdout)}
    assert ls["warmfn"]["scaling"] == {"min_workers": 1, "max_workers": 2, "idle_timeout_us": 300_000_000}
    assert ls["coldfn"]["scaling"] == {"min_workers": 0, "max_workers": 1, "idle_timeout_us": 300_000_000}
    text = run_cli(["ls", "--gateway", addr]).stdout.splitlines()
    assert text[0].split()[-3:] == ["WORKERS", "IDLE", "CANARY"], text
    assert [ln.split()[-3:] for ln in text if ln.startswith("warmfn ")] == [["1..2", "5m", "-"]], text
    # A redeploy takes the new version's scaling: without min_workers, the worker idles out.
    write_manifest(warm_dir, f"name: warmfn\nhandler: {echo}\nmodel: w.safetensors\n"
                             "scaling: { min_workers: 0, idle_timeout: 10m }\n")
    assert deploy(addr, warm_dir) == 2
    ls = {f["name"]: f for f in json.loads(run_cli(["ls", "--gateway", addr, "--json"]).stdout)}
    assert ls["warmfn"]["scaling"] == {"min_workers": 0, "max_workers": 1, "idle_timeout_us": 600_000_000}
    wait_for(lambda: workers(addr) == [], 15, interval=0.1, what="the no longer warm worker to exit")


def test_scaling_min_workers_model_is_never_an_lru_victim(procs, tmp_path):
    # Three 3 MiB models, one worker with 7 MiB. keepa (min_workers 1) is kept resident:
    # the LRU evicts the others around it, however long keepa goes without calls, until a
    # redeploy without min_workers ends the keep and it becomes an ordinary victim.
    echo = handler("echo")
    keep = "scaling: { min_workers: 1, max_workers: 1 }\n"
    model_fn(tmp_path / "keepa", "keepa", echo, keep, seed=41, floats=786432)
    model_fn(tmp_path / "keepb", "keepb", echo, seed=42, floats=786432)
    model_fn(tmp_path / "keepc", "keepc", echo, seed=43, floats=786432)
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", memory="7MiB")

    def kept(fn):
        return [m["kept"] for w in workers(addr) for m in w["models"] if m["function"] == fn and m["state"] == "READY"]

    def inv(fn):
        r = call(addr, invoke_msg(fn, [tensor("x", np.arange(3, dtype=np.float32))]), timeout_ms=30000)
        assert r["ok"], r
        time.sleep(0.1)  # the worker unpins just after it replies: the LRU order alone decides
        return r["cold"]

    deploy(addr, tmp_path / "keepa")
    wait_for(lambda: kept("keepa") == [True], 15, interval=0.05, what="keepa's model kept resident")
    deploy(addr, tmp_path / "keepb")
    deploy(addr, tmp_path / "keepc")
    assert inv("keepb") is True
    assert inv("keepc") is True  # keepa is the oldest, but kept: keepb goes
    assert inv("keepb") is True  # evicts keepc
    assert inv("keepa") is False
    rows = wait_rows(data, "SELECT function, evicted FROM cold_starts WHERE function IN ('keepb', 'keepc') "
                           "ORDER BY id", (), 3)
    assert [(f, json.loads(e)) for f, e in rows] == [("keepb", []), ("keepc", ["keepb:1"]), ("keepb", ["keepc:1"])]
    assert kept("keepa") == [True] and kept("keepb") == [False]
    # Without min_workers (same model), the keep ends and keepa is an ordinary LRU entry.
    write_manifest(tmp_path / "keepa", f"name: keepa\nhandler: {echo}\nmodel: w.safetensors\n")
    assert deploy(addr, tmp_path / "keepa") == 2
    wait_for(lambda: kept("keepa") == [False], 15, interval=0.05, what="the end of keepa's keep")
    assert inv("keepb") is False
    assert inv("keepc") is True  # now keepa, least recently used, goes
    assert inv("keepa") is True
    rows = wait_rows(data, "SELECT evicted FROM cold_starts WHERE function = 'keepc' ORDER BY id", (), 2)
    assert [e.split(":")[0] for e in json.loads(rows[-1][0])] == ["keepa"], rows


def test_scaling_idle_timeout_unloads_the_model_worker_stays(procs, tmp_path):
    model_fn(tmp_path / "brief", "brief", handler("echo"), "scaling: { idle_timeout: 1s }\n", seed=21)
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", idle="5m")
    deploy(addr, tmp_path / "brief")
    x = tensor("x", np.arange(3, dtype=np.float32))

    def resident(reply):  # the serving worker's models, from the summary piggybacked on the reply
        return [m for m in reply["st"]["models"] if m.get("fn") == "brief" and m.get("state") == "READY"]

    r = call(addr, invoke_msg("brief", [x]), timeout_ms=30000)
    assert r["ok"] and r["cold"] is True, r
    # Calls closer together than the idle timeout keep it loaded (nothing else in between).
    for _ in range(4):
        time.sleep(0.3)
        r = call(addr, invoke_msg("brief", [x]), timeout_ms=30000)
        assert r["ok"] and r["cold"] is False, r
    t0 = time.monotonic()
    assert len(resident(r)) == 1, r["st"]
    wait_for(lambda: not any(m["function"] == "brief" for w in workers(addr) for m in w["models"]), 10,
             interval=0.05, what="the idle model to be unloaded")
    took = time.monotonic() - t0
    assert 0.7 <= took <= 5, took  # ~1 s after the last call, plus at most a status poll
    # The worker that served every call stays (its own idle timeout is 5 m)...
    served = {w for (w,) in db_rows(data, "SELECT DISTINCT worker FROM invocations WHERE function = 'brief'")}
    assert [w["name"] for w in workers(addr)] == sorted(served) and len(served) == 1
    # ...and the next call loads the model there again.
    r = call(addr, invoke_msg("brief", [x]), timeout_ms=30000)
    assert r["ok"] and r["cold"] is True, r
    assert holders(addr, "brief") == sorted(served)


def test_scaling_max_workers_replicas_under_load(procs, tmp_path):
    sleep_so = handler("test_sleep")
    for n, mw, seed in (("single", 1, 31), ("double", 2, 32)):
        model_fn(tmp_path / n, n, sleep_so, f"scaling: {{ max_workers: {mw} }}\nlimits: {{ timeout: 20s }}\n",
                 seed=seed)
    addr, data, g = start_gateway(procs, tmp_path, workers="0..2", idle="5m")
    deploy(addr, tmp_path / "single")
    deploy(addr, tmp_path / "double")
    x = tensor("x", np.arange(2, dtype=np.float32))

    def burst(fn, k=4, ms=400):
        """k simultaneous calls of fn; returns once their k ledger rows are committed."""
        before = db_rows(data, "SELECT COUNT(*) FROM invocations WHERE function = ?", (fn,))[0][0]
        results = [None] * k
        barrier = threading.Barrier(k)

        def one(i):
            barrier.wait(timeout=10)
            results[i] = call(addr, invoke_msg(fn, [x], params={"sleep_ms": str(ms)}), timeout_ms=30000)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
        assert all(r is not None and r["ok"] for r in results), results
        wait_for(lambda: db_rows(data, "SELECT COUNT(*) FROM invocations WHERE function = ?", (fn,))[0][0]
                 == before + k, 10, what=f"{k} more ledger rows of {fn}")

    # max_workers 1: concurrent calls queue on the one worker holding the model.
    burst("single")
    assert holders(addr, "single") and len(workers(addr)) == 1
    assert cold_start_count(addr, data, "single") == 1
    # max_workers 2: with its holder busy, a second worker loads a replica (the pool grows to 2).
    burst("double")
    two = wait_for(lambda: (lambda h: h if len(h) == 2 else None)(holders(addr, "double")), 10, interval=0.05,
                   what="two workers holding double's model")
    assert len(workers(addr)) == 2
    assert cold_start_count(addr, data, "double") == 2
    rows = db_rows(data, "SELECT worker FROM cold_starts WHERE function = 'double'")
    assert sorted(w for (w,) in rows) == two
    # Still one holder of single: its max_workers is 1 whatever the pool.
    burst("single", k=3, ms=200)
    assert len(holders(addr, "single")) == 1
    assert cold_start_count(addr, data, "single") == 1



def test_every_command_has_help_and_refuses_unknown_flags():
    """`aicfn COMMAND --help` prints the command's usage and exits 0; an unknown flag is a
    usage error (exit 2, README's exit codes). `workers` takes --data-dir and --limit only
    with --history (they would be ignored); `usage` reads $AICFN_PRICE_PER_GPU_S only when
    no --price-per-gpu-second is given."""
    for cmd in ("gateway", "worker", "deploy", "invoke", "ls", "rm", "activate", "coldstarts", "workers", "keys",
                "usage", "snapshot", "version"):
        r = run_cli([cmd, "--help"])
        assert r.returncode == 0 and r.stdout.startswith(f"usage: aicfn {cmd}"), (cmd, r.stdout[:200], r.stderr)
        r = run_cli([cmd, "--no-such-flag"])
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
    r = run_cli(["workers", "--data-dir", "/nonexistent"])
    assert r.returncode == 2 and "--history" in r.stderr, r.stderr
    for cmd in ("activate", "rm"):  # NAME:VER checked before any gateway is asked, as invoke does
        for bad in ("roll:", "roll:x", "roll:0", ":3"):
            r = run_cli([cmd, bad, "--gateway", "tcp://127.0.0.1:1"])
            assert r.returncode == 2, (cmd, bad, r.returncode, r.stderr)
    r = run_cli(["usage", "--price-per-gpu-second", "1", "--data-dir", "/nonexistent"],
                env={"AICFN_PRICE_PER_GPU_S": "x"})
    assert r.returncode == 1 and "no database" in r.stderr, r.stderr  # not the price: the flag gave one

def test_cli_shows_a_hostile_gateways_text_safely(tmp_path):
    """What a gateway says is untrusted: names with terminal escapes are shown with '?'
    (`ls`, `coldstarts`, `activate`), a missing name prints as '?' (it went to printf's
    %s as NULL), and `activate --json` stays valid JSON whatever the name holds (it was
    pasted between quotes)."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    evil = 'ev\x1b]0;owned\x07il"\\'
    stop = threading.Event()

    sock = pynng.Rep0(listen=addr, recv_timeout=200)  # listening before the first client

    def serve():
        with sock as s:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    req = msgpack.unpackb(s.recv(), raw=False)
                except pynng.Timeout:
                    continue
                rep = {"v": PROTOCOL_VERSION, "id": req["id"], "ok": True}
                if req["t"] == "ls":
                    rep["json"] = json.dumps([{"name": evil, "active_version": 1}, {"active_version": 2}])
                elif req["t"] == "coldstarts":
                    rep["json"] = json.dumps([{"function": evil, "count": 1}, {"count": 2}])
                elif req["t"] == "activate":
                    rep.update(name=evil, version=3)
                s.send(msgpack.packb(rep, use_bin_type=True))

    t = threading.Thread(target=serve)
    t.start()
    try:
        for args in (["ls"], ["coldstarts"], ["activate", "x:3"]):
            r = run_cli([*args, "--gateway", addr])
            assert r.returncode == 0, (args, r.stderr)
            assert "\x1b" not in r.stdout and "\x07" not in r.stdout, (args, r.stdout)
            assert "ev?]0;owned?il" in r.stdout, (args, r.stdout)
            assert "(null)" not in r.stdout, (args, r.stdout)
        r = run_cli(["activate", "x:3", "--gateway", addr, "--json"])
        assert r.returncode == 0 and json.loads(r.stdout) == {"name": evil, "version": 3}, r.stdout
    finally:
        stop.set()
        t.join(timeout=10)
