"""Real service processes for end-to-end and chaos tests: the API under uvicorn and workers.

Each process gets its own log file (shown when a test fails) and is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: for fault injection."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> ServiceProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    log_file.close()
    return ServiceProcess(name=name, proc=proc, log_path=log_path)


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> ServiceProcess:
    env = {"SFUMATO_WORKER_METRICS_PORT": str(free_port()), **env}  # workers side by side: a port each
    return _spawn(name, ["-m", "worker"], {**env, "SFUMATO_WORKER_NAME": f"{name}-{time.time_ns()}"}, log_dir)


def start_api(env: dict[str, str], port: int, log_dir: Path, name: str = "api") -> ServiceProcess:
    env = {**env, "SFUMATO_API_HOST": "127.0.0.1", "SFUMATO_API_PORT": str(port)}
    process = _spawn(name, ["-m", "api"], env, log_dir)
    wait_until(lambda: _healthy(f"http://127.0.0.1:{port}"), 30, f"{name} to answer /healthz", process)
    return process


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, timeout_s: float, what: str, *processes: ServiceProcess, interval_s: float = 0.1) -> None:
    """Poll ``check`` until it is true; fail with the processes' logs after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for process in processes:
            if not process.alive():
                raise AssertionError(f"{process.name} exited while waiting for {what}:\n{process.log_tail()}")
        time.sleep(interval_s)
    logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in processes)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")


def wait_for_workers(
    base_url: str, count: int, timeout_s: float, *processes: ServiceProcess, headers: dict[str, str] | None = None
) -> None:
    """Until ``GET /v1/models`` reports at least ``count`` live workers for every model.

    ``headers``: an ``Authorization`` header when the API requires a key."""

    def ready() -> bool:
        try:
            models = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=2).json()["data"]
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        return all(m["workers"] >= count for m in models)

    wait_until(ready, timeout_s, f"{count} worker(s)", *processes, interval_s=0.25)
