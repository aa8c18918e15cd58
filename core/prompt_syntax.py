"""A1111 attention syntax: parsing (shared by API and worker) and the API's torch-free checks.

The worker parses each prompt into weighted fragments (worker/pipelines/prompt_weighting.py
turns them into 75-token chunks and weighted embeddings); the API parses the same text to
refuse what A1111 itself would crash on (a malformed weight) and prompts that are certainly
longer than the chunk limit, before anything is enqueued.

Semantics follow A1111's ``modules/prompt_parser.py`` ``parse_prompt_attention`` (this is our
own code, written against its documented behaviour):

- ``(x)`` multiplies the attention to ``x`` by 1.1, ``((x))`` by 1.21; ``[x]`` divides it by 1.1;
- ``(x:1.3)`` sets the multiplier of ``x`` to 1.3 (nested groups multiply);
- ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are the literal characters;
- ``BREAK`` (upper case, a whole word) ends the current 75-token chunk (also inside brackets,
  where A1111 would weight the marker and then read it as the literal word "BREAK");
- unbalanced brackets are not errors: an unclosed ``(``/``[`` applies to the rest of the
  prompt, a stray ``)``/``]`` is literal text (as in A1111).

Where we are stricter than A1111: ``(x:WEIGHT)`` whose WEIGHT is one word that is not a number
(``(red:abc)``, ``(red:1.2.3)``, ``(red:)``) is refused with a 422 naming the field. A1111 draws
the first as the literal text ``red:abc`` at x1.1 and crashes on the second; either way it is
a typo, not the intended prompt. A colon followed by words (``(style: oil painting)``) stays
literal, as in A1111.
"""

from __future__ import annotations

import math
import re

from core.errors import InvalidRequest

#: Tokens of the attention syntax, in A1111's order of precedence.
_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes (and a lone backslash)
    \(|\[|                          # openers
    :\s*([+-]?[.\d]+)\s*\)|         # ":1.3)" closes a round group with an explicit weight
    \)|]|                           # closers
    [^\\()\[\]:]+|                  # plain text
    :                               # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
#: ``:word)`` where ``word`` is one run without spaces: a weight was meant (checked by the API).
_WEIGHT_ATTEMPT = re.compile(r":\s*([^\s()\[\]:\\]*)\s*\)")

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
#: The marker fragment that ends a chunk (A1111 uses the same pair).
BREAK_FRAGMENT = ("BREAK", -1.0)

#: A parsed prompt: (text, weight) fragments; ("BREAK", -1.0) ends a chunk.
Fragments = tuple[tuple[str, float], ...]


def parse_attention(text: str) -> Fragments:
    """``text`` as weighted fragments, A1111's ``parse_prompt_attention`` semantics.

    >>> parse_attention("a (house:1.5) [b]")
    (('a ', 1.0), ('house', 1.5), (' ', 1.0), ('b', 0.9090909090909091))
    """
    res: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    breaks: set[int] = set()  # positions of BREAK markers: never weighted (A1111 weights them)

    def multiply(start: int, by: float) -> None:
        for position in range(start, len(res)):
            if position not in breaks:
                res[position][1] = float(res[position][1]) * by

    for match in _ATTENTION.finditer(text):
        part, weight = match.group(0), match.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_open.append(len(res))
        elif part == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _number(weight))
        elif part == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif part == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, piece in enumerate(_BREAK.split(part)):
                if i > 0:
                    breaks.add(len(res))
                    res.append(list(BREAK_FRAGMENT))
                res.append([piece, 1.0])
    for start in round_open:
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    merged: list[list[str | float]] = [res[0]]
    for item in res[1:]:  # runs of one weight are one fragment (A1111 merges them too)
        if item[1] == merged[-1][1]:
            merged[-1][0] = str(merged[-1][0]) + str(item[0])
        else:
            merged.append(item)
    return tuple((str(t), float(w)) for t, w in merged)


def _number(weight: str) -> float:
    """A weight's value; ValueError for ``1.2.3`` (the API refuses those first)."""
    value = float(weight)
    if not math.isfinite(value):
        raise ValueError(f"weight {weight!r} is not finite")
    return value


def weight_error(text: str) -> str | None:
    """Why ``text``'s attention syntax is malformed, or None. Torch-free (the API calls it)."""
    depth = 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == ":" and depth:
            attempt = _WEIGHT_ATTEMPT.match(text, i)
            if attempt is not None:
                word = attempt.group(1)
                try:
                    _number(word)
                except ValueError:
                    return (
                        f"malformed attention weight {word!r} in {text[max(0, i - 20) : attempt.end()]!r}: "
                        "write (text:1.2) with a number, or escape the brackets as \\( \\)"
                    )
                if not re.fullmatch(r"[+-]?[.\d]+", word):
                    return f"malformed attention weight {word!r}: write a plain decimal number such as 1.2"
        i += 1
    return None


#: Runs that the CLIP tokenizer always splits apart: each is at least one token.
_TOKEN_FLOOR = re.compile(r"[A-Za-z]+|\d")
CHUNK_TOKENS = 75


def min_chunks(text: str) -> int:
    """A lower bound on the 75-token chunks ``text`` encodes to, without a tokenizer.

    Every ASCII letter run and every digit is at least one CLIP token, and every ``BREAK`` ends
    a chunk, so the true count (the worker's, with the model's tokenizer) is never smaller.
    The API refuses only what is certainly over the limit; the worker enforces the exact count.
    """
    fragments = [f for f in parse_attention(text) if f != BREAK_FRAGMENT]
    tokens = sum(len(_TOKEN_FLOOR.findall(t)) for t, _ in fragments)
    breaks = sum(1 for f in parse_attention(text) if f == BREAK_FRAGMENT)
    return max(1, breaks, math.ceil(tokens / CHUNK_TOKENS))


def check_prompt(field: str, text: str, max_chunks: int) -> None:
    """InvalidRequest (422, ``param=field``) for malformed weights or certainly too many chunks."""
    error = weight_error(text)
    if error is not None:
        raise InvalidRequest(f"{field}: {error}", param=field)
    chunks = min_chunks(text)
    if chunks > max_chunks:
        raise InvalidRequest(
            f"{field} needs at least {chunks} chunks of {CHUNK_TOKENS} tokens; the maximum is {max_chunks} "
            "(SFUMATO_MAX_PROMPT_CHUNKS)",
            param=field,
        )


def cache_key(fragments: Fragments) -> str:
    """A canonical string of a parsed prompt: equal for prompts that encode the same
    (``(red:1.0)`` and ``red``), so the prompt cache keys on what the text encoder reads."""
    if len(fragments) == 1 and fragments[0][1] == 1.0:
        return fragments[0][0]
    return "\x00".join(f"{w!r}\x01{t}" for t, w in fragments)
