"""A1111's ``<lora:name:scale>`` prompt tags, read in the API (torch-free).

A tag selects a LoRA exactly as the request's ``loras`` field does and is removed from the
text the text encoder sees, as in A1111 (``modules/extra_networks.py``: the tag is cut out
with ``re.sub``, nothing else in the prompt changes). What a caller may rely on:

* ``<lora:name>`` is scale 1.0, ``<lora:name:0.8>`` scale 0.8; ``<lyco:...>`` is the same
  (the LyCORIS extension's tag, which A1111 later folded into ``lora``).
* The tags become :class:`LoraWeight` entries that go through the same checks as the field
  (count, scale range, known names), so a tag can do nothing the field cannot. The caller
  names the ``prompt`` as the parameter of any refusal that comes from a tag.
* Refused (422), because they have no single meaning here: a tag in the negative prompt (a
  LoRA changes the model for both prompts; A1111 ignores such tags, which silently does
  nothing), the same LoRA twice (in two tags, or in a tag and the ``loras`` field), more than
  one number in a tag (A1111's separate text-encoder/UNet multipliers), a scale that is not a
  number, and other extra-network types (``<hypernet:...>``), which Sfumato does not serve.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.errors import InvalidRequest
from core.loras import valid_name
from core.schemas import LoraWeight

#: A1111's extra-network tag: ``<type:args>`` (``modules/extra_networks.py`` ``re_extra_net``).
TAG_PATTERN = re.compile(r"<(\w+):([^>]+)>")
#: Tag types that select a LoRA.
LORA_TAG_TYPES = frozenset({"lora", "lyco"})


@dataclass(frozen=True)
class TaggedPrompt:
    """A prompt with its LoRA tags cut out, and the LoRAs they named (in prompt order)."""

    text: str
    loras: tuple[LoraWeight, ...]


def _scale(args: list[str], tag: str, field: str) -> float:
    if len(args) == 1:
        return 1.0
    if len(args) > 2:
        raise InvalidRequest(
            f"{field}: tag {tag} has {len(args) - 1} multipliers; Sfumato takes one scale per LoRA, "
            "as in <lora:name:0.8>",
            param=field,
        )
    try:
        scale = float(args[1])
    except ValueError:
        raise InvalidRequest(f"{field}: tag {tag} has scale {args[1]!r}, which is not a number", param=field) from None
    if not math.isfinite(scale):
        raise InvalidRequest(f"{field}: tag {tag} has scale {args[1]!r}; it must be finite", param=field)
    return scale


def extract_lora_tags(prompt: str, field: str = "prompt") -> TaggedPrompt:
    """Cut the LoRA tags out of ``prompt``; InvalidRequest (param ``field``) for a malformed one."""
    loras: list[LoraWeight] = []
    for match in TAG_PATTERN.finditer(prompt):
        kind, tag = match.group(1), match.group(0)
        if kind not in LORA_TAG_TYPES:
            raise InvalidRequest(
                f"{field}: tag {tag} asks for an extra network of type {kind!r}; only <lora:...> "
                "(and its alias <lyco:...>) is supported",
                param=field,
            )
        args = [part.strip() for part in match.group(2).split(":")]
        if not valid_name(args[0]):
            raise InvalidRequest(
                f"{field}: tag {tag} does not name a LoRA (names are letters, digits, '_', '-' and '.', "
                "as listed by GET /v1/models)",
                param=field,
            )
        loras.append(LoraWeight(name=args[0], scale=_scale(args, tag, field)))
    if not loras:
        return TaggedPrompt(prompt, ())
    return TaggedPrompt(TAG_PATTERN.sub("", prompt), tuple(loras))


def merge_lora_tags(
    prompt: str, negative_prompt: str, requested: list[LoraWeight]
) -> tuple[str, list[LoraWeight], int]:
    """The prompt without its tags and the LoRA list to validate: the field's entries, then the
    tags'. Also returns how many entries came from the field, so that the caller can name
    ``prompt`` (not ``loras[i]``) when a tag's entry is refused."""
    if any(m.group(1) in LORA_TAG_TYPES for m in TAG_PATTERN.finditer(negative_prompt)):
        raise InvalidRequest(
            "negative_prompt has a <lora:...> tag; a LoRA changes the model for both prompts, so put "
            "its tag in prompt (a negative scale there pushes away from it)",
            param="negative_prompt",
        )
    tagged = extract_lora_tags(prompt)
    named = {lora.name for lora in requested}
    seen: set[str] = set()
    for lora in tagged.loras:
        if lora.name in named:
            raise InvalidRequest(
                f"LoRA {lora.name!r} is both in loras and in a <lora:> tag of prompt; give it once",
                param="prompt",
            )
        if lora.name in seen:
            raise InvalidRequest(f"LoRA {lora.name!r} has two <lora:> tags in prompt; give it once", param="prompt")
        seen.add(lora.name)
    return tagged.text, [*requested, *tagged.loras], len(requested)
