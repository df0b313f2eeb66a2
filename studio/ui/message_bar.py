"""An in-window message bar (not a dialog): info fades out by itself, warnings and errors stay until closed.

It floats over the top of the canvas (`overlay`) rather than taking a row of the layout: a message coming or going
never moves the canvas or changes its zoom (in a layout it did: 752 % → 700 % → 623 %)."""

from __future__ import annotations

from enum import Enum
from typing import Callable

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QWidget


class Level(Enum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"


# Background and accent per level; chosen to read on both the dark and the light palette.
_COLORS = {
    Level.INFO: ("#2d4a6b", "#7fb2e5"),
    Level.SUCCESS: ("#2c5233", "#86cf8f"),
    Level.WARNING: ("#5e4a1c", "#e6c15c"),
    Level.ERROR: ("#6b2a2a", "#f08a8a"),
}
_ICONS = {Level.INFO: "ℹ", Level.SUCCESS: "✓", Level.WARNING: "⚠", Level.ERROR: "✕"}
INFO_TIMEOUT_MS = 6000


class MessageBar(QFrame):
    closed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAutoFillBackground(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.setSpacing(8)
        self._icon = QLabel()
        self._icon.setObjectName("messageIcon")
        self._text = QLabel()
        self._text.setObjectName("messageText")
        self._text.setWordWrap(True)
        self._text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self._icon)
        layout.addWidget(self._text, 1)
        self._actions_layout = QHBoxLayout()
        self._actions_layout.setSpacing(6)
        layout.addLayout(self._actions_layout)
        self._close = QToolButton()
        self._close.setObjectName("messageCloseButton")
        self._close.setText("✕")
        self._close.setToolTip("Dismiss")
        self._close.setAutoRaise(True)
        self._close.clicked.connect(self.dismiss)
        layout.addWidget(self._close)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.dismiss)
        self.level = Level.INFO
        self._host: QWidget | None = None
        self.hide()

    def overlay(self, host: QWidget) -> None:
        """Float over the top edge of `host`, as wide as it, above its content."""
        self.setParent(host)
        self._host = host
        host.installEventFilter(self)
        self._place()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._host and event.type() == QEvent.Type.Resize:
            self._place()
        return False

    def _place(self) -> None:
        if self._host is None:
            return
        width = self._host.width()
        height = self.heightForWidth(width) if self.hasHeightForWidth() else self.sizeHint().height()
        self.setGeometry(0, 0, width, max(1, height))
        self.raise_()

    def text(self) -> str:
        return self._text.text()

    def show_message(
        self,
        text: str,
        level: Level = Level.INFO,
        actions: list[tuple[str, Callable[[], None]]] | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """Show `text`; `actions` are (label, callback) buttons that also dismiss the bar."""
        self.level = level
        self._text.setText(text)
        self._icon.setText(_ICONS[level])
        background, accent = _COLORS[level]
        palette = self.palette()
        palette.setColor(QPalette.ColorRole.Window, QColor(background))
        palette.setColor(QPalette.ColorRole.WindowText, QColor("#f4f4f4"))
        palette.setColor(QPalette.ColorRole.ButtonText, QColor("#f4f4f4"))
        self.setPalette(palette)
        self._icon.setStyleSheet(f"color: {accent}; font-weight: bold; font-size: 14px;")
        self._clear_actions()
        for label, callback in actions or []:
            button = QPushButton(label)
            button.setObjectName("messageAction" + "".join(part.capitalize() for part in label.split()))
            button.clicked.connect(lambda _=False, cb=callback: self._run_action(cb))
            self._actions_layout.addWidget(button)
            # a raised button draws its own light face: the bar's light text colour left its label invisible
            own = button.palette()
            own.setColor(QPalette.ColorRole.ButtonText, QApplication.palette().color(QPalette.ColorRole.ButtonText))
            button.setPalette(own)
        self._place()
        self.show()
        if timeout_ms is None:
            timeout_ms = INFO_TIMEOUT_MS if level in (Level.INFO, Level.SUCCESS) and not actions else 0
        if timeout_ms > 0:
            self._timer.start(timeout_ms)
        else:
            self._timer.stop()

    def info(self, text: str, **kw) -> None:
        self.show_message(text, Level.INFO, **kw)

    def success(self, text: str, **kw) -> None:
        self.show_message(text, Level.SUCCESS, **kw)

    def warning(self, text: str, **kw) -> None:
        self.show_message(text, Level.WARNING, **kw)

    def error(self, text: str, **kw) -> None:
        self.show_message(text, Level.ERROR, **kw)

    def dismiss(self) -> None:
        self._timer.stop()
        self._clear_actions()
        self.hide()
        self.closed.emit()

    def action_buttons(self) -> list[QPushButton]:
        return [self._actions_layout.itemAt(i).widget() for i in range(self._actions_layout.count())]

    def _run_action(self, callback: Callable[[], None]) -> None:
        self.dismiss()
        callback()

    def _clear_actions(self) -> None:
        while self._actions_layout.count():
            widget = self._actions_layout.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
