"""Long prompts and A1111 attention weights: parsed prompts -> chunks of 75 tokens -> embeddings.

What A1111 does (``modules/sd_hijack_clip.py``), which users' prompts are written for:

- a prompt is parsed into weighted fragments (core/prompt_syntax.py) and tokenized without
  start/end tokens; tokens fill chunks of 75; a chunk is ``<start> 75 tokens <end>`` padded
  with the end token and then the tokenizer's pad token (the same ids diffusers' own
  ``padding="max_length"`` gives a short prompt, so a plain prompt encodes exactly as before);
- when a chunk fills up and a comma is among its last 20 tokens, the words after that comma
  move to the next chunk (A1111's ``comma_padding_backtrack`` default, 20);
- ``BREAK`` closes the current chunk;
- each chunk goes through the text encoder alone (77 tokens: what CLIP was trained on) and
  the chunks' hidden states are concatenated along the sequence;
- weights (A1111's default "Original" emphasis): the chunk's hidden states are multiplied per
  token by its weight, then rescaled so the chunk's mean is what it was before. All-1.0
  chunks are left untouched, so ``(red:1.0)`` encodes bit-identically to ``red``.
- SDXL: the same per text encoder, hidden states of both concatenated per token; the pooled
  embedding is text_encoder_2's of the FIRST chunk (and is not weighted).

Clip skip, textual inversion (``maybe_convert_prompt`` expands multi-vector tokens, as
diffusers' ``encode_prompt`` does) and text-encoder LoRA layers (active on the module) apply as
in diffusers' ``encode_prompt``: this module indexes the same hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.prompt_syntax import BREAK_FRAGMENT, CHUNK_TOKENS, Fragments

#: A1111's default ``comma_padding_backtrack``: how far back a comma may move a chunk's end.
COMMA_BACKTRACK = 20


def window(tokenizer: Any) -> int:
    """Tokens of one encoded chunk: 77 (start, 75, end) for every real CLIP; the built-in tiny
    models' text encoders have shorter windows, and their chunks are that long."""
    return int(min(tokenizer.model_max_length, CHUNK_TOKENS + 2))


@dataclass
class Chunks:
    """One text's chunks for one tokenizer: ``ids`` and ``weights``, each ``chunks x 77``."""

    ids: list[list[int]]
    weights: list[list[float]]


def _convert(pipe: Any, text: str, tokenizer: Any) -> str:
    convert = getattr(pipe, "maybe_convert_prompt", None)
    return str(convert(text, tokenizer)) if convert is not None and text else text


def tokenize(pipe: Any, tokenizer: Any, fragments: Fragments) -> Chunks:
    """``fragments`` as A1111 chunks of ``tokenizer``'s ids (see the module docstring)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.get_vocab().get(",</w>")
    size = window(tokenizer) - 2
    out = Chunks([], [])
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma
        filled = len(tokens)
        ids = [bos, *tokens, eos] + [pad] * (size - filled)
        out.ids.append(ids)
        out.weights.append([1.0, *weights] + [1.0] * (size - filled + 1))
        tokens, weights, last_comma = [], [], -1

    for text, weight in fragments:
        if (text, weight) == BREAK_FRAGMENT:
            close()
            continue
        if not text:
            continue
        text = _convert(pipe, text, tokenizer)
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for token in ids:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == size and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = moved, moved_weights
            if len(tokens) == size:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not out.ids:
        close()
    return out


def tokenizers(pipe: Any) -> list[Any]:
    """The pipeline's tokenizers: one (SD 1.x/2.x) or two (SDXL)."""
    found = [pipe.tokenizer]
    if getattr(pipe, "tokenizer_2", None) is not None:
        found.append(pipe.tokenizer_2)
    return found


def chunk_count(pipe: Any, fragments: Fragments) -> int:
    """How many chunks of 75 tokens ``fragments`` encode to on ``pipe`` (the most of its tokenizers)."""
    return max(len(tokenize(pipe, tokenizer, fragments).ids) for tokenizer in tokenizers(pipe))


#: A row whose mean after scaling is below this share of its mean magnitude is left unrescaled.
MEAN_FLOOR = 1e-3


def _emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis per row: scale tokens, then restore each row's mean.

    The rescale divides by the scaled row's mean. Trained CLIP encoders end in a LayerNorm with
    a learned bias, so that mean is well away from zero; an encoder whose last LayerNorm has no
    bias (the built-in tiny model's random one) gives rows whose mean is ~1e-8, and A1111's
    division turns the whole image into NaN. Such rows keep the scaled values unrescaled."""
    if bool((weights == 1.0).all()):
        return hidden
    weights = weights.to(device=hidden.device, dtype=hidden.dtype)
    before = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.unsqueeze(-1)
    after = scaled.mean(dim=(1, 2), keepdim=True)
    defined = after.abs() > MEAN_FLOOR * scaled.abs().mean(dim=(1, 2), keepdim=True)
    return scaled * torch.where(defined, before / after, 1.0)  # where picks 1.0 over any inf or NaN


def _stack(per_text: Sequence[Chunks]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    ids = [row for chunks in per_text for row in chunks.ids]
    weights = [row for chunks in per_text for row in chunks.weights]
    return torch.tensor(ids), torch.tensor(weights), [len(chunks.ids) for chunks in per_text]


def _split(rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Rows of chunks back into one ``(1, 77 x chunks, dim)`` tensor per text."""
    out, start = [], 0
    for count in counts:
        out.append(rows[start : start + count].reshape(1, -1, rows.shape[-1]).clone())
        start += count
    return out


def _mask(text_encoder: Any, ids: torch.Tensor, eos: int) -> torch.Tensor | None:
    """The attention mask diffusers passes when the encoder asks for one (start..first end)."""
    if not getattr(text_encoder.config, "use_attention_mask", False):
        return None
    first_end = (ids == eos).int().argmax(dim=1, keepdim=True)
    return (torch.arange(ids.shape[1]).unsqueeze(0) <= first_end).long()


def encode_sd(pipe: Any, texts: Sequence[Fragments], clip_skip: int) -> list[tuple[torch.Tensor]]:
    """SD 1.x/2.x: ``(1, 77 x chunks, dim)`` per text, all chunks in one text-encoder call
    (rows are independent: see worker/pipelines/prompt_cache.py)."""
    encoder, device = pipe.text_encoder, pipe._execution_device
    ids, weights, counts = _stack([tokenize(pipe, pipe.tokenizer, text) for text in texts])
    mask = _mask(encoder, ids, pipe.tokenizer.eos_token_id)
    mask = None if mask is None else mask.to(device)
    if clip_skip:
        out = encoder(ids.to(device), attention_mask=mask, output_hidden_states=True)
        hidden = encoder.text_model.final_layer_norm(out.hidden_states[-(clip_skip + 1)])
    else:
        hidden = encoder(ids.to(device), attention_mask=mask)[0]
    hidden = _emphasis(hidden.to(dtype=encoder.dtype, device=device), weights)
    return [(embeds,) for embeds in _split(hidden, counts)]


def _pad_rows(chunks: Chunks, count: int, empty: Chunks) -> Chunks:
    missing = count - len(chunks.ids)
    return Chunks(chunks.ids + empty.ids * missing, chunks.weights + empty.weights * missing)


def encode_sdxl(pipe: Any, texts: Sequence[Fragments], clip_skip: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """SDXL: ``((1, 77 x chunks, dim1 + dim2), (1, pooled_dim))`` per text; the pooled
    embedding is text_encoder_2's of the first chunk (A1111)."""
    device = pipe._execution_device
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    per_encoder = [[tokenize(pipe, tokenizer, text) for text in texts] for tokenizer, _ in pairs]
    # The two tokenizers share CLIP's vocabulary, so their chunk counts agree; pad if not.
    counts = [max(len(per_encoder[0][i].ids), len(per_encoder[1][i].ids)) for i in range(len(texts))]
    hidden_parts, pooled_rows = [], None
    for (tokenizer, encoder), chunked in zip(pairs, per_encoder, strict=True):
        empty = tokenize(pipe, tokenizer, (("", 1.0),))
        ids, weights, _ = _stack([_pad_rows(c, n, empty) for c, n in zip(chunked, counts, strict=True)])
        out = encoder(ids.to(device), output_hidden_states=True)
        if pooled_rows is None and out[0].ndim == 2:
            pooled_rows = out[0]
        hidden = out.hidden_states[-(clip_skip + 2)]
        hidden_parts.append(_emphasis(hidden, weights))
    if pooled_rows is None:
        raise ValueError("SDXL text encoders gave no pooled embedding")
    hidden = torch.cat(hidden_parts, dim=-1).to(dtype=pipe.text_encoder_2.dtype, device=device)
    firsts, start = [], 0
    for count in counts:
        firsts.append(pooled_rows[start : start + 1].clone())
        start += count
    return list(zip(_split(hidden, counts), firsts, strict=True))
