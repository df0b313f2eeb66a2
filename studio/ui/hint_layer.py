"""The colour-hint layer of universal guidance: RGBA strokes in image coordinates, painted over the picture.

A hint is a colour where it is painted (alpha > 0) and nothing elsewhere, exactly the RGBA picture a colour guide
takes (engine guidance.py, `Guide("colour", …)`). It is a MaskLayer in every other way: one undo entry per stroke,
clear, a history the canvas can save and restore.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, QSize, Qt
from PySide6.QtGui import QColor, QImage

from .images import gray_to_qimage, qimage_to_gray
from .mask_layer import MaskLayer

DEFAULT_HINT_COLOUR = QColor(230, 60, 40)
# non-premultiplied RGBA in memory order R, G, B, A: an array view needs no channel shuffling
FORMAT = QImage.Format.Format_RGBA8888


def rgba_to_qimage(rgba: np.ndarray) -> QImage:
    data = np.ascontiguousarray(rgba, dtype=np.uint8)
    if data.ndim != 3 or data.shape[2] != 4:
        raise ValueError(f"expected an HxWx4 picture, got shape {data.shape}")
    h, w, _ = data.shape
    return QImage(data.data, w, h, 4 * w, FORMAT).copy()


def qimage_to_rgba(image: QImage) -> np.ndarray:
    image = image.convertToFormat(FORMAT)
    w, h, stride = image.width(), image.height(), image.bytesPerLine()
    buffer = np.frombuffer(image.constBits(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    return buffer[:, : 4 * w].reshape(h, w, 4).copy()


class HintLayer(MaskLayer):
    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.colour = QColor(DEFAULT_HINT_COLOUR)

    def reset(self, width: int, height: int) -> None:
        self.end_stroke()
        self.image = QImage(width, height, FORMAT)
        self.image.fill(Qt.GlobalColor.transparent)
        self._undo.clear()
        self._redo.clear()
        self._emit_availability()
        self.changed.emit()

    def stroke_colour(self, erase: bool) -> QColor:
        return QColor(0, 0, 0, 0) if erase else QColor(self.colour.red(), self.colour.green(), self.colour.blue())

    def array(self) -> np.ndarray:
        """HxWx4 uint8 RGBA copy: the hint colour where alpha > 0."""
        return qimage_to_rgba(self.image) if not self.image.isNull() else np.zeros((0, 0, 4), np.uint8)

    def is_empty(self) -> bool:
        return self.image.isNull() or not self.array()[..., 3].any()

    def set_array(self, rgba: np.ndarray, undoable: bool = True) -> None:
        if undoable:
            self._push_undo()
        self.image = rgba_to_qimage(rgba)
        self.changed.emit()

    def clear(self) -> None:
        if self.image.isNull() or self.is_empty():
            return
        self._push_undo()
        self.image.fill(Qt.GlobalColor.transparent)
        self.changed.emit()

    def invert(self) -> None:
        """A hint has no inverse (which colour would the unpainted part get?)."""


def fit_layer(layer: MaskLayer, size: QSize) -> bool:
    """Give `layer` the picture's size: an empty one starts afresh, a painted one is scaled (its strokes stay where
    they were on the picture; its undo history, drawn at the old size, is dropped). True when it changed size."""
    if layer.image.size() == size:
        return False
    if layer.is_null() or layer.is_empty() or size.isEmpty():
        layer.reset(size.width(), size.height())
    else:
        scaled = layer.image.scaled(size, Qt.AspectRatioMode.IgnoreAspectRatio,
                                    Qt.TransformationMode.SmoothTransformation)
        layer.set_history_state((scaled, [], []))
    return True


def resized(array: np.ndarray, size: QSize) -> np.ndarray:
    """A layer's picture (HxWx4 RGBA or HxW gray) at `size`, scaled smoothly when it differs."""
    h, w = size.height(), size.width()
    if array.shape[:2] == (h, w):
        return array
    image = rgba_to_qimage(array) if array.ndim == 3 else gray_to_qimage(array)
    image = image.scaled(w, h, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
    return qimage_to_rgba(image) if array.ndim == 3 else qimage_to_gray(image)
