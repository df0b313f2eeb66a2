"""The one engine thread: typed jobs go in through a queue, the backend's immutable messages come out through one
queued Qt signal.

The thread owns the `Backend` (and therefore every torch import: the window appears before torch has loaded).
Cancellation is a `threading.Event` per job, checked by the engine between steps; `stop()` cancels, lets the jobs
that only write files finish, and joins the thread (napari #7633: never let a worker outlive its window).
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from ..engine import GENERATION_JOBS, Backend, Event, EventKind, ForgetRun, Job, JobFailed, SaveRun, report_internal_error

THREAD_NAME = "studio-engine"
FILE_JOBS = (SaveRun, ForgetRun)  # finished even while stopping: they keep the user's work


def _local_backend() -> Backend:
    from ..engine import LocalBackend

    return LocalBackend()


class EngineWorker(QObject):
    message = Signal(object)  # every studio.engine.Message: Event, Decoded, ModelProbed, RunsLoaded, …

    def __init__(self, backend_factory: Callable[[], Backend] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._backend_factory = backend_factory or _local_backend
        self._queue: queue.Queue[tuple[Job, threading.Event] | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: tuple[Job, threading.Event] | None = None
        self._thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self._stopped = False

    # -- the UI side ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Queue `job`; its messages carry the returned id (0: the worker has stopped and took nothing)."""
        if self._stopped:
            return 0
        job = dataclasses.replace(job, job_id=next(self._ids))
        self._queue.put((job, threading.Event()))
        return job.job_id

    def cancel(self, job_id: int | None = None) -> None:
        """Stop job `job_id` (or whatever runs now) at its next step; a queued one never starts."""
        with self._lock:
            current = self._current
        if current is not None and (job_id is None or current[0].job_id == job_id):
            current[1].set()
        if job_id is not None:
            for entry in list(self._queue.queue):
                if entry is not None and entry[0].job_id == job_id:
                    entry[1].set()

    def stop(self, timeout: float | None = 60.0) -> bool:
        """Cancel every job but those that write the user's files, end the thread and join it."""
        self._stopped = True
        for entry in list(self._queue.queue):
            if entry is not None and not isinstance(entry[0], FILE_JOBS):
                entry[1].set()
        self.cancel()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._current is not None or not self._queue.empty()

    # -- the engine thread ----------------------------------------------------------------------------------------
    def _main(self) -> None:
        backend = self._start_backend()
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            job, cancel = entry
            if cancel.is_set():
                if isinstance(job, GENERATION_JOBS):
                    self.message.emit(Event(EventKind.CANCELLED, job.job_id))
                continue
            with self._lock:
                self._current = entry
            try:
                self._run(backend, job, cancel)
            finally:
                with self._lock:
                    self._current = None

    def _start_backend(self) -> Backend | None:
        try:
            backend = self._backend_factory()
            self.message.emit(backend.start())
            return backend
        except Exception as exc:  # a broken install: say so, keep the window alive
            self.message.emit(JobFailed(0, report_internal_error(exc, "starting the engine"), internal=True))
            return None

    def _run(self, backend: Backend | None, job: Job, cancel: threading.Event) -> None:
        try:
            if backend is None:
                raise RuntimeError("the engine is not available (see the first error)")
            for message in backend.execute(job, cancel):
                self.message.emit(message)  # queued to the UI thread: the engine never waits for painting
        except Exception as exc:  # a backend must not raise; if one does, the job still ends with a message
            text = report_internal_error(exc, "running a job")
            failure: Any = (Event(EventKind.ERROR, job.job_id, message=text, internal=True)
                            if isinstance(job, GENERATION_JOBS) else JobFailed(job.job_id, text, internal=True))
            self.message.emit(failure)
