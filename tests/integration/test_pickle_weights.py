"""Weights: safetensors only, unless an operator sets SFUMATO_ALLOW_PICKLE_WEIGHTS.

A pickle checkpoint can run code when it is loaded. By default the worker never opens one, not
even to fail on it; with the flag, a trusted pickle checkpoint loads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from core.config import Settings
from core.errors import ModelUnavailable
from worker.builtin.tiny import ensure_tiny_model
from worker.pipelines.engine import _load_pipeline


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model re-saved with pickle (.bin) UNet and VAE weights."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("pickle-weights")
    source = ensure_tiny_model(root / "data")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(source), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    out = root / "pickled"
    pipe.save_pretrained(out, safe_serialization=False)
    assert (out / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    return out


def test_a_pickle_checkpoint_is_refused_by_default_without_being_opened(pickled_model: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(pickled_model, hostile)
    marker = tmp_path / "pwned"
    # A pickle stream that calls os.system when unpickled (written as bytes: no pickle module).
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (hostile / "unet" / "diffusion_pytorch_model.bin").write_bytes(payload)
    settings = Settings(data_dir=tmp_path, model=str(hostile))
    with pytest.raises(ModelUnavailable, match="SFUMATO_ALLOW_PICKLE_WEIGHTS"):
        _load_pipeline(str(hostile), settings, torch.float32)
    assert not marker.exists()


def test_the_operator_flag_allows_a_trusted_pickle_checkpoint(pickled_model: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, model=str(pickled_model), allow_pickle_weights=True)
    pipe = _load_pipeline(str(pickled_model), settings, torch.float32)
    assert pipe.unet.config.sample_size > 0
