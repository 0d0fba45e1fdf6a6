"""Run untrusted Python (a model's code plus its tests) in a throw-away subprocess.

Layers, each cheap: a fresh temporary working directory, an empty environment, `python -I` (no user site,
no PYTHON* variables), resource limits (address space, CPU seconds, file size, open files), its own process
group killed on timeout, and — where the kernel allows it (root or user namespaces) — no network, via
`unshare -n`. This stops accidents and runaway loops from generated code; it is not a boundary against a
determined attacker, so only run model outputs you would run yourself.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

MEMORY_BYTES = 1 << 30
FILE_BYTES = 1 << 20


@dataclass
class Outcome:
    passed: bool
    reason: str  # "ok", "timeout", or the last line of stderr


@functools.lru_cache(maxsize=1)
def network_isolation() -> list[str]:
    """The command prefix that takes the network away, or [] when this machine does not allow it."""
    unshare = shutil.which("unshare")
    if not unshare:
        return []
    try:
        ok = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return [unshare, "-n"] if ok else []


def _limits(cpu_seconds: int) -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(source: str, timeout: float = 10.0) -> Outcome:
    """Run `source` as a script; passed = exit status 0 within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="forgetless-sandbox-") as tmp:
        script = os.path.join(tmp, "main.py")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(source)
        cmd = [*network_isolation(), sys.executable, "-I", script]
        proc = subprocess.Popen(cmd, cwd=tmp, env={"PATH": "/usr/bin:/bin", "HOME": tmp}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=lambda: _limits(int(timeout) + 1))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Outcome(False, "timeout")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything the script left running in its group
            except ProcessLookupError:
                pass
    if proc.returncode == 0:
        return Outcome(True, "ok")
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return Outcome(False, lines[-1][:200] if lines else f"exit status {proc.returncode}")
