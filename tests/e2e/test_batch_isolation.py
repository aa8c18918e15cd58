"""One tenant's job can never fail another's: through the real API and a real worker process,
jobs of two tenants share a batch with a poisoned job, and only the poisoned job fails.

The poisoned job carries a lone UTF-16 surrogate in ``negative_prompt`` (issue 18). The API now
refuses that (422), so the job is put on the queue as an API from before the check would have
put it: a real payload that makes the real tokenizer raise inside the batch's pipeline call.
The worker isolates the failure (worker/runtime/execute.py) and counts it on its /metrics.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from core.config import Settings
from core.jobs import JobStore, connect, new_job_id
from core.schemas import ImageRequest
from core.validation import normalize_request
from devstack.net import free_port
from tests.support.env import NO_LIMITS, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import start_api, start_worker, wait_for_workers, wait_until

pytestmark = pytest.mark.timeout(600)

COMMON = {"steps": 3, "width": 64, "height": 64}  # one batch key for every job


def _pixels(url: str) -> np.ndarray:
    resp = httpx.get(url, timeout=10)
    resp.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.int16)


def _enqueue_poisoned(env: dict[str, str], tmp_path: Path, tenant: str) -> str:
    """A job as an API without the text check queued it: negative_prompt holds a lone surrogate."""
    settings = Settings(
        redis_url=env["SFUMATO_REDIS_URL"], queue_prefix=env["SFUMATO_QUEUE_PREFIX"], data_dir=tmp_path / "data"
    )
    request = ImageRequest.model_validate({"prompt": "an innocent prompt", "seed": 99, **COMMON})
    payload = normalize_request(request, settings, tenant=tenant, job_id=new_job_id(), now=time.time())
    poisoned = payload.model_copy(update={"negative_prompt": "\ud800"})
    connection = connect(settings)
    try:
        JobStore(connection, settings).enqueue(poisoned)
    finally:
        connection.close()
    return poisoned.job_id


def _metric(metrics_url: str, name: str) -> float:
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith(name + "{") and 'model="tiny"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_poisoned_job_fails_alone_and_the_other_tenants_jobs_in_its_batch_succeed(
    redis_server, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = service_env(
        redis_server.url,
        tmp_path,
        "e2e-isolation",
        **NO_LIMITS,
        SFUMATO_MAX_BATCH="8",
        SFUMATO_MAX_WAIT_MS="50",
        SFUMATO_QUEUE_WITHOUT_WORKERS="true",
        SFUMATO_WORKER_METRICS_PORT=str(metrics_port),
    )
    port = free_port()
    api = start_api(env, port, tmp_path / "logs")
    base_url = f"http://127.0.0.1:{port}"
    alice, mallory = bearer(env_key(env, tenant="alice")), bearer(env_key(env, tenant="mallory"))
    worker = None
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            # The API itself refuses the poisoned text now, naming the field.
            refused = http.post(
                "/v1/images",
                content=b'{"prompt": "x", "negative_prompt": "\\ud800"}',
                headers={**mallory, "content-type": "application/json"},
            )
            assert refused.status_code == 422 and refused.json()["error"]["param"] == "negative_prompt"
            # Queued before any worker runs, so they are claimed together: alice's jobs around
            # mallory's poisoned one (and one good job of mallory's).
            good: dict[str, dict] = {}
            for i in range(2):
                body = {"prompt": f"alice's scene {i}", "seed": 10 + i, "n": 1 + i, **COMMON}
                good[http.post("/v1/images", json=body, headers=alice).json()["id"]] = body
            poisoned = _enqueue_poisoned(env, tmp_path, "mallory")
            for i in range(2):
                body = {"prompt": f"alice's scene {i + 2}", "seed": 20 + i, **COMMON}
                good[http.post("/v1/images", json=body, headers=alice).json()["id"]] = body
            body = {"prompt": "mallory's honest scene", "seed": 30, **COMMON}
            mallory_good = http.post("/v1/images", json=body, headers=mallory).json()["id"]

            worker = start_worker(env, tmp_path / "logs")
            wait_for_workers(base_url, 1, 240, worker, api, headers=alice)

            def view(job_id: str) -> dict:
                return http.get(
                    f"/v1/images/{job_id}", headers=mallory if job_id in (poisoned, mallory_good) else alice
                ).json()

            ids = [*good, poisoned, mallory_good]
            wait_until(
                lambda: all(view(j)["status"] in ("succeeded", "failed") for j in ids), 240, "the batch", worker, api
            )

            bad = view(poisoned)
            assert bad["status"] == "failed" and bad["error"]["code"] == "generation_failed", bad
            assert "Error" not in bad["error"]["message"] and "TextEncodeInput" not in bad["error"]["message"]
            jobs = {job_id: view(job_id) for job_id in [*good, mallory_good]}
            assert {j["status"] for j in jobs.values()} == {"succeeded"}, jobs
            # They really shared the poisoned job's batch (6 jobs, 7 images, one claim).
            assert {j["batch"]["jobs"] for j in jobs.values()} == {6}, jobs

            # Each image is what the same request gives alone.
            job_id, body = next((j, b) for j, b in good.items() if b.get("n") == 2)
            solo = http.post("/v1/images?wait=120", json={**body, "exact": True}, headers=alice).json()
            assert solo["status"] == "succeeded" and solo["batch"]["jobs"] == 1
            for batched_img, solo_img in zip(jobs[job_id]["images"], solo["images"], strict=True):
                diff = np.abs(_pixels(batched_img["url"]) - _pixels(solo_img["url"]))
                assert int(diff.max()) <= 1 and float((diff > 0).mean()) <= 0.001

        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        # The worker refuses this input while preparing the job (counting its prompt's chunks
        # tokenizes it), before the batch's pipeline call: nothing needed re-running. The
        # bisection itself is tested with fault injection in tests/integration/test_batch_isolation.py.
        assert _metric(metrics, "sfumato_batch_isolations_total") == 0
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
