import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from ui_helpers import GENERATION_TIMEOUT_MS, paint_stroke, sample_image


def generate(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    return window.history.selected


def undo(window):
    QTest.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)


def test_painting_on_a_text_to_image_result_makes_it_the_input(window, qtbot):
    canvas = window.canvas
    run = generate(window, qtbot)
    assert canvas.showing_result and not canvas.has_image()
    canvas.set_brush_size(6)
    paint_stroke(canvas, (10, 32), (50, 32))
    assert canvas.has_image() and not canvas.showing_result
    np.testing.assert_array_equal(canvas.image_array(), run.image)
    mask = canvas.mask_array()
    assert mask is not None and mask[32, 30] == 1.0 and mask[5, 5] == 0  # the stroke painted the mask
    assert window.message_bar.isVisible()
    number = window.history.number(run)
    assert window.message_bar.text().startswith(f"Painting on result #{number}: it is now the input")
    assert "Inpaint" in window.prompt_panel.mode_label.text()
    assert window.build_request().init_image is not None

    undo(window)  # the stroke
    assert canvas.has_image() and canvas.mask.is_empty()
    undo(window)  # the result becoming the input: back to text to image with the result on screen
    assert not canvas.has_image() and canvas.showing_result
    assert window.build_request().init_image is None and "Text to image" in window.prompt_panel.mode_label.text()
    assert not window.toolbar.undo_action.isEnabled() and window.toolbar.redo_action.isEnabled()
    QTest.keyClick(canvas, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClick(canvas, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(canvas.image_array(), run.image)
    assert canvas.mask_array()[32, 30] == 1.0


def test_with_an_input_a_click_on_the_result_paints_on_the_result(window, qtbot):
    canvas = window.canvas
    source = sample_image(64)
    window.open_image(source, "photo.png")
    canvas.set_brush_size(6)
    paint_stroke(canvas, (32, 8), (32, 20))
    first_mask = canvas.mask.array()
    run = generate(window, qtbot)
    assert canvas.showing_result
    paint_stroke(canvas, (10, 50), (50, 50))
    # not a silent switch to the old input with a dab on it: the result on screen is the input now
    np.testing.assert_array_equal(canvas.image_array(), run.image)
    mask = canvas.mask.array()
    assert mask[14, 32] == 255 and mask[50, 30] == 255  # the old region kept, the new stroke added
    assert "it is now the input" in window.message_bar.text()
    undo(window)
    undo(window)
    np.testing.assert_array_equal(canvas.image_array(), source)
    np.testing.assert_array_equal(canvas.mask.array(), first_mask)
    assert canvas.showing_result and "photo.png" in window.windowTitle()
    undo(window)  # and further back: the first stroke on the photo
    assert canvas.mask.is_empty()


def test_painting_on_the_input_view_keeps_the_input(window, qtbot):
    canvas = window.canvas
    source = sample_image(64)
    window.open_image(source)
    generate(window, qtbot)
    window.message_bar.dismiss()
    window.viewbar.before_after.click()  # C: show the input, then paint on it
    paint_stroke(canvas, (10, 32), (50, 32))
    np.testing.assert_array_equal(canvas.image_array(), source)
    assert canvas.mask_array() is not None and not window.message_bar.isVisible()


def test_a_small_preview_is_not_painted_on(window, qtbot):
    canvas = window.canvas
    source = sample_image(64)
    window.open_image(source)
    generate(window, qtbot)
    canvas.set_preview(np.zeros((16, 16, 3), np.uint8), "Step 3 · preview")
    paint_stroke(canvas, (10, 32), (50, 32))
    np.testing.assert_array_equal(canvas.image_array(), source)
    assert canvas.mask.is_empty() and canvas.showing_result
    assert "small preview" in window.message_bar.text()
