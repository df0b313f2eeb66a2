"""The classifier guide in the app (issue #15): picked labels reach the request, a noisy-mode run on the built-in
model shows its guidance term and loss per step, and a PNG brings the labels back."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QPushButton, QSlider
from ui_helpers import GENERATION_TIMEOUT_MS

from studio.engine import Generate, GenerationRequest, Guide, format_parameters, save_png
from studio.engine.classifier_guidance import classifier_path

pytestmark = pytest.mark.skipif(not classifier_path(False).exists(), reason="the scene classifier is not trained")


def pick(window, name, value):
    box = window.findChild(QComboBox, name)
    box.setCurrentIndex(box.findData(value))


def test_picked_labels_guide_a_noisy_run_and_the_timeline_shows_it(window, qtbot):
    jobs, submit = [], window.worker.submit
    window.worker.submit = lambda job: (jobs.append(job), submit(job))[1]
    panel = window.prompt_panel
    panel.set_model("default")
    panel.prompt.setPlainText("")
    panel.cfg.setValue(1.0)
    panel.steps.setValue(4)
    panel.guidance_section.toggle.click()
    assert not window.findChild(QComboBox, "classifierShapeCombo").isEnabled()  # off: its labels are greyed
    window.findChild(QCheckBox, "classifierGuideCheck").click()
    pick(window, "classifierShapeCombo", "star")
    pick(window, "classifierColourCombo", "red")
    pick(window, "classifierPositionCombo", "top left")
    panel.guide_mode.setCurrentIndex(panel.guide_mode.findData("noisy"))
    window.findChild(QDoubleSpinBox, "classifierGuideStrength").setValue(3.0)
    assert "classifier 3" in panel.guidance_section.toggle.text()
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    (job,) = [j for j in jobs if isinstance(j, Generate)]
    assert job.request.guide_mode == "noisy"
    assert job.request.guides == (Guide("classifier", 3.0, labels={"shape": "star", "colour": "red",
                                                                    "position": "top left"}),)
    timeline, slider = window.timeline, window.findChild(QSlider, "timelineSlider")
    for index in range(4):
        slider.setValue(index)
        assert timeline.views["guidance"].array is not None and timeline.loss_plot.current == index
    assert [i for i, _ in timeline.loss_plot.points] == [0, 1, 2, 3]  # −Σ s·log p per step


def test_a_png_brings_the_classifier_labels_back(window, tmp_path):
    settings = window.prompt_panel.settings_model
    made = GenerationRequest(prompt="", model="default", width=64, height=64, guide_mode="noisy",
                             guides=(Guide("classifier", 2.5, labels={"shape": "heart", "background": "blue"}),))
    path = tmp_path / "classified.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(path), format_parameters(made))
    window.handle_dropped_path(str(path))
    assert settings.guide_mode == "noisy" and settings.guide_classifier_on
    assert settings.guide_classifier_strength == 2.5
    assert (settings.guide_classifier_shape, settings.guide_classifier_background,
            settings.guide_classifier_colour) == ("heart", "blue", "")
    assert "does not hold the guides' pictures" not in window.message_bar.text()
    unguided = tmp_path / "plain.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(unguided), format_parameters(GenerationRequest(prompt="plain")))
    window.handle_dropped_path(str(unguided))
    assert not settings.guide_classifier_on
