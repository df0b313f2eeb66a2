"""The mask's tint: of a few clearly different colours, the one that stands out most against the picture under it.

A red mask on a pink picture is hard to see (issue #18). Each candidate is scored by how far it lies from the
picture's pixels in CIELAB (ΔE*ab, CIE 1976: a distance close to how different two colours look), taking a low
percentile rather than the mean so the tint stands out on nearly all of the picture, not only on average.
"""

from __future__ import annotations

import numpy as np

TINTS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 96),  # red-pink: the tint the canvas has always used, kept when the picture allows it
    (40, 200, 90),  # green
    (40, 110, 255),  # blue
    (255, 210, 0),  # yellow
)
SAMPLES = 4096  # pixels looked at; a 4-megapixel picture costs no more than a 64 px one
PERCENTILE = 10
# Another tint replaces the usual one only when it stands out this much more: on grey, white or black pictures
# every candidate is visible and the familiar red-pink stays. Pink (255, 180, 200), the picture in the issue:
# red-pink 55 ΔE, green 102 → green.
SWITCH_RATIO = 1.5


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB → (..., 3) CIELAB under D65 (IEC 61966-2-1 transfer curve, CIE 1976 L*a*b*)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])  # D65 white
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def contrasting_tint(image: np.ndarray | None) -> tuple[int, int, int]:
    """The tint (from TINTS) farthest from nearly every pixel of `image` (HxWx3 uint8); the first one unless
    another is clearly farther, and for no image."""
    if image is None or image.size == 0:
        return TINTS[0]
    pixels = np.asarray(image, dtype=np.uint8).reshape(-1, 3)
    if len(pixels) > SAMPLES:
        pixels = pixels[np.linspace(0, len(pixels) - 1, SAMPLES).astype(np.int64)]  # evenly spread, deterministic
    lab = _srgb_to_lab(pixels)
    tints = _srgb_to_lab(np.array(TINTS, dtype=np.uint8))
    distances = np.linalg.norm(lab[None, :, :] - tints[:, None, :], axis=-1)  # (tints, pixels) ΔE*ab
    scores = np.percentile(distances, PERCENTILE, axis=1)
    best = int(np.argmax(scores))
    return TINTS[best] if scores[best] >= SWITCH_RATIO * scores[0] else TINTS[0]
