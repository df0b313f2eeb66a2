"""The "Invert image…" dialog: which picture to invert, with which prompt, steps, refinement and guidance.

DDIM inversion runs the sampler backwards to find the x_T that regenerates the picture. Guidance pushes every step
off that path, so the dialog starts at CFG 1 (no guidance pass), as `studio invert` does: on the same 64 px picture
the panel's CFG 3 came back with a mean error of 82.8 levels, CFG 1 with 0.85.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from .form_widgets import dspin, form, spin, text_edit
from .settings_model import LIMITS

# The engine's default refinement (studio.engine.INVERSION_REFINE; a test keeps the two equal). Written out here
# because reading it from the engine imports torch, and the dialog opens on the UI thread.
INVERSION_REFINE = 1
INVERSION_CFG = 1.0  # no guidance pass: the inversion reconstructs the picture (see the module note)
MAX_REFINE = 10  # each iteration is one more model call per step; past a few the error no longer drops
EXPLANATION = ("Finds the noise that regenerates this picture with this prompt, then opens it as a run you can "
               "scrub and branch from. Takes about 2× the steps.")


@dataclass(frozen=True)
class InvertSource:
    key: str  # "result" | "input"
    label: str  # as the choice reads, e.g. "Result #3 (shown)"
    image: np.ndarray  # HxWx3 uint8


@dataclass(frozen=True)
class InvertChoice:
    image: np.ndarray
    prompt: str
    steps: int
    refine: int
    cfg: float


class InvertDialog(QDialog):
    """`sources` in order of preference: the first is selected."""

    def __init__(self, sources: list[InvertSource], prompt: str, steps: int, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("invertDialog")
        self.setWindowTitle("Invert image")
        self.sources = list(sources)
        self._build_controls(prompt, steps)
        self._build_layout()
        self.ok_button.setFocus()  # Enter inverts (in the prompt box it would start a new line)

    def _build_controls(self, prompt: str, steps: int) -> None:
        self.source = QComboBox()
        self.source.setObjectName("invertSourceCombo")
        for source in self.sources:
            self.source.addItem(source.label, source.key)
        self.source.setEnabled(len(self.sources) > 1)
        self.source.setToolTip("The picture to invert: the result on screen or the canvas input")
        self.prompt = text_edit("invertPromptEdit", "The prompt the picture should come back with", 56)
        self.prompt.setPlainText(prompt)
        self.prompt.setMaximumHeight(96)
        self.steps = spin("invertStepsSpin", int(LIMITS["steps"].lo), int(LIMITS["steps"].hi), steps)
        self.steps.setToolTip("DDIM steps up to the noise (and as many back down, recorded on the timeline)")
        self.refine = spin("invertRefineSpin", 0, MAX_REFINE, INVERSION_REFINE)
        self.refine.setToolTip("Fixed-point iterations per step: each makes the inversion more exact and costs "
                               "one more model call per step (0 = plain DDIM inversion)")
        limits = LIMITS["cfg"]
        self.cfg = dspin("invertCfgSpin", limits.lo, limits.hi, INVERSION_CFG, 0.5, limits.decimals)
        self.cfg.setToolTip("Guidance while inverting. 1 = none, which reconstructs the picture; higher values "
                            "drift away from it (CFG 3 gave a mean error of 82.8 levels where 1 gave 0.85)")
        self.explanation = QLabel(EXPLANATION)
        self.explanation.setObjectName("invertExplanation")
        self.explanation.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Invert")
        self.ok_button.setObjectName("invertOkButton")
        self.buttons.button(QDialogButtonBox.StandardButton.Cancel).setObjectName("invertCancelButton")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    def _build_layout(self) -> None:
        fields: QFormLayout = form()
        fields.addRow("Picture", self.source)
        fields.addRow("Prompt", self.prompt)
        fields.addRow("Steps", self.steps)
        fields.addRow("Refinement", self.refine)
        fields.addRow("CFG scale", self.cfg)
        layout = QVBoxLayout(self)
        layout.addWidget(self.explanation)
        layout.addLayout(fields)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(420)

    def choice(self) -> InvertChoice:
        source = self.sources[max(0, self.source.currentIndex())]
        return InvertChoice(image=source.image, prompt=self.prompt.toPlainText(), steps=self.steps.value(),
                            refine=self.refine.value(), cfg=round(self.cfg.value(), LIMITS["cfg"].decimals))


def ask_invert(parent: QWidget, sources: list[InvertSource], prompt: str, steps: int,
               done: Callable[[InvertChoice], None]) -> InvertDialog:
    """Open the dialog window-modal with `.open()` (no nested event loop under qasync); `done` gets the choice
    when the user presses Invert, nothing when they cancel."""
    dialog = InvertDialog(sources, prompt, steps, parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.accepted.connect(lambda: done(dialog.choice()))
    dialog.open()
    return dialog
