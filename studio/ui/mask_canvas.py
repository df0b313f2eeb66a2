"""The canvas: the input image with its inpainting mask painted on top, the result, and live step previews.

Everything is kept in image coordinates (the mask is a QImage the size of the image); the widget only maps
between screen and image through one zoom + offset transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QCursor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from .images import qimage_to_rgb, rgb_to_qimage, smooth_scaling, tinted_mask
from .mask_layer import UNDO_LIMIT, MaskLayer
from .mask_ops import effective_mask
from .mask_tint import contrasting_tint

MASK_COLOR = (255, 64, 96)
MIN_ZOOM, MAX_ZOOM = 0.05, 32.0


@dataclass(frozen=True)
class CanvasState:
    """What the canvas showed before a picture became the input, for undo: the input, its mask with the mask's own
    undo history, the result or preview on screen and its caption."""

    image: QImage | None
    mask: tuple
    result: QPixmap | None
    preview: QPixmap | None
    arrays: tuple  # (result, preview) as HxWx3 arrays
    caption: str
    showing_result: bool
    label: str | None


class MaskCanvas(QWidget):
    brushSizeChanged = Signal(int)
    zoomChanged = Signal(float)
    showingResultChanged = Signal(bool)
    stepKey = Signal(int)  # ← / → while the canvas has focus: move the timeline
    resultPressed = Signal()  # a left press on a shown result or preview; the window decides what it paints on
    inputRestored = Signal()  # undo / redo brought back the input from before (or after) a picture became it
    undoAvailable = Signal(bool)  # a mask edit or an input change can be undone
    redoAvailable = Signal(bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("maskCanvas")
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAcceptDrops(False)  # the window handles drops for the whole app
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.mask = MaskLayer(self)
        self.mask.painted.connect(self._on_mask_painted)
        self.mask.changed.connect(self._on_mask_changed)
        self.mask.undoAvailable.connect(self._emit_availability)
        self.mask.redoAvailable.connect(self._emit_availability)
        self.input_label: str | None = None  # what the window calls the input ("photo.png"), kept with undo
        self._input_undo: list[CanvasState] = []  # before each "this picture is now the input", newest last
        self._input_redo: list[CanvasState] = []
        self._replaying = False  # inside undo() / redo() or a picture becoming the input

        self._image: QImage | None = None
        self._pixmap: QPixmap | None = None
        self._result: QPixmap | None = None
        self._preview: QPixmap | None = None
        self._result_array: np.ndarray | None = None
        self._preview_array: np.ndarray | None = None
        self._caption = ""
        self._showing_result = False
        self._blank_size = QSize(512, 512)
        self.blank_note = ""  # said in the blank frame instead of its size (e.g. while the model loads)

        self.tool = "brush"
        self._brush_size = 32
        self.mask_opacity = 0.55
        self.show_feathered = True
        self.feather = 4.0
        self.grow = 0
        self._overlay: QImage | None = None
        self._tint: tuple[int, tuple[int, int, int]] = (0, MASK_COLOR)  # (the input's cacheKey, its mask tint)

        self._zoom = 1.0
        self._offset = QPointF(0, 0)
        self._fit = True
        self._panning = False
        self._space_held = False
        self._pan_anchor = QPointF()
        self._cursor_pos: QPointF | None = None

    # -- content --------------------------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(640, 560)

    def minimumSizeHint(self) -> QSize:
        return QSize(240, 200)

    def has_image(self) -> bool:
        return self._image is not None

    def image_size(self) -> QSize:
        return self._image.size() if self._image is not None else QSize(self._blank_size)

    def image_array(self) -> np.ndarray | None:
        return qimage_to_rgb(self._image) if self._image is not None else None

    def set_image(self, image: np.ndarray | None, keep_mask: bool = False) -> None:
        """Open `image` (HxWx3 uint8) as the input; None returns to the blank canvas. A new image starts a new
        history: undo no longer brings back the inputs before it."""
        old_size = self.image_size()
        if not self._replaying:
            self._input_undo.clear()
            self._input_redo.clear()
        if image is None:
            self._image, self._pixmap = None, None
            self.mask.reset(self._blank_size.width(), self._blank_size.height())
        else:
            self._image = rgb_to_qimage(image)
            self._pixmap = QPixmap.fromImage(self._image)
            if not (keep_mask and old_size == self._image.size() and not self.mask.is_null()):
                self.mask.reset(self._image.width(), self._image.height())
        self.set_result(None)
        if self.image_size() != old_size or self._fit:
            self.fit()
            self._fit_brush()
        self.update()

    def _fit_brush(self) -> None:
        """A brush wider than a quarter of the picture is no brush: shrink it to an eighth (64 px image → 8 px)."""
        side = min(self.image_size().width(), self.image_size().height())
        if side > 0 and self._brush_size > side // 4:
            self.set_brush_size(max(1, side // 8))

    def set_blank_size(self, width: int, height: int) -> None:
        self._blank_size = QSize(width, height)
        if self._image is None:
            if self.mask.image.size() != self._blank_size:
                self.mask.reset(width, height)
                self._fit_brush()
            self._refit()
            self.update()

    def mask_array(self) -> np.ndarray | None:
        """HxW float32 in [0, 1] (1 = repaint) when an image is open and something is painted, else None."""
        if self._image is None or self.mask.is_empty():
            return None
        return self.mask.array().astype(np.float32) / 255.0

    def set_mask(self, mask: np.ndarray | None, undoable: bool = True) -> None:
        if self._image is None:
            return
        if mask is None:
            self.mask.clear()
            return
        gray = np.clip(np.round(np.asarray(mask, np.float32) * 255), 0, 255).astype(np.uint8)
        if gray.shape != (self._image.height(), self._image.width()):
            return
        self.mask.set_array(gray, undoable=undoable)

    def set_result(self, image: np.ndarray | None, caption: str = "Result") -> None:
        self._result = QPixmap.fromImage(rgb_to_qimage(image)) if image is not None else None
        self._result_array, self._preview, self._preview_array = image, None, None
        self._caption = caption if image is not None else ""
        self.set_showing_result(image is not None)

    def set_preview(self, image: np.ndarray | None, caption: str = "") -> None:
        """A live step preview (any resolution; scaled to the image's frame) shown in place of the result."""
        self._preview = QPixmap.fromImage(rgb_to_qimage(image)) if image is not None else None
        self._preview_array = image
        self._caption = caption
        self.set_showing_result(image is not None or self._result is not None)
        self.update()

    def has_result(self) -> bool:
        return self._result is not None or self._preview is not None

    def shown_picture(self) -> tuple[np.ndarray, str] | None:
        """The result or preview on screen (HxWx3, any size) and its caption; None while the input is shown."""
        if not self._showing_result:
            return None
        array = self._preview_array if self._preview is not None else self._result_array
        return (array, self._caption) if array is not None else None

    # -- a picture becomes the input, undoably ------------------------------------------------------------------------
    def take_as_input(self, image: np.ndarray) -> None:
        """`image` becomes the input as one undo step. The mask stays when the size matches (paint, generate, paint
        more: one region refined); its strokes so far belong to the old input and come back with it on undo."""
        before = self._capture(keep_redo=False)  # a new step: what was undone on the old input is gone
        self._input_undo.append(before)
        del self._input_undo[:-UNDO_LIMIT]
        self._input_redo.clear()
        self._replaying = True
        try:
            self.set_image(image, keep_mask=True)
            self.mask.set_history_state((self.mask.image, [], []))
        finally:
            self._replaying = False
        self._emit_availability()

    def can_undo(self) -> bool:
        return self.mask.can_undo() or bool(self._input_undo)

    def can_redo(self) -> bool:
        return self.mask.can_redo() or bool(self._input_redo)

    def undo(self) -> None:
        """One step back: the last stroke on this input, else the input from before it (with its mask history)."""
        if self.mask.can_undo():
            self._replay(self.mask.undo)
        elif self._input_undo:
            self._input_redo.append(self._capture())
            self._replay(lambda: self._restore(self._input_undo.pop()))

    def redo(self) -> None:
        if self.mask.can_redo():
            self._replay(self.mask.redo)
        elif self._input_redo:
            self._input_undo.append(self._capture())
            self._replay(lambda: self._restore(self._input_redo.pop()))

    def _replay(self, step) -> None:
        self._replaying = True
        try:
            step()
        finally:
            self._replaying = False
        self._emit_availability()

    def _capture(self, keep_redo: bool = True) -> CanvasState:
        image, undo, redo = self.mask.history_state()
        return CanvasState(QImage(self._image) if self._image is not None else None,
                           (image, undo, redo if keep_redo else []),
                           self._result, self._preview, (self._result_array, self._preview_array), self._caption,
                           self._showing_result, self.input_label)

    def _restore(self, state: CanvasState) -> None:
        old_size = self.image_size()
        self._image = state.image
        self._pixmap = QPixmap.fromImage(state.image) if state.image is not None else None
        self.input_label = state.label
        self.mask.set_history_state(state.mask)
        self._result, self._preview, self._caption = state.result, state.preview, state.caption
        self._result_array, self._preview_array = state.arrays
        self._showing_result = False
        self.set_showing_result(state.showing_result)
        if self.image_size() != old_size:
            self.fit()
        self.inputRestored.emit()

    def _emit_availability(self, *_) -> None:
        self.undoAvailable.emit(self.can_undo())
        self.redoAvailable.emit(self.can_redo())

    @property
    def showing_result(self) -> bool:
        return self._showing_result

    def set_showing_result(self, on: bool) -> None:
        on = bool(on) and self.has_result()
        if on != self._showing_result:
            self._showing_result = on
            self.showingResultChanged.emit(on)
        self.update()

    # -- brush ----------------------------------------------------------------------------------------------------
    @property
    def brush_size(self) -> int:
        return self._brush_size

    def set_brush_size(self, size: int) -> None:
        size = int(max(1, min(1024, size)))
        if size != self._brush_size:
            self._brush_size = size
            self.brushSizeChanged.emit(size)
            self.update()

    def set_tool(self, tool: str) -> None:
        self.tool = tool
        self.update()

    def set_mask_opacity(self, opacity: float) -> None:
        self.mask_opacity = max(0.0, min(1.0, opacity))
        self.update()

    def set_feather(self, feather: float, grow: int | None = None) -> None:
        self.feather = float(feather)
        if grow is not None:
            self.grow = int(grow)
        self._rebuild_overlay()

    def set_show_feathered(self, on: bool) -> None:
        self.show_feathered = bool(on)
        self._rebuild_overlay()

    # -- view transform -------------------------------------------------------------------------------------------
    @property
    def zoom(self) -> float:
        return self._zoom

    def fit(self) -> None:
        self._fit = True
        self._refit()

    def actual_size(self) -> None:
        self._fit = False
        self._set_view(1.0, self._centred_offset(1.0))

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        anchor = QPointF(self.width() / 2, self.height() / 2) if anchor is None else anchor
        zoom = max(MIN_ZOOM, min(MAX_ZOOM, self._zoom * factor))
        image_point = self.to_image(anchor)
        self._fit = False
        self._set_view(zoom, anchor - image_point * zoom)

    def to_image(self, widget_point: QPointF) -> QPointF:
        return (QPointF(widget_point) - self._offset) / self._zoom

    def to_widget(self, image_point: QPointF) -> QPointF:
        return QPointF(image_point) * self._zoom + self._offset

    def image_rect(self) -> QRectF:
        size = self.image_size()
        return QRectF(self._offset, QPointF(self._offset.x() + size.width() * self._zoom,
                                            self._offset.y() + size.height() * self._zoom))

    def _refit(self) -> None:
        if not self._fit:
            return
        size = self.image_size()
        margin = 16
        if size.isEmpty() or self.width() <= 2 * margin or self.height() <= 2 * margin:
            return
        zoom = min((self.width() - 2 * margin) / size.width(), (self.height() - 2 * margin) / size.height())
        zoom = max(MIN_ZOOM, min(MAX_ZOOM, zoom))
        self._set_view(zoom, self._centred_offset(zoom))

    def _centred_offset(self, zoom: float) -> QPointF:
        size = self.image_size()
        return QPointF((self.width() - size.width() * zoom) / 2, (self.height() - size.height() * zoom) / 2)

    def _set_view(self, zoom: float, offset: QPointF) -> None:
        changed = zoom != self._zoom
        self._zoom, self._offset = zoom, QPointF(offset)
        if changed:
            self.zoomChanged.emit(zoom)
        self.update()

    def resizeEvent(self, event) -> None:
        self._refit()
        super().resizeEvent(event)

    # -- mask overlay ---------------------------------------------------------------------------------------------
    def _on_mask_painted(self) -> None:
        self._overlay = None  # while a stroke is under way, show the raw mask (cheap)
        self.update()

    def _on_mask_changed(self) -> None:
        if not self._replaying and not self.mask.can_redo() and self._input_redo:
            self._input_redo.clear()  # a new edit: what was undone is gone, as in any undo history
            self._emit_availability()
        self._rebuild_overlay()

    def _rebuild_overlay(self) -> None:
        if self.mask.is_null() or self._image is None:
            self._overlay = None
        else:
            gray = self.mask.array()
            if self.show_feathered and (self.feather > 0 or self.grow > 0):
                gray = effective_mask(gray, self.grow, self.feather)
            self._overlay = tinted_mask(gray, self.mask_tint(), 1.0)
        self.update()

    def _raw_overlay(self) -> QImage:
        return tinted_mask(self.mask.array(), self.mask_tint(), 1.0)

    def mask_tint(self) -> tuple[int, int, int]:
        """The mask's colour: one that contrasts with the input (mask_tint.py), chosen once per picture."""
        key = self._image.cacheKey() if self._image is not None else 0
        if self._tint[0] != key:
            self._tint = (key, contrasting_tint(qimage_to_rgb(self._image)) if self._image is not None else MASK_COLOR)
        return self._tint[1]

    # -- painting -------------------------------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(palette.ColorRole.Dark).darker(130))
        target = self.image_rect()

        shown = None
        if self._showing_result:
            shown = self._preview if self._preview is not None else self._result
        picture = shown if shown is not None else self._pixmap
        if picture is not None:  # one smoothing rule for the input and what is shown over it (images.py)
            scale = target.width() / max(1, picture.width())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth_scaling(scale))
        if shown is not None:
            painter.drawPixmap(target, shown, QRectF(shown.rect()))
        elif self._pixmap is not None:
            painter.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
            overlay = self._overlay if self._overlay is not None else self._raw_overlay()
            painter.setOpacity(self.mask_opacity)
            painter.drawImage(target, overlay, QRectF(overlay.rect()))
            painter.setOpacity(1.0)
        else:
            self._paint_empty(painter, target)
        self._paint_guides(painter, target, shown is not None)

        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QPen(palette.color(palette.ColorRole.Mid), 1))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(target.adjusted(-0.5, -0.5, 0.5, 0.5))
        if self._caption and shown is not None:
            self._paint_caption(painter, self._caption)
        elif self._image is not None and self.has_result():
            self._paint_caption(painter, "Input")
        if self._cursor_pos is not None and self._can_paint() and not (self._panning or self._space_held):
            painter.setBrush(Qt.BrushStyle.NoBrush)
            radius = self._brush_size * self._zoom / 2
            painter.setPen(QPen(QColor(0, 0, 0, 160), 3))
            painter.drawEllipse(self._cursor_pos, radius, radius)
            painter.setPen(QPen(QColor(255, 255, 255, 220) if self.tool == "brush" else QColor(120, 200, 255), 1.2))
            painter.drawEllipse(self._cursor_pos, radius, radius)
        painter.end()

    def _paint_guides(self, painter: QPainter, target: QRectF, over_result: bool) -> None:
        """Layers drawn over the picture, under the frame and caption (guide_canvas.py draws the guides' layers)."""

    def _paint_empty(self, painter: QPainter, target: QRectF) -> None:
        palette = self.palette()
        painter.fillRect(target, palette.color(palette.ColorRole.Base))
        pen = QPen(palette.color(palette.ColorRole.Mid), 1, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRect(target)
        painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
        size = self.image_size()
        what = self.blank_note or f"{size.width()} × {size.height()}"
        text = (f"{what}\n\nPress Generate (Ctrl+Enter) to create an image,\n"
                "or open, drop or paste (Ctrl+V) one to inpaint.")
        painter.drawText(target.adjusted(8, 8, -8, -8), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)

    def _paint_caption(self, painter: QPainter, text: str) -> None:
        metrics = painter.fontMetrics()
        rect = QRectF(10, 10, metrics.horizontalAdvance(text) + 16, metrics.height() + 8)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(rect, 4, 4)
        painter.setPen(QColor(240, 240, 240))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)

    # -- input ----------------------------------------------------------------------------------------------------
    def _can_paint(self) -> bool:
        return self._image is not None and not self._showing_result

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if event.button() == Qt.MouseButton.MiddleButton or (
            event.button() == Qt.MouseButton.LeftButton and self._space_held
        ):
            self._panning = True
            self._pan_anchor = pos - self._offset
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if event.button() == Qt.MouseButton.LeftButton and self._showing_result:
            # What you paint on is what you see: the window makes the shown picture the input (said, undoable) or
            # says why not. Either way a press never switches to the input silently and paints there.
            self.resultPressed.emit()
            if self._showing_result:
                return
        if event.button() == Qt.MouseButton.LeftButton and self._image is not None:
            self.mask.begin_stroke(self.to_image(pos), self._brush_size, self.tool == "eraser")
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        self._cursor_pos = pos
        if self._panning:
            self._fit = False
            self._set_view(self._zoom, pos - self._pan_anchor)
            return
        if self.mask.in_stroke and event.buttons() & Qt.MouseButton.LeftButton:
            self.mask.continue_stroke(self.to_image(pos))
            return
        self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._panning and event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._panning = False
            self.setCursor(Qt.CursorShape.OpenHandCursor if self._space_held else Qt.CursorShape.CrossCursor)
            return
        if event.button() == Qt.MouseButton.LeftButton and self.mask.in_stroke:
            self.mask.end_stroke()
            return
        super().mouseReleaseEvent(event)

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.15**steps, event.position())
        event.accept()

    def enterEvent(self, event) -> None:
        self.setCursor(Qt.CursorShape.CrossCursor)
        super().enterEvent(event)

    def leaveEvent(self, event) -> None:
        self._cursor_pos = None
        self.update()
        super().leaveEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_held = True
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            self.stepKey.emit(-1 if key == Qt.Key.Key_Left else 1)
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_held = False
            self._panning = False
            self.setCursor(QCursor(Qt.CursorShape.CrossCursor))
        else:
            super().keyReleaseEvent(event)
