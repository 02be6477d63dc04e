"""Procedurally drawn scenes with captions and structured attributes.

A scene is a 64x64 RGB image with a flat background (black, white, gray or blue) and one or two
shapes (never of the background's color). Each shape
occupies one of five *slots* (left, right, top, bottom, center), so the structured
attributes are: the background color plus, for each slot, ``shape`` (or none), ``color``
and ``size``. Captions are produced from templates; two-shape scenes always use a
left/right or top/bottom pair so shapes never overlap. Everything is a pure function of
the seed: ``SceneDataset(n, seed)[i]`` is the same image on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"black": (15, 15, 15), "white": (245, 245, 245), "gray": (128, 128, 128), "blue": (40, 80, 220)}
SIZES = {"small": 7.0, "large": 12.0}
SLOTS = {"left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "center": (32, 32)}
SLOT_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top",
               "bottom": "at the bottom", "center": "in the center"}
PAIRS = (("left", "right"), ("top", "bottom"))
IMAGE_SIZE = 64

SHAPE_NAMES = list(SHAPES)
COLOR_NAMES = list(COLORS)
BACKGROUND_NAMES = list(BACKGROUNDS)
SIZE_NAMES = list(SIZES)
SLOT_NAMES = list(SLOTS)


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    size: str
    slot: str


@dataclass(frozen=True)
class SceneSpec:
    background: str
    shapes: tuple[ShapeSpec, ...]

    def caption(self) -> str:
        parts = [f"a {s.size} {s.color} {s.shape} {SLOT_PHRASE[s.slot]}" for s in self.shapes]
        return " and ".join(parts) + f", {self.background} background"

    def labels(self) -> dict[str, np.ndarray]:
        """Judge targets: background index, per-slot shape (0 = none, k+1 = SHAPES[k]), color, size."""
        shape = np.zeros(len(SLOTS), np.int64)
        color = np.full(len(SLOTS), -100, np.int64)  # -100 = ignored by cross-entropy
        size = np.full(len(SLOTS), -100, np.int64)
        for s in self.shapes:
            k = SLOT_NAMES.index(s.slot)
            shape[k] = SHAPE_NAMES.index(s.shape) + 1
            color[k] = COLOR_NAMES.index(s.color)
            size[k] = SIZE_NAMES.index(s.size)
        return {"background": np.int64(BACKGROUND_NAMES.index(self.background)),
                "shape": shape, "color": color, "size": size}


def sample_spec(rng: np.random.Generator, two_shape_prob: float = 0.35) -> SceneSpec:
    """Draw a random scene description."""
    bg = BACKGROUND_NAMES[rng.integers(len(BACKGROUNDS))]
    if rng.random() < two_shape_prob:
        slots = PAIRS[rng.integers(len(PAIRS))]
    else:
        slots = (SLOT_NAMES[rng.integers(len(SLOTS))],)
    colors = [c for c in COLOR_NAMES if c != bg]  # a shape never has the background's color
    shapes = tuple(
        ShapeSpec(SHAPE_NAMES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))],
                  SIZE_NAMES[rng.integers(len(SIZES))], slot)
        for slot in slots
    )
    return SceneSpec(bg, shapes)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)]
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(spec: SceneSpec, rng: np.random.Generator | None = None, jitter: int = 2) -> np.ndarray:
    """Render a scene to a (64, 64, 3) uint8 array. ``rng`` adds position/size jitter."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[spec.background])
    draw = ImageDraw.Draw(img)
    for s in spec.shapes:
        cx, cy = SLOTS[s.slot]
        r = SIZES[s.size]
        if rng is not None and jitter:
            cx += rng.integers(-jitter, jitter + 1)
            cy += rng.integers(-jitter, jitter + 1)
            r += rng.uniform(-1.0, 1.0)
        fill = COLORS[s.color]
        if s.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(s.shape, cx, cy, r), fill=fill)
    return np.asarray(img, dtype=np.uint8)


class SceneDataset:
    """``n`` deterministic scenes: item i depends only on (seed, i)."""

    def __init__(self, n: int, seed: int = 0, two_shape_prob: float = 0.35):
        if n <= 0:
            raise ValueError(f"n must be > 0, got {n}")
        self.n, self.seed, self.two_shape_prob = n, seed, two_shape_prob

    def __len__(self) -> int:
        return self.n

    def spec(self, i: int) -> SceneSpec:
        return sample_spec(np.random.default_rng([self.seed, i, 0]), self.two_shape_prob)

    def __getitem__(self, i: int) -> tuple[np.ndarray, SceneSpec]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        spec = self.spec(i)
        return render(spec, np.random.default_rng([self.seed, i, 1])), spec

    def arrays(self) -> tuple[np.ndarray, list[SceneSpec]]:
        """All images as (n, 64, 64, 3) uint8 plus their specs."""
        items = [self[i] for i in range(self.n)]
        return np.stack([im for im, _ in items]), [s for _, s in items]


def parse_caption(caption: str) -> SceneSpec:
    """Inverse of :meth:`SceneSpec.caption` for template captions (used to judge prompt adherence).

    Raises ``ValueError`` if the caption is not in the template language.
    """
    text = caption.strip().lower()
    if ", " not in text or not text.endswith(" background"):
        raise ValueError(f"prompt {caption!r} is not a scene caption ('..., <color> background')")
    body, bg = text.rsplit(", ", 1)
    bg = bg[: -len(" background")]
    if bg not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUND_NAMES}, got {bg!r}")
    shapes = []
    phrase_to_slot = {v: k for k, v in SLOT_PHRASE.items()}
    for part in body.split(" and "):
        words = part.split(" ", 4)
        if len(words) != 5 or words[0] != "a" or words[4] not in phrase_to_slot:
            raise ValueError(f"cannot parse {part!r} as 'a <size> <color> <shape> <where>'")
        _, size, color, shape, where = words
        if size not in SIZES or color not in COLORS or shape not in SHAPES:
            raise ValueError(f"unknown attribute in {part!r}")
        shapes.append(ShapeSpec(shape, color, size, phrase_to_slot[where]))
    return SceneSpec(bg, tuple(shapes))


def caption_vocabulary() -> list[str]:
    """Every word the caption templates can produce (the text tokenizer's vocabulary)."""
    words = {"a", "and", "background", ",", "on", "the", "at", "in"}
    words |= set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(SIZES) | set(SLOTS)
    return sorted(words)
