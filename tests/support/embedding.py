"""Textual-inversion embeddings for tests, written the way diffusers saves them.

``make_embedding`` writes ``{token: vectors}`` to a ``.safetensors`` file: the layout
``StableDiffusionPipeline.load_textual_inversion`` reads (and textual-inversion training
scripts save). The vectors are seeded noise scaled like real token embeddings, so a prompt
with the token conditions the UNet visibly differently from one without.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from worker.builtin.tiny import TEXT_WIDTH


def make_embedding(
    path: Path, token: str, *, seed: int, vectors: int = 1, width: int = TEXT_WIDTH, scale: float = 1.0
) -> Path:
    """Write a ``(vectors, width)`` embedding for ``token`` to ``path``; returns ``path``."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn((vectors, width), generator=generator) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: data.contiguous()}, str(path))
    return path


def registry_toml(models: list[dict[str, object]]) -> str:
    """A registry file for ``models`` (dicts of scalar keys plus optional ``embeddings`` lists)."""
    lines: list[str] = []
    for model in models:
        lines.append("[[models]]")
        for key, value in model.items():
            if key != "embeddings":
                lines.append(f"{key} = {_toml(value)}")
        for embedding in model.get("embeddings", []):  # type: ignore[attr-defined]
            lines.append("[[models.embeddings]]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in embedding.items())
        lines.append("")
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
