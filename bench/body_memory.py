"""API memory under concurrent maximum-size and over-limit request bodies.

    python -m bench.body_memory [--concurrency 16] [--rounds 3]   # writes bench/results/body-memory.json

One real API process (uvicorn, ``python -m api``) on a private Redis, with a registry whose
model offers ControlNets, so that the largest *valid* request is possible: an init image, a
mask and ``SFUMATO_MAX_CONTROLNETS`` control images, each exactly ``SFUMATO_MAX_UPLOAD_BYTES``
decoded (a real PNG header followed by padding, so the header checks pass and nothing needs a
GPU). Requests are queued without a worker (``SFUMATO_QUEUE_WITHOUT_WORKERS``), so every valid
one goes the whole way to Redis and answers 202.

Phases, each ``--rounds`` times with ``--concurrency`` clients sending at once:

- ``max_size_valid``: the largest valid body (a 202 each);
- ``over_limit_declared``: ``Content-Length`` one MiB over the limit (refused from the header);
- ``over_limit_chunked``: the same bytes chunked, without a ``Content-Length``.

The figure is the API process's resident memory: its peak (``VmHWM``, reset through
``/proc/<pid>/clear_refs`` before each phase) over the idle baseline, in MiB and in bodies held
at once per concurrent request (``peak growth / (concurrency x body size)``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from core.config import Settings
from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.support.bodies import controlnet_registry, max_size_body, padded_json
from tests.support.env import NO_LIMITS, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api

RESULTS = Path(__file__).resolve().parent / "results" / "body-memory.json"
MIB = 1024 * 1024
WARM_UP = {"prompt": "warm-up", "steps": 2}


def _status(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _chunks(body: bytes, size: int = MIB) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _send(url: str, body: bytes, chunked: bool) -> str:
    """One POST with its own Idempotency-Key (as the SDK sends); its status and error code
    (``"503 server_busy"``), or ``"cut off"`` when the server closed before the client finished
    sending (an over-limit body refused mid-way)."""
    content: Any = _chunks(body) if chunked else body
    headers = {**bearer(_KEYS[url]), "content-type": "application/json", "idempotency-key": uuid.uuid4().hex}
    try:
        resp = httpx.post(f"{url}/v1/images", content=content, headers=headers, timeout=300)
    except httpx.TransportError:
        return "cut off"
    if resp.status_code < 400:
        return str(resp.status_code)
    return f"{resp.status_code} {resp.json()['error']['code']}"


def phase(api: ServiceProcess, url: str, body: bytes, chunked: bool, concurrency: int, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of ``concurrency`` simultaneous sends of ``body`` to a fresh API."""
    statuses: dict[str, int] = {}
    peaks, settled, walls = [], [], []
    for _ in range(rounds):
        baseline = _status(api.pid, "VmRSS")
        _reset_peak(api.pid)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(lambda _: _send(url, body, chunked), range(concurrency)))
        walls.append(time.perf_counter() - started)
        for code in codes:
            statuses[code] = statuses.get(code, 0) + 1
        peaks.append((_status(api.pid, "VmHWM") - baseline) / 1024)
        time.sleep(0.5)  # let the allocator return what it will before reading the settled RSS
        settled.append((_status(api.pid, "VmRSS") - baseline) / 1024)
    worst = max(peaks)
    return {
        "body_bytes": len(body),
        "chunked": chunked,
        "statuses": statuses,
        "peak_growth_mib": [round(p, 1) for p in peaks],
        "worst_peak_growth_mib": round(worst, 1),
        "bodies_per_concurrent_request": round(worst * MIB / (concurrency * len(body)), 2),
        "settled_growth_mib": [round(s, 1) for s in settled],
        "round_wall_s": [round(w, 1) for w in walls],
    }


@contextmanager
def api_process(work: Path, redis_url: str, **extra: str) -> Iterator[tuple[ServiceProcess, str]]:
    """A fresh API process (so one phase's heap never hides another's) on ``redis_url``, with
    the ControlNet registry and queueing without workers; yields it and its URL. A key for it
    is kept in :data:`_KEYS`, where :func:`_send` finds it."""
    env = {
        **service_env(redis_url, work, "bench-body", **NO_LIMITS),
        "SFUMATO_MODELS_FILE": str(controlnet_registry(work)),
        "SFUMATO_QUEUE_WITHOUT_WORKERS": "true",
        "SFUMATO_MAX_QUEUE_DEPTH": "0",
        "SFUMATO_LOG_LEVEL": "WARNING",
        **extra,
    }
    port = free_port()
    api = start_api(env, port, work / "logs", name=f"api-{port}")
    _KEYS[f"http://127.0.0.1:{port}"] = env_key(env)
    try:
        yield api, f"http://127.0.0.1:{port}"
    finally:
        api.stop()


#: API key per API URL (each process has its own queue prefix, so its own keys).
_KEYS: dict[str, str] = {}


def run(concurrency: int, rounds: int) -> dict[str, Any]:
    settings = Settings()  # the defaults: what the figures are about
    limit = settings.resolved_max_body_bytes
    valid = max_size_body(settings)
    over = b"{" + b" " * (limit + MIB) + b"}"
    setups = {
        "max_size_valid": (valid, False, {}),
        "max_size_valid_without_budget": (valid, False, {"SFUMATO_MAX_BODY_BYTES_IN_FLIGHT": "0"}),
        "over_limit_declared": (over, False, {}),
        "over_limit_chunked": (over, True, {}),
    }
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sfumato-body-memory-") as tmp:
        work = Path(tmp)
        redis = start_redis(work / "redis")
        try:
            for name, (body, chunked, extra) in setups.items():
                with api_process(work, redis.url, **extra) as (api, url):
                    assert _send(url, padded_json(1024, WARM_UP), False) == "202", api.log_tail()
                    idle = _status(api.pid, "VmRSS") / 1024
                    phases[name] = {
                        "api_idle_rss_mib": round(idle, 1),
                        **phase(api, url, body, chunked, concurrency, rounds),
                    }
        finally:
            redis.stop()
    return {
        "measured_at": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "command": f"python -m bench.body_memory --concurrency {concurrency} --rounds {rounds}",
        "concurrency": concurrency,
        "rounds": rounds,
        "limit_bytes": limit,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_controlnets": settings.max_controlnets,
        "budget_bytes": settings.resolved_max_body_bytes_in_flight,
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.concurrency, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
