"""Fault injection on real processes, and a recorder that checks every acknowledged job.

A :class:`Cluster` is the production shape on one machine: a private Redis with AOF
(``appendfsync everysec``), SeaweedFS with credentials, one API process and several worker
processes (short liveness timings). Scenarios submit jobs from client threads, inject one kind
of fault, then wait for every job that got a 202 and report:

* ``lost``: acknowledged jobs that vanished (404) or never reached a final state (``stuck``);
* ``duplicates``: succeeded jobs with more stored objects or images than they asked for;
* ``succeeded_without_objects``: succeeded jobs whose image URL does not serve the image;
* ``not_succeeded``: jobs that ended failed or canceled (the cost a control run shows);
* ``worst_recovery_s``: after a worker kill, how long until its jobs ran again or ended.

Each scenario has a control with the protection switched off, which must show the loss, so the
recorder is proven able to see it. ``python -m tests.chaos.run --full`` writes the figures to
``bench/results/chaos.json``; ``tests/chaos/test_chaos.py`` runs a small scale in ``make test``.
"""

from __future__ import annotations

import random
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.net import free_port
from devstack.redis_server import RedisServer, start_redis
from tests.support.env import FAST_LIVENESS, NO_LIMITS, s3_env, service_env
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers, wait_until
from tests.support.seaweed import SeaweedServer, start_seaweed

FINAL = {"succeeded", "failed", "canceled"}
BUCKET = "chaos"


@dataclass
class Cluster:
    workdir: Path
    redis: RedisServer
    s3: SeaweedServer
    env: dict[str, str]
    base_url: str = ""
    api: ServiceProcess | None = None
    workers: list[ServiceProcess] = field(default_factory=list)
    _count: int = 0

    def start_worker(self) -> ServiceProcess:
        self._count += 1
        worker = start_worker(self.env, self.workdir / "logs", name=f"worker{self._count}")
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[ServiceProcess]:
        return [w for w in self.workers if w.alive()]

    def stop(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.api is not None:
            self.api.stop()


@contextmanager
def cluster(workdir: Path, workers: int = 2, aof: bool = True, **env: str) -> Iterator[Cluster]:
    redis = start_redis(workdir / "redis", appendonly=aof)
    s3 = start_seaweed(workdir / "s3", bucket=BUCKET)
    base_env = service_env(
        redis.url,
        workdir,
        "chaos",
        **s3_env(s3, BUCKET, create=False),
        **NO_LIMITS,
        **FAST_LIVENESS,
        SFUMATO_AUTH_ENABLED="false",
        SFUMATO_TORCH_THREADS="1",
        **{"SFUMATO_MAX_BATCH": "4", "SFUMATO_LOG_LEVEL": "WARNING", **env},  # a scenario may override these
    )
    c = Cluster(workdir, redis, s3, base_env)
    try:
        port = free_port()
        c.api = start_api(base_env, port, workdir / "logs")
        c.base_url = f"http://127.0.0.1:{port}"
        for _ in range(workers):
            c.start_worker()
        wait_for_workers(c.base_url, workers, 300, *c.workers, c.api)
        yield c
    finally:
        c.stop()
        c.s3.stop()  # the current handles: a scenario may have restarted either
        c.redis.stop()


@dataclass
class Recorder:
    """Submits jobs, remembers every 202, and judges the end state of each."""

    base_url: str
    acknowledged: dict[str, int] = field(default_factory=dict)  # job id -> n
    submit_statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, count: int, clients: int = 4, steps: int = 12, pause_s: float = 0.0, size: int = 64) -> None:
        """``count`` jobs from ``clients`` threads; 503s are retried (the client saw no 202)."""
        counter = iter(range(count))
        counter_lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=self.base_url, timeout=10) as http:
                while True:
                    with counter_lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    body = {"prompt": f"chaos {i}", "seed": i, "steps": steps, "n": 1 + i % 2}
                    body.update(width=size, height=size)
                    while True:
                        try:
                            resp = http.post("/v1/images", json=body)
                            code = resp.status_code
                        except httpx.HTTPError:
                            code = 0
                        with self.lock:
                            self.submit_statuses[code] += 1
                        if code == 202:
                            with self.lock:
                                self.acknowledged[resp.json()["id"]] = body["n"]
                            break
                        time.sleep(0.2)  # 503 / connection refused: back off and retry
                    if pause_s:
                        time.sleep(pause_s)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def states(self, http: httpx.Client) -> dict[str, dict[str, Any]]:
        out = {}
        for job_id in list(self.acknowledged):
            resp = http.get(f"/v1/images/{job_id}")
            out[job_id] = resp.json() if resp.status_code == 200 else {"status": f"http {resp.status_code}"}
        return out

    def settle(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Poll until every acknowledged job is final or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            while True:
                try:
                    states = self.states(http)
                except httpx.HTTPError:
                    states = {}
                # A vanished job (404) will not come back: it is final for the recorder (as lost).
                done = states and all(
                    s.get("status") in FINAL or str(s.get("status")).startswith("http 404") for s in states.values()
                )
                if done or time.monotonic() > deadline:
                    return states
                time.sleep(0.5)

    def judge(self, states: dict[str, dict[str, Any]], s3: SeaweedServer) -> dict[str, Any]:
        client = s3.client()
        lost = [j for j, s in states.items() if str(s.get("status", "")).startswith("http")]
        lost += [j for j in self.acknowledged if j not in states]
        stuck = [j for j, s in states.items() if s.get("status") not in FINAL and j not in lost]
        duplicates, without_objects = [], []
        for job_id, s in states.items():
            if s.get("status") != "succeeded":
                continue
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"default/{job_id}/").get("KeyCount", 0)
            if len(s["images"]) != self.acknowledged[job_id] or listed != self.acknowledged[job_id]:
                duplicates.append(job_id)
            for image in s["images"]:
                if httpx.get(image["url"], timeout=10).status_code != 200:
                    without_objects.append(job_id)
                    break
        unsuccessful = [s for s in states.values() if s.get("status") != "succeeded"]
        codes = Counter((s.get("error") or {}).get("code", s.get("status")) for s in unsuccessful)
        return {
            "acknowledged": len(self.acknowledged),
            "succeeded": sum(1 for s in states.values() if s.get("status") == "succeeded"),
            "lost": len(lost) + len(stuck),
            "stuck": len(stuck),
            "duplicates": len(duplicates),
            "succeeded_without_objects": len(without_objects),
            "not_succeeded": sum(codes.values()),
            "not_succeeded_by_code": dict(codes),
            "submit_http_statuses": {str(k): v for k, v in sorted(self.submit_statuses.items())},
        }


def _running_jobs(base_url: str, job_ids: list[str]) -> dict[str, float]:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        out = {}
        for job_id in job_ids:
            job = http.get(f"/v1/images/{job_id}").json()
            if job.get("status") == "running":
                out[job_id] = job["started_at"]
        return out


def _all_final(base_url: str, recorder: Recorder) -> bool:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        return all(s.get("status") in FINAL for s in recorder.states(http).values())


def _recovery_time(base_url: str, running: dict[str, float], killed_at: float, timeout_s: float) -> float | None:
    """Seconds until every job running at the kill was detected and re-queued: queued again,
    running again (a new start) or final. (Jobs of the surviving worker simply finish.)"""
    if not running:
        return None
    pending = dict(running)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=10) as http:
        while pending and time.monotonic() < deadline:
            for job_id, started in list(pending.items()):
                job = http.get(f"/v1/images/{job_id}").json()
                if job["status"] != "running" or job["started_at"] != started:
                    del pending[job_id]
            time.sleep(0.2)
    return None if pending else round(time.time() - killed_at, 2)


def scenario_worker_kills(workdir: Path, jobs: int, kills: int, attempts: int = 3) -> dict[str, Any]:
    """Busy workers SIGKILLed at random moments (and replaced, as Kubernetes would)."""
    rng = random.Random(7)
    with cluster(workdir, workers=2, SFUMATO_JOB_ATTEMPTS=str(attempts)) as c:
        recorder = Recorder(c.base_url)
        # Larger jobs (128 px, 30 steps) so that workers are busy when the kills come.
        kwargs = {"clients": 4, "pause_s": 0.05, "size": 128, "steps": 30}
        submitter = threading.Thread(target=recorder.submit, args=(jobs,), kwargs=kwargs)
        submitter.start()
        recoveries = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 2.0))  # a random moment, by design
            running: dict[str, float] = {}

            def busy_or_done(running: dict[str, float] = running) -> bool:
                running.clear()
                running.update(_running_jobs(c.base_url, list(recorder.acknowledged)))
                return bool(running) or (not submitter.is_alive() and _all_final(c.base_url, recorder))

            wait_until(busy_or_done, 120, "a busy worker")
            if not running:
                break  # all work done before every kill could land
            victims = c.live_workers()
            if not victims:
                break
            victim = rng.choice(victims)
            killed_at = time.time()
            victim.kill()
            c.start_worker()
            recoveries.append(_recovery_time(c.base_url, running, killed_at, 120))
        submitter.join()
        result = recorder.judge(recorder.settle(600), c.s3)
    measured = [r for r in recoveries if r is not None]
    return {**result, "kills": len(recoveries), "worst_recovery_s": max(measured) if measured else None}


def scenario_redis_kill(workdir: Path, jobs: int, aof: bool = True, workers: int = 2) -> dict[str, Any]:
    """Redis SIGKILLed and restarted while clients submit."""
    with cluster(workdir, workers=workers, aof=aof) as c:
        recorder = Recorder(c.base_url)
        submitter = threading.Thread(target=recorder.submit, args=(jobs,), kwargs={"clients": 4, "pause_s": 0.05})
        submitter.start()
        wait_until(lambda: len(recorder.acknowledged) >= jobs // 3, 120, "a third of the jobs")
        c.redis.kill()
        wait_until(lambda: recorder.submit_statuses[503] > 0, 30, "the API to answer 503")
        c.redis = c.redis.restart()
        submitter.join()
        result = recorder.judge(recorder.settle(600), c.s3)
    other = {k: v for k, v in result["submit_http_statuses"].items() if k not in ("202", "503")}
    return {**result, "aof": aof, "api_statuses_other_than_202_503": other}


def scenario_storage_outage(
    workdir: Path, jobs: int, outage_s: float, budget_s: float, workers: int = 2
) -> dict[str, Any]:
    """SeaweedFS stopped for ``outage_s`` mid-run, then started again on the same ports."""
    with cluster(workdir, workers=workers, SFUMATO_STORAGE_RETRY_BUDGET_S=str(budget_s)) as c:
        recorder = Recorder(c.base_url)
        # Spread submissions over ~1.5x the outage so jobs are being uploaded while S3 is down.
        pause_s = max(0.05, 1.5 * outage_s * 4 / jobs)
        submitter = threading.Thread(target=recorder.submit, args=(jobs,), kwargs={"clients": 4, "pause_s": pause_s})
        submitter.start()
        wait_until(lambda: len(recorder.acknowledged) >= jobs // 4, 120, "a quarter of the jobs")
        c.s3.stop()
        time.sleep(outage_s)  # the outage itself is a duration, by design
        c.s3 = c.s3.restart()
        submitter.join()
        result = recorder.judge(recorder.settle(600), c.s3)
    return {**result, "outage_s": outage_s, "retry_budget_s": budget_s}


def scenario_sigterm(workdir: Path, jobs: int, kill_instead: bool = False) -> dict[str, Any]:
    """SIGTERM (twice) to a worker during a batch; the control SIGKILLs it with no retries."""
    env = {"SFUMATO_JOB_ATTEMPTS": "1"} if kill_instead else {}
    with cluster(workdir, workers=1, **env) as c:
        recorder = Recorder(c.base_url)
        recorder.submit(jobs, clients=4)
        worker = c.workers[0]
        wait_until(lambda: bool(_running_jobs(c.base_url, list(recorder.acknowledged))), 120, "a running batch")
        if kill_instead:
            worker.kill()
            exit_code = None
        else:
            worker.proc.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # a second signal a moment later, as an impatient orchestrator sends
            worker.proc.send_signal(signal.SIGTERM)
            exit_code = worker.proc.wait(timeout=300)
        c.start_worker()  # the replacement finishes the queue
        result = recorder.judge(recorder.settle(600), c.s3)
    return {**result, "worker_exit_code": exit_code, "signal": "SIGKILL" if kill_instead else "SIGTERM x2"}


def new_workdir(root: Path, name: str) -> Path:
    path = root / f"{name}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


def _enqueue_poisoned(env: dict[str, str], workdir: Path, seed: int, steps: int, size: int) -> str:
    """A job whose text the tokenizer cannot encode (a lone surrogate in ``negative_prompt``),
    queued as an API from before the text check would have: the API itself now answers 422."""
    from core.config import Settings
    from core.jobs import JobStore, connect, new_job_id
    from core.schemas import ImageRequest
    from core.validation import normalize_request

    settings = Settings(
        redis_url=env["SFUMATO_REDIS_URL"], queue_prefix=env["SFUMATO_QUEUE_PREFIX"], data_dir=workdir / "data"
    )
    request = ImageRequest.model_validate(
        {"prompt": f"poisoned {seed}", "seed": seed, "steps": steps, "width": size, "height": size}
    )
    payload = normalize_request(request, settings, tenant="default", job_id=new_job_id(), now=time.time())
    connection = connect(settings)
    try:
        JobStore(connection, settings).enqueue(payload.model_copy(update={"negative_prompt": "\ud800"}))
    finally:
        connection.close()
    return payload.job_id


def scenario_poisoned_input(workdir: Path, jobs: int, poisoned: int, isolation: bool = True) -> dict[str, Any]:
    """Jobs whose input makes the pipeline raise, queued among ordinary ones so they share
    batches; ``failed_by_another_input`` counts ordinary jobs that did not succeed. The control
    turns batch isolation off (SFUMATO_BATCH_ISOLATION=false)."""
    steps, size = 12, 64  # the Recorder's bodies: one batch key for all
    with cluster(workdir, workers=2, SFUMATO_BATCH_ISOLATION="true" if isolation else "false") as c:
        recorder = Recorder(c.base_url)
        submitter = threading.Thread(target=recorder.submit, args=(jobs,), kwargs={"clients": 4, "pause_s": 0.02})
        submitter.start()
        bad_ids = []
        for i in range(poisoned):  # spread over the submission, so each lands in a busy queue
            target = (i + 1) * jobs // (poisoned + 1)
            wait_until(lambda t=target: len(recorder.acknowledged) >= t or not submitter.is_alive(), 120, "submits")
            bad_ids.append(_enqueue_poisoned(c.env, workdir, 10_000 + i, steps, size))
        submitter.join()
        states = recorder.settle(600)
        result = recorder.judge(states, c.s3)
        with httpx.Client(base_url=c.base_url, timeout=10) as http:
            wait_until(
                lambda: all(http.get(f"/v1/images/{j}").json()["status"] in FINAL for j in bad_ids), 120, "poisoned"
            )
            bad_states = [http.get(f"/v1/images/{j}").json() for j in bad_ids]
    # A batch whose succeeded members are fewer than its jobs held a job that failed: a poisoned one.
    members = Counter(s["batch"]["id"] for s in states.values() if s.get("status") == "succeeded")
    shared = sum(
        1 for s in states.values() if s.get("status") == "succeeded" and s["batch"]["jobs"] > members[s["batch"]["id"]]
    )
    return {
        **result,
        "isolation": isolation,
        "poisoned": len(bad_ids),
        "poisoned_failed": sum(1 for s in bad_states if s["status"] == "failed"),
        "failed_by_another_input": result["not_succeeded"],
        "succeeded_in_a_poisoned_batch": shared,
    }
