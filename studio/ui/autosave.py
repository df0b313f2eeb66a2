"""Crash-safe autosave of the working session: image, mask, result, settings and the runs in history.

Layout under the autosave folder (QStandardPaths.AppDataLocation/autosave unless overridden):
    current/   what this app instance writes as you work (every file replaced atomically)
    previous/  the last instance's session, moved aside at start-up until you Restore or Discard it
Each run is one `runs/<id>.safetensors` (`Run.save`); arrays are .npy so a save costs milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QLockFile

SESSION = "session.json"
GUIDE_PICTURES = ("hint", "keep", "reference")  # universal guidance's pictures, saved like the image


def default_folder() -> Path:
    override = os.environ.get("STUDIO_AUTOSAVE_DIR")
    if override:
        return Path(override)
    from PySide6.QtCore import QStandardPaths

    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(base or Path.home() / ".diffusion-studio") / "autosave"


@dataclass
class Session:
    folder: Path
    settings: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = None
    mask: np.ndarray | None = None  # HxW uint8
    result: np.ndarray | None = None
    hint: np.ndarray | None = None  # HxWx4 uint8 RGBA colour hint (universal guidance)
    keep: np.ndarray | None = None  # HxW uint8 keep region
    reference: np.ndarray | None = None  # HxWx3 uint8 reference picture
    run_ids: list[str] = field(default_factory=list)
    selected: str | None = None

    def run_paths(self) -> list[Path]:
        return [p for p in (self.folder / "runs" / f"{rid}.safetensors" for rid in self.run_ids) if p.exists()]

    def summary(self) -> str:
        parts = []
        if self.image is not None:
            parts.append(f"a {self.image.shape[1]}×{self.image.shape[0]} image")
        if self.mask is not None and self.mask.any():
            parts.append("its mask")
        if self.hint is not None:
            parts.append("a colour hint")
        if self.run_ids:
            parts.append(f"{len(self.run_ids)} run{'s' if len(self.run_ids) != 1 else ''}")
        if not parts and self.settings.get("prompt"):
            parts.append("the prompt")
        return ", ".join(parts) or "settings"


class Autosave:
    def __init__(self, folder: Path | str | None = None):
        self.root = Path(folder) if folder is not None else default_folder()
        self.current = self.root / "current"
        self.previous = self.root / "previous"
        self._saved_runs: set[str] = set()
        self._lock: QLockFile | None = None

    def start(self) -> Session | None:
        """Move the last instance's session aside and return it when it holds anything worth restoring.

        A second app instance running at the same time gets a folder of its own (and offers nothing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = QLockFile(str(self.root / "session.lock"))
        if not self._lock.tryLock(0):  # QLockFile treats a crashed owner's lock as stale and takes it over
            self._lock = None
            self.current = self.root / f"instance-{os.getpid()}"
            self.previous = self.current / "previous"
            shutil.rmtree(self.current, ignore_errors=True)
            (self.current / "runs").mkdir(parents=True, exist_ok=True)
            return None
        if _has_content(self.current):
            if self.previous.exists():
                shutil.rmtree(self.previous, ignore_errors=True)
            self.current.rename(self.previous)
        shutil.rmtree(self.current, ignore_errors=True)
        (self.current / "runs").mkdir(parents=True, exist_ok=True)
        return read_session(self.previous) if _has_content(self.previous) else None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.unlock()
            self._lock = None

    def discard_previous(self) -> None:
        shutil.rmtree(self.previous, ignore_errors=True)

    # -- writing --------------------------------------------------------------------------------------------------
    def save_state(self, settings: dict[str, Any], image: np.ndarray | None, mask: np.ndarray | None,
                   result: np.ndarray | None, run_ids: list[str], selected: str | None,
                   guides: dict[str, np.ndarray | None] | None = None) -> None:
        """`guides`: the guide pictures by name (hint, keep, reference), as .npy files beside the image."""
        self.current.mkdir(parents=True, exist_ok=True)
        pictures = {name: (guides or {}).get(name) for name in GUIDE_PICTURES}
        for name, array in (("image", image), ("mask", mask), ("result", result), *pictures.items()):
            path = self.current / f"{name}.npy"
            if array is None:
                path.unlink(missing_ok=True)
            else:
                _atomic_npy(path, array)
        for stale in (self.current / "runs").glob("*.safetensors"):
            if stale.stem not in run_ids:
                stale.unlink(missing_ok=True)
                self._saved_runs.discard(stale.stem)
        session = {"version": 1, "settings": settings, "runs": run_ids, "selected": selected}
        _atomic_text(self.current / SESSION, json.dumps(session, indent=1, default=str))

    def save_run(self, run: Any, write: Callable[[str, str], Any]) -> None:
        """Have a finished or cancelled run written once: `write(run_id, path)` asks the engine, which owns the
        run's tensors, to write the file (atomically)."""
        if run.id in self._saved_runs or run.status == "running":
            return
        folder = self.current / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        write(run.id, str(folder / f"{run.id}.safetensors"))
        self._saved_runs.add(run.id)


def read_session(folder: Path) -> Session | None:
    try:
        raw = json.loads((folder / SESSION).read_text())
    except (OSError, ValueError):
        return None
    session = Session(folder, settings=dict(raw.get("settings") or {}), run_ids=list(raw.get("runs") or []),
                      selected=raw.get("selected"))
    for name in ("image", "mask", "result", *GUIDE_PICTURES):
        path = folder / f"{name}.npy"
        if path.exists():
            try:
                setattr(session, name, np.load(path, allow_pickle=False))
            except (OSError, ValueError):
                pass
    return session


# Settings the app fills in by itself at start-up (from the loaded model) or keeps elsewhere (QSettings): a session
# whose only difference from a fresh one lies here holds nothing the user made.
NOT_CONTENT = ("width", "height", "cfg", "model", "recent_models", "device", "dtype")


def _has_content(folder: Path) -> bool:
    """Anything the user made: a picture, a result, runs, or settings (a typed prompt is work too, #17)."""
    if not (folder / SESSION).exists():
        return False
    session = read_session(folder)
    if session is None:
        return False
    if session.image is not None or session.result is not None or session.hint is not None or session.run_paths():
        return True
    return _settings_changed(session.settings)


def _settings_changed(settings: dict[str, Any]) -> bool:
    from .settings_model import DEFAULTS

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    if any(str(settings.get(key) or "").strip() for key in ("prompt", "negative_prompt")):
        return True
    return any(plain(value) != plain(DEFAULTS[key]) for key, value in settings.items()
               if key in DEFAULTS and key not in NOT_CONTENT)


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
