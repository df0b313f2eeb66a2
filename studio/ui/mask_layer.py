"""The inpainting mask: a Grayscale8 QImage in image coordinates (255 = repaint) with one-stroke undo/redo.

Every edit — a brush or eraser stroke, clear, invert, a mask restored from a run — is one undo entry, so Ctrl+Z
undoes exactly one stroke (A1111 #7256 is the complaint when it doesn't).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, QPointF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen

from .images import gray_to_qimage, qimage_to_gray

UNDO_LIMIT = 64


class MaskLayer(QObject):
    changed = Signal()  # after any edit, undo or redo (not during a stroke's moves)
    painted = Signal()  # during a stroke, for repainting
    undoAvailable = Signal(bool)
    redoAvailable = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.image = QImage()
        self._undo: list[QImage] = []
        self._redo: list[QImage] = []
        self._stroke: QPainter | None = None
        self._last: QPointF | None = None
        self._erasing = False
        self._width = 32.0

    # -- size and content ---------------------------------------------------------------------------------------
    def reset(self, width: int, height: int) -> None:
        """A new, empty mask for a new image; history is dropped (it belonged to the old image)."""
        self.end_stroke()
        self.image = QImage(width, height, QImage.Format.Format_Grayscale8)
        self.image.fill(0)
        self._undo.clear()
        self._redo.clear()
        self._emit_availability()
        self.changed.emit()

    def is_null(self) -> bool:
        return self.image.isNull()

    def array(self) -> np.ndarray:
        """HxW uint8 copy (0 keep … 255 repaint)."""
        return qimage_to_gray(self.image) if not self.image.isNull() else np.zeros((0, 0), np.uint8)

    def is_empty(self) -> bool:
        return self.image.isNull() or not self.array().any()

    def set_array(self, gray: np.ndarray, undoable: bool = True) -> None:
        if undoable:
            self._push_undo()
        self.image = gray_to_qimage(gray)
        self.changed.emit()

    def clear(self) -> None:
        if self.image.isNull() or self.is_empty():
            return
        self._push_undo()
        self.image.fill(0)
        self.changed.emit()

    def invert(self) -> None:
        if self.image.isNull():
            return
        self._push_undo()
        self.image.invertPixels()
        self.changed.emit()

    # -- strokes --------------------------------------------------------------------------------------------------
    def begin_stroke(self, point: QPointF, width: float, erase: bool) -> None:
        if self.image.isNull():
            return
        self.end_stroke()
        self._push_undo()
        self._width, self._erasing = max(1.0, width), erase
        self._stroke = QPainter(self.image)
        self._stroke.setRenderHint(QPainter.RenderHint.Antialiasing)
        self._stroke.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        self._stroke.setPen(QPen(self.stroke_colour(erase), self._width, Qt.PenStyle.SolidLine,
                                 Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
        self._stroke.drawPoint(point)
        self._last = QPointF(point)
        self.painted.emit()

    def stroke_colour(self, erase: bool) -> QColor:
        """What a stroke paints (the hint layer, hint_layer.py, paints its colour)."""
        return QColor(0, 0, 0) if erase else QColor(255, 255, 255)

    def continue_stroke(self, point: QPointF) -> None:
        if self._stroke is None or self._last is None:
            return
        self._stroke.drawLine(self._last, point)
        self._last = QPointF(point)
        self.painted.emit()

    def end_stroke(self) -> None:
        if self._stroke is None:
            return
        self._stroke.end()
        self._stroke = None
        self._last = None
        self.changed.emit()

    @property
    def in_stroke(self) -> bool:
        return self._stroke is not None

    # -- history --------------------------------------------------------------------------------------------------
    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_depth(self) -> int:
        """Edits that undo can take back (the canvas orders its layers' edits by it)."""
        return len(self._undo)

    def undo(self) -> None:
        self.end_stroke()
        if not self._undo:
            return
        self._redo.append(self.image.copy())
        self.image = self._undo.pop()
        self._emit_availability()
        self.changed.emit()

    def redo(self) -> None:
        self.end_stroke()
        if not self._redo:
            return
        self._undo.append(self.image.copy())
        self.image = self._redo.pop()
        self._emit_availability()
        self.changed.emit()

    def history_state(self) -> tuple[QImage, list[QImage], list[QImage]]:
        """The mask with its undo and redo stacks, for `set_history_state` (the canvas keeps one per input image)."""
        self.end_stroke()
        return self.image.copy(), list(self._undo), list(self._redo)

    def set_history_state(self, state: tuple[QImage, list[QImage], list[QImage]]) -> None:
        self.end_stroke()
        image, undo, redo = state
        self.image, self._undo, self._redo = image.copy(), list(undo), list(redo)
        self._emit_availability()
        self.changed.emit()

    def _push_undo(self) -> None:
        if self.image.isNull():
            return
        self._undo.append(self.image.copy())
        del self._undo[:-UNDO_LIMIT]
        self._redo.clear()
        self._emit_availability()

    def _emit_availability(self) -> None:
        self.undoAvailable.emit(bool(self._undo))
        self.redoAvailable.emit(bool(self._redo))
