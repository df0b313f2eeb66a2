"""Tensor archives: a checkpoint's tensors readable one at a time, their names and shapes known before any is read.

The safetensors format (huggingface/safetensors, "Format" in its README; docs/checkpoints.md) is an 8-byte
little-endian header length N, N bytes of JSON mapping each tensor name to {dtype, shape, data_offsets}, an optional
"__metadata__" map of strings, then one byte buffer. The header is checked here against the file before anything
else is read, so a truncated or corrupt file fails with one sentence naming what is wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Protocol

import torch

from .errors import UserError

MAX_HEADER_BYTES = 100_000_000  # the reference reader's limit ("header too large")

# safetensors dtype string → bytes per element (the format's dtype list; docs/checkpoints.md)
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8,
}


class ModelLoadError(UserError):
    """A model that cannot be opened; the message names the file and what is wrong."""


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
