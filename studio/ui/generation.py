"""Drives one generation at a time: submits jobs to the engine worker and dispatches its Events with `match`.

It owns the "what is running" state and keeps the RunHistory up to date; widgets listen to its signals.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QObject, Signal

from ..engine import Branch, Event, EventKind, Generate, GenerationRequest, Invert
from .run_history import RunHistory
from .run_record import RunRecord
from .worker import EngineWorker


def progress_text(event: Event, label: str = "Step", step: int | None = None, total: int | None = None) -> str:
    """"Step 3/25 · 4.1 it/s · ETA 0:05"; `step` / `total` replace the event's own count in the text (an
    inversion's passes are counted apart), the rate and ETA are always the whole job's."""
    text = f"{label} {event.step if step is None else step}/{event.total if total is None else total}"
    rate = event.its_per_second
    if rate > 0:
        text += f" · {rate:.2f} it/s" if rate < 10 else f" · {rate:.0f} it/s"
        eta = event.eta_seconds
        if math.isfinite(eta):
            text += f" · ETA {format_seconds(eta)}"
    return text


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class GenerationController(QObject):
    started = Signal(object)  # Event (STARTED)
    step = Signal(object)  # Event (STEP)
    finished = Signal(object)  # Event (FINISHED); the record is `controller.record`
    cancelled = Signal(object)  # Event (CANCELLED)
    failed = Signal(str)  # one sentence for the message bar
    runningChanged = Signal(bool)

    def __init__(self, worker: EngineWorker, history: RunHistory, parent: QObject | None = None):
        super().__init__(parent)
        self.worker = worker
        self.history = history
        self.job_id = 0
        self.kind = ""  # "generate" | "branch" | "invert"
        self.record: RunRecord | None = None  # the run of the current job, once the engine has made it
        self.last_event: Event | None = None

    @property
    def running(self) -> bool:
        return self.job_id != 0

    def generate(self, request: GenerationRequest, parent: RunRecord | None = None, from_step: int = 0) -> int:
        if self.running:
            return 0
        if parent is not None:
            return self._begin("branch", Branch(request, parent.id, from_step))
        return self._begin("generate", Generate(request))

    def invert(self, request: GenerationRequest, refine: int | None = None) -> int:
        if self.running:
            return 0
        return self._begin("invert", Invert(request, refine))

    def cancel(self) -> None:
        if self.running:
            self.worker.cancel(self.job_id)

    def _begin(self, kind: str, job) -> int:
        self.kind, self.record, self.last_event = kind, None, None
        self.job_id = self.worker.submit(job)
        if self.job_id:
            self.runningChanged.emit(True)
        return self.job_id

    def _end(self) -> None:
        self.job_id = 0
        self.runningChanged.emit(False)

    # -- the one dispatch point -----------------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if event.job_id != self.job_id or not self.running:
            return  # a stale event from a job that was already settled
        self.last_event = event
        self._follow(event)
        match event.kind:
            case EventKind.STARTED:
                self.started.emit(event)
            case EventKind.STEP:
                self.step.emit(event)
            case EventKind.FINISHED:
                self._end()
                self.finished.emit(event)
            case EventKind.CANCELLED:
                self._end()
                self.cancelled.emit(event)
            case EventKind.ERROR:
                self._end()
                self.failed.emit(event.message or "generation failed")

    def _follow(self, event: Event) -> None:
        """Keep the UI's record of the run in step with the engine's snapshots (the only writer is the engine)."""
        if event.run is None:
            return
        record = self.record
        if record is None or record.id != event.run.id:
            record = self.record = RunRecord(event.run, parent=self.history.by_id(event.run.parent_id))
            self.history.add(record, select=True)
        else:
            record.update(event.run)
        if event.kind is not EventKind.STARTED:
            record.elapsed = event.elapsed
        if event.step_info is not None:
            record.add_step(event.step_info)
            # the history thumbnail until the final image exists: the exact x̂0 when the engine decoded it
            decoded = event.step_info.decoded
            record.preview = decoded if decoded is not None else event.preview
        self.history.changed(record)
