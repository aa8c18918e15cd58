"""Does batching pay, and what does the service cost over the raw pipeline? Measured side by side.

For each model (the tiny model at 64 px, the SD 1.5 architecture with random weights at 256 px
in bf16) this runs, in one process tree and one sitting:

1. the raw diffusers pipeline in-process at batch 1, 2, 4, 8 (the ceiling);
2. the full service (API -> Redis -> worker -> S3 on SeaweedFS) under 1, 4 and 16 concurrent
   closed-loop clients, with ``SFUMATO_MAX_BATCH=1`` and ``=8``.

It writes ``bench/results/batching-<model>.json`` and prints a table. Usage::

    python -m bench.batching --model tiny      # ~3 min here
    python -m bench.batching --model sd15      # ~11 min here (bf16, fewer points)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch

from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.support.env import NO_LIMITS, s3_env, service_env
from tests.support.processes import start_api, start_worker, wait_for_workers
from tests.support.seaweed import start_seaweed

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ModelCase:
    name: str
    size: int
    steps: int
    dtype: str
    raw_batches: tuple[int, ...]
    raw_images: int  # per batch size (rounded up to whole batches)
    clients: tuple[int, ...]
    requests_per_client: dict[int, int]
    device: str = "cpu"
    #: "s3" (SeaweedFS, as in production) or "local" (a folder: where no S3 server can be started)
    storage: str = "s3"


CASES = {
    # 16 requests per client at 16 clients: 32 full batches, so ramp-up and the last partial
    # round are a small share of the measurement.
    "tiny": ModelCase("tiny", 64, 20, "float32", (1, 2, 4, 8), 96, (1, 4, 16), {1: 40, 4: 24, 16: 16}),
    # ~15 s per image here: fewer points (batch 1 and 4; 1 client x 3 requests, 4 clients x 1).
    "sd15": ModelCase("sd15", 256, 20, "bfloat16", (1, 4), 4, (1, 4), {1: 3, 4: 1}),
    # The product's real setting: SD 1.5 at 512 px in float16 on a CUDA GPU (run on a lent GPU
    # machine, which has no S3 server, so images go to the local store; everything else is the same).
    "sd15-cuda": ModelCase(
        "sd15-cuda",
        512,
        20,
        "float16",
        (1, 2, 4, 8),
        32,
        (1, 4, 16),
        {1: 12, 4: 8, 16: 4},
        device="cuda",
        storage="local",
    ),
}


def model_folder(case: ModelCase, data_dir: Path) -> Path:
    if case.name.startswith("tiny"):
        from worker.builtin.tiny import ensure_tiny_model

        return ensure_tiny_model(data_dir)
    from bench.sd15_random import ensure_sd15_random

    return ensure_sd15_random(data_dir)


def raw_pipeline(case: ModelCase, folder: Path) -> list[dict[str, Any]]:
    """images/s of the bare diffusers pipeline at each batch size (one generator per image)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, dtype=getattr(torch, case.dtype), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(case.device)

    def call(batch: int, steps: int, offset: int) -> None:
        prompts = [f"raw prompt {offset + i}" for i in range(batch)]
        generators = [torch.Generator(case.device).manual_seed(offset + i) for i in range(batch)]
        with torch.inference_mode():
            pipe(prompt=prompts, negative_prompt=[""] * batch, generator=generators, num_inference_steps=steps,
                 height=case.size, width=case.size, guidance_scale=7.5, output_type="np")  # fmt: skip
        if case.device == "cuda":
            torch.cuda.synchronize()

    call(1, 2, 0)  # warm-up
    points = []
    for batch in case.raw_batches:
        calls = max(1, -(-case.raw_images // batch))
        cpu_before = cpu_seconds()["clients"]
        started = time.perf_counter()
        for c in range(calls):
            call(batch, case.steps, c * batch)
        elapsed = time.perf_counter() - started
        cpu_ms = (cpu_seconds()["clients"] - cpu_before) / (calls * batch) * 1000
        points.append({"batch": batch, "images": calls * batch, "seconds": round(elapsed, 3),
                       "images_per_s": round(calls * batch / elapsed, 4),
                       "cpu_ms_per_image": round(cpu_ms, 1)})  # fmt: skip
        print(f"raw {case.name} batch={batch}: {points[-1]['images_per_s']:.3f} images/s", flush=True)
    return points


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def closed_loop(base_url: str, case: ModelCase, clients: int, requests_each: int) -> dict[str, Any]:
    """``clients`` threads, each submitting and waiting for one request at a time."""
    latencies: list[float] = []
    batch_images: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=3600) as http:
            for r in range(requests_each):
                body = {
                    "prompt": f"client {index} request {r}",
                    "seed": index * 1000 + r,
                    "steps": case.steps,
                    "width": case.size,
                    "height": case.size,
                    "scheduler": "ddim",
                    "guidance_scale": 7.5,
                }
                started = time.perf_counter()
                resp = http.post("/v1/images?wait=3000", json=body)
                job = resp.json()
                # The API caps ?wait= (SFUMATO_MAX_WAIT_S, 60 s): a longer job answers 202 and is
                # followed here until it ends, so slow points are timed, not counted as errors.
                while resp.status_code in (200, 202) and job.get("status") in ("queued", "running"):
                    time.sleep(0.1)
                    resp = http.get(f"/v1/images/{job['id']}")
                    job = resp.json()
                elapsed = time.perf_counter() - started
                with lock:
                    if resp.status_code != 200 or job.get("status") != "succeeded":
                        errors.append(f"{resp.status_code} {job.get('status')} {job.get('error')}")
                        continue
                    latencies.append(elapsed)
                    batch_images.append(job["batch"]["images"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "images_per_s": round(len(latencies) / wall, 4),
        "latency_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "mean_batch_images": round(statistics.mean(batch_images), 2) if batch_images else None,
    }


#: Which process of the run a command line belongs to (the bench process itself runs the clients).
_ROLES = (("-m worker", "worker"), ("-m api", "api"), ("weed", "s3"), ("redis-server", "redis"))


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of each role in this process tree."""
    me = psutil.Process()
    times = me.cpu_times()
    totals = {"clients": times.user + times.system}
    for child in me.children(recursive=True):
        try:
            command, times = " ".join(child.cmdline()), child.cpu_times()
        except psutil.Error:
            continue
        role = next((name for marker, name in _ROLES if marker in command), "other")
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def measured_loop(base_url: str, case: ModelCase, clients: int, requests_each: int) -> dict[str, Any]:
    """:func:`closed_loop`, plus each process's CPU milliseconds per image over the run: on a
    machine where the API, S3, Redis and the clients share cores with the denoiser, this says
    where the CPU that the raw pipeline keeps for itself goes."""
    before = cpu_seconds()
    point = closed_loop(base_url, case, clients, requests_each)
    after = cpu_seconds()
    images = max(point["requests"], 1)
    point["cpu_ms_per_image"] = {
        role: round((after[role] - before.get(role, 0.0)) / images * 1000, 1) for role in sorted(after)
    }
    return point


def service(
    case: ModelCase, folder: Path, work: Path, redis_url: str, s3: Any, max_batch: int, compile_: str = "off"
) -> list[dict[str, Any]]:
    """The service's points at one ``SFUMATO_MAX_BATCH``. ``compile_`` is ``SFUMATO_COMPILE``; its
    kernel cache is shared by both workers of a run, so the second loads what the first compiled."""
    storage = s3_env(s3, "bench") if s3 is not None else {"SFUMATO_STORAGE": "local"}
    compiled = {"SFUMATO_COMPILE": compile_, "SFUMATO_COMPILE_CACHE_DIR": str(work / "compile-cache")}
    env = service_env(
        redis_url,
        work,
        "bench",
        **storage,
        **NO_LIMITS,
        SFUMATO_MODEL=str(folder),
        SFUMATO_MODEL_ID=case.name,
        SFUMATO_DEVICE=case.device,
        SFUMATO_DTYPE=case.dtype,
        SFUMATO_MAX_BATCH=str(max_batch),
        SFUMATO_AUTH_ENABLED="false",
        SFUMATO_LOG_LEVEL="WARNING",
        **compiled,
    )
    port = free_port()
    logs = work / f"logs-{case.name}-b{max_batch}"
    worker = start_worker(env, logs)
    api = start_api(env, port, logs)
    base_url = f"http://127.0.0.1:{port}"
    points = []
    try:
        wait_for_workers(base_url, 1, 900, worker, api)
        closed_loop(base_url, case, 1, 1)  # warm the path end to end
        for clients in case.clients:
            point = measured_loop(base_url, case, clients, case.requests_per_client[clients])
            point["max_batch"] = max_batch
            points.append(point)
            print(f"service {case.name} max_batch={max_batch} clients={clients}: "
                  f"{point['images_per_s']:.3f} images/s, p50 {point['latency_p50_s']} s, "
                  f"mean batch {point['mean_batch_images']}", flush=True)  # fmt: skip
    finally:
        worker.stop()
        api.stop()
    return points


def machine(case: ModelCase) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if case.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarise(raw: list[dict[str, Any]], svc: list[dict[str, Any]]) -> dict[str, Any]:
    raw_by_batch = {p["batch"]: p["images_per_s"] for p in raw}
    by = {(p["max_batch"], p["clients"]): p for p in svc}
    top = max(c for _, c in by)
    one_client = by[(1, 1)]["images_per_s"]
    batched = by[(8, top)]
    mean_batch = batched["mean_batch_images"] or 1
    nearest_raw = raw_by_batch[min(raw_by_batch, key=lambda b: abs(b - mean_batch))]
    return {
        "service_vs_raw_batch1": round(one_client / raw_by_batch[1], 3),
        f"service_{top}_clients_vs_raw_at_nearest_batch": round(batched["images_per_s"] / nearest_raw, 3),
        f"batching_gain_{top}_clients": round(batched["images_per_s"] / by[(1, top)]["images_per_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CASES), default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "sfumato-bench")
    parser.add_argument(
        "--compile", choices=("off", "on"), default="off",
        help="the workers' SFUMATO_COMPILE (on: results go to batching-<model>-compiled.json)",
    )  # fmt: skip
    args = parser.parse_args()
    case = CASES[args.model]
    torch.set_num_threads(torch.get_num_threads())
    folder = model_folder(case, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="sfumato-bench-") as tmp:
        work = Path(tmp)
        raw = raw_pipeline(case, folder)
        gc.collect()
        redis = start_redis(work / "redis")
        s3 = start_seaweed(work / "s3", bucket="bench") if case.storage == "s3" else None
        try:
            svc = [
                point
                for max_batch in (1, 8)
                for point in service(case, folder, work, redis.url, s3, max_batch, args.compile)
            ]
        finally:
            if s3 is not None:
                s3.stop()
            redis.stop()
    result = {
        "model": case.name,
        "size": case.size,
        "steps": case.steps,
        "dtype": case.dtype,
        "device": case.device,
        "storage": case.storage,
        "compile": args.compile,
        "machine": machine(case),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "raw_pipeline": raw,
        "service": svc,
        "summary": summarise(raw, svc),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"batching-{case.name}{'-compiled' if args.compile == 'on' else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
