"""core.validation: every operator limit refuses with the field and the limit named, defaults
come from the model spec, and the seed is resolved exactly once."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.config import Settings
from core.errors import InvalidRequest, UnknownChoice
from core.models import resolve_model
from core.schemas import MAX_SEED, ImageRequest, JobPayload
from core.uploads import inspect_upload
from core.validation import normalize_request


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def normalize(settings: Settings, **fields: Any) -> JobPayload:
    fields.setdefault("prompt", "a lighthouse at dusk")
    return normalize_request(ImageRequest(**fields), settings, tenant="t1", job_id="j1", now=1000.0)


def refused(settings: Settings, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        normalize(settings, **fields)
    return info.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_bytes(fmt: str, size: tuple[int, int] = (64, 64), noise: bool = False) -> bytes:
    img = Image.frombytes("RGB", size, _noise(size)) if noise else Image.new("RGB", size, (200, 30, 30))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def _noise(size: tuple[int, int]) -> bytes:
    """Seeded random pixels: PNG cannot compress them, so the file is ~3 bytes per pixel."""
    return random.Random(0).randbytes(size[0] * size[1] * 3)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, hand-built PNG that declares ``width`` x ``height`` (a decompression bomb shape)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    idat = zlib.compress(b"\x00" * 65)  # one filtered row of 64 pixels: a real decoder would want far more
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompt_length_limit_names_field_and_limit(tmp_path: Path, field: str) -> None:
    settings = Settings(data_dir=tmp_path, max_prompt_chars=10)
    other = {"prompt": "cat", field: "x" * 10}
    assert normalize(settings, **other).model_dump()[field] == "x" * 10
    err = refused(settings, **{**other, field: "x" * 11})
    assert err.param == field
    assert "11" in err.message and "10" in err.message and f"{field} length" in err.message


# --- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_must_be_multiple_of_8(settings: Settings, field: str) -> None:
    err = refused(settings, **{field: 100})
    assert err.param == field and "multiple of 8" in err.message


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_below_minimum(settings: Settings, field: str) -> None:
    err = refused(settings, **{field: 56})
    assert err.param == field and str(settings.min_size) in err.message


@pytest.mark.parametrize("field", ["width", "height"])
def test_explicit_zero_size_is_refused_not_defaulted(settings: Settings, field: str) -> None:
    err = refused(settings, **{field: 0})
    assert err.param == field


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_above_model_maximum(settings: Settings, field: str) -> None:
    spec = resolve_model(settings, None)
    assert normalize(settings, **{field: spec.max_size}).model_dump()[field] == spec.max_size
    err = refused(settings, **{field: spec.max_size + 8})
    assert err.param == field and str(spec.max_size) in err.message


def test_settings_max_size_lowers_model_maximum(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_size=128)
    err = refused(settings, width=136)
    assert err.param == "width" and "128" in err.message


def test_pixel_budget(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_pixels=128 * 128)
    assert normalize(settings, width=128, height=128).width == 128
    err = refused(settings, width=256, height=128)
    assert err.param == "width"
    assert str(256 * 128) in err.message and str(128 * 128) in err.message


# --- sampling -------------------------------------------------------------------------


def test_steps_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_steps=30)
    assert normalize(settings, steps=30).steps == 30
    err = refused(settings, steps=31)
    assert err.param == "steps" and "31" in err.message and "30" in err.message


def test_n_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_n=3)
    assert normalize(settings, n=3).n == 3
    err = refused(settings, n=4)
    assert err.param == "n" and "4" in err.message and "3" in err.message


@pytest.mark.parametrize("guidance", [-0.5, 30.5])
def test_guidance_range(settings: Settings, guidance: float) -> None:
    err = refused(settings, guidance_scale=guidance)
    assert err.param == "guidance_scale"
    assert str(settings.min_guidance) in err.message and str(settings.max_guidance) in err.message


@pytest.mark.parametrize("guidance", [0.0, 30.0])
def test_guidance_bounds_are_inclusive(settings: Settings, guidance: float) -> None:
    assert normalize(settings, guidance_scale=guidance).guidance_scale == guidance


def test_clip_skip_limit(settings: Settings) -> None:
    assert normalize(settings, clip_skip=settings.max_clip_skip).clip_skip == settings.max_clip_skip
    err = refused(settings, clip_skip=settings.max_clip_skip + 1)
    assert err.param == "clip_skip" and str(settings.max_clip_skip) in err.message


# --- modes ----------------------------------------------------------------------------


def test_strength_without_image(settings: Settings) -> None:
    err = refused(settings, strength=0.5)
    assert err.param == "strength" and "image" in err.message


def test_mask_without_image(settings: Settings) -> None:
    err = refused(settings, mask=b64(image_bytes("PNG")))
    assert err.param == "mask" and "image" in err.message


def test_modes_and_default_strength(settings: Settings) -> None:
    image = b64(image_bytes("PNG"))
    assert normalize(settings).mode == "txt2img"
    assert normalize(settings).strength is None
    img2img = normalize(settings, image=image)
    assert (img2img.mode, img2img.strength) == ("img2img", 0.75)
    inpaint = normalize(settings, image=image, mask=image, strength=0.4)
    assert (inpaint.mode, inpaint.strength) == ("inpaint", 0.4)


# --- uploads --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_upload_formats(fmt: str) -> None:
    info = inspect_upload(b64(image_bytes(fmt, (40, 24))), field="image", max_bytes=1 << 20, max_pixels=4096)
    assert (info.format, info.width, info.height) == (fmt, 40, 24)


def test_data_url_upload_accepted() -> None:
    text = "data:image/png;base64," + b64(image_bytes("PNG", (16, 16)))
    assert inspect_upload(text, field="image", max_bytes=1 << 20, max_pixels=4096).width == 16


@pytest.mark.parametrize("field", ["image", "mask"])
def test_upload_size_limit(tmp_path: Path, field: str) -> None:
    settings = Settings(data_dir=tmp_path, max_upload_bytes=4096)
    big = image_bytes("PNG", (64, 64), noise=True)
    assert len(big) > 4096
    fields: dict[str, Any] = {"image": b64(image_bytes("PNG")), field: b64(big)}
    err = refused(settings, **fields)
    assert err.param == field and "4096" in err.message


def test_upload_format_refused_names_format() -> None:
    with pytest.raises(InvalidRequest) as info:
        inspect_upload(b64(image_bytes("GIF")), field="image", max_bytes=1 << 20, max_pixels=1 << 20)
    assert info.value.param == "image"
    assert "GIF" in info.value.message and "PNG" in info.value.message


def test_upload_not_an_image() -> None:
    with pytest.raises(InvalidRequest) as info:
        inspect_upload(b64(b"hello, not an image"), field="mask", max_bytes=1 << 20, max_pixels=1 << 20)
    assert info.value.param == "mask" and "not a readable image" in info.value.message


def test_upload_not_base64(settings: Settings) -> None:
    err = refused(settings, image="not base64 at all!")
    assert err.param == "image" and "base64" in err.message


def test_upload_declared_dimensions_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_upload_pixels=64 * 64)
    err = refused(settings, image=b64(image_bytes("PNG", (64, 65))))
    assert err.param == "image"
    assert "64x65" in err.message and str(64 * 64) in err.message


def test_decompression_bomb_refused_by_declared_size(settings: Settings) -> None:
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    err = refused(settings, image=b64(bomb))
    assert err.param == "image"
    assert "100000x100000" in err.message
    assert str(settings.max_upload_pixels) in err.message


# --- choices and defaults -------------------------------------------------------------


def test_unknown_model_lists_valid_models(settings: Settings) -> None:
    with pytest.raises(UnknownChoice) as info:
        normalize(settings, model="sdxl-turbo")
    assert info.value.param == "model"
    assert "sdxl-turbo" in info.value.message and settings.resolved_model_id in info.value.message


def test_unknown_scheduler_lists_valid_schedulers(settings: Settings) -> None:
    with pytest.raises(UnknownChoice) as info:
        normalize(settings, scheduler="warp drive")
    assert info.value.param == "scheduler"
    assert "euler_a" in info.value.message and "dpmpp_2m_karras" in info.value.message


def test_scheduler_spelling_is_canonicalised(settings: Settings) -> None:
    assert normalize(settings, scheduler="DPM++ 2M Karras").scheduler == "dpmpp_2m_karras"


@pytest.mark.parametrize("model", ["tiny", "/models/my-sd15"])
def test_defaults_come_from_model_spec(tmp_path: Path, model: str) -> None:
    settings = Settings(data_dir=tmp_path, model=model)
    spec = resolve_model(settings, None)
    payload = normalize(settings)
    assert payload.model == spec.id
    assert (payload.width, payload.height) == (spec.default_width, spec.default_height)
    assert payload.steps == spec.default_steps
    assert payload.scheduler == spec.default_scheduler
    assert payload.guidance_scale == spec.default_guidance
    assert (payload.tenant, payload.job_id, payload.created_at) == ("t1", "j1", 1000.0)


def test_seed_kept_when_given(settings: Settings) -> None:
    assert normalize(settings, seed=0).seed == 0
    assert normalize(settings, seed=MAX_SEED).seed == MAX_SEED


def test_seed_resolved_when_absent(settings: Settings) -> None:
    seeds = {normalize(settings).seed for _ in range(8)}
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1  # random, not a constant default


def test_seeds_are_consecutive_and_wrap_at_2_32(settings: Settings) -> None:
    assert normalize(settings, seed=10, n=3).seeds == [10, 11, 12]
    assert normalize(settings, seed=MAX_SEED - 1, n=4).seeds == [MAX_SEED - 1, MAX_SEED, 0, 1]


def test_img2img_that_would_run_no_step_is_refused_before_queueing(make_settings) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    request = ImageRequest(prompt="x", image=image, steps=2, strength=0.3)
    with pytest.raises(InvalidRequest) as err:
        normalize_request(request, make_settings(), tenant="t", job_id="j", now=0.0)
    assert err.value.param == "strength" and "steps x strength >= 1" in err.value.message
