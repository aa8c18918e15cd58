"""core/text.py: which text is refused, and that the refusal names the character and position."""

from __future__ import annotations

import pytest

from core.text import encodable, text_problem


@pytest.mark.parametrize(
    "value",
    ["a red fox", "tabs\tand\nnewlines\r", "bell \x07 and C1 \x85 in free text", "🦊 emoji", "\uffff", ""],
)
def test_free_text_the_tokenizer_encodes_is_accepted(value: str) -> None:
    assert text_problem(value) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ab\ud800", ("surrogate", "U+D800", "character 2")),
        ("\udfff", ("surrogate", "U+DFFF", "character 0")),
        ("a\x00b", ("NUL", "character 1")),
    ],
)
def test_unencodable_text_is_refused_with_what_and_where(value: str, words: tuple[str, ...]) -> None:
    problem = text_problem(value)
    assert problem is not None and all(word in problem for word in words), problem
    assert text_problem(value, name=True) == problem


@pytest.mark.parametrize("value", ["tiny\x07", "ddim\n", "x\x1b[31m", "a\x85"])
def test_names_refuse_every_control_character(value: str) -> None:
    assert text_problem(value) is None
    problem = text_problem(value, name=True)
    assert problem is not None and "control character" in problem


def test_a_valid_pair_is_one_character_not_a_surrogate() -> None:
    # json.loads('"\\ud83e\\udd8a"') joins the pair into one astral character.
    import json

    assert text_problem(json.loads('"\\ud83e\\udd8a"')) is None
    assert text_problem(json.loads('"\\ud83e"')) is not None


def test_stored_text_with_a_lone_surrogate_is_echoed_as_the_replacement_character() -> None:
    assert encodable("red \ud800 circle") == "red \ufffd circle"
    assert encodable("red \ud800 circle").encode("utf-8")  # JSON responses can carry it now
    assert encodable("plain 文字") == "plain 文字"
