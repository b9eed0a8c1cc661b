#!/usr/bin/env python3
"""run_suite.py: runs aicfn's whole test suite and prints one closing line.

Stages, in order (each stage's results are counted, a crash counts as a failure):
  1. build: the release build, the ASan+UBSan build and the TSan build, with handlers;
  2. unit: every tests/unit and tests/concurrency binary under ASan+UBSan (cmocka, TAP);
  3. tsan: every tests/concurrency binary under ThreadSanitizer;
  4. e2e: pytest over tests/e2e, against real processes on loopback;
  5. fuzz: each libFuzzer harness in tests/fuzz for a bounded time (AICFN_FUZZ_SECONDS, 30).
The last line is `N passed, N failed` (`, N skipped` when any were skipped).
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZIG = str(ROOT / ".venv" / "bin" / "zig")
PY = str(ROOT / ".venv" / "bin" / "python")
PREFIX = {"release": "zig-out", "asan": "zig-out/asan", "tsan": "zig-out/tsan"}
# The release build compiles the CUDA code when the toolkit is present (-Dcuda=auto);
# the sanitizer builds leave it out: no GPU runs here, so it would add build time only.
SAN_ARGS = {"release": ["-Doptimize=ReleaseSafe"], "asan": ["-Dsanitize=address,undefined", "-Dcuda=off"],
            "tsan": ["-Dsanitize=thread", "-Dcuda=off"]}
# What each variant builds: the TSan one only the concurrency tests it runs.
STEPS = {"release": ["install", "handlers"], "asan": ["install", "tests", "handlers"],
         "tsan": ["tests-concurrency"]}
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0",
    "LSAN_OPTIONS": f"suppressions={ROOT / 'tests' / 'lsan.supp'}:print_suppressions=0",
}

counts = {"passed": 0, "failed": 0, "skipped": 0}
failures = []


def record(name, outcome):
    counts[outcome] += 1
    if outcome == "failed":
        failures.append(name)
    print(f"  {outcome.upper():7} {name}", flush=True)


def kill_group(pgid):
    """SIGKILLs what is left of process group `pgid` (nothing when it is empty)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(cmd, timeout, env=None, cwd=ROOT):
    """Runs cmd in a process group of its own, so that what it started (gateways,
    workers, a test binary's children) goes with it: on timeout the whole group is
    killed, and once cmd has exited, whatever it left in the group. Returns (exit status
    or -999 on timeout, stdout, stderr)."""
    e = dict(os.environ)
    e.update(SAN_ENV)
    if env:
        e.update(env)
    p = subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", start_new_session=True)
    # Read both pipes on threads and wait for cmd alone: a process it left behind keeps
    # the pipes open, and must not hold the suite until the timeout.
    parts = {"out": [], "err": []}

    def drain(f, key):
        for chunk in iter(lambda: f.read(65536), ""):
            parts[key].append(chunk)

    readers = [threading.Thread(target=drain, args=(p.stdout, "out"), daemon=True),
               threading.Thread(target=drain, args=(p.stderr, "err"), daemon=True)]
    for t in readers:
        t.start()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    kill_group(p.pid)
    if rc is None:
        p.wait(timeout=60)
    for t in readers:  # the group is gone, so are the pipes' writers (bounded all the same)
        t.join(timeout=30)
    out, err = "".join(parts["out"]), "".join(parts["err"])
    if rc is None:
        return -999, out, err + f"\n(timed out after {timeout}s)"
    return rc, out, err


def stage_build():
    print("== build", flush=True)
    ok = True
    for variant in ("release", "asan", "tsan"):
        stale = ROOT / PREFIX[variant] / "bin" / "tests"
        if stale.exists():
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        rc, out, err = run([ZIG, "build"] + STEPS[variant] + ["--prefix", PREFIX[variant]] + SAN_ARGS[variant], 1200)
        if rc != 0:
            sys.stdout.write(out + err)
            ok = False
        record(f"build[{variant}]", "passed" if rc == 0 else "failed")
    return ok


def run_cmocka(binary, label):
    rc, out, err = run([str(binary)], 600, env={"CMOCKA_MESSAGE_OUTPUT": "TAP", "AICFN_BIN_DIR": str(binary.parent.parent.parent)})
    seen = failed = 0
    for line in out.splitlines():
        # cmocka's TAP: "ok 1 - name", "not ok 2 - name", and for skips
        # "not ok 3 # SKIP name" (no " - ").
        m = re.match(r"^(not ok|ok) \d+(?: - (.*?))?(?:\s*# (?:SKIP|skip)\s*(.*))?$", line)
        if not m:
            continue
        seen += 1
        skipped = "# SKIP" in line or "# skip" in line
        name = f"{label}::{(m.group(2) or m.group(3) or '?').strip()}"
        if skipped:
            record(name, "skipped")
        else:
            ok = m.group(1) == "ok"
            failed += not ok
            record(name, "passed" if ok else "failed")
    if rc != 0 and failed == 0:
        record(f"{label} (exit {rc})", "failed")
    elif rc == 0 and seen == 0:  # a binary that ran nothing is not a pass
        record(f"{label} (no test results)", "failed")
    if rc != 0 or seen == 0:
        sys.stdout.write(out[-4000:] + err[-8000:])


def stage_unit():
    def binaries(d, label):
        found = sorted(d.glob("test_*")) if d.exists() else []
        if not found:  # a build that installed no tests must not read as a clean run
            record(f"{label} (no test binaries in {d.relative_to(ROOT)})", "failed")
        return found

    print("== unit (ASan+UBSan)", flush=True)
    for sub in ("unit", "concurrency"):
        for b in binaries(ROOT / PREFIX["asan"] / "bin" / "tests" / sub, sub):
            run_cmocka(b, f"{sub}/{b.name}")
    print("== concurrency (TSan)", flush=True)
    for b in binaries(ROOT / PREFIX["tsan"] / "bin" / "tests" / "concurrency", "tsan"):
        run_cmocka(b, f"tsan/{b.name}")


def stage_e2e():
    e2e = ROOT / "tests" / "e2e"
    if not any(e2e.glob("test_*.py")):
        return
    print("== e2e (pytest, real processes on loopback)", flush=True)
    with tempfile.TemporaryDirectory() as td:
        xml = Path(td) / "e2e.xml"
        rc, out, err = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(e2e), f"--junitxml={xml}"], 900,
                           env={"AICFN_PREFIX": str(ROOT / PREFIX["release"])})
        if not xml.exists():
            sys.stdout.write(out[-8000:] + err[-4000:])
            record("e2e (timed out after 900 s)" if rc == -999 else f"e2e (pytest exit {rc}, no results)", "failed")
            return
        failed = seen = 0
        for case in ET.parse(xml).getroot().iter("testcase"):
            seen += 1
            name = f"e2e/{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                record(name, "failed")
                failed += 1
            elif case.find("skipped") is not None:
                record(name, "skipped")
            else:
                record(name, "passed")
        # pytest's own failures (exit 2-4: interrupted, internal, usage; 5: nothing collected
        # though there are test files) count when no test case did.
        if rc != 0 and failed == 0:
            record(f"e2e (pytest exit {rc})", "failed")
        if seen == 0 and rc == 0:
            record("e2e (no test results)", "failed")
        if rc != 0:
            sys.stdout.write(out[-12000:])


def stage_fuzz():
    harnesses = sorted((ROOT / "tests" / "fuzz").glob("fuzz_*.c"))
    if not harnesses:
        return
    secs = int(os.environ.get("AICFN_FUZZ_SECONDS", "30"))
    print(f"== fuzz ({secs}s per harness)", flush=True)
    rc, out, err = run(["bash", "tests/fuzz/build.sh"], 600)
    if rc != 0:
        sys.stdout.write(out + err)
        record("fuzz build", "failed")
        return
    for h in harnesses:
        name = h.stem
        rc, out, err = run(["bash", "tests/fuzz/run.sh", name, str(secs)], secs + 120)
        record(f"fuzz/{name} ({secs}s)", "passed" if rc == 0 else "failed")
        if rc != 0:
            sys.stdout.write(err[-6000:])


def main():
    t0 = time.time()
    if stage_build():
        stage_unit()
        stage_e2e()
        stage_fuzz()
    print(f"== done in {time.time() - t0:.0f}s", flush=True)
    if failures:
        print("failed: " + ", ".join(failures))
    line = f"{counts['passed']} passed, {counts['failed']} failed"
    if counts["skipped"]:
        line += f", {counts['skipped']} skipped"
    print(line)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
