"""Fusion with a dark or light palette; "system" leaves the platform's own palette alone."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

THEMES = ("dark", "light", "system")


def _dark_palette() -> QPalette:
    p = QPalette()
    c = QColor
    roles = QPalette.ColorRole
    p.setColor(roles.Window, c(43, 45, 48))
    p.setColor(roles.WindowText, c(222, 224, 227))
    p.setColor(roles.Base, c(30, 31, 34))
    p.setColor(roles.AlternateBase, c(38, 40, 43))
    p.setColor(roles.ToolTipBase, c(58, 61, 65))
    p.setColor(roles.ToolTipText, c(230, 230, 230))
    p.setColor(roles.PlaceholderText, c(128, 132, 138))
    p.setColor(roles.Text, c(222, 224, 227))
    p.setColor(roles.Button, c(55, 58, 62))
    p.setColor(roles.ButtonText, c(222, 224, 227))
    p.setColor(roles.BrightText, c(255, 90, 90))
    p.setColor(roles.Light, c(75, 78, 83))
    p.setColor(roles.Midlight, c(62, 65, 70))
    p.setColor(roles.Mid, c(80, 84, 90))
    p.setColor(roles.Dark, c(28, 29, 31))
    p.setColor(roles.Shadow, c(12, 12, 12))
    p.setColor(roles.Highlight, c(76, 139, 245))
    p.setColor(roles.HighlightedText, c(255, 255, 255))
    p.setColor(roles.Link, c(110, 168, 254))
    disabled = QPalette.ColorGroup.Disabled
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(disabled, role, c(112, 116, 122))
    p.setColor(disabled, roles.Button, c(48, 50, 54))
    p.setColor(disabled, roles.Base, c(36, 37, 40))
    p.setColor(disabled, roles.Highlight, c(70, 74, 80))
    return p


def _light_palette() -> QPalette:
    app = QApplication.instance()
    palette = app.style().standardPalette() if app is not None else QPalette()
    palette.setColor(QPalette.ColorRole.Highlight, QColor(38, 110, 220))
    palette.setColor(QPalette.ColorRole.Dark, QColor(150, 152, 156))
    return palette


def apply_theme(name: str) -> None:
    app = QApplication.instance()
    if app is None:
        return
    if name == "system":
        app.setPalette(QPalette())
        return
    app.setStyle("Fusion")
    app.setPalette(_dark_palette() if name == "dark" else _light_palette())
