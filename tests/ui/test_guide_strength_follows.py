"""The classifier and CLIP guides' strength follows the guide mode and the recurrence (the strengths measured best,
engine.suggested_strength) until the user, a dropped PNG or a restored session sets one; driven through the real
main window's widgets."""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox

from studio.engine import GenerationRequest, Guide, format_parameters, save_png
from studio.ui.settings_model import GenerationSettings


def choose_mode(window, mode):
    box = window.findChild(QComboBox, "guideModeCombo")
    box.setCurrentIndex(box.findData(mode))


def test_the_strength_follows_mode_and_recurrence_until_the_user_sets_one(window):
    window.prompt_panel.guidance_section.toggle.click()
    classifier = window.findChild(QDoubleSpinBox, "classifierGuideStrength")
    clip = window.findChild(QDoubleSpinBox, "clipGuideStrength")
    recurrence = window.findChild(QSpinBox, "recurrenceSpin")
    assert window.prompt_panel.settings_model.guide_mode == "backward"
    assert classifier.value() == 3.0  # universal guidance with the clean classifier
    choose_mode(window, "noisy")
    assert classifier.value() == 10.0 and clip.value() == 10.0
    recurrence.setValue(3)
    assert classifier.value() == 20.0 and clip.value() == 10.0
    assert "20 was measured best with mode noisy, recurrence 3" in classifier.toolTip()
    recurrence.setValue(1)
    assert classifier.value() == 10.0
    classifier.setValue(7.0)  # the user's choice stays through later mode changes
    choose_mode(window, "both")
    recurrence.setValue(3)
    assert classifier.value() == 7.0
    assert "follows the mode" not in classifier.toolTip()


def test_a_dropped_png_keeps_its_strength_through_its_mode(window, tmp_path):
    made = GenerationRequest(prompt="", model="default", width=64, height=64, guide_mode="noisy", recurrence=3,
                             guides=(Guide("classifier", 3.0, labels={"shape": "star"}),))
    path = tmp_path / "guided.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(path), format_parameters(made))
    window.handle_dropped_path(str(path))
    settings = window.prompt_panel.settings_model
    assert (settings.guide_mode, settings.recurrence, settings.guide_classifier_strength) == ("noisy", 3, 3.0)


def test_a_restored_session_keeps_a_chosen_strength(qapp):
    saved = GenerationSettings()
    saved.guide_mode = "noisy"
    saved.guide_classifier_strength = 3.0  # the user's, not noisy mode's suggestion (10)
    restored = GenerationSettings()
    assert restored.apply(saved.to_dict()) == []
    assert (restored.guide_mode, restored.guide_classifier_strength) == ("noisy", 3.0)
    fresh = GenerationSettings()
    fresh.apply({"guide_mode": "noisy", "recurrence": 3})
    assert fresh.guide_classifier_strength == 20.0


def test_a_tip_suggests_ddpm_for_the_classifier_on_the_predicted_image(window):
    from PySide6.QtWidgets import QCheckBox, QLabel

    window.prompt_panel.guidance_section.toggle.click()
    tip = window.findChild(QLabel, "guideTipLabel")
    assert not tip.isVisible()
    window.findChild(QCheckBox, "classifierGuideCheck").click()
    choose_mode(window, "both")
    assert tip.isVisible() and "DDPM" in tip.text()
    sampler = window.findChild(QComboBox, "samplerCombo")
    sampler.setCurrentIndex(sampler.findData("ddpm"))
    assert not tip.isVisible()
    sampler.setCurrentIndex(sampler.findData("ddim"))
    choose_mode(window, "noisy")
    assert not tip.isVisible()
