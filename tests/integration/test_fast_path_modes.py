"""The compiled fast path in every mode the engine serves: img2img, inpainting, SDXL with its
refiner, ControlNet (worker/pipelines/fast_path.py, issue 21).

tests/integration/test_fast_path.py proves the machinery on txt2img; this module proves that the
other modes keep working with compilation on. Each compiled engine (``SFUMATO_COMPILE=on``,
buckets 1 and 4, dynamo's ``eager`` backend: real tracing, guards, static shapes and bucket
padding without inductor's C++ code generation) is warmed as a worker is.

What a batch of three images proves here: the UNet sees 6 rows (classifier-free guidance), padded
to the warmed bucket of 8, and the VAE decoder 3 rows padded to 4. Each real image, co-batched
and alone (bucket 1), must be what the same worker's eager forward draws for it (unpadded, the
same channels_last weights) within the batching bounds of
tests/integration/test_batch_invariance.py, and no graph may compile for it: img2img, inpainting
(a 4-channel UNet) and the SDXL base (with or without its refiner) at the default size reuse the
graphs warm-up compiled for txt2img. Alone against co-batched on the eager path is the batching
promise those suites test; how far a compiled worker's images are from an uncompiled worker's
is measured by bench/compile.py (docs/operations/compilation.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from core.config import Settings
from core.models import ControlNetSpec
from core.schemas import ControlNetJob, JobPayload
from tests.integration.test_batch_invariance import assert_same_images
from tests.support.controlnet import b64, edge_map, make_controlnet
from tests.support.engine import COMPILED_FLOAT_BOUND, engine_settings, payload
from tests.support.fast_path import compiled_engine
from tests.support.sdxl import sdxl_payload, sdxl_settings
from worker.pipelines.engine import Engine
from worker.pipelines.fast_path import CompiledForward, FastPath, channels_last

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

#: What every compiled engine here runs with: two buckets keep warm-up to four UNet graphs.
COMPILED: dict[str, Any] = {"compile": "on", "compile_backend": "eager", "compile_buckets": (1, 4)}
#: The reference: uncompiled whatever the environment says (make test-compiled sets the default).
EAGER: dict[str, Any] = {"compile": "off"}
EDGES = "edges"


@pytest.fixture(scope="module")
def controlnets(data_dir: Path) -> tuple[ControlNetSpec, ...]:
    folder = make_controlnet(data_dir / "fast-path-controlnets" / EDGES, seed=1)
    return (ControlNetSpec(EDGES, str(folder)),)


def load(settings: Settings, controlnets: tuple[ControlNetSpec, ...] = ()) -> Engine:
    """A warmed engine (the compiled one compiles its buckets here), with ``controlnets`` in its
    model's registry entry."""
    engine = Engine.load(settings)
    if controlnets:
        engine.spec = dataclasses.replace(engine.spec, controlnets=controlnets)
    engine.warmup()
    return engine


@pytest.fixture(scope="module")
def compiled(data_dir: Path, controlnets: tuple[ControlNetSpec, ...]) -> Iterator[Engine]:
    yield from compiled_engine(lambda: load(engine_settings(data_dir, **COMPILED), controlnets))


@pytest.fixture(scope="module")
def eager(data_dir: Path, controlnets: tuple[ControlNetSpec, ...]) -> Engine:
    """Uncompiled, with the weights the fast path gives its modules (channels_last): what a
    compiled worker's eager batches must match bit for bit."""
    engine = load(engine_settings(data_dir, **EAGER), controlnets)
    channels_last(engine._components["unet"])
    channels_last(engine._components["vae"].decoder)
    return engine


@pytest.fixture(scope="module")
def compiled_xl(data_dir: Path) -> Iterator[Engine]:
    yield from compiled_engine(lambda: load(sdxl_settings(data_dir, **COMPILED)))


def fast_path(engine: Engine) -> FastPath:
    assert engine.fast_path is not None and engine.fast_path.ready
    return engine.fast_path


def counters(path: FastPath) -> tuple[int, int, int]:
    """(graphs, recompiles, unwarmed shapes): all three stay put for a warmed shape."""
    return path.stats.graphs, path.stats.recompiles, path.stats.unwarmed


def three(make: Callable[..., JobPayload], prompt: str = "a red cube", **fields: Any) -> list[JobPayload]:
    """Three one-image jobs of one batch key (the UNet's 6 rows pad to 8, the VAE's 3 to 4)."""
    return [make(job_id=f"j{i}", seed=100 + i, prompt=f"{prompt} {i}", **fields) for i in range(3)]


def assert_compiled_matches_its_eager_forward(compiled: Engine, jobs: list[JobPayload], alone: bool = True) -> None:
    """Co-batched (padded to bucket 4) and alone (bucket 1; ``alone=False``: co-batched only, to
    keep the slower SDXL cases cheap), each compiled image is the image the
    same worker's eager forward draws (unpadded, same weights) within the batching bounds, and
    nothing compiled: warm-up's graphs served both. (Alone against co-batched is the batching
    promise of the eager path, tests/integration/test_batch_invariance*.py; the compiled path
    adds at most the bounds above to it.)"""
    path = fast_path(compiled)
    before = counters(path)
    singles = [[job] for job in jobs] if alone else []
    got = [images for batch in (jobs, *singles) for images in compiled.generate_arrays(batch)]
    assert counters(path) == before, "a warmed shape compiled again"
    with path.eager():
        wanted = [images for batch in (jobs, *singles) for images in compiled.generate_arrays(batch)]
    assert counters(path) == before
    for got_images, want in zip(got, wanted, strict=True):
        assert_same_images(want, got_images, COMPILED_FLOAT_BOUND)


def test_warm_up_compiled_the_default_size_of_each_bucket(compiled: Engine, compiled_xl: Engine) -> None:
    for engine in (compiled, compiled_xl):
        path = fast_path(engine)
        assert isinstance(engine._components["unet"].forward, CompiledForward)
        # UNet rows 2 and 8, VAE decoder rows 1 and 4 (each may take more than one graph).
        assert path.stats.by_module.get("unet", 0) >= 2 and path.stats.by_module.get("vae_decoder", 0) >= 2
        assert path.stats.recompiles == 0 and path.stats.unwarmed == 0


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_img2img_and_inpainting_reuse_the_warmed_graphs_within_the_bounds(compiled: Engine, mode: str) -> None:
    assert_compiled_matches_its_eager_forward(compiled, three(payload, mode=mode, scheduler="ddim"))


def test_sdxl_pads_its_added_conditioning_with_the_batch(compiled_xl: Engine) -> None:
    """SDXL's UNet also takes ``added_cond_kwargs`` (pooled ``text_embeds``, size ``time_ids``):
    padding must reach into that dict, or the padded sample and the unpadded conditioning would
    not line up. The compiled call sees all of them at 8 rows, the added rows repeating the last
    real one, and each image is what the eager forward draws."""
    unet = compiled_xl._components["unet"]
    forward = unet.forward
    assert isinstance(forward, CompiledForward)
    seen: list[dict[str, torch.Tensor]] = []
    real = forward._compiled

    def spy(*args: Any, **kwargs: Any) -> Any:
        conditioning = {"encoder_hidden_states": kwargs["encoder_hidden_states"], **kwargs["added_cond_kwargs"]}
        seen.append({"sample": args[0], **conditioning})
        return real(*args, **kwargs)

    forward._compiled = spy
    try:
        jobs = three(sdxl_payload, scheduler="ddim", steps=4)
        assert_compiled_matches_its_eager_forward(compiled_xl, jobs, alone=False)
    finally:
        forward._compiled = real
    padded = [inputs for inputs in seen if inputs["sample"].shape[0] == 8]
    assert padded, "the co-batched SDXL base never ran compiled at its bucket"
    for inputs in seen:
        assert set(inputs) == {"sample", "encoder_hidden_states", "text_embeds", "time_ids"}
        rows = {name: tensor.shape[0] for name, tensor in inputs.items()}
        assert len(set(rows.values())) == 1, f"inputs padded unevenly: {rows}"
    for inputs in padded:
        for name, tensor in inputs.items():
            assert torch.equal(tensor[6:], tensor[5:6].expand_as(tensor[6:])), f"{name}: padding is not the last row"


def test_sdxl_with_its_refiner_keeps_the_bounds_and_compiles_nothing_after_warm_up(compiled_xl: Engine) -> None:
    """The base denoises the first half through its compiled UNet, the refiner the rest through
    its own (adopted when warm-up loaded it, its graphs compiled by warm-up's refined batches),
    the shared compiled VAE decoder decodes; a batch padded to its bucket gives each image what
    the eager forward draws."""
    path = fast_path(compiled_xl)
    assert path.stats.by_module.get("refiner_unet", 0) >= 2  # buckets 1 and 4, at warm-up
    jobs = three(sdxl_payload, switch_at=0.5, scheduler="ddim", steps=4)
    assert_compiled_matches_its_eager_forward(compiled_xl, jobs, alone=False)


def test_controlnet_batches_run_eager_and_are_bit_identical(compiled: Engine, eager: Engine) -> None:
    """A ControlNet batch runs the modules' eager forwards (nothing traced, at a size never
    compiled): bit-identical to an uncompiled engine with the same channels_last weights."""
    control = ControlNetJob(name=EDGES, image_b64=b64(edge_map(1)), scale=1.0, start=0.0, end=1.0, preprocess="none")
    # Prompts neither engine has cached: both encode these three together, so the embeddings are
    # the same bits (the cache's embeddings depend on what was encoded with them in float rounding).
    jobs = three(payload, "a blue sphere", controlnet=(control,), width=48, height=40)  # a size never compiled
    path = fast_path(compiled)
    before = counters(path)
    images = compiled.generate_arrays(jobs)
    assert counters(path) == before  # the eager forward ran: nothing traced
    for got, want in zip(images, eager.generate_arrays(jobs), strict=True):
        np.testing.assert_array_equal(got, want)


def test_nothing_recompiled_in_any_mode(compiled: Engine, compiled_xl: Engine) -> None:
    """Last in the module: all the modes above ran on the graphs warm-up compiled."""
    for engine in (compiled, compiled_xl):
        assert fast_path(engine).stats.recompiles == 0 and fast_path(engine).stats.unwarmed == 0
