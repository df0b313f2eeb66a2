"""The noise level σ of every step of a run, on a log axis, with the selected step marked (QPainter)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

SIGMA_FLOOR = 1e-3  # the last level of a "clean" grid is σ = 0; clamp it for the log axis


class SigmaPlot(QWidget):
    stepClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("sigmaPlot")
        self.sigmas: list[float] = []
        self.done = 0
        self.current = -1
        self.branch = -1
        self.symbol = "σ"  # what the marked step's value is called: a cold run's is its degradation level s/T
        self.setToolTip("Noise level σ per step (log scale). Filled: computed; the line marks the selected step.")
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(240, 200)

    def set_levels(self, sigmas: list[float], done: int, branch: int = -1) -> None:
        """`done` steps are computed; `branch` ≥ 0 marks where this run left its parent."""
        self.sigmas = [max(SIGMA_FLOOR, float(s)) for s in sigmas]
        self.done = done
        self.branch = branch
        self.update()

    def set_symbol(self, symbol: str) -> None:
        if symbol != self.symbol:
            self.symbol = symbol
            quantity = "Degradation level s/T" if symbol == "level" else "Noise level σ"
            self.setToolTip(f"{quantity} per step (log scale). Filled: computed; the line marks the selected step.")
            self.update()

    def set_current(self, index: int) -> None:
        self.current = index
        self.update()

    def _plot_rect(self) -> QRectF:
        metrics = self.fontMetrics()
        left = metrics.horizontalAdvance("10.0") + 10
        return QRectF(left, 8, self.width() - left - 8, self.height() - 16 - metrics.height())

    def _x(self, rect: QRectF, i: int) -> float:
        n = max(1, len(self.sigmas) - 1)
        return rect.left() + rect.width() * i / n

    def _y(self, rect: QRectF, sigma: float, lo: float, hi: float) -> float:
        span = max(1e-9, math.log(hi) - math.log(lo))
        return rect.bottom() - rect.height() * (math.log(sigma) - math.log(lo)) / span

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(palette.ColorRole.Base))
        rect = self._plot_rect()
        text_color = palette.color(palette.ColorRole.WindowText)
        grid_color = palette.color(palette.ColorRole.Mid)
        painter.setPen(QPen(grid_color, 1))
        painter.drawRect(rect)
        metrics = self.fontMetrics()
        if not self.sigmas:
            painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "σ per step")
            painter.end()
            return
        lo, hi = min(self.sigmas), max(self.sigmas)
        if hi / lo < 1.5:
            lo, hi = lo / 1.5, hi * 1.5
        self._paint_decades(painter, rect, lo, hi, grid_color, text_color)
        points = [QPointF(self._x(rect, i), self._y(rect, s, lo, hi)) for i, s in enumerate(self.sigmas)]
        self._paint_curve(painter, points, palette.color(palette.ColorRole.Highlight), text_color)
        self._paint_markers(painter, rect, points, grid_color, text_color)
        painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
        painter.drawText(QRectF(0, rect.bottom() + 2, self.width(), metrics.height()),
                         Qt.AlignmentFlag.AlignCenter, self.axis_caption())
        painter.end()

    def axis_caption(self) -> str:
        """Under the plot, across the whole width: the long form where it fits, else a short one (never clipped)."""
        n = len(self.sigmas)
        for text in (f"step 1 … {n}   (log scale)", f"step 1 … {n} (log)", f"1 … {n}"):
            if self.fontMetrics().horizontalAdvance(text) <= self.width() - 4:
                return text
        return f"1 … {n}"

    def _paint_decades(self, painter: QPainter, rect: QRectF, lo: float, hi: float, grid_color: QColor,
                       text_color: QColor) -> None:
        """Dotted gridlines at each power of ten, labelled in the left margin."""
        painter.setPen(QPen(grid_color, 1, Qt.PenStyle.DotLine))
        for exponent in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            value = 10.0**exponent
            if lo <= value <= hi:
                y = self._y(rect, value, lo, hi)
                painter.drawLine(QPointF(rect.left(), y), QPointF(rect.right(), y))
                painter.setPen(text_color)
                painter.drawText(QRectF(0, y - 8, rect.left() - 4, 16),
                                 Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                                 f"{value:g}" if -2 < exponent < 3 else f"1e{exponent}")  # fits the margin
                painter.setPen(QPen(grid_color, 1, Qt.PenStyle.DotLine))

    def _paint_curve(self, painter: QPainter, points: list[QPointF], accent: QColor, text_color: QColor) -> None:
        """The whole schedule dashed; the steps computed so far solid, with a dot each."""
        pending = QColor(text_color)
        pending.setAlpha(110)
        painter.setPen(QPen(pending, 1.2, Qt.PenStyle.DashLine))
        painter.drawPolyline(QPolygonF(points))
        if self.done > 0:
            painter.setPen(QPen(accent, 2))
            painter.drawPolyline(QPolygonF(points[: self.done]))
            painter.setBrush(accent)
            for p in points[: self.done]:
                painter.drawEllipse(p, 2, 2)

    def _paint_markers(self, painter: QPainter, rect: QRectF, points: list[QPointF], grid_color: QColor,
                       text_color: QColor) -> None:
        """Where this run branched off its parent, and the selected step with its σ."""
        palette, metrics = self.palette(), self.fontMetrics()
        if 0 < self.branch < len(points):
            x = points[self.branch].x()
            painter.setPen(QPen(grid_color.lighter(160), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
            painter.drawText(QRectF(x + 3, rect.bottom() - metrics.height() - 2, 80, metrics.height()),
                             Qt.AlignmentFlag.AlignLeft, "branch")
        if 0 <= self.current < len(points):
            p = points[self.current]
            painter.setPen(QPen(QColor(255, 170, 60), 1.5))
            painter.drawLine(QPointF(p.x(), rect.top()), QPointF(p.x(), rect.bottom()))
            painter.setBrush(QColor(255, 170, 60))
            painter.drawEllipse(p, 4.5, 4.5)
            label = f"{self.symbol} = {self.sigmas[self.current]:.3g}"
            width = metrics.horizontalAdvance(label) + 8
            x = min(max(rect.left() + 2, p.x() + 6), rect.right() - width - 2)
            painter.setPen(text_color)
            painter.drawText(QRectF(x, rect.top() + 2, width, metrics.height()), Qt.AlignmentFlag.AlignLeft, label)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._pick(event.position().x())

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._pick(event.position().x())

    def _pick(self, x: float) -> None:
        if not self.sigmas:
            return
        rect = self._plot_rect()
        n = max(1, len(self.sigmas) - 1)
        index = round((x - rect.left()) / max(1.0, rect.width()) * n)
        self.stepClicked.emit(int(max(0, min(len(self.sigmas) - 1, index))))
