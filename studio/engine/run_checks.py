"""A run file checked completely when it is read, so a damaged one is one sentence, never a traceback later.

A run file (run.py `Run.save`) is a safetensors file: metadata strings (the request as JSON, the grid, the
status, where it branched off) and tensors (`x_t.i`, `eps.i`, optional `rng.i`, `guidance.i`, `x0.i` per step,
the result and input pictures). Everything a later branch or view relies on is checked here:

- the request is a JSON object whose every known setting has its default's type (and a choice field one of its
  choices), so nothing downstream compares a string with a number;
- the grid holds `steps + 1` levels at most (a branch: `from_step + steps + 1`), each a finite timestep and
  0 < ᾱ ≤ 1, and covers every recorded step;
- steps 0…n−1 each have x_t and ε̂ of one latent shape; the other per-step tensors match it; an RNG state is one
  the CPU generator accepts; pictures are HxWx3 uint8 (a mask HxW in [0, 1]);
- `from_step` is a whole number inside the recorded steps.

The file is read with plain reads through archives.SafetensorsHeader (a regular file, a bounded header), never
memory-mapped. Optional extras that only make a restored run look nicer (the preview map, the lineage) fall back
to nothing when damaged, as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .archives import ModelLoadError, SafetensorsArchive, SafetensorsHeader
from .limits import MAX_SIDE
from .request import GenerationRequest, RequestError
from .samplers import SAMPLER_TABLE
from .timeline import LatentPreview

MAX_STEPS = 1000  # pipeline.validate's bound on steps
KINDS = ("txt2img", "img2img", "inpaint", "invert")
STATUSES = ("running", "finished", "cancelled", "failed")
_STEP_TENSOR = re.compile(r"^(x_t|eps|rng|guidance|x0)\.(\d{1,7})$")


@dataclass(frozen=True)
class CheckedRun:
    settings: dict[str, Any]
    grid: list[tuple[float, float]]
    losses: list[float | None]
    from_step: int
    steps: int  # recorded steps


class _Damaged(Exception):
    pass


def read_run_file(path: Path, run_format: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a run file; a RequestError if it cannot be read as a safetensors file. The tensors
    of a file whose metadata is not `run_format` (a model given as a run, say) are not read at all."""
    if not path.exists():
        raise RequestError(f"run file not found: {path}")
    try:
        header = SafetensorsHeader(path)
        if header.metadata.get("format") != run_format:
            return header.metadata, {}
        archive = SafetensorsArchive(path, header)
        try:
            tensors = archive.read_all()
        finally:
            archive.close()
    except ModelLoadError as exc:
        raise RequestError(f"cannot read run file {_reason(exc, path)}") from None
    except MemoryError:
        raise RequestError(f"not enough memory to read run file {path.name}") from None
    return header.metadata, tensors


def _reason(exc: ModelLoadError, path: Path) -> str:
    text = str(exc)
    return text if text.startswith(path.name) else f"{path.name}: {text}"


def check_run_file(meta: dict[str, str], tensors: dict[str, torch.Tensor], name: str) -> CheckedRun:
    """Every field and tensor of a run file that claims the run format; one RequestError naming the first fault."""
    try:
        return _check(meta, tensors)
    except _Damaged as exc:
        raise RequestError(f"{name}: damaged run file ({exc})") from None


def _json(meta: dict[str, str], key: str, default: str | None = None) -> Any:
    text = meta.get(key, default)
    if text is None:
        raise _Damaged(f"no {key}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _Damaged(f"its {key} is not valid JSON") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> CheckedRun:
    settings = _check_settings(_json(meta, "request"))
    grid = _check_grid(_json(meta, "grid"))
    for key, choices in (("kind", KINDS), ("status", STATUSES)):
        if key in meta and meta[key] not in choices:
            raise _Damaged(f"unknown {key} {meta[key][:40]!r}")
    from_text = meta.get("from_step", "0")
    if not re.fullmatch(r"\d{1,7}", from_text or ""):
        raise _Damaged(f"from_step must be a whole number, got {from_text[:40]!r}")
    from_step = int(from_text)
    steps = settings.get("steps", GenerationRequest.steps)
    if len(grid) - 1 > from_step + steps:
        raise _Damaged(f"its grid has {len(grid) - 1} steps but the request asks for {steps}"
                       + (f" after step {from_step}" if from_step else ""))
    recorded = _check_steps(tensors, len(grid) - 1)
    if from_step and from_step >= max(recorded, 1):
        raise _Damaged(f"it branches at step {from_step} but holds {recorded} steps")
    if meta.get("status") == "finished" and recorded != len(grid) - 1:
        raise _Damaged(f"a finished run of {len(grid) - 1} steps holds {recorded}")
    losses = _json(meta, "guidance_loss", "[]")
    if not isinstance(losses, list) or len(losses) > recorded or not all(v is None or _finite(v) for v in losses):
        raise _Damaged("its guidance losses are not a list of numbers, one per step")
    _check_pictures(tensors, settings)
    _check_size(tensors, settings)
    _drop_damaged_extras(meta, tensors)
    return CheckedRun(settings, grid, [None if v is None else float(v) for v in losses], from_step, recorded)


def _drop_damaged_extras(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """The preview map and the lineage only make a restored run look right; a damaged one is dropped (`meta` is
    edited), as a run file from before they were saved has none."""
    if meta.get("preview"):
        try:
            preview = LatentPreview.from_json(meta["preview"])
            channels = tensors["x_t.0"].shape[1] if "x_t.0" in tensors else preview.factors.shape[0]
            width = preview.hidden[0].shape[1] if preview.hidden is not None else channels
            ok = (preview.factors.shape == (width, 3) and preview.bias.shape == (3,)
                  and (preview.hidden is None or (preview.hidden[0].shape[0] == channels
                                                  and preview.hidden[1].shape == (width,))))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, RecursionError):
            ok = False
        if not ok:
            meta["preview"] = ""
    if meta.get("lineage"):
        try:
            entries = json.loads(meta["lineage"])
            ok = isinstance(entries, list) and all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[1], int) and not isinstance(e[1], bool)
                and e[1] >= 0 and _check_settings(e[0]) is not None for e in entries)
        except (ValueError, RecursionError, _Damaged):
            ok = False
        if not ok:
            meta["lineage"] = ""


def _field_types() -> dict[str, tuple[type, ...]]:
    defaults = GenerationRequest()
    types: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(GenerationRequest):
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            types[f.name] = (bool,)
        elif isinstance(value, float):
            types[f.name] = (int, float)
        elif isinstance(value, (int, str)):
            types[f.name] = (type(value),)
    return types


def _choices() -> dict[str, tuple]:
    hints = typing.get_type_hints(GenerationRequest)
    choices = {k: typing.get_args(h) for k, h in hints.items() if typing.get_origin(h) is typing.Literal}
    return {**choices, "sampler": tuple(SAMPLER_TABLE)}


def _check_settings(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Damaged(f"its request is {type(raw).__name__}, not an object of settings")
    settings = {k: v for k, v in raw.items() if k not in ("init_image", "mask")}  # images travel as tensors
    types, choices = _field_types(), _choices()
    for key, value in settings.items():
        if key == "eta" and value is None:
            continue
        want = types.get(key)
        if want is None:
            continue
        ok = isinstance(value, want) and (bool in want or not isinstance(value, bool))
        if ok and float in want and not math.isfinite(value):
            ok = False
        if not ok:
            raise _Damaged(f"the setting {key} is {json.dumps(value)[:40]}, not {_type_name(want)}")
        if key in choices and value not in choices[key]:
            raise _Damaged(f"the setting {key} is {value[:40]!r}, not one of {', '.join(choices[key])}")
    steps = settings.get("steps", GenerationRequest.steps)
    if not 1 <= steps <= MAX_STEPS:
        raise _Damaged(f"its request asks for {steps} steps (1 to {MAX_STEPS})")
    for side in ("width", "height"):
        if side in settings and not 1 <= settings[side] <= MAX_SIDE:
            raise _Damaged(f"its {side} is {settings[side]} (1 to {MAX_SIDE})")
    guides = settings.get("guides", [])
    if not isinstance(guides, list) or not all(isinstance(g, dict) for g in guides):
        raise _Damaged("its guides are not a list of objects")
    return settings


def _type_name(want: tuple[type, ...]) -> str:
    if bool in want:
        return "true or false"
    if float in want:
        return "a number"
    return "a whole number" if int in want else "text"


def _check_grid(raw: Any) -> list[tuple[float, float]]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= 2 * MAX_STEPS + 1:
        raise _Damaged("its grid is not a list of 2 or more noise levels")
    grid = []
    for i, level in enumerate(raw):
        if not (isinstance(level, list) and len(level) == 2 and _finite(level[0]) and _finite(level[1])
                and 0 < level[1] <= 1):
            raise _Damaged(f"grid level {i} is not a [timestep, alpha_cumprod] pair with 0 < alpha_cumprod ≤ 1")
        grid.append((float(level[0]), float(level[1])))
    # the samplers step from each level to the next: noise must fall strictly (σ = √((1 − ᾱ)/ᾱ), DDIM eq. 4's
    # parametrisation), and only the last level may be clean (ᾱ = 1, σ = 0)
    sigmas = [math.sqrt((1 - a) / a) for _, a in grid]
    if any(a >= 1 for _, a in grid[:-1]) or any(later >= earlier for earlier, later in zip(sigmas, sigmas[1:])):
        raise _Damaged("its grid's noise levels do not fall step by step")
    return grid


def _check_steps(tensors: dict[str, torch.Tensor], grid_steps: int) -> int:
    indices: dict[str, set[int]] = {}
    for key in tensors:
        match = _STEP_TENSOR.match(key)
        if match:
            indices.setdefault(match.group(1), set()).add(int(match.group(2)))
    recorded = len(indices.get("x_t", ()))
    if indices.get("x_t", set()) != set(range(recorded)):
        first = min(set(range(recorded + 1)) - indices.get("x_t", set()))
        raise _Damaged(f"x_t.{first} is missing")
    if recorded > grid_steps:
        raise _Damaged(f"it records {recorded} steps but its grid has only {grid_steps}")
    for kind, found in indices.items():
        beyond = sorted(found - set(range(recorded)))
        if beyond:
            raise _Damaged(f"{kind}.{beyond[0]} has no x_t.{beyond[0]}")
    shape = None
    for i in range(recorded):
        x_t = tensors[f"x_t.{i}"]
        if x_t.dim() != 4 or x_t.shape[0] != 1 or not x_t.is_floating_point() or 0 in x_t.shape:
            raise _Damaged(f"x_t.{i} is not a (1, C, h, w) latent")
        shape = shape or x_t.shape
        if x_t.shape != shape:
            raise _Damaged(f"x_t.{i} is {list(x_t.shape)}, the other steps {list(shape)}")
        if f"eps.{i}" not in tensors:
            raise _Damaged(f"eps.{i} is missing")
        for kind in ("eps", "guidance", "x0"):
            t = tensors.get(f"{kind}.{i}")
            if t is not None and (t.shape != shape or not t.is_floating_point()):
                raise _Damaged(f"{kind}.{i} does not match the latent's shape {list(shape)}")
        rng = tensors.get(f"rng.{i}")
        if rng is not None:
            try:
                torch.Generator().set_state(rng)
            except (RuntimeError, TypeError, ValueError):
                raise _Damaged(f"rng.{i} is not a random generator state") from None
    final = tensors.get("final_latent")
    if final is not None and (not final.is_floating_point() or (shape is not None and final.shape != shape)):
        raise _Damaged("final_latent does not match the steps' latent")
    return recorded


def _picture(tensors: dict[str, torch.Tensor], key: str) -> None:
    t = tensors.get(key)
    if t is not None and (t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3 or 0 in t.shape):
        raise _Damaged(f"{key} is not an HxWx3 8-bit picture")


def _guide_picture(t: torch.Tensor, key: str) -> None:
    """A guide's picture: RGB (reference) or RGBA (colour hint) 8-bit, or an HxW region in [0, 1] (keep)."""
    if t.dim() == 3 and t.dtype == torch.uint8 and t.shape[2] in (3, 4) and 0 not in t.shape:
        return
    if t.dim() == 2 and t.is_floating_point() and 0 not in t.shape:
        region = t.float()
        if bool(torch.isfinite(region).all()) and float(region.min()) >= 0 and float(region.max()) <= 1:
            return
    raise _Damaged(f"{key} is not an RGB or RGBA 8-bit picture nor an HxW region in [0, 1]")


def _check_pictures(tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    for key in ("image", "init_image"):
        _picture(tensors, key)
    guides = len(settings.get("guides", []))
    for key in tensors:
        if key.startswith("guide_image."):
            index = key.removeprefix("guide_image.")
            if not index.isdigit() or int(index) >= guides:
                raise _Damaged(f"{key[:40]} belongs to no guide")
            _guide_picture(tensors[key], key)
    mask = tensors.get("mask")
    if mask is not None:
        if mask.dim() != 2 or not mask.is_floating_point() or 0 in mask.shape:
            raise _Damaged("mask is not an HxW array")
        m = mask.float()
        if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
            raise _Damaged("mask values are not between 0 and 1")
        init = tensors.get("init_image")
        if init is not None and tuple(init.shape[:2]) != tuple(mask.shape):
            raise _Damaged("mask and init_image differ in size")


def _check_size(tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    """The latent must be the request's size divided by one whole factor (the model's VAE factor)."""
    x_t = tensors.get("x_t.0")
    if x_t is None:
        return
    width = settings.get("width", GenerationRequest.width)
    height = settings.get("height", GenerationRequest.height)
    h, w = x_t.shape[-2:]
    if width % w or height % h or width // w != height // h:
        raise _Damaged(f"its {w}x{h} latent does not belong to a {width}x{height} picture")
