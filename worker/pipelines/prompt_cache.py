"""A bounded LRU of text-encoder outputs, so repeated prompts are encoded once.

The common empty negative prompt and the prompts of ``n`` > 1 requests hit it on every batch.
In float32 a batch's misses are encoded in ONE text-encoder call: every prompt is padded to the
same 77 tokens with no cross-row attention, so a row's embedding does not depend on its
partners (bit-identical to encoding alone on CPU; ~1e-7 at most elsewhere, far inside the
1e-5 invariance bound), and one call costs about what one prompt alone costs on a small model
(py-spy: one prompt at a time was 15% of a busy tiny-model worker's main thread). In half
precision the batched matmuls round differently per batch size (SD 1.5 CLIP in bf16: rows of
a batch of 4 distinct prompts differ from solo ones by up to 0.0625), which would make an
image depend on its partners' prompts; so there each text is encoded alone, which costs ~1% of
a batch on a real model.

``exact`` requests never touch the cache: each of their texts is encoded alone, fresh, so an
exact request's result does not depend on what ran before it (bit-identical across runs).

Prompts are read as A1111 reads them (worker/pipelines/prompt_weighting.py): attention
weights, and long prompts in 75-token chunks, each chunk one row of the text-encoder call. An
entry is one prompt's encoding with its own chunk count; :meth:`PromptEmbeddingCache.embed`
pads rows to the batch's chunk count with the empty prompt's encoding (A1111's padding of
prompt and negative prompt to the same length).

The key is (parsed text, clip_skip, text-encoder state): the parsed text
(core/prompt_syntax.py ``cache_key``) is what the encoder reads, so ``(red:1.0)`` and ``red``
share an entry while the PNG infotext keeps the prompt as written. The state is the active text-encoder LoRAs
as (adapter id, scale) pairs (worker/pipelines/lora.py), empty for the base text encoder: the same
prompt under another text-encoder LoRA is another embedding. Anything else that changes the
text encoder (a textual-inversion token) must become part of the key when it arrives.

SDXL (:meth:`PromptEmbeddingCache.embed_sdxl`) runs each text through BOTH text encoders and
also keeps text_encoder_2's pooled projection; its entries are keyed apart from SD 1.x ones
(``kind``). The per-token embeddings are row-independent as above; the pooled projection is
one matmul over the batch, so a row encoded in a batch of another size may round differently
(measured on CPU: <= 4e-7), which moves images by far less than the 1e-5 invariance bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.prompt_syntax import Fragments, cache_key, parse_attention
from worker.pipelines import prompt_weighting

#: What the text encoder's weights are besides the base model: ((adapter id, scale), ...).
TextEncoderState = tuple[tuple[str, float], ...]
#: (kind, parsed text, clip_skip, text-encoder state); kind is "sd" or "sdxl".
_Key = tuple[str, str, int, TextEncoderState]
#: One text's encoding: (embeds,) for SD 1.x/2.x, (embeds, pooled) for SDXL; batch dim first.
Encoded = tuple[torch.Tensor, ...]
#: ``encode(parsed texts, clip_skip)`` -> each text's encoding (its own chunk count), one call.
_Encoder = Callable[[list[Fragments], int], list[Encoded]]


class PromptEmbeddingCache:
    """``embed(pipe, texts, clip_skip)`` -> one ``(len(texts), tokens, dim)`` tensor."""

    def __init__(self, capacity: int, encode_together: bool = True) -> None:
        self.capacity = capacity
        self.encode_together = encode_together
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, Encoded] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _encoder(pipe: Any) -> _Encoder:
        def encode(texts: list[Fragments], clip_skip: int) -> list[Encoded]:
            return list(prompt_weighting.encode_sd(pipe, texts, clip_skip))

        return encode

    @staticmethod
    def _sdxl_encoder(pipe: Any) -> _Encoder:
        def encode(texts: list[Fragments], clip_skip: int) -> list[Encoded]:
            # Both encoders: embeds = [text_encoder | text_encoder_2] hidden states, concatenated
            # per token; pooled = text_encoder_2's projection of the first chunk.
            return list(prompt_weighting.encode_sdxl(pipe, texts, clip_skip))

        return encode

    def _lookup(self, keys: list[_Key]) -> dict[_Key, Encoded]:
        found = {}
        with self._lock:
            for key in keys:
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    found[key] = cached
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    def _store(self, entries: dict[_Key, Encoded]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            for key, embeds in entries.items():
                self._entries[key] = embeds
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def embed(
        self,
        pipe: Any,
        texts: Sequence[str],
        clip_skip: int,
        exact: bool = False,
        text_encoder_state: TextEncoderState = (),
        chunks: int = 0,
    ) -> torch.Tensor:
        """Embeddings for ``texts`` in order, ``(len(texts), tokens, dim)``.

        ``text_encoder_state`` must describe the text-encoder LoRAs active on ``pipe`` right now
        (the caller activated them); it only keys the cache, it changes nothing on ``pipe``.

        Duplicates are encoded once; cache misses are encoded together in one call (float32; see
        the module docstring), else one by one. With
        ``exact`` each distinct text is encoded alone and the cache is neither read nor written.
        """
        encode = self._encoder(pipe)
        return self._embed("sd", encode, texts, clip_skip, exact, text_encoder_state, chunks)[0]

    def embed_sdxl(
        self,
        pipe: Any,
        texts: Sequence[str],
        clip_skip: int,
        exact: bool = False,
        text_encoder_state: TextEncoderState = (),
        chunks: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: ``(embeds, pooled)`` for ``texts`` in order, ``(len(texts), tokens, dim1 + dim2)``
        and ``(len(texts), pooled_dim)``; caching as :meth:`embed`. ``pipe`` is an SDXL pipeline
        with both text encoders."""
        encode = self._sdxl_encoder(pipe)
        embeds, pooled = self._embed("sdxl", encode, texts, clip_skip, exact, text_encoder_state, chunks)
        return embeds, pooled

    def _embed(
        self,
        kind: str,
        encode: _Encoder,
        texts: Sequence[str],
        clip_skip: int,
        exact: bool,
        text_encoder_state: TextEncoderState,
        chunks: int = 0,
    ) -> Encoded:
        """Rows padded to ``chunks`` chunks (at least each row's own count; 0: the longest
        row's) with the empty prompt's encoding, as A1111 pads prompt and negative prompt."""
        # No autograd graph: a cached embedding would otherwise keep every activation of the
        # text encoder pass that made it alive for as long as it stays cached.
        with torch.no_grad():
            rows = self._embed_rows(
                kind, encode, [parse_attention(t) for t in texts], clip_skip, exact, text_encoder_state
            )
            lengths = {row[0].shape[1] for row in rows}
            if chunks > 1 or len(lengths) > 1:  # each row is whole chunks: pad the short ones
                (empty,) = self._embed_rows(kind, encode, [parse_attention("")], clip_skip, exact, text_encoder_state)
                target = max(max(lengths), chunks * empty[0].shape[1])
                rows = [self._pad(row, empty[0], target) for row in rows]
            return tuple(torch.cat([row[part] for row in rows], dim=0) for part in range(len(rows[0])))

    @staticmethod
    def _pad(row: Encoded, empty: torch.Tensor, target: int) -> Encoded:
        """``row``'s embeds followed by empty-prompt chunks up to ``target`` tokens."""
        missing = (target - row[0].shape[1]) // empty.shape[1]
        if missing <= 0:
            return row
        return (torch.cat([row[0], *[empty] * missing], dim=1), *row[1:])

    def _embed_rows(
        self,
        kind: str,
        encode: _Encoder,
        texts: Sequence[Fragments],
        clip_skip: int,
        exact: bool,
        text_encoder_state: TextEncoderState,
    ) -> list[Encoded]:
        """Each text's own encoding (its own chunk count), in order; keyed on the PARSED text."""
        parsed = {cache_key(text): text for text in texts}
        if exact:
            by_text = {name: encode([text], clip_skip)[0] for name, text in parsed.items()}
        else:
            keys = [(kind, name, clip_skip, text_encoder_state) for name in parsed]
            found = self._lookup(keys)
            missing = [key for key in keys if key not in found]
            if missing and self.encode_together:
                encoded = encode([parsed[key[1]] for key in missing], clip_skip)
                fresh = dict(zip(missing, encoded, strict=True))
            else:
                fresh = {key: encode([parsed[key[1]]], clip_skip)[0] for key in missing}
            if fresh:
                self._store(fresh)
                found.update(fresh)
            by_text = {name: found[(kind, name, clip_skip, text_encoder_state)] for name in parsed}
        return [by_text[cache_key(text)] for text in texts]
