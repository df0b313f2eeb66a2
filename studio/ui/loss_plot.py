"""Universal guidance's loss ℓ at each guided step of a run (QPainter), under the σ plot and on its step axis.

One point per guided step (StepInfo.loss); a log axis when the loss spans a decade or more (it usually falls fast
in the first steps); the selected step marked as on the σ plot; a click picks a step.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(120, 200, 120)
CURRENT_COLOUR = QColor(255, 170, 60)  # the σ plot's marker colour


def axis_text(value: float) -> str:
    """A loss for the left margin in at most four characters (the σ plot's "10.0" sets the margin, so the two
    plots' axes line up): "%.2g" wrote 120 as "1.2e+02", cut to "e+02" by the margin."""
    size = abs(value)
    sign = "-" if value < 0 else ""
    if size == 0:
        return "0"
    if 0.1 <= size < 10:
        return sign + f"{size:.2f}".rstrip("0").rstrip(".")[:4]
    if 10 <= size < 1000:
        return sign + f"{size:.0f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if scale <= size < 1000 * scale:
            short = f"{size / scale:.1f}" if size < 10 * scale else f"{size / scale:.0f}"
            return sign + short.removesuffix(".0") + unit
    mantissa, exponent = f"{size:.0e}".split("e")
    return f"{sign}{mantissa}e{int(exponent)}"


class LossPlot(QWidget):
    stepClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("lossPlot")
        self.points: list[tuple[int, float]] = []  # (step index, loss) of each guided step recorded
        self.steps = 0  # the run's steps: the x axis, as the σ plot's
        self.current = -1
        self.note = "not guided"
        self.setToolTip("Guidance loss ℓ at each guided step (what the guides still ask for; lower is closer)")
        self.setMinimumSize(160, 64)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(240, 90)

    def set_losses(self, points: list[tuple[int, float]], steps: int, note: str = "not guided") -> None:
        self.points = [(i, float(v)) for i, v in points if v is not None and math.isfinite(v)]
        self.steps, self.note = steps, note
        self.update()

    def set_current(self, index: int) -> None:
        self.current = index
        self.update()

    def _plot_rect(self) -> QRectF:
        left = self.fontMetrics().horizontalAdvance("10.0") + 10  # the σ plot's margin: the two axes line up
        return QRectF(left, 6, self.width() - left - 8, self.height() - 12)

    def _x(self, rect: QRectF, i: int) -> float:
        return rect.left() + rect.width() * i / max(1, self.steps - 1)  # step i over the σ plot's step i

    def _scale(self) -> tuple[float, float, bool]:
        """(lo, hi, log): a log axis when every loss is positive and they span a decade or more."""
        values = [v for _, v in self.points]
        lo, hi = min(values), max(values)
        if lo > 0 and hi / lo >= 10:
            return math.log10(lo), math.log10(hi), True
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 * abs(lo) - 1e-6, hi + 0.5 * abs(hi) + 1e-6
        return lo, hi, False

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(palette.ColorRole.Base))
        rect = self._plot_rect()
        painter.setPen(QPen(palette.color(palette.ColorRole.Mid), 1))
        painter.drawRect(rect)
        if not self.points:
            painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, f"loss ℓ · {self.note}")
            painter.end()
            return
        lo, hi, log = self._scale()

        def y(value: float) -> float:
            v = math.log10(max(value, 1e-30)) if log else value
            return rect.bottom() - rect.height() * (v - lo) / max(1e-12, hi - lo)

        points = [QPointF(self._x(rect, i), y(v)) for i, v in self.points]
        painter.setPen(QPen(LOSS_COLOUR, 2))
        painter.drawPolyline(QPolygonF(points))
        painter.setBrush(LOSS_COLOUR)
        for p in points:
            painter.drawEllipse(p, 2.5, 2.5)
        self._paint_labels(painter, rect, log)
        painter.end()

    def _paint_labels(self, painter: QPainter, rect: QRectF, log: bool) -> None:
        """The axis range in the left margin, the selected step's line and its loss."""
        palette, metrics = self.palette(), self.fontMetrics()
        values = [v for _, v in self.points]
        painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
        for value, top in ((max(values), True), (min(values), False)):
            box = QRectF(0, rect.top() if top else rect.bottom() - metrics.height(), rect.left() - 4, metrics.height())
            painter.drawText(box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, axis_text(value))
        caption = "loss ℓ" + (" (log)" if log else "")
        corner = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom
        painter.drawText(rect.adjusted(4, 2, -4, -2), corner, caption)
        if 0 <= self.current < self.steps:
            x = self._x(rect, self.current)
            painter.setPen(QPen(CURRENT_COLOUR, 1.5))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            loss = dict(self.points).get(self.current)
            label = f"ℓ = {loss:.3g}" if loss is not None else "not guided"
            width = metrics.horizontalAdvance(label) + 8
            painter.setPen(palette.color(palette.ColorRole.WindowText))
            painter.drawText(QRectF(min(max(rect.left() + 2, x + 6), rect.right() - width - 2), rect.top() + 2, width,
                                    metrics.height()), Qt.AlignmentFlag.AlignLeft, label)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.steps > 0:
            rect = self._plot_rect()
            index = round((event.position().x() - rect.left()) / max(1.0, rect.width()) * (self.steps - 1))
            self.stepClicked.emit(int(max(0, min(self.steps - 1, index))))
