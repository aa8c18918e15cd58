"""core.prompt_syntax: A1111's attention syntax (its documented examples), the API's 422 for
malformed weights, and the tokenizer-free lower bound on a prompt's chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import InvalidRequest
from core.prompt_syntax import BREAK_FRAGMENT, cache_key, min_chunks, parse_attention, weight_error
from core.schemas import ImageRequest
from core.validation import normalize_request


def parsed(text: str) -> list[tuple[str, float]]:
    return [(t, round(w, 6)) for t, w in parse_attention(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # The examples of A1111's parse_prompt_attention docstring.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        ),
        ("((x))", [("x", 1.21)]),
        ("[x]", [("x", round(1 / 1.1, 6))]),
        ("[[x]]", [("x", round(1 / 1.21, 6))]),
        ("(x:1.3)", [("x", 1.3)]),
        ("(x: 0.5 )", [("x", 0.5)]),
        ("stray) text]", [("stray) text]", 1.0)]),
        ("\\\\ backslash", [("\\ backslash", 1.0)]),
        ("(style: oil painting)", [("style: oil painting", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_a1111_examples(text: str, expected: list[tuple[str, float]]) -> None:
    assert parsed(text) == expected


def test_break_ends_a_chunk_and_is_a_whole_upper_case_word() -> None:
    assert parse_attention("a cat BREAK a dog") == (("a cat", 1.0), BREAK_FRAGMENT, ("a dog", 1.0))
    assert parse_attention("(red BREAK blue:1.2)") == (("red", 1.2), BREAK_FRAGMENT, ("blue", 1.2))
    assert parse_attention("BREAKFAST break") == (("BREAKFAST break", 1.0),)


def test_a_weight_of_one_keys_the_cache_like_the_plain_text() -> None:
    assert cache_key(parse_attention("(red:1.0)")) == cache_key(parse_attention("red")) == "red"
    assert cache_key(parse_attention("(red:1.5)")) != cache_key(parse_attention("red"))
    assert cache_key(parse_attention("a BREAK b")) != cache_key(parse_attention("a b"))


@pytest.mark.parametrize("text", ["(red:abc)", "(red:1.2.3)", "(red:)", "a ((b:1e3))", "(x: .)"])
def test_malformed_weights_are_named(text: str) -> None:
    assert weight_error(text) is not None


@pytest.mark.parametrize(
    "text", ["(red:1.5)", "red: blue", "(style: oil painting)", "\\(red:abc\\)", "(x:-0.5)", "[a:b]", "(unbalanced:"]
)
def test_valid_syntax_passes(text: str) -> None:
    assert weight_error(text) is None


def test_min_chunks_is_a_lower_bound() -> None:
    assert min_chunks("a red circle") == 1
    assert min_chunks(" ".join(["word"] * 76)) == 2
    assert min_chunks("a BREAK b BREAK c") >= 2
    assert min_chunks(" ".join(["(word:1.2)"] * 151)) == 3


def normalize(tmp_path: Path, **fields: Any) -> Any:
    return normalize_request(ImageRequest(**fields), Settings(data_dir=tmp_path), tenant="t", job_id="j", now=1.0)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_the_api_refuses_malformed_weights_naming_the_field(tmp_path: Path, field: str) -> None:
    fields = {"prompt": "a cat", field: "a (red:abc) circle"}
    with pytest.raises(InvalidRequest) as info:
        normalize(tmp_path, **fields)
    assert info.value.param == field
    assert "'abc'" in str(info.value)


def test_the_api_refuses_prompts_certainly_over_the_chunk_limit(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        normalize(tmp_path, prompt=" ".join(["a"] * (75 * 8 + 1)))
    assert info.value.param == "prompt"
    assert "9 chunks" in str(info.value) and "maximum is 8" in str(info.value)
    assert normalize(tmp_path, prompt=" ".join(["a"] * 75 * 8)).prompt.startswith("a a")
