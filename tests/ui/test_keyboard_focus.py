from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from ui_helpers import GENERATION_TIMEOUT_MS


def focus(qtbot, widget):
    widget.setFocus()
    qtbot.waitUntil(widget.hasFocus)


def test_focus_starts_in_the_prompt(make_window, qtbot):
    window = make_window()
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is not None)
    assert QApplication.focusWidget() is window.prompt_panel.prompt


def test_brackets_type_in_the_prompt_and_size_the_brush_elsewhere(window, qtbot):
    canvas, prompt = window.canvas, window.prompt_panel.prompt
    canvas.set_brush_size(10)
    focus(qtbot, prompt)
    prompt.moveCursor(prompt.textCursor().MoveOperation.End)
    QTest.keyClick(prompt, Qt.Key.Key_BracketRight, Qt.KeyboardModifier.NoModifier)
    assert prompt.toPlainText() == "a red circle]" and canvas.brush_size == 10
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    tree = window.history_panel.tree
    focus(qtbot, tree)
    QTest.keyClick(tree, Qt.Key.Key_BracketRight)
    assert canvas.brush_size > 10
    QTest.keyClick(tree, Qt.Key.Key_E)
    assert window.toolbar.eraser_action.isChecked()


def test_arrows_step_the_timeline_wherever_focus_is_but_move_the_cursor_in_text(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    timeline = window.timeline
    last = timeline.index()
    assert last > 1
    for widget in (window.history_panel.tree, window.prompt_panel.generate_button, window.timeline.branch_button):
        focus(qtbot, widget)
        QTest.keyClick(widget, Qt.Key.Key_Left)
        assert timeline.index() == last - 1, widget.objectName()
        QTest.keyClick(widget, Qt.Key.Key_Right)
        assert timeline.index() == last
    prompt = window.prompt_panel.prompt
    focus(qtbot, prompt)
    QTest.keyClick(prompt, Qt.Key.Key_Left)
    assert timeline.index() == last


def test_after_a_branch_the_focus_is_not_in_a_spin_box(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    window.timeline.set_index(2)
    button = window.timeline.branch_button
    focus(qtbot, button)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        QTest.keyClick(button, Qt.Key.Key_Space)
    assert window.history.selected.from_step == 2
    assert QApplication.focusWidget() is window.canvas
    size = window.canvas.brush_size
    QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_BracketRight)
    assert window.canvas.brush_size > size
