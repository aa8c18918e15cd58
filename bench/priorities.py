"""Does an interactive request stay fast while a bulk run saturates the worker? Measured side by side.

The real service (API -> Redis -> worker, the tiny model on CPU, images on the local store)
with one worker, in one sitting:

1. idle: interactive requests one at a time, nothing else queued;
2. loaded: a producer keeps the ``batch`` class queue at least ``--backlog`` jobs deep (the
   worker never runs out of bulk work: a saturating load), and interactive requests arrive one
   at a time at random moments of the bulk batches;
3. control: the same load, with requests submitted in the ``batch`` class (what a person would
   get without priorities: the back of the bulk queue).

Latency is the client's: from sending ``POST /v1/images?wait=...`` to the response with the
finished job. The bulk jobs have the same batch key as the interactive ones (the hardest case:
they could be co-batched, and must not slow the interactive job down).

It writes ``bench/results/priorities.json`` and prints a summary. Usage::

    python -m bench.priorities                    # ~4 min on an idle 2-core machine
    python -m bench.priorities --max-batch 8 --steps 10 --samples 8
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.batching import CASES, model_folder
from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.support.env import NO_LIMITS, service_env
from tests.support.processes import start_api, start_worker, wait_for_workers

RESULTS = Path(__file__).resolve().parent / "results"
CASE = CASES["tiny"]


#: Denoising steps per image (``--steps``): the ratio measured does not depend on it much, the run time does.
STEPS = {"value": CASE.steps}


def request_body(priority: str, prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "width": CASE.size, "height": CASE.size, "steps": STEPS["value"], "priority": priority}


#: Per request: (latency, seconds queued before a worker started it, seconds it ran).
Sample = tuple[float, float, float]


def timed_request(client: httpx.Client, priority: str, prompt: str) -> Sample:
    """Seconds from submit to the finished job (one POST that waits for the result), split into
    the time queued (behind the batch already running) and the time its own batch ran."""
    started = time.perf_counter()
    resp = client.post("/v1/images", params={"wait": 60}, json=request_body(priority, prompt))
    job = resp.json()
    while resp.status_code in (200, 202) and job["status"] in ("queued", "running"):  # past the API's wait cap
        resp = client.get(f"/v1/images/{job['id']}")
        job = resp.json()
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if resp.status_code != 200 or job["status"] != "succeeded":
        raise RuntimeError(f"request did not finish: {resp.status_code} {resp.text[:300]}")
    return elapsed, job["started_at"] - job["created_at"], job["finished_at"] - job["started_at"]


class BulkLoad:
    """Keeps the batch-class queue at least ``backlog`` jobs deep from a background thread."""

    def __init__(self, base_url: str, backlog: int) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30)
        self.backlog = backlog
        self.submitted = 0
        self.min_depth_while_measuring: int | None = None
        self.measuring = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def depth(self) -> int:
        models = self.client.get("/v1/models").json()["data"]
        return int(models[0]["queued"]["batch"])

    def _run(self) -> None:
        while not self._stop.is_set():
            depth = self.depth()
            if self.measuring:
                low = self.min_depth_while_measuring
                self.min_depth_while_measuring = depth if low is None else min(low, depth)
            for _ in range(max(0, self.backlog - depth)):
                resp = self.client.post("/v1/images", json=request_body("batch", f"bulk {self.submitted}"))
                resp.raise_for_status()
                self.submitted += 1
            self._stop.wait(0.5)  # light on the API: the backlog outlasts this by far

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 60
        while self.depth() < self.backlog:  # the queue is full before anything is measured
            if time.monotonic() > deadline:
                raise RuntimeError("the bulk load never filled the queue")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()


def stats(measured: list[Sample]) -> dict[str, Any]:
    samples = [m[0] for m in measured]
    ordered = sorted(samples)
    return {
        "samples": len(samples),
        "mean_queued_s": round(statistics.fmean(m[1] for m in measured), 3),
        "mean_run_s": round(statistics.fmean(m[2] for m in measured), 3),
        "p50_s": round(statistics.median(ordered), 3),
        "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "mean_s": round(statistics.fmean(ordered), 3),
        "max_s": round(ordered[-1], 3),
        "all_s": [round(s, 3) for s in samples],
    }


def measure(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    with httpx.Client(base_url=base_url, timeout=150) as client:
        for i in range(3):  # warm the path end to end
            timed_request(client, "interactive", f"warm {i}")
        idle = [timed_request(client, "interactive", f"idle {i}") for i in range(args.samples)]
        load = BulkLoad(base_url, args.backlog)
        load.start()
        started, taken_before = time.perf_counter(), load.submitted - load.depth()
        try:
            load.measuring = True
            loaded = []
            for i in range(args.samples):
                time.sleep(rng.uniform(0.0, 0.6))  # land at a random moment of the running bulk batch
                loaded.append(timed_request(client, "interactive", f"loaded {i}"))
            control = [timed_request(client, "batch", f"control {i}") for i in range(args.control_samples)]
            load.measuring = False
            # Bulk jobs the worker took off the queue meanwhile (submitted minus still queued).
            bulk_rate = (load.submitted - load.depth() - taken_before) / (time.perf_counter() - started)
        finally:
            load.stop()
    return {
        "idle": stats(idle),
        "loaded": stats(loaded),
        "control_same_load_batch_class": stats(control),
        "bulk_jobs_submitted": load.submitted,
        "bulk_min_queue_depth_while_measuring": load.min_depth_while_measuring,
        "bulk_jobs_taken_per_s_while_measuring": round(bulk_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=CASE.steps)
    parser.add_argument("--backlog", type=int, default=16, help="batch-class jobs kept queued")
    parser.add_argument("--samples", type=int, default=12, help="interactive requests per phase")
    parser.add_argument("--control-samples", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "sfumato-bench")
    args = parser.parse_args()
    STEPS["value"] = args.steps
    folder = model_folder(CASE, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="sfumato-bench-prio-") as tmp:
        work = Path(tmp)
        redis = start_redis(work / "redis")
        env = service_env(
            redis.url,
            work,
            "bench",
            **NO_LIMITS,
            SFUMATO_STORAGE="local",
            SFUMATO_MODEL=str(folder),
            SFUMATO_MODEL_ID=CASE.name,
            SFUMATO_DEVICE="cpu",
            SFUMATO_DTYPE=CASE.dtype,
            SFUMATO_MAX_BATCH=str(args.max_batch),
            SFUMATO_MAX_QUEUE_DEPTH="10000",
            SFUMATO_AUTH_ENABLED="false",  # no keys: any class may be asked for
            SFUMATO_LOG_LEVEL="WARNING",
        )
        port = free_port()
        worker = start_worker(env, work / "logs")
        api = start_api(env, port, work / "logs")
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_workers(base_url, 1, 300, worker, api)
            figures = measure(base_url, args)
        finally:
            worker.stop()
            api.stop()
            redis.stop()
    ratio_p50 = figures["loaded"]["p50_s"] / figures["idle"]["p50_s"]
    ratio_mean = figures["loaded"]["mean_s"] / figures["idle"]["mean_s"]
    result = {
        "model": CASE.name,
        "size": CASE.size,
        "steps": args.steps,
        "dtype": CASE.dtype,
        "device": "cpu",
        "max_batch": args.max_batch,
        "backlog": args.backlog,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.priorities "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "data_dir"),
        **figures,
        "summary": {
            "loaded_vs_idle_p50": round(ratio_p50, 3),
            "loaded_vs_idle_mean": round(ratio_mean, 3),
            "within_2x": ratio_p50 <= 2.0 and ratio_mean <= 2.0,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "priorities.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("idle", "loaded", "control_same_load_batch_class", "summary")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
