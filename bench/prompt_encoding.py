"""What long (chunked) and A1111-weighted prompts cost to encode, side by side with plain ones.

Usage::

    python -m bench.prompt_encoding [--repeats 20]

The text encoder is SD 1.5's architecture (CLIP ViT-L/14 text model, 123 M parameters, random
weights: the cost depends only on the shapes) in float32 on this CPU, driven through the
worker's own ``PromptEmbeddingCache`` (worker/pipelines/prompt_cache.py) and
``prompt_weighting`` code. Per case: encode time per request on a cache miss (median of
``repeats``), and the hit rate of a request stream (40 requests over 8 distinct prompts, each
prompt also written once with ``(word:1.0)`` weights, which must hit the plain entry). Writes
``bench/results/prompt-encoding.json``; ``python -m bench.report`` puts the table in the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.prompt_syntax import parse_attention
from worker.builtin.tiny import MAX_TOKENS, tiny_vocab
from worker.pipelines import prompt_weighting
from worker.pipelines.prompt_cache import PromptEmbeddingCache

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = "a red fox in the snow under the moon with a lantern near an old house".split()  # noqa: SIM905


def text_pipe() -> Any:
    """A stand-in pipeline with SD 1.5's text encoder shape and the tiny tokenizer."""
    vocab, merges = tiny_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=MAX_TOKENS)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = CLIPTextModel(config).eval()
    return SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder, _execution_device=torch.device("cpu"))


def prompts(kind: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(12 if kind.startswith("short") else 130)]
        words[0] = f"p{i}"
        if kind.endswith("weighted"):
            words[2] = f"({words[2]}:1.3)"
            words[5] = f"[{words[5]}]"
            words[8] = f"(({words[8]}))"
        if kind == "long weighted":
            words.insert(60, "BREAK")
        out.append(" ".join(words))
    return out


CASES = ["short plain", "short weighted", "long plain", "long weighted"]


def measure(pipe: Any, kind: str, repeats: int) -> dict[str, Any]:
    texts = prompts(kind, repeats, seed=1)
    chunks = prompt_weighting.chunk_count(pipe, parse_attention(texts[0]))
    cold = PromptEmbeddingCache(capacity=0)
    cold.embed(pipe, ["warm-up"], 0)
    times = []
    for text in texts:
        started = time.perf_counter()
        cold.embed(pipe, [text], 0)
        times.append(time.perf_counter() - started)
    distinct = prompts(kind, 8, seed=2)
    rng = random.Random(3)
    stream = [rng.choice(distinct) for _ in range(32)]
    stream += [" ".join(f"({w}:1.0)" if j == 1 else w for j, w in enumerate(t.split())) for t in distinct]
    cache = PromptEmbeddingCache(capacity=64)
    for text in stream:
        cache.embed(pipe, [text], 0)
    entry = cache.embed(pipe, [distinct[0]], 0)
    return {
        "case": kind,
        "chunks": chunks,
        "encode_ms_median": round(statistics.median(times) * 1000, 2),
        "encode_ms_p90": round(sorted(times)[int(len(times) * 0.9) - 1] * 1000, 2),
        "requests": len(stream),
        "distinct_prompts": len(distinct),
        "cache_hit_rate": round(cache.hits / (cache.hits + cache.misses), 3),
        "cache_entries": len(cache),
        "entry_kib": round(entry.numel() * entry.element_size() / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    pipe = text_pipe()
    with torch.no_grad():
        rows = [measure(pipe, kind, args.repeats) for kind in CASES]
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python -m bench.prompt_encoding --repeats {args.repeats}",
        "text_encoder": "CLIP ViT-L/14 text model (SD 1.5 shape, 123 M parameters), random weights",
        "dtype": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        # Shared CI machines: absolute times scale with the load; compare the rows.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cases": rows,
    }
    out = RESULTS / "prompt-encoding.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
