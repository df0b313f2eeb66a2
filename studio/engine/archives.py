"""Tensor archives: a checkpoint's tensors readable one at a time, their names and shapes known before any is read.

The safetensors format (huggingface/safetensors, "Format" in its README; docs/checkpoints.md) is an 8-byte
little-endian header length N, N bytes of JSON mapping each tensor name to {dtype, shape, data_offsets}, an optional
"__metadata__" map of strings, then one byte buffer. The header is checked here against the file before anything
else is read, so a truncated, corrupt or hostile file fails with one sentence naming what is wrong:

- only a regular file is opened (files.py: a FIFO or /dev/zero named `.safetensors` is refused, never read);
- the header is bounded (size, number of entries, nesting) and every value's type is checked;
- tensors are read with ordinary reads into memory the model owns, never through a memory map: a file that
  shrinks while the app has a model from it open cannot kill the process (SIGBUS on a mapped page past the new
  end of file). Before each read the file is checked to be the same version (device, inode, size, mtime) as
  the one whose header was read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch

from .errors import UserError
from .files import FileProblem, open_regular, signature

# A whole SD 1.x checkpoint's header is ~120 KB (1,131 tensors), SDXL's ~300 KB; 16 MiB leaves 50× room and keeps
# a hostile header's parse (Python objects ~10× the text) far below a gigabyte. The reference reader allows 100 MB.
MAX_HEADER_BYTES = 16 * 2**20
MAX_ENTRIES = 200_000  # JSON objects in one header (one per tensor, plus __metadata__)
MAX_RANK = 8

# safetensors dtype string → bytes per element (the format's dtype list; docs/checkpoints.md)
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8,
}
_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "C64": "complex64",
}


class ModelLoadError(UserError):
    """A model that cannot be opened; the message names the file and what is wrong."""


def sniff(path: Path) -> str:
    """What a file is from its first bytes, whatever its name: "safetensors", "zip" (PyTorch's zip checkpoint),
    "pickle" (legacy torch.save), "gguf" or "unknown". Only regular files are opened (a FileProblem otherwise)."""
    with open_regular(path, "model file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _parse_header(raw: bytes) -> Any:
    """json.loads with an entry budget: every object counts; duplicate names and NaN/Infinity are refused; nesting
    deeper than the interpreter's recursion limit is an error, not a crash."""
    count = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > MAX_ENTRIES:
            raise _HeaderFail(f"more than {MAX_ENTRIES:,} entries")
        out = dict(items)
        if len(out) != len(items):
            raise _HeaderFail("a name appears twice")
        return out

    def constant(name: str) -> Any:
        raise _HeaderFail(f"{name} is not a JSON number")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _HeaderFail("not UTF-8 text") from None
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise _HeaderFail("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise _HeaderFail(f"not JSON: {str(exc)[:80]}") from None


class _HeaderFail(Exception):
    pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SafetensorsHeader:
    """The checked header of a safetensors file: tensor name → (dtype, shape), data spans, `__metadata__`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.spans: dict[str, tuple[int, int]] = {}
        self.metadata: dict[str, str] = {}
        self.data_start = 0
        self.signature: tuple[int, int, int, int] | None = None
        self._read()

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (_, shape) in self.tensors.items()}

    @property
    def total_elements(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors.values())

    def _fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path.name}: {what}")

    def _read(self) -> None:
        try:
            f = open_regular(self.path, "model file")
        except FileProblem as exc:
            raise ModelLoadError(str(exc)) from None
        with f:
            info = os.fstat(f.fileno())
            self.signature = signature(info)
            size = info.st_size
            head = f.read(8)
            if len(head) < 8:
                raise self._fail(f"not a safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise self._fail(f"corrupt safetensors header (it claims {n:,} bytes; at most "
                                 f"{MAX_HEADER_BYTES // 2**20} MiB is allowed)")
            if 8 + n > size:
                raise self._fail(
                    f"truncated or not a safetensors file (the header claims {n:,} bytes, the file has {size:,})"
                )
            raw = f.read(n)
        if len(raw) != n:
            raise self._fail("the file changed while its header was read")
        try:
            header = _parse_header(raw)
        except _HeaderFail as exc:
            raise self._fail(f"corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise self._fail("corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None)
        if meta is not None:
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise self._fail("corrupt safetensors header (__metadata__ must map names to text)")
            self.metadata = dict(meta)
        self.data_start = 8 + n
        buffer = size - 8 - n
        spans = []
        for name, entry in header.items():
            dtype, shape, span = self._entry(name, entry)
            begin, end = span
            need = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
            if end - begin != need:
                raise self._fail(f"corrupt header: tensor {_short(name)} {list(shape)} {dtype} needs {need:,} "
                                 f"bytes, its data range holds {end - begin:,}")
            if end > buffer:
                raise self._fail(f"truncated: tensor {_short(name)} ends at byte {end:,} of the data, but the "
                                 f"file holds only {buffer:,} bytes of data (an interrupted download or copy?)")
            self.tensors[name] = (dtype, shape)
            self.spans[name] = span
            spans.append((begin, end, name))
        spans.sort()
        for (b0, e0, a), (b1, e1, b) in zip(spans, spans[1:]):
            if b1 < e0:
                raise self._fail(f"corrupt header: tensors {_short(a)} and {_short(b)} overlap")

    def _entry(self, name: str, entry: object) -> tuple[str, tuple[int, ...], tuple[int, int]]:
        if not isinstance(entry, dict):
            raise self._fail(f"corrupt header: entry {_short(name)!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise self._fail(f"tensor {_short(name)} has an unknown dtype {_short(repr(dtype))}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(_is_int(d) and 0 <= d < 2**53 for d in shape)):
            raise self._fail(f"corrupt header: tensor {_short(name)} has an invalid shape {_short(repr(shape))}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise self._fail(f"corrupt header: tensor {_short(name)} has invalid data offsets "
                             f"{_short(repr(offsets))}")
        return dtype, tuple(shape), (offsets[0], offsets[1])


def _short(text: str, limit: int = 80) -> str:
    """A name from the file as it may appear in a one-line message: control and other unprintable characters
    escaped (a tensor name may hold a newline), long names cut."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TensorArchive(Protocol):
    """Tensors of a checkpoint, readable one at a time; `shapes` is known before anything is read. `fresh`:
    `get` returns memory of its own (not a view of a mapping or of a shared buffer). `files`: (path, signature)
    of every file read, to tell later whether any changed."""

    shapes: Mapping[str, tuple[int, ...]]
    fresh: bool
    files: list[tuple[Path, tuple[int, int, int, int] | None]]

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, _TORCH_DTYPES[name], None)
    if dtype is None:
        raise ModelLoadError(f"this PyTorch cannot hold {name} tensors")
    return dtype


class SafetensorsArchive:
    """A safetensors file read tensor by tensor with plain reads: `get` returns a new CPU tensor the caller owns."""

    fresh = True

    def __init__(self, path: Path, header: SafetensorsHeader | None = None):
        self.path = Path(path)
        self.header = header or SafetensorsHeader(self.path)
        self.shapes = self.header.shapes
        try:
            self._file = open_regular(self.path, "model file")
        except FileProblem as exc:
            raise ModelLoadError(str(exc)) from None
        self.files = [(self.path, self.header.signature)]
        self._check_unchanged()

    def _check_unchanged(self) -> None:
        if signature(os.fstat(self._file.fileno())) != self.header.signature:
            raise ModelLoadError(f"{self.path.name}: the file changed on disk while it was being loaded; "
                                 "load it again once it is written")

    def get(self, name: str) -> torch.Tensor:
        if self._file is None:
            raise ModelLoadError(f"{self.path.name}: already closed")
        dtype_name, shape = self.header.tensors[name]
        begin, end = self.header.spans[name]
        self._check_unchanged()
        dtype = torch_dtype(dtype_name)
        tensor = torch.empty(shape, dtype=dtype)
        raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        view = memoryview(raw.numpy()).cast("B")
        try:
            self._file.seek(self.header.data_start + begin)
            done = 0
            while done < end - begin:
                got = self._file.readinto(view[done:])
                if not got:
                    break
                done += got
        except OSError as exc:
            raise ModelLoadError(f"{self.path.name}: cannot read tensor {_short(name)} ({exc.strerror or exc})") \
                from None
        if done != end - begin:
            raise ModelLoadError(f"{self.path.name}: the file ended inside tensor {_short(name)}; it was cut "
                                 "short or changed while loading")
        return tensor  # the format is little-endian, as every machine PyTorch runs on

    def read_all(self) -> dict[str, torch.Tensor]:
        return {name: self.get(name) for name in self.shapes}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
