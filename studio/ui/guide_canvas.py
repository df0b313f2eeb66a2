"""The canvas with universal guidance's two paint layers over the inpainting mask: colour hints and a keep region.

- Hint (H): coloured strokes; the colour guide pulls the predicted image towards them where painted. It paints on
  the blank canvas (text to image), the input or the result on screen alike, and never makes the shown result the
  input: a hint steers the next run, whatever it starts from.
- Keep (K): the region the keep guide ties to the input image, a soft alternative to the mask's latent blend. A
  third layer rather than "the unmasked region": with a mask the engine already blends the unmasked region back at
  every step, so a keep guide there would add nothing; its use is image to image with no mask, holding a region
  close to the input while the rest changes freely. Like the mask it is painted on the picture you see.

Right-drag (or Shift-drag) erases either layer. Each stroke on any layer is one undo step, in the order made: the
canvas remembers where the mask and input histories stood at each guide edit and undoes whichever came last.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter
from PySide6.QtWidgets import QWidget

from .hint_layer import HintLayer, fit_layer, resized
from .images import tinted_mask
from .mask_canvas import MaskCanvas
from .mask_layer import UNDO_LIMIT, MaskLayer

GUIDE_TOOLS = ("hint", "keep")
KEEP_COLOR = (80, 220, 255)
HINT_OPACITY = 0.8
HINT_OVER_RESULT = 0.35
KEEP_OPACITY = 0.45


class GuideCanvas(MaskCanvas):
    guidesChanged = Signal(str)  # "colour" | "keep": that layer changed (an edit, undo, redo, restore)
    firstGuideStroke = Signal(str)  # a stroke began on an empty layer: the window switches that guide on
    keepNeedsImage = Signal()  # a keep stroke with no input image to keep
    hintColourChanged = Signal(QColor)

    def __init__(self, parent: QWidget | None = None):
        self._guide_undo: list[tuple[MaskLayer, tuple[int, int]]] = []  # (layer, where the others stood), newest last
        self._guide_redo: list[tuple[MaskLayer, tuple[int, int]]] = []
        super().__init__(parent)
        self.hints = HintLayer(self)
        self.keep = MaskLayer(self)
        self._keep_overlay: QImage | None = None
        for layer, kind in ((self.hints, "colour"), (self.keep, "keep")):
            layer.painted.connect(self.update)
            layer.changed.connect(lambda kind=kind: self._on_guide_changed(kind))
        self._fit_guides()

    # -- the layers' content ------------------------------------------------------------------------------------------
    def hint_array(self) -> np.ndarray | None:
        """HxWx4 uint8 RGBA at the picture's size when a hint is painted, else None."""
        return None if self.hints.is_empty() else self.hints.array()

    def keep_array(self) -> np.ndarray | None:
        """HxW float32 in [0, 1] (1 = keep) when an input is open and a region is painted, else None."""
        if not self.has_image() or self.keep.is_empty():
            return None
        return self.keep.array().astype(np.float32) / 255.0

    def set_hint_array(self, rgba: np.ndarray | None, undoable: bool = True) -> None:
        """A hint from a run, the autosave or a file, scaled to the picture when its size differs."""
        self._set_layer(self.hints, None if rgba is None else np.asarray(rgba, np.uint8), undoable)

    def set_keep_array(self, keep: np.ndarray | None, undoable: bool = True) -> None:
        gray = None if keep is None else np.clip(np.round(np.asarray(keep, np.float32) * 255), 0, 255).astype(np.uint8)
        self._set_layer(self.keep, gray, undoable)

    def _set_layer(self, layer: MaskLayer, array: np.ndarray | None, undoable: bool) -> None:
        if undoable:
            if array is not None:
                self._guide_edit(layer, lambda: layer.set_array(resized(array, self.image_size())))
            elif not layer.is_empty():
                self._guide_edit(layer, layer.clear)
            return
        self._forget(layer)
        size = self.image_size()
        layer.reset(size.width(), size.height())
        if array is not None:
            layer.set_array(resized(array, size), undoable=False)

    def clear_hints(self) -> None:
        self._set_layer(self.hints, None, undoable=True)

    def clear_keep(self) -> None:
        self._set_layer(self.keep, None, undoable=True)

    def set_hint_colour(self, colour: QColor) -> None:
        if colour.isValid() and colour != self.hints.colour:
            self.hints.colour = QColor(colour)
            self.hintColourChanged.emit(QColor(colour))
            self.update()

    # -- sizes follow the picture -----------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray | None, keep_mask: bool = False) -> None:
        super().set_image(image, keep_mask)
        self._fit_guides()

    def set_blank_size(self, width: int, height: int) -> None:
        super().set_blank_size(width, height)
        self._fit_guides()

    def _restore(self, state) -> None:
        super()._restore(state)
        self._fit_guides()

    def _fit_guides(self) -> None:
        if not hasattr(self, "keep"):
            return  # inside MaskCanvas.__init__
        for layer in (self.hints, self.keep):
            if fit_layer(layer, self.image_size()):  # its history was drawn at another size: gone
                self._forget(layer)
        self._emit_availability()

    def _forget(self, layer: MaskLayer) -> None:
        self._guide_undo = [entry for entry in self._guide_undo if entry[0] is not layer]
        self._guide_redo = [entry for entry in self._guide_redo if entry[0] is not layer]

    # -- undo in the order the edits were made -------------------------------------------------------------------------
    def _position(self) -> tuple[int, int]:
        return len(self._input_undo), self.mask.undo_depth()

    def _guide_edit(self, layer: MaskLayer, edit) -> None:
        """Run `edit` on a guide layer as one undo step; a new edit ends every redo (as in any undo history)."""
        if layer.is_null():
            return
        edit()
        self._guide_undo.append((layer, self._position()))
        del self._guide_undo[:-UNDO_LIMIT]
        self._guide_redo.clear()
        self._input_redo.clear()
        if self.mask.can_redo():
            image, undo, _redo = self.mask.history_state()
            self._replay(lambda: self.mask.set_history_state((image, undo, [])))
        self._emit_availability()

    def can_undo(self) -> bool:
        return super().can_undo() or bool(self._guide_undo)

    def can_redo(self) -> bool:
        return super().can_redo() or bool(self._guide_redo)

    def undo(self) -> None:
        if self._guide_undo and (self._guide_undo[-1][1] == self._position() or not super().can_undo()):
            entry = self._guide_undo.pop()
            self._guide_redo.append(entry)
            self._replay(entry[0].undo)
        else:
            super().undo()

    def redo(self) -> None:
        if self._guide_redo and (self._guide_redo[-1][1] == self._position() or not super().can_redo()):
            entry = self._guide_redo.pop()
            self._guide_undo.append(entry)
            self._replay(entry[0].redo)
        else:
            super().redo()

    def _on_mask_changed(self) -> None:
        if not self._replaying and not self.mask.can_redo() and self._guide_redo:
            self._guide_redo.clear()  # a new mask edit: the guide edits undone before it are gone
        super()._on_mask_changed()

    def _on_guide_changed(self, kind: str) -> None:
        if kind == "keep":
            self._keep_overlay = None
        self.update()
        self.guidesChanged.emit(kind)

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _paint_guides(self, painter: QPainter, target: QRectF, over_result: bool) -> None:
        """Hints over the input or the blank canvas; over a result (which they would hide) only faintly, while the
        Hint tool is over the canvas or painting. The keep region likewise over the input (and the Keep tool)."""
        hovering = self._cursor_pos is not None or self._stroking() is not None
        if not self.hints.is_null() and (not over_result or (self.tool == "hint" and hovering)):
            painter.setOpacity(HINT_OPACITY if not over_result else HINT_OVER_RESULT)
            painter.drawImage(target, self.hints.image, QRectF(self.hints.image.rect()))
        if self.has_image() and (not over_result or (self.tool == "keep" and hovering)) and not self.keep.is_null():
            if self._keep_overlay is None or self.keep.in_stroke:
                self._keep_overlay = tinted_mask(self.keep.array(), KEEP_COLOR, 1.0)
            painter.setOpacity(KEEP_OPACITY)
            painter.drawImage(target, self._keep_overlay, QRectF(self._keep_overlay.rect()))
        painter.setOpacity(1.0)

    # -- strokes ----------------------------------------------------------------------------------------------------
    def _can_paint(self) -> bool:
        return self.tool == "hint" or super()._can_paint()

    def _stroking(self) -> MaskLayer | None:
        return next((layer for layer in (self.hints, self.keep) if layer.in_stroke), None)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        buttons = (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton)
        if self.tool not in GUIDE_TOOLS or event.button() not in buttons or self._space_held:
            super().mousePressEvent(event)
            return
        if self.tool == "keep":
            if event.button() == Qt.MouseButton.LeftButton and self.showing_result:
                self.resultPressed.emit()  # paint on what you see, as the mask brush does (the window decides)
            if self.showing_result:
                return
            if not self.has_image():
                self.keepNeedsImage.emit()
                return
        layer = self.hints if self.tool == "hint" else self.keep
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        erase = event.button() == Qt.MouseButton.RightButton or shift
        was_empty = layer.is_empty()
        point, size = self.to_image(event.position()), self.brush_size
        self._guide_edit(layer, lambda: layer.begin_stroke(point, size, erase))
        if was_empty and not erase:
            self.firstGuideStroke.emit("colour" if layer is self.hints else "keep")

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        layer = self._stroking()
        if layer is not None and event.buttons() & (Qt.MouseButton.LeftButton | Qt.MouseButton.RightButton):
            self._cursor_pos = event.position()
            layer.continue_stroke(self.to_image(event.position()))
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        layer = self._stroking()
        if layer is not None and event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            layer.end_stroke()
            return
        super().mouseReleaseEvent(event)
