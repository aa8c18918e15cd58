"""The compiled fast path: ``torch.compile`` of the UNet and VAE decoder with static shapes.

``SFUMATO_COMPILE=on`` (``auto``: on for CUDA) makes :meth:`FastPath.install` replace the
``forward`` of the resident UNet and VAE decoder with a :class:`CompiledForward`. While the
engine has the fast path *engaged* for a batch, that forward

1. pads the batch dimension up to the next bucket size (the rows added repeat the last real
   row; their outputs are sliced away), so a worker compiles one graph per bucket and
   resolution, not one per batch size;
2. puts 4-D inputs in channels_last inside the compiled region, matching the weights (below);
3. calls ``torch.compile(..., dynamic=False)`` of the module's own forward.

When the fast path is not engaged the module runs its ordinary eager forward, unpadded. The
engine engages it only for batches that are not ``exact`` and have no LoRA and no ControlNet:
``exact`` output stays bit-identical alone and co-batched, adapter changes never
recompile (and never meet frozen weights), and ControlNet residuals do not add graphs.

The resident UNet and VAE decoder get channels_last weights at install (:func:`channels_last`:
without them the compiled graph reorders every convolution's weight and loses to eager). QKV
projections are not fused: that would bypass LoRA layers on the attention projections.

Compilation is counted, never an error: a shape that warm-up did not compile compiles on first
use (``unwarmed``), and every compilation after warm-up is a ``recompile``. Past dynamo's
recompile limit a module falls back to eager with a warning from torch, still correct.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch

from core.config import Settings

log = logging.getLogger(__name__)

#: Dynamo's per-function graph limit is 8; a worker warms ``buckets x sizes`` graphs and must
#: not fall back to eager after a few sizes.
RECOMPILE_LIMIT = 64


def enabled(settings: Settings, device: torch.device) -> bool:
    """Whether ``SFUMATO_COMPILE`` turns the fast path on for ``device`` (``auto``: CUDA only)."""
    if settings.compile == "auto":
        return device.type == "cuda"
    return settings.compile == "on"


def configure_cache(settings: Settings) -> Path:
    """Point inductor's (and triton's) caches at ``SFUMATO_COMPILE_CACHE_DIR`` (default
    ``data_dir/compile-cache``) so a restarted worker loads kernels instead of compiling them.

    An explicit ``TORCHINDUCTOR_CACHE_DIR`` in the environment wins over the default, not over
    the setting. Must run before the first compilation (inductor reads it then)."""
    if settings.compile_cache_dir is not None:
        cache = settings.compile_cache_dir.expanduser()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    else:
        cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or settings.data_dir / "compile-cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def _raise_recompile_limit() -> None:
    config: Any = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.7; either may exist
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT * 4))


def compile_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``torch.compile`` for the configured backend, mode and freezing.

    ``torch.compile`` refuses ``mode`` together with ``options``, so the mode's inductor options
    are merged into ``options`` here."""
    if settings.compile_backend != "inductor":
        return {"backend": settings.compile_backend}
    import torch._inductor

    options: dict[str, Any] = {}
    if settings.compile_mode != "default":
        options.update(torch._inductor.list_mode_options(settings.compile_mode))
    options["freezing"] = settings.compile_freezing
    return {"backend": "inductor", "options": options}


def unet_sizes(buckets: Sequence[int]) -> tuple[int, ...]:
    """Batch sizes the UNet sees for image buckets: ``b`` without and ``2b`` with classifier-free
    guidance (unconditional and conditional rows in one call)."""
    return tuple(sorted({b * m for b in buckets for m in (1, 2)}))


def bucket_for(rows: int, sizes: Sequence[int]) -> int:
    """The smallest size in ``sizes`` holding ``rows``; ``rows`` itself past the largest."""
    return next((size for size in sizes if size >= rows), rows)


@dataclass
class CompileStats:
    """What compilation cost and how often it happened after warm-up (metrics read this)."""

    #: Graphs dynamo compiled for the fast path's modules.
    graphs: int = 0
    #: Seconds spent in calls that compiled (warm-up and later).
    compile_seconds: float = 0.0
    #: Compilations after warm-up (a new shape, dtype or a guard that failed, e.g. LoRA layers).
    recompiles: int = 0
    #: Calls after warm-up at an input signature that warm-up had not compiled.
    unwarmed: int = 0
    #: Per module name: graphs compiled.
    by_module: dict[str, int] = field(default_factory=dict)


def _pad(value: Any, rows: int, target: int) -> Any:
    """``value`` with every tensor whose first dimension is ``rows`` padded to ``target`` rows by
    repeating its last row (a real row: no zeros or NaNs flow through norms); recursive."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != rows:
            return value
        return torch.cat([value, value[-1:].expand(target - rows, *value.shape[1:])])
    if isinstance(value, dict):
        return {k: _pad(v, rows, target) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_pad(v, rows, target) for v in value)
    return value


def _unpad(value: Any, rows: int, target: int) -> Any:
    """``value`` with tensors of ``target`` rows cut back to the first ``rows`` (real) rows."""
    if isinstance(value, torch.Tensor):
        return value[:rows] if value.dim() > 0 and value.shape[0] == target else value
    if isinstance(value, tuple | list):
        return type(value)(_unpad(v, rows, target) for v in value)
    if is_dataclass(value) and not isinstance(value, type):  # diffusers' BaseOutput
        changes = {f.name: _unpad(getattr(value, f.name), rows, target) for f in fields(value)}
        return replace(value, **changes)
    return value


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What a static-shape graph depends on: tensor shapes and dtypes, other values as given."""

    def describe(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), str(value.dtype))
        if isinstance(value, dict):
            return tuple(sorted((k, describe(v)) for k, v in value.items()))
        if isinstance(value, list | tuple):
            return tuple(describe(v) for v in value)
        return value if isinstance(value, int | float | bool | str | None) else type(value).__name__

    return (describe(args), describe(kwargs))


def _contiguous(value: Any) -> Any:
    """``value`` with every tensor in the standard contiguous layout; recursive.

    Static-shape graphs are guarded on strides too: img2img hands the VAE decoder latents in
    another layout than txt2img (measured: a recompile at a warmed shape), so inputs get one
    layout before the compiled call (a no-op for tensors that have it already)."""
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, dict):
        return {k: _contiguous(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_contiguous(v) for v in value)
    return value


def _own_code(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``function`` with a code object of its own, named after ``name``.

    Dynamo keeps compiled graphs, their guards and the recompile limit per code object, and every
    closure of one ``def`` shares its code object: without a copy, the UNet, the VAE decoder and
    the modules of every other engine in the process would share one cache and one limit (seen:
    the tiny SDXL's VAE decoder reused the tiny SD model's graph and compiled nothing)."""
    code = function.__code__.replace(co_name=f"compiled_{name}", co_qualname=f"compiled_{name}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


def _channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def channels_last(module: torch.nn.Module) -> None:
    """Lay ``module``'s 4-D weights out channels_last, in place.

    Why: inductor keeps a convolution's weight layout; with channels_last activations and
    contiguous weights every convolution reorders, and the compiled SD 1.5 UNet ran 1.33x
    *slower* than eager on a 2-core Intel Xeon (0.96 s against 0.72 s a step, 256 px bf16, UNet
    batch 2), against 1.18x faster with the weights channels_last too (0.61 s). The eager forward
    (exact, LoRA and ControlNet batches) runs on the same weights: convolutions then pick their
    channels_last kernels, which round differently from a worker without compilation, so
    ``exact`` output is bit-identical across workers of the same ``SFUMATO_COMPILE`` setting."""
    module.to(memory_format=torch.channels_last)


def _graphs_so_far() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledForward:
    """The ``forward`` installed on a resident module: padded and compiled while the fast path
    is engaged, the module's own eager forward otherwise."""

    def __init__(self, name: str, module: torch.nn.Module, sizes: Sequence[int], path: FastPath) -> None:
        self.name = name
        self.sizes = tuple(sizes)
        self._path = path
        self._eager: Callable[..., Any] = type(module).forward.__get__(module)
        eager = self._eager

        def channels_last_forward(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_channels_last(a) for a in args)
            kwargs = {k: _channels_last(v) for k, v in kwargs.items()}
            return eager(*args, **kwargs)

        own = _own_code(channels_last_forward, name)
        self._compiled: Callable[..., Any] = torch.compile(own, dynamic=False, **path.options)
        self._seen: set[tuple[Any, ...]] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._path.is_engaged():
            return self._eager(*args, **kwargs)
        batch = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        rows = int(batch.shape[0]) if batch is not None and batch.dim() > 0 else 0
        target = bucket_for(rows, self.sizes) if rows else 0
        if target > rows:
            args, kwargs = _pad(args, rows, target), _pad(kwargs, rows, target)
        args, kwargs = _contiguous(args), _contiguous(kwargs)
        signature = _signature(args, kwargs)
        if signature not in self._seen:
            self._seen.add(signature)
            self._path.new_signature(self.name, rows, target)
        if self._path.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        before, started = _graphs_so_far(), time.perf_counter()
        output = self._compiled(*args, **kwargs)
        compiled = _graphs_so_far() - before
        if compiled:
            self._path.compiled(self.name, compiled, time.perf_counter() - started)
        return _unpad(output, rows, target) if target > rows else output


class FastPath:
    """The compiled forwards of one engine's resident modules and their statistics.

    Engage it per batch with :meth:`engaged`; the engine's lock serialises batches, so one
    flag suffices (a ``threading.local`` keeps a stray caller on another thread eager)."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.buckets: tuple[int, ...] = tuple(settings.compile_buckets)
        self.options = compile_options(settings)
        self.description = (
            f"backend={settings.compile_backend} mode={settings.compile_mode} "
            f"freezing={'on' if settings.compile_freezing else 'off'} buckets={','.join(map(str, self.buckets))}"
        )
        self.cudagraphs = device.type == "cuda" and settings.compile_mode == "reduce-overhead"
        self.compile_vae = settings.compile_vae
        self.stats = CompileStats()
        self.ready = False
        #: Set by :meth:`eager`: the compiled forwards stand aside.
        self.paused = False
        self._local = threading.local()
        self._stats_lock = threading.Lock()
        self.forwards: dict[str, CompiledForward] = {}

    @classmethod
    def install(cls, settings: Settings, device: torch.device, unet: torch.nn.Module, vae: Any) -> FastPath:
        """Configure caches and limits and install the compiled forwards on ``unet`` (and the
        VAE's decoder unless ``SFUMATO_COMPILE_VAE=false``). Nothing compiles until a call."""
        cache = configure_cache(settings)
        _raise_recompile_limit()
        path = cls(settings, device)
        channels_last(unet)
        path._wrap("unet", unet, unet_sizes(path.buckets))
        decoder = getattr(vae, "decoder", None)
        if path.compile_vae and isinstance(decoder, torch.nn.Module):
            channels_last(decoder)
            path._wrap("vae_decoder", decoder, path.buckets)
        log.info("compiled fast path on (%s, cache %s)", path.description, cache)
        return path

    def _wrap(self, name: str, module: torch.nn.Module, sizes: Sequence[int]) -> None:
        forward = CompiledForward(name, module, sizes, self)
        module.forward = forward  # an instance attribute, which nn.Module.__call__ calls
        self.forwards[name] = forward

    def adopt(self, name: str, unet: torch.nn.Module) -> bool:
        """Install the compiled forward (and channels_last weights) on a UNet that loads after
        :meth:`install`: the SDXL refiner's, loaded at warm-up or on first use. False when it
        has one already. Its graphs compile on its first engaged call, so warm-up runs one
        refined batch per bucket after adopting it."""
        if isinstance(unet.__dict__.get("forward"), CompiledForward):
            return False
        channels_last(unet)
        self._wrap(name, unet, unet_sizes(self.buckets))
        log.info("%s joined the compiled fast path", name)
        return True

    def uninstall(self, modules: Sequence[torch.nn.Module]) -> None:
        """Give ``modules`` their class's forward back (tests, benchmarks comparing eager)."""
        for module in modules:
            if isinstance(module.__dict__.get("forward"), CompiledForward):
                del module.__dict__["forward"]

    def is_engaged(self) -> bool:
        return bool(getattr(self._local, "engaged", False)) and not self.paused

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Every batch eager inside this block, whatever its key (benchmarks measure both ways)."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    @contextmanager
    def engaged(self, on: bool = True) -> Iterator[None]:
        """Run the compiled forwards inside this block (``on``), the eager ones otherwise."""
        previous = self.is_engaged()
        self._local.engaged = on
        try:
            yield
        finally:
            self._local.engaged = previous

    def mark_ready(self) -> None:
        """Warm-up is over: from now on every compilation is a recompile."""
        self.ready = True
        log.info(
            "compiled fast path ready: %d graph(s) in %.1fs of compiling", self.stats.graphs, self.stats.compile_seconds
        )

    def new_signature(self, name: str, rows: int, target: int) -> None:
        if self.ready:
            with self._stats_lock:
                self.stats.unwarmed += 1
            log.warning(
                "%s: a batch of %d row(s) (padded to %d) at a shape warm-up did not compile; compiling it once",
                name, rows, target,
            )  # fmt: skip

    def compiled(self, name: str, graphs: int, seconds: float) -> None:
        with self._stats_lock:
            self.stats.graphs += graphs
            self.stats.compile_seconds += seconds
            self.stats.by_module[name] = self.stats.by_module.get(name, 0) + graphs
            if self.ready:
                self.stats.recompiles += graphs
        log.info("%s: compiled %d graph(s) in %.1fs%s", name, graphs, seconds, " (after warm-up)" if self.ready else "")
