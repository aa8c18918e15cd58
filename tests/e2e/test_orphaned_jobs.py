"""A job whose only worker is killed goes back to its queue, even with no worker of its model left.

Two models (``alpha`` and ``beta``, both the built-in tiny), one worker each, real processes.
``beta``'s only worker is SIGKILLed mid-job and not replaced. The live ``alpha`` worker and the
API sweep every model's queues (core/reaper.py), so the job must come back as ``queued`` with
``waiting_for: "no_worker"``, on the Redis list the KEDA trigger counts
(``rq:queue:<prefix>:<model>``, deploy/k8s/worker-pool/scaledobject.yaml): that is what makes a
scale-from-zero pool start a worker for it. A new ``beta`` worker then completes it once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from devstack.net import free_port
from tests.support.embedding import registry_toml
from tests.support.env import FAST_LIVENESS, NO_LIMITS, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_until

pytestmark = pytest.mark.timeout(600)

ATTEMPTS = 3


@dataclass
class TwoModels:
    env: dict[str, str]
    tmp: Path
    client: httpx.Client
    api: ServiceProcess
    redis: redis.Redis
    workers: dict[str, ServiceProcess] = field(default_factory=dict)

    def start_worker(self, model: str) -> ServiceProcess:
        worker = start_worker({**self.env, "SFUMATO_WORKER_MODEL": model}, self.tmp / "logs", name=f"worker-{model}")
        self.workers[model] = worker
        return worker

    def live(self, model: str) -> int:
        data = self.client.get("/v1/models").json()["data"]
        return next(m["workers"] for m in data if m["id"] == model)

    def trigger_list(self, model: str) -> list[str]:
        """The list KEDA's redis trigger counts for ``model`` (LLEN of it is the queued count)."""
        key = f"rq:queue:{self.env['SFUMATO_QUEUE_PREFIX']}:{model}"
        return [item.decode() if isinstance(item, bytes) else item for item in self.redis.lrange(key, 0, -1)]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in [self.api, *self.workers.values()])


@pytest.fixture
def stack(redis_server, tmp_path: Path) -> Iterator[TwoModels]:
    env = service_env(
        redis_server.url,
        tmp_path,
        "e2e-orphan",
        **NO_LIMITS,
        **FAST_LIVENESS,
        SFUMATO_TORCH_THREADS="1",
        SFUMATO_JOB_ATTEMPTS=str(ATTEMPTS),
        SFUMATO_MAX_STEPS="1000",
        SFUMATO_QUEUE_WITHOUT_WORKERS="true",  # scale-from-zero: jobs wait for a worker to start
    )
    models: list[dict[str, object]] = [
        {"id": m, "source": "tiny", "family": "tiny", "default_steps": 4} for m in ("alpha", "beta")
    ]
    (tmp_path / "models.toml").write_text(registry_toml(models))
    env["SFUMATO_MODELS_FILE"] = str(tmp_path / "models.toml")
    port = free_port()
    api = start_api(env, port, tmp_path / "logs")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=bearer(env_key(env)))
    s = TwoModels(env, tmp_path, client, api, redis.Redis.from_url(redis_server.url))
    try:
        s.start_worker("alpha")
        s.start_worker("beta")
        wait_until(lambda: s.live("alpha") and s.live("beta"), 240, "a worker per model", api, *s.workers.values())
        yield s
    finally:
        client.close()
        s.redis.close()
        for worker in s.workers.values():
            worker.kill()
        api.stop()


def test_a_job_orphaned_by_kill_9_is_requeued_for_the_autoscaler_then_completes_once(stack: TwoModels) -> None:
    body = {"model": "beta", "prompt": "orphan", "seed": 3, "steps": 600, "width": 128, "height": 128}
    resp = stack.client.post("/v1/images", json=body)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]

    def job() -> dict:
        return stack.client.get(f"/v1/images/{job_id}").json()

    wait_until(lambda: (job().get("progress") or {}).get("step", 0) >= 5, 240, "the job to be denoising")
    stack.workers["beta"].kill()  # kill -9, and no replacement: beta has no worker now

    # Back in beta's queue within the documented time (execution TTL + reaper interval; the
    # deadline is generous for a loaded machine), waiting for a worker that does not exist.
    def requeued_without_worker() -> bool:
        state = job()
        return state["status"] == "queued" and state.get("waiting_for") == "no_worker"

    wait_until(requeued_without_worker, 90, "the orphaned job to be re-queued", stack.api, stack.workers["alpha"])
    assert stack.live("beta") == 0 and stack.live("alpha") == 1
    assert stack.trigger_list("beta") == [job_id], stack.logs()  # KEDA's trigger now counts it

    stack.start_worker("beta")
    wait_until(lambda: job()["status"] in ("succeeded", "failed"), 300, "the job to finish", *stack.workers.values())
    final = job()
    assert final["status"] == "succeeded", (final, stack.logs())
    assert [image["index"] for image in final["images"]] == [0]
    root = Path(stack.env["SFUMATO_DATA_DIR"]) / "images"
    stored = [path for path in root.rglob("*") if path.is_file() and path.parent.name == job_id]
    assert len(stored) == 1, stored  # one image: the killed attempt never completed
    rq_job = Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer)
    assert len(rq_job.results()) == 1  # completed exactly once
    assert rq_job.retries_left == ATTEMPTS - 2  # the death cost one attempt, nothing else did
    assert stack.trigger_list("beta") == []
