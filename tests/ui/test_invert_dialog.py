import numpy as np
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QLabel, QPlainTextEdit, QPushButton, QSpinBox
from ui_helpers import GENERATION_TIMEOUT_MS, sample_image

from studio.engine import Invert
from studio.ui import invert_dialog
from studio.ui.invert_dialog import InvertDialog


def open_dialog(window) -> InvertDialog:
    window.findChild(QPushButton, "invertButton").click()
    dialog = window.findChild(InvertDialog, "invertDialog")
    assert dialog is not None and dialog.isVisible() and dialog.isModal()
    return dialog


def capture_jobs(window, monkeypatch) -> list:
    jobs = []
    submit = window.worker.submit
    monkeypatch.setattr(window.worker, "submit", lambda job: jobs.append(job) or submit(job))
    return jobs


def test_the_refinement_default_is_the_engines():
    from studio.engine import INVERSION_REFINE

    assert invert_dialog.INVERSION_REFINE == INVERSION_REFINE


def test_dialog_defaults_and_cancel(window, monkeypatch):
    panel = window.prompt_panel
    panel.prompt.setPlainText("a blue square")
    panel.steps.setValue(7)
    assert panel.cfg.value() == 3.0
    window.open_image(sample_image(64), "photo.png")
    jobs = capture_jobs(window, monkeypatch)
    dialog = open_dialog(window)
    assert dialog.findChild(QPlainTextEdit, "invertPromptEdit").toPlainText() == "a blue square"
    assert dialog.findChild(QSpinBox, "invertStepsSpin").value() == 7
    assert dialog.findChild(QSpinBox, "invertRefineSpin").value() == 1
    assert dialog.findChild(QDoubleSpinBox, "invertCfgSpin").value() == 1.0  # not the panel's 3
    text = dialog.findChild(QLabel, "invertExplanation").text()
    assert "regenerates this picture" in text and "2×" in text
    source = dialog.findChild(QComboBox, "invertSourceCombo")
    assert source.count() == 1 and not source.isEnabled() and "photo.png" in source.currentText()
    dialog.findChild(QPushButton, "invertCancelButton").click()
    assert not dialog.isVisible() and not window.controller.running
    assert not [job for job in jobs if isinstance(job, Invert)]


def test_inverts_the_result_on_screen_with_cfg_1(window, qtbot, monkeypatch):
    window.open_image(sample_image(64), "photo.png")
    window.prompt_panel.strength.setValue(1.0)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    result = window.history.selected.image
    assert window.canvas.showing_result and not np.array_equal(result, window.canvas.image_array())
    jobs = capture_jobs(window, monkeypatch)
    dialog = open_dialog(window)
    source = dialog.findChild(QComboBox, "invertSourceCombo")
    assert source.isEnabled() and source.count() == 2 and source.currentData() == "result"
    dialog.findChild(QSpinBox, "invertStepsSpin").setValue(3)
    dialog.findChild(QSpinBox, "invertRefineSpin").setValue(2)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        dialog.findChild(QPushButton, "invertOkButton").click()
    (job,) = [job for job in jobs if isinstance(job, Invert)]
    assert job.refine == 2 and job.request.cfg == 1.0 and job.request.steps == 3
    np.testing.assert_array_equal(job.request.init_image, result)  # the result shown, not the input
    run = window.history.selected
    assert run.kind == "invert" and run.request.cfg == 1.0 and run.recorded == 3


def test_with_the_input_shown_the_input_comes_first(window, qtbot):
    window.open_image(sample_image(64), "photo.png")
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    window.viewbar.before_after.click()  # show the input
    assert not window.canvas.showing_result
    dialog = open_dialog(window)
    source = dialog.findChild(QComboBox, "invertSourceCombo")
    assert [source.itemData(i) for i in range(source.count())] == ["input", "result"]
    np.testing.assert_array_equal(dialog.choice().image, window.canvas.image_array())
    dialog.reject()
