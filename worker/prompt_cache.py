"""A bounded LRU of text-encoder outputs, so repeated prompts are encoded once.

The common empty negative prompt and the prompts of ``n`` > 1 requests hit it on every batch.
Each text is encoded alone (batch of one), so an embedding never depends on which other
prompts shared its batch: caching helps batch invariance as well as speed.

The key is (text, clip_skip). Anything that changes the text encoder (a text-encoder LoRA,
a textual-inversion token) must become part of the key when it arrives.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch


class PromptEmbeddingCache:
    """``embed(pipe, texts, clip_skip)`` -> one ``(len(texts), tokens, dim)`` tensor."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _encode(self, pipe: Any, text: str, clip_skip: int) -> torch.Tensor:
        embeds, _ = pipe.encode_prompt(
            prompt=text,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=clip_skip or None,
        )
        return embeds

    def _get(self, pipe: Any, text: str, clip_skip: int) -> torch.Tensor:
        key = (text, clip_skip)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
        embeds = self._encode(pipe, text, clip_skip)
        if self.capacity > 0:
            with self._lock:
                self._entries[key] = embeds
                self._entries.move_to_end(key)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return embeds

    def embed(self, pipe: Any, texts: Sequence[str], clip_skip: int) -> torch.Tensor:
        """Embeddings for ``texts`` in order; duplicates inside one call are encoded once."""
        unique = {text: self._get(pipe, text, clip_skip) for text in dict.fromkeys(texts)}
        return torch.cat([unique[text] for text in texts], dim=0)
