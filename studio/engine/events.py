"""The one small typed event API between the engine and whoever drives it (UI worker, CLI, scripts)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .run import Run


class EventKind(Enum):
    STARTED = "started"  # the model is loaded and sampling begins; `total` is known
    STEP = "step"  # one sampler step finished; `preview` is its predicted x0 as RGB
    FINISHED = "finished"  # `run` holds the image and the timeline
    CANCELLED = "cancelled"  # stopped at a step boundary; `run` keeps the timeline so far
    ERROR = "error"  # `message` is one clear sentence for the user


@dataclass(frozen=True)
class Event:
    kind: EventKind
    job_id: int
    step: int = 0  # steps done so far
    total: int = 0  # steps in this run
    elapsed: float = 0.0  # seconds since sampling started
    preview: np.ndarray | None = None  # HxWx3 uint8 (latent resolution)
    run: "Run | None" = None
    message: str = ""

    @property
    def its_per_second(self) -> float:
        return self.step / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        rate = self.its_per_second
        return (self.total - self.step) / rate if rate > 0 else float("nan")
