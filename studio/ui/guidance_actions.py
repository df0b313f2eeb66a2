"""The window's side of universal guidance: the request's guides at Generate and Branch time, the reference
picture's file, and guide pictures brought back with a run or a session.

A mixin of MainWindow (it uses the window's canvas, prompt panel and message bar). The settings model says which
guides are on and how strong; the pictures come from the canvas's hint and keep layers and the Guidance section's
reference picture (guides.py pairs them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..engine import GenerationRequest
from .dialogs import ask_open_file
from .guides import GuidePictures, build_guides, picture_of
from .image_io import IMAGE_FILTER, read_image


class GuidanceActions:
    def _connect_guidance(self) -> None:
        section, canvas = self.prompt_panel.guidance_section, self.canvas
        section.chooseReferenceRequested.connect(self.choose_reference_dialog)
        section.referenceDropped.connect(self.open_reference)
        section.referenceChanged.connect(self.schedule_autosave)
        section.clearHintRequested.connect(canvas.clear_hints)
        section.clearKeepRequested.connect(canvas.clear_keep)
        canvas.guidesChanged.connect(self.schedule_autosave)
        canvas.firstGuideStroke.connect(self._guide_painted)
        canvas.keepNeedsImage.connect(lambda: self.message_bar.info(
            "The keep guide holds a region of the input image close to it: open an image first."))

    # -- the request's guides ---------------------------------------------------------------------------------------
    def guide_pictures(self, parent: GenerationRequest | None = None) -> GuidePictures:
        """The canvas's hint and keep region and the reference picture; for a branch, a picture the canvas no longer
        has comes from the run it branches from (switch a guide on, off or to another strength at step k)."""
        pictures = {"colour": self.canvas.hint_array(), "keep": self.canvas.keep_array(),
                    "reference": self.prompt_panel.guidance_section.reference}
        if parent is not None:
            for kind, picture in pictures.items():
                if picture is None:
                    pictures[kind] = picture_of(parent.guides, kind)
        return GuidePictures(**pictures)

    def with_guides(self, request: GenerationRequest, parent: GenerationRequest | None = None) -> GenerationRequest:
        """`request` with the guides the Guidance section switches on; one that is on without a picture is left
        out, and said."""
        guides, missing = build_guides(self.prompt_panel.settings_model, self.guide_pictures(parent))
        if missing:
            self.message_bar.info(("Generating without guidance: " if not guides else "Left out: ")
                                  + "; ".join(missing) + ".")
        return request.replace(guides=guides)

    def _guide_painted(self, kind: str) -> None:
        """The first stroke on an empty hint or keep layer switches its guide on (said once, here)."""
        settings = self.prompt_panel.settings_model
        if settings.get(f"guide_{kind}_on"):
            return
        settings.set(f"guide_{kind}_on", True)
        what = "Colour hint" if kind == "colour" else "Keep region"
        strength = settings.get(f"guide_{kind}_strength")
        self.message_bar.info(f"{what} guide on (strength {strength:g}): the next run is steered by it. "
                              "Switch it off or change its strength under Guidance.")

    # -- the reference picture ----------------------------------------------------------------------------------------
    def choose_reference_dialog(self) -> None:
        ask_open_file(self, "Choose a reference picture", IMAGE_FILTER, self._last_dir(), self.open_reference)

    def open_reference(self, path: str) -> bool:
        if not path:
            return False
        try:
            image, _parameters = read_image(path)
        except Exception as exc:  # RequestError from the engine's reader, or a decoder's own error
            self.message_bar.error(f"Cannot open {Path(path).name} as a reference: {exc}")
            return False
        self._remember_dir(path)
        self.prompt_panel.guidance_section.set_reference(image, Path(path).name)
        self.message_bar.info(f"Reference picture: {Path(path).name} (the reference guide is on).")
        return True

    # -- pictures coming back -----------------------------------------------------------------------------------------
    def restore_guide_pictures(self, request: GenerationRequest, label: str) -> None:
        """A run's guide pictures back where they are edited (after its settings switched its guides on): the hint
        and keep region on the canvas (one undo step each), the reference in the Guidance section."""
        hint, keep = picture_of(request.guides, "colour"), picture_of(request.guides, "keep")
        reference = picture_of(request.guides, "reference")
        if hint is not None and not _same(self.canvas.hint_array(), hint):
            self.canvas.set_hint_array(hint)
        if keep is not None and self.canvas.has_image() and not _same(self.canvas.keep_array(), keep):
            self.canvas.set_keep_array(keep)
        section = self.prompt_panel.guidance_section
        if reference is not None and not _same(section.reference, reference):
            section.set_reference(reference, f"reference of {label}", switch_on=False)

    def guide_state(self) -> dict[str, Any]:
        """The guide pictures for the autosave (hint.npy, keep.npy, reference.npy)."""
        keep = self.canvas.keep.array() if self.canvas.has_image() and not self.canvas.keep.is_empty() else None
        reference = self.prompt_panel.guidance_section.reference
        return {"hint": self.canvas.hint_array(), "keep": keep, "reference": reference}

    def restore_guide_state(self, session: Any) -> None:
        if session.hint is not None and session.hint.ndim == 3 and session.hint.shape[2] == 4:
            self.canvas.set_hint_array(session.hint, undoable=False)
        if session.keep is not None and self.canvas.has_image():
            self.canvas.set_keep_array(session.keep.astype(np.float32) / 255.0, undoable=False)
        if session.reference is not None:
            self.prompt_panel.guidance_section.set_reference(session.reference, "restored reference", switch_on=False)


def _same(current: np.ndarray | None, other: np.ndarray) -> bool:
    return current is not None and current.shape == other.shape and np.array_equal(current, other)
