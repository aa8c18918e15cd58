"""The compiled fast path (worker/pipelines/fast_path.py) on the real engine, tiny model, CPU.

One compiled engine per module (``SFUMATO_COMPILE=on``, buckets 1 and 4) against the session's
eager engine. The backend is dynamo's ``eager``: the real tracing, guards, static shapes,
bucket padding and recompile counting, without inductor's C++ code generation, which costs
about a minute per graph on CI's two cores. Inductor's own numerical bound on this model is
measured by ``bench/compile.py`` (docs/operations/compilation.md).

Bounds: compiled (padded, channels_last) images meet the batching bounds of
tests/integration/test_batch_invariance.py against eager ones; ``exact`` jobs are bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

pytest.importorskip("diffusers")

from core.schemas import JobPayload, LoraWeight
from tests.integration.test_batch_invariance import assert_same_images
from tests.support.engine import COMPILED_FLOAT_BOUND, engine_settings, payload
from tests.support.fast_path import compiled_engine
from tests.support.lora import make_lora
from worker.pipelines.engine import Engine
from worker.pipelines.fast_path import CompiledForward, bucket_for, channels_last, enabled, unet_sizes
from worker.runtime.metrics import CompileCollector

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword",
    "ignore:Already found a `peft_config` attribute",
)

LORA = "fast-style"


@pytest.fixture(scope="module")
def lora_folder(data_dir: Path) -> Path:
    folder = data_dir / "fast-path-loras"
    make_lora(folder, LORA, seed=3)
    return folder


@pytest.fixture(scope="module")
def compiled(data_dir: Path, lora_folder: Path) -> Iterator[Engine]:
    settings = engine_settings(
        data_dir,
        compile="on",
        compile_backend="eager",
        compile_buckets=(1, 4),
        compile_cache_dir=data_dir / "compile-cache",
        lora_dir=lora_folder,
    )

    def load() -> Engine:
        engine = Engine.load(settings)
        engine.warmup()
        return engine

    yield from compiled_engine(load)


def laid_out_like_the_fast_path(engine: Engine) -> Engine:
    """``engine`` with the weights the fast path gives its modules (channels_last), without
    compiling: what a compiled worker's eager batches (exact, LoRA) must match bit for bit."""
    channels_last(engine._components["unet"])
    channels_last(engine._components["vae"].decoder)
    return engine


@pytest.fixture(scope="module")
def eager_with_loras(data_dir: Path, lora_folder: Path) -> Engine:
    return laid_out_like_the_fast_path(Engine.load(engine_settings(data_dir, lora_dir=lora_folder)))


def jobs(count: int, **fields: Any) -> list[JobPayload]:
    return [payload(job_id=f"j{i}", seed=100 + i, prompt=f"a red cube {i}", **fields) for i in range(count)]


def test_buckets_pad_to_the_next_size_and_cover_guidance() -> None:
    assert unet_sizes((1, 4)) == (1, 2, 4, 8)
    assert [bucket_for(rows, (1, 2, 4, 8)) for rows in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]


def test_settings_parse_buckets_and_auto_means_cuda_only(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("SFUMATO_COMPILE_BUCKETS", "8, 2,1,2")
    settings = engine_settings(data_dir)
    assert settings.compile_buckets == (1, 2, 8)
    assert not enabled(settings, torch.device("cpu")) and enabled(settings, torch.device("cuda"))
    assert enabled(engine_settings(data_dir, compile="on"), torch.device("cpu"))
    for bad in ("0,2", "x", ""):
        monkeypatch.setenv("SFUMATO_COMPILE_BUCKETS", bad)
        with pytest.raises(ValidationError, match="compile_buckets"):
            engine_settings(data_dir)


def test_warmup_compiles_every_bucket_before_ready(compiled: Engine) -> None:
    path = compiled.fast_path
    assert path is not None and path.ready
    unet = compiled._components["unet"]
    assert isinstance(unet.forward, CompiledForward)
    # UNet rows 2 and 8 (guidance doubles the batch of 1 and 4), VAE decoder rows 1 and 4.
    assert path.stats.by_module.get("unet", 0) >= 2 and path.stats.by_module.get("vae_decoder", 0) >= 2
    assert path.stats.recompiles == 0 and path.stats.unwarmed == 0
    assert path.stats.compile_seconds > 0


def test_compiled_images_meet_the_batching_bounds_and_padding_changes_no_real_row(
    compiled: Engine, engine: Engine
) -> None:
    """Three images pad to bucket 4 (UNet 6 -> 8 rows, VAE 3 -> 4): each real row is its eager
    image alone, within the batching bounds, and no graph was compiled for it."""
    path = compiled.fast_path
    assert path is not None
    before = (path.stats.graphs, path.stats.unwarmed)
    batch = compiled.generate_arrays(jobs(3))
    assert (path.stats.graphs, path.stats.unwarmed) == before
    for job, images in zip(jobs(3), batch, strict=True):
        assert_same_images(engine.generate_arrays([job])[0], images, COMPILED_FLOAT_BOUND)


def test_an_unwarmed_shape_compiles_once_is_counted_and_is_no_error(compiled: Engine, engine: Engine) -> None:
    path = compiled.fast_path
    assert path is not None
    job = payload(width=48, height=64, seed=5)
    before = (path.stats.recompiles, path.stats.unwarmed)
    first = compiled.generate_arrays([job])[0]
    after = (path.stats.recompiles, path.stats.unwarmed)
    assert after[0] > before[0] and after[1] > before[1]
    again = compiled.generate_arrays([job])[0]
    assert (path.stats.recompiles, path.stats.unwarmed) == after  # compiled once
    np.testing.assert_array_equal(first, again)
    assert_same_images(engine.generate_arrays([job])[0], first, COMPILED_FLOAT_BOUND)


def test_exact_jobs_run_eager_and_stay_bit_identical(compiled: Engine, eager_with_loras: Engine) -> None:
    """An exact job runs the module's eager forward: bit-identical to an uncompiled engine with
    the same (channels_last) weights, and nothing is traced for it."""
    path = compiled.fast_path
    assert path is not None
    job = payload(exact=True, seed=11, width=40, height=40)  # a size never compiled
    graphs = path.stats.graphs
    np.testing.assert_array_equal(compiled.generate_arrays([job])[0], eager_with_loras.generate_arrays([job])[0])
    assert path.stats.graphs == graphs  # the eager forward ran: nothing traced


def test_lora_batches_run_eager_and_swapping_adapters_is_measured(
    compiled: Engine, eager_with_loras: Engine, engine: Engine
) -> None:
    """A LoRA batch is bit-identical to the eager engine's (it runs eager); loading the first
    adapter changes the UNet's modules, which costs the base graphs one recompile each, counted;
    swapping adapters on and off after that recompiles nothing."""
    path = compiled.fast_path
    assert path is not None
    styled = payload(seed=21, loras=(LoraWeight(name=LORA, scale=0.8),))
    base = payload(seed=21)
    np.testing.assert_array_equal(compiled.generate_arrays([styled])[0], eager_with_loras.generate_arrays([styled])[0])
    first_swap = path.stats.recompiles
    assert_same_images(engine.generate_arrays([base])[0], compiled.generate_arrays([base])[0], COMPILED_FLOAT_BOUND)
    after_first = path.stats.recompiles
    for _ in range(2):
        np.testing.assert_array_equal(
            compiled.generate_arrays([styled])[0], eager_with_loras.generate_arrays([styled])[0]
        )
        assert_same_images(engine.generate_arrays([base])[0], compiled.generate_arrays([base])[0], COMPILED_FLOAT_BOUND)
    print(f"recompiles: first adapter {after_first - first_swap}, alternating {path.stats.recompiles - after_first}")
    assert path.stats.recompiles == after_first  # alternating adapters recompiles nothing more
    assert after_first - first_swap <= 1  # at most the UNet graph at this shape, once


def test_the_worker_exports_compile_metrics(compiled: Engine) -> None:
    """/metrics reads the fast path's figures at scrape time from the attached worker's engine."""
    registry = CollectorRegistry()
    probe = SimpleNamespace(worker=SimpleNamespace(engine=compiled), model_id="tiny")
    registry.register(CompileCollector(probe))  # type: ignore[arg-type]  # any object with worker and model_id
    assert compiled.fast_path is not None
    stats = compiled.fast_path.stats
    assert registry.get_sample_value("sfumato_compiled_graphs", {"model": "tiny"}) == stats.graphs
    assert registry.get_sample_value("sfumato_compile_seconds", {"model": "tiny"}) == stats.compile_seconds
    assert registry.get_sample_value("sfumato_compile_recompiles_total", {"model": "tiny"}) == stats.recompiles
    assert registry.get_sample_value("sfumato_compile_unwarmed_shapes_total", {"model": "tiny"}) == stats.unwarmed
