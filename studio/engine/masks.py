"""Growing a mask: the one dilation used wherever a mask is grown (numpy only, no torch).

Inpainting's `grow`, the canvas's preview of it and the training data's object regions all dilate by a disk:
X ⊕ B_r with B_r = {(dy, dx) : dy² + dx² ≤ r²}, the Minkowski sum of mathematical morphology (Serra 1982, "Image
Analysis and Mathematical Morphology", ch. II), i.e. every pixel within Euclidean distance r of the mask. Pixels
beyond the image border count as outside the mask: nothing wraps around from one edge to the other.

The disk is the union of its rows, a horizontal segment of half-width ⌊√(r² − dy²)⌋ at each offset dy, so
X ⊕ B_r = ∪_dy shift_dy(X ⊕ segment(dy)); a binary row dilated by a segment is a window sum > 0, read off one
prefix sum per row. That is 2r + 1 vectorised passes over the image, whatever the disk's area.
"""

from __future__ import annotations

import math

import numpy as np


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The HxW boolean mask of pixels within `pixels` px (Euclidean) of a non-zero pixel of `mask`."""
    inside = np.asarray(mask) != 0
    if inside.ndim != 2:
        raise ValueError(f"grow_mask takes an HxW mask, got shape {inside.shape}")
    r = int(pixels)
    if r <= 0 or not inside.any():
        return inside
    h, w = inside.shape
    # prefix[y, r + i] = number of mask pixels in row y left of column i, constant beyond both ends
    prefix = np.zeros((h, w + 1 + 2 * r), np.int32)
    np.cumsum(inside, axis=1, out=prefix[:, r + 1 : r + 1 + w])
    prefix[:, r + 1 + w :] = prefix[:, r + w : r + w + 1]
    out = np.zeros_like(inside)
    for dy in range(min(r, h - 1) + 1):
        half = math.isqrt(r * r - dy * dy)
        # row_hit[y, x]: some mask pixel in row y lies in columns x − half .. x + half
        row_hit = prefix[:, r + half + 1 : r + half + 1 + w] > prefix[:, r - half : r - half + w]
        out[: h - dy] |= row_hit[dy:]  # the mask row dy below reaches up to this one
        if dy:
            out[dy:] |= row_hit[: h - dy]  # ... and the one dy above reaches down
    return out


FEATHER_LEVELS = 16  # distance thresholds a wide feather is measured at (its ramp has at most this many steps)


def feather_inward(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Soft edge *inside* the painted region: HxW float32 weights, exactly 0 on every pixel not painted.

    The weight of a painted pixel rises with its Euclidean distance d to the nearest unpainted one, w =
    smoothstep(d / pixels) (3u² − 2u³), so a feather never reaches outside what the user painted and every
    unpainted pixel comes back bit for bit. The image border counts as painted (a mask that touches the edge stays
    full there). d is measured by dilating the unpainted region with `grow_mask` at up to FEATHER_LEVELS radii; a
    stroke thinner than twice the feather never reaches weight 1 (it is pasted partly, never dropped)."""
    inside = np.asarray(mask) != 0
    radius = float(pixels)
    if radius <= 0 or not inside.any():
        return inside.astype(np.float32)
    outside = ~inside
    levels = min(int(math.ceil(radius)), FEATHER_LEVELS)
    distance = np.full(inside.shape, radius, np.float32)  # painted pixels at least `radius` deep: weight 1
    reached = outside
    for k in range(1, levels + 1):
        r = max(1, int(math.ceil(k * radius / levels)))
        near = grow_mask(outside, r) & ~reached  # first reached at this radius: r − (one level) < d ≤ r
        distance[near] = min(r, radius)
        reached = reached | near
    u = np.clip(distance / radius, 0.0, 1.0)
    weights = u * u * (3 - 2 * u)
    weights[outside] = 0.0
    return weights.astype(np.float32)
