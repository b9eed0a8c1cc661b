"""End-to-end tests of the gateway's HTTP front (Open Inference Protocol v2) with real
processes on loopback: `aicfn gateway --http 127.0.0.1:PORT`, Triton's own Python client
(tritonclient[http]), raw HTTP for the limits, the CLI for keys and usage, SQLite for the
ledger and promtool for /metrics.

Covers: is_server_live/is_server_ready/server and model metadata; infer on mlp over JSON
and over the binary tensor extension, equal to the NNG (msgpack) path; unknown model
404 with {"error"}; keys (no key 401, revoked key 401, over rate 429 then success after
Retry-After, non-admin load 403, no plaintext key in the database files); a body over the
limit refused with 413; /metrics passes `promtool check metrics` after a mixed workload
and its call counters match the ledger; `aicfn usage` totals equal the SQL sums.

Every wait is bounded.
"""
import http.client
import json
import resource
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as tritonhttp  # tests/requirements.txt
from tritonclient.utils import InferenceServerException

from conftest import (PROTOCOL_VERSION, ROOT, aicfn_bin, call, create_key, free_port, handler, invoke_msg, next_id, output,
                      run_cli, tensor, wait_for)


# ---- helpers ----

def start(procs, tmp_path: Path, insecure=True, data=None, exe=None, env=None, wait_s=15, extra=()):
    """A gateway with the HTTP front; `exe`: another aicfn binary (default: the release one);
    `extra`: more gateway flags."""
    port, hport = free_port(), free_port()
    addr = f"tcp://127.0.0.1:{port}"
    data = data or (tmp_path / "data")
    args = [exe or aicfn_bin(), "gateway", "--listen", addr, "--data", data, "--workers", "0..1", "--worker-memory",
            "64MiB", "--device", "host", "--http", f"127.0.0.1:{hport}"]
    if insecure:
        args.append("--insecure-local")
    args += list(extra)
    g = procs.start(args, name="gateway", env=env)

    def ready():
        if g.poll() is not None:
            raise RuntimeError(f"gateway exited with {g.poll()}: {g.stderr()[-3000:]}")
        with socket.create_connection(("127.0.0.1", hport), timeout=0.5):
            return True

    wait_for(ready, wait_s, interval=0.05, what=f"gateway HTTP on {hport}")
    return addr, hport, data, g


def start_sanitized(procs, tmp_path: Path):
    """A gateway from the AddressSanitizer+UBSan build (run_suite.py builds it before the
    e2e stage), which aborts on undefined behaviour on its paths; None when not built."""
    exe = ROOT / "zig-out" / "asan" / "bin" / "aicfn"
    if not exe.exists():
        return None
    env = {"UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1", "ASAN_OPTIONS": "detect_leaks=0"}
    addr, hport, _, g = start(procs, tmp_path, exe=exe, env=env, wait_s=30)
    return addr, hport, g


def deploy(addr, key=None):
    args = ["deploy", str(ROOT / "examples" / "mlp"), "--gateway", addr, "--json"]
    if key:
        args += ["--key", key]
    r = run_cli(args, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["version"]


def http_req(port, method, path, body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def held_connections(port, n):
    """n keep-alive connections from 127.0.0.1, each answered once (so the server has taken
    it, in order) and left open, idle."""
    conns = []
    try:
        for _ in range(n):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conns.append(c)
            c.request("GET", "/v2/health/live")
            r = c.getresponse()
            r.read()
            assert r.status == 200 and not r.will_close, (r.status, r.getheaders())
    except BaseException:
        close_all(conns)
        raise
    return conns


def close_all(conns):
    for c in conns:
        c.close()


def served(port, timeout=3):
    """Whether a new connection gets GET /v2/health/live answered (False: closed unanswered
    or no answer within `timeout`)."""
    try:
        return http_req(port, "GET", "/v2/health/live", timeout=timeout)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def mlp_x():
    return np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)


def infer_json(x):
    return json.dumps({"id": "e2e", "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                                "data": x.flatten().tolist()}]})


def db_rows(data: Path, sql: str, args=()):
    con = sqlite3.connect(str(data / "aicfn.db"), timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def metric_value(text: str, name: str, labels: dict) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- tests ----

def test_tritonclient_end_to_end(procs, tmp_path):
    addr, hport, data, g = start(procs, tmp_path)
    deploy(addr)
    c = tritonhttp.InferenceServerClient(url=f"127.0.0.1:{hport}", network_timeout=60.0)
    assert c.is_server_live()
    assert c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta["name"] == "aicfn" and "binary_tensor_data" in meta["extensions"]
    mm = c.get_model_metadata("mlp")
    assert mm["name"] == "mlp" and "1" in mm["versions"]
    assert c.is_model_ready("mlp")

    x = mlp_x()
    nng = call(addr, invoke_msg("mlp", [tensor("x", x)]), timeout_ms=60000)
    assert nng["ok"], nng
    out_name = nng["outputs"][0]["name"]
    want = output(nng, out_name)

    for binary in (True, False):
        inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [tritonhttp.InferRequestedOutput(out_name, binary_data=binary)]
        res = c.infer("mlp", [inp], outputs=outs, request_id=f"r{int(binary)}")
        got = res.as_numpy(out_name)
        assert got is not None
        assert np.array_equal(got.reshape(want.shape), want), (binary, got, want)
        assert res.get_response()["model_name"] == "mlp"

    # A versioned call, and an unknown model: a clear 404 with the protocol's error body.
    inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert c.infer("mlp", [inp], model_version="1").as_numpy(out_name) is not None
    with pytest.raises(InferenceServerException) as ei:
        c.infer("nosuch", [inp])
    assert "not found" in str(ei.value).lower()
    st, _, body = http_req(hport, "POST", "/v2/models/nosuch/infer", infer_json(x))
    assert st == 404 and "error" in json.loads(body)
    st, _, body = http_req(hport, "GET", "/v2/models/..%2F..%2Fetc/ready")
    assert st in (400, 404) and "error" in json.loads(body)
    # Wrong dtype: the handler refuses it, the error names the tensor.
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}]})
    st, _, body = http_req(hport, "POST", "/v2/models/mlp/infer", bad)
    assert st == 400 and "'x'" in json.loads(body)["error"], (st, body)
    idx = json.loads(http_req(hport, "POST", "/v2/repository/index", b"{}")[2])
    assert any(e["name"] == "mlp" and e["state"] == "READY" for e in idx)
    c.close()


def test_body_limit_and_headers(procs, tmp_path):
    addr, hport, data, g = start(procs, tmp_path)
    s = socket.create_connection(("127.0.0.1", hport), timeout=5)
    s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n{")
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    st, _, _ = http_req(hport, "GET", "/v2/health/live", headers={"X-Big": "a" * 300000})
    assert st in (413, 431)
    assert http_req(hport, "GET", "/v2/health/live")[0] == 200


def test_insecure_local_refuses_web_pages(procs, tmp_path):
    # --insecure-local trusts every local process, not a web page the user visits: its
    # script can send a "simple" POST (no CORS preflight) to 127.0.0.1, and browsers mark
    # every POST with Origin. Such requests are refused 403 before anything runs; a
    # client without Origin is served.
    addr, hport, data, g = start(procs, tmp_path)
    body = b'{"inputs":[]}'
    st, _, out = http_req(hport, "POST", "/v2/repository/models/mlp/unload", body=body,
                          headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert st == 403, (st, out)
    assert b"Origin" in out and b"insecure-local" in out, out
    st, _, _ = http_req(hport, "POST", "/v2/models/mlp/infer", body=body, headers={"Origin": "null"})
    assert st == 403
    assert http_req(hport, "GET", "/v2/health/live")[0] == 200


def test_connection_limits(procs, tmp_path):
    """Connections per client address are bounded (64 by default), and --http-per-ip sets the
    bound or, with 0, lifts it (a gateway behind a load balancer sees every client at the
    balancer's address); --http-connections bounds them all."""
    def refused_past(hport, limit):
        # `limit` connections held: one more is refused at once (not left waiting), and
        # served again once they close.
        held = held_connections(hport, limit)
        try:
            t0 = time.monotonic()
            assert not served(hport), f"connection {limit + 1} from one address was served"
            assert time.monotonic() - t0 < 2, f"connection {limit + 1} was left waiting, not refused"
        finally:
            close_all(held)
        assert wait_for(lambda: served(hport), 10, what=f"a connection served once the {limit} closed")

    _, hport, _, _ = start(procs, tmp_path, data=tmp_path / "default")
    refused_past(hport, 64)
    _, hport, _, _ = start(procs, tmp_path, data=tmp_path / "three", extra=["--http-per-ip", "3"])
    refused_past(hport, 3)

    _, hport, _, _ = start(procs, tmp_path, data=tmp_path / "unlimited", extra=["--http-per-ip", "0", "--http-connections", "100"])
    held = held_connections(hport, 80)
    try:
        assert served(hport), "no per-address limit, 81 of 100 connections: refused"
    finally:
        close_all(held)

    r = run_cli(["gateway", "--http-connections", "0"], timeout=10)
    assert r.returncode == 2 and "--http-connections '0'" in r.stderr, r.stderr

    # Two open files per connection: past the hard limit the gateway refuses to start
    # (past it, connections' descriptors would fail and slow clients never be cut off);
    # below it, the soft limit is raised to fit.
    def gateway_args(data, connections):
        return [str(aicfn_bin()), "gateway", "--listen", f"tcp://127.0.0.1:{free_port()}", "--data", str(data),
                "--workers", "0..0", "--insecure-local", "--http", f"127.0.0.1:{free_port()}",
                "--http-connections", str(connections)]

    r = subprocess.run(gateway_args(tmp_path / "nofiles", 1000), capture_output=True, text=True, timeout=30,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)))
    assert r.returncode == 1 and "need about 2256 open files" in r.stderr and "is 512" in r.stderr, r.stderr
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 856:
        g = procs.start(["bash", "-c", 'ulimit -Sn 512 && exec "$@"', "bash",
                         *gateway_args(tmp_path / "raised", 300)], name="raised")
        wait_for(lambda: "open-file limit raised from 512 to 856" in g.stderr() or g.poll() is not None, 15,
                 what="the raised limit's log line")
        assert g.poll() is None, g.stderr()[-2000:]


def keyed(procs, tmp_path: Path, *user_limits):
    """A gateway with keys, mlp deployed, an admin key and a key of tenant acme with
    `user_limits` (--rate, --quota): addr, hport, data, g, admin, user."""
    data = tmp_path / "data"
    admin = create_key(data, "ops", "--admin")
    user = create_key(data, "acme", *user_limits)
    addr, hport, data, g = start(procs, tmp_path, insecure=False, data=data)
    deploy(addr, key=admin)
    return addr, hport, data, g, admin, user


def infer_head(user: str) -> bytes:
    """The head of an infer of mlp by key `user` announcing a 10 MB body (not sent)."""
    return (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {user}\r\n"
            "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n").encode()


def test_keys_over_http(procs, tmp_path):
    addr, hport, data, g, admin, user = keyed(procs, tmp_path, "--rate", "2/s")
    x = mlp_x()
    body = infer_json(x)
    st, h, b = http_req(hport, "POST", "/v2/models/mlp/infer", body)
    assert st == 401 and "error" in json.loads(b)
    assert h.get("WWW-Authenticate") == 'Bearer realm="aicfn"', h  # RFC 9110 15.5.2
    auth = {"Authorization": f"Bearer {user}"}
    st, _, b = http_req(hport, "POST", "/v2/models/mlp/infer", body, auth, timeout=60)
    assert st == 200, b
    # Rate 2/s: a burst soon gets 429 with Retry-After, and succeeds after waiting.
    got429 = None
    for _ in range(10):
        st, h, b = http_req(hport, "POST", "/v2/models/mlp/infer", body, auth)
        if st == 429:
            got429 = h
            break
    assert got429 is not None and "Retry-After" in got429
    # Over its rate, a caller is refused before its body is read: not even parsed (a
    # malformed body gets the 429, not a 400), and a large one is not uploaded first.
    st, h, b = http_req(hport, "POST", "/v2/models/mlp/infer", b"{not json", auth)
    assert st == 429 and "Retry-After" in h and "rate" in json.loads(b)["error"], (st, b)
    # A small body refused so is read and dropped: the 429 comes on a connection that
    # stays (the next request on it is served), where one sent before the body would
    # reach a client still writing it as a broken pipe.
    c = http.client.HTTPConnection("127.0.0.1", hport, timeout=10)
    try:
        c.request("POST", "/v2/models/mlp/infer", body=b" " * 40000, headers=auth)
        r = c.getresponse()
        assert r.status == 429 and not r.will_close, (r.status, r.getheaders())
        r.read()
        c.request("GET", "/v2/health/live")
        r = c.getresponse()
        assert r.status == 200, r.status
        r.read()
    finally:
        c.close()
    time.sleep(int(got429["Retry-After"]))
    assert http_req(hport, "POST", "/v2/models/mlp/infer", body, auth)[0] == 200
    # A body refused for the caller's own fault (here: it does not parse) counts against
    # its rate like a call: a burst of them soon gets 429 too (without that, a caller
    # could keep the front parsing bodies at any rate), and each one so refused has its
    # ledger row.
    time.sleep(1.5)  # a full bucket: 2 tokens
    got = []
    for i in range(10):
        st, h, b = http_req(hport, "POST", "/v2/models/mlp/infer", b"{not json", auth)
        got.append(st)
        if st == 429:
            assert "Retry-After" in h and "rate" in json.loads(b)["error"], b
            break
    assert got[0] == 400 and got[-1] == 429 and set(got[:-1]) == {400}, got
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations WHERE tenant = 'acme' AND "
                                   "status = 'AICFN_E_INVALID'")[0][0] >= len(got) - 1, 10, what="refused rows")
    time.sleep(1.5)  # the rate's tokens back
    # A call spends its token at its head, before its body is read: callers cannot have
    # more bodies read and parsed at once than their rate allows. Of four requests whose
    # heads come together (bodies of 10 MB not sent yet), two (the bucket) wait for their
    # bodies and two are answered 429 at once.
    head = infer_head(user)
    socks = [socket.create_connection(("127.0.0.1", hport), timeout=5) for _ in range(4)]
    try:
        for s in socks:
            s.sendall(head)
        answered = []
        for s in socks:
            s.settimeout(1.5)
            try:
                answered.append(s.recv(4096).split(b"\r\n")[0])
            except socket.timeout:
                pass
        assert answered == [b"HTTP/1.1 429 Too Many Requests"] * 2, answered
    finally:
        for s in socks:
            s.close()
    time.sleep(1.5)  # the rate's tokens back
    # Non-admin repository changes: 403.
    st, _, b = http_req(hport, "POST", "/v2/repository/models/mlp/load", b"{}", auth)
    assert st == 403 and "error" in json.loads(b)
    # A worker key (registers workers, fetches artifacts over NNG) serves nothing here: 403.
    wkey = create_key(data, "gpu-hosts", "--worker")
    st, _, b = http_req(hport, "POST", "/v2/models/mlp/infer", body, {"Authorization": f"Bearer {wkey}"})
    assert st == 403 and "worker key" in json.loads(b)["error"], b
    # Revoked: 401 from then on.
    key_id = user.split("_")[1]
    assert run_cli(["keys", "revoke", key_id, "--data-dir", str(data)]).returncode == 0
    st, _, _ = http_req(hport, "POST", "/v2/models/mlp/infer", body, auth)
    assert st == 401
    # No plaintext key anywhere in the database files.
    for f in data.glob("aicfn.db*"):
        blob = f.read_bytes()
        for k in (admin, user):
            assert k.encode() not in blob and k.split("_")[2].encode() not in blob, f


def test_a_call_that_never_reached_the_gateway_gives_its_quota_back(procs, tmp_path):
    # An infer is admitted against its caller's limits at its head. One whose client leaves
    # before sending its body never ran: its admission is undone, and the key's daily quota
    # (3 here) is still whole for three calls that run.
    addr, hport, data, g, admin, user = keyed(procs, tmp_path, "--quota", "3/day")
    head = infer_head(user)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", hport), timeout=5) as s:
            s.sendall(head)
            time.sleep(0.1)  # admitted at its head; then the client goes
    time.sleep(0.5)
    auth = {"Authorization": f"Bearer {user}"}
    got = [http_req(hport, "POST", "/v2/models/mlp/infer", infer_json(mlp_x()), auth, timeout=60)[0]
           for _ in range(4)]
    assert got == [200, 200, 200, 429], got


def test_metrics_promtool_and_ledger(procs, tmp_path):
    addr, hport, data, g = start(procs, tmp_path)
    deploy(addr)
    x = mlp_x()
    ok = 0
    for i in range(6):
        st, _, _ = http_req(hport, "POST", "/v2/models/mlp/infer", infer_json(x), timeout=60)
        ok += st == 200
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    for i in range(2):
        http_req(hport, "POST", "/v2/models/mlp/infer", bad)
    http_req(hport, "POST", "/v2/models/nosuch/infer", infer_json(x))
    assert ok == 6
    st, h, text = http_req(hport, "GET", "/metrics")
    assert st == 200 and "version=0.0.4" in h.get("Content-Type", "")
    text = text.decode()
    assert shutil.which("promtool"), "promtool not found (Debian's prometheus package; scripts/bootstrap.sh)"
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    # The HTTP calls the gateway ran are counted once each, as in the ledger.
    def ledger():
        return dict(db_rows(data, "SELECT status, count(*) FROM invocations WHERE function = 'mlp' GROUP BY status"))
    # 6 answered and 2 refused calls of mlp: the ledger commits in batches (every 100 ms),
    # so wait for all 8 rows, not just the first 6 (a batch can split the refused pair).
    rows = wait_for(lambda: (lambda r: r if sum(r.values()) >= 8 else None)(ledger()), 10, what="ledger rows")
    for status, n in rows.items():
        assert metric_value(text, "aicfn_calls_total", {"function": "mlp", "status": status}) == n, (status, n)
    assert metric_value(text, "aicfn_http_requests_total", {"endpoint": "infer", "code": "200"}) == 6


def test_usage_totals_equal_ledger_sums(procs, tmp_path):
    addr, hport, data, g = start(procs, tmp_path)
    deploy(addr)
    x = mlp_x()
    for _ in range(4):
        assert http_req(hport, "POST", "/v2/models/mlp/infer", infer_json(x), timeout=60)[0] == 200
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations")[0][0] >= 4, 10, what="ledger rows")
    r = run_cli(["usage", "--data-dir", str(data), "--json", "--price-per-gpu-second", "2.5"])
    assert r.returncode == 0, r.stderr
    u = json.loads(r.stdout)
    calls, errors, gpu, cold, load_gpu = db_rows(
        data, "SELECT count(*), sum(status != 'AICFN_OK'), sum(gpu_us), sum(CASE WHEN cold THEN load_us ELSE 0 END), "
              "sum(load_gpu_us) FROM invocations")[0]
    t = u["total"]
    assert (t["calls"], t["errors"], t["gpu_us"]) == (calls, errors, gpu)
    assert t["cold_us"] == cold
    assert t["load_gpu_us"] == load_gpu
    assert sum(row["calls"] for row in u["rows"]) == calls
    # The first call loaded mlp's model: it, and only it, pays for the load and the
    # handler's init, which took part of the time the caller waited.
    billed = db_rows(data, "SELECT cold, load_gpu_us, total_us FROM invocations WHERE load_gpu_us > 0")
    assert len(billed) == 1 and billed[0][0] == 1 and 0 < billed[0][1] <= billed[0][2], billed
    assert load_gpu == billed[0][1]
    assert abs(t["cost"] - (gpu + load_gpu) / 1e6 * 2.5) < 1e-9
    txt = run_cli(["usage", "--data-dir", str(data)]).stdout
    assert "TOTAL" in txt and "local" in txt and "LOAD-GPU-SEC" in txt


def test_declared_inputs_are_checked_at_the_front(procs, tmp_path):
    # A function whose manifest declares its inputs: an infer that does not match them is
    # refused by the front (400 naming the input) before any worker runs it, one that
    # matches is served; a later version's declaration applies to calls to it. The check
    # reads the gateway's function cache, not the registry, on every call.
    addr, hport, data, g = start(procs, tmp_path)
    d = tmp_path / "typed"
    d.mkdir()
    (d / "aicfn.yaml").write_text(f"name: typed\nhandler: {handler('echo')}\n"
                                  "inputs: [ { name: x, dtype: FP32, shape: [-1, 4] } ]\n")
    r = run_cli(["deploy", str(d), "--gateway", addr], timeout=60)
    assert r.returncode == 0, r.stderr

    def infer(path, shape, data):
        body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]})
        return http_req(hport, "POST", path, body)

    st, _, body = infer("/v2/models/typed/infer", [1, 3], [1, 2, 3])
    assert st == 400 and "'x'" in json.loads(body)["error"], body
    st, _, body = infer("/v2/models/typed/infer", [2, 4], list(range(8)))
    assert st == 200, body
    # Version 2 declares [-1, 3]: calls to it (and to the active version) take 3 columns;
    # version 1 keeps its own declaration.
    (d / "aicfn.yaml").write_text(f"name: typed\nhandler: {handler('echo')}\n"
                                  "inputs: [ { name: x, dtype: FP32, shape: [-1, 3] } ]\n")
    r = run_cli(["deploy", str(d), "--gateway", addr], timeout=60)
    assert r.returncode == 0, r.stderr
    assert infer("/v2/models/typed/infer", [1, 3], [1, 2, 3])[0] == 200
    assert infer("/v2/models/typed/versions/1/infer", [1, 3], [1, 2, 3])[0] == 400
    assert infer("/v2/models/typed/versions/1/infer", [1, 4], [1, 2, 3, 4])[0] == 200


def test_undeclared_requested_output_is_refused_before_running(procs, tmp_path):
    """A function that declares its outputs: an infer asking for another one is refused
    (400) before the handler runs, so nothing is executed, billed or counted. It used to
    run the call, record it AICFN_OK, and then answer 400."""
    addr, hport, data, g = start(procs, tmp_path)
    d = tmp_path / "typed"
    d.mkdir()
    (d / "aicfn.yaml").write_text(f"name: typed\nhandler: {handler('echo')}\n"
                                  "inputs: [ { name: x, dtype: FP32, shape: [-1] } ]\n"
                                  "outputs: [ { name: x, dtype: FP32, shape: [-1] }, "
                                  "{ name: z, dtype: FP32, shape: [-1] } ]\n")
    r = run_cli(["deploy", str(d), "--gateway", addr], timeout=60)
    assert r.returncode == 0, r.stderr

    def infer(outputs):
        body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                           "outputs": outputs})
        return http_req(hport, "POST", "/v2/models/typed/infer", body, {"Content-Type": "application/json"})

    st, _, out = infer([{"name": "y"}])
    assert st == 400 and json.loads(out)["error"] == "requested output 'y' is not an output of this model", out
    st, _, out = infer([{"name": "x"}])
    assert st == 200 and json.loads(out)["outputs"][0]["data"] == [1], out
    _, _, m = http_req(hport, "GET", "/metrics")
    assert metric_value(m.decode(), "aicfn_calls_total", {"function": "typed"}) == 1  # the good call only
    wait_for(lambda: db_rows(data, "SELECT count(*) FROM invocations WHERE function = 'typed'")[0][0] == 1, 10,
             what="the good call's ledger row")
    # A declared output the handler does not return (echo returns its inputs only): the
    # call ran, and the fault is the handler's (500), not the caller's.
    st, _, out = infer([{"name": "z"}])
    e = json.loads(out)
    assert st == 500 and e["name"] == "AICFN_E_HANDLER" and "'z'" in e["error"], (st, out)


def test_infer_on_a_function_that_declares_no_inputs_is_well_defined(procs, tmp_path):
    """An infer to a function whose manifest declares no `inputs:` (echo) copied its
    (absent) input specs with memcpy from NULL: undefined behaviour, which the sanitized
    gateway aborts on. It answers, and keeps serving."""
    started = start_sanitized(procs, tmp_path)
    if started is None:
        pytest.skip("no ASan build (zig-out/asan): run_suite.py builds it")
    addr, hport, g = started
    d = tmp_path / "plain"
    d.mkdir()
    (d / "aicfn.yaml").write_text(f"name: plain\nhandler: {handler('echo')}\n")
    r = run_cli(["deploy", str(d), "--gateway", addr, "--json"], timeout=120)
    assert r.returncode == 0, r.stderr
    body = json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "INT32", "data": [1, 2, 3]}]})
    for _ in range(2):
        status, _, out = http_req(hport, "POST", "/v2/models/plain/infer", body,
                                  {"Content-Type": "application/json"}, timeout=60)
        assert status == 200, (status, out, g.stderr()[-3000:])
        assert json.loads(out)["outputs"][0]["data"] == [1, 2, 3]
    assert g.poll() is None, g.stderr()[-3000:]


def mapped_libraries(pid: int) -> set:
    """The file names of the shared libraries process `pid` has mapped."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if ".so" in path:
            names.add(Path(path).name)
    return names


def test_libmicrohttpd_is_loaded_only_by_the_http_front(procs, tmp_path):
    """libmicrohttpd and the GnuTLS it brings are loaded when the HTTP front starts
    (gateway/mhd.h), not linked: a local worker (every cold start pays its process's
    start) and a gateway without --http never map them; the HTTP front serves."""
    def http_libs(pid):
        return {n for n in mapped_libraries(pid) if n.startswith(("libmicrohttpd", "libgnutls"))}

    addr, hport, data, g = start(procs, tmp_path)
    assert http_req(hport, "GET", "/v2/health/live")[0] == 200
    assert {n.split(".so")[0] for n in http_libs(g.p.pid)} == {"libmicrohttpd", "libgnutls"}, http_libs(g.p.pid)
    r = run_cli(["deploy", str(ROOT / "examples" / "echo"), "--gateway", addr], timeout=120)
    assert r.returncode == 0, r.stderr
    st, _, body = http_req(hport, "POST", "/v2/models/echo/infer",
                           json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}))
    assert st == 200, body
    r = run_cli(["workers", "--gateway", addr, "--json"], timeout=10)
    pids = [w["pid"] for w in json.loads(r.stdout)]
    assert pids and all(not http_libs(pid) for pid in pids), [(pid, http_libs(pid)) for pid in pids]

    plain = tmp_path / "plain"
    port = free_port()
    g2 = procs.start([aicfn_bin(), "gateway", "--listen", f"tcp://127.0.0.1:{port}", "--data", plain,
                      "--workers", "0..0", "--insecure-local"], name="plain")
    wait_for(lambda: (g2.poll() is None and Path(f"/proc/{g2.p.pid}/maps").exists()
                      and "listening" in g2.stderr()), 15, what="the plain gateway")
    assert not http_libs(g2.p.pid), http_libs(g2.p.pid)


def test_queued_call_of_a_client_that_left_is_not_run(procs, tmp_path):
    """An HTTP client that closes its connection while its call waits in the gateway's
    queue (its one serial worker holds 56 calls, the first for 8 s): the call leaves the queue within about
    200 ms, is recorded as AICFN_E_CANCELED, and never runs; the calls ahead of it all
    run. libmicrohttpd does not watch a waiting (suspended) connection: the front's reaper
    does (gw_http_callbacks.client_gone)."""
    import threading
    counts = tmp_path / "count.txt"
    counts.write_text("")
    fn = tmp_path / "slow"
    fn.mkdir()
    (fn / "aicfn.yaml").write_text(f"name: slow\nhandler: {handler('test_sleep')}\nlimits: {{ timeout: 60s }}\n")
    addr, hport, data, g = start(procs, tmp_path)
    r = run_cli(["deploy", str(fn), "--gateway", addr], timeout=120)
    assert r.returncode == 0, r.stderr
    x = {"name": "x", "datatype": "FP32", "shape": [2], "data": [0.0, 1.0]}

    def status():
        st = call(addr, {"v": PROTOCOL_VERSION, "t": "status", "id": next_id()}, timeout_ms=2000)
        return json.loads(st["json"])

    assert http_req(hport, "POST", "/v2/models/slow/infer", json.dumps({"inputs": [x]}))[0] == 200  # warm
    ahead = 56  # the most the gateway keeps in flight on one worker
    results = []

    def one(sleep_ms):
        body = {"inputs": [x], "parameters": {"sleep_ms": str(sleep_ms), "count_file": str(counts)}}
        results.append(http_req(hport, "POST", "/v2/models/slow/infer", json.dumps(body), timeout=60)[0])

    # The first call holds the worker 8 s; the other 55 wait behind it on the worker.
    ts = [threading.Thread(target=one, args=(8000,), daemon=True)]
    ts[0].start()
    wait_for(lambda: status()["in_flight"] >= 1, 10, interval=0.01, what="the first call in flight")
    ts += [threading.Thread(target=one, args=(0,), daemon=True) for _ in range(ahead - 1)]
    for t in ts[1:]:
        t.start()
    wait_for(lambda: status()["in_flight"] >= ahead, 20, interval=0.02, what="56 calls in flight")
    body = json.dumps({"inputs": [x], "parameters": {"count_file": str(counts)}}).encode()
    s = socket.create_connection(("127.0.0.1", hport), timeout=10)
    s.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    wait_for(lambda: status()["queued"] == 1, 10, interval=0.02, what="the call queued")
    s.close()
    t0 = time.monotonic()
    wait_for(lambda: status()["queued"] == 0, 5, interval=0.02, what="the queued call gone")
    assert time.monotonic() - t0 < 2.0
    try:
        rows = wait_for(lambda: db_rows(data, "SELECT status FROM invocations WHERE status = 'AICFN_E_CANCELED'"),
                        10, interval=0.05, what="its ledger row")
    except TimeoutError:
        raise AssertionError((db_rows(data, "SELECT status, count(*) FROM invocations GROUP BY status"), g.stderr()[-3000:]))
    assert len(rows) == 1, rows
    for t in ts:
        t.join(timeout=60)
    assert results == [200] * ahead, results
    assert len(counts.read_text().split()) == ahead  # the 56 ran; the one whose client left did not
