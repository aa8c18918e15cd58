"""core.checkpoints: a single-file checkpoint's family is told from its safetensors header alone
(keys and shapes, stdlib only), and a corrupt, truncated or unrecognised file is refused with a
message naming the model, the file and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.checkpoints import detect, inspect_checkpoint, read_header
from core.errors import ModelUnavailable
from tests.support.single_file import synthetic_keys, write_header_file


@pytest.mark.parametrize(
    ("family", "channels", "v_pred", "expected"),
    [
        ("sd1", 4, False, ("sd1", False, "epsilon", "sd1")),
        ("sd1", 9, False, ("sd1", True, "epsilon", "sd1-inpaint")),
        ("sd1", 4, True, ("sd1", False, "v_prediction", "sd1")),
        ("sd2", 4, False, ("sd2", False, "v_prediction", "sd2")),  # SD 2.x 768-v by default
        ("sd2", 9, False, ("sd2", True, "epsilon", "sd2-inpaint")),
        ("sdxl", 4, False, ("sdxl", False, "epsilon", "sdxl")),
        ("sdxl", 9, False, ("sdxl", True, "epsilon", "sdxl-inpaint")),
        ("sdxl", 4, True, ("sdxl", False, "v_prediction", "sdxl")),  # e.g. v-pred SDXL fine-tunes
        ("sdxl-refiner", 4, False, ("sdxl-refiner", False, "epsilon", "sdxl-refiner")),
    ],
)
def test_each_family_is_detected_from_its_keys_and_shapes(
    tmp_path: Path, family: str, channels: int, v_pred: bool, expected: tuple[str, bool, str, str]
) -> None:
    path = write_header_file(tmp_path / "m.safetensors", synthetic_keys(family, channels=channels, v_pred=v_pred))
    info = inspect_checkpoint(str(path), "m")
    assert (info.family, info.inpaint, info.prediction, info.config_name) == expected
    assert info.evidence  # says which keys decided it


def _refused(path: Path) -> str:
    with pytest.raises(ModelUnavailable) as info:
        inspect_checkpoint(str(path), "dream")
    message = info.value.message
    assert "'dream'" in message and repr(path.name) in message
    return message


def test_a_truncated_file_is_refused_naming_the_model_and_the_file(tmp_path: Path) -> None:
    whole = write_header_file(tmp_path / "whole.safetensors", synthetic_keys("sd1"))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-100])
    assert "truncated" in _refused(cut)
    head_only = tmp_path / "head.safetensors"
    head_only.write_bytes(whole.read_bytes()[:50])
    assert "truncated" in _refused(head_only)


def test_a_corrupt_or_foreign_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 64)
    assert "not valid JSON" in _refused(junk)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    assert "too short" in _refused(tiny)
    assert "does not exist" in _refused(tmp_path / "missing.safetensors")


def test_files_that_are_not_checkpoints_say_what_they_look_like(tmp_path: Path) -> None:
    lora_key = "lora_unet_mid_block_attentions_0.lora_down.weight"
    lora = write_header_file(tmp_path / "lora.safetensors", {lora_key: [4, 8]})
    assert "LoRA" in _refused(lora)
    unet = write_header_file(tmp_path / "unet.safetensors", {"down_blocks.0.resnets.0.conv1.weight": [4, 4, 3, 3]})
    assert "diffusers-layout" in _refused(unet)
    odd = write_header_file(tmp_path / "odd.safetensors", synthetic_keys("sd1", channels=8))
    assert "8 input channels" in _refused(odd)
    no_text = write_header_file(tmp_path / "notext.safetensors", synthetic_keys("none"))
    assert "no known text encoder" in _refused(no_text)


def test_detection_reads_only_the_header(tmp_path: Path) -> None:
    path = write_header_file(tmp_path / "m.safetensors", synthetic_keys("sdxl"))
    header = read_header(path)
    assert "__metadata__" not in header and detect(header).family == "sdxl"
