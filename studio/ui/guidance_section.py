"""The prompt panel's Guidance section: universal guidance's guides and how they are applied (Bansal et al. 2023).

Collapsible (a header button shows what is on); every control is bound to the settings model. Each guide is a
check box and a strength: the colour hint (painted on the canvas with the Hint tool), a reference picture (chosen
here: button, or drop a picture on the section; a thumbnail shows it), the keep region (the Keep tool), the scene
classifier's labels and the scene CLIP's caption (a line edit). Below
them the mode (forward / backward / both) with what a guided step costs, the guided fraction of the steps, backward
guidance's steps m, self-recurrence k and guiding only inside the mask.

The section holds the reference picture (not a setting: like the input image it is a picture the request takes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..engine import UNIVERSAL_MODES, suggested_strength
from .form_widgets import bound_check, bound_combo, bound_spin, dspin, form
from .guides import cost_text
from .images import accepts_drop, dropped, thumbnail
from .settings_model import CLASSIFIER_LABELS, UI_LIMITS, GenerationSettings, bind

MODES = {"forward": "Forward", "backward": "Backward", "both": "Forward + backward",
         "noisy": "Noisy (classifier / CLIP guidance)"}
VARIANTS = {"layout": "Layout", "palette": "Palette"}
MODE_TIP = ("Forward: the loss's gradient through the model and decoder is added to the predicted noise (eq. 6).\n"
            "Backward: the predicted image itself is optimised for m steps, then the noise follows it (eq. 7, 9).\n"
            "Noisy: classifier guidance on the noisy latent with the noise-aware classifier (Dhariwal & Nichol\n"
            "2021: Algorithm 2 for DDIM-type samplers, Algorithm 1 for ancestral ones), and CLIP guidance with the\n"
            "noise-aware CLIP (GLIDE); the classifier and CLIP guides only.")
THUMB = 44
STRENGTH_NAMES = {"classifier": "classifier", "clip": "CLIP"}
COST_SETTINGS = ("guide_mode", "backward_steps", "recurrence")
# the classifier on ẑ0 read best with DDPM (resources/guides/MODEL_CARD.md, issue #15's seventh session)
UNIVERSAL_CLASSIFIER_TIP = "Tip: the classifier on the predicted image works best with the DDPM sampler"


class GuidanceSection(QGroupBox):
    chooseReferenceRequested = Signal()
    referenceDropped = Signal(str)  # a file dropped on the section (the window reads it)
    referenceChanged = Signal()
    clearHintRequested = Signal()
    clearKeepRequested = Signal()

    def __init__(self, settings: GenerationSettings, parent: QWidget | None = None):
        super().__init__("", parent)
        self.setObjectName("guidanceSection")
        self.setAcceptDrops(True)
        self._settings = settings
        self.reference: np.ndarray | None = None
        self.reference_name = ""
        self._build_guides(settings)
        self._build_options(settings)
        self._lay_out()
        settings.changed.connect(self._on_setting_changed)
        self.set_reference(None)
        self._show_state()
        self.set_expanded(False)

    def _strength(self, kind: str, object_name: str, tip: str) -> QDoubleSpinBox:
        name = f"guide_{kind}_strength"
        limits = UI_LIMITS[name]
        box = dspin(object_name, limits.lo, limits.hi, self._settings.get(name), 1.0, limits.decimals)
        box.setToolTip(tip)
        bind(self._settings, name, box)
        return box

    def _build_guides(self, settings: GenerationSettings) -> None:
        self.colour_check = bound_check(settings, "guide_colour_on", "colourGuideCheck", "Colour hint",
                                        "Pull the image towards the colours painted with the Hint tool (H)")
        self.colour_strength = self._strength("colour", "colourGuideStrength", "Strength of the colour hint")
        self.clear_hint = _small_button("Clear", "clearHintButton", "Clear the painted hints")
        self.clear_hint.clicked.connect(self.clearHintRequested)
        self.reference_check = bound_check(settings, "guide_reference_on", "referenceGuideCheck", "Reference",
                                           "Pull the image towards a reference picture")
        self.reference_strength = self._strength("reference", "referenceGuideStrength", "Strength of the reference")
        self.reference_variant = bound_combo(settings, "guide_reference_variant", "referenceVariantCombo", VARIANTS,
                                             "Layout: match its 8×8-pixel block means (structure).\n"
                                             "Palette: match each colour channel's mean and spread (colours, style).")
        self.reference_button = _small_button("Choose…", "referenceGuideButton",
                                              "Choose the reference picture (or drop one on this section)")
        self.reference_button.clicked.connect(self.chooseReferenceRequested)
        self.clear_reference = _small_button("×", "clearReferenceButton", "Forget the reference picture")
        self.clear_reference.clicked.connect(lambda: self.set_reference(None))
        self.reference_thumb = QLabel()
        self.reference_thumb.setObjectName("referenceThumb")
        self.reference_thumb.setFixedSize(THUMB, THUMB)
        self.reference_thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.reference_thumb.setFrameShape(QFrame.Shape.StyledPanel)
        self.reference_label = QLabel()
        self.reference_label.setObjectName("referenceLabel")
        self.keep_check = bound_check(settings, "guide_keep_on", "keepGuideCheck", "Keep region",
                                      "Hold the region painted with the Keep tool (K) close to the input image")
        self.keep_strength = self._strength("keep", "keepGuideStrength", "Strength of the keep region")
        self.clear_keep = _small_button("Clear", "clearKeepButton", "Clear the keep region")
        self.clear_keep.clicked.connect(self.clearKeepRequested)
        self.classifier_check = bound_check(settings, "guide_classifier_on", "classifierGuideCheck", "Classifier",
                                            "Steer towards the labels picked here with the trained scene classifier "
                                            "(built-in model)")
        self.classifier_strength = self._strength("classifier", "classifierGuideStrength",
                                                  "Strength s of the classifier guide")
        self.classifier_labels = {
            group: bound_combo(settings, f"guide_classifier_{group}", f"classifier{group.capitalize()}Combo",
                               {"": f"any {group}", **{v: v for v in values}}, f"The {group} to ask for")
            for group, values in CLASSIFIER_LABELS.items()}
        self.clip_check = bound_check(settings, "guide_clip_on", "clipGuideCheck", "CLIP text",
                                      "Steer towards a caption with the trained scene CLIP (built-in model)")
        self.clip_strength = self._strength("clip", "clipGuideStrength", "Strength s of the CLIP guide")
        self.clip_text = QLineEdit()
        self.clip_text.setObjectName("clipTextEdit")
        self.clip_text.setPlaceholderText("a red star at the top")
        self.clip_text.setToolTip("The caption the picture should match (colours, shapes, sizes, places)")
        bind(settings, "guide_clip_text", self.clip_text)

    def _build_options(self, settings: GenerationSettings) -> None:
        self.guide_mode = bound_combo(settings, "guide_mode", "guideModeCombo", MODES, MODE_TIP)
        self.cost_label = QLabel()
        self.cost_label.setObjectName("guideCostLabel")
        self.cost_label.setWordWrap(True)
        self.cost_label.setEnabled(False)  # a note, greyed
        self.tip_label = QLabel(UNIVERSAL_CLASSIFIER_TIP)
        self.tip_label.setObjectName("guideTipLabel")
        self.tip_label.setWordWrap(True)
        self.tip_label.setEnabled(False)
        self.guide_steps = bound_spin(settings, "guide_steps", "guideStepsSpin", 0.05, tooltip=(
            "Guide this fraction of the steps, the first ones (0.7: the first 70 %); the last steps only add detail"))
        self.backward_steps = bound_spin(settings, "backward_steps", "backwardStepsSpin", 1, tooltip=(
            "m: gradient steps of backward guidance per sampler step"))
        self.recurrence = bound_spin(settings, "recurrence", "recurrenceSpin", 1, tooltip=(
            "k: take each guided step k times, re-noising in between (self-recurrence); 1 = off"))
        self.guide_in_mask = bound_check(settings, "guide_in_mask", "guideInMaskCheck", "Only inside the mask",
                                         "When inpainting, guide only the masked area")

    def _lay_out(self) -> None:
        self.toggle = QToolButton()
        self.toggle.setObjectName("guidanceToggle")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setAutoRaise(True)
        self.toggle.setToolTip("Show or hide the guidance options")
        self.toggle.toggled.connect(self.set_expanded)
        self.body = QWidget()
        self.body.setObjectName("guidanceBody")
        rows = form()
        rows.setContentsMargins(0, 0, 0, 0)
        rows.addRow(_row(self.colour_check, self.colour_strength, self.clear_hint))
        rows.addRow(_row(self.reference_check, self.reference_strength, self.reference_variant))
        picture = _row(self.reference_thumb, self.reference_label, self.reference_button, self.clear_reference)
        picture.setStretch(1, 1)
        rows.addRow(picture)
        rows.addRow(_row(self.keep_check, self.keep_strength, self.clear_keep))
        rows.addRow(_row(self.classifier_check, self.classifier_strength))
        combos = list(self.classifier_labels.values())
        for start in range(0, len(combos), 2):  # two a row: three made the settings column wider than its dock
            rows.addRow(_row(*combos[start:start + 2]))
        rows.addRow(_row(self.clip_check, self.clip_strength))
        rows.addRow(self.clip_text)
        rows.addRow("Mode", self.guide_mode)
        rows.addRow("", self.cost_label)
        rows.addRow("", self.tip_label)
        rows.addRow("Guided steps", self.guide_steps)
        rows.addRow("Backward steps", self.backward_steps)
        rows.addRow("Recurrence", self.recurrence)
        rows.addRow("", self.guide_in_mask)
        self.body.setLayout(rows)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 6)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)

    # -- state ----------------------------------------------------------------------------------------------------
    def set_expanded(self, expanded: bool) -> None:
        self.toggle.blockSignals(True)
        self.toggle.setChecked(expanded)
        self.toggle.blockSignals(False)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)

    def _on_setting_changed(self, name: str, value: Any) -> None:
        if name.startswith("guide_") or name in COST_SETTINGS or name == "sampler":
            self._show_state()
            if name.endswith("_on") and value:
                self.set_expanded(True)  # a guide just came on (a first hint stroke, a restore): show its options

    def _show_state(self) -> None:
        s = self._settings
        on = [f"{kind} {s.get(f'guide_{kind}_strength'):g}"
              for kind in ("colour", "reference", "keep", "classifier", "clip") if s.get(f"guide_{kind}_on")]
        self.toggle.setText("Guidance · " + (", ".join(on) + f" · {s.guide_mode}" if on else "off"))
        self.cost_label.setText(cost_text(s.guide_mode, s.backward_steps, s.recurrence))
        self.backward_steps.setEnabled(s.guide_mode != "forward")
        self.tip_label.setVisible(bool(s.guide_classifier_on) and s.guide_mode in UNIVERSAL_MODES
                                  and s.sampler != "ddpm")
        for kind, box in (("classifier", self.classifier_strength), ("clip", self.clip_strength)):
            suggested = suggested_strength(kind, s.guide_mode, s.recurrence)
            follows = s.guide_strength_follows[kind]
            box.setToolTip(f"Strength s of the {STRENGTH_NAMES[kind]} guide; {suggested:g} was measured best with "
                           f"mode {s.guide_mode}" + (f", recurrence {s.recurrence}" if s.recurrence > 1 else "")
                           + (" (it follows the mode until you change it)" if follows else ""))
        for kind, widgets in (("colour", (self.colour_strength,)), ("keep", (self.keep_strength,)),
                              ("reference", (self.reference_strength, self.reference_variant)),
                              ("classifier", (self.classifier_strength, *self.classifier_labels.values())),
                              ("clip", (self.clip_strength, self.clip_text))):
            for widget in widgets:
                widget.setEnabled(bool(s.get(f"guide_{kind}_on")))

    # -- the reference picture ------------------------------------------------------------------------------------
    def set_reference(self, image: np.ndarray | None, name: str = "", switch_on: bool = True) -> None:
        """The reference picture (HxWx3 uint8), shown as a thumbnail; a new one switches the reference guide on
        (unless restored with its settings: `switch_on` False)."""
        self.reference = None if image is None else np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        self.reference_name = name if image is not None else ""
        self.reference_thumb.setPixmap(thumbnail(self.reference, THUMB))
        self.reference_label.setText(name if image is not None else "no picture")
        self.reference_label.setToolTip(name)
        self.clear_reference.setEnabled(image is not None)
        if image is not None and switch_on:
            self._settings.guide_reference_on = True
        self.referenceChanged.emit()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        event.acceptProposedAction() if accepts_drop(event.mimeData()) else event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        """A picture dropped here is the reference (anywhere else in the window it opens as the input)."""
        what = dropped(event.mimeData())
        if what is None:
            event.ignore()
            return
        event.acceptProposedAction()
        if isinstance(what, str):
            self.referenceDropped.emit(what)
        else:
            self.set_reference(what, "dropped picture")


def _small_button(text: str, name: str, tip: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setObjectName(name)
    button.setToolTip(tip)
    return button


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setSpacing(6)
    for widget in widgets:
        row.addWidget(widget)
    if widgets and isinstance(widgets[0], QCheckBox):
        row.setStretch(0, 1)
    return row
