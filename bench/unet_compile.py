"""The SD 1.5 UNet alone, eager against compiled, to see where a CPU's compile gain comes from.

``bench/compile.py`` measures the whole worker; this isolates the UNet (256 px, bf16, random
SD 1.5 weights from ``bench/sd15_random.py``) so that a small whole-pipeline gain can be traced
to the UNet or to the rest. Prints seconds per UNet call (best and median of ``--repeats``)::

    SFUMATO_TORCH_THREADS=2 python -m bench.unet_compile --rows 2
    python -m bench.unet_compile --rows 8 --variants eager,compiled_cl
    python -m bench.unet_compile --rows 2 --profile     # where the eager call's time goes

Variants: ``eager`` and ``eager_cl`` (channels_last weights and input), ``compiled_cl``
(inductor with freezing, channels_last), ``compiled_cl_nofreeze``, ``compiled`` (contiguous).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from bench.sd15_random import ensure_sd15_random

VARIANTS = ("eager", "eager_cl", "compiled_cl", "compiled_cl_nofreeze", "compiled")
Forward = Callable[[torch.Tensor], torch.Tensor]


def forward_for(unet: UNet2DConditionModel, variant: str, context: torch.Tensor) -> Forward:
    """The UNet call of one variant; the weights' layout is set here, before any compiling."""
    layout = torch.channels_last if "cl" in variant else torch.contiguous_format
    unet.to(memory_format=layout)  # type: ignore[call-arg]
    torch._dynamo.reset()
    module: Callable[..., tuple[torch.Tensor, ...]] = unet
    if variant.startswith("compiled"):
        module = torch.compile(unet, options={"freezing": "nofreeze" not in variant})
    timestep = torch.tensor(500)

    def call(sample: torch.Tensor) -> torch.Tensor:
        return module(sample.contiguous(memory_format=layout), timestep, encoder_hidden_states=context,
                      return_dict=False)[0]  # fmt: skip

    return call


def time_calls(forward: Forward, sample: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """(first call s, best s, median s): the first call includes compiling."""
    with torch.inference_mode():
        start = time.perf_counter()
        forward(sample)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(sample)
            times.append(time.perf_counter() - start)
    times.sort()
    return first, times[0], times[len(times) // 2]


def profile_eager(forward: Forward, sample: torch.Tensor, top: int = 12) -> None:
    """Print the eager call's operators by self CPU time, and the share of convolutions, matrix
    products and attention: the part compiling cannot fuse away, since the compiled graph calls
    the same kernels."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        forward(sample)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward(sample)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    heavy = ("conv", "mkldnn", "addmm", "mm", "bmm", "linear", "matmul", "baddbmm", "attention")
    kernels = sum(e.self_cpu_time_total for e in events if any(word in e.key for word in heavy))
    for event in events[:top]:
        print(f"  {event.key:48s} {100 * event.self_cpu_time_total / total:5.1f}%")
    print(f"convolutions, matrix products and attention: {100 * kernels / total:.1f}% of the eager call's CPU time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2, help="UNet batch (2 = one image with guidance)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "sfumato-bench")
    parser.add_argument("--profile", action="store_true", help="profile the eager call instead of timing variants")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("SFUMATO_TORCH_THREADS") or torch.get_num_threads()))
    folder = ensure_sd15_random(args.data_dir)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.bfloat16).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(args.rows, 4, 32, 32, generator=generator).to(torch.bfloat16)
    context = torch.randn(args.rows, 77, 768, generator=generator).to(torch.bfloat16)
    print(f"cpu threads {torch.get_num_threads()}, UNet rows {args.rows}, 256 px, bfloat16")
    if args.profile:
        profile_eager(forward_for(unet, "eager", context), sample)
        return
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        first, best, median = time_calls(forward_for(unet, variant, context), sample, args.repeats)
        print(f"{variant:22s} first call {first:7.1f} s   best {best:.3f} s   median {median:.3f} s", flush=True)


if __name__ == "__main__":
    main()
