"""Helpers shared by the UI tests (real mouse strokes, sample images, waiting for the engine)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest

GENERATION_TIMEOUT_MS = 120_000  # two shared cores: a generous ceiling, the runs themselves take seconds


def sample_image(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    return np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)


def paint_stroke(canvas, start_image_xy, end_image_xy, steps: int = 6) -> None:
    """A real mouse stroke on the canvas, given in image coordinates."""
    def widget_point(x, y):
        p = canvas.to_widget(QPointF(x, y))
        return QPoint(round(p.x()), round(p.y()))

    (x0, y0), (x1, y1) = start_image_xy, end_image_xy
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, widget_point(x0, y0))
    for i in range(1, steps + 1):
        t = i / steps
        QTest.mouseMove(canvas, widget_point(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, widget_point(x1, y1))


def wait_idle(qtbot, window, timeout=GENERATION_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not window.controller.running, timeout=timeout)
