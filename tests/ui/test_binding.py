"""The Qt binding itself must not leak references: PySide6 6.12.0 on CPython 3.11 drops one reference to None
per void call and aborts the interpreter after ~10k calls (pyproject pins it out)."""

import sys

from PySide6.QtWidgets import QSpinBox


def test_void_qt_calls_do_not_leak_none(qtbot):
    spin = QSpinBox()
    qtbot.addWidget(spin)
    before = sys.getrefcount(None)
    for i in range(2000):
        spin.setValue(i % 50)
    assert abs(sys.getrefcount(None) - before) < 100
