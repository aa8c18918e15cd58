"""The words a built-in model understands, shown to clients in ``GET /v1/models``.

The built-in shapes model was trained only on captions made of a few words
(training/shapes/scenes.py); a prompt outside them is not understood ("a big red circle" draws
whatever "big" happens to mean to it, because its word is "large"). A first-time user learns
the words from the model list, so they are shipped here as data: the API never imports the
training code, and tests/unit/test_prompt_guide.py fails if the two drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PromptGuide:
    """The vocabulary of a model that knows only a few words, with how to phrase a prompt.

    ``phrasings`` are templates with ``<colour>``, ``<shape>``, ``<size>`` and ``<position>``
    placeholders; ``examples`` are prompts written that way.
    """

    about: str
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: tuple[str, ...]
    positions: tuple[str, ...]
    phrasings: tuple[str, ...]
    examples: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        """The JSON object ``GET /v1/models`` shows under ``prompt_guide`` (lists, not tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


#: The built-in ``shapes`` model: the words of training/shapes/scenes.py (COLOURS, SHAPES,
#: SIZES, POSITIONS) and the phrasing of its captions (``Scene.caption``).
SHAPES_PROMPT_GUIDE = PromptGuide(
    about=(
        "This model knows only these words: one or two shapes, each in a colour, on a plain background of "
        "another colour. Other words are not understood (say 'large', not 'big'). Two shapes are both small "
        "and named left to right; 'an' goes before a vowel ('an orange square')."
    ),
    colours=("red", "green", "blue", "yellow", "purple", "orange", "white", "black"),
    shapes=("circle", "square", "triangle", "star"),
    sizes=("small", "large"),
    positions=("top left", "top right", "bottom left", "bottom right", "center"),
    phrasings=(
        "a <size> <colour> <shape> at the <position> on a <colour> background",
        "a <size> <colour> <shape> in the center on a <colour> background",
        "a <colour> <shape> and a <colour> <shape> on a <colour> background",
        "a <colour> <shape>",
    ),
    examples=(
        "a large red circle in the center on a white background",
        "a small yellow star at the top left on a blue background",
        "an orange square and a yellow star on a white background",
    ),
)
