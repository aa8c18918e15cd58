"""worker.pipelines.canny on synthetic images whose edges are known: where edges appear, that they are
one pixel thin, and what the double threshold and hysteresis keep."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worker.pipelines.canny import HIGH_THRESHOLD, LOW_THRESHOLD, canny_edges, canny_image


def square(size: int = 64, lo: int = 0, hi: int = 255) -> np.ndarray:
    grey = np.full((size, size), lo, dtype=np.float64)
    grey[16:48, 16:48] = hi
    return grey


def test_a_bright_square_gives_a_closed_one_pixel_outline_at_its_border() -> None:
    edges = canny_edges(square())
    rows, cols = np.nonzero(edges)
    # Every edge pixel lies on the square's border (within one pixel: the step is between two).
    assert rows.min() >= 15 and rows.max() <= 48 and cols.min() >= 15 and cols.max() <= 48
    inside = edges[18:46, 18:46]
    assert not inside.any()
    assert not edges[:14].any() and not edges[50:].any()
    # Thin: along each side, exactly one edge pixel per row (left/right) or column (top/bottom).
    for r in range(20, 44):
        assert edges[r, 14:19].sum() == 1 and edges[r, 45:50].sum() == 1
    for c in range(20, 44):
        assert edges[14:19, c].sum() == 1 and edges[45:50, c].sum() == 1


def test_flat_and_smooth_images_have_no_edges() -> None:
    assert not canny_edges(np.full((32, 32), 128.0)).any()
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1))  # 4 levels per pixel: gradient ~16 < low
    assert not canny_edges(ramp).any()


def step(height: float, width: int = 64) -> np.ndarray:
    """A vertical step of ``height`` grey levels across the whole image (no corners)."""
    grey = np.full((40, width), 100.0)
    grey[:, width // 2 :] += height
    return grey


def test_the_double_threshold_keeps_strong_steps_and_drops_weak_ones() -> None:
    # Sobel L1 magnitude of a vertical step of height d is 4 d, on the two columns beside it.
    strong = canny_edges(step(HIGH_THRESHOLD / 4 + 5))
    assert strong[:, 31:33].all(axis=0).sum() == 1 and strong.sum() == 40  # one full-height line
    assert not canny_edges(step(LOW_THRESHOLD / 4 - 5)).any()  # below low
    # Between low and high and connected to nothing strong: dropped by hysteresis.
    assert not canny_edges(step((LOW_THRESHOLD + HIGH_THRESHOLD) / 8)).any()


def test_hysteresis_keeps_a_weak_edge_connected_to_a_strong_one() -> None:
    weak = (LOW_THRESHOLD + HIGH_THRESHOLD) / 8  # magnitude 150: between low and high
    grey = step(weak)
    grey[:20, 32:] = 100 + HIGH_THRESHOLD / 4 + 20  # the upper half of the same step is strong
    edges = canny_edges(grey)
    assert edges[25:38].any(axis=1).all()  # every row of the weak lower half is kept
    # A corner makes a strong point: even a weak square's outline is kept (as OpenCV does).
    assert canny_edges(square(lo=100, hi=100 + int(weak))).any()


def test_canny_image_is_a_white_on_black_rgb_map_of_the_same_size() -> None:
    picture = Image.new("RGB", (80, 48), (40, 60, 200))
    ImageDraw.Draw(picture).ellipse((10, 8, 50, 40), fill=(250, 240, 10))
    control = canny_image(picture)
    assert control.mode == "RGB" and control.size == (80, 48)
    pixels = np.asarray(control)
    assert set(np.unique(pixels)) == {0, 255}
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    assert 50 < (pixels[..., 0] == 255).sum() < 400  # an outline, not a filled shape


@pytest.mark.parametrize(("grey", "low", "high"), [(np.zeros((4, 4, 3)), 1, 2), (np.zeros((4, 4)), 5, 2)])
def test_bad_arguments_are_refused(grey: np.ndarray, low: float, high: float) -> None:
    with pytest.raises(ValueError):
        canny_edges(grey, low, high)
