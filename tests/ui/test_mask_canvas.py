import numpy as np
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QSpinBox
from ui_helpers import paint_stroke, sample_image


def test_stroke_paints_the_mask_in_image_coordinates(window):
    canvas = window.canvas
    window.open_image(sample_image(64))
    canvas.set_brush_size(6)
    assert canvas.mask_array() is None
    paint_stroke(canvas, (10, 32), (50, 32))
    mask = canvas.mask_array()
    assert mask is not None and mask.shape == (64, 64)
    assert mask[32, 30] == 1.0 and mask[32, 12] > 0.5 and mask[32, 48] > 0.5
    assert mask[5, 5] == 0 and mask[60, 30] == 0  # far from the stroke
    assert "Inpaint" in window.prompt_panel.mode_label.text()


def test_undo_and_redo_exactly_one_stroke(window):
    canvas = window.canvas
    window.open_image(sample_image(64))
    canvas.set_brush_size(4)
    paint_stroke(canvas, (8, 10), (56, 10))
    first = canvas.mask.array()
    paint_stroke(canvas, (8, 50), (56, 50))
    both = canvas.mask.array()
    assert both[50].any() and not first[50].any()

    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(canvas.mask.array(), first)
    QTest.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not canvas.mask.array().any()
    QTest.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    np.testing.assert_array_equal(canvas.mask.array(), first)
    QTest.keyClick(canvas, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(canvas.mask.array(), both)
    assert not canvas.mask.can_redo()


def test_eraser_clear_and_invert_are_single_undo_steps(window):
    canvas = window.canvas
    window.open_image(sample_image(64))
    canvas.set_brush_size(10)
    paint_stroke(canvas, (5, 32), (60, 32))
    painted = canvas.mask.array()
    window.toolbar.eraser_action.trigger()
    paint_stroke(canvas, (32, 20), (32, 44))
    assert canvas.mask.array()[32, 32] == 0 and canvas.mask.array()[32, 8] == 255
    canvas.mask.undo()
    np.testing.assert_array_equal(canvas.mask.array(), painted)
    canvas.mask.invert()
    assert canvas.mask.array()[0, 0] == 255
    canvas.mask.clear()
    assert canvas.mask.is_empty()
    canvas.mask.undo()
    canvas.mask.undo()
    np.testing.assert_array_equal(canvas.mask.array(), painted)


def test_bracket_keys_and_spin_change_the_brush(window):
    canvas = window.canvas
    spin = window.findChild(QSpinBox, "brushSizeSpin")
    spin.setValue(20)
    assert canvas.brush_size == 20
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush_size > 20 and spin.value() == canvas.brush_size
    QTest.keyClick(canvas, Qt.Key.Key_BracketLeft)
    QTest.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.brush_size < 20


def test_zoom_fit_actual_and_pan(window):
    canvas = window.canvas
    window.open_image(sample_image(64))
    canvas.fit()
    assert canvas.zoom > 2  # a 64 px image fills the view
    canvas.actual_size()
    assert canvas.zoom == 1.0
    before = canvas.to_widget(QPointF(0, 0))
    start = QPoint(100, 100)
    QTest.mousePress(canvas, Qt.MouseButton.MiddleButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(canvas, QPoint(140, 120))
    QTest.mouseRelease(canvas, Qt.MouseButton.MiddleButton, Qt.KeyboardModifier.NoModifier, QPoint(140, 120))
    after = canvas.to_widget(QPointF(0, 0))
    assert (after.x() - before.x(), after.y() - before.y()) == (40, 20)
    assert canvas.mask.is_empty()  # panning never paints
    canvas.zoom_by(2.0)
    assert canvas.zoom == 2.0


def test_feathered_mask_preview_follows_the_feather_spin(window):
    canvas = window.canvas
    window.open_image(sample_image(64))
    canvas.set_brush_size(8)
    paint_stroke(canvas, (32, 10), (32, 54))
    window.prompt_panel.feather.setValue(0)
    hard = canvas._overlay.copy()
    window.prompt_panel.feather.setValue(12)
    assert canvas.feather == 12
    soft = canvas._overlay
    assert soft != hard  # the live view shows the feathered edge
