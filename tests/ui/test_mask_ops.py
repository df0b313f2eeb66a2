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


def test_preview_feathers_exactly_as_the_engine_and_never_outside_the_paint():
    gray = np.zeros((40, 50), np.uint8)
    gray[8:30, 10:40] = 255
    for grow, feather in ((0, 4.0), (3, 9.5)):
        preview = effective_mask(gray, grow, feather)
        blend = prepare_mask(gray / 255.0, gray.shape, grow, feather).blend
        assert np.array_equal(preview, np.rint(blend * 255).astype(np.uint8))
        grown = prepare_mask(gray / 255.0, gray.shape, grow, 0).edit
        assert (preview[grown == 0] == 0).all() and (0 < preview[grown == 1]).any() and preview.max() == 255
