"""Values not known yet: until the model has loaded, its size and guidance scale show as "…", not as defaults.

Defaults would flash: the request's 512 × 512 and CFG 7.5 stood in the panel until the built-in 64 px model (CFG 3)
had loaded. The last session's values from QSettings would be no better: the size kept there is whatever image
was open last. So the boxes say "not yet" and stay greyed until ModelProbed brings the model's own values.

The "…" is the spin box's special-value text, shown while it sits one step below its range with its signals
blocked: the bound setting keeps its value, and nothing Qt redraws (showing the window, a theme change) brings the
old number back.
"""

from __future__ import annotations

from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox

PENDING_TEXT = "…"
_LOWEST = "pendingLowest"  # the spin box's own minimum while it is lowered by one step


def is_pending(spin: QSpinBox | QDoubleSpinBox) -> bool:
    return spin.specialValueText() == PENDING_TEXT and spin.property(_LOWEST) is not None


def show_pending(spin: QSpinBox | QDoubleSpinBox, pending: bool, value: float | None = None,
                 enabled_after: bool = True) -> None:
    """Grey `spin` out showing "…", or show `value` (the setting it is bound to) again, enabled or not."""
    if pending and not is_pending(spin):
        lowest = spin.minimum()
        spin.setProperty(_LOWEST, lowest)
        spin.blockSignals(True)
        spin.setSpecialValueText(PENDING_TEXT)
        spin.setMinimum(lowest - spin.singleStep())
        spin.setValue(spin.minimum())
        spin.blockSignals(False)
        spin.setEnabled(False)
    elif not pending:
        if is_pending(spin):
            spin.blockSignals(True)
            spin.setSpecialValueText("")
            spin.setMinimum(spin.property(_LOWEST))
            spin.setProperty(_LOWEST, None)
            if value is not None:
                spin.setValue(value)
            spin.blockSignals(False)
        spin.setEnabled(enabled_after)
