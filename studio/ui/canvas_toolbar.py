"""The strips around the canvas: mask tools above it (brush, eraser, size, opacity, undo …), view and result
controls below it (zoom, before / after, use as input)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QCheckBox, QLabel, QSizePolicy, QSlider, QSpinBox, QToolBar, QToolButton, QWidget

from .guide_canvas import GuideCanvas
from .guide_tools import add_guide_tools
from .mask_canvas import MaskCanvas


class CanvasToolbar(QToolBar):
    def __init__(self, canvas: MaskCanvas, parent: QWidget | None = None):
        super().__init__("Canvas", parent)
        self.setObjectName("canvasToolbar")
        self.setMovable(False)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.canvas = canvas
        self._add_tools(canvas)
        self._add_mask_display(canvas)
        self.addSeparator()
        self._add_mask_edits(canvas)

    def _add_tools(self, canvas: MaskCanvas) -> None:
        """Brush / eraser / hint / keep (one of them) and the brush size."""
        tools = QActionGroup(self)
        self.brush_action = QAction("Brush", self, checkable=True, checked=True)
        self.brush_action.setObjectName("brushAction")
        self.brush_action.setShortcut("B")
        self.brush_action.setToolTip("Paint the area to regenerate (B)")
        self.eraser_action = QAction("Eraser", self, checkable=True)
        self.eraser_action.setObjectName("eraserAction")
        self.eraser_action.setShortcut("E")
        self.eraser_action.setToolTip("Erase the mask (E)")
        for action in (self.brush_action, self.eraser_action):
            tools.addAction(action)
            self.addAction(action)
            self.widgetForAction(action).setObjectName(action.objectName().replace("Action", "Button"))
        self.brush_action.triggered.connect(lambda: canvas.set_tool("brush"))
        self.eraser_action.triggered.connect(lambda: canvas.set_tool("eraser"))
        if isinstance(canvas, GuideCanvas):
            add_guide_tools(self, tools, canvas)  # Hint and its colour, Keep (guide_tools.py)

        self.size_spin = QSpinBox()
        self.size_spin.setObjectName("brushSizeSpin")
        self.size_spin.setRange(1, 1024)
        self.size_spin.setValue(canvas.brush_size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Brush size in image pixels ([ smaller, ] larger)")
        self.size_spin.setKeyboardTracking(False)
        self.size_spin.valueChanged.connect(canvas.set_brush_size)
        canvas.brushSizeChanged.connect(self.size_spin.setValue)
        self.addWidget(QLabel(" Size "))
        self.addWidget(self.size_spin)

    def _add_mask_display(self, canvas: MaskCanvas) -> None:
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setObjectName("maskOpacitySlider")
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(canvas.mask_opacity * 100))
        self.opacity.setFixedWidth(90)
        self.opacity.setToolTip("Mask opacity on the canvas (display only)")
        self.opacity.valueChanged.connect(lambda v: canvas.set_mask_opacity(v / 100))
        self.addWidget(QLabel("  Opacity "))
        self.addWidget(self.opacity)
        self.feathered = QCheckBox("Feathered")
        self.feathered.setObjectName("showFeatheredCheck")
        self.feathered.setChecked(canvas.show_feathered)
        self.feathered.setToolTip("Show the mask as the model will see it: grown and feathered")
        self.feathered.toggled.connect(canvas.set_show_feathered)
        self.addWidget(QLabel(" "))
        self.addWidget(self.feathered)

    def _add_mask_edits(self, canvas: MaskCanvas) -> None:
        self.undo_action = self._button("Undo", "undoButton", "Undo the last stroke (Ctrl+Z)", canvas.undo)
        self.redo_action = self._button("Redo", "redoButton", "Redo the stroke (Ctrl+Shift+Z / Ctrl+Y)", canvas.redo)
        self.clear_action = self._button("Clear", "clearMaskButton", "Clear the mask (Ctrl+Shift+Backspace)", canvas.mask.clear)
        self.invert_action = self._button("Invert", "invertMaskButton", "Invert the mask (Ctrl+I)", canvas.mask.invert)
        self.undo_action.setEnabled(False)
        self.redo_action.setEnabled(False)
        canvas.undoAvailable.connect(self.undo_action.setEnabled)
        canvas.redoAvailable.connect(self.redo_action.setEnabled)

    def _button(self, text: str, name: str, tip: str, slot) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.triggered.connect(slot)
        self.addAction(action)
        self.widgetForAction(action).setObjectName(name)
        return action


class CanvasViewBar(QToolBar):
    def __init__(self, canvas: MaskCanvas, parent: QWidget | None = None):
        super().__init__("View", parent)
        self.setObjectName("canvasViewBar")
        self.setMovable(False)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.canvas = canvas
        self.fit_action = self._button("Fit", "zoomFitButton", "Zoom to fit (Ctrl+0)", canvas.fit)
        self.actual_action = self._button("100%", "zoomActualButton", "Actual size (Ctrl+1)", canvas.actual_size)
        self.zoom_label = QLabel()
        self.zoom_label.setObjectName("zoomLabel")
        self.zoom_label.setMinimumWidth(48)
        self.zoom_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        canvas.zoomChanged.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f} %"))
        self.zoom_label.setText(f"{canvas.zoom * 100:.0f} %")
        self.addWidget(self.zoom_label)
        self.info_label = QLabel()
        self.info_label.setObjectName("canvasInfoLabel")
        self.addWidget(self.info_label)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.addWidget(spacer)

        self.before_after = QToolButton()
        self.before_after.setObjectName("beforeAfterButton")
        self.before_after.setCheckable(True)
        self.before_after.setText("Show input")
        self.before_after.setToolTip("Toggle between the input and the result (C)")
        self.before_after.setShortcut("C")
        self.before_after.setEnabled(False)
        self.before_after.toggled.connect(lambda on: canvas.set_showing_result(not on))
        canvas.showingResultChanged.connect(lambda _on: self.sync())
        self.addWidget(self.before_after)
        self.use_as_input = QToolButton()
        self.use_as_input.setObjectName("useAsInputButton")
        self.use_as_input.setText("Use as input")
        self.use_as_input.setToolTip("Make the result the input image for the next round (Ctrl+U)")
        self.use_as_input.setEnabled(False)
        self.addWidget(self.use_as_input)

    _button = CanvasToolbar._button

    def sync(self) -> None:
        """Checked = showing the input ("before") while a result exists."""
        canvas = self.canvas
        comparable = canvas.has_result() and canvas.has_image()
        self.before_after.setEnabled(comparable)
        self.before_after.blockSignals(True)
        self.before_after.setChecked(comparable and not canvas.showing_result)
        self.before_after.blockSignals(False)
        self.before_after.setText("Show result" if self.before_after.isChecked() else "Show input")
        self.use_as_input.setEnabled(canvas.has_result())
