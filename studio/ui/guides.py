"""Universal guidance on the UI side: the request's guides from the settings and the pictures, and how they read.

The settings model says which guides are on and how strong (`guide_<kind>_on`, `guide_<kind>_strength`); the
pictures are the canvas's hint and keep layers and the reference picture. `build_guides` pairs them at Generate
time, as the window does with the input image and the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .. import engine
from ..engine import BACKWARD_MODES, GUIDE_KINDS, GenerationRequest, Guide
from .settings_model import CLASSIFIER_LABELS

KIND_LABELS = {"colour": "colour hint", "reference": "reference picture", "keep": "keep region"}
MISSING = {"colour": "paint a hint with the Hint tool (H)", "reference": "choose a reference picture",
           "keep": "open an input image and paint a region with the Keep tool (K)"}


@dataclass(frozen=True)
class GuidePictures:
    colour: np.ndarray | None = None  # HxWx4 RGBA hint
    reference: np.ndarray | None = None  # HxWx3 RGB
    keep: np.ndarray | None = None  # HxW float32, 1 = keep


def build_guides(settings: Any, pictures: GuidePictures) -> tuple[tuple[Guide, ...], list[str]]:
    """The guides that are on and have a picture, and a note for each one that is on without one (skipped)."""
    guides, missing = [], []
    for kind in GUIDE_KINDS:
        if not settings.get(f"guide_{kind}_on"):
            continue
        picture = getattr(pictures, kind)
        if picture is None:
            missing.append(f"the {KIND_LABELS[kind]} guide is on but has no picture ({MISSING[kind]})")
            continue
        variant = settings.get("guide_reference_variant") if kind == "reference" else "layout"
        guides.append(Guide(kind, float(settings.get(f"guide_{kind}_strength")), picture, variant))
    if settings.get("guide_classifier_on"):
        labels = {group: settings.get(f"guide_classifier_{group}") for group in CLASSIFIER_LABELS}
        labels = {group: value for group, value in labels.items() if value}
        if labels:
            guides.append(Guide("classifier", float(settings.get("guide_classifier_strength")), labels=labels))
        else:
            missing.append("the classifier guide is on but asks for nothing (pick a shape, colour, …)")
    if settings.get("guide_clip_on"):
        text = str(settings.get("guide_clip_text") or "").strip()
        if text:
            guides.append(Guide("clip", float(settings.get("guide_clip_strength")), text=text))
        else:
            missing.append("the CLIP guide is on but has no caption (type one, e.g. \"a red star at the top\")")
    return tuple(guides), missing


def picture_of(guides: Iterable[Guide], kind: str) -> np.ndarray | None:
    return next((g.image for g in guides if g.kind == kind and g.image is not None), None)


def describe(guides: Iterable[Guide]) -> str:
    """"colour 10, reference 1 palette, clip 10 “a red star”"."""
    return ", ".join(f"{g.kind} {g.strength:g}" + (f" {g.variant}" if g.kind == "reference" else "")
                     + (" " + "/".join(v for _, v in g.labels) if g.labels else "")
                     + (f" “{g.text}”" if g.kind == "clip" else "") for g in guides)


def guided_line(request: GenerationRequest) -> str:
    """The history's line for a guided run ("guided: colour 10"; the mode when not forward, with its backward
    steps m where it takes them, recurrence when on);
    empty for an unguided one."""
    if not request.guides:
        return ""
    text = f"guided: {describe(request.guides)}"
    if request.guide_mode in BACKWARD_MODES:
        text += f" · {request.guide_mode} m={request.backward_steps}"
    elif request.guide_mode != "forward":
        text += f" · {request.guide_mode}"
    if request.recurrence > 1:
        text += f" · k={request.recurrence}"
    return text


def guide_cost(mode: str, backward_steps: int, recurrence: int) -> float:
    """How many times as long a guided step takes as an unguided one: the engine's measure when it has one."""
    cost = getattr(engine, "guidance_cost", None)  # guidance.guidance_cost, once the engine has it
    try:
        if cost is not None:
            return float(cost(mode, backward_steps, recurrence))
    except (TypeError, ValueError):
        pass
    # A rough estimate until then: forward guidance backpropagates through the UNet and the decoder (about 3 plain
    # steps); each backward step decodes and backpropagates the decoder (about one plain step); recurrence repeats
    # the whole step k times.
    per_step = {"forward": 3.0, "backward": 1.0 + backward_steps, "both": 3.0 + backward_steps,
                "noisy": 1.3}.get(mode, 3.0)
    return per_step * max(1, recurrence)


def cost_text(mode: str, backward_steps: int, recurrence: int) -> str:
    return f"guided steps take ~{guide_cost(mode, backward_steps, recurrence):.3g}× as long"
