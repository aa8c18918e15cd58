"""core.scheduler_names: canonical names, A1111 spellings, and a teaching error."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest, UnknownChoice
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES, canonical_scheduler

CANONICAL = sorted(SCHEDULER_DISPLAY_NAMES)


def test_the_canonical_set() -> None:
    assert set(CANONICAL) == {
        "ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "unipc",
        "lcm", "tcd",
    }  # fmt: skip


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_names_map_to_themselves(name: str) -> None:
    assert canonical_scheduler(name) == name


@pytest.mark.parametrize("name", CANONICAL)
def test_display_names_fold_back_to_canonical(name: str) -> None:
    assert canonical_scheduler(SCHEDULER_DISPLAY_NAMES[name]) == name


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "dpmpp_2m"),
        ("dpm++_2m_karras", "dpmpp_2m_karras"),
        ("DPM++2M Karras", "dpmpp_2m_karras"),
        ("Euler a", "euler_a"),
        ("Euler A", "euler_a"),
        ("euler-ancestral", "euler_a"),
        ("k_euler_a", "euler_a"),
        ("Euler", "euler"),
        ("k_lms", "lms"),
        ("LMS", "lms"),
        ("Heun", "heun"),
        ("DDIM", "ddim"),
        ("DDPM", "ddpm"),
        ("UniPC", "unipc"),
        ("uni-pc", "unipc"),
        ("PLMS", "pndm"),
        ("PNDM", "pndm"),
        ("  ddim  ", "ddim"),
    ],
)
def test_a1111_and_common_spellings(spelling: str, canonical: str) -> None:
    assert canonical_scheduler(spelling) == canonical


@pytest.mark.parametrize("name", ["DPM++ SDE Karras", "Restart", "", "euler_b"])
def test_unknown_scheduler_lists_valid_names(name: str) -> None:
    with pytest.raises(UnknownChoice) as info:
        canonical_scheduler(name)
    err = info.value
    assert isinstance(err, InvalidRequest)  # maps to a 4xx like any invalid request
    assert err.code == "unknown_choice" and err.param == "scheduler"
    assert repr(name) in err.message
    for valid in CANONICAL:
        assert valid in err.message
