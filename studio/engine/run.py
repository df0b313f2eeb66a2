"""A run: the request, the grid it sampled on, its timeline and its result; saved to one safetensors file."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .api import VIEWS, RunInfo, RunKind, RunStatus, StepInfo, frozen_array
from .files import atomic_write
from .request import GenerationRequest, RequestError
from .run_checks import check_run_file, read_run_file
from .schedules import NoiseLevel
from .timeline import LatentPreview, Timeline, TimelineStep, View

RUN_FORMAT = "diffusion-studio-run/1"


class NotARunFile(RequestError):
    """A readable safetensors file that is not one of our runs (a model checkpoint, most likely)."""


@dataclass(eq=False)
class Run:
    request: GenerationRequest
    grid: list[NoiseLevel]  # steps + 1 levels; timeline[i] sits at grid[i]
    timeline: Timeline
    kind: RunKind = "txt2img"
    status: RunStatus = "running"
    image: np.ndarray | None = None  # HxWx3 uint8 result
    final_latent: torch.Tensor | None = None  # float32 CPU, at grid[-1]
    parent: "Run | None" = None
    from_step: int = 0  # where this run branched off its parent
    parent_id: str | None = None  # kept when the parent object itself is not loaded
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    preview: LatentPreview | None = field(default=None, repr=False)  # the model's latent → RGB map
    cheap_decode: bool = False  # the engine decodes x̂0 at every step (pipeline.decodes_cheaply)
    decoded: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # own steps' x̂0 decodes, read-only
    model_hash: str | None = None  # the model file's short hash (model_info.file_hash)
    read_as: str | None = None  # what the text encoder read instead of the prompt (the prompt reader's caption)
    saved_lineage: tuple[tuple[GenerationRequest, int], ...] = ()  # read from a run file whose parent is absent

    def step_image(self, index: int, view: View) -> np.ndarray:
        """Cheap RGB of one step's x_t, x̂0 or ε̂ at latent resolution (no VAE; numpy only, cheap on any thread)."""
        preview = self.preview or LatentPreview.default_for(self.timeline[index].x_t.shape[1])
        array = self.timeline[index].view_array(view)
        return preview.noise_to_rgb(array) if view == "eps" else preview.to_rgb(array)

    # -- immutable views for whoever shows the run (api.py) -----------------------------------------------------------
    def info(self) -> RunInfo:
        """A snapshot of the run as it stands; the engine goes on writing the run, never the snapshot."""
        return RunInfo(
            id=self.id, request=self.request, kind=self.kind, status=self.status, steps=self.steps,
            recorded=len(self.timeline), sigmas=tuple(level.sigma for level in self.grid),
            parent_id=self.parent_id, from_step=self.from_step, image=frozen_array(self.image),
            lineage=self.lineage, model_hash=self.model_hash, cheap_decode=self.cheap_decode, read_as=self.read_as,
        )

    def step_info(self, index: int) -> StepInfo:
        step = self.timeline[index]
        previews = {view: frozen_array(self.step_image(index, view)) for view in VIEWS}
        if step.guidance is not None:  # the guidance term Δε, mapped like ε̂ but scaled to its own largest value
            preview = self.preview or LatentPreview.default_for(step.x_t.shape[1])  # (it is far smaller than ε̂)
            delta = step.guidance.float()
            previews["guidance"] = frozen_array(preview.noise_to_rgb(delta * (2.5 / max(float(delta.abs().max()), 1e-8))))
        level = step.level
        return StepInfo(index, level.timestep, level.alpha_cumprod, level.sigma, previews, self.decoded_x0(index),
                        step.loss)

    def decoded_x0(self, index: int) -> np.ndarray | None:
        """The step's exact x̂0 decode, if the engine made one (a branch's shared steps are its parent's)."""
        if index < self.from_step and self.parent is not None:
            return self.parent.decoded_x0(index)
        return self.decoded.get(index)

    @property
    def lineage(self) -> tuple[tuple[GenerationRequest, int], ...]:
        """Every ancestor, nearest first, with the step its child branched from."""
        if self.parent is not None:
            return ((self.parent.request, self.from_step), *self.parent.lineage)
        return self.saved_lineage

    def __post_init__(self) -> None:
        if self.parent is not None:
            self.parent_id = self.parent.id

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    @property
    def nbytes(self) -> int:
        return self.timeline.nbytes

    def save(self, path: str | Path) -> None:
        """Write the run (settings, grid, every step including a parent's shared ones, result) to one file."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for step in self.timeline:
            tensors[f"x_t.{step.index}"] = step.x_t.contiguous()
            tensors[f"eps.{step.index}"] = step.eps.contiguous()
            if step.rng_state is not None:
                tensors[f"rng.{step.index}"] = step.rng_state.contiguous()
            if step.guidance is not None:
                tensors[f"guidance.{step.index}"] = step.guidance.contiguous()
            if step.x0_exact is not None:
                tensors[f"x0.{step.index}"] = step.x0_exact.contiguous()
        for i, guide in enumerate(self.request.guides):
            if guide.image is not None:
                tensors[f"guide_image.{i}"] = torch.from_numpy(np.ascontiguousarray(guide.image))
        if self.final_latent is not None:
            tensors["final_latent"] = self.final_latent.contiguous()
        if self.image is not None:
            tensors["image"] = torch.from_numpy(np.ascontiguousarray(self.image))
        if self.request.init_image is not None:
            tensors["init_image"] = torch.from_numpy(np.ascontiguousarray(self.request.init_image))
        if self.request.mask is not None:
            tensors["mask"] = torch.from_numpy(np.ascontiguousarray(self.request.mask, dtype=np.float32))
        meta = {
            "format": RUN_FORMAT,
            "request": self.request.to_json(),
            "grid": json.dumps([[lv.timestep, lv.alpha_cumprod] for lv in self.grid]),
            "kind": self.kind,
            "status": self.status,
            "id": self.id,
            "parent_id": self.parent_id or "",
            "from_step": str(self.from_step),
            "lineage": json.dumps([[request.settings(), k] for request, k in self.lineage]),
            "cheap_decode": "1" if self.cheap_decode else "",
            "guidance_loss": json.dumps([step.loss for step in self.timeline]),
        }
        if self.model_hash:
            meta["model_hash"] = self.model_hash
        if self.read_as:
            meta["read_as"] = self.read_as
        if self.preview is not None:
            meta["preview"] = self.preview.to_json()  # the model's own latent → RGB map, for restored sessions
        # never leave a half-written run behind, nor share a temporary name with another writer (files.py)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), "run file")

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        meta, tensors = read_run_file(path, RUN_FORMAT)  # a regular file, a bounded header, plain reads (run_checks.py)
        if meta.get("format") != RUN_FORMAT:
            raise NotARunFile(f"{path.name} is not a Diffusion Studio run file")
        checked = check_run_file(meta, tensors, path.name)  # every field and tensor: one message for a damaged file
        settings, losses = checked.settings, checked.losses
        grid = [NoiseLevel(t, a) for t, a in checked.grid]
        images = {}
        if "init_image" in tensors:
            images["init_image"] = tensors["init_image"].numpy()
        if "mask" in tensors:
            images["mask"] = tensors["mask"].numpy()
        pictures = tuple(tensors[f"guide_image.{i}"].numpy() if f"guide_image.{i}" in tensors else None
                         for i in range(len(settings.get("guides") or ())))
        # a run saved before the prompt reader (issue #20) was made from its prompt as typed; its branches must be too
        settings = {"read_prompt": False, **settings}
        request = GenerationRequest.from_settings(settings, guide_images=pictures, **images)
        timeline = Timeline()
        index = 0
        while f"x_t.{index}" in tensors:
            timeline.append(
                TimelineStep(index, grid[index], tensors[f"x_t.{index}"], tensors[f"eps.{index}"], tensors.get(f"rng.{index}"),
                             tensors.get(f"guidance.{index}"), losses[index] if index < len(losses) else None,
                             tensors.get(f"x0.{index}"))
            )
            index += 1
        return cls(
            request=request,
            grid=grid,
            timeline=timeline,
            kind=meta.get("kind", "txt2img"),  # type: ignore[arg-type]
            status=meta.get("status", "finished"),  # type: ignore[arg-type]
            image=tensors["image"].numpy() if "image" in tensors else None,
            final_latent=tensors.get("final_latent"),
            parent_id=meta.get("parent_id") or None,
            from_step=checked.from_step,
            id=meta.get("id") or uuid.uuid4().hex[:12],
            preview=_preview(meta.get("preview")),
            cheap_decode=bool(meta.get("cheap_decode")),
            model_hash=meta.get("model_hash") or None,
            read_as=meta.get("read_as") or None,
            saved_lineage=_lineage(meta.get("lineage")),
        )


def _preview(text: str | None) -> LatentPreview | None:
    """The saved latent → RGB map; a run file from before it was saved (or a damaged one) falls back to the
    default map for its channel count."""
    if not text:
        return None
    try:
        return LatentPreview.from_json(text)
    except (ValueError, KeyError, TypeError, RuntimeError):
        return None


def _lineage(text: str | None) -> tuple[tuple[GenerationRequest, int], ...]:
    """The saved ancestors (settings only; a run file from before they were saved has none)."""
    try:
        return tuple((GenerationRequest.from_settings(settings), int(k)) for settings, k in json.loads(text or "[]"))
    except (ValueError, TypeError, AttributeError):
        return ()
