"""Opening models: built-in names, our own safetensors files, and (see checkpoints.py) users' SD checkpoints.

Weights never come from the network. A model is built on the meta device; every name and shape is checked
against the file's header before any tensor is read; then each tensor is read from the memory-mapped file, cast
to the target dtype and device one at a time, and assigned. A float32 file loaded as float32 on the CPU is used in
place (no copy at all); otherwise only the converted weights are resident, never a second full copy.
If anything fails midway, what was read so far is dropped before the error is raised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Protocol

import torch

from ..resources import resources_dir
from .checkpoint_layout import TensorRef
from .errors import UserError
from .cpu_kernels import prepack_for_cpu
from .model import LatentDiffusion, ModelConfig, Prediction, build_tiny_random
from .tiling import is_out_of_memory

CONFIG_METADATA_KEY = "studio_config"
SHIPPED_MODEL = "model/studio-shapes.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the reference reader's limit ("header too large")

# safetensors dtype → bytes per element (engine.md §9)
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8,
}


class ModelLoadError(UserError):
    """A model that cannot be opened; the message names the file and what is wrong."""


def shipped_model_path() -> Path:
    return resources_dir() / SHIPPED_MODEL


def load_model(
    spec: str, device: torch.device, dtype: torch.dtype, *, prediction: Prediction | None = None
) -> LatentDiffusion:
    """"tiny-random", "default" (the shipped model) or a path to an SD checkpoint / diffusers folder.

    `prediction` overrides what the model is taken to predict ("epsilon" / "v"), e.g. for an SD2-768 file whose
    kind the weights cannot reveal."""
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

        model = load_checkpoint(path, device, dtype, prediction=prediction)
    if prediction is not None and model.config.prediction != prediction:
        model = model.with_prediction(prediction)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if spec != "tiny-random" and device.type == "cpu" and dtype == torch.float32:
        prepack_for_cpu(model)  # ~2× faster float32 convolutions and linears on the CPU (cpu_kernels.py)
    return model


def save_studio_file(model: LatentDiffusion, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Our own format: an SD-layout safetensors file whose metadata carries the ModelConfig as JSON."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: model.config.to_json(), "format": "pt"})


# -- safetensors --------------------------------------------------------------------------------------------------

class SafetensorsHeader:
    """The checked header of a safetensors file: tensor name → (dtype, shape), and the `__metadata__` map."""

    def __init__(self, path: Path):
        self.path = path
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.metadata: dict[str, str] = {}
        self._read()

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (_, shape) in self.tensors.items()}

    def _fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path.name}: {what}")

    def _read(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise self._fail(f"not a safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise self._fail(f"corrupt safetensors header (it claims {n:,} bytes; at most 100 MB is allowed)")
            if 8 + n > size:
                raise self._fail(
                    f"truncated or not a safetensors file (the header claims {n:,} bytes, the file has {size:,})"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._fail("corrupt safetensors header (not JSON)") from None
        if not isinstance(header, dict):
            raise self._fail("corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        self.metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
        buffer = size - 8 - n
        spans = []
        for name, entry in header.items():
            dtype, shape, span = self._entry(name, entry)
            begin, end = span
            need = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
            if end - begin != need:
                raise self._fail(f"corrupt header: tensor {name} {list(shape)} {dtype} needs {need:,} bytes, "
                                 f"its data range holds {end - begin:,}")
            if end > buffer:
                raise self._fail(f"truncated: tensor {name} ends at byte {end:,} of the data, but the file holds "
                                 f"only {buffer:,} bytes of data (an interrupted download or copy?)")
            self.tensors[name] = (dtype, shape)
            spans.append((begin, end, name))
        spans.sort()
        for (b0, e0, a), (b1, e1, b) in zip(spans, spans[1:]):
            if b1 < e0:
                raise self._fail(f"corrupt header: tensors {a} and {b} overlap")

    def _entry(self, name: str, entry: object) -> tuple[str, tuple[int, ...], tuple[int, int]]:
        if not isinstance(entry, dict):
            raise self._fail(f"corrupt header: entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise self._fail(f"tensor {name} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise self._fail(f"corrupt header: tensor {name} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise self._fail(f"corrupt header: tensor {name} has invalid data offsets {offsets!r}")
        return dtype, tuple(shape), (offsets[0], offsets[1])


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file, with the whole header checked for sanity first."""
    return SafetensorsHeader(path).metadata


class TensorArchive(Protocol):
    """Tensors of a checkpoint, readable one at a time; `shapes` is known before anything is read."""

    shapes: Mapping[str, tuple[int, ...]]

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


class SafetensorsArchive:
    """A memory-mapped safetensors file: `get` returns a CPU tensor backed by the mapping (no copy)."""

    def __init__(self, path: Path, header: SafetensorsHeader | None = None):
        from safetensors.torch import safe_open

        self.path = path
        self.header = header or SafetensorsHeader(path)
        self.shapes = self.header.shapes
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types (SafetensorError, OSError, …)
            raise ModelLoadError(f"{path.name}: cannot open ({exc})") from None

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(name)
        except Exception as exc:
            raise ModelLoadError(f"{self.path.name}: cannot read tensor {name} ({exc})") from None

    def close(self) -> None:
        self._file = None


def open_safetensors(path: Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, floats cast to `dtype` on `device` (for scripts; loading is lazier)."""
    archive = SafetensorsArchive(path)
    return {k: _cast(archive.get(k), device, dtype) for k in archive.shapes}


# -- building a model from an archive -----------------------------------------------------------------------------

def _cast(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # `.to` returns the tensor itself when nothing changes: a float32 file on the CPU is used in place
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


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
    with torch.device("meta"):
        model = LatentDiffusion(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    refs = refs if refs is not None else {k: TensorRef(k) for k in archive.shapes}
    check_names_and_shapes(expected, refs, archive.shapes, source)

    tensors: dict[str, torch.Tensor] = {}
    error: str | None = None
    try:
        for key in expected:
            ref = refs[key]
            tensor = ref.apply(archive.get(ref.source))
            if not tensor.is_floating_point():
                raise ModelLoadError(f"{source.name}: tensor {ref.source} has dtype {tensor.dtype}, expected floats")
            tensors[key] = _cast(tensor, device, dtype)
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


class DictArchive:
    """Tensors already in memory, under our names."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def close(self) -> None:
        self.tensors.clear()


def assemble(config: ModelConfig, tensors: dict[str, torch.Tensor], source: Path) -> LatentDiffusion:
    """Assign already-loaded `tensors` (our names) to a model built on the meta device; strict names and shapes.
    The dict is emptied either way, so a failure leaves nothing of it behind."""
    first = next(iter(tensors.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    archive = DictArchive(tensors)
    try:
        return materialize(config, archive, source, device, dtype)
    finally:
        archive.close()


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
    header = SafetensorsHeader(path)
    meta = header.metadata
    if CONFIG_METADATA_KEY not in meta:
        raise ModelLoadError(f"{path.name}: not a Diffusion Studio model file (no {CONFIG_METADATA_KEY} metadata)")
    try:
        config = ModelConfig.from_json(meta[CONFIG_METADATA_KEY])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path.name}: unreadable model config ({exc})") from None
    archive = SafetensorsArchive(path, header)
    try:
        return materialize(config, archive, path, device, dtype)
    finally:
        archive.close()

