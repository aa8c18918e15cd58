"""Batching through the whole service: a real worker process takes queued jobs from several
clients together, never mixes batch keys, and a co-batched image equals the same request run
alone with ``exact``.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devstack.net import free_port
from tests.support.env import service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import start_api, start_worker, wait_for_workers, wait_until

pytestmark = pytest.mark.timeout(600)


def _pixels(url: str) -> np.ndarray:
    resp = httpx.get(url, timeout=10)
    resp.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.int16)


def test_queued_jobs_are_batched_by_key_and_images_match_solo_runs(redis_server, tmp_path: Path) -> None:
    env = service_env(
        redis_server.url,
        tmp_path,
        "e2e-batch",
        SFUMATO_MAX_BATCH="4",
        SFUMATO_MAX_WAIT_MS="50",
        SFUMATO_RATE_LIMIT_RPS="0",  # polls 12 jobs at 4 Hz: not what this test is about
    )
    port = free_port()
    api = start_api(env, port, tmp_path / "logs")
    base_url = f"http://127.0.0.1:{port}"
    headers = bearer(env_key(env))
    client = httpx.Client(base_url=base_url, timeout=30, headers=headers)
    worker = None
    try:
        # Queued before any worker runs: three keys (steps 3, 4, 5) interleaved, n of 1 or 2.
        submitted = []
        for i in range(12):
            body = {"prompt": f"scene {i}", "seed": 100 + i, "steps": 3 + i % 3, "n": 1 + i % 2}
            resp = client.post("/v1/images", json=body)
            assert resp.status_code == 202
            submitted.append((body, resp.json()["id"]))
        worker = start_worker(env, tmp_path / "logs")
        wait_for_workers(base_url, 1, 240, worker, api, headers=headers)

        def all_done() -> bool:
            states = [client.get(f"/v1/images/{job_id}").json()["status"] for _, job_id in submitted]
            return all(s in ("succeeded", "failed") for s in states)

        wait_until(all_done, 240, "all jobs to finish", worker, api, interval_s=0.25)
        jobs = {job_id: client.get(f"/v1/images/{job_id}").json() for _, job_id in submitted}
        assert {j["status"] for j in jobs.values()} == {"succeeded"}
        batches: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
        for body, job_id in submitted:
            batches[jobs[job_id]["batch"]["id"]].append((body, jobs[job_id]))
        for members in batches.values():
            assert len({body["steps"] for body, _ in members}) == 1, "different keys shared a batch"
            images = sum(body["n"] for body, _ in members)
            assert images <= 4
            assert all(job["batch"]["images"] == images and job["batch"]["jobs"] == len(members) for _, job in members)
        assert max(len(m) for m in batches.values()) > 1, "nothing was batched"

        # The co-batched images equal the same request run alone and exactly.
        body, job_id = next((b, j) for b, j in submitted if jobs[j]["batch"]["jobs"] > 1 and b["n"] == 2)
        solo = client.post("/v1/images?wait=60", json={**body, "exact": True}).json()
        assert solo["status"] == "succeeded" and solo["batch"]["jobs"] == 1
        for batched_img, solo_img in zip(jobs[job_id]["images"], solo["images"], strict=True):
            diff = np.abs(_pixels(batched_img["url"]) - _pixels(solo_img["url"]))
            assert int(diff.max()) <= 1 and float((diff > 0).mean()) <= 0.001
    finally:
        client.close()
        if worker is not None:
            worker.stop()
        api.stop()
