"""The guidance tools of the canvas toolbar: Hint (with its colour) and Keep, beside Brush and Eraser."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QColor, QIcon, QPixmap
from PySide6.QtWidgets import QColorDialog, QToolBar, QToolButton

from .guide_canvas import GuideCanvas

SWATCH = 14


def swatch(colour: QColor) -> QIcon:
    pixmap = QPixmap(SWATCH, SWATCH)
    pixmap.fill(colour)
    return QIcon(pixmap)


def add_guide_tools(bar: QToolBar, tools: QActionGroup, canvas: GuideCanvas) -> None:
    """Hint (H) and its colour button, Keep (K); one tool of the group with Brush and Eraser."""
    bar.hint_action = QAction("Hint", bar, checkable=True)
    bar.hint_action.setObjectName("hintAction")
    bar.hint_action.setShortcut("H")
    bar.hint_action.setToolTip("Paint colour hints for the colour guide (H); right-drag or Shift-drag erases")
    bar.hint_action.triggered.connect(lambda: canvas.set_tool("hint"))
    tools.addAction(bar.hint_action)
    bar.addAction(bar.hint_action)
    bar.widgetForAction(bar.hint_action).setObjectName("hintButton")

    bar.hint_colour_button = QToolButton()
    bar.hint_colour_button.setObjectName("hintColourButton")
    bar.hint_colour_button.setToolTip("The hint colour")
    bar.hint_colour_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
    bar.hint_colour_button.setIcon(swatch(canvas.hints.colour))
    bar.hint_colour_button.clicked.connect(lambda: _pick_colour(bar, canvas))
    canvas.hintColourChanged.connect(lambda colour: bar.hint_colour_button.setIcon(swatch(colour)))
    bar.addWidget(bar.hint_colour_button)

    bar.keep_action = QAction("Keep", bar, checkable=True)
    bar.keep_action.setObjectName("keepAction")
    bar.keep_action.setShortcut("K")
    bar.keep_action.setToolTip("Paint a region for the keep guide to hold close to the input image (K); "
                               "right-drag or Shift-drag erases")
    bar.keep_action.triggered.connect(lambda: canvas.set_tool("keep"))
    tools.addAction(bar.keep_action)
    bar.addAction(bar.keep_action)
    bar.widgetForAction(bar.keep_action).setObjectName("keepButton")


def _pick_colour(bar: QToolBar, canvas: GuideCanvas) -> None:
    """A colour dialog opened with .open() (no nested event loop); choosing a colour also takes up the Hint tool."""
    dialog = QColorDialog(canvas.hints.colour, bar)
    dialog.setObjectName("hintColourDialog")
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.colorSelected.connect(canvas.set_hint_colour)
    dialog.colorSelected.connect(lambda _colour: bar.hint_action.trigger())
    dialog.open()
