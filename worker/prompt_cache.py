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

The key is (text, clip_skip, text-encoder state). The state is the active text-encoder LoRAs
as (adapter id, scale) pairs (worker/lora.py), empty for the base text encoder: the same
prompt under another text-encoder LoRA is another embedding. Anything else that changes the
text encoder (a textual-inversion token) must become part of the key when it arrives.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

#: What the text encoder's weights are besides the base model: ((adapter id, scale), ...).
TextEncoderState = tuple[tuple[str, float], ...]
_Key = tuple[str, int, TextEncoderState]


class PromptEmbeddingCache:
    """``embed(pipe, texts, clip_skip)`` -> one ``(len(texts), tokens, dim)`` tensor."""

    def __init__(self, capacity: int, encode_together: bool = True) -> None:
        self.capacity = capacity
        self.encode_together = encode_together
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _encode(self, pipe: Any, texts: list[str], clip_skip: int) -> torch.Tensor:
        embeds, _ = pipe.encode_prompt(
            prompt=texts,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=clip_skip or None,
        )
        return embeds

    def _lookup(self, keys: list[_Key]) -> dict[_Key, torch.Tensor]:
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

    def _store(self, entries: dict[_Key, torch.Tensor]) -> None:
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
    ) -> torch.Tensor:
        """Embeddings for ``texts`` in order, ``(len(texts), tokens, dim)``.

        ``text_encoder_state`` must describe the text-encoder LoRAs active on ``pipe`` right now
        (the caller activated them); it only keys the cache, it changes nothing on ``pipe``.

        Duplicates are encoded once; cache misses are encoded together in one call (float32; see
        the module docstring), else one by one. With
        ``exact`` each distinct text is encoded alone and the cache is neither read nor written.
        """
        unique = list(dict.fromkeys(texts))
        if exact:
            by_text = {text: self._encode(pipe, [text], clip_skip) for text in unique}
        else:
            keys = [(text, clip_skip, text_encoder_state) for text in unique]
            found = self._lookup(keys)
            missing = [key for key in keys if key not in found]
            if missing and self.encode_together:
                encoded = self._encode(pipe, [key[0] for key in missing], clip_skip)
                fresh = {key: encoded[i : i + 1].clone() for i, key in enumerate(missing)}
            else:
                fresh = {key: self._encode(pipe, [key[0]], clip_skip) for key in missing}
            if fresh:
                self._store(fresh)
                found.update(fresh)
            by_text = {text: found[(text, clip_skip, text_encoder_state)] for text in unique}
        return torch.cat([by_text[text] for text in texts], dim=0)
