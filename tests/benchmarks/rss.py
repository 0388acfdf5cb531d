"""Peak resident memory of one measured step, taken in a fresh child process so nothing earlier counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the kernel's high-water mark (VmHWM) to the current resident set and return that, in bytes."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib("VmRSS") * 1024


def peak_since_reset() -> int:
    """The largest resident set (bytes) since reset_peak(): file-backed pages (mapped weights) included."""
    return _status_kib("VmHWM") * 1024


def run_child(module: str, args: list[str], timeout: float = 1800) -> dict:
    """Run `python -m module *args` from the repository root; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    """A child's answer: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


def report(fields: dict, out: str | None) -> int:
    """A script's final report: stamped, written to `out` when given, and printed as its last JSON line."""
    fields = {**fields, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if out:
        Path(out).write_text(json.dumps(fields, indent=2) + "\n")
    print(json.dumps(fields))
    return 0
