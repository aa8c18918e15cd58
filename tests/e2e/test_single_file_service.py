"""A single-file checkpoint through the real service: API (uvicorn), one worker per model,
a private Redis. ``folder`` serves the built-in tiny model as a diffusers folder, ``file`` the
same weights as ONE original-layout .safetensors; the same request gives the same pixels from
both. ``xl`` serves a tiny SDXL as one file (CLIP-L + OpenCLIP bigG layout). A worker pointed
at a truncated checkpoint exits at start-up naming the model and file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from PIL import Image

from devstack.net import free_port
from tests.support.embedding import registry_toml
from tests.support.env import NO_LIMITS, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_until
from tests.support.single_file import write_single_file
from tests.support.single_file_openclip import save_ldm, sdxl_distinct_widths, sdxl_to_ldm
from worker.builtin.tiny import ensure_tiny_model

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def service(redis_server, tmp_path_factory) -> Iterator[tuple[httpx.Client, dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("e2e-single-file")
    env = service_env(redis_server.url, tmp, "e2e-single-file", SFUMATO_TORCH_THREADS="1", **NO_LIMITS)
    folder = ensure_tiny_model(Path(env["SFUMATO_DATA_DIR"]))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    write_single_file(pipe, tmp / "registry" / "checkpoints" / "tiny-original.safetensors")
    cut = tmp / "registry" / "checkpoints" / "cut.safetensors"
    cut.write_bytes((tmp / "registry" / "checkpoints" / "tiny-original.safetensors").read_bytes()[:-4096])
    xl = sdxl_distinct_widths()  # tests/support/single_file_openclip.py says why not the built-in one
    xl.save_pretrained(tmp / "tiny-sdxl", safe_serialization=True)
    save_ldm(sdxl_to_ldm(xl), tmp / "registry" / "checkpoints" / "tiny-sdxl.safetensors")
    models: list[dict[str, object]] = [
        {"id": "folder", "source": str(folder), "family": "tiny", "default_steps": 4},
        # Relative to the registry file, as an operator writes it; `config`: the tiny architecture.
        {"id": "file", "source": "./checkpoints/tiny-original.safetensors", "family": "tiny",
         "config": str(folder), "default_steps": 4},
        {"id": "xl", "source": "./checkpoints/tiny-sdxl.safetensors", "family": "sdxl",
         "config": str(tmp / "tiny-sdxl"), "default_steps": 3},
        {"id": "broken", "source": "./checkpoints/cut.safetensors", "family": "sd1"},
    ]  # fmt: skip
    (tmp / "registry" / "models.toml").write_text(registry_toml(models))
    env["SFUMATO_MODELS_FILE"] = str(tmp / "registry" / "models.toml")
    port = free_port()
    api = start_api(env, port, tmp / "logs")
    workers: list[ServiceProcess] = []
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=150, headers=bearer(env_key(env)))
    try:
        for model in ("folder", "file", "xl"):
            workers.append(start_worker({**env, "SFUMATO_WORKER_MODEL": model}, tmp / "logs", name=f"worker-{model}"))

        def ready() -> bool:
            data = client.get("/v1/models").json()["data"]
            return all(m["workers"] >= 1 for m in data if m["id"] in ("folder", "file", "xl"))

        wait_until(ready, 240, "workers for folder, file and xl", api, *workers, interval_s=0.25)
        yield client, env, tmp
    finally:
        client.close()
        for worker in workers:
            worker.stop()
        api.stop()


def _pixels(client: httpx.Client, body: dict) -> np.ndarray:
    resp = client.post("/v1/images?wait=120", json=body)
    assert resp.status_code == 200 and resp.json()["status"] == "succeeded", resp.text
    image = httpx.get(resp.json()["images"][0]["url"], timeout=10)
    return np.asarray(Image.open(io.BytesIO(image.content)).convert("RGB"))


def test_the_checkpoint_file_serves_the_same_images_as_the_folder(service) -> None:
    client, _, _ = service
    body = {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "seed": 11, "width": 64, "height": 64}
    assert np.array_equal(_pixels(client, {**body, "model": "folder"}), _pixels(client, {**body, "model": "file"}))
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["file"]["family"] == "tiny" and "config" not in listed["file"]  # no server paths


def test_an_sdxl_checkpoint_file_is_served(service) -> None:
    client, _, _ = service
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["xl"]["family"] == "sdxl" and listed["xl"]["modes"] == ["txt2img", "img2img", "inpaint"]
    body = {"model": "xl", "prompt": "a lighthouse", "seed": 5, "width": 64, "height": 64, "guidance_scale": 5.0}
    assert _pixels(client, body).shape == (64, 64, 3)


def test_a_worker_on_a_truncated_checkpoint_stops_at_start_up_saying_why(service) -> None:
    _, env, tmp = service
    worker = start_worker({**env, "SFUMATO_WORKER_MODEL": "broken"}, tmp / "logs", name="worker-broken")
    try:
        wait_until(lambda: not worker.alive(), 120, "the broken worker to exit", interval_s=0.25)
        log = worker.log_tail(80)
        assert worker.proc.returncode != 0
        assert "'broken'" in log and "'cut.safetensors'" in log and "truncated" in log, log
    finally:
        worker.stop()
