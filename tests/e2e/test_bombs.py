"""Decompression bombs and oversized bodies against a real API process: every one is a 4xx,
nothing is enqueued, and the process's resident memory (VmRSS) does not grow with them.

The PNG bomb is a valid 20000 x 20000 1-bit image (~50 KB; Pillow would allocate 400 MB to
decode it). Memory is read after a warm-up round, so imports and first-use caches do not count;
what is measured is growth per hostile request.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from core.config import Settings
from devstack.net import free_port
from tests.support.bombs import b64, jpeg_header_only, png_bomb, png_header_only
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api

pytestmark = pytest.mark.timeout(300)
#: The default body limit (room for an image, a mask and the control images; ~45 MB).
BODY_LIMIT = Settings().resolved_max_body_bytes
#: Allowed RSS growth over the ten measured rounds: one body limit. What the test is for is
#: retention per hostile request, and that is far larger: a kept oversized body is ~47 MB a
#: request (940 MB over the rounds), a decoded bomb 400 MB. Allocator noise is not: glibc keeps
#: freed arenas around, and CI has seen 21 MB of it, which a 16 MB bound failed on.
MAX_GROWTH_KB = BODY_LIMIT // 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class Target:
    api: ServiceProcess
    client: httpx.Client
    env: dict[str, str]

    def queued(self) -> int:
        prefix = self.env["SFUMATO_QUEUE_PREFIX"]
        return int(redis.Redis.from_url(self.env["SFUMATO_REDIS_URL"]).llen(f"rq:queue:{prefix}:tiny"))


@pytest.fixture(scope="module")
def target(redis_server, tmp_path_factory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("bombs")
    env = {
        "SFUMATO_REDIS_URL": redis_server.url,
        "SFUMATO_DATA_DIR": str(tmp / "data"),
        "SFUMATO_QUEUE_PREFIX": f"bomb-{secrets.token_hex(4)}",
        "SFUMATO_URL_SIGNING_KEY": "k",
        "SFUMATO_RATE_LIMIT_RPS": "0",
    }
    port = free_port()
    api = start_api(env, port, tmp / "logs")
    headers = bearer(env_key(env))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
            yield Target(api, client, env)
    finally:
        api.stop()


BOMBS = {
    "png 20000x20000 (valid, 1-bit)": png_bomb(),
    "png header only": png_header_only(),
    "jpeg 65000x65000 header": jpeg_header_only(),
}


def _bomb_round(target: Target) -> None:
    for name, data in BOMBS.items():
        for field in ("image", "mask"):
            body = {"prompt": "x", "image": b64(png_header_only(64, 64)), field: b64(data)}
            resp = target.client.post("/v1/images", json=body)
            assert resp.status_code == 422, (name, field, resp.text)
            error = resp.json()["error"]
            assert error["param"] == field and "declares" in error["message"], (name, error)


def _oversize_round(target: Target) -> None:
    over = BODY_LIMIT // (1024 * 1024) + 2  # MiB: just over the default limit
    big = b"{" + b" " * (over * 1024 * 1024) + b"}"
    resp = target.client.post("/v1/images", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"

    def chunked() -> Iterator[bytes]:
        for _ in range(over):
            yield b" " * (1024 * 1024)

    try:
        resp = target.client.post("/v1/images", content=chunked(), headers={"content-type": "application/json"})
        assert resp.status_code == 413
    except httpx.TransportError:
        pass  # closed while the client was still sending: refused as well


def test_bombs_and_oversized_bodies_are_refused_without_memory_growth(target: Target) -> None:
    for _ in range(2):  # warm-up: imports, pools, first buffers, the allocator's arenas
        _bomb_round(target)
        _oversize_round(target)
    before = rss_kb(target.api.pid)
    for _ in range(10):
        _bomb_round(target)
        _oversize_round(target)
    growth = rss_kb(target.api.pid) - before
    assert growth < MAX_GROWTH_KB, f"API RSS grew by {growth} kB over 60 bombs and 20 oversized bodies"
    assert target.queued() == 0
    assert target.api.alive()
    ok = target.client.post("/v1/images", json={"prompt": "still serving", "steps": 2})
    assert ok.status_code == 202
