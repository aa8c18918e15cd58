"""Single-file inpainting checkpoints (a 9-channel UNet) on the real engine and the real API.

A model with the tiny architecture whose UNet takes 9 input channels (latents, mask, masked
image: the SD inpainting layout) is written in the original (CompVis / A1111) layout. From that
one file the worker detects an inpainting model, loads it offline and draws inpainting requests
bit-identically to the same model's diffusers folder; a mode its UNet cannot draw is refused
with a message naming ``mask`` instead of a tensor-shape error from inside the UNet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")

from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from core.checkpoints import ALL_MODES, INPAINT_ONLY, check_mode, detect, read_header, source_modes
from core.config import Settings
from core.errors import GenerationFailed, InvalidRequest
from tests.conftest import SettingsFactory
from tests.support.embedding import registry_toml
from tests.support.engine import b64, engine_settings, mask_b64, noise_image, payload
from tests.support.keys import bearer, create_key
from tests.support.single_file import with_inpainting_unet, write_single_file
from worker.builtin import tiny
from worker.pipelines.checkpoints import check_unet_mode
from worker.pipelines.engine import Engine

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def inpainting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the 9-channel tiny model as a diffusers folder, the same model as one original-layout file)."""
    root = tmp_path_factory.mktemp("single-file-inpainting")
    base = tiny.ensure_tiny_model(root / "data")
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    folder = root / "tiny-inpainting"
    pipe = with_inpainting_unet(pipe, folder)
    return folder, write_single_file(pipe, root / "checkpoints" / "tiny-inpainting.safetensors")


def _registry(tmp_path: Path, folder: Path, file: Path) -> Path:
    """Two models: the file (the tiny architecture is not SD 1.5's: ``config`` names its configs)
    and the folder it was written from."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "models.toml"
    models: list[dict[str, object]] = [
        {"id": "from-file", "source": str(file), "family": "tiny", "config": str(folder)},
        {"id": "from-folder", "source": str(folder), "family": "tiny"},
    ]
    path.write_text(registry_toml(models))
    return path


def _engine(tmp_path: Path, registry: Path, model: str) -> Engine:
    return Engine.load(engine_settings(tmp_path / "data", models_file=registry, worker_model=model))


def test_the_file_is_detected_as_an_inpainting_model(inpainting: tuple[Path, Path]) -> None:
    folder, file = inpainting
    info = detect(read_header(file))
    assert (info.family, info.inpaint, info.config_name) == ("sd1", True, "sd1-inpaint")
    assert "9-channel UNet (inpainting)" in info.evidence
    assert info.modes == INPAINT_ONLY
    # What the API reads to tell the modes, torch-free: the file's header, or the folder's UNet config.
    assert source_modes(str(file)) == INPAINT_ONLY
    assert source_modes(str(folder)) == INPAINT_ONLY
    assert source_modes(str(tiny.ensure_tiny_model(folder.parent / "data"))) == ALL_MODES
    assert source_modes("someone/hub-model") == ALL_MODES  # unreadable here: the worker decides


def test_the_file_inpaints_like_the_folder_and_refuses_other_modes(
    tmp_path: Path, inpainting: tuple[Path, Path]
) -> None:
    folder, file = inpainting
    registry = _registry(tmp_path, folder, file)
    from_file = _engine(tmp_path / "a", registry, "from-file")
    from_folder = _engine(tmp_path / "b", registry, "from-folder")
    assert from_file._components["unet"].config.in_channels == 9
    images = []
    for engine, model in ((from_file, "from-file"), (from_folder, "from-folder")):
        job = payload(model=model, mode="inpaint", image_b64=noise_image(2, (64, 64)), mask_b64=mask_b64(), seed=5)
        (drawn,) = engine.generate_arrays([job])
        images.append(drawn)
    assert images[0].shape == (1, 64, 64, 3)
    assert np.array_equal(images[0], images[1])  # fp32: bit-identical (same weights, configs, code)
    # The worker's own check names the missing mask, instead of a shape error from the UNet.
    unet = from_file._components["unet"]
    check_unet_mode(unet, "from-file", "inpaint")
    for mode in ("txt2img", "img2img"):
        with pytest.raises(GenerationFailed) as info:
            check_unet_mode(unet, "from-file", mode)
        assert info.value.param == "mask" and "inpainting model" in info.value.message


def test_check_mode_names_the_field_and_the_way_out() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_mode("ink", INPAINT_ONLY, "txt2img")
    assert info.value.param == "mask"
    assert "'ink'" in info.value.message and "9 input channels" in info.value.message
    assert "txt2img" in info.value.message and "white mask" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        check_mode("ink", ("txt2img",), "inpaint")
    assert info.value.param == "mode" and "serves only txt2img" in info.value.message
    check_mode("ink", ALL_MODES, "img2img")


# --- through the API (TestClient, real Redis, no worker) -------------------------------------


@pytest.fixture
def api(
    make_settings: SettingsFactory, clean_redis: Any, tmp_path: Path, inpainting: tuple[Path, Path]
) -> Iterator[TestClient]:
    folder, file = inpainting
    settings: Settings = make_settings(auth_enabled=True, models_file=_registry(tmp_path, folder, file))
    with TestClient(create_app(settings), headers=bearer(create_key(settings))) as client:
        yield client


def test_the_api_lists_and_enforces_an_inpainting_models_modes(api: TestClient) -> None:
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert listed["from-file"]["modes"] == ["inpaint"]
    assert listed["from-folder"]["modes"] == ["inpaint"]
    image = b64(Image.new("RGB", (64, 64), (128, 128, 128)))
    for body in ({"prompt": "a cat"}, {"prompt": "a cat", "image": image}):
        resp = api.post("/v1/images", json={**body, "model": "from-file", "steps": 2})
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["param"] == "mask" and "inpainting model" in error["message"]
    ok = api.post("/v1/images", json={"prompt": "a cat", "model": "from-file", "steps": 2, "image": image,
                                      "mask": mask_b64()})  # fmt: skip
    # Image and mask pass validation; with no worker up (in-process test) nothing is queued.
    assert ok.status_code == 503 and ok.json()["error"]["code"] == "no_worker", ok.text


def test_the_worker_refuses_a_mode_its_unet_cannot_draw(tmp_path: Path, inpainting: tuple[Path, Path]) -> None:
    """A job that got past the API (one that could not read the file) fails alone, naming ``mask``."""
    folder, file = inpainting
    engine = _engine(tmp_path, _registry(tmp_path, folder, file), "from-file")
    for job in (payload(model="from-file", seed=1), payload(model="from-file", mode="img2img", seed=1)):
        with pytest.raises(GenerationFailed) as info:
            engine.generate_arrays([job])
        assert info.value.param == "mask" and "inpainting model" in info.value.message
