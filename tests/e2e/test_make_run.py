"""``make run``'s stack (``python -m devstack``) with nothing configured: a private Redis,
a worker with the built-in shapes model and the API; a first request over HTTP gets back an
image that shows what its prompt asked for, read by the scorer, not by eye."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from devstack.net import free_port
from tests.support.env import without_sfumato
from tests.support.processes import REPO_ROOT, wait_until
from training.shapes.scenes import Scene, evaluation_scenes
from training.shapes.scorer import score

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("devstack")
    port = free_port()
    env = {
        **without_sfumato(os.environ),
        "SFUMATO_DATA_DIR": str(tmp / "data"),
        "SFUMATO_API_PORT": str(port),
        "SFUMATO_WORKER_METRICS_PORT": str(free_port()),
        "SFUMATO_TORCH_THREADS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp / "devstack.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "devstack"], cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        return "Sfumato is running at" in log_path.read_text()

    try:
        wait_until(serving, 300, "make run's stack to serve")
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_make_run_serves_the_shapes_model_by_default(devstack: str) -> None:
    models = httpx.get(f"{devstack}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["default_width"], m["default_height"]) for m in models] == [("shapes", 32, 32)]


def _draw(devstack: str, scene: Scene, seed: int) -> np.ndarray:
    resp = httpx.post(f"{devstack}/v1/images?wait=120", json={"prompt": scene.caption(), "seed": seed}, timeout=150)
    assert resp.status_code == 200, resp.text
    (info,) = resp.json()["images"]
    assert (info["width"], info["height"]) == (32, 32)
    png = httpx.get(info["url"], timeout=10)
    assert png.status_code == 200, png.text
    return np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))


def test_a_first_request_draws_what_it_asks_for(devstack: str) -> None:
    scenes = evaluation_scenes()[:6]
    # Sent at once, as six users would: the worker batches them (an image is the same alone or
    # co-batched: tests/integration/test_batch_invariance.py), so CI waits for one or two
    # batches instead of six generations in a row.
    with ThreadPoolExecutor(len(scenes)) as pool:
        images = list(pool.map(lambda i: _draw(devstack, scenes[i], i), range(len(scenes))))
    right = []
    for image, scene in zip(images, scenes, strict=True):
        result = score(image, scene)
        right.append(result.colour and result.background)
    # bench/results/shapes.json: 98% of shape colours and 100% of backgrounds right over 120
    # prompts, so one miss in six is allowed.
    assert sum(right) >= len(scenes) - 1, right
