"""ndarray ↔ QImage without surprises: explicit strides, always a deep copy across the boundary."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap


def rgb_to_qimage(image: np.ndarray) -> QImage:
    """HxWx3 uint8 → QImage (RGB888), independent of the array's memory."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w, _ = image.shape
    return QImage(image.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def qimage_to_rgb(qimage: QImage) -> np.ndarray:
    """Any QImage → HxWx3 uint8 (alpha composited over white, as the engine does for files)."""
    if qimage.hasAlphaChannel():
        flat = QImage(qimage.size(), QImage.Format.Format_RGB888)
        flat.fill(Qt.GlobalColor.white)
        from PySide6.QtGui import QPainter

        painter = QPainter(flat)
        painter.drawImage(0, 0, qimage)
        painter.end()
        qimage = flat
    else:
        qimage = qimage.convertToFormat(QImage.Format.Format_RGB888)
    w, h, stride = qimage.width(), qimage.height(), qimage.bytesPerLine()
    buffer = np.frombuffer(qimage.constBits(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    return buffer[:, : 3 * w].reshape(h, w, 3).copy()


def qimage_to_mask(qimage: QImage) -> np.ndarray:
    """Grayscale8 (or any) QImage → HxW float32 in [0, 1]."""
    return qimage_to_gray(qimage).astype(np.float32) / 255.0


def qimage_to_gray(qimage: QImage) -> np.ndarray:
    gray = qimage.convertToFormat(QImage.Format.Format_Grayscale8)
    w, h, stride = gray.width(), gray.height(), gray.bytesPerLine()
    buffer = np.frombuffer(gray.constBits(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    return buffer[:, :w].copy()


def gray_to_qimage(gray: np.ndarray) -> QImage:
    data = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = data.shape
    return QImage(data.data, w, h, w, QImage.Format.Format_Grayscale8).copy()


def smooth_scaling(scale: float) -> bool:
    """The one rule for drawing every picture (the input, results, previews, the timeline's views): at a whole-number
    magnification each source pixel becomes an equal square and is drawn as it is; at any other scale nearest-
    neighbour would make pixels of uneven size, so the picture is smoothed (bilinear)."""
    return not (scale >= 1 and abs(scale - round(scale)) < 1e-3)


def tinted_mask(gray: np.ndarray, color: tuple[int, int, int], opacity: float) -> QImage:
    """A premultiplied ARGB overlay: `color` where the mask is set, alpha = mask · opacity."""
    h, w = gray.shape
    alpha = (gray.astype(np.float32) * opacity).astype(np.uint8)
    argb = np.empty((h, w, 4), dtype=np.uint8)  # little-endian ARGB32 is B, G, R, A in memory
    scale = alpha.astype(np.uint16)
    argb[..., 0] = (scale * color[2] // 255).astype(np.uint8)
    argb[..., 1] = (scale * color[1] // 255).astype(np.uint8)
    argb[..., 2] = (scale * color[0] // 255).astype(np.uint8)
    argb[..., 3] = alpha
    return QImage(argb.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied).copy()


def thumbnail(image: np.ndarray | None, size: int) -> QPixmap:
    if image is None:
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.transparent)
        return pixmap
    return QPixmap.fromImage(rgb_to_qimage(image)).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


def accepts_drop(mime) -> bool:
    """Whether a drag carries something a drop target here can take: a local file or an image."""
    return (mime.hasUrls() and any(u.isLocalFile() for u in mime.urls())) or mime.hasImage()


def dropped(mime) -> str | np.ndarray | None:
    """What a drop carries: the first local file's path, else its image as HxWx3 uint8, else None."""
    paths = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []
    if paths:
        return paths[0]
    return qimage_to_rgb(mime.imageData()) if mime.hasImage() else None
