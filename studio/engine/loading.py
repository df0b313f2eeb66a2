"""Opening a model by name: built-in names, our own safetensors files, and users' SD checkpoints (checkpoints.py).

Weights never come from the network. Our own format is an SD-layout safetensors file whose metadata carries the
ModelConfig as JSON; anything else goes to checkpoints.py, which works the architecture out from the tensors. Both
fill the model through materialize.py: names and shapes checked first, one tensor at a time, nothing half-loaded
left behind on failure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..resources import resources_dir
from .archives import ModelLoadError, SafetensorsArchive, SafetensorsHeader, sniff
from .checkpoints import load_checkpoint
from .config_checks import parse_config
from .cpu_kernels import prepack_for_cpu
from . import devices, pack_cache
from .files import FileProblem, file_signature
from .materialize import materialize
from .model import LatentDiffusion, Prediction, build_tiny_random

CONFIG_METADATA_KEY = "studio_config"
SHIPPED_MODEL = "model/studio-shapes.safetensors"
log = logging.getLogger(__name__)


def shipped_model_path() -> Path:
    return resources_dir() / SHIPPED_MODEL


SHIPPED_READER = "model/prompt-reader.safetensors"


def shipped_prompt_reader():
    """The built-in model's prompt reader (prompt_reader.py), or None when the file is missing or damaged: the model
    then reads prompts as typed, as before the reader existed (a damaged file is logged, never fatal)."""
    from .prompt_reader import load_reader

    path = resources_dir() / SHIPPED_READER
    if not path.exists():
        return None
    try:
        return load_reader(path)
    except ModelLoadError as error:
        log.warning("prompt reader not used: %s", error)
        return None


def load_model(
    spec: str, device: torch.device, dtype: torch.dtype, *, prediction: Prediction | None = None
) -> LatentDiffusion:
    """"tiny-random", "default" (the shipped model) or a path to a model file, SD checkpoint or diffusers folder.

    `prediction` overrides what the model is taken to predict ("epsilon" / "v"), e.g. for an SD2-768 file whose
    kind the weights cannot reveal."""
    if spec == "tiny-random":
        model = build_tiny_random()
    elif spec == "default":
        path = shipped_model_path()
        if not path.exists():
            raise ModelLoadError(f"the shipped model is missing ({path}); reinstall Diffusion Studio or pass --model")
        model = load_studio_file(path, device, dtype)
        model.attach_prompt_reader(shipped_prompt_reader())
    else:
        path = Path(spec).expanduser()
        if not path.exists():  # a dangling symlink too
            raise ModelLoadError(f"model not found: {path}")
        if _is_studio_file(path):
            model = load_studio_file(path, device, dtype)
        else:
            model = load_checkpoint(path, device, dtype, prediction=prediction)
    if prediction is not None and model.config.prediction != prediction:
        model = model.with_prediction(prediction)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    native_bf16 = dtype == torch.bfloat16 and devices.cpu_runs_bf16_natively()
    if device.type == "cpu" and dtype != torch.float32 and not native_bf16:
        # fp16 (or emulated bf16) convolutions are slow or missing on the CPU: the VAE runs in fp32 there. Native
        # bf16 runs it in bf16, twice as fast (docs/numerics.md, "Fast precision").
        model.first_stage_model.float()
    if spec != "tiny-random" and device.type == "cpu":
        # ~2× faster float32 convolutions and linears on the CPU, and faster bf16 ones (cpu_kernels.py); each layer
        # is packed on its first call, and the plain copies are given back as the packs are made: the weights sit in
        # RAM once
        for part in (model.model, model.first_stage_model, model.cond_stage_model):
            prepack_for_cpu(part, release_dense=True)
    shape = getattr(model, "unread_weights_for", None)
    if shape is not None:  # read without the weights a cache entry holds packed (pack_cache.py): the packs now
        del model.unread_weights_for
        if not pack_cache.restore(model, shape):  # the entry did not fit after all: read the whole file
            del model
            with pack_cache.loading_for(None):
                return load_model(spec, device, dtype, prediction=prediction)
    return model


def save_studio_file(model: LatentDiffusion, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Our own format: an SD-layout safetensors file whose metadata carries the ModelConfig as JSON."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: model.config.to_json(), "format": "pt"})


def _is_studio_file(path: Path) -> bool:
    """A safetensors file (by its bytes, whatever its name) whose metadata carries our config."""
    if path.is_dir():
        return False
    try:
        kind = sniff(path)
    except FileProblem as exc:
        raise ModelLoadError(str(exc)) from None
    return kind == "safetensors" and CONFIG_METADATA_KEY in SafetensorsHeader(path).metadata


def source_changed(model: LatentDiffusion) -> bool:
    """Whether a file the model was read from has changed on disk since (another version, moved or deleted)."""
    return any(file_signature(path) != sig for path, sig in getattr(model, "source_files", ()))


def load_studio_file(path: Path, device: torch.device, dtype: torch.dtype) -> LatentDiffusion:
    header = SafetensorsHeader(path)
    meta = header.metadata
    if CONFIG_METADATA_KEY not in meta:
        raise ModelLoadError(f"{path.name}: not a Diffusion Studio model file (no {CONFIG_METADATA_KEY} metadata)")
    try:
        config = parse_config(meta[CONFIG_METADATA_KEY])
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from None
    archive = SafetensorsArchive(path, header)
    try:
        return materialize(config, archive, path, device, dtype)
    finally:
        archive.close()
