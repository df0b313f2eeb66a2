"""Small builders for the form controls the panels use (named, ranged, with sane defaults)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QPlainTextEdit, QSpinBox

from .settings_model import LIMITS, GenerationSettings, bind


def spin(name: str, lo: int, hi: int, value: int, step: int = 1, suffix: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setObjectName(name)
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    spin.setAccelerated(True)
    return spin


def dspin(name: str, lo: float, hi: float, value: float, step: float, decimals: int = 2, suffix: str = "") -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setObjectName(name)
    spin.setRange(lo, hi)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


COMBO_MIN_CHARACTERS = 8  # a box may shrink to this many characters; its popup still shows whole labels


def combo(name: str, items: dict[str, str]) -> QComboBox:
    combo = QComboBox()
    combo.setObjectName(name)
    for key, label in items.items():
        combo.addItem(label, key)
    # The longest label ("Cold improved (Alg. 2)") must not set the panel's minimum width: at the window's minimum
    # size the settings column is narrower than that, and a wider row would be clipped (no sideways scrolling).
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
    return combo


def form() -> QFormLayout:
    form = QFormLayout()
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    form.setHorizontalSpacing(8)
    form.setVerticalSpacing(6)
    return form


def set_combo(combo: QComboBox, value: Any) -> None:
    if value is None:
        return
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


# -- controls bound to a generation setting (range and decimals from the settings model's limits) ---------------------
QT_INT_MAX = 2**31 - 1


def bound_spin(settings: GenerationSettings, name: str, object_name: str, step: float, suffix: str = "",
               tooltip: str = "") -> QSpinBox | QDoubleSpinBox:
    limits = LIMITS[name]
    if limits.decimals or limits.hi > QT_INT_MAX:  # QSpinBox holds 32-bit ints; seeds go past that
        box = dspin(object_name, limits.lo, limits.hi, settings.get(name), step, limits.decimals, suffix)
    else:
        box = spin(object_name, int(limits.lo), int(limits.hi), settings.get(name), int(step), suffix)
    box.setToolTip(tooltip)
    bind(settings, name, box)
    return box


def bound_combo(settings: GenerationSettings, name: str, object_name: str, items: dict[str, str],
                tooltip: str = "") -> QComboBox:
    box = combo(object_name, items)
    box.setToolTip(tooltip)
    bind(settings, name, box)
    return box


def bound_check(settings: GenerationSettings, name: str, object_name: str, text: str, tooltip: str = "") -> QCheckBox:
    box = QCheckBox(text)
    box.setObjectName(object_name)
    box.setToolTip(tooltip)
    bind(settings, name, box)
    return box


def text_edit(object_name: str, placeholder: str, min_height: int) -> QPlainTextEdit:
    edit = QPlainTextEdit()
    edit.setObjectName(object_name)
    edit.setPlaceholderText(placeholder)
    edit.setTabChangesFocus(True)
    edit.setMinimumHeight(min_height)
    return edit
