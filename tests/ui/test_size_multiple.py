"""The model's size rule reaches the window: the size boxes step by it, and a picture that does not fit is offered a
crop or a pad (centred) instead of opening silently and failing at Generate."""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QMessageBox, QPushButton
from ui_helpers import GENERATION_TIMEOUT_MS, sample_image


def model_ready(window, qtbot):
    qtbot.waitUntil(lambda: "Model ready" in window.engine_label.text(), timeout=GENERATION_TIMEOUT_MS)


def answer(window, qtbot, button_name: str) -> None:
    def shown():
        return [d for d in window.findChildren(QMessageBox, "cropOrPadDialog") if d.isVisible()]

    qtbot.waitUntil(lambda: len(shown()) == 1, timeout=5000)
    (dialog,) = shown()
    assert "multiples of 2" in dialog.text()
    dialog.findChild(QPushButton, button_name).click()


def test_the_probed_size_multiple_drives_the_size_boxes(window, qtbot):
    model_ready(window, qtbot)
    assert window.size_multiple == 2  # tiny-random's VAE halves each side
    assert window.prompt_panel.width_spin.singleStep() == 2


def test_an_image_that_does_not_fit_is_padded_or_cropped_as_the_user_says(window, qtbot):
    model_ready(window, qtbot)
    image = sample_image(64)[:, :63]  # 63 wide: not a multiple of 2
    window.open_image(image, "odd.png")
    answer(window, qtbot, "padButton")
    padded = window.canvas.image_array()
    assert padded.shape == (64, 64, 3)
    np.testing.assert_array_equal(padded[:, :63], image)  # every original pixel kept, the new column at the right
    window.open_image(image, "odd.png")
    answer(window, qtbot, "cropButton")
    assert window.canvas.image_array().shape == (64, 62, 3)


def test_cancel_leaves_the_canvas_as_it_was(window, qtbot):
    model_ready(window, qtbot)
    window.open_image(sample_image(64)[:, :63], "odd.png")
    answer(window, qtbot, "cancelButton")
    assert not window.canvas.has_image()
