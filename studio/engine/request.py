"""What a generation is: a frozen, replayable request. The UI, the CLI and saved runs all speak this."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import UserError
from .guidance import Guide, GuideMode
from .samplers import SAMPLER_TABLE

SamplerName = str  # a key of samplers.SAMPLER_TABLE (pipeline.validate checks it)
DeviceName = Literal["auto", "cpu", "openvino", "cuda", "mps"]
DtypeName = Literal["auto", "fast", "fp32", "fp16", "bf16"]
InpaintMode = Literal["auto", "blend", "model"]
MaskFill = Literal["original", "noise", "blur"]


class RequestError(UserError):
    """A request that cannot run as given; the message is meant for the user."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""  # empty: the unconditional embedding of ""
    # let a model with a prompt reader (the built-in one: prompt_reader.py) rewrite the prompt into its own caption
    # language; False: the text encoder reads the prompt as typed (a run file from before the reader: run.Run.load)
    read_prompt: bool = True
    model: str = "default"  # "default" (shipped), "tiny-random", or a path to a checkpoint
    sampler: SamplerName = "ddim"
    steps: int = 25
    eta: float | None = None  # per-step noise scale: 0 deterministic, 1 ancestral; None = the sampler's default_eta
    cfg: float = 7.5  # classifier-free guidance scale s: ε_u + s·(ε_c − ε_u); 1 = no guidance pass
    seed: int = 0
    width: int = 512
    height: int = 512
    karras: bool = False  # Karras σ spacing (Karras et al. 2022 eq. 5) instead of the model's timesteps
    clip_skip: int = 1  # A1111 convention: 1 = last layer, 2 = penultimate
    prediction: Literal["auto", "epsilon", "v"] = "auto"  # what the UNet predicts; auto = detected from the file
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    # img2img / inpainting; images are HxWxC uint8 arrays (C = 3), masks HxW float32 in [0, 1], 1 = repaint
    init_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    # fraction of the schedule re-run over init_image (SDEdit); 1 = from pure noise. 0.75 is A1111's img2img default;
    # txt2img ignores it.
    strength: float = 0.75
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    feather: float = 4.0  # Gaussian mask feather in pixels (A1111's default blur)
    grow: int = 0  # pixels to dilate the mask by before feathering
    inpaint_mode: InpaintMode = "auto"
    only_masked: bool = False
    padding: int = 32  # context around the mask's bounding box for only_masked (A1111's default)
    fill: MaskFill = "original"
    paste_back: bool = True
    # universal guidance (guidance.py, Bansal et al. 2023); no guides: off, and the run is exactly the unguided one
    guides: tuple[Guide, ...] = ()  # each a loss on the predicted image with its strength (and its picture)
    # backward (eq. 7, 9), forward (eq. 6) or both. Backward by default: on the built-in model forward guidance
    # could not move a hinted region without wrecking the picture (guidance.DEFAULT_STRENGTH's note)
    guide_mode: GuideMode = "backward"
    # the guided fraction of the steps. All of them by default: a hint the prompt disagrees with is undone by the
    # unguided last steps (built-in model, backward, tuning scenes: 1.0 → 16/16 within ΔE₀₀ 15, 0.9 → 4/8, 0.7 →
    # 2/8; held out with 1.0: 40/40). A reference layout guide already holds at 0.7 (8/8), and lets the model tidy up
    guide_steps: float = 1.0
    backward_steps: int = 5  # m: gradient steps of backward guidance per sampler step
    recurrence: int = 1  # k: take each guided step k times, re-noising in between (Algorithm 1); 1 = off
    guide_in_mask: bool = False  # when inpainting, guide only inside the mask
    # cold diffusion (cold_pipeline.py): scale of the Gaussian perturbation added to the GMM start x_T (Bansal et al.
    # 2022 §5.1: without it the blur model's samples collapse onto a few); 0 = the deterministic start
    cold_noise: float = 0.002

    def __post_init__(self) -> None:
        if self.eta is None:  # a request always carries the η it runs with, so PNGs and saved runs record it
            spec = SAMPLER_TABLE.get(self.sampler)
            object.__setattr__(self, "eta", spec.default_eta if spec is not None else 0.0)

    def replace(self, **changes: Any) -> "GenerationRequest":
        if "sampler" in changes and "eta" not in changes and changes["sampler"] != self.sampler:
            changes["eta"] = None  # another sampler brings its own default η unless one is given
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The JSON-safe part of the request (images excluded), for saved runs and autosave."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("init_image", "mask")}
        values["guides"] = [guide.settings() for guide in self.guides]  # their pictures travel with the images
        return values

    @classmethod
    def from_settings(cls, settings: dict[str, Any], guide_images: tuple = (), **images: Any) -> "GenerationRequest":
        """Inverse of `settings`; `guide_images` are the guides' pictures in order (a guide without one is kept:
        validation says it needs one)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in settings.items() if k in known}
        raw = values.pop("guides", None) or ()
        if not isinstance(raw, (list, tuple)) or not all(isinstance(g, dict) for g in raw):
            raise RequestError("damaged guidance settings: guides must be a list of objects")
        pictures = list(guide_images) + [None] * len(raw)
        try:
            guides = tuple(Guide(str(g["kind"]), float(g.get("strength", 1.0)), pictures[i], str(g.get("variant", "layout")),
                                 {str(k): str(v) for k, v in dict(g.get("labels") or {}).items()},
                                 str(g.get("text") or ""))
                           for i, g in enumerate(raw))
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(f"damaged guidance settings ({exc})") from None
        return cls(**values, guides=guides, **images)

    def to_json(self) -> str:
        return json.dumps(self.settings(), sort_keys=True)
