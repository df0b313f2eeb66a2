"""The main window: canvas in the centre, generation controls left, history right, timeline below.

It wires widgets to the GenerationController and the engine worker; file handling lives in FileActions and
persistence in SessionPersistence. Torch is never imported here: the window is up before the engine has loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QPoint, QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ..engine import (
    Backend,
    BackendReady,
    Decoded,
    DecodeStep,
    Event,
    ForgetRun,
    JobFailed,
    Message,
    ModelProbed,
    ProbeModel,
    RunSaved,
    RunsLoaded,
)
from .autosave import Autosave
from .canvas_toolbar import CanvasToolbar, CanvasViewBar
from .choices import LDM_SAMPLERS
from .dock_sizes import DockShares
from .file_actions import FileActions
from .generation import GenerationController
from .guidance_actions import GuidanceActions
from .guide_canvas import GuideCanvas
from .history_panel import HistoryPanel
from .invert_dialog import InvertChoice, InvertSource, ask_invert
from .message_bar import MessageBar
from .pending import show_pending
from .prompt_panel import PromptPanel
from .run_history import RunHistory
from .session import SessionPersistence
from .timeline_panel import TimelinePanel
from .window_menus import build_menus
from .run_record import RunRecord
from .run_status import cancelled_text, status_progress, status_text, step_label, step_text
from .worker import EngineWorker


MIN_HEIGHT = 660


class MainWindow(FileActions, SessionPersistence, GuidanceActions, QMainWindow):
    closed = Signal()

    def __init__(self, *, autosave_dir: str | Path | None = None, backend_factory: Callable[[], Backend] | None = None,
                 offer_restore: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("Diffusion Studio")
        self.setAcceptDrops(True)
        self.resize(QSize(1440, 920).boundedTo(self.screen().availableGeometry().size()))  # a small screen: fill it
        # the docks set the narrowest (every tool, view and history line fits); below 660 px the canvas was 200 tall
        self.setMinimumHeight(MIN_HEIGHT)
        self.settings = QSettings()
        self.theme = "dark"
        self._closing = False
        self._image_name: str | None = None
        self._result_image: np.ndarray | None = None
        self._result_caption = "Result"  # what the canvas calls the result ("Result #3")
        self._pending_loads: dict[int, Callable[[RunsLoaded], None]] = {}  # job id → what to do with the runs
        self._pending_saves: dict[int, str] = {}  # job id → what to say when the run file is written
        self._probe_job = 0
        self._probed_spec: str | None = None  # the model the last probe asked about (None: the engine is not up)
        self._model_pending = False  # the selected model has not said its size and guidance scale yet
        self._native_inpaint = False  # the probed model is a 9-channel inpainting model
        self._decoding: set[tuple[str, int]] = set()  # x̂0 decodes asked for quietly while scrubbing
        self.size_multiple = 8  # image sides must be multiples of this; the probed model says its own

        self.history = RunHistory(self)
        self.worker = EngineWorker(backend_factory, self)
        self.controller = GenerationController(self.worker, self.history, self)

        self.message_bar = MessageBar()
        self.canvas = GuideCanvas()  # the mask canvas with universal guidance's hint and keep layers
        self.toolbar = CanvasToolbar(self.canvas)
        self.viewbar = CanvasViewBar(self.canvas)
        self.prompt_panel = PromptPanel()
        self.timeline = TimelinePanel()
        self.history_panel = HistoryPanel(self.history)
        self._build_layout()
        self.engine_label = QLabel("Starting the engine…")
        self.engine_label.setObjectName("engineStatusLabel")
        self.statusBar().addWidget(self.engine_label, 1)

        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.timeout.connect(self.autosave_now)
        self.theme_actions = build_menus(self)
        self._connect()
        self.restore_settings()
        self.theme_actions.get(self.theme, self.theme_actions["dark"]).setChecked(True)
        self._after_image_change()
        self.autosave = Autosave(autosave_dir)
        previous = self.autosave.start()
        self.worker.start()
        if previous is not None and offer_restore:
            self.offer_restore(previous)
        self._show_model_pending(True)
        self.prompt_panel.prompt.setFocus()  # typing a prompt is the first thing to do; canvas keys work anyway

    def _build_layout(self) -> None:
        """The canvas with its message bar and view bar in the middle, the mask tools above; prompt, history and
        timeline docked."""
        central = QWidget()
        central.setObjectName("centralArea")
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.viewbar)
        self.setCentralWidget(central)
        self.message_bar.overlay(self.canvas)
        # in the window's toolbar row, as wide as the window: at the minimum size every tool shows (in the central
        # column Redo, Clear and Invert fell off its end)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)
        self.prompt_dock = self._dock("Generate", "promptDock", self.prompt_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.history_dock = self._dock("History", "historyDock", self.history_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.timeline_dock = self._dock("Timeline", "timelineDock", self.timeline, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([self.prompt_dock, self.history_dock], [340, 300], Qt.Orientation.Horizontal)
        self.resizeDocks([self.timeline_dock], [300], Qt.Orientation.Vertical)
        self.dock_shares = DockShares(self, {self.prompt_dock: Qt.Orientation.Horizontal,
                                             self.history_dock: Qt.Orientation.Horizontal,
                                             self.timeline_dock: Qt.Orientation.Vertical})

    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(area, dock)
        return dock

    # -- wiring ---------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        panel, canvas = self.prompt_panel, self.canvas
        panel.generateRequested.connect(self.generate)
        panel.cancelRequested.connect(self.cancel)
        panel.openCheckpointRequested.connect(self.open_checkpoint_dialog)
        panel.modelChanged.connect(self._model_changed)
        panel.settings_model.changed.connect(self._setting_changed)
        panel.sizeChanged.connect(self._size_changed)
        panel.inpaintOptionsChanged.connect(lambda: canvas.set_feather(*panel.feather_and_grow()))
        panel.changed.connect(self.schedule_autosave)
        canvas.set_feather(*panel.feather_and_grow())
        canvas.mask.changed.connect(self._update_mode)
        canvas.mask.changed.connect(self.schedule_autosave)
        canvas.stepKey.connect(self.timeline.step_by)
        canvas.resultPressed.connect(self._paint_on_result)
        canvas.inputRestored.connect(self._input_restored)
        self.viewbar.use_as_input.clicked.connect(self.use_result_as_input)

        self._connect_controller()
        self._connect_guidance()

        self.history.selectionChanged.connect(self._show_run)
        self.history.runRemoved.connect(self.schedule_autosave)
        self.history.runRemoved.connect(lambda run: self.worker.submit(ForgetRun(run.id)))
        self.history.cleared.connect(self.schedule_autosave)
        self.history_panel.tree.itemClicked.connect(lambda *_: self.activate_run(self.history.selected))
        self.history_panel.invertRequested.connect(self.invert_image)
        self.history_panel.saveRequested.connect(self.save_image_dialog)
        self.history_panel.branchRequested.connect(lambda run: self.branch(run, self.timeline.index() if run is self.timeline.run else 0))
        self.timeline.branchRequested.connect(self.branch)
        self.timeline.decodeRequested.connect(self.decode_step)
        self.timeline.indexChanged.connect(self._scrubbed)
        self.timeline.exportRequested.connect(self.export_timeline)

        self.worker.message.connect(self._on_message)

    def _connect_controller(self) -> None:
        c = self.controller
        c.runningChanged.connect(self._running_changed)
        c.started.connect(self._on_started)
        c.step.connect(self._on_step)
        c.finished.connect(self._on_finished)
        c.cancelled.connect(self._on_cancelled)
        c.failed.connect(self._on_failed)

    # -- generating -----------------------------------------------------------------------------------------------
    def build_request(self):
        """The request the controls describe: txt2img, img2img (an image) or inpainting (an image and a mask), with
        the guides switched on (their pictures from the canvas and the Guidance section)."""
        request = self.prompt_panel.request()
        image = self.canvas.image_array()
        if image is not None:
            request = request.replace(width=image.shape[1], height=image.shape[0], init_image=image,
                                      mask=self.canvas.mask_array())
        return self.with_guides(request)

    def generate(self) -> None:
        if self.controller.running:
            return
        if self.prompt_panel.settings_model.random_each:
            self.prompt_panel.randomize_seed()
        self.timeline.stop()
        self.controller.generate(self.build_request())

    def cancel(self) -> None:
        if self.controller.running:
            self.controller.cancel()
            self.prompt_panel.set_progress_text("Stopping at the next step…")

    def branch(self, run: Any, index: int) -> None:
        if run is None:
            return
        if self.controller.running:
            self.message_bar.warning("Wait for the current run to finish (or cancel it) before branching.")
            return
        if not 0 <= index < run.recorded:
            self.message_bar.warning("Pick a step on the timeline to branch from.")
            return
        parent = run.request
        request = self.prompt_panel.request(width=parent.width, height=parent.height, strength=parent.strength)
        request = request.replace(init_image=parent.init_image, mask=parent.mask)
        request = self.with_guides(request, parent=parent)  # guidance as the panel has it now: on, off, stronger
        self.timeline.stop()
        self.controller.generate(request, parent=run, from_step=index)

    def invert_image(self) -> None:
        """Ask which picture to invert and how (invert_dialog.py); the dialog's choice starts the inversion."""
        if self.controller.running:
            self.message_bar.warning("Wait for the current run to finish before inverting an image.")
            return
        sources = self._invert_sources()
        if not sources:
            self.message_bar.warning("Open an image (or generate one) to invert.")
            return
        settings = self.prompt_panel.settings_model
        ask_invert(self, sources, settings.prompt, settings.steps, self._invert)

    def _invert_sources(self) -> list[InvertSource]:
        """The pictures on the canvas, the one on screen first: the result when it is shown, else the input."""
        shown = self.canvas.showing_result
        picture = self.canvas.shown_picture()  # a scrubbed step's x̂0 may stand in for the result
        sources = []
        if self._result_image is not None and self.canvas.has_result():
            on_screen = picture is not None and picture[0] is self._result_image
            label = self._result_caption + (" (on screen)" if on_screen else "")
            sources.append(InvertSource("result", label, self._result_image))
        image = self.canvas.image_array()
        if image is not None:
            label = f"Input: {self._image_name or 'the canvas image'}" + ("" if shown else " (on screen)")
            sources.insert(len(sources) if shown else 0, InvertSource("input", label, image))
        return sources

    def _invert(self, choice: InvertChoice) -> None:
        if self.controller.running:
            return
        image = np.array(choice.image)  # a writable copy: the result is a read-only view of the engine's message
        request = self.prompt_panel.request(width=image.shape[1], height=image.shape[0], init_image=image,
                                            prompt=choice.prompt, steps=choice.steps, cfg=choice.cfg)
        self.controller.invert(request, choice.refine)

    def decode_step(self, run: RunRecord | None, index: int) -> None:
        if run is None or not 0 <= index < run.recorded:
            return
        cached = run.decoded(index, "x0")
        if cached is not None:
            self._show_decoded(run, index, cached)
            return
        self.worker.submit(DecodeStep(run.id, index, "x0"))
        queued = " (after the current run)" if self.controller.running else ""
        self.message_bar.info(f"Decoding step {index + 1} at full quality{queued}…")

    # -- controller events ----------------------------------------------------------------------------------------
    def _running_changed(self, running: bool) -> None:
        focused = QApplication.focusWidget()
        self.prompt_panel.set_running(running)
        self.cancel_action.setEnabled(running)
        self.generate_action.setEnabled(not running)
        self.branch_action.setEnabled(not running)
        self.timeline.set_busy(running)
        self.history_panel.invert_button.setEnabled(not running)
        self.history_panel.clear_button.setEnabled(not running and len(self.history) > 0)
        if running:
            self.prompt_panel.show_progress(0, 0, self._loading_text("Loading the model…"))
        if focused is not None and not focused.isEnabled():
            # the pressed Generate / Branch button went grey and Qt moved the focus on to whatever came next (the
            # brush size box); the canvas is where the keys for what follows (scrub, paint, C) belong
            self.canvas.setFocus()

    def _on_started(self, event: Event) -> None:
        self.prompt_panel.show_progress(event.step, event.total, step_label(event, self.controller.kind))

    def _on_step(self, event: Event) -> None:
        self.prompt_panel.show_progress(event.step, event.total, step_text(event, self.controller.kind))
        record = self.controller.record
        if record is not None:
            if record is self.timeline.run:
                self.timeline.run_progressed(record)
            else:
                self.timeline.set_run(record)
        if record is not None and not self.timeline.at_last_step():
            return  # the user scrubbed back: the canvas keeps the step they chose
        decoded = event.step_info.decoded if event.step_info is not None else None
        image = decoded if decoded is not None else event.preview
        if image is not None:
            what = "x̂0" if decoded is not None else "preview"
            self.canvas.set_preview(image, f"{step_label(event, self.controller.kind)} · {what}")
            self.viewbar.sync()

    def _on_finished(self, event: Event) -> None:
        run = self.controller.record
        self.prompt_panel.show_progress(1, 1, status_text(run) if run is not None else "Done")
        if run is None:
            return
        self.timeline.run_finished(run)
        if run is self.history.selected and run.image is not None:
            self.show_result(run.image, f"Result #{self.history.number(run)}")
        self.autosave_now()  # a finished run is on disk at once, not a second later
        if run.kind == "invert":
            self.message_bar.success("Inversion done: scrub the timeline and branch from any step with a new prompt.")

    def _on_cancelled(self, event: Event) -> None:
        run = self.controller.record
        text = cancelled_text(event, self.controller.kind, run)
        self.prompt_panel.show_progress(*(status_progress(run) if run is not None else (0, 1)), text)
        if run is not None:
            self.timeline.run_finished(run)
            self.autosave_now()
        self.message_bar.info(f"{text}; its steps stay on the timeline.")

    def _on_failed(self, message: str) -> None:
        self.prompt_panel.show_progress(0, 1, "Failed")
        self.message_bar.error(message[:1].upper() + message[1:])
        if self.timeline.run is not None:
            self.timeline.run_finished(self.timeline.run)

    # -- worker messages ------------------------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        """The one dispatch point for everything the engine says."""
        match message:
            case Event():
                self.controller.on_event(message)
            case Decoded():
                self._on_decoded(message)
            case ModelProbed():
                self._on_model_probed(message)
            case RunsLoaded():
                callback = self._pending_loads.pop(message.job_id, None)
                if callback is not None:
                    callback(message)
            case RunSaved():
                text = self._pending_saves.pop(message.job_id, None)
                if text:
                    self.message_bar.success(text)
            case JobFailed():
                self._on_worker_failed(message)
            case BackendReady():
                self._engine_ready(list(message.devices))

    def _engine_ready(self, devices: list) -> None:
        self.prompt_panel.set_devices([str(d) for d in devices])
        names = ", ".join(d for d in devices if d != "auto")
        self.engine_label.setText(f"Engine ready · devices: {names}")
        # Load the selected model now (on the worker): the first Generate starts at once, at the model's own size.
        self._model_changed(self.prompt_panel.model_spec())

    def _on_decoded(self, message: Decoded) -> None:
        self._decoding.discard((message.run_id, message.index))
        run = self.history.by_id(message.run_id)
        if run is None:
            return
        run.add_decoded(message.index, message.view, message.image)
        self._show_decoded(run, message.index, message.image)

    def _scrubbed(self, index: int) -> None:
        """The canvas follows the timeline: the step's exact x̂0 where there is one (asked for quietly when the
        run decodes cheaply, e.g. a run loaded from a file), the result at a finished run's last step."""
        run = self.timeline.run
        if run is None or not 0 <= index < run.recorded:
            return
        if run.status == "finished" and run.image is not None and index == run.recorded - 1:
            self.show_result(run.image, f"Result #{self.history.number(run)}")
            return
        image = run.decoded(index, "x0")
        if image is not None:
            self._show_decoded(run, index, image)
        elif run.cheap_decode and (run.id, index) not in self._decoding:
            self._decoding.add((run.id, index))
            self.worker.submit(DecodeStep(run.id, index, "x0"))

    def _show_decoded(self, run: RunRecord, index: int, image: np.ndarray) -> None:
        self.timeline.decoded_arrived(run, index)
        if run is self.timeline.run and index == self.timeline.index():
            self.canvas.set_preview(image, f"Step {index + 1} · x̂0 decoded")
            self.viewbar.sync()
            if self.message_bar.text().startswith("Decoding"):
                self.message_bar.dismiss()

    def _on_model_probed(self, message: ModelProbed) -> None:
        info = message.info
        if message.job_id == self._probe_job and info.spec == self.prompt_panel.model_spec():
            self._native_inpaint = info.inpaints_natively
            self._update_mode()
            self._fit_to_model(info.size_multiple)
            self.prompt_panel.follow_model_cfg(info.default_cfg)
            # a cold model: only the cold samplers, and a guidance scale only if it was trained for one
            self.prompt_panel.allow_samplers(info.samplers or LDM_SAMPLERS, guidable=info.default_cfg != 1.0)
            self.engine_label.setText(f"Model ready: {self.prompt_panel.model_name()} ({info.default_size} px)")
            if not self.canvas.has_image():
                self.prompt_panel.set_size(info.default_size, info.default_size)
            self._show_model_pending(False)

    def _fit_to_model(self, multiple: int) -> None:
        """The model's own size rule: the size boxes step by it, and an input that does not fit is offered a fix."""
        self.size_multiple = multiple
        self.prompt_panel.set_size_multiple(multiple)
        size = self.canvas.image_size()
        if self.canvas.has_image() and (size.width() % multiple or size.height() % multiple):
            self.message_bar.warning(
                f"This model needs sides that are multiples of {multiple} px; the input is "
                f"{size.width()}×{size.height()}.",
                actions=[("Crop", lambda: self.refit_input("crop")), ("Pad", lambda: self.refit_input("pad"))],
            )

    def _on_worker_failed(self, message: JobFailed) -> None:
        if message.job_id == self._probe_job:
            self._show_model_pending(False)
        self._pending_loads.pop(message.job_id, None)
        self._pending_saves.pop(message.job_id, None)
        text = message.message
        self.message_bar.error(text[:1].upper() + text[1:])

    # -- runs, results and the canvas -----------------------------------------------------------------------------
    def _show_run(self, run: Any) -> None:
        self.timeline.set_run(run)
        self.prompt_panel.prompt_section.show_reading(getattr(run, "read_as", None))
        if run is not None and run.image is not None:
            self.show_result(run.image, f"Result #{self.history.number(run)}")
        if run is not None and not self.controller.running:  # the selected run's own status, not the last job's
            self.prompt_panel.show_progress(*status_progress(run), status_text(run))

    def activate_run(self, run: Any) -> None:
        """A click in the history: bring back the run's settings, input image and mask, result and timeline."""
        if run is None:
            return
        request = run.request
        settings = request.settings()
        if run.kind == "txt2img":
            del settings["strength"]  # unused by text to image: the panel's strength stays what the task makes it
        self.prompt_panel.apply_settings(settings, size=False)
        if request.init_image is not None and run.kind != "invert":
            current = self.canvas.image_array()
            if current is None or current.shape != request.init_image.shape or not np.array_equal(current, request.init_image):
                self.open_image(request.init_image, f"input of run #{self.history.number(run)}", quiet=True)
            current_mask = self.canvas.mask_array()
            if request.mask is not None and (current_mask is None or not np.array_equal(current_mask, request.mask)):
                self.canvas.set_mask(request.mask)
        self.restore_guide_pictures(request, f"run #{self.history.number(run)}")
        self._show_run(run)

    def show_result(self, image: np.ndarray, caption: str = "Result") -> None:
        self._result_image, self._result_caption = image, caption
        self.canvas.set_result(image, caption)
        self.viewbar.sync()

    def use_result_as_input(self) -> None:
        if self._result_image is None:
            self.message_bar.warning("There is no result to use yet.")
            return
        self._take_as_input(self._result_image, self._result_caption)

    def _paint_on_result(self) -> None:
        """A press on the picture on screen paints on that picture, as in Krita AI Diffusion and InvokeAI's canvas:
        the shown result becomes the input (one undo step, said in the message bar) and the stroke paints its mask.

        One rule whether or not an input exists: a click never switches to the input and adds a dab there unseen.
        The mask stays (paint, generate, paint more, generate refines one region); Ctrl+Z brings the old input back,
        and C shows the input to paint on it instead. A latent-size preview is no picture to paint on: said, no dab."""
        shown = self.canvas.shown_picture()
        if shown is None:
            return
        image, caption = shown
        if self.controller.running:
            self.message_bar.info("The picture is still being made: press C to paint on the input, or wait for "
                                  "the result.")
        elif image.shape[:2] != (self.canvas.image_size().height(), self.canvas.image_size().width()):
            self.message_bar.info(f"{caption} is a small preview: decode it (Ctrl+D) to paint on it, or press C to "
                                  "paint on the input.")
        else:
            name = caption[:1].lower() + caption[1:]
            self._take_as_input(image, name)
            self.message_bar.info(f"Painting on {name}: it is now the input (Ctrl+Z undoes).")

    def _take_as_input(self, image: np.ndarray, name: str) -> None:
        self.canvas.take_as_input(np.array(image))  # a writable copy of the engine's read-only image
        self._image_name = name
        self._after_image_change()

    def _input_restored(self) -> None:
        self._image_name = self.canvas.input_label
        self._after_image_change()
        if self.message_bar.text().startswith("Painting on"):
            self.message_bar.dismiss()  # undone: the message no longer holds

    def _after_image_change(self) -> None:
        canvas, panel = self.canvas, self.prompt_panel
        size = canvas.image_size()
        if canvas.has_image():
            panel.set_image_mode(True, (size.width(), size.height()))
        else:
            panel.set_image_mode(False)
            canvas.set_blank_size(*panel.generation_size())
        name = canvas.input_label = self._image_name
        self.setWindowTitle(f"{name} — Diffusion Studio" if name else "Diffusion Studio")
        self.viewbar.sync()
        self._update_mode()
        self.schedule_autosave()

    def _update_mode(self) -> None:
        size = self.canvas.image_size()
        dims = f"{size.width()} × {size.height()}"
        if self._model_pending and not self.canvas.has_image():
            dims = "…"  # the model's own size is on its way (pending.py)
        if not self.canvas.has_image():
            mode = "Text to image"
        elif self.canvas.mask.is_empty():
            mode = "Image to image (paint a mask to inpaint)"
        else:
            covered = float((self.canvas.mask.array() > 0).mean()) * 100
            mode = f"Inpaint · mask covers {covered:.0f} %"
        self.prompt_panel.set_mode_text(f"{mode} · {dims}")
        self.viewbar.info_label.setText(f"  {dims} px")
        self._show_inpaint_options(self.canvas.has_image() and not self.canvas.mask.is_empty())
        # A1111 and InvokeAI inpaint with strength 1 when the model inpaints natively (unless the user chose one)
        self.prompt_panel.follow_inpaint_strength(
            self._native_inpaint and self.canvas.has_image() and not self.canvas.mask.is_empty())

    def _show_inpaint_options(self, masked: bool) -> None:
        """The Inpainting group shows while there is a mask (before, it has nothing to act on), and the first
        stroke scrolls it into view: at the minimum window size its Fill and Method sat below the fold."""
        panel = self.prompt_panel
        box = panel.inpaint_box
        if masked == box.isVisibleTo(panel):
            return
        box.setVisible(masked)
        if masked:
            QTimer.singleShot(0, self._scroll_to_inpaint_options)  # once the layout has made room for the group

    def _scroll_to_inpaint_options(self) -> None:
        """As much of the Inpainting group as fits, its last rows (Fill, Method) first; never sideways."""
        panel = self.prompt_panel
        scroll = panel.findChild(QScrollArea, "promptScroll")
        body = scroll.widget()
        top = panel.inpaint_box.mapTo(body, QPoint(0, 0)).y()
        bottom = panel.paste_back.mapTo(body, QPoint(0, panel.paste_back.height())).y()
        for y in (top, bottom):
            scroll.ensureVisible(0, y, 0, 4)

    def _size_changed(self, width: int, height: int) -> None:
        if not self.canvas.has_image():
            self.canvas.set_blank_size(width, height)
            self._update_mode()

    def _setting_changed(self, name: str, value: object) -> None:
        """A model set without the model box (a dropped PNG, a run picked in the history, an autosave) is probed
        like a picked one, so its samplers, size and guidance scale follow it."""
        if name == "model" and self._probed_spec is not None and value != self._probed_spec:
            self._model_changed(str(value))

    def _model_changed(self, spec: str) -> None:
        if spec == self._probed_spec and self._model_pending:
            return  # a probe of this model is already under way
        self._probed_spec = spec
        self.engine_label.setText(self._loading_text(f"Loading {self.prompt_panel.model_name()}…"))
        self._show_model_pending(True)
        panel, settings = self.prompt_panel, self.prompt_panel.settings_model
        # the weights are packed for the picture's size when an image sets it, else for the model's own size
        width, height = (settings.get("width"), settings.get("height")) if self.canvas.has_image() else (0, 0)
        self._probe_job = self.worker.submit(ProbeModel(spec, settings.device, settings.dtype, width=width,
                                                        height=height))

    def _loading_text(self, text: str) -> str:
        if self.prompt_panel.settings_model.device == "openvino":
            # the first load of a model on OpenVINO converts its UNet (minutes for SD-sized ones; cached after)
            return text + " (the first time on OpenVINO, its UNet is converted once)"
        return text

    def _show_model_pending(self, pending: bool) -> None:
        """Size (when no image sets it) and a model-following CFG show "…" until the model says its own
        (pending.py)."""
        panel, has_image = self.prompt_panel, self.canvas.has_image()
        if pending and self._model_pending:
            return
        self._model_pending = pending
        settings = panel.settings_model
        for spin, name in ((panel.width_spin, "width"), (panel.height_spin, "height")):
            if not pending or not has_image:
                show_pending(spin, pending, settings.get(name), enabled_after=not has_image)
        if not pending or settings.cfg_follows_model:
            show_pending(panel.cfg, pending, settings.cfg, enabled_after=panel.sampling_section.cfg_applies)
        self.canvas.blank_note = "Loading the model…" if pending else ""
        self.canvas.update()
        self._update_mode()

    # -- help -----------------------------------------------------------------------------------------------------
    def _show_shortcuts(self) -> None:
        text = ("Ctrl+Enter  generate · Esc  cancel at the next step\n"
                "B / E  brush / eraser · H / K  guidance hint / keep (right-drag erases) · [ ]  brush size\n"
                "Ctrl+Z / Ctrl+Shift+Z  undo / redo one stroke\n"
                "Space-drag or middle button  pan · wheel  zoom · Ctrl+0  fit · Ctrl+1  100 %\n"
                "C  before / after · ← →  step the timeline · Ctrl+B  branch from the selected step\n"
                "Ctrl+D  decode the selected step · Ctrl+U  use the result as input")
        self.message_bar.info(text, timeout_ms=20000)

    def _show_about(self) -> None:
        from .. import __version__

        box = QMessageBox(QMessageBox.Icon.Information, "About Diffusion Studio",
                          f"Diffusion Studio {__version__}\nLatent diffusion you can see, scrub and branch.", parent=self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    # -- closing --------------------------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._closing:
            self._closing = True
            self.timeline.stop()
            self.controller.cancel()
            self.autosave_now()  # queues the run files not yet written; the worker finishes them before it stops
            self.worker.stop()  # cancels the run at its next step and joins the engine thread
            self.controller.job_id = 0
            self.save_settings()
            self.autosave.close()
            self.closed.emit()
        super().closeEvent(event)
