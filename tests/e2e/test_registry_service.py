"""The model registry through the real service: one API (uvicorn), one worker process per model
(SFUMATO_WORKER_MODEL), a private Redis, local-disk images.

Registry: ``alpha`` (the built-in tiny), ``beta`` (the same weights as a diffusers folder, like
a fine-tune, plus a textual-inversion embedding) and ``gamma`` (no worker at first). Routing
is proven by pixels: alpha and beta share weights, so a prompt without the token gives the
same image on both, while a prompt with the token differs, which only beta's worker can do.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from devstack.net import free_port
from tests.support.embedding import make_embedding, registry_toml
from tests.support.env import NO_LIMITS, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_until
from worker.builtin.tiny import ensure_tiny_model

pytestmark = pytest.mark.timeout(600)

TOKEN = "<ink-wash>"


@dataclass
class RegistryStack:
    env: dict[str, str]
    tmp: Path
    client: httpx.Client
    api: ServiceProcess
    redis: redis.Redis
    workers: list[ServiceProcess] = field(default_factory=list)

    def queue_length(self, model: str) -> int:
        return int(self.redis.llen(f"rq:queue:{self.env['SFUMATO_QUEUE_PREFIX']}:{model}"))

    def start_worker(self, model: str) -> ServiceProcess:
        worker = start_worker({**self.env, "SFUMATO_WORKER_MODEL": model}, self.tmp / "logs", name=f"worker-{model}")
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, *models: str) -> None:
        def ready() -> bool:
            data = self.client.get("/v1/models").json()["data"]
            return all(m["workers"] >= 1 for m in data if m["id"] in models)

        wait_until(ready, 240, f"workers for {models}", self.api, *self.workers, interval_s=0.25)

    def generate(self, body: dict) -> dict:
        resp = self.client.post("/v1/images?wait=120", json=body)
        assert resp.status_code == 200, (resp.status_code, resp.text, [w.log_tail() for w in self.workers])
        job = resp.json()
        assert job["status"] == "succeeded", job
        return job


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[RegistryStack]:
    tmp = tmp_path_factory.mktemp("e2e-registry")
    env = service_env(redis_server.url, tmp, "e2e-registry", SFUMATO_TORCH_THREADS="1", **NO_LIMITS)
    tiny_folder = ensure_tiny_model(Path(env["SFUMATO_DATA_DIR"]))  # "a fine-tuned checkpoint folder"
    make_embedding(tmp / "registry" / "embeddings" / "ink.safetensors", TOKEN, seed=7, scale=2.0)
    models = [
        {"id": "alpha", "source": "tiny", "family": "tiny", "default_steps": 4},
        {
            "id": "beta",
            "source": str(tiny_folder),
            "family": "tiny",
            "default_steps": 4,
            "embeddings": [{"token": TOKEN, "path": "./embeddings/ink.safetensors"}],
        },
        {"id": "gamma", "source": "tiny", "family": "tiny", "default_steps": 4},
    ]
    (tmp / "registry" / "models.toml").write_text(registry_toml(models))
    env["SFUMATO_MODELS_FILE"] = str(tmp / "registry" / "models.toml")
    port = free_port()
    api = start_api(env, port, tmp / "logs")
    conn = redis.Redis.from_url(redis_server.url)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=150, headers=bearer(env_key(env)))
    stack = RegistryStack(env, tmp, client, api, conn)
    try:
        stack.start_worker("alpha")
        stack.start_worker("beta")
        stack.wait_for_workers("alpha", "beta")
        yield stack
    finally:
        client.close()
        conn.close()
        for worker in stack.workers:
            worker.stop()
        api.stop()


def _pixels(job: dict) -> np.ndarray:
    resp = httpx.get(job["images"][0]["url"], timeout=10)
    assert resp.status_code == 200
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.int16)


def test_models_lists_every_registry_model_with_its_workers_and_no_paths(stack: RegistryStack) -> None:
    resp = stack.client.get("/v1/models")
    body = resp.json()
    assert [(m["id"], m["workers"]) for m in body["data"]] == [("alpha", 1), ("beta", 1), ("gamma", 0)]
    beta = body["data"][1]
    assert beta["embeddings"] == [TOKEN] and beta["family"] == "tiny" and beta["default_steps"] == 4
    assert beta["refiner"] is False and beta["controlnets"] == [] and beta["loras"] == []
    assert body["queue_without_workers"] is False
    assert str(stack.tmp) not in resp.text  # no local path is shown


def test_each_request_runs_on_its_models_worker(stack: RegistryStack) -> None:
    plain = {"prompt": "a lighthouse at dusk", "seed": 5}
    styled = {"prompt": f"a lighthouse in {TOKEN} style", "seed": 5}
    jobs = {(m, name): stack.generate({**body, "model": m}) for m in ("alpha", "beta") for name, body in
            (("plain", plain), ("styled", styled))}  # fmt: skip
    assert all(job["model"] == model for (model, _), job in jobs.items())
    # Same weights: the plain prompt gives the same image on both workers ...
    assert np.array_equal(_pixels(jobs["alpha", "plain"]), _pixels(jobs["beta", "plain"]))
    # ... and the token changes the image only where it is loaded: beta's worker ran beta's job.
    diff = np.abs(_pixels(jobs["alpha", "styled"]) - _pixels(jobs["beta", "styled"]))
    assert int(diff.max()) > 5
    again = stack.generate({**styled, "model": "beta"})
    assert np.array_equal(_pixels(again), _pixels(jobs["beta", "styled"]))  # deterministic


def test_a_model_no_worker_serves_is_503_no_worker_and_nothing_is_queued(stack: RegistryStack) -> None:
    listed = len(stack.client.get("/v1/images").json()["data"])
    resp = stack.client.post("/v1/images", json={"prompt": "x", "model": "gamma"})
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "no_worker" and error["param"] == "model" and "gamma" in error["message"]
    assert resp.headers["Retry-After"] == "10"
    assert stack.queue_length("gamma") == 0
    assert len(stack.client.get("/v1/images").json()["data"]) == listed  # no job was created either
    resp = stack.client.post("/v1/images", json={"prompt": "x", "model": "delta"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unknown_choice"
    assert all(name in resp.json()["error"]["message"] for name in ("alpha", "beta", "gamma"))


def test_with_scale_from_zero_the_job_waits_visibly_and_runs_once_a_worker_starts(stack: RegistryStack) -> None:
    port = free_port()
    env = {**stack.env, "SFUMATO_QUEUE_WITHOUT_WORKERS": "true"}
    api = start_api(env, port, stack.tmp / "logs", name="api-scale-from-zero")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=stack.client.headers) as client:
            assert client.get("/v1/models").json()["queue_without_workers"] is True
            resp = client.post("/v1/images", json={"prompt": "a quiet harbour", "model": "gamma", "seed": 3})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            view = client.get(f"/v1/images/{job_id}").json()
            assert (view["status"], view["waiting_for"], view["queue_position"]) == ("queued", "no_worker", 0)
            assert stack.queue_length("gamma") == 1
            worker = stack.start_worker("gamma")

            def done() -> bool:
                return client.get(f"/v1/images/{job_id}").json()["status"] in ("succeeded", "failed")

            wait_until(done, 240, "the gamma job to run", worker, api, interval_s=0.25)
            view = client.get(f"/v1/images/{job_id}").json()
            assert view["status"] == "succeeded" and view["waiting_for"] is None and view["model"] == "gamma"
        # Now that a worker serves it, the default API accepts gamma too.
        assert stack.generate({"prompt": "a quiet harbour", "model": "gamma", "seed": 3})["model"] == "gamma"
    finally:
        api.stop()


def test_an_api_with_a_broken_registry_does_not_start_and_says_why(redis_server, tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text('[[models]]\nid = "bad"\nsource = "x/y"\nfamily = "sd3"\n')
    env = service_env(redis_server.url, tmp_path, "e2e-registry-bad", SFUMATO_MODELS_FILE=str(tmp_path / "models.toml"))
    with pytest.raises(AssertionError, match="exited") as info:
        api = start_api(env, free_port(), tmp_path / "logs", name="api-bad-registry")
        api.stop()
    assert "model 'bad' (models[0]): family" in str(info.value)
