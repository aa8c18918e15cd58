"""Single-file checkpoints on the real engine: the built-in tiny model written in the original
(CompVis / A1111) layout loads from that one file, offline, and draws bit-identical images to
the diffusers folder; a VAE override and the start-up refusals work on the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from safetensors.torch import save_file

from core.errors import ModelUnavailable
from tests.support.embedding import registry_toml
from tests.support.engine import engine_settings, mask_b64, noise_image, payload
from tests.support.single_file import vae_to_ldm, write_single_file
from worker.builtin import tiny
from worker.pipelines.engine import Engine


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny diffusers folder, the same model as one original-layout .safetensors file)."""
    root = tmp_path_factory.mktemp("single-file")
    folder = tiny.ensure_tiny_model(root / "data")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    return folder, write_single_file(pipe, root / "checkpoints" / "tiny-original.safetensors")


def _engine(tmp_path: Path, models: list[dict[str, Any]]) -> Engine:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models.toml").write_text(registry_toml(models))
    return Engine.load(engine_settings(tmp_path / "data", models_file=tmp_path / "models.toml"))


def _images(engine: Engine, model: str) -> list[np.ndarray]:
    jobs = [
        payload(model=model, prompt="a red cat", seed=3),
        payload(model=model, mode="img2img", image_b64=noise_image(1), seed=4),
        payload(model=model, mode="inpaint", image_b64=noise_image(2, (64, 64)), mask_b64=mask_b64(), seed=5),
    ]
    return [engine.generate_arrays([job])[0][0] for job in jobs]


def test_the_file_draws_the_same_images_as_the_folder(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    folder, file = converted
    from_folder = _engine(tmp_path / "a", [{"id": "m", "source": str(folder), "family": "tiny"}])
    # The tiny architecture is not SD 1.5's: `config` names the diffusers folder whose configs it has.
    from_file = _engine(tmp_path / "b", [{"id": "m", "source": str(file), "family": "tiny", "config": str(folder)}])
    for a, b in zip(_images(from_folder, "m"), _images(from_file, "m"), strict=True):
        assert np.array_equal(a, b)  # fp32: bit-identical (same weights, same configs, same code)


def test_a_vae_override_replaces_the_models_vae(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    folder, file = converted
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        other = tiny._vae()
    vae_file = tmp_path / "other-vae.safetensors"  # a standalone VAE file in the original layout
    ldm = vae_to_ldm(other.state_dict(), dict(other.config))
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()}, str(vae_file))
    base = {"id": "m", "source": str(file), "family": "tiny", "config": str(folder)}
    plain = _engine(tmp_path / "a", [base])
    swapped = _engine(tmp_path / "b", [{**base, "vae": str(vae_file)}])
    folder_vae = _engine(tmp_path / "c", [{"id": "m", "source": str(folder), "family": "tiny", "vae": str(vae_file)}])
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in swapped._components["vae"].state_dict().items())
    image = _images(plain, "m")[0]
    assert np.abs(_images(swapped, "m")[0] - image).max() > 1e-3
    assert np.array_equal(_images(swapped, "m")[0], _images(folder_vae, "m")[0])


def _refusal(tmp_path: Path, entry: dict[str, Any]) -> str:
    with pytest.raises(ModelUnavailable) as info:
        _engine(tmp_path, [{"id": "dream", **entry}])
    return info.value.message


def test_start_up_refuses_a_family_mismatch_naming_both(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    message = _refusal(tmp_path, {"source": str(converted[1]), "family": "sdxl"})
    assert all(word in message for word in ("'dream'", "'sdxl'", "'sd1'", "tiny-original.safetensors"))


def test_start_up_refuses_a_truncated_checkpoint_naming_model_and_file(
    tmp_path: Path, converted: tuple[Path, Path]
) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(converted[1].read_bytes()[:-4096])
    message = _refusal(tmp_path, {"source": str(cut), "family": "sd1"})
    assert "'dream'" in message and "'cut.safetensors'" in message and "truncated" in message


def test_start_up_refuses_weights_that_do_not_fit_the_config(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    # No `config`: the shipped SD 1.x configs expect SD 1.5's shapes, which the tiny weights lack.
    message = _refusal(tmp_path, {"source": str(converted[1]), "family": "sd1"})
    assert "'dream'" in message and "tiny-original.safetensors" in message and "sd1" in message
