"""The in-process engine behind the `api.Backend` interface.

`LocalBackend` owns an `Engine` and every run it made or loaded, by id. It answers typed jobs with immutable
messages: a run leaves this module only as a `RunInfo` / `StepInfo` snapshot, so the thread that shows it never
touches what the engine thread is writing. A remote backend would implement the same two methods.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

from .api import (
    GENERATION_JOBS,
    BackendReady,
    Branch,
    Decoded,
    DecodeStep,
    Event,
    EventKind,
    ForgetRun,
    Generate,
    Invert,
    Job,
    JobFailed,
    LoadedRun,
    LoadRuns,
    Message,
    ModelProbed,
    ProbeModel,
    RunsLoaded,
    RunSaved,
    SaveRun,
    frozen_array,
)
from .errors import UserError, report_internal_error
from .events import RunEvent
from .pipeline import Engine
from .run import NotARunFile, Run


class LocalBackend:
    def __init__(self, engine_factory: Callable[[], Engine] = lambda: Engine(decode_steps=True)):
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._runs: dict[str, Run] = {}

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    def start(self) -> BackendReady:
        from .devices import available_devices

        self.engine  # noqa: B018  (build it now, on the thread that will use it)
        return BackendReady(0, tuple(available_devices()))

    def run(self, run_id: str) -> Run:
        """The live run (for scripts and tests on the engine's own thread)."""
        try:
            return self._runs[run_id]
        except KeyError:
            raise UserError("that run is no longer loaded; open its run file again") from None

    # -- the one entry point ------------------------------------------------------------------------------------------
    def execute(self, job: Job, cancel: threading.Event) -> Iterator[Message]:
        generation = isinstance(job, GENERATION_JOBS)
        current: list[Run] = []  # the run a generation job made, once known
        try:
            if generation:
                yield from self._generation(job, cancel, current)
            else:
                yield from self._other(job, cancel)
        except Exception as exc:
            internal = not isinstance(exc, UserError)
            message = report_internal_error(exc, _doing(job)) if internal else str(exc)
            if not generation:
                yield JobFailed(job.job_id, message, internal)
                return
            run = current[0] if current else None
            if run is not None and run.status == "running":
                run.status = "failed"  # its steps so far can still be scrubbed and branched from
            info = run.info() if run is not None else None
            yield Event(EventKind.ERROR, job.job_id, run=info, message=message, internal=internal)

    # -- generate, branch, invert -------------------------------------------------------------------------------------
    def _generation(self, job: Job, cancel: threading.Event, current: list[Run]) -> Iterator[Event]:
        engine = self.engine
        match job:
            case Generate():
                events = engine.generate(job.request, job_id=job.job_id, cancel=cancel)
            case Branch():
                parent = self.run(job.parent_id)
                events = engine.generate(job.request, job_id=job.job_id, cancel=cancel, parent=parent,
                                         from_step=job.from_step)
            case Invert():
                kwargs = {} if job.refine is None else {"refine": job.refine}
                events = engine.invert(job.request, job_id=job.job_id, cancel=cancel, **kwargs)
        for event in events:
            if event.run is not None and not current:
                current.append(event.run)
                self._runs[event.run.id] = event.run
            yield _message(event)

    # -- everything else ----------------------------------------------------------------------------------------------
    def _other(self, job: Job, cancel: threading.Event) -> Iterator[Message]:
        match job:
            case DecodeStep():
                image = self.engine.decode_step(self.run(job.run_id), job.index, job.view)
                yield Decoded(job.job_id, job.run_id, job.index, job.view, frozen_array(image))
            case ProbeModel():
                from .cold_pipeline import cold_model_info, is_cold_model
                from .model_info import model_info

                if is_cold_model(job.spec):  # a cold-diffusion restorer, no latent diffusion model (cold_pipeline.py)
                    yield ModelProbed(job.job_id, cold_model_info(job.spec))
                else:
                    # loaded for the picture's size: a second start reads the packs cached for it (pack_cache.py)
                    model = self.engine.model(job.spec, job.device, job.dtype, size=(job.width, job.height))
                    yield ModelProbed(job.job_id, model_info(model, job.spec))
                    # the UI has its answer; a Generate sent meanwhile waits for this, which it would pay anyway. Only a
                    # speed-up: skipped when the app is closing, and a failure leaves the packing to the first
                    # generation, which reports any real problem (out of memory, say) to the user
                    if not cancel.is_set():
                        try:
                            self.engine.prepare(job.spec, job.device, job.dtype, job.width, job.height)
                        except (RuntimeError, MemoryError):
                            pass
            case SaveRun():
                self.run(job.run_id).save(job.path)
                yield RunSaved(job.job_id, job.run_id, job.path)
            case LoadRuns():
                yield self._load(job)
            case ForgetRun():
                self._runs.pop(job.run_id, None)  # its branches keep the parent object they share steps with
            case _:
                raise TypeError(f"unknown job {type(job).__name__}")

    def _load(self, job: LoadRuns) -> RunsLoaded:
        """Read saved runs and link each branch to its parent (loaded now or earlier); a bad file is named, not
        raised, so one damaged run never costs the others."""
        runs, errors, not_runs = [], [], []
        for path in job.paths:
            try:
                runs.append(Run.load(path))
            except NotARunFile:
                not_runs.append(path)
            except UserError as exc:
                errors.append(f"{Path(path).name}: {exc}")
        for run in runs:
            self._runs[run.id] = run
        for run in runs:
            if run.parent_id in self._runs and run.parent is None:
                run.parent = self._runs[run.parent_id]
        loaded = tuple(LoadedRun(run.info(), tuple(run.step_info(i) for i in range(len(run.timeline)))) for run in runs)
        return RunsLoaded(job.job_id, loaded, tuple(errors), tuple(not_runs))


def _message(event: RunEvent) -> Event:
    run = event.run
    step_info = None
    if event.kind is EventKind.STEP and run is not None and len(run.timeline) > 0:
        step_info = run.step_info(len(run.timeline) - 1)  # the step just recorded
    return Event(
        event.kind, event.job_id, event.step, event.total, event.elapsed, frozen_array(event.preview),
        run.info() if run is not None else None, event.message, step_info,
    )


def _doing(job: Job) -> str:
    return {
        "Generate": "generating", "Branch": "branching", "Invert": "inverting an image", "DecodeStep": "decoding a step",
        "ProbeModel": "opening the model", "SaveRun": "saving a run", "LoadRuns": "loading runs",
        "ForgetRun": "freeing a run",
    }.get(type(job).__name__, "working")
