"""Mask previews on the UI thread: the mask the model will actually see, grown and feathered.

Both steps are the engine's own (`grow_mask`, a dilation by a disk, and `feather_inward`, a soft edge that stays
inside the painted region; studio/engine/masks.py), so the preview and the run agree pixel for pixel.
"""

from __future__ import annotations

import numpy as np

from ..engine import feather_inward, grow_mask


def effective_mask(gray: np.ndarray, grow_px: int, feather_px: float) -> np.ndarray:
    """The uint8 mask as the engine prepares it: binarised at the middle grey, grown by `grow_px`, feathered inward."""
    weights = feather_inward(grow_mask(gray >= 128, grow_px), feather_px)
    return np.rint(weights * 255).astype(np.uint8)
