"""The canvas's mask preview grows the mask exactly as the engine does before sampling."""

from __future__ import annotations

import numpy as np

from studio.engine.inpaint import prepare_mask
from studio.ui.mask_ops import effective_mask


def test_preview_grows_exactly_as_the_engine():
    gray = np.zeros((40, 50), np.uint8)
    gray[5:9, 0:6] = 255  # touches the left edge: nothing may appear at the right one
    gray[30, 45] = 200
    gray[20, 20] = 100  # below mid-grey: not part of the mask
    for grow in (0, 1, 3, 7):
        preview = effective_mask(gray, grow, 0)
        edit = prepare_mask(gray / 255.0, gray.shape, grow, 0).edit
        assert preview.dtype == np.uint8
        assert np.array_equal(preview == 255, edit == 1) and np.array_equal(preview == 0, edit == 0)
