"""core.loras.lora_format: the API tells LoRA files apart by their safetensors header alone
(stdlib JSON, no torch), and refuses the LyCORIS formats the worker cannot load with a 422
naming the LoRA and its format, before anything is enqueued."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import InvalidRequest
from core.loras import lora_format
from core.schemas import ImageRequest
from core.validation import normalize_request


def write_header(path: Path, keys: list[str]) -> Path:
    """A safetensors file whose tensors are one float32 each (only the header matters here)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, key in enumerate(keys):
        header[key] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(4 * len(keys)))
    return path


KOHYA = ["lora_unet_mid_block_resnets_0_conv1.lora_down.weight", "lora_unet_mid_block_resnets_0_conv1.alpha"]
LOHA = ["lora_unet_x_to_q.hada_w1_a", "lora_unet_x_to_q.hada_w1_b", "lora_unet_x_to_q.alpha"]
LOKR = ["lora_unet_x_to_q.lokr_w1", "lora_unet_x_to_q.lokr_w2"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (KOHYA, "lora"),
        (["unet.a.to_q.lora_A.weight", "unet.a.to_q.lora_B.weight"], "lora"),
        (["unet.a.to_q.lora.down.weight"], "lora"),
        (["text_encoder.a.q_proj.lora_linear_layer.down.weight"], "lora"),
        (LOHA, "loha"),
        (LOKR, "lokr"),
        (["model.diffusion_model.input_blocks.0.0.weight"], "unknown"),
    ],
)
def test_formats_are_told_apart_by_their_keys(tmp_path: Path, keys: list[str], expected: str) -> None:
    assert lora_format(write_header(tmp_path / "x.safetensors", keys)) == expected


def test_garbage_is_unreadable_and_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\xff" * 64)
    assert lora_format(path) == "unreadable"
    assert lora_format(tmp_path / "missing.safetensors") == "unreadable"
    write_header(path, LOHA)
    os.utime(path, ns=(1, 10**18))  # a new mtime: the cached answer is not reused
    assert lora_format(path) == "loha"


@pytest.mark.parametrize(("keys", "name"), [(LOHA, "LyCORIS LoHa"), (LOKR, "LyCORIS LoKr")])
def test_loha_and_lokr_are_a_422_naming_the_lora_and_its_format(tmp_path: Path, keys: list[str], name: str) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    write_header(folder / "hada.safetensors", keys)
    write_header(folder / "fine.safetensors", KOHYA)
    settings = Settings(data_dir=tmp_path)
    for body, param in (
        ({"prompt": "x", "loras": [{"name": "fine"}, {"name": "hada"}]}, "loras[1].name"),
        ({"prompt": "x <lora:hada:0.5>"}, "prompt"),
    ):
        with pytest.raises(InvalidRequest) as info:
            normalize_request(ImageRequest.model_validate(body), settings, tenant="t", job_id="j", now=0.0)
        assert info.value.param == param
        assert "'hada'" in info.value.message and name in info.value.message
    request = ImageRequest.model_validate({"prompt": "x <lora:fine>"})
    assert normalize_request(request, settings, tenant="t", job_id="j", now=0.0).loras[0].name == "fine"
