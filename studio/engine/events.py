"""The engine's own progress record, for code that drives `Engine` directly in one thread (the CLI, scripts,
tests, training's evaluation). It carries the engine's live `Run`; a UI never sees it: `backend.LocalBackend`
turns it into the immutable `api.Event` (with a `RunInfo` snapshot) before anything crosses a thread."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .api import EventKind, Progress

if TYPE_CHECKING:
    from .run import Run

__all__ = ["EventKind", "RunEvent"]


@dataclass(frozen=True)
class RunEvent(Progress):
    kind: EventKind
    job_id: int
    step: int = 0  # steps done so far
    total: int = 0  # steps in this job
    elapsed: float = 0.0  # seconds since sampling started
    preview: np.ndarray | None = field(default=None, repr=False)  # HxWx3 uint8 (latent resolution)
    run: "Run | None" = None
    message: str = ""
