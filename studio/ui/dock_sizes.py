"""Docks keep their share of the window when it is resized.

QMainWindow gives every change in the window's size to the central widget and squeezes docks only down to their
minimum; it never gives them the room back. Shrink the window once and grow it again, and the timeline stays at its
minimum height for good: its views came back at 120 px instead of 200 (and the history at its narrowest). So each
dock's share of the window (its width or height over the window's) is kept, taken when the window first shows
and again whenever the user drags a separator, and put back after every resize.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QDockWidget, QMainWindow


class DockShares(QObject):
    def __init__(self, window: QMainWindow, docks: dict[QDockWidget, Qt.Orientation]):
        super().__init__(window)
        self.window = window
        self.docks = docks  # each dock and the direction its share is measured in
        self.shares: dict[QDockWidget, float] = {}
        window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window:
            kind = event.type()
            if kind == QEvent.Type.Show and not self.shares:
                QTimer.singleShot(0, self.record)  # after the first layout (and any restored window state)
            elif kind == QEvent.Type.Resize and self.shares:
                QTimer.singleShot(0, self.apply)  # after QMainWindow's own layout has run
            elif kind == QEvent.Type.MouseButtonRelease and self.window.childAt(event.position().toPoint()) is None:
                QTimer.singleShot(0, self.record)  # a release on the window itself: a separator was dragged
        return False

    def _placed(self, orientation: Qt.Orientation) -> list[QDockWidget]:
        return [d for d, o in self.docks.items() if o == orientation and d.isVisible() and not d.isFloating()]

    def _extent(self, orientation: Qt.Orientation) -> int:
        return self.window.width() if orientation == Qt.Orientation.Horizontal else self.window.height()

    @staticmethod
    def _size(dock: QDockWidget, orientation: Qt.Orientation) -> int:
        return dock.width() if orientation == Qt.Orientation.Horizontal else dock.height()

    def record(self) -> None:
        for orientation in (Qt.Orientation.Horizontal, Qt.Orientation.Vertical):
            extent = self._extent(orientation)
            for dock in self._placed(orientation):
                if extent > 0:
                    self.shares[dock] = self._size(dock, orientation) / extent

    def apply(self) -> None:
        for orientation in (Qt.Orientation.Horizontal, Qt.Orientation.Vertical):
            docks = [d for d in self._placed(orientation) if d in self.shares]
            if docks:
                extent = self._extent(orientation)
                self.window.resizeDocks(docks, [round(self.shares[d] * extent) for d in docks], orientation)
