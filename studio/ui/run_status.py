"""What the progress line says about a run, counted as its timeline counts.

A branch ran only its own steps (the ones before its branch point are its parent's); an inversion runs its steps
twice (up to noise, then back down, the only pass its timeline records). The line says so, during the run and
after it, and says it again for whichever run is selected when nothing is running.
"""

from __future__ import annotations

from typing import Any

from ..engine import Event
from .generation import format_seconds, progress_text


def is_branch(run: Any) -> bool:
    return run.parent_id is not None and run.kind != "invert"


def status_text(run: Any) -> str:
    """One line for a run that is not running: how it ended, over how many of its own steps, in how long."""
    seconds = format_seconds(run.elapsed) if run.elapsed is not None else ""
    took = f" in {seconds}" if seconds else ""
    if run.status == "finished":
        if run.kind == "invert":
            return f"Inverted in {run.steps} + {run.steps} steps" + (f" · {seconds}" if seconds else "")
        if is_branch(run):
            return f"Done · {run.steps - run.from_step} steps (branched after step {run.from_step}){took}"
        return f"Done · {run.steps} steps{took}"
    if run.status == "cancelled":
        return f"Cancelled at step {run.recorded}/{run.steps}"
    if run.status == "failed":
        return f"Failed at step {run.recorded}/{run.steps}"
    return f"Step {run.recorded}/{run.steps}"


def status_progress(run: Any) -> tuple[int, int]:
    """The progress bar's value and maximum for `status_text`."""
    if run.status == "finished":
        return 1, 1
    return run.recorded, max(1, run.steps)


def _count(event: Event, kind: str) -> tuple[str, int, int]:
    """What the job is doing and its step out of how many, as the timeline counts (an inversion's passes apart)."""
    if kind != "invert":
        return "Step", event.step, event.total
    half = max(1, event.total // 2)
    if event.run is None:  # the upward pass: nothing is recorded yet
        return "Inverting", event.step, half
    return "Reconstructing", max(0, event.step - half), half


def step_label(event: Event, kind: str) -> str:
    """"Step 3/25", "Inverting 3/25", "Reconstructing 3/25"."""
    label, step, total = _count(event, kind)
    return f"{label} {step}/{total}"


def step_text(event: Event, kind: str) -> str:
    """The line during a job: `step_label` with the whole job's rate and time left."""
    return progress_text(event, *_count(event, kind))


def cancelled_text(event: Event, kind: str, run: Any) -> str:
    if run is not None:
        return status_text(run)
    if kind == "invert":
        return f"Cancelled while inverting (step {event.step}/{max(1, event.total // 2)})"
    return f"Cancelled at step {event.step}/{event.total}"
