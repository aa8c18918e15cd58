"""Textual-inversion embeddings: loaded ONCE, when the worker loads its model.

Each embedding of the worker's registry entry adds its token to the resident tokenizer(s) and
its vector(s) to the text encoder's input embeddings, so prompts use it by writing the token.
Nothing is loaded per request and nothing is ever unloaded: the set is fixed for the worker's
life, which is also why the prompt-embedding cache (worker/pipelines/prompt_cache.py) stays valid (the
encoding of a text never changes after start-up).

Files are safetensors only (read here with ``safetensors.torch.load_file``; pickle formats are
never opened). Accepted layouts:

- SD 1.x/2.x (one text encoder): a file with ONE tensor (the diffusers layout ``{"<token>":
  vector}``, any key), or with ``emb_params`` (the A1111 safetensors layout); shape ``(dim,)``
  or ``(vectors, dim)`` (multi-vector embeddings use ``token token_1 ...`` internally).
- SDXL (two text encoders): ``clip_l`` (first encoder) and ``clip_g`` (second encoder).

Besides the registry's ``embeddings`` list, every ``.safetensors`` file in the model's
embeddings folder (registry ``embeddings_dir``, default ``<data_dir>/embeddings/<model id>``)
is loaded with its file name as the token, as A1111 does (``easynegative.safetensors`` ->
``easynegative``). Files whose name is not one prompt word (whitespace) are skipped with a
warning; other files (``.pt``, ``.bin``: pickle) are never opened.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from core.config import Settings
from core.errors import ModelUnavailable
from core.models import EmbeddingSpec, ModelSpec
from core.registry import TOKEN_PATTERN

log = logging.getLogger(__name__)


def _encoders(pipe: Any) -> list[tuple[str, Any, Any]]:
    """(key in an SDXL file, text encoder, tokenizer) for each text encoder of ``pipe``."""
    pairs = [("clip_l", pipe.text_encoder, pipe.tokenizer)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append(("clip_g", pipe.text_encoder_2, pipe.tokenizer_2))
    return pairs


def _vectors(tensors: dict[str, torch.Tensor], key: str, two_encoders: bool, where: str) -> torch.Tensor:
    """The tensor of one text encoder from a file's tensors; ModelUnavailable explains the layouts."""
    if two_encoders:
        if key not in tensors:
            raise ModelUnavailable(
                f"{where}: an SDXL embedding needs tensors 'clip_l' and 'clip_g'; the file has {sorted(tensors)}"
            )
        return tensors[key]
    for name in ("emb_params", key):  # A1111 layout; the first-encoder half of an SDXL file
        if len(tensors) > 1 and name in tensors:
            return tensors[name]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ModelUnavailable(f"{where}: expected one tensor (or 'emb_params'); the file has {sorted(tensors)}")


def _read(spec: EmbeddingSpec, where: str) -> dict[str, torch.Tensor]:
    path = Path(spec.path)
    if path.suffix != ".safetensors":
        raise ModelUnavailable(f"{where}: only .safetensors embeddings are loaded (pickle formats run code)")
    if not path.is_file():
        raise ModelUnavailable(f"{where}: file {path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelUnavailable(f"{where}: {path} is not a readable safetensors file ({type(exc).__name__})") from exc


def embeddings_folder(settings: Settings, spec: ModelSpec) -> Path:
    """The model's embeddings folder: registry ``embeddings_dir``, else data_dir/embeddings/<id>."""
    if spec.embeddings_dir is not None:
        return Path(spec.embeddings_dir)
    return Path(settings.data_dir) / "embeddings" / spec.id


def folder_embeddings(folder: Path, listed: Sequence[EmbeddingSpec]) -> list[EmbeddingSpec]:
    """One embedding per ``<token>.safetensors`` in ``folder`` (sorted), skipping tokens and
    files the registry already lists; empty when the folder does not exist."""
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and p.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ModelUnavailable(f"cannot list the embeddings folder {folder}: {exc}") from exc
    taken = {spec.token for spec in listed}
    paths = {Path(spec.path).resolve() for spec in listed}
    found = []
    for path in files:
        token = path.stem
        if re.fullmatch(TOKEN_PATTERN, token) is None:
            log.warning("skipping embedding %s: its name is not one prompt word", path)
        elif token not in taken and path.resolve() not in paths:
            found.append(EmbeddingSpec(token, str(path)))
    return found


def load_embeddings(
    pipe: Any, model_id: str, embeddings: Sequence[EmbeddingSpec], folder: Path | None = None
) -> tuple[str, ...]:
    """Add each embedding's token to ``pipe``'s tokenizer(s) and text encoder(s), in place:
    ``embeddings`` (the registry's list), then each file of ``folder`` (:func:`folder_embeddings`).

    Returns the tokens loaded. Raises :class:`ModelUnavailable` naming the model and token for a
    missing or malformed file, a vector of the wrong width, or a token the tokenizer already
    has (the worker then does not start: serving a model without its embeddings would silently
    change what prompts mean).
    """
    encoders = _encoders(pipe)
    loaded: list[str] = []
    if folder is not None:
        embeddings = [*embeddings, *folder_embeddings(folder, embeddings)]
    for spec in embeddings:
        where = f"model {model_id!r}: embedding {spec.token!r}"
        tensors = _read(spec, where)
        for key, text_encoder, tokenizer in encoders:
            vectors = _vectors(tensors, key, len(encoders) > 1, where)
            weight = text_encoder.get_input_embeddings().weight
            if vectors.ndim not in (1, 2) or vectors.shape[-1] != weight.shape[-1]:
                raise ModelUnavailable(
                    f"{where}: vectors of shape {tuple(vectors.shape)} do not fit the text encoder "
                    f"(width {weight.shape[-1]}; expected ({weight.shape[-1]},) or (n, {weight.shape[-1]}))"
                )
            if spec.token in tokenizer.get_vocab():
                raise ModelUnavailable(f"{where}: the tokenizer already has this token; choose another token")
            vectors = vectors.to(device=weight.device, dtype=weight.dtype)
            try:
                pipe.load_textual_inversion(vectors, token=spec.token, text_encoder=text_encoder, tokenizer=tokenizer)
            except ValueError as exc:
                raise ModelUnavailable(f"{where}: {exc}") from exc
        loaded.append(spec.token)
        log.info("loaded embedding %s for model %s", spec.token, model_id)
    return tuple(loaded)
