"""Security figures: rate-limit accuracy across two API replicas, and what hostile uploads cost.

    python -m bench.security [--trials 10]     # writes bench/results/security.json

1. Two real API processes share one private Redis. For each limit, ``--trials`` fresh keys each
   get 48 simultaneous requests (16 threads, alternating replicas); the figure is how many were
   accepted against the allowance.
2. One API process gets decompression bombs (a valid 20000 x 20000 PNG, lying PNG and JPEG
   headers) and 30 MB bodies; the figures are refusal latency and the process's RSS growth.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from core.apikeys import KeyLimits
from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.support.bombs import b64, jpeg_header_only, png_bomb, png_header_only
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api
from tests.support.race import race

RESULTS = Path(__file__).resolve().parent / "results" / "security.json"
LIMITS = {
    "images_per_minute": (KeyLimits(images_per_minute=12), "POST", 12),
    "concurrent_jobs": (KeyLimits(max_concurrent_jobs=5), "POST", 5),
    "requests_per_second": (KeyLimits(rate_limit_rps=0.05, rate_limit_burst=10), "GET", 10),
}


def _env(redis_url: str, workdir: Path) -> dict[str, str]:
    return {
        "SFUMATO_REDIS_URL": redis_url,
        "SFUMATO_DATA_DIR": str(workdir / "data"),
        "SFUMATO_QUEUE_PREFIX": f"bench-{secrets.token_hex(4)}",
        "SFUMATO_URL_SIGNING_KEY": "k",
        "SFUMATO_RATE_LIMIT_RPS": "0",
        "SFUMATO_IMAGES_PER_MINUTE": "0",
        "SFUMATO_MAX_CONCURRENT_JOBS": "0",
        "SFUMATO_MAX_QUEUE_DEPTH": "0",
        "SFUMATO_LOG_LEVEL": "WARNING",
    }


@contextmanager
def _apis(env: dict[str, str], workdir: Path, count: int) -> Iterator[tuple[list[str], list[ServiceProcess]]]:
    ports = [free_port() for _ in range(count)]
    procs = [start_api(env, port, workdir / "logs", name=f"api-{i}") for i, port in enumerate(ports)]
    try:
        yield [f"http://127.0.0.1:{p}" for p in ports], procs
    finally:
        for proc in procs:
            proc.stop()


def rate_limit_accuracy(env: dict[str, str], urls: list[str], trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (limits, method, allowance) in LIMITS.items():
        accepted, refused_ok = [], True
        for _ in range(trials):
            headers = bearer(env_key(env, limits=limits))
            if method == "POST":
                responses = race(urls, "POST", "/v1/images", headers, 48, {"prompt": "x", "steps": 2})
            else:
                responses = race(urls, "GET", "/v1/models", headers, 48)
            accepted.append(sum(r.status_code in (200, 202) for r in responses))
            refused_ok &= all(
                r.status_code in (200, 202) or (r.status_code == 429 and r.json()["error"]["param"] == name)
                for r in responses
            )
        out[name] = {
            "allowance": allowance,
            "requests_per_trial": 48,
            "accepted_per_trial": accepted,
            "max_abs_error": max(abs(a - allowance) for a in accepted),
            "every_refusal_was_429_naming_the_limit": refused_ok,
        }
    return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def hostile_uploads(env: dict[str, str], url: str, api: ServiceProcess, rounds: int) -> dict[str, Any]:
    headers = bearer(env_key(env))
    small = b64(png_header_only(64, 64))
    bombs = {
        "png_bomb_20000x20000_valid": png_bomb(),
        "png_header_20000x20000": png_header_only(),
        "jpeg_header_65000x65000": jpeg_header_only(),
    }
    big = b"{" + b" " * (30 * 1024 * 1024) + b"}"
    latencies: dict[str, list[float]] = {name: [] for name in bombs}
    statuses: dict[str, set[int]] = {name: set() for name in [*bombs, "body_30mb"]}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:

        def one_round() -> None:
            for name, data in bombs.items():
                started = time.perf_counter()
                resp = client.post("/v1/images", json={"prompt": "x", "image": small, "mask": b64(data)})
                latencies[name].append(time.perf_counter() - started)
                statuses[name].add(resp.status_code)
            resp = client.post("/v1/images", content=big, headers={"content-type": "application/json"})
            statuses["body_30mb"].add(resp.status_code)

        one_round()  # warm-up
        before = _rss_kb(api.pid)
        for _ in range(rounds):
            one_round()
        after = _rss_kb(api.pid)
    return {
        "rounds": rounds,
        "statuses": {k: sorted(v) for k, v in statuses.items()},
        "bomb_file_bytes": {k: len(v) for k, v in bombs.items()},
        "refusal_ms_median": {k: round(statistics.median(v) * 1000, 2) for k, v in latencies.items()},
        "refusal_ms_max": {k: round(max(v) * 1000, 2) for k, v in latencies.items()},
        "api_rss_kb_before": before,
        "api_rss_kb_after": after,
        "api_rss_growth_kb": after - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = start_redis(workdir / "redis")
        try:
            env = _env(redis.url, workdir)
            with _apis(env, workdir, 2) as (urls, _):
                limits = rate_limit_accuracy(env, urls, args.trials)
            with _apis(env, workdir, 1) as (urls, procs):
                uploads = hostile_uploads(env, urls[0], procs[0], args.rounds)
        finally:
            redis.stop()
    report = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "api_replicas": 2,
        "threads": 16,
        "rate_limits": limits,
        "hostile_uploads": uploads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
