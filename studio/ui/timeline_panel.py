"""The timeline: scrub every step of the selected run — during and after it — and branch from any of them.

Four views of the selected step side by side (the noisy latent x_t, the predicted image x̂0, the predicted
noise ε̂ and, on guided steps, universal guidance's term Δε), the σ schedule with the step marked (and the guidance
loss under it for a guided run), play/pause, full-quality decode and export.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .choices import SAMPLER_FAMILY
from .guidance_view import GUIDANCE_VIEW, add_loss_plot, refresh_guidance
from .sigma_plot import SigmaPlot
from .step_view import StepView

PLAY_INTERVAL_MS = 120
VIEWS = (
    ("x_t", "xtView", "x<sub>t</sub> &nbsp;noisy latent", "The latent the sampler holds before this step"),
    ("x0", "x0View", "predicted x<sub>0</sub> &nbsp;image", "The image the model predicts at this step (x_t minus its noise)"),
    ("eps", "epsView", "predicted noise ε", "The noise the model sees in x_t at this step"),
    GUIDANCE_VIEW,  # universal guidance's Δε; "not guided" on unguided steps (guidance_view.py)
)
# A cold-diffusion run (Bansal et al. 2022) holds x_s, x̂0 = R(x_s, s) and Algorithm 2's correction
# D(x̂0, s) − D(x̂0, s−1) in the same three slots; its level is the degradation s/T, not a noise σ.
COLD_CAPTIONS = {
    "x_t": ("x<sub>s</sub> &nbsp;degraded image", "The degraded image the sampler holds before this step"),
    "x0": ("restored x̂<sub>0</sub> = R(x<sub>s</sub>, s)", "The restoration network's estimate of the clean image"),
    "eps": ("correction D(x̂<sub>0</sub>, s) − D(x̂<sub>0</sub>, s−1)",
            "What this step changes: the degradation of x̂0 at this level minus at the next (Algorithm 2)"),
}
PLOT_CAPTIONS = {"ldm": "noise level σ per step", "cold": "degradation level s/T per step"}


class TimelinePanel(QWidget):
    indexChanged = Signal(int)
    decodeRequested = Signal(object, int)  # run, step index
    branchRequested = Signal(object, int)
    exportRequested = Signal(object, str)  # run, "gif" | "png"

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("timelinePanel")
        self.run: Any = None
        self._follow = True  # during a run, the slider tracks the newest step until the user moves it
        self._busy = False  # a job is running: no branching until it ends
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(6)
        layout.addLayout(self._build_scrubber())
        layout.addLayout(self._build_views(), 1)
        layout.addLayout(self._build_actions())
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self._timer = QTimer(self)
        self._timer.setInterval(PLAY_INTERVAL_MS)
        self._timer.timeout.connect(self._advance)
        self._update_enabled()

    def _build_scrubber(self) -> QHBoxLayout:
        """Play / pause, the step slider and the selected step's t, σ and ᾱ."""
        self.play_button = QToolButton()
        self.play_button.setObjectName("playButton")
        self.play_button.setCheckable(True)
        self.play_button.setText("▶")
        self.play_button.setToolTip("Play / pause the timeline")
        self.play_button.toggled.connect(self._toggle_play)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("timelineSlider")
        self.slider.setRange(0, 0)
        self.slider.setPageStep(5)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setToolTip("Scrub through the steps (← / → step by one)")
        self.slider.valueChanged.connect(self._on_slider)
        self.slider.sliderPressed.connect(self._stop_following)
        self.step_label = OneLineFirstLabel("No run yet")
        self.step_label.setObjectName("stepLabel")
        self.step_label.setWordWrap(True)  # a narrow dock wraps it between its parts instead of clipping σ and ᾱ
        self.step_label.setMinimumWidth(120)
        self.step_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.setSpacing(8)
        row.addWidget(self.play_button)
        row.addWidget(self.slider, 1)
        row.addWidget(self.step_label)
        return row

    def _build_views(self) -> QHBoxLayout:
        """x_t, x̂0 and ε̂ of the selected step side by side, then the σ plot."""
        self.views: dict[str, StepView] = {}
        self.captions: dict[str, QLabel] = {}
        row = QHBoxLayout()
        row.setSpacing(8)
        for key, name, title, tip in VIEWS:
            self.views[key] = StepView(name, tip)
            caption = QLabel(title)
            caption.setObjectName(name.replace("View", "Caption"))
            caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
            caption.setTextFormat(Qt.TextFormat.RichText)
            caption.setWordWrap(True)  # a narrow timeline wraps a caption rather than widening the window
            self.captions[key] = caption
            row.addLayout(_captioned(self.views[key], caption), 3)
        self.plot = SigmaPlot()
        self.plot.stepClicked.connect(self.set_index)
        self.plot_caption = plot_caption = QLabel(PLOT_CAPTIONS["ldm"])
        plot_caption.setObjectName("levelPlotCaption")
        plot_caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        plot_column = _captioned(self.plot, plot_caption)
        add_loss_plot(self, plot_column)  # the guidance loss under the σ plot
        row.addLayout(plot_column, 3)
        return row

    def _build_actions(self) -> QHBoxLayout:
        self.smooth = QCheckBox("Smooth")
        self.smooth.setObjectName("smoothViewsCheck")
        self.smooth.setToolTip("Fill each box, smoothed (off: the largest whole-number zoom, every pixel a square)")
        self.smooth.toggled.connect(lambda on: [v.set_smooth(on) for v in self.views.values()])
        self.decode_button = QPushButton("Decode this step")
        self.decode_button.setObjectName("decodeStepButton")
        self.decode_button.setToolTip("Decode this step's x̂0 with the full VAE (exact, slower; cached)")
        self.decode_button.clicked.connect(lambda: self.run is not None and self.decodeRequested.emit(self.run, self.index()))
        self.export_button = QPushButton("Export")
        self.export_button.setObjectName("exportTimelineButton")
        self.export_button.setToolTip("Export the timeline as an animated GIF or as PNG files")
        menu = QMenu(self.export_button)
        menu.addAction("Animated GIF…", lambda: self.run is not None and self.exportRequested.emit(self.run, "gif"))
        menu.addAction("PNG files…", lambda: self.run is not None and self.exportRequested.emit(self.run, "png"))
        self.export_button.setMenu(menu)
        self.branch_button = QPushButton("Branch from here")
        self.branch_button.setObjectName("branchButton")
        self.branch_button.setToolTip("Start a new run from this step with the current prompt, sampler, eta and CFG")
        self.branch_button.clicked.connect(lambda: self.run is not None and self.branchRequested.emit(self.run, self.index()))
        row = QHBoxLayout()
        row.addWidget(self.smooth)
        row.addStretch(1)
        for button in (self.decode_button, self.export_button, self.branch_button):
            row.addWidget(button)
        return row

    # -- the run --------------------------------------------------------------------------------------------------
    def set_run(self, run: Any, index: int | None = None) -> None:
        """Show `run` (None clears); `index` defaults to its last step."""
        self.run = run
        self._follow = run is not None and run.status == "running"
        self.play_button.setChecked(False)
        self._sync_range()
        last = max(0, self._length() - 1)
        self.slider.blockSignals(True)
        self.slider.setValue(last if index is None else max(0, min(index, last)))
        self.slider.blockSignals(False)
        self.refresh()

    def run_progressed(self, run: Any) -> None:
        """A new step of `run` exists; follow it if the user has not grabbed the slider."""
        if run is not self.run:
            return
        at_end = self.slider.value() >= self.slider.maximum()
        self._sync_range()
        if self._follow or at_end:
            self.slider.blockSignals(True)
            self.slider.setValue(self.slider.maximum())
            self.slider.blockSignals(False)
        self.refresh()

    def run_finished(self, run: Any) -> None:
        if run is self.run:
            self._follow = False
            self._sync_range()
            self.refresh()

    def decoded_arrived(self, run: Any, index: int) -> None:
        """A full-quality decode of `run`'s step `index` is now in its record."""
        if run is self.run and index == self.index():
            self.refresh()

    def _length(self) -> int:
        return self.run.recorded if self.run is not None else 0

    def _sync_range(self) -> None:
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, self._length() - 1))
        self.slider.setTickInterval(max(1, self._length() // 20))
        self.slider.blockSignals(False)
        self._update_enabled()

    def set_busy(self, busy: bool) -> None:
        """While a job runs, branching waits (as the Branch menu action does); scrubbing goes on."""
        self._busy = busy
        self._update_enabled()

    def _update_enabled(self) -> None:
        has_steps = self._length() > 0
        for widget in (self.slider, self.play_button, self.decode_button, self.export_button):
            widget.setEnabled(has_steps)
        self.branch_button.setEnabled(has_steps and not self._busy)

    # -- the selected step ----------------------------------------------------------------------------------------
    def index(self) -> int:
        return self.slider.value()

    def at_last_step(self) -> bool:
        """The newest step is selected (a running run's previews may take the canvas)."""
        return self.index() >= self._length() - 1

    def set_index(self, index: int) -> None:
        self._stop_following()
        self.slider.setValue(index)

    def step_by(self, delta: int) -> None:
        if self._length():
            self.set_index(max(0, min(self._length() - 1, self.index() + delta)))

    def _on_slider(self, _value: int) -> None:
        if self.slider.isSliderDown():
            self._follow = False
        self.refresh()
        self.indexChanged.emit(self.index())

    def _stop_following(self) -> None:
        self._follow = False

    def refresh(self) -> None:
        run, n = self.run, self._length()
        if run is None or n == 0:
            for view in self.views.values():
                view.set_image(None)
            self.plot.set_levels([], 0)
            self.step_label.setText("No run yet" if run is None else "Waiting for the first step…")
            refresh_guidance(self, run, -1)
            return
        i = min(self.index(), n - 1)
        for key, view in self.views.items():
            decoded = run.decoded(i, key)
            view.set_image(decoded if decoded is not None else run.step_image(i, key), "decoded" if decoded is not None else "")
        branch = run.from_step if run.parent is not None or run.parent_id else -1
        self.plot.set_levels(list(run.sigmas[: run.steps]), n, branch=branch)
        self.plot.set_current(i)
        step = run.step(i)
        if self._show_family(run) == "cold":
            values = (f"s = {step.timestep:.0f}", f"level = {step.sigma:.3g}")
        else:
            values = (f"t = {step.timestep:.0f}", f"σ = {step.sigma:.3g}", f"ᾱ = {step.alpha_cumprod:.3g}")
        # "σ = 14.6" stays on one line: a narrow dock wraps between the parts, never inside one
        parts = [f"Step {i + 1} of {run.steps}", *(value.replace(" ", "\u00a0") for value in values)]
        self.step_label.setText("   ".join(parts))
        refresh_guidance(self, run, i)

    def _show_family(self, run: Any) -> str:
        """Caption the views for the run's kind of process: latent diffusion or cold diffusion."""
        family = SAMPLER_FAMILY.get(run.request.sampler, "ldm")
        for key, _name, title, tip in VIEWS:
            if key in COLD_CAPTIONS:
                title, tip = COLD_CAPTIONS[key] if family == "cold" else (title, tip)
                self.captions[key].setText(title)
                self.views[key].setToolTip(tip)
        self.plot_caption.setText(PLOT_CAPTIONS.get(family, PLOT_CAPTIONS["ldm"]))
        self.plot.set_symbol("level" if family == "cold" else "σ")
        return family

    # -- play -----------------------------------------------------------------------------------------------------
    def _toggle_play(self, playing: bool) -> None:
        self.play_button.setText("⏸" if playing else "▶")
        if playing:
            self._follow = False
            if self.index() >= self._length() - 1:
                self.slider.setValue(0)
            self._timer.start()
        else:
            self._timer.stop()

    def _advance(self) -> None:
        n = self._length()
        if n == 0:
            self.play_button.setChecked(False)
            return
        self.slider.setValue((self.index() + 1) % n)

    def stop(self) -> None:
        self.play_button.setChecked(False)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            self.step_by(-1 if event.key() == Qt.Key.Key_Left else 1)
        elif event.key() == Qt.Key.Key_Space:
            self.play_button.toggle()
        else:
            super().keyPressEvent(event)


class OneLineFirstLabel(QLabel):
    """A word-wrapped label that asks for the room to show its text on one line and wraps only when squeezed (a
    wrapped QLabel otherwise asks for a narrow, three-line shape even beside a slider that could give way)."""

    def sizeHint(self) -> QSize:
        margins = self.contentsMargins()
        width = self.fontMetrics().horizontalAdvance(self.text()) + margins.left() + margins.right() + 2 * self.margin()
        return QSize(width + 2, max(self.heightForWidth(width + 2), self.fontMetrics().height()))


def _captioned(widget: QWidget, caption: QLabel) -> QVBoxLayout:
    column = QVBoxLayout()
    column.setSpacing(2)
    column.addWidget(widget, 1)
    column.addWidget(caption)
    return column
