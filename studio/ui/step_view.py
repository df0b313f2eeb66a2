"""One view of a timeline step (x_t, predicted x0 or predicted noise): a small image scaled up to fill its box."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QImage, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from .images import rgb_to_qimage, smooth_scaling



class StepView(QWidget):
    def __init__(self, name: str, tooltip: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self.note = ""  # e.g. "decoded" when the full VAE decode is shown
        self.placeholder = "—"  # said in the empty box (the guidance view: "not guided")
        self.smooth = False
        self.array: np.ndarray | None = None  # what is shown, HxWx3 uint8 (tests compare these)
        self._image: QImage | None = None
        self.setToolTip(tooltip)
        # 80 wide: four views (x_t, x̂0, ε̂, guidance Δε) and the σ plot fit the timeline at the narrowest window
        self.setMinimumSize(80, 110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(200, 200)

    def hasHeightForWidth(self) -> bool:
        return False

    def set_image(self, image: np.ndarray | None, note: str = "") -> None:
        self.array = image
        self._image = rgb_to_qimage(image) if image is not None else None
        self.note = note
        self.update()

    def set_smooth(self, smooth: bool) -> None:
        self.smooth = smooth
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        box = QRectF(self.rect())
        painter.fillRect(box, palette.color(palette.ColorRole.Dark).darker(130))
        if self._image is not None and not self._image.isNull():
            iw, ih = self._image.width(), self._image.height()
            scale = min(box.width() / iw, box.height() / ih)
            if not self.smooth and scale >= 1:
                scale = max(1, int(scale))  # a whole-number zoom: every latent pixel an equal square
            w, h = iw * scale, ih * scale
            target = QRectF(box.x() + (box.width() - w) / 2, box.y() + (box.height() - h) / 2, w, h)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth_scaling(scale))  # as the canvas
            painter.drawImage(target, self._image, QRectF(self._image.rect()))
        else:
            painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
        painter.setPen(QPen(palette.color(palette.ColorRole.Mid)))
        painter.drawRect(box.adjusted(0, 0, -1, -1))
        if self.note:
            metrics = painter.fontMetrics()
            tag = QRectF(box.right() - metrics.horizontalAdvance(self.note) - 14, box.top() + 4,
                         metrics.horizontalAdvance(self.note) + 10, metrics.height() + 4)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(palette.color(palette.ColorRole.Highlight))
            painter.drawRoundedRect(tag, 3, 3)
            painter.setPen(palette.color(palette.ColorRole.HighlightedText))
            painter.drawText(tag, Qt.AlignmentFlag.AlignCenter, self.note)
        painter.end()
