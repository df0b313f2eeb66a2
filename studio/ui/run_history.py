"""This session's runs as a small observable model: a forest (branches hang under the run they came from)."""

from __future__ import annotations

from typing import Iterator

from PySide6.QtCore import QObject, Signal

from .run_record import RunRecord as Run


class RunHistory(QObject):
    runAdded = Signal(object)  # Run
    runChanged = Signal(object)  # Run: status, image or number of steps changed
    runRemoved = Signal(object)
    selectionChanged = Signal(object)  # Run | None
    cleared = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._runs: list[Run] = []
        self._selected: Run | None = None
        self._numbers: dict[str, int] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs))

    def __contains__(self, run: Run) -> bool:
        return any(r is run for r in self._runs)

    @property
    def selected(self) -> Run | None:
        return self._selected

    def number(self, run: Run) -> int:
        """A short, stable, human number for the run (#1, #2, …) in the order runs were added."""
        return self._numbers.get(run.id, 0)

    def by_id(self, run_id: str | None) -> Run | None:
        return next((r for r in self._runs if r.id == run_id), None) if run_id else None

    def parent_of(self, run: Run) -> Run | None:
        if run.parent is not None and run.parent in self:
            return run.parent
        return self.by_id(run.parent_id)

    def children(self, run: Run) -> list[Run]:
        return [r for r in self._runs if self.parent_of(r) is run]

    def add(self, run: Run, select: bool = True) -> None:
        if run in self:
            self.changed(run)
        else:
            self._counter += 1
            self._numbers[run.id] = self._counter
            self._runs.append(run)
            self.runAdded.emit(run)
        if select:
            self.select(run)

    def changed(self, run: Run) -> None:
        if run in self:
            self.runChanged.emit(run)

    def select(self, run: Run | None) -> None:
        if run is self._selected:
            return
        self._selected = run
        self.selectionChanged.emit(run)

    def remove(self, run: Run) -> None:
        """Remove `run` and its branches (their timelines read the parent's steps, so they go together)."""
        for child in self.children(run):
            self.remove(child)
        if run not in self:
            return
        self._runs = [r for r in self._runs if r is not run]
        self._numbers.pop(run.id, None)
        self.runRemoved.emit(run)
        if self._selected is run:
            self.select(None)

    def clear(self) -> None:
        self._runs.clear()
        self._numbers.clear()
        self._counter = 0
        self._selected = None
        self.cleared.emit()
        self.selectionChanged.emit(None)
