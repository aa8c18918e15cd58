"""Do workers scale out? One API, one Redis, one S3 (SeaweedFS), and 1 then 2 worker processes.

Each worker gets one torch thread (``SFUMATO_TORCH_THREADS=1``, ``OMP_NUM_THREADS=1``), so two
workers use two cores where one used one: on a machine with cores to spare, a second worker
should add almost what the first one does. Closed-loop HTTP clients (each submits a request and
waits for its image) keep both workers busy; the client count is the same for both runs. Reports
images/s per run and the ratio (target >= 1.6x), writes ``bench/results/scaling.json`` and
prints a table::

    python -m bench.scaling                 # the full run (a quiet machine with >= 4 cores)
    python -m bench.scaling --quick --out /tmp/scaling.json   # a smoke run: seconds, numbers meaningless

The worker count per run, clients, requests and denoising steps are flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.batching import ModelCase, closed_loop, measured_loop, model_folder
from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.support.env import NO_LIMITS, s3_env, service_env
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers
from tests.support.seaweed import start_seaweed

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.6


def one_thread_env() -> dict[str, str]:
    """One torch/OpenMP/BLAS thread per worker process."""
    return {"SFUMATO_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_point(
    env: dict[str, str], base_url: str, workers: int, case: ModelCase, clients: int, requests_each: int, logs: Path
) -> dict[str, Any]:
    """Start ``workers`` worker processes, wait until all serve, measure, stop them."""
    started: list[ServiceProcess] = []
    try:
        for index in range(workers):
            started.append(start_worker({**env, **one_thread_env()}, logs, name=f"w{workers}-{index}"))
        wait_for_workers(base_url, workers, 600, *started)
        closed_loop(base_url, case, workers, 1)  # warm every worker's path end to end
        point = measured_loop(base_url, case, clients, requests_each)
    finally:
        for process in started:
            process.stop()
    point["workers"] = workers
    print(f"{workers} worker(s), {clients} clients: {point['images_per_s']:.3f} images/s, "
          f"p50 {point['latency_p50_s']} s, mean batch {point['mean_batch_images']}", flush=True)  # fmt: skip
    return point


def table(points: list[dict[str, Any]], ratio: float | None) -> str:
    lines = [
        "| workers | clients | requests | images/s | p50 s | p95 s | mean batch | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(
            f"| {p['workers']} | {p['clients']} | {p['requests']} | {p['images_per_s']} | {p['latency_p50_s']} "
            f"| {p['latency_p95_s']} | {p['mean_batch_images']} | {len(p['errors'])} |"
        )
    if ratio is not None:
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        lines.append(f"\n2 workers / 1 worker = {ratio:.3f}x ({verdict} the {TARGET_RATIO}x target)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    # 16 = 2 workers x max_batch 4 x 2 (one batch running, the next one queued): enough to keep
    # both workers busy with full batches; with 8, the second worker's batches run part-empty.
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument("--requests", type=int, default=12, help="requests per client per run")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--max-batch", type=int, default=4, help="SFUMATO_MAX_BATCH of every worker")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 clients x 2 requests, 4 steps")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "sfumato-bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.steps = 2, 2, 4
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    case = ModelCase("tiny", 64, args.steps, "float32", (), 0, (args.clients,), {args.clients: args.requests})
    folder = model_folder(case, args.data_dir)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sfumato-scaling-") as tmp:
        work = Path(tmp)
        redis = start_redis(work / "redis")
        s3 = start_seaweed(work / "s3", bucket="scaling")
        api: ServiceProcess | None = None
        try:
            env = service_env(
                redis.url,
                work,
                "scaling",
                **s3_env(s3, "scaling"),
                **NO_LIMITS,
                SFUMATO_MODEL=str(folder),
                SFUMATO_MODEL_ID=case.name,
                SFUMATO_DTYPE=case.dtype,
                SFUMATO_MAX_BATCH=str(args.max_batch),
                SFUMATO_AUTH_ENABLED="false",
                SFUMATO_LOG_LEVEL="WARNING",
            )
            port = free_port()
            api = start_api(env, port, work / "logs")
            base_url = f"http://127.0.0.1:{port}"
            for workers in args.workers:
                points.append(run_point(env, base_url, workers, case, args.clients, args.requests, work / "logs"))
        finally:
            if api is not None:
                api.stop()
            s3.stop()
            redis.stop()
    by_workers = {p["workers"]: p["images_per_s"] for p in points}
    ratio = round(by_workers[2] / by_workers[1], 3) if by_workers.get(1) and 2 in by_workers else None
    result = {
        "model": case.name,
        "size": case.size,
        "steps": case.steps,
        "max_batch": args.max_batch,
        "torch_threads_per_worker": 1,
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "points": points,
        "summary": {"two_vs_one_worker": ratio, "target": TARGET_RATIO},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(points, ratio))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
