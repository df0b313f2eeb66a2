import json

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
from ui_helpers import sample_image

from studio.engine import LocalBackend, ModelProbed


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
    assert bar.geometry().top() == 0 and bar.width() == canvas.width() and bar.height() >= bar.minimumSizeHint().height()
    assert canvas.geometry() == geometry and canvas.zoom == zoom
    window.resize(window.width() - 120, window.height())
    QApplication.processEvents()
    assert bar.width() == canvas.width()  # follows the canvas
    window.resize(window.width() + 120, window.height())
    QApplication.processEvents()
    bar.dismiss()
    QApplication.processEvents()
    assert not bar.isVisible() and canvas.geometry() == geometry and canvas.zoom == zoom
