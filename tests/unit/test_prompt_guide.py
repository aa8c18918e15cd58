"""The shapes model's vocabulary shown in GET /v1/models is the one it was trained on.

core/prompt_guide.py ships the words as data (the API never imports the training code); these
tests tie them to training/shapes/scenes.py so neither can change without the other.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from core.config import Settings
from core.models import resolve_model, served_models
from core.prompt_guide import SHAPES_PROMPT_GUIDE


def _scenes() -> ModuleType:
    """The caption vocabulary: training/shapes/scenes.py (worker/shapes/scenes.py before the move)."""
    name = "training.shapes.scenes" if importlib.util.find_spec("training") else "worker.shapes.scenes"
    return importlib.import_module(name)


def test_words_are_the_training_captions_words() -> None:
    scenes = _scenes()
    guide = SHAPES_PROMPT_GUIDE
    assert guide.colours == tuple(scenes.COLOURS)
    assert guide.shapes == tuple(scenes.SHAPES)
    assert guide.sizes == tuple(scenes.SIZES)
    assert guide.positions == tuple(scenes.POSITIONS)


def test_examples_are_captions_the_model_was_trained_to_read() -> None:
    scenes = _scenes()

    def one(size: str, colour: str, kind: str, position: str, background: str) -> str:
        x, y = scenes.POSITIONS[position]
        return scenes.Scene(background, (scenes.Shape(kind, colour, size, position, x, y),)).caption()

    def two(left: tuple[str, str], right: tuple[str, str], background: str) -> str:
        first = scenes.Shape(left[1], left[0], "small", "top left", 0.3, 0.3)
        second = scenes.Shape(right[1], right[0], "small", "top right", 0.7, 0.3)
        return scenes.Scene(background, (second, first)).caption()

    assert SHAPES_PROMPT_GUIDE.examples == (
        one("large", "red", "circle", "center", "white"),
        one("small", "yellow", "star", "top left", "blue"),
        two(("orange", "square"), ("yellow", "star"), "white"),
    )


def test_phrasings_use_only_placeholders_and_caption_glue() -> None:
    glue = {"a", "an", "at", "the", "in", "center", "on", "background", "and"}
    placeholders = {"<size>", "<colour>", "<shape>", "<position>"}
    for phrasing in SHAPES_PROMPT_GUIDE.phrasings:
        assert set(phrasing.split()) <= glue | placeholders, phrasing
    for example in SHAPES_PROMPT_GUIDE.examples:
        words = set(example.split())
        known = glue | set(SHAPES_PROMPT_GUIDE.colours) | set(SHAPES_PROMPT_GUIDE.shapes)
        known |= set(SHAPES_PROMPT_GUIDE.sizes) | {w for p in SHAPES_PROMPT_GUIDE.positions for w in p.split()}
        assert words <= known, example


def test_only_the_shapes_model_carries_a_guide(tmp_path: Path) -> None:
    shapes = resolve_model(Settings(model="shapes"), None).public()
    assert shapes["prompt_guide"]["sizes"] == ["small", "large"]
    assert "big" not in shapes["prompt_guide"]["sizes"] and "'large', not 'big'" in shapes["prompt_guide"]["about"]
    assert "prompt_guide" not in resolve_model(Settings(model="tiny"), None).public()
    registry = tmp_path / "models.toml"
    registry.write_text('[[models]]\nid = "dots"\nsource = "shapes"\nfamily = "sd1"\n\n'
                        '[[models]]\nid = "tiny"\nsource = "tiny"\nfamily = "tiny"\n')  # fmt: skip
    models = {k: v.public() for k, v in served_models(Settings(models_file=registry)).items()}
    assert models["dots"]["prompt_guide"] == SHAPES_PROMPT_GUIDE.public()
    assert "prompt_guide" not in models["tiny"]
