import json

from PySide6.QtCore import QPoint, QRect, QSettings, Qt
from PySide6.QtWidgets import QApplication, QScrollArea, QToolButton, QWidget
from ui_helpers import GENERATION_TIMEOUT_MS, paint_stroke, sample_image

from studio.engine import LocalBackend, ModelProbed
from studio.ui.history_panel import THUMB


def test_no_default_size_or_cfg_shows_before_the_model_has_said_its_own(qtbot, tmp_path):
    from studio.ui import MainWindow

    QSettings().setValue("generation/settings", json.dumps({"model": "tiny-random"}))
    window = MainWindow(autosave_dir=tmp_path / "autosave", backend_factory=LocalBackend)
    qtbot.addWidget(window)
    panel = window.prompt_panel
    probed = []
    window.worker.message.connect(lambda m: isinstance(m, ModelProbed) and probed.append(m.info))
    window.show()
    # the engine has not answered yet: nothing says 512 × 512 or CFG 7.5
    for spin in (panel.width_spin, panel.height_spin, panel.cfg):
        assert spin.text() == "…" and not spin.isEnabled(), spin.objectName()
    assert "512" not in panel.mode_label.text() and "…" in panel.mode_label.text()
    assert "512" not in window.viewbar.info_label.text()
    assert window.canvas.blank_note
    qtbot.waitUntil(lambda: bool(probed) and panel.cfg.isEnabled(), timeout=60_000)
    info = probed[0]
    assert panel.width_spin.value() == info.default_size and panel.width_spin.isEnabled()
    assert panel.width_spin.text() == f"{info.default_size} px" and panel.cfg.text() != "…"
    assert panel.cfg.value() == info.default_cfg
    assert f"{info.default_size} × {info.default_size}" in panel.mode_label.text() and not window.canvas.blank_note
    window.close()


def test_a_message_floats_over_the_canvas_without_moving_it(window, qtbot):
    canvas, bar = window.canvas, window.message_bar
    window.open_image(sample_image(64))
    QApplication.processEvents()
    geometry, zoom = canvas.geometry(), canvas.zoom
    bar.warning("A long message that wraps onto more than one line when the canvas is narrow enough to need it, "
                "which it is here, because this sentence goes on and on for a while.",
                actions=[("Retry", lambda: None)])
    QApplication.processEvents()
    assert bar.isVisible() and bar.parent() is canvas
    assert bar.geometry().top() == 0 and bar.width() == canvas.width()
    assert bar.height() >= bar.minimumSizeHint().height()
    assert canvas.geometry() == geometry and canvas.zoom == zoom
    window.resize(window.width() - 120, window.height())
    QApplication.processEvents()
    assert bar.width() == canvas.width()  # follows the canvas
    window.resize(window.width() + 120, window.height())
    QApplication.processEvents()
    bar.dismiss()
    QApplication.processEvents()
    assert not bar.isVisible() and canvas.geometry() == geometry and canvas.zoom == zoom


def settle(qtbot):
    for _ in range(3):
        qtbot.wait(20)
        QApplication.processEvents()


def at_minimum_size(window, qtbot):
    window.resize(window.minimumSize())
    settle(qtbot)
    assert window.size() == window.minimumSize()


def inside(widget, container) -> bool:
    top_left = widget.mapTo(container, QPoint(0, 0))
    return widget.isVisible() and container.rect().contains(QRect(top_left, widget.size()))


def test_at_the_minimum_size_every_tool_shows_and_nothing_is_clipped(window, qtbot):
    window.prompt_panel.prompt.setPlainText("a small red circle above a big blue square on a pale yellow background")
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    at_minimum_size(window, qtbot)
    assert window.minimumHeight() >= 640 and window.canvas.height() >= 280
    for bar in (window.toolbar, window.viewbar):
        for action in bar.actions():
            if not action.isSeparator():
                assert inside(bar.widgetForAction(action), bar), (bar.objectName(), action.text())
    label = window.timeline.step_label
    window.timeline.set_index(0)
    settle(qtbot)
    assert "σ" in label.text()
    fits_on_one_line = label.sizeHint().width() <= label.width()
    assert fits_on_one_line or (label.wordWrap() and label.heightForWidth(label.width()) <= label.height())
    plot = window.timeline.plot
    assert "6" in plot.axis_caption() and plot.fontMetrics().horizontalAdvance(plot.axis_caption()) <= plot.width()
    tree = window.history_panel.tree
    item = tree.topLevelItem(0)
    row = tree.visualItemRect(item)
    # every word of the item's lines fits in its row: wrapped at (a little more than) the room beside the thumbnail
    room = QRect(0, 0, row.width() - THUMB - 8, 10_000)
    needed = tree.fontMetrics().boundingRect(room, Qt.TextFlag.TextWordWrap, item.text(0)).height()
    assert row.height() > THUMB + 8 and needed <= row.height()


def test_docks_keep_their_share_when_the_window_shrinks_and_grows(window, qtbot):
    def view_sizes():
        return [(v.width(), v.height()) for v in window.timeline.views.values()]

    window.resize(1440, 920)
    settle(qtbot)
    before, history = view_sizes(), window.history_dock.width()
    at_minimum_size(window, qtbot)
    window.resize(1440, 920)
    settle(qtbot)
    assert all(abs(w - w0) <= 2 and abs(h - h0) <= 2 for (w, h), (w0, h0) in zip(view_sizes(), before))
    assert abs(window.history_dock.width() - history) <= 2
    window.resize(1800, 1100)
    settle(qtbot)
    assert all(w >= w0 and h >= h0 for (w, h), (w0, h0) in zip(view_sizes(), before))  # bigger window, bigger views


def test_inpainting_options_come_into_view_with_the_first_stroke(window, qtbot):
    panel = window.prompt_panel
    at_minimum_size(window, qtbot)
    window.open_image(sample_image(64))
    assert not panel.inpaint_box.isVisible()  # nothing to inpaint yet
    window.canvas.set_brush_size(8)
    paint_stroke(window.canvas, (10, 30), (50, 30))
    settle(qtbot)
    viewport = panel.findChild(QScrollArea, "promptScroll").viewport()
    assert panel.inpaint_box.isVisible()
    assert inside(panel.fill, viewport) and inside(panel.inpaint_mode, viewport)


def test_the_settings_column_fits_its_dock_with_the_guidance_section_open(window, qtbot):
    """Opening Guidance must not widen the scrolled settings past the dock: the horizontal scroll bar is off, so
    anything wider was cut off on the right (the Model and Sampler boxes, the classifier's label boxes)."""
    at_minimum_size(window, qtbot)
    scroll = window.prompt_panel.findChild(QScrollArea, "promptScroll")
    toggle = window.findChild(QToolButton, "guidanceToggle")
    if not toggle.isChecked():
        qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
    settle(qtbot)
    body = scroll.widget()
    assert window.findChild(QWidget, "guidanceBody").isVisible()
    assert body.minimumSizeHint().width() <= scroll.viewport().width()
    assert body.width() <= scroll.viewport().width()
