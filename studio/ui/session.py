"""What survives the window: settings and layout in QSettings, the working session in the autosave folder.

A mixin of MainWindow. Autosave is debounced (one write a second after the last change) and every finished run
is written once, so a crash or a kill loses at most the last second of mask painting.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from PySide6.QtCore import QByteArray

from ..engine import LoadRuns, RunsLoaded, SaveRun
from .autosave import Session
from .run_record import RunRecord
from .theme import apply_theme

AUTOSAVE_DELAY_MS = 1000


class SessionPersistence:
    # -- QSettings ------------------------------------------------------------------------------------------------
    def restore_settings(self) -> None:
        s = self.settings
        recent = s.value("models/recent", [])
        self.prompt_panel.set_recent_models([str(p) for p in (recent if isinstance(recent, list) else [recent]) if p])
        raw = s.value("generation/settings", "")
        if raw:
            try:
                self.prompt_panel.apply_settings(json.loads(str(raw)))
            except (ValueError, TypeError):
                pass
        self.prompt_panel.settings_model.random_each = _bool(s.value("generation/randomEachRun", False))
        self.canvas.set_brush_size(int(s.value("canvas/brushSize", self.canvas.brush_size)))
        self.toolbar.opacity.setValue(int(s.value("canvas/maskOpacity", self.toolbar.opacity.value())))
        self.toolbar.feathered.setChecked(_bool(s.value("canvas/showFeathered", True)))
        self.timeline.smooth.setChecked(_bool(s.value("timeline/smooth", False)))
        self.theme = str(s.value("view/theme", "dark"))
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("generation/settings", json.dumps(self.prompt_panel.settings()))
        s.setValue("generation/randomEachRun", self.prompt_panel.settings_model.random_each)
        s.setValue("models/recent", self.prompt_panel.recent_models()[:8])
        s.setValue("canvas/brushSize", self.canvas.brush_size)
        s.setValue("canvas/maskOpacity", self.toolbar.opacity.value())
        s.setValue("canvas/showFeathered", self.toolbar.feathered.isChecked())
        s.setValue("timeline/smooth", self.timeline.smooth.isChecked())
        s.setValue("view/theme", self.theme)
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.sync()

    def set_theme(self, name: str) -> None:
        self.theme = name
        apply_theme(name)
        self.settings.setValue("view/theme", name)

    # -- autosave -------------------------------------------------------------------------------------------------
    def schedule_autosave(self, *_: Any) -> None:
        if not self._closing:
            self._autosave_timer.start(AUTOSAVE_DELAY_MS)

    def autosave_now(self) -> None:
        self._autosave_timer.stop()
        has_image = self.canvas.has_image()
        runs = [r for r in self.history if r.status != "running"]
        try:
            for run in runs:
                self.autosave.save_run(run, self.write_run_file)
            selected = self.history.selected
            self.autosave.save_state(
                settings=self.prompt_panel.settings(),
                image=self.canvas.image_array() if has_image else None,
                mask=self.canvas.mask.array() if has_image and not self.canvas.mask.is_empty() else None,
                result=self._result_image,
                run_ids=[r.id for r in runs],
                selected=selected.id if selected is not None else None,
                guides=self.guide_state(),
            )
        except OSError as exc:
            self.message_bar.warning(f"Autosave failed: {exc}")

    def offer_restore(self, session: Session) -> None:
        self.message_bar.info(
            f"Your last session was saved ({session.summary()}). Restore it?",
            actions=[("Restore", lambda: self.restore_session(session)), ("Discard", self.autosave.discard_previous)],
        )

    def restore_session(self, session: Session) -> None:
        self.prompt_panel.apply_settings(session.settings)
        if session.image is not None and self.open_image(session.image, "restored image", quiet=True):
            if session.mask is not None and session.mask.shape == session.image.shape[:2]:
                self.canvas.set_mask(session.mask.astype("float32") / 255.0, undoable=False)
        self.restore_guide_state(session)  # the hint, keep region and reference picture (guidance_actions.py)
        if session.result is not None:
            self.show_result(session.result, "Result (restored)")
        paths = session.run_paths()
        if not paths:
            self.autosave.discard_previous()
            self.message_bar.success("Restored your last session.")
            return
        self.load_run_files([str(p) for p in paths], lambda loaded: self._restored_runs(loaded, session))

    def load_run_files(self, paths: list[str], then: Callable[[RunsLoaded], None]) -> None:
        """Ask the engine to read run files; `then` gets its answer (branches are linked to their parents)."""
        job = self.worker.submit(LoadRuns(tuple(paths)))
        if job:
            self._pending_loads[job] = then

    def add_loaded_runs(self, loaded: RunsLoaded, select: bool) -> list[RunRecord]:
        records = []
        for item in loaded.runs:
            record = RunRecord(item.run, item.steps, parent=self.history.by_id(item.run.parent_id))
            self.history.add(record, select=select)
            self.autosave.save_run(record, self.write_run_file)
            records.append(record)
        return records

    def write_run_file(self, run_id: str, path: str, say: str = "") -> None:
        """Have the engine write run `run_id` to `path`; `say` is shown when it is done."""
        job = self.worker.submit(SaveRun(run_id, path))
        if job and say:
            self._pending_saves[job] = say

    def _restored_runs(self, loaded: RunsLoaded, session: Session) -> None:
        runs, errors = self.add_loaded_runs(loaded, select=False), list(loaded.errors)
        selected = self.history.by_id(session.selected)
        if selected is not None:
            self.history.select(selected)
        self.autosave.discard_previous()
        if errors:
            self.message_bar.warning(f"Restored {len(runs)} runs; {len(errors)} could not be read ({errors[0]}).")
        else:
            self.message_bar.success(f"Restored your last session with {len(runs)} run{'s' if len(runs) != 1 else ''}.")
        self.schedule_autosave()


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
