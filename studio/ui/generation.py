"""Drives one generation at a time: submits jobs to the engine worker and dispatches its Events with `match`.

It owns the "what is running" state and keeps the RunHistory up to date; widgets listen to its signals.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QObject, Signal

from ..engine.events import Event, EventKind
from ..engine.request import GenerationRequest
from .run_history import RunHistory
from .worker import EngineWorker


def progress_text(event: Event, label: str = "Step") -> str:
    text = f"{label} {event.step}/{event.total}"
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
    finished = Signal(object)  # Event (FINISHED); event.run holds the result
    cancelled = Signal(object)  # Event (CANCELLED)
    failed = Signal(str)  # one sentence for the message bar
    runningChanged = Signal(bool)
    runAppeared = Signal(object)  # a Run entered the history (first event that carried it)

    def __init__(self, worker: EngineWorker, history: RunHistory, parent: QObject | None = None):
        super().__init__(parent)
        self.worker = worker
        self.history = history
        self.job_id = 0
        self.kind = ""  # "generate" | "branch" | "invert"
        self.run: Any = None  # the Run of the current job, once the engine has made it
        self.last_event: Event | None = None
        worker.event.connect(self.on_event)

    @property
    def running(self) -> bool:
        return self.job_id != 0

    def generate(self, request: GenerationRequest, parent: Any = None, from_step: int = 0) -> int:
        if self.running:
            return 0
        self._begin("branch" if parent is not None else "generate")
        self.job_id = self.worker.generate(request, parent=parent, from_step=from_step)
        return self.job_id

    def invert(self, request: GenerationRequest) -> int:
        if self.running:
            return 0
        self._begin("invert")
        self.job_id = self.worker.invert(request)
        return self.job_id

    def cancel(self) -> None:
        if self.running:
            self.worker.cancel(self.job_id)

    def _begin(self, kind: str) -> None:
        self.kind, self.run, self.last_event = kind, None, None
        self.runningChanged.emit(True)

    def _end(self) -> None:
        self.job_id = 0
        self.runningChanged.emit(False)

    # -- the one dispatch point -----------------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if event.job_id != self.job_id or not self.running:
            return  # a stale event from a job that was already settled
        self.last_event = event
        if event.run is not None and event.run is not self.run:
            self.run = event.run
            self.history.add(event.run, select=True)
            self.runAppeared.emit(event.run)
        match event.kind:
            case EventKind.STARTED:
                self.started.emit(event)
            case EventKind.STEP:
                self.step.emit(event)
            case EventKind.FINISHED:
                self._end()
                if self.run is not None:
                    self.history.changed(self.run)
                self.finished.emit(event)
            case EventKind.CANCELLED:
                self._end()
                if self.run is not None:
                    self.run.status = "cancelled"
                    self.history.changed(self.run)
                self.cancelled.emit(event)
            case EventKind.ERROR:
                self._end()
                if self.run is not None:
                    if self.run.status == "running":
                        self.run.status = "failed"
                    self.history.changed(self.run)  # its steps so far can still be scrubbed and branched from
                self.failed.emit(event.message or "generation failed")
