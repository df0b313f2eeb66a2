"""Reproduce a branched picture from its PNG: generate the first run of its lineage, then branch each descendant
from its step, one job after another, until the picture's own settings have run.

A branch's PNG records its ancestors (engine/images.py, the "Branched from" field): the same settings on the same
device walk the same steps, so the last run gives the same picture.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from ..engine import GenerationRequest
from .generation import GenerationController


Chain = list[tuple[GenerationRequest, int]]


def replay_chain(child: GenerationRequest, lineage: Chain) -> Chain:
    """`lineage` nearest ancestor first, each with the step its child branched from → the runs to make, first
    run first, each with the step of the previous run it branches from (0 for the first)."""
    requests = [request for request, _ in reversed(lineage)] + [child]
    steps = [0] + [k for _, k in reversed(lineage)]
    return list(zip(requests, steps))


class LineageReplay(QObject):
    done = Signal(object)  # the last run's record: the reproduced picture
    stopped = Signal()  # a run was cancelled or failed: the replay ends there

    def __init__(self, controller: GenerationController, chain: Chain, parent: QObject | None = None):
        super().__init__(parent)
        self._controller = controller
        self._chain = list(chain)

    def start(self) -> bool:
        if self._controller.running or not self._chain:
            return False
        self._controller.finished.connect(self._on_finished)
        self._controller.cancelled.connect(self._on_stopped)
        self._controller.failed.connect(self._on_stopped)
        self._next(None)
        return True

    def _next(self, parent: Any) -> None:
        request, from_step = self._chain.pop(0)
        self._controller.generate(request, parent=parent, from_step=from_step)

    def _on_finished(self, _event: Any) -> None:
        record = self._controller.record
        if self._chain:
            self._next(record)
            return
        self._disconnect()
        self.done.emit(record)

    def _on_stopped(self, *_: Any) -> None:
        self._disconnect()
        self._chain.clear()
        self.stopped.emit()

    def _disconnect(self) -> None:
        c = self._controller
        for signal, slot in ((c.finished, self._on_finished), (c.cancelled, self._on_stopped),
                             (c.failed, self._on_stopped)):
            signal.disconnect(slot)


def lineage_note(lineage: list[dict[str, Any]]) -> str:
    """What the message bar says about a dropped branch's PNG (parse_parameters' "lineage", nearest first)."""
    parent = lineage[0]
    settings, k = parent["settings"], parent["from_step"]
    prompt = str(settings.get("prompt", ""))
    prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    further = len(lineage) - 1
    itself = f", itself a branch ({further} run{'s' if further != 1 else ''} further back)" if further else ""
    return (f" It is a branch: it went on after step {k} of a run with seed {settings.get('seed', 0)} "
            f"(\"{prompt}\"{itself}). To reproduce it, generate that run, then branch from its step {k + 1} with "
            "these settings, or press Reproduce.")
