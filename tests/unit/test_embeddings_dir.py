"""The registry's ``embeddings_dir``: resolved against the registry file's folder, never shown
by GET /v1/models (a local path), and the worker's default when unset."""

from __future__ import annotations

from pathlib import Path

from core.config import Settings
from core.models import served_models
from worker.pipelines.embeddings import embeddings_folder


def test_embeddings_dir_resolves_like_other_paths_and_stays_private(tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(
        '[[models]]\nid = "a"\nsource = "tiny"\nfamily = "tiny"\nembeddings_dir = "./emb/a"\n\n'
        '[[models]]\nid = "b"\nsource = "tiny"\nfamily = "tiny"\n'
    )
    settings = Settings(data_dir=tmp_path / "data", models_file=registry)
    models = served_models(settings)
    assert embeddings_folder(settings, models["a"]) == (tmp_path / "emb" / "a").resolve()
    assert embeddings_folder(settings, models["b"]) == tmp_path / "data" / "embeddings" / "b"
    assert "embeddings_dir" not in models["a"].public()
