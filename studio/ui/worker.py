"""The one engine thread: jobs go in through a queue, engine Events come out through queued Qt signals.

The thread owns the `Engine` (and therefore every torch import: the window appears before torch has loaded).
Cancellation is a `threading.Event` per job, checked by the engine between steps; `stop()` cancels, drains the
queue and joins the thread (napari #7633: never let a worker outlive its window).
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from ..engine.events import Event, EventKind
from ..engine.request import GenerationRequest

THREAD_NAME = "studio-engine"


@dataclass
class Job:
    id: int
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass
class GenerateJob(Job):
    request: GenerationRequest | None = None
    parent: Any = None  # studio.engine.run.Run to branch from
    from_step: int = 0


@dataclass
class InvertJob(Job):
    request: GenerationRequest | None = None


@dataclass
class DecodeJob(Job):
    run: Any = None
    index: int = 0
    view: str = "x0"


@dataclass
class ProbeModelJob(Job):
    spec: str = "default"
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class CallJob(Job):
    """Run a plain function on the engine thread (loading saved runs, anything that imports torch)."""

    function: Callable[[], Any] | None = None


class EngineWorker(QObject):
    event = Signal(object)  # studio.engine.events.Event of a generate or invert job
    decoded = Signal(int, object, int, str, object)  # job id, run, step index, view, HxWx3 uint8
    modelProbed = Signal(int, str, int, float)  # job id, model spec, its default size in pixels and CFG scale
    called = Signal(int, object)  # job id, the function's result
    failed = Signal(int, str)  # job id, one sentence: a non-generation job went wrong
    ready = Signal(list)  # the engine has imported; the devices it can use

    def __init__(self, engine_factory: Callable[[], Any] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._engine_factory = engine_factory
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self._stopped = False

    # -- the UI side ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, cls: type[Job], **fields: Any) -> int:
        if self._stopped:
            return 0
        job = cls(id=next(self._ids), **fields)
        self._queue.put(job)
        return job.id

    def generate(self, request: GenerationRequest, parent: Any = None, from_step: int = 0) -> int:
        return self.submit(GenerateJob, request=request, parent=parent, from_step=from_step)

    def invert(self, request: GenerationRequest) -> int:
        return self.submit(InvertJob, request=request)

    def decode(self, run: Any, index: int, view: str = "x0") -> int:
        return self.submit(DecodeJob, run=run, index=index, view=view)

    def probe_model(self, spec: str, device: str, dtype: str) -> int:
        return self.submit(ProbeModelJob, spec=spec, device=device, dtype=dtype)

    def call(self, function: Callable[[], Any]) -> int:
        return self.submit(CallJob, function=function)

    def cancel(self, job_id: int | None = None) -> None:
        """Stop job `job_id` (or whatever runs now) at its next step; a queued one never starts."""
        with self._lock:
            if self._current is not None and (job_id is None or self._current.id == job_id):
                self._current.cancel.set()
        if job_id is not None:
            for job in list(self._queue.queue):
                if job is not None and job.id == job_id:
                    job.cancel.set()

    def stop(self, timeout: float | None = 60.0) -> bool:
        """Cancel everything, end the thread and join it. True when the thread is gone."""
        self._stopped = True
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending.cancel.set()
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
        try:
            engine = self._make_engine()
            from ..engine.devices import available_devices

            self.ready.emit(available_devices())
        except Exception as exc:  # a broken install: say so, keep the window alive
            traceback.print_exc(file=sys.stderr)
            self.failed.emit(0, f"the engine could not start: {exc}")
            engine = None
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel.is_set():
                if isinstance(job, (GenerateJob, InvertJob)):
                    self.event.emit(Event(EventKind.CANCELLED, job.id))
                continue
            with self._lock:
                self._current = job
            try:
                if engine is None:
                    raise RuntimeError("the engine is not available (see the first error)")
                self._run(engine, job)
            except Exception as exc:
                if not isinstance(exc, (ValueError, OSError)):  # user errors (RequestError, ModelLoadError) are messages
                    traceback.print_exc(file=sys.stderr)
                message = _describe(exc)
                if isinstance(job, (GenerateJob, InvertJob)):
                    self.event.emit(Event(EventKind.ERROR, job.id, message=message))
                else:
                    self.failed.emit(job.id, message)
            finally:
                with self._lock:
                    self._current = None

    def _make_engine(self) -> Any:
        if self._engine_factory is not None:
            return self._engine_factory()
        from ..engine.pipeline import Engine

        return Engine()

    def _run(self, engine: Any, job: Job) -> None:
        match job:
            case GenerateJob():
                events = engine.generate(
                    job.request, job_id=job.id, cancel=job.cancel, parent=job.parent, from_step=job.from_step
                )
                self._forward(events)
            case InvertJob():
                self._forward(engine.invert(job.request, job_id=job.id, cancel=job.cancel))
            case DecodeJob():
                image = engine.decode_step(job.run, job.index, job.view)
                self.decoded.emit(job.id, job.run, job.index, job.view, image)
            case ProbeModelJob():
                model = engine.model(job.spec, job.device, job.dtype)
                config = model.config
                self.modelProbed.emit(job.id, job.spec, int(config.default_size), float(config.default_cfg))
            case CallJob():
                self.called.emit(job.id, job.function())

    def _forward(self, events: Any) -> None:
        for event in events:
            self.event.emit(event)  # queued to the UI thread: the engine never waits for painting


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "out of memory: try a smaller size, fp16, or the CPU; nothing was lost"
    if isinstance(exc, (OSError, ValueError)):
        return text
    return f"{type(exc).__name__}: {text}"
