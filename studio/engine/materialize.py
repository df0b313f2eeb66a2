"""Filling a model from a tensor archive without ever holding two copies of the weights.

The config is checked value by value first (config_checks.py), so building the modules on the meta device takes
bounded time; the parameter count it implies is compared with what the file holds, then every name and shape,
all before any tensor is read; then each tensor is read, cast to the target dtype and device one at a time, and
assigned. The model never keeps a view of a memory-mapped file (a pickle checkpoint's tensors are copied): a file
changed on disk later cannot take the process down with it. If anything fails midway, what was read so far is
dropped before the error is raised.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch

from . import pack_cache
from .archives import ModelLoadError, TensorArchive
from .checkpoint_layout import TensorRef
from .config_checks import check_parameter_count, validated
from .model import LatentDiffusion, ModelConfig
from .tiling import is_out_of_memory


def _cast(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, copy: bool) -> torch.Tensor:
    # `.to` returns the tensor itself when nothing changes; `copy` when that tensor is not ours to keep (a view of
    # a memory-mapped pickle checkpoint)
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype, copy=copy)
    return tensor.to(device=device, copy=copy)


def materialize(
    config: ModelConfig,
    archive: TensorArchive,
    source: Path,
    device: torch.device,
    dtype: torch.dtype,
    refs: Mapping[str, TensorRef] | None = None,
) -> LatentDiffusion:
    """Build the model on the meta device and fill it from `archive`. `refs` maps our names to the archive's
    (identity when None). Names and shapes are all checked first, so a bad file fails before anything is read."""
    config = validated(config, source.name)
    with torch.device("meta"):
        model = LatentDiffusion(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_parameter_count(sum(math.prod(s) for s in expected.values()),
                          sum(math.prod(s) for s in archive.shapes.values()), source.name)
    refs = refs if refs is not None else {k: TensorRef(k) for k in archive.shapes}
    check_names_and_shapes(expected, refs, archive.shapes, source)

    # on a second start, the weights of layers whose packs are cached for the size being loaded for are not read
    # (pack_cache.py; loading.load_model restores the packs, or reads the file again if it cannot)
    unread = pack_cache.weights_to_skip(model, getattr(archive, "files", ()), device, dtype)
    tensors: dict[str, torch.Tensor] = {}
    error: str | None = None
    try:
        for key in expected:
            if key in unread:
                tensors[key] = pack_cache.placeholder(expected[key], dtype)
                continue
            ref = refs[key]
            tensor = ref.apply(archive.get(ref.source))
            if not tensor.is_floating_point():
                raise ModelLoadError(f"{source.name}: tensor {ref.source} has dtype {tensor.dtype}, expected floats")
            tensors[key] = _cast(tensor, device, dtype, copy=not getattr(archive, "fresh", False))
            del tensor
        model.load_state_dict(tensors, strict=True, assign=True)
    except ModelLoadError as exc:
        error = str(exc)
    except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        size = sum(math.prod(s) for s in expected.values()) * torch.finfo(dtype).bits // 8
        error = (f"{source.name}: not enough memory to load the model on {device} in {dtype} "
                 f"(about {size / 2**30:.1f} GiB of weights); try fp16/bf16 on a GPU, or close other programs")
    finally:
        tensors.clear()  # the model holds what it needs; on failure nothing half-loaded survives
    if error is not None:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise ModelLoadError(error)
    _rebuild_buffers(model)
    model.source_files = tuple(getattr(archive, "files", ()))  # loading.source_changed compares them later
    return model


def check_names_and_shapes(
    expected: Mapping[str, tuple[int, ...]],
    refs: Mapping[str, TensorRef],
    shapes: Mapping[str, tuple[int, ...]],
    source: Path,
) -> None:
    missing = [k for k in expected if k not in refs or refs[k].source not in shapes]
    if missing:
        parts = sorted({_part_name(k) for k in missing})
        raise ModelLoadError(
            f"{source.name}: {len(missing)} tensor(s) missing ({', '.join(parts)}), e.g. {missing[0]}"
        )
    for key, want in expected.items():
        ref = refs[key]
        got = ref.shape(tuple(shapes[ref.source]))
        if got != want:
            raise ModelLoadError(f"{source.name}: tensor {ref.source} has shape {list(got)}, expected {list(want)}")


def _part_name(key: str) -> str:
    if key.startswith("model.diffusion_model."):
        return "UNet"
    if key.startswith("first_stage_model."):
        return "VAE"
    return "text encoder"


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
