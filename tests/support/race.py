"""Fire many requests at once across several API replicas (rate-limit tests and benchmarks)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx


def race(
    urls: list[str],
    method: str,
    path: str,
    headers: dict[str, str],
    count: int,
    body: Any = None,
    threads: int = 16,
) -> list[httpx.Response]:
    """``count`` requests from ``threads`` threads that start together, alternating ``urls``."""
    parties = min(threads, count)
    start = threading.Barrier(parties)
    clients = [httpx.Client(base_url=u, timeout=30, limits=httpx.Limits(max_connections=threads)) for u in urls]

    def one(i: int) -> httpx.Response:
        if i < parties:
            start.wait()
        return clients[i % len(clients)].request(method, path, json=body, headers=headers)

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for client in clients:
            client.close()
