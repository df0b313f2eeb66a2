"""Opening models: built-in names, our own safetensors files, and (see checkpoints.py) users' SD checkpoints.

Weights never come from the network. A model is built on the meta device and its tensors are assigned straight
from the (memory-mapped) file in the target dtype, so no second full copy of the weights is made in RAM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..resources import resources_dir
from .model import LatentDiffusion, ModelConfig, build_tiny_random

CONFIG_METADATA_KEY = "studio_config"
SHIPPED_MODEL = "model/studio-shapes.safetensors"


class ModelLoadError(ValueError):
    """A model that cannot be opened; the message names the file and what is wrong."""


def shipped_model_path() -> Path:
    return resources_dir() / SHIPPED_MODEL


def load_model(spec: str, device: torch.device, dtype: torch.dtype) -> LatentDiffusion:
    if spec == "tiny-random":
        model = build_tiny_random()
    elif spec == "default":
        path = shipped_model_path()
        if not path.exists():
            raise ModelLoadError(f"the shipped model is missing ({path}); reinstall Diffusion Studio or pass --model")
        model = load_studio_file(path, device, dtype)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model not found: {path}")
        from .checkpoints import load_checkpoint  # SD single files and diffusers folders

        model = load_checkpoint(path, device, dtype)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_studio_file(model: LatentDiffusion, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Our own format: an SD-layout safetensors file whose metadata carries the ModelConfig as JSON."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: model.config.to_json(), "format": "pt"})


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file, with the header checked for sanity first."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path.name}: not a safetensors file (too short)")
        n = int.from_bytes(head, "little")
        if n > 100_000_000 or 8 + n > size:
            raise ModelLoadError(f"{path.name}: corrupt safetensors header (claims {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelLoadError(f"{path.name}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name}: corrupt safetensors header")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def open_safetensors(path: Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                tensors[key] = tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelLoadError(f"{path.name}: cannot read tensors ({exc})") from None
    return tensors


def assemble(config: ModelConfig, tensors: dict[str, torch.Tensor], source: Path) -> LatentDiffusion:
    """Build the model on the meta device and assign `tensors` to it; strict: every name and shape must match."""
    with torch.device("meta"):
        model = LatentDiffusion(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelLoadError(f"{source.name}: {len(missing)} tensors missing, e.g. {missing[0]}")
    for key, want in expected.items():
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise ModelLoadError(
                f"{source.name}: tensor {key} has shape {tuple(tensors[key].shape)}, expected {tuple(want.shape)}"
            )
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True, assign=True)
    _rebuild_buffers(model)
    return model


def _rebuild_buffers(model: LatentDiffusion) -> None:
    """Non-persistent buffers made on the meta device have no data; recreate them on the weights' device."""
    device = next(model.parameters()).device
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                rebuild = getattr(module, "rebuild_buffers", None)
                if rebuild is None:
                    raise ModelLoadError(f"internal: buffer {name} of {type(module).__name__} cannot be rebuilt")
                rebuild(device)


def load_studio_file(path: Path, device: torch.device, dtype: torch.dtype) -> LatentDiffusion:
    meta = read_safetensors_metadata(path)
    if CONFIG_METADATA_KEY not in meta:
        raise ModelLoadError(f"{path.name}: not a Diffusion Studio model file (no {CONFIG_METADATA_KEY} metadata)")
    try:
        config = ModelConfig.from_json(meta[CONFIG_METADATA_KEY])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path.name}: unreadable model config ({exc})") from None
    return assemble(config, open_safetensors(path, device, dtype), path)
