import json

import numpy as np
from PIL import Image, PngImagePlugin
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import QApplication
from ui_helpers import GENERATION_TIMEOUT_MS, paint_stroke, sample_image


def drop_file(window, path):
    """The drop a file manager makes: drag-enter, then a QDropEvent carrying a file URL, delivered to the window."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    enter = QDragEnterEvent(QPoint(200, 200), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, event)
    return event.isAccepted()


def test_saved_png_carries_parameters_and_dropping_it_restores_them(window, qtbot, tmp_path):
    panel = window.prompt_panel
    panel.prompt.setPlainText("a green triangle")
    panel.negative.setPlainText("blurry")
    panel.seed.setValue(1234)
    panel.steps.setValue(5)
    panel.cfg.setValue(4.5)
    panel.sampler.setCurrentIndex(panel.sampler.findData("dpmpp_2m"))
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    path = tmp_path / "result.png"
    assert window.save_image(window.history.selected, str(path))
    with Image.open(path) as im:
        text = im.info["parameters"]
    assert "a green triangle" in text and "Seed: 1234" in text and "Negative prompt: blurry" in text

    panel.prompt.setPlainText("something else")
    panel.negative.setPlainText("")
    panel.seed.setValue(1)
    panel.steps.setValue(20)
    panel.cfg.setValue(7.0)
    panel.sampler.setCurrentIndex(panel.sampler.findData("ddim"))
    assert drop_file(window, path)
    assert panel.prompt.toPlainText() == "a green triangle"
    assert panel.negative.toPlainText() == "blurry"
    assert int(panel.seed.value()) == 1234 and panel.steps.value() == 5 and panel.cfg.value() == 4.5
    assert panel.sampler.currentData() == "dpmpp_2m"
    assert panel.model_spec() == "tiny-random"
    assert window.message_bar.isVisible() and "Restored" in window.message_bar.text()
    assert not window.canvas.has_image()  # settings only; "Open as image" is offered
    [open_button] = window.message_bar.action_buttons()
    open_button.click()
    assert window.canvas.has_image()


def test_a_png_from_an_unknown_model_restores_settings_and_keeps_the_current_model(window, tmp_path):
    panel = window.prompt_panel
    path = tmp_path / "from-elsewhere.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a blue star\nSteps: 7, Sampler: Euler a, CFG scale: 6, Seed: 99, Size: 64x64, "
                                "Model: some-model-we-do-not-have")
    Image.new("RGB", (64, 64), "white").save(path, pnginfo=info)
    assert drop_file(window, path)
    assert panel.prompt.toPlainText() == "a blue star" and panel.steps.value() == 7 and panel.cfg.value() == 6.0
    assert panel.model_spec() == "tiny-random"  # unchanged, and the user is told why
    text = window.message_bar.text()
    assert "some-model-we-do-not-have" in text and "keeping tiny-random" in text


def test_dropping_a_plain_image_opens_it_and_odd_sizes_are_cropped(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox, QPushButton

    qtbot.waitUntil(lambda: "Model ready" in window.engine_label.text(), timeout=GENERATION_TIMEOUT_MS)
    path = tmp_path / "photo.png"
    Image.fromarray(sample_image(70)[:69, :69]).save(path)  # 69 px: tiny-random needs multiples of 2
    drop_file(window, path)
    dialog = next(d for d in window.findChildren(QMessageBox, "cropOrPadDialog") if d.isVisible())
    dialog.findChild(QPushButton, "cropButton").click()
    assert window.canvas.has_image()
    assert window.canvas.image_array().shape == (68, 68, 3)
    assert window.prompt_panel.width_spin.value() == 68 and not window.prompt_panel.width_spin.isEnabled()
    assert "cropped" in window.message_bar.text()
    window.new_blank_canvas()
    assert not window.canvas.has_image() and window.prompt_panel.width_spin.isEnabled()


def test_a_bad_file_is_an_error_message_not_a_crash(window, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    drop_file(window, bad)
    assert window.message_bar.isVisible()
    assert "broken.png" in window.message_bar.text()
    assert window.message_bar.level.value == "error"
    assert not window.canvas.has_image()
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    window.handle_dropped_path(str(other))
    assert "not an image" in window.message_bar.text()


def test_paste_image_from_the_clipboard(window):
    from studio.ui.images import rgb_to_qimage

    QGuiApplication.clipboard().setImage(rgb_to_qimage(sample_image(64, seed=3)))
    window.paste()
    assert window.canvas.has_image()
    np.testing.assert_array_equal(window.canvas.image_array(), sample_image(64, seed=3))


def test_timeline_exports_gif_and_pngs(window, qtbot, tmp_path):
    window.prompt_panel.steps.setValue(4)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    run = window.history.selected
    window.write_timeline(run, str(tmp_path / "t.gif"), "gif")
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 5  # 4 steps and the final image
    window.write_timeline(run, str(tmp_path / "pngs"), "png")
    assert len(list((tmp_path / "pngs").glob("step_*.png"))) == 12


def test_settings_and_layout_persist_in_qsettings(make_window):
    first = make_window()
    first.prompt_panel.prompt.setPlainText("remember me")
    first.prompt_panel.seed.setValue(77)
    first.canvas.set_brush_size(41)
    first.close()
    stored = json.loads(first.settings.value("generation/settings"))
    assert stored["prompt"] == "remember me"
    assert "DiffusionStudio" not in first.settings.fileName() and "StudioTest" in first.settings.fileName()
    second = make_window(offer_restore=False)
    # make_window sets the prompt for tests; everything else comes back from QSettings
    assert int(second.prompt_panel.seed.value()) == 77
    assert second.canvas.brush_size == 41


def test_autosave_offers_restore_in_the_message_bar(make_window, qtbot, tmp_path):
    folder = tmp_path / "session"
    first = make_window(autosave_dir=folder)
    first.open_image(sample_image(64))
    first.canvas.set_brush_size(10)
    paint_stroke(first.canvas, (10, 10), (50, 50))
    mask = first.canvas.mask.array()
    with qtbot.waitSignal(first.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        first.generate()
    run_id, steps = first.history.selected.id, first.history.selected.recorded
    qtbot.waitUntil(lambda: (folder / "current" / "runs" / f"{run_id}.safetensors").exists(), timeout=5000)
    qtbot.waitUntil(lambda: run_id in (folder / "current" / "session.json").read_text(), timeout=5000)
    assert (folder / "current" / "mask.npy").exists()
    # as if killed: no orderly close (no final save) before the next start
    first._closing = True
    first._autosave_timer.stop()
    first.worker.stop()
    first.autosave.close()  # a killed process's lock file is stale: QLockFile takes it over by pid

    second = make_window(autosave_dir=folder)
    bar = second.message_bar
    assert bar.isVisible() and "Restore" in bar.text()
    assert not second.canvas.has_image()  # nothing changes until the user says so
    restore = next(b for b in bar.action_buttons() if b.text() == "Restore")
    restore.click()
    qtbot.waitUntil(lambda: len(second.history) == 1 or bar.isVisible(), timeout=20000)
    assert len(second.history) == 1, bar.text()
    assert second.canvas.has_image()
    np.testing.assert_array_equal(second.canvas.mask.array(), mask)
    assert second.history.selected.id == run_id and second.timeline.run.recorded == steps
    assert not (folder / "previous").exists()


def test_a_second_instance_does_not_touch_the_first_ones_autosave(make_window, tmp_path):
    folder = tmp_path / "shared"
    first = make_window(autosave_dir=folder)
    first.open_image(sample_image(64))
    first.autosave_now()
    second = make_window(autosave_dir=folder)
    assert not second.message_bar.isVisible()
    assert second.autosave.current != first.autosave.current
    assert (first.autosave.current / "image.npy").exists()
