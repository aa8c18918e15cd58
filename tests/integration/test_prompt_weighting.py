"""Long prompts (A1111 75-token chunks) and A1111 attention weights on the real engines: the
shapes model (what ``make run`` serves), the tiny model and tiny SDXL (both text encoders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import GenerationFailed
from core.models import EmbeddingSpec
from core.prompt_syntax import parse_attention
from tests.support.embedding import make_embedding
from tests.support.engine import engine_settings, payload
from tests.support.sdxl import sdxl_payload, sdxl_settings
from worker.builtin.tiny import TEXT_WIDTH, build_tiny_pipeline
from worker.pipelines import prompt_weighting
from worker.pipelines.embeddings import load_embeddings
from worker.pipelines.engine import Engine

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
    pytest.mark.timeout(900),
]

#: ~100 filler words: the words that matter land in the second chunk.
FILLER = " ".join(["the"] * 100)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(engine_settings(tmp_path_factory.mktemp("shapes"), model="shapes"))


def draw(engine: Engine, prompt: str, seed: int = 3, **fields: Any) -> np.ndarray:
    job = payload(model=engine.spec.id, prompt=prompt, width=32, height=32, steps=8, guidance_scale=3.0, seed=seed)
    job = job.model_copy(update=fields)
    (images,) = engine.generate_arrays([job])
    return images


def levels(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in 8-bit levels."""
    return float(np.abs(a * 255 - b * 255).mean())


def test_a_long_prompt_reads_past_the_first_77_tokens(shapes: Engine) -> None:
    white = draw(shapes, f"{FILLER} a red circle on a white background")
    black = draw(shapes, f"{FILLER} a red circle on a black background")
    assert levels(white, black) > 5.0, levels(white, black)


def test_a_weight_of_one_is_the_plain_prompt_bit_for_bit(shapes: Engine) -> None:
    plain = draw(shapes, "a red circle on a white background")
    assert np.array_equal(plain, draw(shapes, "a (red:1.0) circle on a white background"))
    assert levels(plain, draw(shapes, "a (red:1.5) circle on a white background")) > 0.5
    assert levels(plain, draw(shapes, "a [red] circle on a white background")) > 0.1


def test_break_starts_a_new_chunk(shapes: Engine) -> None:
    plain = draw(shapes, "a red circle on a white background")
    assert levels(plain, draw(shapes, "a red circle BREAK on a white background")) > 0.5


def test_the_negative_prompt_is_chunked_too(shapes: Engine) -> None:
    plain = draw(shapes, "a red circle", negative_prompt=f"{FILLER} white background")
    other = draw(shapes, "a red circle", negative_prompt=f"{FILLER} black background")
    assert levels(plain, other) > 0.5


def test_a_plain_prompt_encodes_as_diffusers_does(engine: Engine) -> None:
    """Back-compatibility: one chunk, all weights 1 -> diffusers' own encode_prompt, bit for bit."""
    pipe = engine.pipeline("txt2img", "ddim")
    for clip_skip in (0, 1):
        ours = prompt_weighting.encode_sd(pipe, [parse_attention("a red fox, in snow")], clip_skip)[0][0]
        theirs, _ = pipe.encode_prompt(
            prompt="a red fox, in snow",
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=clip_skip or None,
        )
        assert torch.equal(ours, theirs)


def test_chunks_follow_a1111(engine: Engine) -> None:
    pipe = engine.pipeline("txt2img", "ddim")
    tokenizer = pipe.tokenizer
    chunks = prompt_weighting.tokenize(pipe, tokenizer, parse_attention(FILLER))
    assert [len(ids) for ids in chunks.ids] == [77, 77]
    first, second = chunks.ids
    assert first[0] == second[0] == tokenizer.bos_token_id and first[-1] == tokenizer.eos_token_id
    assert second[1 + 25] == tokenizer.eos_token_id  # 100 words: 75 + 25
    # A comma within the last 20 tokens of a full chunk moves the words after it along.
    words = ["the"] * 70 + [","] + ["a"] * 10
    moved = prompt_weighting.tokenize(pipe, tokenizer, parse_attention(" ".join(words)))
    comma = tokenizer.get_vocab()[",</w>"]
    assert moved.ids[0][71] == comma and moved.ids[0][72] == tokenizer.eos_token_id
    assert moved.ids[1][1:11] == moved.ids[1][1:2] * 10
    assert len(prompt_weighting.tokenize(pipe, tokenizer, parse_attention("a BREAK b BREAK c")).ids) == 3
    weighted = prompt_weighting.tokenize(pipe, tokenizer, parse_attention("(red:1.5) fox"))
    assert weighted.weights[0][:4] == [1.0, 1.5, 1.0, 1.0]


def test_a_long_prompt_does_not_change_short_prompts_co_batched(shapes: Engine) -> None:
    common: dict[str, Any] = {"model": "shapes", "width": 32, "height": 32, "steps": 3, "guidance_scale": 3.0}
    short = payload(job_id="s", prompt="a red circle on a white background", seed=5, **common)
    weighted = payload(job_id="w", prompt="a (blue:1.3) square on a black background", seed=6, **common)
    long = payload(job_id="l", prompt=f"{FILLER} a green triangle", negative_prompt="red", seed=7, **common)
    # Without the long prompt: the two one-chunk jobs share one call.
    short_and_weighted = shapes.generate_arrays([short, weighted])
    (long_alone,) = shapes.generate_arrays([long])
    together = shapes.generate_arrays([short, long, weighted])
    # The long prompt runs in a call of its own: its partners' images are those of a batch
    # without it, bit for bit, and its own is its image alone.
    assert np.array_equal(short_and_weighted[0], together[0])
    assert np.array_equal(short_and_weighted[1], together[2])
    assert np.array_equal(long_alone, together[1])


def test_past_the_chunk_limit_only_that_job_fails(engine: Engine) -> None:
    limit = engine.max_prompt_chunks
    engine.max_prompt_chunks = 2
    try:
        with pytest.raises(GenerationFailed) as info:
            engine.prepare(payload(prompt=" ".join(["the"] * 160)))
        assert info.value.param == "prompt" and "3 chunks" in str(info.value) and "maximum is 2" in str(info.value)
        engine.prepare(payload(prompt=" ".join(["the"] * 150)))
    finally:
        engine.max_prompt_chunks = limit


@pytest.fixture(scope="module")
def xl(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(sdxl_settings(tmp_path_factory.mktemp("xl")))


def test_sdxl_long_prompts_use_both_encoders_and_the_first_chunks_pooled(xl: Engine) -> None:
    pipe = xl.pipeline("txt2img", "ddim")
    long = parse_attention(f"{FILLER} a red fox")
    (embeds, pooled), (short_embeds, short_pooled) = prompt_weighting.encode_sdxl(
        pipe, [long, parse_attention(FILLER)], 0
    )
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert embeds.shape == (1, 154, width)
    # The first chunks are the same words: the pooled embedding is the first chunk's.
    assert torch.equal(pooled, short_pooled)
    assert not torch.equal(embeds[:, 77:], short_embeds[:, 77:])
    plain = pipe.encode_prompt(
        prompt="a red fox", device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
    )[0]
    ours = prompt_weighting.encode_sdxl(pipe, [parse_attention("a (red:1.0) fox")], 0)[0][0]
    assert torch.equal(ours, plain)
    job = sdxl_payload(prompt=f"{FILLER} a red fox", negative_prompt="(blurry:1.2)", seed=4)
    short = sdxl_payload(job_id="s", prompt="a red fox", seed=5)
    (alone,) = xl.generate_arrays([short])
    together = xl.generate_arrays([job, short])
    assert np.array_equal(alone, together[1])  # a call of its own, as alone
    assert together[0].shape == alone.shape


def test_textual_inversion_tokens_still_apply_in_long_weighted_prompts(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline()
    path = make_embedding(tmp_path / "three.safetensors", "<three>", seed=1, vectors=3)
    load_embeddings(pipe, "m", [EmbeddingSpec("<three>", str(path))])
    ids = pipe.tokenizer.convert_tokens_to_ids(["<three>", "<three>_1", "<three>_2"])
    chunks = prompt_weighting.tokenize(pipe, pipe.tokenizer, parse_attention(f"{FILLER} a (<three>:1.2) cat"))
    second = chunks.ids[1]
    start = second.index(ids[0])
    assert second[start : start + 3] == ids and chunks.weights[1][start : start + 3] == [1.2] * 3
    with_token = prompt_weighting.encode_sd(pipe, [parse_attention(f"{FILLER} a <three> cat")], 0)[0][0]
    without = prompt_weighting.encode_sd(pipe, [parse_attention(f"{FILLER} a cat")], 0)[0][0]
    assert with_token.shape == without.shape == (1, 154, TEXT_WIDTH)
    assert not torch.equal(with_token[:, 77:], without[:, 77:])


def test_emphasis_restores_the_mean_and_survives_a_zero_mean_encoder(engine: Engine) -> None:
    """A1111's rescale divides by the scaled chunk's mean: restored where that mean is defined;
    an encoder whose output has zero mean (the tiny model's bias-free last LayerNorm) keeps the
    scaled values instead of turning the image into NaN."""
    hidden = torch.randn(2, 77, 8) + 0.5
    weights = torch.ones(2, 77)
    weights[:, 3] = 1.3
    out = prompt_weighting._emphasis(hidden, weights)
    torch.testing.assert_close(out.mean(dim=(1, 2)), hidden.mean(dim=(1, 2)))
    centred = hidden - hidden.mean(dim=2, keepdim=True)  # every token's mean is zero, as after a bias-free norm
    assert torch.isfinite(prompt_weighting._emphasis(centred, weights)).all()
    (image,) = engine.generate_arrays([payload(prompt="a (red circle:1.3) at the [top]", seed=7, steps=2)])
    assert np.isfinite(image).all()
