"""Shared fixtures for the end-to-end tests: real aicfn processes on loopback.

- Binaries: $AICFN_PREFIX/bin/aicfn (AICFN_PREFIX defaults to zig-out, relative to the
  repository root) and handlers at $AICFN_PREFIX/lib/handlers/NAME.so.
- Addresses: free_port() / tcp_addr() for tcp://127.0.0.1:PORT, ipc_addr(tmp_path) for
  a unique ipc:// path.
- Processes: the `procs` fixture starts processes (stdout/stderr to log files under the
  test's tmp dir) and guarantees they are stopped (SIGTERM, bounded wait, then SIGKILL)
  when the test ends. Every wait here is bounded.
- A minimal protocol client (msgpack over a pynng REQ socket) for raw messages:
  call(addr, msg) / call_raw(addr, bytes). The REQ resend time is disabled, as the
  protocol requires (a retried call would run twice).
"""
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgpack
import pynng
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_VERSION = 1

# aicfn_status values (include/aicfn.h).
OK = 0
E_INVALID = 1
E_NOT_FOUND = 6
E_TOO_LARGE = 7
E_TIMEOUT = 9
E_UNAVAILABLE = 10
E_OVERLOADED = 11
E_HANDLER = 16
E_ABI = 17
E_PROTOCOL = 19


def prefix() -> Path:
    p = Path(os.environ.get("AICFN_PREFIX", "zig-out"))
    return p if p.is_absolute() else ROOT / p


def aicfn_bin() -> Path:
    return prefix() / "bin" / "aicfn"


def handler(name: str) -> Path:
    return prefix() / "lib" / "handlers" / f"{name}.so"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_addr() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


_ipc_paths = []


def ipc_addr(tmp_path: Path, stem: str = "w") -> str:
    """A fresh ipc:// address. ipc paths are limited to ~100 bytes, so they live under
    /tmp (not the test's tmp dir); the files are removed after each test."""
    path = f"/tmp/aicfn-{stem}-{uuid.uuid4().hex[:12]}.ipc"
    _ipc_paths.append(path)
    return f"ipc://{path}"


@pytest.fixture(autouse=True)
def _remove_ipc_files():
    yield
    while _ipc_paths:
        try:
            os.unlink(_ipc_paths.pop())
        except OSError:
            pass


def wait_for(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Polls pred() until it returns a truthy value or `timeout` seconds pass."""
    end = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < end:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


# ---- the protocol client ----

def _req_socket(addr: str, timeout_ms: int) -> pynng.Req0:
    s = pynng.Req0(recv_timeout=timeout_ms, send_timeout=timeout_ms, recv_max_size=64 << 20)
    s.resend_time = -1  # NNG_DURATION_INFINITE: never resend (design.md §4)
    s.dial(addr, block=True)
    return s


def call_raw(addr: str, payload: bytes, timeout_ms: int = 10000) -> dict:
    """Sends raw bytes, returns the decoded reply map."""
    with _req_socket(addr, timeout_ms) as s:
        s.send(payload)
        return msgpack.unpackb(s.recv(), raw=False)


def call(addr: str, msg: dict, timeout_ms: int = 10000) -> dict:
    return call_raw(addr, msgpack.packb(msg, use_bin_type=True), timeout_ms)


_next_id = [1000]


def next_id() -> int:
    _next_id[0] += 1
    return _next_id[0]


def tensor(name: str, array=None, dtype: str = None, shape=None, data: bytes = None) -> dict:
    """A wire tensor from a numpy array (or explicit dtype/shape/data)."""
    if array is not None:
        import numpy as np

        names = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
                 "bool": "BOOL", "float16": "FP16", "int8": "INT8", "int16": "INT16", "uint16": "UINT16",
                 "uint32": "UINT32", "uint64": "UINT64"}
        a = np.ascontiguousarray(array)
        return {"name": name, "dtype": names[a.dtype.name], "shape": list(a.shape),
                "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}
    return {"name": name, "dtype": dtype, "shape": list(shape), "data": data}


def bytes_tensor(name: str, items) -> dict:
    data = b"".join(len(x).to_bytes(4, "little") + x for x in items)
    return {"name": name, "dtype": "BYTES", "shape": [len(items)], "data": data}


def invoke_msg(fn: str, inputs, params=None, deadline_ms=None, rid=None) -> dict:
    m = {"v": PROTOCOL_VERSION, "t": "invoke", "id": rid if rid is not None else next_id(), "fn": fn,
         "inputs": list(inputs)}
    if params is not None:
        m["params"] = params
    if deadline_ms is not None:
        m["deadline_ms"] = deadline_ms
    return m


def status_msg() -> dict:
    return {"v": PROTOCOL_VERSION, "t": "status", "id": next_id()}


def gw_msg(t: str, **kw) -> dict:
    """A gateway message of type `t` (upload_begin, deploy, register, ...) with its keys."""
    return {"v": PROTOCOL_VERSION, "t": t, "id": next_id(), **kw}


def output(reply: dict, name: str):
    """The named output of a reply as a numpy array."""
    import numpy as np

    dt = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "BOOL": "u1",
          "FP16": "<f2", "INT8": "i1", "INT16": "<i2", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
    for o in reply["outputs"]:
        if o["name"] == name:
            return np.frombuffer(o["data"], dtype=dt[o["dtype"]]).reshape(o["shape"])
    raise KeyError(name)


# ---- processes ----

class Proc:
    """A started process with its log files."""

    def __init__(self, args, log_dir: Path, name: str, env=None, cwd=None, pass_fds=(), preexec_fn=None):
        self.args = [str(a) for a in args]
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        e = dict(os.environ)
        if env:
            e.update(env)
        self.p = subprocess.Popen(self.args, stdout=self._out, stderr=self._err, env=e, cwd=cwd or ROOT,
                                  pass_fds=pass_fds, preexec_fn=preexec_fn)

    def poll(self):
        return self.p.poll()

    def wait(self, timeout: float):
        return self.p.wait(timeout=timeout)

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout: float = 10.0):
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self._out.close()
        self._err.close()
        return self.p.returncode

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")


class Procs:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.all = []

    def start(self, args, name: str = None, env=None, cwd=None, pass_fds=(), preexec_fn=None) -> Proc:
        """Starts `args` (in the repository root unless `cwd` is given), logs to files;
        `pass_fds` stay open in it; `preexec_fn` runs in the child before exec."""
        p = Proc(args, self.log_dir, name or f"p{len(self.all)}", env, cwd, pass_fds, preexec_fn)
        self.all.append(p)
        return p

    def stop_all(self):
        for p in self.all:
            try:
                p.stop(timeout=5)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


@pytest.fixture
def procs(tmp_path):
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.stop_all()


def start_worker(procs: Procs, addr: str, functions, device: str = "host", memory: str = "256MiB",
                 name: str = "worker", env=None, wait: bool = True) -> Proc:
    """Starts `aicfn worker` and (when wait) polls status until it answers (<= 15 s)."""
    args = [aicfn_bin(), "worker", "--listen", addr, "--device", device, "--memory", memory]
    for f in functions:
        args += ["--function", f]
    w = procs.start(args, name=name, env=env)
    if wait:
        def ready():
            if w.poll() is not None:
                raise RuntimeError(f"worker exited with {w.poll()}: {w.stderr()[-2000:]}")
            return call(addr, status_msg(), timeout_ms=500).get("ok")
        wait_for(ready, 15, interval=0.05, what=f"worker on {addr}")
    return w


@pytest.fixture
def aicfn():
    b = aicfn_bin()
    if not b.exists():
        pytest.fail(f"{b} not built (set AICFN_PREFIX or run zig build)")
    return b


def run_cli(args, timeout: float = 30, env=None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([str(aicfn_bin())] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=e)


def pack_mlp(d: Path):
    """examples/mlp's weights made by its make_weights.py in `d`, and their snapshot packed
    by `aicfn snapshot pack`: (weights.safetensors, mlp.aicsnap)."""
    weights = d / "weights.safetensors"
    subprocess.run([sys.executable, str(ROOT / "examples" / "mlp" / "make_weights.py"), str(weights)], check=True,
                   capture_output=True, timeout=60)
    snap = d / "mlp.aicsnap"
    r = run_cli(["snapshot", "pack", weights, "-o", snap], timeout=60)
    assert r.returncode == 0, r.stderr
    return weights, snap


def create_key(data: Path, tenant: str, *extra) -> str:
    """`aicfn keys create` in the data directory `data`: a new API key of `tenant`
    (extra flags: --admin, --rate N/s, --quota N/day)."""
    r = run_cli(["keys", "create", "--tenant", tenant, "--data-dir", str(data), *extra], timeout=20)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("aicfn_")
    return key
