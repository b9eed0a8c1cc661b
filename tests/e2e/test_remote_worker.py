"""End-to-end tests of remote workers (`aicfn worker --gateway ADDR`): a worker that
registers with a gateway fetches every handler and snapshot by hash from the gateway
(`artifact_get`, docs/protocol.md) into its --cache-dir instead of opening the gateway's
paths.

Covers: a gateway with no local pool (--workers 0..0) and one registered worker running
from an unrelated directory serves echo and mlp correctly (mlp checked against a numpy
forward pass), with its cache holding exactly the deployed artifacts by hash (each file
hashing to its name) and the handlers dlopened from there; artifact_get itself over the
raw protocol (whole-file download in chunks equals the stored file; bad hash, bad len,
offset past the end, unknown hash); and a tampered artifact (the gateway's stored handler
and snapshot modified after deploy) failing the call with AICFN_E_CORRUPT naming the
artifact, leaving nothing in the cache, with the worker alive and serving once the files
are restored. Every wait is bounded.
"""
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np

from conftest import (PROTOCOL_VERSION, ROOT, aicfn_bin, call, create_key, free_port, gw_msg, handler, invoke_msg, next_id,
                      output, run_cli, status_msg, tensor, wait_for)
from test_gateway import deploy, mlp_reference, workers, write_manifest
from test_gateway import start_gateway as gateway_with

E_INVALID = 1
E_CORRUPT = 4
E_NOT_FOUND = 6
E_TIMEOUT = 9
E_FORBIDDEN = 14
E_PROTOCOL = 19
CHUNK = 4 << 20  # AICFN_UPLOAD_CHUNK_BYTES


def start_gateway(procs, tmp_path: Path, workers="0..0"):
    """A gateway without local workers (only remote ones can serve)."""
    return gateway_with(procs, tmp_path, workers=workers)


def start_remote_worker(procs, tmp_path: Path, gateway: str, name="remote1"):
    """`aicfn worker --gateway` run from an empty directory, its cache in tmp/cache."""
    cwd = tmp_path / "worker-cwd"
    cwd.mkdir(exist_ok=True)
    cache = tmp_path / "cache"
    waddr = f"tcp://127.0.0.1:{free_port()}"
    w = procs.start([aicfn_bin(), "worker", "--listen", waddr, "--device", "host", "--memory", "64MiB", "--id",
                     name, "--gateway", gateway, "--cache-dir", cache], name=name, cwd=cwd)

    def ready():
        if w.poll() is not None:
            raise RuntimeError(f"worker exited with {w.poll()}: {w.stderr()[-3000:]}")
        return any(x["name"] == name and x["state"] == "ready" for x in workers(gateway))

    wait_for(ready, 15, interval=0.05, what="the remote worker to register")
    w.addr = waddr
    return w, cwd, cache


def stored_artifacts(data: Path) -> dict:
    """{hash: path} of the gateway's artifact store (its tmp/ excluded)."""
    return {p.name: p for p in (data / "artifacts").iterdir() if p.is_file()}


def fn_hashes(data: Path, name: str):
    import sqlite3
    con = sqlite3.connect(f"file:{data / 'aicfn.db'}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT handler_hash, snapshot_hash FROM functions WHERE name = ? AND active = 1",
                           (name,)).fetchone()
    finally:
        con.close()


def artifact_get(addr, h, offset, length):
    return call(addr, {"v": PROTOCOL_VERSION, "t": "artifact_get", "id": next_id(), "hash": h, "offset": offset,
                       "len": length}, timeout_ms=10000)


# ---- tests ----

def test_remote_worker_fetches_artifacts_by_hash(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path)
    deploy(addr, ROOT / "examples" / "echo")
    deploy(addr, ROOT / "examples" / "mlp")
    stored = stored_artifacts(data)
    assert len(stored) == 3  # echo.so, mlp.so, mlp's snapshot
    w, cwd, cache = start_remote_worker(procs, tmp_path, addr)

    x = np.arange(5, dtype=np.float32)
    r = call(addr, invoke_msg("echo", [tensor("x", x)]), timeout_ms=20000)
    assert r["ok"], r
    assert np.array_equal(output(r, "x"), x)

    xm = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    r = call(addr, invoke_msg("mlp", [tensor("x", xm)]), timeout_ms=30000)
    assert r["ok"], r
    assert r["cold"] is True
    assert np.allclose(output(r, "logits").astype(np.float64), mlp_reference(xm), rtol=1e-4, atol=1e-4)
    # The fetch is a phase of the cold start: in the reply, in the cold_starts row and in
    # `aicfn coldstarts`, and the load took at least the fetch.
    assert r["timing"]["fetch"] > 0, r["timing"]
    assert r["timing"]["load"] >= r["timing"]["fetch"], r["timing"]
    cs = json.loads(run_cli(["coldstarts", "mlp", "--gateway", addr, "--json"]).stdout)
    assert cs[0]["count"] == 1 and cs[0]["phases"]["fetch"]["max_us"] > 0, cs
    r2 = call(addr, invoke_msg("mlp", [tensor("x", xm * 0.5)]), timeout_ms=30000)
    assert r2["ok"] and r2["cold"] is False, r2
    assert np.allclose(output(r2, "logits").astype(np.float64), mlp_reference(xm * 0.5), rtol=1e-4, atol=1e-4)

    # The cache holds exactly the deployed artifacts, each under its SHA-256 and intact.
    cached = {p.name: p for p in cache.iterdir()}
    assert set(cached) == set(stored), (sorted(cached), sorted(stored))
    for h, p in cached.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == h
    # Nothing was written where the worker runs (the default cache dir is not used).
    assert list(cwd.iterdir()) == []
    # The handlers were loaded from the cache, never from the gateway's data dir.
    log = w.stderr()
    for h in stored:
        assert f"fetched artifact {h}" in log, log[-3000:]
    assert str(data) not in log, log[-3000:]
    hh_echo, _ = fn_hashes(data, "echo")
    assert f"handler {cache.resolve()}/{hh_echo}" in log, log[-3000:]

    # Sent straight to the worker: gateway paths must end in a SHA-256, else INVALID.
    m = invoke_msg("other", [tensor("x", x)])
    m["spec"] = {"handler": str(data / "artifacts" / "handler.so"), "snapshot": "", "model": "", "max_batch": 1,
                 "max_delay_us": 0, "timeout_ms": 5000, "idempotent": False, "model_bytes": 0}
    r = call(w.addr, m, timeout_ms=10000)
    assert not r["ok"] and r["error"]["code"] == E_INVALID and "SHA-256" in r["error"]["message"], r
    m["spec"]["handler"] = str(data / "artifacts" / hh_echo)
    m["spec"]["snapshot"] = "/elsewhere/" + "A" * 64
    r = call(w.addr, m, timeout_ms=10000)
    assert not r["ok"] and r["error"]["code"] == E_INVALID and "spec.snapshot" in r["error"]["message"], r
    r = call(w.addr, {"v": PROTOCOL_VERSION, "t": "preload", "id": next_id(), "model": "m",
                      "snapshot": str(data / "aicfn.db")}, timeout_ms=10000)
    assert not r["ok"] and r["error"]["code"] == E_INVALID, r
    assert w.poll() is None


def test_artifact_get_protocol(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path)
    deploy(addr, ROOT / "examples" / "echo")
    (h, path), = stored_artifacts(data).items()
    want = path.read_bytes()
    # In chunks smaller than the file: every reply says the whole size.
    got, off, step = b"", 0, 4096
    for _ in range(len(want) // step + 2):
        r = artifact_get(addr, h, off, step)
        assert r["ok"], r
        assert r["size"] == len(want)
        got += r["data"]
        off += len(r["data"])
        if off >= len(want):
            break
    assert got == want
    # At the end: an empty chunk; past it: INVALID.
    r = artifact_get(addr, h, len(want), step)
    assert r["ok"] and r["data"] == b"" and r["size"] == len(want), r
    r = artifact_get(addr, h, len(want) + 1, step)
    assert not r["ok"] and r["error"]["code"] == E_INVALID, r
    # A request for more than a chunk, or nothing, is refused.
    for n in (0, CHUNK + 1):
        r = artifact_get(addr, h, 0, n)
        assert not r["ok"] and r["error"]["code"] == E_INVALID, r
    # Hashes: not hex, uppercase, a path; unknown.
    for bad in ("../../aicfn.db", h.upper(), "zz" * 32):
        r = artifact_get(addr, bad, 0, step)
        assert not r["ok"] and r["error"]["code"] in (E_INVALID, E_PROTOCOL), r
    r = artifact_get(addr, "0" * 64, 0, step)
    assert not r["ok"] and r["error"]["code"] == E_NOT_FOUND, r
    # Missing keys.
    r = call(addr, {"v": PROTOCOL_VERSION, "t": "artifact_get", "id": next_id(), "hash": h}, timeout_ms=5000)
    assert not r["ok"] and r["error"]["code"] == E_PROTOCOL, r


def test_tampered_artifacts_fail_corrupt_and_worker_survives(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path)
    deploy(addr, ROOT / "examples" / "echo")
    deploy(addr, ROOT / "examples" / "mlp")
    echo_h, _ = fn_hashes(data, "echo")
    _, snap_h = fn_hashes(data, "mlp")
    assert echo_h and snap_h
    stored = stored_artifacts(data)
    originals = {h: stored[h].read_bytes() for h in (echo_h, snap_h)}
    # Same sizes, one byte flipped: only the hash can tell.
    for h, b in originals.items():
        stored[h].chmod(0o600)
        t = bytearray(b)
        t[len(t) // 2] ^= 0x01
        stored[h].write_bytes(bytes(t))

    w, cwd, cache = start_remote_worker(procs, tmp_path, addr)
    x = np.arange(4, dtype=np.float32)
    r = call(addr, invoke_msg("echo", [tensor("x", x)]), timeout_ms=20000)
    assert not r["ok"] and r["error"]["code"] == E_CORRUPT, r
    # The fetcher's own check (the bytes the gateway sent do not hash to the name).
    assert echo_h in r["error"]["message"] and "hash to" in r["error"]["message"], r
    xm = np.ones((1, 16), dtype=np.float32)
    r = call(addr, invoke_msg("mlp", [tensor("x", xm)]), timeout_ms=30000)
    assert not r["ok"] and r["error"]["code"] == E_CORRUPT, r
    assert snap_h in r["error"]["message"] and "hash to" in r["error"]["message"], r
    # Nothing half-written is left, and the bad bytes were never placed under the hash.
    names = {p.name for p in cache.iterdir()}
    assert echo_h not in names and snap_h not in names, names
    assert not any(n.startswith(".tmp-") for n in names), names
    assert w.poll() is None

    # Restored on the gateway: the next calls fetch again and succeed on the same worker.
    for h, b in originals.items():
        stored[h].write_bytes(b)
    r = call(addr, invoke_msg("echo", [tensor("x", x)]), timeout_ms=20000)
    assert r["ok"] and np.array_equal(output(r, "x"), x), r
    r = call(addr, invoke_msg("mlp", [tensor("x", xm * 2)]), timeout_ms=30000)
    assert r["ok"], r
    assert np.allclose(output(r, "logits").astype(np.float64), mlp_reference(xm * 2), rtol=1e-4, atol=1e-4)
    assert {echo_h, snap_h} <= {p.name for p in cache.iterdir()}
    assert w.poll() is None
    assert [x["name"] for x in workers(addr)] == ["remote1"]


def test_remote_worker_with_api_keys_and_concurrent_first_calls(procs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()

    admin, user = create_key(data, "ops", "--admin"), create_key(data, "acme")
    wkey = create_key(data, "gpu-hosts", "--worker")
    listed = json.loads(run_cli(["keys", "ls", "--json", "--data-dir", str(data)]).stdout)
    assert sorted((k["tenant"], k["role"], k["admin"]) for k in listed) == [
        ("acme", "tenant", False), ("gpu-hosts", "worker", False), ("ops", "admin", True)], listed
    addr = f"tcp://127.0.0.1:{free_port()}"
    procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..0",
                 "--worker-memory", "64MiB", "--device", "host"], name="gateway")
    wait_for(lambda: call(addr, {"v": 1, "t": "status", "id": next_id(), "key": user}, timeout_ms=500).get("ok"),
             15, interval=0.05, what="the gateway")
    r = run_cli(["deploy", ROOT / "examples" / "echo", "--gateway", addr], env={"AICFN_KEY": admin})
    assert r.returncode == 0, r.stderr
    (h, path), = stored_artifacts(data).items()

    # artifact_get follows register's rules: an admin or a worker key.
    m = {"v": PROTOCOL_VERSION, "t": "artifact_get", "id": next_id(), "hash": h, "offset": 0, "len": 64}
    r = call(addr, m)
    assert not r["ok"] and r["error"]["code"] == 13, r  # no key
    r = call(addr, dict(m, key=user))
    assert not r["ok"] and r["error"]["code"] == 14, r  # a tenant's key
    for k in (admin, wkey):
        r = call(addr, dict(m, key=k))
        assert r["ok"] and r["data"] == path.read_bytes()[:64], r

    # A worker key does nothing else: no deploy, rm, ls, invoke.
    r = run_cli(["deploy", ROOT / "examples" / "echo", "--gateway", addr, "--key", wkey])
    assert r.returncode == 1 and "AICFN_E_FORBIDDEN" in r.stderr and "worker key" in r.stderr, r.stderr
    for t in ("ls", "workers"):
        r = call(addr, {"v": PROTOCOL_VERSION, "t": t, "id": next_id(), "key": wkey})
        assert not r["ok"] and r["error"]["code"] == 14, r
    m = invoke_msg("echo", [tensor("x", np.zeros(2, np.float32))])
    m["key"] = wkey
    r = call(addr, m)
    assert not r["ok"] and r["error"]["code"] == 14 and "worker key" in r["error"]["message"], r

    # The worker registers and fetches with the worker key it was given.
    cwd = tmp_path / "worker-cwd"
    cwd.mkdir()
    cache = tmp_path / "cache"
    w = procs.start([aicfn_bin(), "worker", "--listen", f"tcp://127.0.0.1:{free_port()}", "--device", "host",
                     "--memory", "64MiB", "--id", "remote1", "--gateway", addr, "--key", wkey, "--cache-dir",
                     cache], name="remote1", cwd=cwd)
    wait_for(lambda: w.poll() is None and any(
        x["name"] == "remote1" and x["state"] == "ready" for x in json.loads(
            run_cli(["workers", "--gateway", addr, "--json"], env={"AICFN_KEY": admin}).stdout)),
        15, interval=0.05, what="the remote worker to register")

    # Twelve first calls at once: each waits for the one download of the handler.
    results = [None] * 12

    def one(i):
        x = np.full(3, i, dtype=np.float32)
        m = invoke_msg("echo", [tensor("x", x)])
        m["key"] = user
        r = call(addr, m, timeout_ms=20000)
        results[i] = r["ok"] and np.array_equal(output(r, "x"), x) or r

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 12, results
    assert w.stderr().count(f"fetched artifact {h}") == 1, w.stderr()[-3000:]
    assert sorted(p.name for p in cache.iterdir()) == [h]
    assert w.poll() is None


def test_repository_load_preloads_fetched_snapshot(procs, tmp_path):
    """OIP repository load sends the remote worker a `preload` naming the gateway's
    snapshot path: the worker fetches the snapshot by hash and makes it resident, so the
    next call is warm."""
    import http.client
    addr = f"tcp://127.0.0.1:{free_port()}"
    hport = free_port()
    data = tmp_path / "data"
    g = procs.start([aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..0",
                     "--worker-memory", "64MiB", "--device", "host", "--insecure-local", "--http",
                     f"127.0.0.1:{hport}"], name="gateway")
    wait_for(lambda: g.poll() is None and call(addr, {"v": 1, "t": "status", "id": next_id()}, timeout_ms=500)
             .get("ok"), 15, interval=0.05, what="the gateway")
    deploy(addr, ROOT / "examples" / "mlp")
    _, snap_h = fn_hashes(data, "mlp")
    w, cwd, cache = start_remote_worker(procs, tmp_path, addr)

    c = http.client.HTTPConnection("127.0.0.1", hport, timeout=30)
    try:
        c.request("POST", "/v2/repository/models/mlp/load", body=b"{}")
        resp = c.getresponse()
        body = resp.read()
    finally:
        c.close()
    assert resp.status == 200, body
    assert snap_h in {p.name for p in cache.iterdir()}
    assert f"fetched artifact {snap_h}" in w.stderr()
    xm = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    r = call(addr, invoke_msg("mlp", [tensor("x", xm)]), timeout_ms=30000)
    assert r["ok"] and r["cold"] is False, r
    assert np.allclose(output(r, "logits").astype(np.float64), mlp_reference(xm), rtol=1e-4, atol=1e-4)


def test_remote_worker_rejoins_a_restarted_gateway(procs, tmp_path):
    """The gateway dies (kill -9) and comes back on the same address and data: the remote
    worker, which renews its registration every 5 s, is routed to again without a
    restart of its own, and serves the function deployed before."""
    port = free_port()
    addr, data, g = gateway_with(procs, tmp_path, workers="0..0", port=port)
    deploy(addr, ROOT / "examples" / "echo")
    w, _, _ = start_remote_worker(procs, tmp_path, addr)
    x = np.arange(3, dtype=np.float32)
    assert call(addr, invoke_msg("echo", [tensor("x", x)]), timeout_ms=20000)["ok"]
    g.p.kill()
    g.p.wait(timeout=10)
    addr2, _, _ = gateway_with(procs, tmp_path, workers="0..0", port=port, data=data, name="gateway2")
    wait_for(lambda: any(x["name"] == "remote1" and x["state"] == "ready" for x in workers(addr2)), 20,
             interval=0.1, what="the remote worker to register again")
    r = call(addr2, invoke_msg("echo", [tensor("x", x * 2)]), timeout_ms=20000)
    assert r["ok"], r
    assert np.array_equal(output(r, "x"), x * 2)
    assert w.poll() is None
    assert "registered again with gateway" in w.stderr()


def test_remote_worker_stuck_in_a_call_is_ordered_to_exit(procs, tmp_path):
    """A registered worker whose call runs past its timeout + grace cannot be sent SIGKILL
    from another host: the gateway orders it to exit with the token the worker sent in its
    `register`, and the worker process ends (exit status 3, for its supervisor to restart
    it) instead of running the stuck call on. An `exit` without that token is refused
    (AICFN_E_FORBIDDEN) and changes nothing."""
    addr, data, g = gateway_with(procs, tmp_path, workers="0..0")
    write_manifest(tmp_path / "stuck", f"name: stuck\nhandler: {handler('test_sleep')}\nlimits: {{ timeout: 1s }}\n")
    deploy(addr, tmp_path / "stuck")
    w, _, _ = start_remote_worker(procs, tmp_path, addr)
    x = tensor("x", np.arange(2, dtype=np.float32))
    assert call(addr, invoke_msg("stuck", [x]), timeout_ms=20000)["ok"]
    for bad in ({"ctl": "0" * 64}, {"ctl": ""}, {}):
        r = call(w.addr, {"v": PROTOCOL_VERSION, "t": "exit", "id": next_id(), **bad}, timeout_ms=5000)
        assert not r["ok"] and r["error"]["code"] in (E_FORBIDDEN, E_PROTOCOL), (bad, r)
    assert w.poll() is None and call(addr, invoke_msg("stuck", [x]), timeout_ms=20000)["ok"]
    t0 = time.monotonic()
    r = call(addr, invoke_msg("stuck", [x], params={"sleep_ms": "60000"}), timeout_ms=30000)
    assert not r["ok"] and r["error"]["code"] == E_TIMEOUT, r
    assert time.monotonic() - t0 < 15  # timeout (1 s) + grace (5 s), not the handler's 60 s
    wait_for(lambda: w.poll() is not None, 10, interval=0.05, what="the stuck remote worker to exit")
    assert w.poll() == 3, (w.poll(), w.stderr()[-2000:])
    assert "its gateway ends it: a call got no reply within its timeout + grace" in w.stderr(), w.stderr()[-2000:]
    assert "ordering it to exit" in g.stderr(), g.stderr()[-2000:]


def test_remote_worker_restarted_at_once_serves_again(procs, tmp_path):
    """A remote worker killed (-9) and started again at once, same address and id, before
    the gateway noticed: its registration is refused as already known, and it runs on (the
    gateway's link to that address reaches the new process) and serves calls."""
    addr, data, g = gateway_with(procs, tmp_path, workers="0..0")
    deploy(addr, ROOT / "examples" / "echo")
    w, cwd, cache = start_remote_worker(procs, tmp_path, addr)
    x = np.arange(3, dtype=np.float32)
    assert call(addr, invoke_msg("echo", [tensor("x", x)]), timeout_ms=20000)["ok"]
    w.p.kill()
    w.p.wait(timeout=10)
    w2 = procs.start([aicfn_bin(), "worker", "--listen", w.addr, "--device", "host", "--memory", "64MiB", "--id",
                      "remote1", "--gateway", addr, "--cache-dir", cache], name="remote1-again", cwd=cwd)
    wait_for(lambda: "it reaches this worker there" in w2.stderr() or w2.poll() is not None, 15, interval=0.05,
             what="the restarted worker to register")
    assert w2.poll() is None, w2.stderr()[-2000:]

    def served():
        r = call(addr, invoke_msg("echo", [tensor("x", x * 3)]), timeout_ms=5000)
        return r["ok"] and np.array_equal(output(r, "x"), x * 3)

    wait_for(served, 20, interval=0.2, what="a call served after the restart")
    assert w2.poll() is None


def test_second_worker_with_the_same_id_is_refused(procs, tmp_path):
    """Two workers started with one --id at different addresses: the second is refused
    (not taken for a renewal of the first) and exits, saying why; the first serves on."""
    addr, data, g = gateway_with(procs, tmp_path, workers="0..0")
    deploy(addr, ROOT / "examples" / "echo")
    w, cwd, cache = start_remote_worker(procs, tmp_path, addr)
    w2 = procs.start([aicfn_bin(), "worker", "--listen", f"tcp://127.0.0.1:{free_port()}", "--device", "host",
                      "--memory", "64MiB", "--id", "remote1", "--gateway", addr, "--cache-dir", cache],
                     name="remote1-twin", cwd=cwd)
    assert w2.wait(20) == 1, w2.stderr()[-2000:]
    assert "already named 'remote1'" in w2.stderr()
    x = np.arange(3, dtype=np.float32)
    r = call(addr, invoke_msg("echo", [tensor("x", x)]), timeout_ms=20000)
    assert r["ok"], r
    assert w.poll() is None


def test_worker_names_outside_the_charset_are_refused(procs, tmp_path):
    """A registered worker's name becomes a /metrics label, a workers-table key and JSON:
    one with a space, a quote or a newline is refused (a worker key's holder chooses it),
    and the gateway serves on."""
    addr, data, g = gateway_with(procs, tmp_path, workers="0..0")
    for bad in ("bad name", 'q"x', "nl\nx", "\u00e9t\u00e9"):
        r = call(addr, gw_msg("register", addr=f"tcp://127.0.0.1:{free_port()}", name=bad))
        assert not r["ok"] and r["error"]["name"] == "AICFN_E_INVALID", (bad, r)
        assert "characters of A-Z a-z 0-9" in r["error"]["message"], r
    assert call(addr, status_msg())["ok"]


def test_registered_worker_whose_first_status_fails_is_dropped(procs, tmp_path):
    """A registered worker whose first status poll fails (here: a reply that is not
    msgpack) is dropped at once. Only ready and draining workers are polled again, so it
    used to stay 'starting' for ever, holding every call routed to it."""
    import pynng
    addr, data, g = start_gateway(procs, tmp_path)
    waddr = f"tcp://127.0.0.1:{free_port()}"
    stop = threading.Event()
    with pynng.Rep0(listen=waddr, recv_timeout=100) as fake:
        def serve():
            for _ in range(600):  # at most 60 s of 100 ms receives
                if stop.is_set():
                    return
                try:
                    fake.recv()
                except pynng.Timeout:
                    continue
                fake.send(b"\xc1")  # never valid msgpack
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            r = call(addr, {"v": PROTOCOL_VERSION, "t": "register", "id": next_id(), "addr": waddr, "name": "fake1"})
            assert r["ok"], r
            wait_for(lambda: not any(x["name"] == "fake1" for x in workers(addr)), 10,
                     what="the worker whose first status failed to be dropped")
            assert "fake1: its first status failed" in g.stderr()
        finally:
            stop.set()
            t.join(timeout=5)
