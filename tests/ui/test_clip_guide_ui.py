"""The CLIP guide in the app (issue #15): a caption typed in the guidance panel reaches the request as a clip guide,
a noisy-mode run on the built-in model shows its guidance term and loss per step, and a PNG brings it back."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QLineEdit, QPushButton, QSlider
from ui_helpers import GENERATION_TIMEOUT_MS

from studio.engine import Generate, GenerationRequest, Guide, format_parameters, save_png
from studio.engine.clip_guidance import clip_path

pytestmark = pytest.mark.skipif(not clip_path(False).exists(), reason="the scene CLIP is not trained")


def test_a_typed_caption_guides_a_noisy_run_and_the_timeline_shows_it(window, qtbot):
    jobs, submit = [], window.worker.submit
    window.worker.submit = lambda job: (jobs.append(job), submit(job))[1]
    panel = window.prompt_panel
    panel.set_model("default")
    panel.prompt.setPlainText("")
    panel.cfg.setValue(1.0)
    panel.steps.setValue(4)
    panel.guidance_section.toggle.click()
    edit = window.findChild(QLineEdit, "clipTextEdit")
    assert not edit.isEnabled()  # off: its caption is greyed
    window.findChild(QCheckBox, "clipGuideCheck").click()
    assert edit.isEnabled()
    edit.setFocus()
    QTest.keyClicks(edit, "a red star at the top")
    window.findChild(QDoubleSpinBox, "clipGuideStrength").setValue(20.0)
    panel.guide_mode.setCurrentIndex(panel.guide_mode.findData("noisy"))
    assert "clip 20" in panel.guidance_section.toggle.text()
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    (job,) = [j for j in jobs if isinstance(j, Generate)]
    assert job.request.guide_mode == "noisy"
    assert job.request.guides == (Guide("clip", 20.0, text="a red star at the top"),)
    timeline, slider = window.timeline, window.findChild(QSlider, "timelineSlider")
    for index in range(4):
        slider.setValue(index)
        assert timeline.views["guidance"].array is not None and timeline.loss_plot.current == index
    assert [i for i, _ in timeline.loss_plot.points] == [0, 1, 2, 3]  # −s·exp(τ)·f·g per step


def test_a_png_brings_the_caption_back(window, tmp_path):
    settings = window.prompt_panel.settings_model
    made = GenerationRequest(prompt="", model="default", width=64, height=64, guide_mode="noisy",
                             guides=(Guide("clip", 7.5, text="a big blue ring, on the left"),))
    path = tmp_path / "clipped.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(path), format_parameters(made))
    window.handle_dropped_path(str(path))
    assert settings.guide_mode == "noisy" and settings.guide_clip_on and settings.guide_clip_strength == 7.5
    assert window.findChild(QLineEdit, "clipTextEdit").text() == "a big blue ring, on the left"
    assert "does not hold the guides' pictures" not in window.message_bar.text()
    plain = tmp_path / "plain.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(plain), format_parameters(GenerationRequest(prompt="plain")))
    window.handle_dropped_path(str(plain))
    assert not settings.guide_clip_on
