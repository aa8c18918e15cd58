"""Scenes of one or two simple shapes on a plain background, with their captions.

Everything is a pure function of a seed, so a dataset of any size is made on the fly, the same
on every machine, and a scene can be rebuilt from its caption's parts for scoring. Colours are
few and far apart in RGB so that a scorer can name them back without ambiguity.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: Named colours, far apart in RGB (a scorer maps pixels to the nearest).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 60, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 170),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: Named positions as the centre's (x, y) in [0, 1] image coordinates.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
#: Radius as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.17, "large": 0.28}


@dataclass(frozen=True)
class Shape:
    """One shape: what it is, its colour, size word and where its centre is (fractions)."""

    kind: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two shapes (two never share a colour or a position)."""

    background: str
    shapes: tuple[Shape, ...]

    def caption(self, style: int = 0) -> str:
        """The scene in words. ``style`` picks one of a few phrasings (0: the canonical one,
        which names size and position for one shape, and left/right order for two; 3: the
        shape alone, "a red circle", so a short negative prompt means something)."""
        if len(self.shapes) == 1:
            (shape,) = self.shapes
            if style == 3:
                return f"{_article(shape.colour)} {shape.colour} {shape.kind}"
            size = "" if (style == 1 and shape.size == "large") else f"{shape.size} "
            where = (
                "" if style == 2 else ("in the center" if shape.position == "center" else f"at the {shape.position}")
            )
            words = f"{size}{shape.colour} {shape.kind}"
            head = f"{_article(words)} {words}"
            parts = [head, where, f"on {_article(self.background)} {self.background} background"]
            return " ".join(p for p in parts if p)
        left, right = sorted(self.shapes, key=lambda s: s.cx)
        first, second = f"{left.colour} {left.kind}", f"{right.colour} {right.kind}"
        return (
            f"{_article(first)} {first} and {_article(second)} {second} "
            f"on {_article(self.background)} {self.background} background"
        )


def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def sample_scene(rng: random.Random, two_shapes_share: float = 0.25) -> Scene:
    """A random scene: background, then one shape (or two, with probability ``two_shapes_share``)."""
    background = rng.choice(list(COLOURS))
    colours = [c for c in COLOURS if c != background]
    if rng.random() < two_shapes_share:
        first_colour, second_colour = rng.sample(colours, 2)
        first_kind, second_kind = rng.choice(SHAPES), rng.choice(SHAPES)
        row = rng.choice(["top", "bottom"])
        shapes = (
            _shape(first_kind, first_colour, "small", f"{row} left", rng),
            _shape(second_kind, second_colour, "small", f"{row} right", rng),
        )
        return Scene(background, shapes)
    kind, colour = rng.choice(SHAPES), rng.choice(colours)
    size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
    if size == "large":
        position = "center" if rng.random() < 0.6 else position
    return Scene(background, (_shape(kind, colour, size, position, rng),))


def _shape(kind: str, colour: str, size: str, position: str, rng: random.Random) -> Shape:
    """A shape near its named position (jittered a little, kept inside the image)."""
    x, y = POSITIONS[position]
    radius = SIZES[size]
    jitter = 0.04
    cx = min(max(x + rng.uniform(-jitter, jitter), radius + 0.02), 0.98 - radius)
    cy = min(max(y + rng.uniform(-jitter, jitter), radius + 0.02), 0.98 - radius)
    return Shape(kind, colour, size, position, cx, cy)


def outline(shape: Shape, side: float) -> list[tuple[float, float]]:
    """The polygon of a square, triangle or star in pixel coordinates (circles are ellipses)."""
    cx, cy, r = shape.cx * side, shape.cy * side, shape.radius * side
    if shape.kind == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape.kind == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape.kind == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for {shape.kind!r}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """The scene as an RGB image of ``size`` px, drawn large and downsampled (smooth edges)."""
    side = size * supersample
    image = Image.new("RGB", (side, side), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            cx, cy, r = shape.cx * side, shape.cy * side, shape.radius * side
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(outline(shape, side), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def scenes(seed: int, count: int | None = None) -> Iterator[tuple[Scene, str]]:
    """``count`` (or endless) (scene, caption) pairs from ``seed``; captions vary in phrasing."""
    rng = random.Random(seed)
    produced = 0
    while count is None or produced < count:
        scene = sample_scene(rng)
        yield scene, scene.caption(style=rng.choice((0, 0, 1, 2, 3)))
        produced += 1


def scene_key(scene: Scene) -> tuple[str, ...]:
    """What a one-shape caption pins down: kind, colour, size, position, background."""
    (shape,) = scene.shapes
    return (shape.kind, shape.colour, shape.size, shape.position, scene.background)


def evaluation_scenes(count: int = 120, seed: int = 20261204) -> list[Scene]:
    """``count`` one-shape scenes held out of training: :func:`training_scenes` never yields a
    scene with one of their keys, so their canonical captions are prompts the model never saw.
    Shapes sit exactly at their named positions."""
    rng = random.Random(seed)
    chosen: dict[tuple[str, ...], Scene] = {}
    while len(chosen) < count:
        background = rng.choice(list(COLOURS))
        colour = rng.choice([c for c in COLOURS if c != background])
        kind, size, position = rng.choice(SHAPES), rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
        x, y = POSITIONS[position]
        radius = SIZES[size]
        cx, cy = min(max(x, radius + 0.02), 0.98 - radius), min(max(y, radius + 0.02), 0.98 - radius)
        scene = Scene(background, (Shape(kind, colour, size, position, cx, cy),))
        chosen.setdefault(scene_key(scene), scene)
    return list(chosen.values())


def training_scenes(seed: int, count: int | None = None) -> Iterator[tuple[Scene, str]]:
    """Like :func:`scenes`, minus every one-shape scene whose key is held out for evaluation."""
    held_out = {scene_key(scene) for scene in evaluation_scenes()}
    produced = 0
    for scene, caption in scenes(seed):
        if len(scene.shapes) == 1 and scene_key(scene) in held_out:
            continue
        yield scene, caption
        produced += 1
        if count is not None and produced >= count:
            return
