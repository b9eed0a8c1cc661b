"""End to end: what `aicfn rm` does to the gateway's artifact store (real gateway and
worker processes on loopback).

Covers: removing the last version that uses an artifact deletes the artifact file, while
an artifact still used by another function stays; the worker that loaded a shared
handler keeps serving the function that remains; deploying again after the files were
deleted uploads them again and works. An upload abandoned by its client is aborted
after --upload-timeout even when no other message comes, and its temporary file is
removed; one interrupted by Ctrl-C is aborted by the CLI at once. A connection that drops
in the middle of an upload (a proxy cuts it) costs one chunk sent again, not the deploy.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pynng
import pytest

from conftest import (PROTOCOL_VERSION, ROOT, aicfn_bin, call, free_port, gw_msg, handler, invoke_msg, next_id,
                      run_cli, tensor, wait_for)
from test_gateway import deploy, start_gateway, write_manifest, write_safetensors

import numpy as np


def store(data: Path) -> set:
    """The artifact hashes in the gateway's content-addressed store."""
    d = data / "artifacts"
    return {p.name for p in d.iterdir() if p.is_file() and len(p.name) == 64}


def ls(addr) -> list:
    r = run_cli(["ls", "--gateway", addr, "--json"], timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def echo_function(tmp_path: Path, name: str) -> Path:
    """A function named `name` running the prebuilt echo handler: functions made this way
    share one handler artifact (the same .so bytes, the same hash)."""
    return write_manifest(tmp_path / name, f"name: {name}\nhandler: {handler('echo')}\n")


def invoke_mlp(addr, fn):
    x = tensor("x", np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))
    return call(addr, invoke_msg(fn, [x]), timeout_ms=30000)


def invoke_echo(addr, fn):
    return call(addr, invoke_msg(fn, [tensor("x", np.arange(4, dtype=np.float32))]), timeout_ms=10000)


def rm(addr, ref):
    r = run_cli(["rm", ref, "--gateway", addr], timeout=10)
    assert r.returncode == 0, r.stderr


def test_rm_deletes_unreferenced_artifacts_only(procs, tmp_path):
    addr, data, _ = start_gateway(procs, tmp_path, workers="0..1", memory="64MiB")
    assert deploy(addr, echo_function(tmp_path, "e1")) == 1
    assert deploy(addr, echo_function(tmp_path, "e2")) == 1
    echo_files = store(data)
    assert len(echo_files) == 1  # one handler, shared
    assert deploy(addr, ROOT / "examples" / "mlp") == 1
    mlp_files = store(data) - echo_files
    assert len(mlp_files) == 2  # mlp's handler and its snapshot
    for fn in ("e1", "e2"):
        r = invoke_echo(addr, fn)
        assert r["ok"], r
    r = invoke_mlp(addr, "mlp")
    assert r["ok"], r

    # e2 still references the echo handler: removing e1 deletes nothing, and the worker
    # that loaded the handler keeps serving e2.
    rm(addr, "e1")
    assert store(data) == echo_files | mlp_files
    r = invoke_echo(addr, "e2")
    assert r["ok"], r

    # The last user of the handler goes: its file goes; mlp's stay and mlp still runs.
    rm(addr, "e2")
    assert store(data) == mlp_files
    r = invoke_mlp(addr, "mlp")
    assert r["ok"], r
    rm(addr, "mlp")
    assert store(data) == set()
    assert ls(addr) == []

    # Deploying again uploads the deleted artifacts again; the new versions run.
    assert deploy(addr, echo_function(tmp_path, "e1")) == 2  # versions are never reused
    assert deploy(addr, ROOT / "examples" / "mlp") == 2
    # (A handler built from source is not byte-reproducible when nvcc takes part, so
    # mlp's new handler may hash differently; the prebuilt echo handler does not.)
    now = store(data)
    assert echo_files <= now and len(now) == 3
    for h in now:
        assert hashlib.sha256((data / "artifacts" / h).read_bytes()).hexdigest() == h
    r = invoke_echo(addr, "e1")
    assert r["ok"], r
    r = invoke_mlp(addr, "mlp")
    assert r["ok"], r


def test_abandoned_upload_is_aborted_without_further_messages(procs, tmp_path):
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0", extra=("--upload-timeout", "1s"))
    blob = bytes(range(256)) * 64
    digest = hashlib.sha256(blob * 2).hexdigest()

    begin = call(addr, gw_msg("upload_begin", hash=digest, size=2 * len(blob)))
    assert begin["ok"], begin
    token = begin["upload"]
    t0 = time.monotonic()  # before the chunk: the gateway's idle clock starts after it
    chunk = call(addr, gw_msg("upload_chunk", upload=token, offset=0, data=blob))
    assert chunk["ok"] and chunk["received"] == len(blob), chunk
    tmp = data / "artifacts" / "tmp"
    assert len(list(tmp.iterdir())) == 1
    # The client goes away. No message reaches the gateway from now on: the front must
    # abort the upload on its own once it has been idle for 1 s.
    wait_for(lambda: not any(tmp.iterdir()), 10, interval=0.05, what="the abandoned upload's file removed")
    assert time.monotonic() - t0 >= 0.9  # not before its timeout (1 s from the last chunk)
    late = call(addr, gw_msg("upload_chunk", upload=token, offset=len(blob), data=blob))
    assert not late["ok"] and late["error"]["name"] == "AICFN_E_NOT_FOUND", late
    assert "abandoned upload" in g.stderr()
    assert digest not in store(data)


def test_upload_slots_and_hashes_are_checked_in_the_right_order(procs, tmp_path):
    # A file the store already holds needs no upload slot: while every slot is taken,
    # upload_begin of it still answers exists (a deploy whose artifacts are all stored
    # goes through). A deploy naming a malformed hash is AICFN_E_INVALID, not a missing
    # upload. Upload tokens start at random (a token from before a restart names nothing).
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, echo_function(tmp_path, "e1"))
    (stored,) = store(data)
    size = (data / "artifacts" / stored).stat().st_size

    tokens = []
    for i in range(16):
        r = call(addr, gw_msg("upload_begin", hash=hashlib.sha256(b"x%d" % i).hexdigest(), size=2))
        assert r["ok"] and not r["exists"], r
        tokens.append(r["upload"])
    assert min(tokens) >= 1 << 40, tokens
    r = call(addr, gw_msg("upload_begin", hash=hashlib.sha256(b"new").hexdigest(), size=3))
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_OVERLOADED", r
    # With every slot taken, what can never succeed still says why, not "try again".
    r = call(addr, gw_msg("upload_begin", hash="Z" * 64, size=3))
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_INVALID", r
    r = call(addr, gw_msg("upload_begin", hash=hashlib.sha256(b"big").hexdigest(), size=1 << 50))
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_TOO_LARGE", r
    r = call(addr, gw_msg("upload_begin", hash=stored, size=size))
    assert r["ok"] and r["exists"] and r["upload"] == 0, r
    r = call(addr, gw_msg("deploy", name="bad", handler="Z" * 64))
    assert not r["ok"] and r["error"]["name"] == "AICFN_E_INVALID", r
    assert "64 lowercase hex digits" in r["error"]["message"]
    for t in tokens:
        assert call(addr, gw_msg("upload_abort", upload=t))["ok"]


def upload_committed(addr, blob: bytes) -> str:
    """Uploads `blob` in one chunk and commits it, naming it in no deploy: its hash."""
    digest = hashlib.sha256(blob).hexdigest()
    begin = call(addr, gw_msg("upload_begin", hash=digest, size=len(blob)))
    assert call(addr, gw_msg("upload_chunk", upload=begin["upload"], offset=0, data=blob))["ok"]
    assert call(addr, gw_msg("upload_commit", upload=begin["upload"]))["ok"]
    return digest


def test_uploads_whose_deploy_never_came_are_removed_at_start(procs, tmp_path):
    # A deploy that stops between its uploads and its `deploy` message (Ctrl-C, a client
    # timeout, a gateway restart) leaves files no version references; the next gateway
    # start removes them, and nothing a version uses.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1")
    deploy(addr, echo_function(tmp_path, "kept"))
    (used,) = store(data)
    digest = upload_committed(addr, b"never deployed" * 1000)
    assert store(data) == {used, digest}
    g.stop()
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", name="gateway2", data=data)
    assert store(data) == {used}
    assert "removed 1 file(s)" in g.stderr()
    r = invoke_echo(addr, "kept")
    assert r["ok"], r


def test_uploads_whose_deploy_never_came_are_removed_while_running(procs, tmp_path):
    # A committed upload that no deploy names within twice the upload timeout (here 2 s)
    # is removed by the running gateway, not only at its next start; one a deploy named
    # stays, and so does the version's function.
    addr, data, g = start_gateway(procs, tmp_path, workers="0..1", extra=("--upload-timeout", "1s"))
    deploy(addr, echo_function(tmp_path, "kept"))
    (used,) = store(data)
    digest = upload_committed(addr, b"never deployed, running" * 1000)
    t0 = time.monotonic()
    assert store(data) == {used, digest}
    # While another upload is open (a deploy's snapshot after its handler may take any
    # time) nothing is removed: one kept alive with a chunk every 0.4 s for 3 s.
    other = b"x" * 1000
    begin2 = call(addr, gw_msg("upload_begin", hash=hashlib.sha256(other * 8).hexdigest(), size=8 * len(other)))
    for k in range(8):
        assert call(addr, gw_msg("upload_chunk", upload=begin2["upload"], offset=k * len(other), data=other))["ok"]
        time.sleep(0.4)
    assert digest in store(data)
    assert call(addr, gw_msg("upload_abort", upload=begin2["upload"]))["ok"]
    wait_for(lambda: store(data) == {used}, 15, interval=0.1, what="the undeployed upload removed")
    assert time.monotonic() - t0 >= 1.8  # not before its grace (2 x the upload timeout)
    assert "no deploy named it within 2 s" in g.stderr()
    r = invoke_echo(addr, "kept")
    assert r["ok"], r


def test_a_new_database_never_sweeps_the_store(procs, tmp_path):
    """aicfn.db gone (moved away, lost) from a data directory whose store holds deployed
    artifacts: the gateway starts with a new, empty registry, and the sweep of
    unreferenced files keeps them all (they may be all that is left of acknowledged
    deploys); it used to delete every one."""
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0")
    deploy(addr, echo_function(tmp_path, "kept"))
    files = store(data)
    assert len(files) == 1, files
    g.stop()
    for suffix in ("", "-wal", "-shm"):
        p = data / f"aicfn.db{suffix}"
        if p.exists():
            p.rename(tmp_path / f"saved.db{suffix}")
    addr, data, g = start_gateway(procs, tmp_path, workers="0..0", name="gateway2", data=data)
    assert store(data) == files
    assert "registers no function" in g.stderr() and "not swept" in g.stderr(), g.stderr()[-2000:]


def test_interrupted_deploy_aborts_its_upload(tmp_path):
    # Ctrl-C during `aicfn deploy`'s upload: the chunk in flight ends, the CLI sends
    # upload_abort for that upload (else the gateway keeps its space reserved until the
    # upload's idle timeout) and exits non-zero without deploying. A gateway written from
    # the protocol answers each chunk after 300 ms, so the signal lands mid-upload.
    d = tmp_path / "big"
    d.mkdir()
    rng = np.random.default_rng(3)
    write_safetensors(d / "w.safetensors", {"w": rng.standard_normal((3 << 20,)).astype(np.float32)})  # 12 MiB
    (d / "aicfn.yaml").write_text(f"name: big\nhandler: {handler('echo')}\nmodel: w.safetensors\n")
    addr = f"tcp://127.0.0.1:{free_port()}"
    rep = pynng.Rep0(listen=addr, recv_timeout=200, recv_max_size=0)
    seen, stop = [], threading.Event()

    def serve():  # bounded by the test: stops when told, each receive times out
        token = 100
        while not stop.is_set():
            try:
                req = msgpack.unpackb(rep.recv(), raw=False)
            except pynng.Timeout:
                continue
            t = req.get("t")
            seen.append((t, req.get("upload")))
            r = {"v": PROTOCOL_VERSION, "id": req["id"], "ok": True}
            if t == "status":
                r["json"] = json.dumps({"features": ["deploy_id", "deploy_activate", "worker_keys"]})
            elif t == "upload_begin":
                token += 1
                r.update(upload=token, exists=False)
            elif t == "upload_chunk":
                time.sleep(0.3)
                r.update(received=req["offset"] + len(req["data"]))
            rep.send(msgpack.packb(r))

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    p = subprocess.Popen([str(aicfn_bin()), "deploy", str(d), "--gateway", addr], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        # The handler (one chunk) goes first, then the snapshot's chunks: interrupt after
        # the snapshot's first.
        wait_for(lambda: sum(1 for t, _ in seen if t == "upload_begin") == 2 and seen[-1][0] == "upload_chunk",
                 60, interval=0.02, what="the snapshot's upload under way")
        snap_token = [u for t, u in seen if t == "upload_chunk"][-1]
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        stop.set()
        th.join(timeout=5)
        rep.close()
    assert p.returncode == 1, (p.returncode, err)
    assert "upload aborted" in err, err
    assert ("upload_abort", snap_token) in seen, seen
    assert "deploy" not in [t for t, _ in seen], seen
    assert "deployed" not in out


class CuttingProxy:
    """Forwards 127.0.0.1:PORT to `target_port`, and cuts one connection (both ends
    closed) once: where cut_at(bytes sent so far, the data read next) first returns a
    number, after forwarding that many bytes of that data towards the target. Bounded:
    sockets time out after 60 s, and close() ends the accept loop."""

    def __init__(self, target_port: int, cut_at):
        self.target, self.cut_at, self.cuts = target_port, cut_at, 0
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                c, _ = self.srv.accept()
            except socket.timeout:
                continue
            u = socket.create_connection(("127.0.0.1", self.target), timeout=60)
            c.settimeout(60)
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src, dst, upstream):
        sent = 0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                with self.lock:
                    cut = self.cut_at(sent, data) if upstream and self.cuts == 0 else None
                    if cut is not None:
                        self.cuts += 1
                if cut is not None:
                    dst.sendall(data[:cut])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.srv.close()


def cut_inside_second_chunk(sent, data):
    return (6 << 20) - sent if sent + len(data) > 6 << 20 else None  # the snapshot's 2nd chunk


def cut_after_snapshot_commit(sent, data):
    # The handler's commit comes first (a small upload), then the snapshot's: its answer is lost.
    cut_after_snapshot_commit.seen += data.count(b"upload_commit")
    return len(data) if cut_after_snapshot_commit.seen == 2 else None


@pytest.mark.parametrize("cut", ["chunk", "commit"])
def test_dropped_connection_mid_upload_is_survived(procs, tmp_path, cut):
    """A connection that drops in the middle of a chunk costs that chunk sent again; one
    that drops after the commit went out but before its answer came (the gateway stored
    the file) is found out by asking the gateway, not reported as a failed deploy."""
    addr, data, g = start_gateway(procs, tmp_path)
    d = tmp_path / "big"
    d.mkdir()
    w = np.random.default_rng(5).standard_normal((3 << 20,)).astype(np.float32)  # 12 MiB: 3 chunks
    write_safetensors(d / "w.safetensors", {"w": w})
    write_manifest(d, f"name: big\nhandler: {handler('echo')}\nmodel: w.safetensors\n")
    cut_after_snapshot_commit.seen = 0
    proxy = CuttingProxy(int(addr.rsplit(":", 1)[1]),
                         cut_inside_second_chunk if cut == "chunk" else cut_after_snapshot_commit)
    try:
        r = run_cli(["deploy", str(d), "--gateway", f"tcp://127.0.0.1:{proxy.port}", "--json"], timeout=120)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert r.returncode == 0, r.stderr
    what = "the chunk at byte 4194304 failed" if cut == "chunk" else "upload_commit failed"
    assert what in r.stderr and "sending it again" in r.stderr, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["version"] == 1
    x = np.arange(4, dtype=np.float32)
    rep = call(addr, invoke_msg("big", [tensor("x", x)]), timeout_ms=30000)
    assert rep["ok"], rep
