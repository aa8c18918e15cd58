"""The embeddings folder of a model (registry ``embeddings_dir``, default
data_dir/embeddings/<id>): every ``.safetensors`` in it is a prompt token named after the file,
as in A1111, loaded once when the worker loads its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelUnavailable
from core.models import EmbeddingSpec
from tests.support.embedding import make_embedding
from tests.support.engine import engine_settings
from worker.builtin.tiny import TEXT_WIDTH, build_tiny_pipeline
from worker.pipelines.embeddings import embeddings_folder, folder_embeddings, load_embeddings
from worker.pipelines.engine import Engine


def test_each_file_of_the_folder_is_a_token_named_after_it(tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    make_embedding(folder / "easyneg.safetensors", "anything", seed=3)  # diffusers layout, any key
    a1111 = torch.randn((2, TEXT_WIDTH), generator=torch.Generator().manual_seed(4))
    save_file({"emb_params": a1111, "extra": torch.zeros(1)}, str(folder / "two-vec.safetensors"))  # A1111 layout
    make_embedding(folder / "has space.safetensors", "x", seed=5)  # not one prompt word: skipped
    make_embedding(folder / "listed.safetensors", "x", seed=6)  # the registry lists this file already
    (folder / "pickled.pt").write_bytes(b"never opened")
    listed = [EmbeddingSpec("<listed>", str(folder / "listed.safetensors"))]
    assert [s.token for s in folder_embeddings(folder, listed)] == ["easyneg", "two-vec"]
    pipe = build_tiny_pipeline()
    assert load_embeddings(pipe, "m", listed, folder=folder) == ("<listed>", "easyneg", "two-vec")
    text = pipe.maybe_convert_prompt("two-vec", pipe.tokenizer)  # "two-vec two-vec_1", as diffusers encodes it
    ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
    weights = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert len(ids) == 2 and torch.equal(weights[ids], a1111)  # both vectors, in order
    assert folder_embeddings(tmp_path / "missing", []) == []


def test_the_engine_loads_the_default_folder_at_start(data_dir: Path, tmp_path: Path) -> None:
    settings = engine_settings(tmp_path)
    spec_folder = tmp_path / "embeddings" / "tiny"
    make_embedding(spec_folder / "ink-style.safetensors", "ink-style", seed=8)
    engine = Engine.load(settings)
    assert embeddings_folder(settings, engine.spec) == spec_folder
    assert engine.embeddings == ("ink-style",)


@pytest.mark.parametrize("bad", [b"not safetensors", b""])
def test_a_broken_file_in_the_folder_stops_the_worker_naming_it(tmp_path: Path, bad: bytes) -> None:
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "broken.safetensors").write_bytes(bad)
    with pytest.raises(ModelUnavailable, match=r"'broken'.*not a readable safetensors"):
        load_embeddings(build_tiny_pipeline(), "m", [], folder=folder)
