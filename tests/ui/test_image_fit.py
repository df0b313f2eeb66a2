"""Fitting a picture to the model's size multiple: fit_to_multiple (properties), fit_for_model, the crop-or-pad offer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton, QWidget

from studio.ui.dialogs import ask_crop_or_pad, crop_or_pad_text
from studio.ui.image_io import fit_for_model, fit_to_multiple, fitted_size

# sides from 1 px, multiples from 1 (anything fits) past SD's 8; channels: none (a mask), grey, RGB, RGBA
sides = st.integers(1, 70)
multiples = st.sampled_from([1, 2, 3, 4, 7, 8, 16])
channels = st.sampled_from([None, 1, 3, 4])
SETTINGS = settings(max_examples=150, deadline=None)  # no deadline: the CI machine is shared


def labelled(h: int, w: int, c: int | None) -> np.ndarray:
    """Every pixel holds its own index (all channels alike), so where an output pixel came from can be read off."""
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    return ids if c is None else np.repeat(ids[..., None], c, axis=-1)


def assert_centred(before: int, after: int, offset: int) -> None:
    """The margins on the two sides (removed by a crop, added by a pad) differ by at most one pixel."""
    margin = abs(after - before)
    assert abs(offset - (margin - offset)) <= 1, (before, after, offset)


@SETTINGS
@given(h=sides, w=sides, c=channels, multiple=multiples)
def test_crop_is_the_largest_centred_window_with_fitting_sides(h, w, c, multiple):
    image = labelled(h, w, c)
    if h < multiple or w < multiple:
        with pytest.raises(ValueError, match="can only be padded"):
            fit_to_multiple(image, multiple, "crop")
        return
    out = fit_to_multiple(image, multiple, "crop")
    nh, nw = out.shape[:2]
    assert nh % multiple == 0 and nw % multiple == 0
    assert h - multiple < nh <= h and w - multiple < nw <= w  # never grows, and cuts less than one multiple
    assert out.shape[2:] == image.shape[2:] and out.dtype == image.dtype
    top, left = divmod(int(out[0, 0] if c is None else out[0, 0, 0]), w)
    assert np.array_equal(out, image[top : top + nh, left : left + nw])  # a window of the input, unchanged
    assert_centred(h, nh, top)
    assert_centred(w, nw, left)


@SETTINGS
@given(h=sides, w=sides, c=channels, multiple=multiples)
def test_pad_keeps_every_pixel_centred_and_repeats_the_edges(h, w, c, multiple):
    image = labelled(h, w, c)
    out = fit_to_multiple(image, multiple, "pad")
    nh, nw = out.shape[:2]
    assert nh % multiple == 0 and nw % multiple == 0
    assert h <= nh < h + multiple and w <= nw < w + multiple  # never shrinks, and adds less than one multiple
    assert out.shape[2:] == image.shape[2:] and out.dtype == image.dtype
    # For some centred placement (each margin split evenly, the odd pixel to either side): the original sits there
    # bit for bit, and every added pixel is a copy of the nearest edge pixel (replication, not reflection).
    def placed(top: int, left: int) -> bool:
        ys = np.clip(np.arange(nh) - top, 0, h - 1)
        xs = np.clip(np.arange(nw) - left, 0, w - 1)
        return np.array_equal(out[top : top + h, left : left + w], image) and np.array_equal(out, image[ys][:, xs])

    tops = {(nh - h) // 2, (nh - h + 1) // 2}
    lefts = {(nw - w) // 2, (nw - w + 1) // 2}
    assert any(placed(top, left) for top in tops for left in lefts)


@SETTINGS
@given(h=sides, w=sides, multiple=multiples, how=st.sampled_from(["crop", "pad"]), seed=st.integers(0, 2**32 - 1))
def test_photos_keep_their_bytes_and_fitting_again_changes_nothing(h, w, multiple, how, seed):
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if how == "crop" and (h < multiple or w < multiple):
        return
    out = fit_to_multiple(image, multiple, how)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out.shape[1], out.shape[0]) == fitted_size(w, h, multiple, how)
    assert fit_to_multiple(out, multiple, how) is out  # already fitting: returned as it is
    assert np.array_equal(image, np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_fitted_sizes_and_the_question():
    assert fitted_size(100, 70, 8, "crop") == (96, 64)
    assert fitted_size(100, 70, 8, "pad") == (104, 72)
    assert fitted_size(96, 64, 8, "pad") == (96, 64)
    with pytest.raises(ValueError):
        fitted_size(100, 70, 0, "crop")
    assert crop_or_pad_text(100, 70, 8) == (
        "This picture is 100×70; this model needs sides that are multiples of 8. Crop to 96×64, or pad to 104×72?")


def test_fit_for_model_uses_the_models_multiple():
    image = np.zeros((70, 100, 3), np.uint8)
    out, note = fit_for_model(image, 16)
    assert out.shape == (64, 96, 3) and note == "cropped to 96×64 (a multiple of 16 px)"
    out, note = fit_for_model(image, 4, how="pad")
    assert out.shape == (72, 100, 3) and note == "padded to 100×72 (a multiple of 4 px)"
    out, note = fit_for_model(image[:64, :96], 8)
    assert out.shape == (64, 96, 3) and note == ""
    with pytest.raises(ValueError, match="too small"):
        fit_for_model(image[:5, :20], 8)
    assert fit_for_model(image[:5, :20], 8, how="pad")[0].shape == (8, 24, 3)
    big, note = fit_for_model(np.zeros((3000, 1000, 3), np.uint8), 8)
    assert big.shape == (2048, 680, 3) and note.startswith("scaled from 1000×3000 to 683×2048; cropped to 680×2048")


@pytest.fixture
def parent(qtbot):
    widget = QWidget()
    qtbot.addWidget(widget)
    return widget


@pytest.mark.parametrize("button, expected", [("cropButton", "crop"), ("padButton", "pad"), ("cancelButton", None)])
def test_the_offer_answers_with_the_button_pressed(qtbot, parent, button, expected):
    answers = []
    box = ask_crop_or_pad(parent, 100, 70, 8, answers.append)
    assert box.isVisible() and "Crop to 96×64, or pad to 104×72?" in box.text()
    with qtbot.waitSignal(box.finished, timeout=5000):
        qtbot.mouseClick(box.findChild(QPushButton, button), Qt.MouseButton.LeftButton)
    assert answers == [expected]
    assert not box.isVisible()


def test_escape_cancels_and_crop_is_offered_only_when_something_is_left(qtbot, parent):
    answers = []
    box = ask_crop_or_pad(parent, 5, 70, 8, answers.append)
    assert not box.findChild(QPushButton, "cropButton").isEnabled()
    assert box.findChild(QPushButton, "padButton").isEnabled()
    with qtbot.waitSignal(box.finished, timeout=5000):
        qtbot.keyClick(box, Qt.Key.Key_Escape)
    assert answers == [None]
