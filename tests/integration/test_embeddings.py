"""Textual inversion on the resident tiny model: an embedding from the registry is loaded once
at Engine.load, its token changes prompts that use it (deterministically), and prompts without
it are untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import Settings
from core.errors import ModelUnavailable
from core.models import EmbeddingSpec
from tests.support.embedding import make_embedding, registry_toml
from tests.support.engine import engine_settings, payload
from worker.builtin.tiny import TEXT_WIDTH, build_tiny_pipeline
from worker.pipelines.embeddings import load_embeddings
from worker.pipelines.engine import Engine

TOKEN = "<ink-wash>"


def registry_settings(data_dir: Path, folder: Path, embeddings: list[dict[str, object]]) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    text = registry_toml([{"id": "tiny-ti", "source": "tiny", "family": "tiny", "embeddings": embeddings}])
    (folder / "models.toml").write_text(text)
    return engine_settings(data_dir, models_file=folder / "models.toml")


@pytest.fixture(scope="module")
def ti_engine(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = tmp_path_factory.mktemp("ti")
    make_embedding(folder / "embeddings" / "ink.safetensors", TOKEN, seed=7, scale=2.0)
    settings = registry_settings(data_dir, folder, [{"token": TOKEN, "path": "embeddings/ink.safetensors"}])
    return Engine.load(settings)


def image(engine: Engine, prompt: str) -> np.ndarray:
    return engine.generate_arrays([payload(model=engine.spec.id, prompt=prompt, steps=4, seed=11)])[0]


def test_the_embedding_is_loaded_once_at_start_and_its_token_is_in_the_vocabulary(ti_engine: Engine) -> None:
    tokenizer, text_encoder = ti_engine.pipeline("txt2img", "ddim").tokenizer, ti_engine._components["text_encoder"]
    assert ti_engine.spec.id == "tiny-ti" and ti_engine.embeddings == (TOKEN,)
    token_id = tokenizer.convert_tokens_to_ids(TOKEN)
    expected = 2.0 * torch.randn((1, TEXT_WIDTH), generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(text_encoder.get_input_embeddings().weight[token_id].detach(), expected)
    vocab, rows = len(tokenizer), text_encoder.get_input_embeddings().weight.shape[0]
    for prompt in (f"a {TOKEN} cat", "a cat", f"{TOKEN} {TOKEN}"):
        image(ti_engine, prompt)
    # Nothing is loaded per request: the vocabulary and the embedding matrix did not grow.
    assert (len(tokenizer), text_encoder.get_input_embeddings().weight.shape[0]) == (vocab, rows)
    # And loading again onto the same modules is refused rather than silently doubled.
    spec = EmbeddingSpec(TOKEN, str(Path(ti_engine.spec.embeddings[0].path)))
    with pytest.raises(ModelUnavailable, match="already has this token"):
        load_embeddings(ti_engine.pipeline("txt2img", "ddim"), "tiny-ti", [spec])


def test_the_token_changes_the_image_deterministically_and_other_prompts_are_untouched(
    ti_engine: Engine, engine: Engine
) -> None:
    with_token = image(ti_engine, f"a lighthouse in {TOKEN} style")
    unknown_word = image(ti_engine, "a lighthouse in <ink-wask> style")
    assert float(np.abs(with_token - unknown_word).max()) > 0.02
    assert np.array_equal(with_token, image(ti_engine, f"a lighthouse in {TOKEN} style"))
    # The same weights without the embedding (the session's plain tiny engine): a prompt
    # without the token gives the same image, so the embedding changed nothing else.
    assert np.allclose(image(ti_engine, "a lighthouse at dusk"), image(engine, "a lighthouse at dusk"), atol=1e-6)
    assert float(np.abs(with_token - image(engine, f"a lighthouse in {TOKEN} style")).max()) > 0.02


def test_batched_prompts_with_and_without_the_token_match_their_solo_images(ti_engine: Engine) -> None:
    prompts = [f"a {TOKEN} boat", "a boat", f"{TOKEN}"]
    jobs = [payload(job_id=f"j{i}", model="tiny-ti", prompt=p, steps=4, seed=20 + i) for i, p in enumerate(prompts)]
    together = ti_engine.generate_arrays(jobs)
    for job, batched in zip(jobs, together, strict=True):
        assert np.allclose(ti_engine.generate_arrays([job])[0], batched, atol=1e-5)


def test_a_multi_vector_embedding_loads_as_one_token(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline()
    path = make_embedding(tmp_path / "three.safetensors", "<three>", seed=1, vectors=3)
    assert load_embeddings(pipe, "m", [EmbeddingSpec("<three>", str(path))]) == ("<three>",)
    assert {"<three>", "<three>_1", "<three>_2"} <= set(pipe.tokenizer.get_vocab())
    assert pipe.maybe_convert_prompt("a <three> cat", pipe.tokenizer) == "a <three> <three>_1 <three>_2 cat"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: make_embedding(p, "<t>", seed=1, width=TEXT_WIDTH + 8), r"shape \(1, 40\).*width 32"),
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not safetensors"), "not a readable safetensors file"),
    ],
)
def test_a_broken_embedding_stops_the_load_naming_model_and_token(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "e.safetensors"
    make(path)
    with pytest.raises(ModelUnavailable, match=f"model 'm': embedding '<t>': .*{message}"):
        load_embeddings(build_tiny_pipeline(), "m", [EmbeddingSpec("<t>", str(path))])


def test_a_pickle_embedding_is_never_opened(tmp_path: Path) -> None:
    path = tmp_path / "e.pt"
    path.write_bytes(b"\x80\x04")
    with pytest.raises(ModelUnavailable, match=r"only \.safetensors"):
        load_embeddings(build_tiny_pipeline(), "m", [EmbeddingSpec("<t>", str(path))])
