"""The prompt box says what the model read (issue #20's prompt reader), and the Read box turns the reader off."""

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QCheckBox, QLabel, QPlainTextEdit, QPushButton
from ui_helpers import GENERATION_TIMEOUT_MS

from studio.engine.model import LatentDiffusion

READING = "a large red star at the top on a blue background"


class RewriteEverything:
    def rewrite(self, prompt, mask=None):
        return READING if prompt.strip() else prompt


@pytest.fixture
def reading_model(monkeypatch):
    """Every model reads prompts with the stand-in (the tiny test model has no reader of its own)."""
    monkeypatch.setattr(LatentDiffusion, "prompt_reader", RewriteEverything())


def generate(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)


def test_the_reading_shows_under_the_prompt_and_can_be_turned_off(window, qtbot, reading_model):
    prompt = window.findChild(QPlainTextEdit, "promptEdit")
    prompt.setFocus()
    prompt.selectAll()  # the prompt box starts with an example
    QTest.keyClicks(prompt, "star, red and large, toward the top; blue all around")
    label = window.findChild(QLabel, "readAsLabel")
    check = window.findChild(QCheckBox, "readPromptCheck")
    assert check.isChecked() and label.text() == ""
    generate(window, qtbot)
    assert label.text() == f"read as: {READING}"
    assert window.history.selected.request.prompt == "star, red and large, toward the top; blue all around"

    check.click()  # off: the text encoder reads the prompt as typed
    assert not window.build_request().read_prompt
    generate(window, qtbot)
    assert label.text() == ""
    assert window.history.selected.read_as is None
