"""grow_mask: dilation by a disk, against its definition, at the image border, and as everyone uses it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from studio.engine.inpaint import prepare_mask
from studio.engine.masks import grow_mask


def dilate_by_definition(mask: np.ndarray, r: int) -> np.ndarray:
    """Every pixel within Euclidean distance r of a mask pixel, inside the image (X ⊕ B_r, clipped)."""
    h, w = mask.shape
    ys, xs = np.mgrid[:h, :w]
    out = np.zeros((h, w), bool)
    for y, x in zip(*np.nonzero(mask)):
        out |= (ys - y) ** 2 + (xs - x) ** 2 <= r * r
    return out


@settings(max_examples=150, deadline=None)
@given(
    mask=st.integers(1, 24).flatmap(lambda h: st.integers(1, 24).flatmap(
        lambda w: arrays(bool, (h, w), elements=st.booleans()))),
    r=st.integers(0, 30),
)
def test_grow_mask_is_the_dilation_by_a_disk(mask, r):
    assert np.array_equal(grow_mask(mask, r), dilate_by_definition(mask, r))


def test_the_disk_of_radius_three_has_29_pixels():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    assert grow_mask(mask, 3).sum() == 29  # lattice points with x² + y² ≤ 9


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_growing_never_wraps_around_the_image_edge(side):
    """Regression: evaluate.py's old dilation (np.roll) carried an object touching one edge to the opposite one."""
    mask = np.zeros((64, 64), bool)
    edge = {"left": (slice(20, 30), 0), "right": (slice(20, 30), -1),
            "top": (0, slice(20, 30)), "bottom": (-1, slice(20, 30))}[side]
    mask[edge] = True
    grown = grow_mask(mask, 2)
    opposite = {"left": grown[:, -3:], "right": grown[:, :3], "top": grown[-3:], "bottom": grown[:3]}[side]
    assert not opposite.any()
    assert grown.sum() == dilate_by_definition(mask, 2).sum()


def test_non_binary_masks_and_no_growth():
    mask = np.zeros((8, 8), np.float32)
    mask[3, 3] = 0.25  # anything non-zero is inside
    assert grow_mask(mask, 0).sum() == 1 and grow_mask(mask, 0).dtype == bool
    assert not grow_mask(np.zeros((8, 8)), 5).any()


def test_the_engine_grows_masks_the_same_way():
    mask = np.zeros((32, 32), np.float32)
    mask[10:12, 20:23] = 1.0
    mask[0, 0] = 0.4  # below the binarisation threshold
    edit = prepare_mask(mask, (32, 32), grow=4, feather=0).edit
    assert edit.dtype == np.float32
    assert np.array_equal(edit > 0, grow_mask(mask >= 0.5, 4))
