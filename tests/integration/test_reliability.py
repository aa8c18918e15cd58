"""Never lose a job: real worker processes, killed, signalled and starved of Redis or S3.

Liveness settings are shortened (1 s heartbeats, 4 s execution TTL) so recovery is quick; the
production defaults only change how long it takes, not what happens.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.support.env import FAST_LIVENESS, s3_env, service_env
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers, wait_until
from tests.support.scrape import Scrape
from tests.support.seaweed import start_seaweed

pytestmark = pytest.mark.timeout(600)

FINAL = ("succeeded", "failed", "canceled")
SLOW = {"prompt": "slow", "steps": 100, "width": 256, "height": 256}  # several seconds on this CPU


@dataclass
class Stack:
    env: dict[str, str]
    logs: Path
    client: httpx.Client
    base_url: str
    api: ServiceProcess
    workers: list[ServiceProcess]

    def add_worker(self, **extra: str) -> ServiceProcess:
        worker = start_worker({**self.env, **extra}, self.logs, name=f"worker{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def status(self, job_id: str) -> dict:
        return self.client.get(f"/v1/images/{job_id}").json()

    def wait_status(self, job_id: str, states: tuple[str, ...], timeout_s: float = 120) -> dict:
        seen: dict = {}

        def reached() -> bool:
            seen.update(self.status(job_id))
            return seen.get("status") in states

        wait_until(reached, timeout_s, f"job {job_id} to be {states}", self.api, interval_s=0.1)
        return seen


def _env(redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    return service_env(
        redis_url, tmp, "rel", SFUMATO_AUTH_ENABLED="false", SFUMATO_TORCH_THREADS="1", **FAST_LIVENESS, **extra
    )


@pytest.fixture
def stack_factory(redis_server, tmp_path: Path) -> Iterator:
    stacks: list[Stack] = []

    def make(redis_url: str | None = None, workers: int = 1, **extra: str) -> Stack:
        env = _env(redis_url or redis_server.url, tmp_path, **extra)
        port = free_port()
        logs = tmp_path / f"logs{len(stacks)}"
        api = start_api(env, port, logs)
        base_url = f"http://127.0.0.1:{port}"
        stack = Stack(env, logs, httpx.Client(base_url=base_url, timeout=30), base_url, api, [])
        stacks.append(stack)
        for _ in range(workers):
            stack.add_worker()
        if workers:
            wait_for_workers(base_url, workers, 240, *stack.workers, api)
        return stack

    yield make
    for stack in stacks:
        for worker in stack.workers:
            worker.kill()
        stack.api.stop()
        stack.client.close()


def test_a_killed_workers_job_is_requeued_and_completes_once(stack_factory) -> None:
    stack = stack_factory(workers=1)
    job_id = stack.client.post("/v1/images", json={**SLOW, "n": 2, "seed": 5}).json()["id"]
    stack.wait_status(job_id, ("running",))
    stack.workers[0].kill()  # kill -9 mid-batch
    stack.add_worker()
    done = stack.wait_status(job_id, FINAL, timeout_s=240)
    assert done["status"] == "succeeded", done
    assert [img["seed"] for img in done["images"]] == [5, 6]
    assert all(httpx.get(img["url"], timeout=10).status_code == 200 for img in done["images"])


def test_a_job_that_kills_every_worker_fails_as_worker_lost_after_its_attempts(stack_factory) -> None:
    stack = stack_factory(workers=1, SFUMATO_JOB_ATTEMPTS="2")
    job_id = stack.client.post("/v1/images", json=SLOW).json()["id"]
    started_at = None
    for _attempt in range(2):
        # Each attempt: running with a new start time (the reaper re-queued it), then killed.
        def next_attempt_running(previous: float | None = started_at) -> bool:
            job = stack.status(job_id)
            return job["status"] == "running" and job["started_at"] != previous

        wait_until(next_attempt_running, 120, "the next attempt to start", stack.api)
        started_at = stack.status(job_id)["started_at"]
        stack.workers[-1].kill()
        metrics_port = free_port()
        stack.add_worker(SFUMATO_WORKER_METRICS_PORT=str(metrics_port))
    done = stack.wait_status(job_id, FINAL, timeout_s=120)
    assert done["status"] == "failed" and done["error"]["code"] == "worker_lost", done
    # The sweeper that failed it counts it (the last worker or the API: both sweep, core/reaper.py):
    # no worker's own completion path saw it.
    worker_url = f"http://127.0.0.1:{metrics_port}"

    def worker_metrics_answer() -> bool:
        try:
            return httpx.get(f"{worker_url}/metrics", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(worker_metrics_answer, 240, "the last worker's metrics", stack.workers[-1])
    lost = sum(
        Scrape.of(url).value("sfumato_jobs_finished_total", state="failed", code="worker_lost")
        for url in (worker_url, stack.base_url)
    )
    assert lost == 1
    # The fleet survives the poison job.
    assert stack.client.post("/v1/images?wait=60", json={"prompt": "next", "steps": 2}).json()["status"] == "succeeded"


def test_sigterm_finishes_the_batch_in_hand_and_exits_zero_even_when_repeated(stack_factory) -> None:
    stack = stack_factory(workers=0, SFUMATO_MAX_BATCH="4")
    ids = [stack.client.post("/v1/images", json={**SLOW, "steps": 40, "seed": i}).json()["id"] for i in range(3)]
    worker = stack.add_worker()
    stack.wait_status(ids[0], ("running",), timeout_s=240)
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining" in worker.log_tail(200), 30, "the worker to start draining", worker)
    worker.proc.send_signal(signal.SIGTERM)  # a second signal must not cost the batch
    assert worker.proc.wait(timeout=180) == 0, worker.log_tail()
    states = [stack.status(job_id)["status"] for job_id in ids]
    assert states == ["succeeded"] * 3, (states, worker.log_tail())


def test_cancelling_a_running_job_stops_it_and_its_partner_finishes(stack_factory) -> None:
    stack = stack_factory(workers=0, SFUMATO_MAX_BATCH="4")
    body = {**SLOW, "steps": 60}
    keep = stack.client.post("/v1/images", json={**body, "seed": 1}).json()["id"]
    drop = stack.client.post("/v1/images", json={**body, "seed": 2}).json()["id"]
    stack.add_worker()
    stack.wait_status(drop, ("running",), timeout_s=240)
    resp = stack.client.delete(f"/v1/images/{drop}")
    assert resp.status_code in (200, 202), resp.text
    assert stack.wait_status(drop, FINAL)["status"] == "canceled"
    kept = stack.wait_status(keep, FINAL)
    assert kept["status"] == "succeeded" and kept["batch"]["jobs"] == 2
    assert stack.client.delete(f"/v1/images/{keep}").status_code == 409

    alone = stack.client.post("/v1/images", json={**SLOW, "steps": 100, "seed": 3}).json()["id"]
    stack.wait_status(alone, ("running",))
    assert stack.client.delete(f"/v1/images/{alone}").status_code == 202
    assert stack.wait_status(alone, FINAL)["status"] == "canceled"
    # The worker stopped denoising and is free again.
    assert stack.client.post("/v1/images?wait=60", json={"prompt": "x", "steps": 2}).json()["status"] == "succeeded"


def test_a_job_past_its_start_deadline_fails_and_never_runs(stack_factory) -> None:
    stack = stack_factory(workers=0)
    job = stack.client.post("/v1/images", json={"prompt": "late", "steps": 2, "timeout_s": 0.2}).json()
    on_time = stack.client.post("/v1/images", json={"prompt": "fine", "steps": 2, "timeout_s": 600}).json()
    wait_until(lambda: time.time() > job["created_at"] + 0.2, 10, "the first deadline to pass")
    stack.add_worker()
    late = stack.wait_status(job["id"], FINAL, timeout_s=240)
    assert late["status"] == "failed" and late["error"]["code"] == "deadline_exceeded"
    assert late["images"] == []
    assert stack.wait_status(on_time["id"], FINAL)["status"] == "succeeded"


def test_idempotency_key_returns_the_original_job_and_refuses_a_different_body(stack_factory) -> None:
    stack = stack_factory(workers=0)
    headers = {"Idempotency-Key": "order-42"}
    first = stack.client.post("/v1/images", json={"prompt": "x"}, headers=headers)
    again = stack.client.post("/v1/images", json={"prompt": "x"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = stack.client.post("/v1/images", json={"prompt": "y"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    fresh = stack.client.post("/v1/images", json={"prompt": "x"}, headers={"Idempotency-Key": "order-43"})
    assert fresh.json()["id"] != first.json()["id"]


def test_storage_outage_fails_jobs_as_storage_unavailable_and_never_succeeds_without_objects(
    stack_factory, tmp_path: Path
) -> None:
    s3 = start_seaweed(tmp_path / "s3", bucket="rel")
    try:
        stack = stack_factory(
            workers=1,
            **s3_env(s3, "rel", create=False),
            SFUMATO_STORAGE_RETRY_BUDGET_S="3",
        )
        ok = stack.client.post("/v1/images?wait=60", json={"prompt": "ok", "steps": 2}).json()
        assert ok["status"] == "succeeded"
        s3.stop()
        failed = stack.client.post("/v1/images?wait=120", json={"prompt": "no s3", "steps": 2}).json()
        assert failed["status"] == "failed" and failed["error"]["code"] == "storage_unavailable", failed
    finally:
        s3.stop()


def test_workers_reconnect_after_redis_restarts_and_aof_keeps_acknowledged_jobs(stack_factory, tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis", appendonly=True)
    try:
        stack = stack_factory(redis_url=redis.url, workers=1)
        assert stack.client.post("/v1/images?wait=60", json={"prompt": "a", "steps": 2}).json()["status"] == "succeeded"
        stack.workers[0].proc.send_signal(signal.SIGSTOP)  # hold the worker so the next job stays queued
        queued = stack.client.post("/v1/images", json={"prompt": "b", "steps": 2}).json()["id"]
        # Redis writes the AOF before it answers, so a process kill keeps acknowledged jobs
        # (appendfsync everysec only risks the last second on a machine crash).
        redis.kill()
        assert stack.client.get("/readyz").status_code == 503
        redis = redis.restart()
        stack.workers[0].proc.send_signal(signal.SIGCONT)
        done = stack.wait_status(queued, FINAL, timeout_s=120)
        assert done["status"] == "succeeded", (done, stack.workers[0].log_tail())
        assert stack.workers[0].alive()
    finally:
        redis.stop()
