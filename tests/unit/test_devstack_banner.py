"""make run's banner tells a first-time user the shapes model's words (and only for that model)."""

from __future__ import annotations

from core.prompt_guide import SHAPES_PROMPT_GUIDE
from devstack.launcher import SHAPES_PROMPT, _banner, _vocabulary

BASE = "http://127.0.0.1:8000"


def test_the_banner_lists_every_word_the_shapes_model_knows() -> None:
    banner = _banner(BASE, False, SHAPES_PROMPT, _vocabulary())
    guide = SHAPES_PROMPT_GUIDE
    for word in (*guide.colours, *guide.shapes, *guide.sizes, *guide.positions):
        assert word in banner, word
    assert f"{BASE}/v1/models" in banner and "{base}" not in banner
    assert "'large', not 'big'" in banner


def test_the_first_request_uses_only_known_words() -> None:
    guide = SHAPES_PROMPT_GUIDE
    known = {*guide.colours, *guide.shapes, *guide.sizes, *" ".join(guide.positions).split()}
    known |= {"a", "an", "at", "the", "on", "in", "and", "background"}
    assert set(SHAPES_PROMPT.split()) <= known


def test_other_models_get_no_vocabulary() -> None:
    banner = _banner(BASE, True, "a red fox in the snow")
    assert "knows only these words" not in banner and "Authentication is ON" in banner
