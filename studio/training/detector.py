"""Read a scene back from a 64×64 image: the judge of what the trained model drew.

The renderer (scenes.py) blends flat shapes over a flat background with anti-aliased coverage α; the detector
inverts that blend, then fits the renderer's own shapes to the coverage it recovered:

1. background: the median of the outermost pixel ring (shapes stay ≥ 1 px off the border), named by the nearest
   palette colour;
2. objects: pixels farther than FOREGROUND_DISTANCE from the background, split into 8-connected components;
   specks under MIN_AREA px are noise;
3. colour: the palette colour whose blend line background→colour best explains the component's purest pixels
   (residual off the line + SHORTFALL_WEIGHT × how far short of the colour they stop). Plain nearest-colour would
   call a blurred thin yellow ring on red "orange"; the line fit sees a yellow that is 75% there;
4. coverage: α = projection of (pixel − background) onto (colour − background), the inverse of the blend;
   its sum is the shape's area and its weighted mean the shape's centroid, both unchanged by blur;
5. shape: for each of the six shapes, the renderer's own shape at the extent that gives the measured area,
   centred at the measured centroid, sharp and blurred; the one with the least L1 error to α wins;
6. size and position: that shape's extent (larger bbox side) against scenes.SIZE_THRESHOLDS, and its bbox centre
   in the 3×3 grid: the generator's own definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from ..engine.masks import grow_mask
from .scenes import CANVAS, CELL, COLOURS, SHAPES, SIZE_THRESHOLDS, Scene, SceneObject, grid_cell, position_name
from .scenes import shape_alpha

FOREGROUND_DISTANCE = 45.0  # RGB distance; palette colours are ≥ 100 apart, σ = 8 noise rarely passes 35
MIN_AREA = 12  # px; the smallest shape, a small star, covers ~45
CORE_QUANTILE = 75  # the purest quarter of a component's pixels names its colour
SHORTFALL_WEIGHT = 0.4  # 1 would be plain nearest colour, 0 a pure line fit that cannot tell orange from 50% yellow
TEMPLATE_BLURS = (0.0, 1.0, 1.5, 2.0)  # Gaussian σ (px) the fitted shapes are tried under

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], np.float32)


@dataclass(frozen=True)
class Detection:
    background: str
    objects: tuple[SceneObject, ...]


def nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32), axis=1)))]


def blend_colour(rgb: np.ndarray, background_rgb: np.ndarray, background: str) -> str:
    """The palette colour c ≠ background for which rgb ≈ background + α·(c − background) with α near 1."""
    costs = []
    for name, colour in zip(_PALETTE_NAMES, _PALETTE):
        if name == background:
            costs.append(np.inf)
            continue
        direction = colour - background_rgb
        length = float(np.linalg.norm(direction)) or 1.0
        alpha = float(np.clip((rgb - background_rgb) @ direction / length**2, 0, 1))
        residual = float(np.linalg.norm(rgb - background_rgb - alpha * direction))
        costs.append(residual + SHORTFALL_WEIGHT * (1 - alpha) * length)
    return _PALETTE_NAMES[int(np.argmin(costs))]


def detect(image: np.ndarray) -> Detection:
    if image.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"expected a ({CANVAS}, {CANVAS}, 3) image, got {image.shape}")
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    offset = pixels - background_rgb
    # grouping and colour naming look at a 3×3 mean, so pixel noise neither makes specks nor tints the colour
    smooth = _box3(pixels)
    distance = np.linalg.norm(smooth - background_rgb, axis=-1)
    labels, count = connected_components(distance > FOREGROUND_DISTANCE)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    objects = []
    for k in range(1, count + 1):
        if areas[k] < MIN_AREA:
            continue
        component = labels == k
        core = component & (distance >= np.percentile(distance[component], CORE_QUANTILE))
        core_rgb = np.median(smooth[core], axis=0)
        colour = blend_colour(core_rgb, background_rgb, background)
        # α along the measured object direction; its unit is the larger of the measured and the palette distance,
        # so a thin shape that blur left without one pure pixel is not inflated to full coverage
        direction = core_rgb - background_rgb
        full = np.asarray(COLOURS[colour], np.float32) - np.asarray(COLOURS[background], np.float32)
        length = max(float(np.linalg.norm(direction)), float(np.linalg.norm(full)), 1.0)
        # the anti-aliased and blurred rim lies within 2 px of the component; other objects are ≥ 4 px away
        region = grow_mask(component, 2) & ~grow_mask((labels > 0) & ~component, 1)
        alpha = np.clip(offset @ (direction / length) / length, -0.5, 1.5) * region
        objects.append(SceneObject(colour=colour, **_fit_shape(alpha, region)))
    objects.sort(key=lambda obj: grid_cell(obj.position))
    return Detection(background, tuple(objects))


def _fit_shape(alpha: np.ndarray, region: np.ndarray) -> dict[str, str]:
    mass = max(float(alpha.sum()), 1.0)  # unclipped below 0, so noise adds nothing on average
    weights = np.clip(alpha, 0, 1)
    ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]] + 0.5  # pixel centres
    centroid = np.array([(weights * xs).sum(), (weights * ys).sum()]) / max(float(weights.sum()), 1e-6)
    target = np.clip(alpha, 0, 1)
    best = None
    for shape in SHAPES:
        unit_area, unit_offset = _unit_moments(shape)
        extent = float(np.clip(np.sqrt(mass / unit_area), 4.0, 48.0))
        centre = centroid - unit_offset * extent  # bbox centre = centroid − (centroid − bbox centre)
        sharp = shape_alpha(shape, centre[0], centre[1], extent)
        for blur in TEMPLATE_BLURS:
            template = _blur(sharp, blur) * region
            error = float(np.abs(template - target).sum())
            if best is None or error < best[0]:
                best = (error, shape, extent, centre)
    _, shape, extent, (cx, cy) = best
    size = "small" if extent < SIZE_THRESHOLDS[0] else "medium" if extent < SIZE_THRESHOLDS[1] else "large"
    column, row = (min(max(int(v // CELL), 0), 2) for v in (cx, cy))
    return {"shape": shape, "size": size, "position": position_name(row, column)}


@lru_cache(maxsize=None)
def _unit_moments(shape: str) -> tuple[float, np.ndarray]:
    """Area and (centroid − bbox centre) of the shape at extent 1, measured on a fine render."""
    side, extent = 256, 200.0
    alpha = shape_alpha(shape, side / 2, side / 2, extent, size=side)
    ys, xs = np.mgrid[:side, :side] + 0.5
    mass = float(alpha.sum())
    centroid = np.array([(alpha * xs).sum(), (alpha * ys).sum()]) / mass
    return mass / extent**2, (centroid - side / 2) / extent


def _box3(pixels: np.ndarray) -> np.ndarray:
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    return sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    if not sigma:
        return alpha
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(alpha, radius, mode="edge")
    rows = sum(w * padded[:, i : i + alpha.shape[1]] for i, w in enumerate(kernel))
    return sum(w * rows[i : i + alpha.shape[0]] for i, w in enumerate(kernel)).astype(np.float32)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labels 1..count (0 = outside), numbered in raster order of their first pixel."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        stack = [start]
        while stack:
            y, x = stack.pop()
            for ny in range(max(y - 1, 0), min(y + 2, height)):
                for nx in range(max(x - 1, 0), min(x + 2, width)):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = count
                        stack.append((ny, nx))
    return labels, count


# ---- scoring --------------------------------------------------------------------------------------------------


def score(scene: Scene, detection: Detection) -> dict[str, bool]:
    """Which facts of the scene the detection got right: background, colour, shape, size, position.

    Objects are paired greedily: of all (true, detected) pairs, the one closest in the grid (Chebyshev distance
    between cells, a colour mismatch adding ½) is paired first, then the closest of the rest, and so on. An object
    attribute counts as right only if every true object is paired and right in it; a missing or an extra object
    (a count mismatch) makes all four object attributes wrong.
    """
    truth, found = list(scene.objects), list(detection.objects)
    pairs = sorted((_pair_cost(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found))
    matched: dict[int, SceneObject] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if i not in matched and j not in used:
            matched[i] = found[j]
            used.add(j)
    complete = len(found) == len(truth) and len(matched) == len(truth)
    result = {"background": detection.background == scene.background}
    for attribute in ("colour", "shape", "size", "position"):
        result[attribute] = complete and all(
            getattr(truth[i], attribute) == getattr(matched[i], attribute) for i in range(len(truth))
        )
    return result


def _pair_cost(truth: SceneObject, found: SceneObject) -> float:
    (r0, c0), (r1, c1) = grid_cell(truth.position), grid_cell(found.position)
    return max(abs(r0 - r1), abs(c0 - c1)) + 0.5 * (truth.colour != found.colour)
