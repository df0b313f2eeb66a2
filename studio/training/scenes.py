"""Procedural captioned scenes for training and evaluating the small text-to-image model.

A scene is one to three flat shapes on a flat background, drawn on a 64×64 canvas. Every fact a caption states is a
category chosen so that detector.py can read it back without ambiguity:

- size: the larger side of the shape's bounding box, small 11–13 px, medium 18–22 px, large 27–31 px;
- position: the centre of the shape's bounding box (not its centroid: a triangle's or a heart's would sit off the
  middle) in the 3×3 grid of 64/3 px cells, kept ≥ 3 px from every cell boundary;
- colour: one of twelve palette colours, every pair ≥ 100 apart in RGB;
- objects have distinct positions and a ≥ 4 px gap between every two boxes, so blur does not merge them.

Anti-aliasing: each shape's coverage is drawn at 4× with PIL and box-filtered down, so edge pixels hold the exact
area fraction and the image is a per-object alpha blend of flat colours.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (30, 70, 225),
    "yellow": (250, 230, 40),
    "orange": (245, 130, 20),
    "purple": (135, 45, 190),
    "pink": (250, 145, 205),
    "cyan": (40, 215, 230),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (130, 130, 130),
    "brown": (120, 70, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "heart")
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")

CANVAS = 64  # geometry below is in pixels of a 64×64 canvas; render() scales it to other sizes
SUPERSAMPLE = 4  # draw at 4× and box-filter down: exact-area anti-aliasing
SIZE_EXTENTS = {"small": (11.0, 13.0), "medium": (18.0, 22.0), "large": (27.0, 31.0)}  # larger bbox side, px
SIZE_THRESHOLDS = (15.5, 24.5)  # detector's class boundaries, midway between the extent ranges
CELL = CANVAS / 3
CELL_MARGIN = 3.0  # a bbox centre stays this far inside its grid cell
EDGE_MARGIN = 1.0  # a shape stays this far inside the canvas, so the border row shows the background
ANCHORS = (12.0, 32.0, 52.0)  # preferred bbox centre per grid column/row; jittered by ±POSITION_JITTER
POSITION_JITTER = 3.0
MIN_GAP = 4.0  # px between the boxes of two objects
RING_HOLE = 0.4  # inner/outer diameter: a small ring keeps a ~4.6 px hole inside a ~3.6 px band
STAR_INNER = 0.48  # inner/outer radius; fatter than the classic 0.38 so a small star keeps its points


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]


def grid_cell(position: str) -> tuple[int, int]:
    """(row, column) of a named position in the 3×3 grid."""
    index = POSITIONS.index(position)
    return index // 3, index % 3


def position_name(row: int, column: int) -> str:
    return POSITIONS[row * 3 + column]


# ---- geometry ---------------------------------------------------------------------------------------------------


def _centre_range(cell: int, half_extent: float) -> tuple[float, float]:
    lo = max(cell * CELL + CELL_MARGIN, EDGE_MARGIN + half_extent)
    hi = min((cell + 1) * CELL - CELL_MARGIN, CANVAS - EDGE_MARGIN - half_extent)
    anchor = min(max(ANCHORS[cell], lo), hi)
    return max(lo, anchor - POSITION_JITTER), min(hi, anchor + POSITION_JITTER)


def _layout(scene: Scene, rng: np.random.Generator | None) -> list[tuple[float, float, float]]:
    """(centre x, centre y, extent) per object; nominal values without rng, else jittered within the class."""
    boxes = []
    for obj in scene.objects:
        row, column = grid_cell(obj.position)
        lo_extent, hi_extent = SIZE_EXTENTS[obj.size]
        extent = (lo_extent + hi_extent) / 2 if rng is None else rng.uniform(lo_extent, hi_extent)
        x_range = _centre_range(column, hi_extent / 2)
        y_range = _centre_range(row, hi_extent / 2)
        if rng is None:
            boxes.append((sum(x_range) / 2, sum(y_range) / 2, extent))
        else:
            boxes.append((rng.uniform(*x_range), rng.uniform(*y_range), extent))
    return boxes


def _gap(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Separation of two boxes along the axis that separates them best (negative: they overlap)."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) - (a[2] + b[2]) / 2


def _widest_gap(first: SceneObject, second: SceneObject) -> float:
    """The gap when both objects take their largest extent and sit as far apart as their cells allow."""
    gaps = []
    for axis in (1, 0):  # 1: columns (x), 0: rows (y)
        ca, cb = grid_cell(first.position)[axis], grid_cell(second.position)[axis]
        ha, hb = SIZE_EXTENTS[first.size][1] / 2, SIZE_EXTENTS[second.size][1] / 2
        if ca == cb:
            continue
        (lo_a, hi_a), (lo_b, hi_b) = _centre_range(ca, ha), _centre_range(cb, hb)
        distance = lo_b - hi_a if ca < cb else lo_a - hi_b
        gaps.append(distance - ha - hb)
    return max(gaps, default=-math.inf)


# ---- sampling -------------------------------------------------------------------------------------------------


def sample_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    """A uniform background, 1..max_objects objects of other colours, distinct positions, room to be apart."""
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    count = int(rng.integers(1, max_objects + 1))
    while True:
        positions = rng.choice(len(POSITIONS), size=count, replace=False)
        objects = tuple(
            SceneObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=[c for c in names if c != background][rng.integers(len(names) - 1)],
                size=SIZES[rng.integers(len(SIZES))],
                position=POSITIONS[p],
            )
            for p in positions
        )
        if not all(_widest_gap(a, b) >= MIN_GAP for i, a in enumerate(objects) for b in objects[i + 1 :]):
            continue
        # with three objects each pair may need a different layout; the fallback layout (_spread) must hold them
        # all apart at once, so render_layers always finds one
        if count < 3 or _apart(_spread(Scene(background, objects))):
            return Scene(background, objects)


# ---- rendering ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _unit_outline(shape: str) -> np.ndarray:
    """Polygon (N, 2) with its bbox centred on 0 and its larger side 1; y points down."""
    if shape == "square":
        points = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float)
    elif shape == "triangle":  # equilateral, pointing up
        points = np.array([(0, -math.sqrt(3) / 2), (-1, math.sqrt(3) / 2), (1, math.sqrt(3) / 2)], float)
    elif shape == "star":  # five points, the first straight up
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif shape == "heart":  # the classic parametric heart, point down
        t = np.linspace(0, 2 * math.pi, 160, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        points = np.stack([x, y], axis=1)
    else:  # circle and ring are drawn as ellipses
        points = np.array([(-1, -1), (1, 1)], float)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) / (hi - lo).max()


def shape_alpha(shape: str, cx: float, cy: float, extent: float, size: int = CANVAS) -> np.ndarray:
    """Anti-aliased coverage (size, size) float32 in [0, 1] of one shape; coordinates in size-pixel units."""
    s = SUPERSAMPLE
    layer = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(layer)
    # PIL fills pixel (i, j) when its centre (i + 0.5, j + 0.5) is inside, hence the −0.5 shift
    centre = np.array([cx, cy]) * s - 0.5
    radius = extent * s / 2
    if shape in ("circle", "ring"):
        draw.ellipse([*(centre - radius), *(centre + radius)], fill=255)
        if shape == "ring":
            inner = radius * RING_HOLE
            draw.ellipse([*(centre - inner), *(centre + inner)], fill=0)
    else:
        points = _unit_outline(shape) * extent * s + centre
        draw.polygon([tuple(p) for p in points], fill=255)
    small = layer.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


def render_layers(scene: Scene, rng: np.random.Generator | None = None, size: int = CANVAS):
    """The image (size, size, 3) uint8 and each object's coverage (k, size, size) float32."""
    boxes = _layout(scene, rng)
    if rng is not None and len(boxes) > 1:
        # redraw the jitter until the boxes are apart; sample_scene made sure the widest layout is
        for _ in range(50):
            if _apart(boxes):
                break
            boxes = _layout(scene, rng)
        else:
            boxes = _spread(scene)
    scale = size / CANVAS
    image = np.empty((size, size, 3), np.float32)
    image[:] = COLOURS[scene.background]
    alphas = np.zeros((len(boxes), size, size), np.float32)
    for i, (obj, (cx, cy, extent)) in enumerate(zip(scene.objects, boxes)):
        alphas[i] = shape_alpha(obj.shape, cx * scale, cy * scale, extent * scale, size)
        a = alphas[i][..., None]
        image = image * (1 - a) + np.asarray(COLOURS[obj.colour], np.float32) * a
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), alphas


def _apart(boxes: list[tuple[float, float, float]]) -> bool:
    return all(_gap(a, b) >= MIN_GAP for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _spread(scene: Scene) -> list[tuple[float, float, float]]:
    """The fallback layout: largest extents, each object pushed along each axis to the far side of its cell from
    the others in other cells (the middle if they lie on both sides). For two objects this is the layout
    _widest_gap measures."""
    boxes = []
    for me in scene.objects:
        others = [o for o in scene.objects if o is not me]
        centre = []
        for axis in (1, 0):
            cell = grid_cell(me.position)[axis]
            other_cells = {grid_cell(o.position)[axis] for o in others} - {cell}
            lo, hi = _centre_range(cell, SIZE_EXTENTS[me.size][1] / 2)
            below, above = any(c < cell for c in other_cells), any(c > cell for c in other_cells)
            centre.append(lo if above and not below else hi if below and not above else (lo + hi) / 2)
        boxes.append((centre[0], centre[1], SIZE_EXTENTS[me.size][1]))
    return boxes


def render(scene: Scene, rng: np.random.Generator | None = None, size: int = CANVAS) -> np.ndarray:
    """(size, size, 3) uint8; without rng every object sits at its nominal place and size."""
    return render_layers(scene, rng, size)[0]


# ---- captions -------------------------------------------------------------------------------------------------

COLOUR_WORDS = {name: (name,) for name in COLOURS} | {"gray": ("gray", "grey")}
SHAPE_WORDS = {name: (name,) for name in SHAPES}
SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"), "large": ("large", "big")}
POSITION_WORDS = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "at the top edge"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom edge"),
    "center": ("in the center", "in the middle", "in the centre"),
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}

# Sentence templates over noun phrases {o}, {o1}, {o2} (article included), position phrases {p}, {p1}, {p2}, {P}
# (capitalised) and the background colour {bg}. The held-out ones never appear in training: evaluating on them
# asks whether the model learned the words rather than the sentences.
TRAIN_TEMPLATES = {
    1: (
        "{o} {p}, on a {bg} background",
        "{o} {p} on a {bg} background",
        "{o} {p} over a {bg} background",
        "{o} {p}, {bg} background",
        "a {bg} background with {o} {p}",
        "{o} {p} against a {bg} backdrop",
        "{P}, {o} on a {bg} background",
        "on a {bg} background, {o} {p}",
        "an image with {o} {p} and a {bg} background",
        "{o} placed {p}, background {bg}",
        "{bg} backdrop with {o} {p}",
        # the background colour without the word "background": what makes a colour the background is that no
        # shape word owns it, and these teach that rule rather than one keyword
        "{bg} behind {o} {p}",
        "{o} {p} set against {bg}",
        "{o} {p}, all over {bg}",
        "{o} {p} in front of {bg}",
    ),
    2: (
        "two shapes: {o1} {p1} and {o2} {p2}, {bg} background",
        "{o1} {p1} and {o2} {p2} on a {bg} background",
        "a {bg} background with {o1} {p1} and {o2} {p2}",
        "{o1} {p1}, {o2} {p2}, over a {bg} background",
        "{o1} {p1} plus {o2} {p2} against a {bg} backdrop",
        "on a {bg} background, {o1} {p1} and {o2} {p2}",
        "an image with {o1} {p1}, {o2} {p2} and a {bg} background",
        "{o1} placed {p1} and {o2} placed {p2}, background {bg}",
        "{bg} behind {o1} {p1} and {o2} {p2}",
        "{o1} {p1} and {o2} {p2} set against {bg}",
    ),
}
HELD_OUT_TEMPLATES = {
    1: (
        "there is {o} {p}, and the background is {bg}",
        "{bg} background; {o} {p}",
        "a picture of {o} {p} on plain {bg}",
        "{o} {p} of a {bg} canvas",
    ),
    2: (
        "there are two objects, {o1} {p1} and {o2} {p2}; the background is {bg}",
        "{bg} background; {o1} {p1}, {o2} {p2}",
        "a picture of {o1} {p1} together with {o2} {p2} on plain {bg}",
    ),
}
# noun phrases; {s} size, {c} colour, {h} shape. Training drops the size now and then (the model then learns what
# a caption without one means); held-out phrases always carry every fact, so a detector can score all of them.
# Some training phrases put the colour or size after the shape, so word order alone cannot carry the meaning.
TRAIN_NOUNS = ("{s} {c} {h}", "{s} {c} {h}", "{s} {c} {h}", "{s}, {c} {h}", "{c} {h}, {s}", "{s} {h} that is {c}",
               "{s} {h} colored {c}")
TRAIN_NOUN_WITHOUT_SIZE = "{c} {h}"
TRAIN_DROP_SIZE = 0.1
HELD_OUT_NOUNS = ("{s} {h} in {c}", "{c} {h} of {s} size")


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def fix_articles(text: str) -> str:
    """"a orange background" -> "an orange background"."""
    return re.sub(r"\b([aA]) (?=[aeiou])", r"\1n ", text)


def noun_phrase(obj: SceneObject, rng: np.random.Generator, held_out: bool) -> str:
    if held_out:
        template = _pick(rng, HELD_OUT_NOUNS)
        size = obj.size if "size" in template else _pick(rng, SIZE_WORDS[obj.size])  # not "medium-sized size"
    else:
        template = TRAIN_NOUN_WITHOUT_SIZE if rng.random() < TRAIN_DROP_SIZE else _pick(rng, TRAIN_NOUNS)
        size = _pick(rng, SIZE_WORDS[obj.size])
    return "a " + template.format(s=size, c=_pick(rng, COLOUR_WORDS[obj.colour]), h=obj.shape)


def caption(scene: Scene, rng: np.random.Generator, held_out: bool = False) -> str:
    templates = (HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)[len(scene.objects)]
    template = _pick(rng, templates)
    objects = list(scene.objects)
    if len(objects) > 1:
        objects = [objects[i] for i in rng.permutation(len(objects))]
    nouns = [noun_phrase(obj, rng, held_out) for obj in objects]
    places = [_pick(rng, POSITION_WORDS[obj.position]) for obj in objects]
    fields = {"bg": _pick(rng, COLOUR_WORDS[scene.background])}
    if len(objects) == 1:
        fields |= {"o": nouns[0], "p": places[0], "P": places[0][0].upper() + places[0][1:]}
    else:
        fields |= {"o1": nouns[0], "p1": places[0], "o2": nouns[1], "p2": places[1]}
    text = template.format(**fields)
    return fix_articles(text)


# Training captions sometimes carry a word or two that says nothing about the scene, drawn from CLIP's whole
# vocabulary. Most of those tokens are seen a handful of times, so their embeddings stay close to their random
# start: the model learns to read the facts around words it does not know (a user's "a picture of …", "plain",
# "canvas") instead of being thrown by them. Words of the held-out sentences and every word a template or a fact
# uses are excluded, so the held-out test still never sees a word it was trained on for that purpose.
FILLER_CHANCE = 0.3  # share of training captions with filler; a third of those get two words
_WORD = re.compile(r"[a-z]+")


def caption_words() -> frozenset[str]:
    """Every word that a template, a noun phrase or a fact can put into a caption, training or held out."""
    texts = [t for group in (TRAIN_TEMPLATES, HELD_OUT_TEMPLATES) for ts in group.values() for t in ts]
    texts += [*TRAIN_NOUNS, TRAIN_NOUN_WITHOUT_SIZE, *HELD_OUT_NOUNS]
    for table in (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, POSITION_WORDS):
        texts += [phrase for phrases in table.values() for phrase in phrases]
    words = {w for text in texts for w in _WORD.findall(re.sub(r"\{\w+\}", " ", text.lower()))}
    return frozenset(words | {"an"})


def with_filler(text: str, rng: np.random.Generator, vocabulary: tuple[str, ...]) -> str:
    """text with 0–2 words from vocabulary inserted at random word boundaries (FILLER_CHANCE of the time)."""
    if not vocabulary or rng.random() >= FILLER_CHANCE:
        return text
    words = text.split(" ")
    for _ in range(1 + (rng.random() < 1 / 3)):
        words.insert(int(rng.integers(len(words) + 1)), _pick(rng, vocabulary))
    return " ".join(words)


# ---- batches --------------------------------------------------------------------------------------------------


def make_batch(seed: int, n: int, held_out: bool = False) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n scenes, their images (n, 64, 64, 3) uint8 and captions; the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, CANVAS, CANVAS, 3), np.uint8)
    captions, scenes = [], []
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render(scene, rng)
        captions.append(caption(scene, rng, held_out))
        scenes.append(scene)
    return images, captions, scenes


# ---- inpainting masks -----------------------------------------------------------------------------------------

MASK_COVERAGE = (0.10, 0.60)


def random_mask(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """(size, size) bool, True = repaint: a box, blobs, brush strokes or a mix, covering 10–60% of the image."""
    lo, hi = MASK_COVERAGE
    for _ in range(100):
        target = rng.uniform(lo + 0.02, hi - 0.05)
        kind = _pick(rng, ("box", "blob", "stroke", "mix"))
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        for _ in range(12):  # add elements until the target coverage is reached
            coverage = np.count_nonzero(np.asarray(layer)) / size**2
            if coverage >= target - 0.03:  # close enough: a last speck of a box or blob looks like noise
                break
            element = _pick(rng, ("box", "blob", "stroke")) if kind == "mix" else kind
            missing = (target - coverage) * size**2  # area still wanted, px
            {"box": _draw_box, "blob": _draw_blob, "stroke": _draw_stroke}[element](draw, rng, size, missing)
        mask = np.asarray(layer) > 0
        if lo <= mask.mean() <= hi:
            return mask
    raise RuntimeError("random_mask found no mask within its coverage bounds")  # never seen in practice


def _draw_box(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, missing: float) -> None:
    area = min(missing * rng.uniform(0.8, 1.2), 0.55 * size**2)
    aspect = math.exp(rng.uniform(-0.7, 0.7))
    w = min(size, max(4.0, math.sqrt(area * aspect)))
    h = min(size, max(4.0, area / w))
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    draw.rectangle([x, y, x + w, y + h], fill=255)


def _draw_blob(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, missing: float) -> None:
    # a star-shaped region r(θ) = R·(1 + Σ a_k cos(kθ + φ_k)) with a few low harmonics
    area = min(missing * rng.uniform(0.5, 1.0), 0.45 * size**2)
    radius = max(3.0, math.sqrt(area / math.pi))
    theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 5):
        r += rng.uniform(0, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
    points = np.stack([cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)], axis=1)
    draw.polygon([tuple(p) for p in points], fill=255)


def _draw_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, missing: float) -> None:
    # a brush stroke: a wide polyline doing a smooth random walk, with round joints
    width = int(rng.uniform(0.06, 0.16) * size) + 2
    length = min(missing / width * rng.uniform(0.6, 1.0), 3.0 * size)
    steps = max(2, int(length / (0.12 * size)))
    point = rng.uniform(0.15 * size, 0.85 * size, size=2)
    heading = rng.uniform(0, 2 * math.pi)
    points = [tuple(point)]
    for _ in range(steps):
        heading += rng.normal(0, 0.6)
        point = np.clip(point + 0.12 * size * np.array([math.cos(heading), math.sin(heading)]), 0, size - 1)
        points.append(tuple(point))
    draw.line(points, fill=255, width=width, joint="curve")
    for x, y in (points[0], points[-1]):  # round caps
        draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
