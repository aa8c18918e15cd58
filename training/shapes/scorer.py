"""Reads a generated image back: background colour, the shape's colour, kind, size and position.

Deterministic and model-free, so a test can ask "did the model draw what the prompt said?"
without a second network: every pixel is named by its nearest palette colour, the background is
the commonest colour of the border, and a shape is the largest connected region of its colour,
classified by two shape moments (solidity: area over convex-hull area separates the star;
extent: area over its minimum-area box separates square, circle and triangle), with thresholds
set between the generator's own renders (``python -m training.shapes.scorer`` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from training.shapes.scenes import COLOURS, POSITIONS, SIZES, Scene, Shape

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)
#: Pixels farther than this (RGB distance) from every palette colour are named nothing.
_FAR = 110.0
#: A region smaller than this share of the image is noise, not a shape.
MIN_AREA = 0.01


@dataclass(frozen=True)
class Reading:
    """What the scorer sees in one image (None where it sees nothing)."""

    background: str | None
    colour: str | None  # of the largest non-background region
    kind: str | None
    size: str | None
    position: str | None
    area: float  # of that region, as a share of the image


def colour_names(image: np.ndarray) -> np.ndarray:
    """Index into the palette for every pixel (-1: near no palette colour)."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    distances = np.linalg.norm(pixels[:, None, :] - _PALETTE[None, :, :], axis=2)
    names = distances.argmin(axis=1)
    names[distances.min(axis=1) > _FAR] = -1
    return names.reshape(image.shape[:2])


def background_of(names: np.ndarray) -> int | None:
    border = np.concatenate([names[0], names[-1], names[1:-1, 0], names[1:-1, -1]])
    border = border[border >= 0]
    return int(np.bincount(border).argmax()) if border.size else None


def largest_region(mask: np.ndarray) -> np.ndarray | None:
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def shape_features(region: np.ndarray) -> tuple[float, float]:
    """(solidity, extent) of a region: area / convex-hull area, area / minimum-area box."""
    ys, xs = np.nonzero(region)
    # Each pixel as its four corners, so the hull covers whole pixels.
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]).astype(
        np.float64
    )
    area = float(region.sum())
    try:
        hull = ConvexHull(corners)
    except QhullError:
        return 1.0, 1.0
    points = corners[hull.vertices]
    best = float("inf")
    for i in range(len(points)):  # the minimum-area box has a side on a hull edge
        edge = points[(i + 1) % len(points)] - points[i]
        length = float(np.hypot(*edge))
        if length == 0:
            continue
        u = edge / length
        v = np.array([-u[1], u[0]])
        proj_u, proj_v = points @ u, points @ v
        best = min(best, float((proj_u.max() - proj_u.min()) * (proj_v.max() - proj_v.min())))
    return area / float(hull.volume), area / best


def classify(solidity: float, extent: float) -> str:
    """Thresholds sit between the generator's renders of each kind (see module docstring)."""
    if solidity < 0.7:
        return "star"
    if extent > 0.86:
        return "square"
    if extent > 0.66:
        return "circle"
    return "triangle"


def read(image: np.ndarray, colour: str | None = None) -> Reading:
    """What ``image`` (H x W x 3, uint8) shows. With ``colour``, the region read is the largest
    one of that colour (for scenes with two shapes); else the largest non-background one."""
    names = colour_names(image)
    background = background_of(names)
    mask = names == _NAMES.index(colour) if colour is not None else (names >= 0) & (names != background)
    if background is not None:
        mask &= names != background
    region = largest_region(mask)
    bg_name = _NAMES[background] if background is not None else None
    side = image.shape[0]
    if region is None or region.mean() < MIN_AREA:
        return Reading(bg_name, None, None, None, None, 0.0)
    region_colour = _NAMES[int(np.bincount(names[region]).argmax())]
    solidity, extent = shape_features(region)
    ys, xs = np.nonzero(region)
    cx, cy = (xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    area = float(region.mean())
    # Areas differ by kind at one size; the extent of the region does not (much).
    radius = (max(xs.max() - xs.min(), ys.max() - ys.min()) + 1) / 2 / side
    size = min(SIZES, key=lambda s: abs(SIZES[s] - radius))
    return Reading(bg_name, region_colour, classify(solidity, extent), size, position, area)


@dataclass(frozen=True)
class Score:
    """Which parts of a one-shape scene an image got right."""

    background: bool
    colour: bool
    kind: bool
    position: bool
    size: bool


def score(image: np.ndarray, scene: Scene) -> Score:
    """Compare the image with the scene its prompt described (its first shape)."""
    target: Shape = scene.shapes[0]
    reading = read(image, target.colour if len(scene.shapes) > 1 else None)
    return Score(
        background=reading.background == scene.background,
        colour=reading.colour == target.colour,
        kind=reading.colour == target.colour and reading.kind == target.kind,
        position=reading.colour == target.colour and reading.position == target.position,
        size=reading.colour == target.colour and reading.size == target.size,
    )


def _calibration(count: int = 400) -> None:
    """Print the features of the generator's own renders per kind (where the thresholds come from)."""
    from training.shapes.scenes import render, scenes

    features: dict[str, list[tuple[float, float]]] = {}
    for scene, _ in scenes(seed=12345, count=count):
        if len(scene.shapes) != 1:
            continue
        image = np.asarray(render(scene, 64))
        region = largest_region(colour_names(image) == _NAMES.index(scene.shapes[0].colour))
        if region is not None:
            features.setdefault(scene.shapes[0].kind, []).append(shape_features(region))
    for kind, values in sorted(features.items()):
        sol, ext = np.array(values).T
        print(f"{kind:9s} solidity {sol.min():.3f}..{sol.max():.3f}  extent {ext.min():.3f}..{ext.max():.3f}")


if __name__ == "__main__":
    _calibration()
