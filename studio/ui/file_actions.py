"""The window's file side: open, drop and paste images; save results with their parameters; runs and exports.

A mixin of MainWindow (it uses the window's canvas, panels, worker and message bar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import QApplication

from ..engine import (
    GenerationRequest,
    RunsLoaded,
    format_run_parameters,
    guide_pictures_note,
    parse_parameters,
    save_png,
)
from .choices import BUILTIN_MODELS
from .dialogs import ask_crop_or_pad, ask_directory, ask_open_file, ask_save_file
from .image_io import (
    CHECKPOINT_FILTER,
    IMAGE_FILTER,
    MAX_SIDE,
    MODEL_SUFFIXES,
    RUN_FILTER,
    fit_for_model,
    is_image_path,
    read_image,
)
from .images import accepts_drop, dropped, qimage_to_rgb
from .lineage_replay import LineageReplay, lineage_note, replay_chain
from .timeline_export import export_gif, export_pngs


class FileActions:
    # -- opening images -------------------------------------------------------------------------------------------
    def open_image_dialog(self) -> None:
        ask_open_file(self, "Open image", IMAGE_FILTER, self._last_dir(), self.open_path)

    def open_path(self, path: str) -> bool:
        """Open an image file as the input (its parameters, if any, are offered too)."""
        if not path:
            return False
        try:
            image, parameters = read_image(path)
        except Exception as exc:  # RequestError from the engine's reader, or a decoder's own error
            self.message_bar.error(f"Cannot open {Path(path).name}: {exc}")
            return False
        self._remember_dir(path)
        if self.open_image(image, Path(path).name) and parameters:
            self.message_bar.info(
                f"{Path(path).name} carries generation settings.",
                actions=[("Restore settings", lambda: self._restore_and_report(parameters, Path(path).name))],
            )
        return True

    def open_image(self, image: np.ndarray, name: str | None = None, quiet: bool = False) -> bool:
        """Make `image` the input. Sides that are not multiples of the model's size multiple are cropped or padded
        (centred): the user is asked which, unless `quiet` (restores and our own results), which crops."""
        image = np.asarray(image)
        multiple = self.size_multiple
        h, w = image.shape[:2]
        if quiet or (w % multiple == 0 and h % multiple == 0) or max(w, h) > MAX_SIDE:
            return self._open_fitted(image, name, quiet, "crop")
        ask_crop_or_pad(self, w, h, multiple, lambda how: how and self._open_fitted(image, name, quiet, how))
        return True

    def _open_fitted(self, image: np.ndarray, name: str | None, quiet: bool, how: str) -> bool:
        try:
            image, note = fit_for_model(image, self.size_multiple, how)
        except ValueError as exc:
            self.message_bar.error(str(exc))
            return False
        self.canvas.set_image(image)
        self._image_name = name
        self._after_image_change()
        if note and not quiet:
            self.message_bar.warning(f"Opened {name or 'the image'}: {note}.")
        return True

    def refit_input(self, how: str) -> None:
        """Crop or pad the current input to the model's size multiple (offered when the model changes)."""
        image = self.canvas.image_array()
        if image is not None:
            self._open_fitted(image, self._image_name, False, how)

    def new_blank_canvas(self) -> None:
        self.canvas.set_image(None)
        self._image_name = None
        self._result_image = None
        self._after_image_change()

    def paste(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is not None and mime.hasImage():
            image = QGuiApplication.clipboard().image()
            if not image.isNull():
                self.open_image(qimage_to_rgb(image), "pasted image")
                return
        if mime is not None and mime.hasUrls():
            for url in mime.urls():
                if url.isLocalFile():
                    self.handle_dropped_path(url.toLocalFile())
                    return
        self.message_bar.warning("Nothing to paste: the clipboard holds no image.")

    # -- drag and drop (the whole window is a drop target) --------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        event.acceptProposedAction() if accepts_drop(event.mimeData()) else event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        what = dropped(event.mimeData())
        if what is None:
            event.ignore()
            return
        event.acceptProposedAction()
        if isinstance(what, str):
            self.handle_dropped_path(what)
        else:
            self.open_image(what, "dropped image")

    def handle_dropped_path(self, path: str) -> None:
        """A PNG with a `parameters` chunk restores its settings; other images open; runs and models load."""
        p = Path(path)
        if p.is_dir():
            if (p / "model_index.json").exists() or (p / "unet").is_dir():
                self.use_model(str(p))
            else:
                self.message_bar.error(f"{p.name} is a folder, not a diffusers model, image or run.")
            return
        if is_image_path(p):
            try:
                image, parameters = read_image(p)
            except Exception as exc:
                self.message_bar.error(f"Cannot open {p.name}: {exc}")
                return
            if parameters:
                self.restore_parameters(parameters, p.name)
                actions = [("Open as image", lambda: self.open_image(image, p.name))]
                if self._replay_chain(parameters) is not None:
                    actions.append(("Reproduce", lambda: self.reproduce_branch(parameters)))
                self.message_bar.success(self._restored_message(parameters, p.name), actions=actions)
            else:
                self.open_image(image, p.name)
            return
        if p.suffix.lower() in MODEL_SUFFIXES:
            self.open_run_or_model(str(p))
            return
        self.message_bar.error(f"Cannot open {p.name}: not an image, a run or a model.")

    def restore_parameters(self, parameters: str, source: str = "") -> dict[str, Any]:
        """The picture's own settings (for a branch: the branch's; its lineage is said, and can be replayed)."""
        settings = parse_parameters(parameters)
        settings.pop("lineage", None)
        settings.setdefault("guides", [])  # an unguided picture: its guides are none (its scalar settings are kept)
        model = settings.pop("model", None)
        if model:
            spec = self._find_model(model)
            if spec is not None:
                settings["model"] = spec
        self.prompt_panel.apply_settings(settings, size=not self.canvas.has_image())
        return settings

    def _restore_and_report(self, parameters: str, source: str) -> None:
        self.restore_parameters(parameters, source)
        self.message_bar.success(self._restored_message(parameters, source))

    def _restored_message(self, parameters: str, source: str) -> str:
        """Says so when the picture was made with a model this machine does not know (the current one stays)."""
        message = f"Restored the generation settings of {source}."
        name = parse_parameters(parameters).get("model")
        if name and self._find_model(name) is None:
            message += (f" It was made with the model \"{name}\", which is not open here; "
                        f"keeping {self.prompt_panel.model_name()}.")
        lineage = parse_parameters(parameters).get("lineage")
        if lineage:
            message += lineage_note(lineage)
        return message + guide_pictures_note(parse_parameters(parameters))  # hint / reference are not in a PNG

    # -- reproducing a branch -------------------------------------------------------------------------------------
    def _replay_chain(self, parameters: str) -> list[tuple[GenerationRequest, int]] | None:
        """The runs that remake a branched picture, first run first; None when it is no branch, its model is not
        here, or it started from an input image (which its PNG does not hold)."""
        settings = parse_parameters(parameters)
        lineage = settings.pop("lineage", None)
        if not lineage or "strength" in settings:  # "Denoising strength" is written only when there was an input
            return None
        requests, panel = [], self.prompt_panel.settings_model
        machine = {"device": panel.device, "dtype": panel.dtype}  # where it runs here, not where it ran
        for entry_settings in [settings] + [entry["settings"] for entry in lineage]:
            spec = self._find_model(entry_settings.get("model", "default"))
            if spec is None:
                return None
            requests.append(GenerationRequest.from_settings({**entry_settings, **machine, "model": spec}))
        return replay_chain(requests[0], [(r, e["from_step"]) for r, e in zip(requests[1:], lineage)])

    def reproduce_branch(self, parameters: str) -> None:
        chain = self._replay_chain(parameters)
        if chain is None or self.controller.running:
            self.message_bar.warning("Wait for the current run to finish, then press Reproduce again."
                                     if chain is not None else "This picture's branch cannot be replayed here.")
            return
        self.replay = LineageReplay(self.controller, chain, self)
        self.replay.done.connect(lambda run: self.message_bar.success(
            f"Reproduced the branch as run #{self.history.number(run)}: {len(chain)} runs, the last one branched."))
        self.replay.stopped.connect(lambda: self.message_bar.warning("Reproducing stopped: a run did not finish."))
        self.replay.start()

    def _find_model(self, name: str) -> str | None:
        candidates = list(BUILTIN_MODELS) + self.prompt_panel.recent_models()
        for spec in candidates:
            if name in (spec, Path(spec).name, Path(spec).stem, BUILTIN_MODELS.get(spec)):
                return spec
        return None

    # -- runs and models ------------------------------------------------------------------------------------------
    def open_run_dialog(self) -> None:
        ask_open_file(self, "Open run", RUN_FILTER, self._last_dir(), self.open_run_or_model)

    def open_run_or_model(self, path: str) -> None:
        if path:
            self.load_run_files([path], lambda loaded: self._opened_run_or_model(loaded, path))

    def _opened_run_or_model(self, loaded: RunsLoaded, path: str) -> None:
        if loaded.not_runs:
            self.use_model(path)  # a safetensors file that is no run: a model checkpoint
        elif loaded.errors:
            self.message_bar.error(f"Cannot open the run {loaded.errors[0]}")
        elif self.add_loaded_runs(loaded, select=True):
            self.message_bar.success(f"Opened run {Path(path).name}: scrub it or branch from any step.")

    def open_checkpoint_dialog(self, folder: bool) -> None:
        if folder:
            ask_directory(self, "Open diffusers model folder", self._last_dir(), self.use_model)
        else:
            ask_open_file(self, "Open checkpoint", CHECKPOINT_FILTER, self._last_dir(), self.use_model)

    def use_model(self, path: str) -> None:
        if not path:
            return
        self._remember_dir(path)
        self.prompt_panel.set_model(path)
        self.settings.setValue("models/recent", self.prompt_panel.recent_models()[:8])
        self._model_changed(path)

    # -- saving ---------------------------------------------------------------------------------------------------
    def save_image_dialog(self, run: Any = None) -> None:
        run = run if run is not None else self.history.selected
        if run is None or run.image is None:
            self.message_bar.warning("There is no finished result to save yet.")
            return
        name = f"studio-{run.request.seed}-{self.history.number(run)}.png"
        ask_save_file(self, "Save image", "PNG image (*.png)", str(Path(self._last_dir()) / name), "png",
                      lambda path: self.save_image(run, path))

    def save_image(self, run: Any, path: str) -> bool:
        if not path:
            return False
        try:  # the model by file name and short hash, and a branch's lineage (engine/images.py)
            save_png(run.image, path, format_run_parameters(run.info))
        except (OSError, ValueError) as exc:
            self.message_bar.error(f"Cannot save {Path(path).name}: {exc}")
            return False
        self._remember_dir(path)
        self.message_bar.success(f"Saved {Path(path).name} with its generation settings.")
        return True

    def save_mask_dialog(self) -> None:
        if not self.canvas.has_image():
            self.message_bar.warning("Open an image and paint a mask first.")
            return
        ask_save_file(self, "Save mask", "PNG image (*.png)", str(Path(self._last_dir()) / "mask.png"), "png",
                      self._save_mask)

    def _save_mask(self, path: str) -> None:
        if path and not self.canvas.mask.image.save(path, "PNG"):
            self.message_bar.error(f"Cannot save {Path(path).name}.")

    def save_run_dialog(self) -> None:
        run = self.history.selected
        if run is None or run.status == "running":
            self.message_bar.warning("Select a finished run to save.")
            return
        name = f"run-{run.id}.safetensors"
        ask_save_file(self, "Save run", RUN_FILTER, str(Path(self._last_dir()) / name), "safetensors",
                      lambda path: self._save_run(run, path))

    def _save_run(self, run: Any, path: str) -> None:
        if path:
            self.write_run_file(run.id, path, f"Saved the run with {run.recorded} steps to {Path(path).name}.")

    def export_timeline(self, run: Any, fmt: str) -> None:
        if fmt == "gif":
            ask_save_file(self, "Export timeline as GIF", "GIF animation (*.gif)",
                          str(Path(self._last_dir()) / f"timeline-{run.id}.gif"), "gif",
                          lambda path: self.write_timeline(run, path, "gif"))
        else:
            ask_directory(self, "Export timeline as PNG files", self._last_dir(),
                          lambda path: self.write_timeline(run, path, "png"))

    def write_timeline(self, run: Any, path: str, fmt: str) -> None:
        if not path:
            return
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            count = export_gif(run, path) if fmt == "gif" else export_pngs(run, path)
        except (OSError, ValueError) as exc:
            self.message_bar.error(f"Cannot export the timeline: {exc}")
            return
        finally:
            QApplication.restoreOverrideCursor()
        self._remember_dir(path)
        what = f"{count} frames" if fmt == "gif" else f"{count} files"
        self.message_bar.success(f"Exported the timeline ({what}) to {Path(path).name}.")

    # -- remembered folders ---------------------------------------------------------------------------------------
    def _last_dir(self) -> str:
        return str(self.settings.value("paths/lastDir", str(Path.home())))

    def _remember_dir(self, path: str) -> None:
        p = Path(path)
        self.settings.setValue("paths/lastDir", str(p if p.is_dir() else p.parent))
