"""Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) read without running any of their code.

A pickle can name any importable callable to be called while it loads (docs/checkpoints.md, "Pickle checkpoints"),
so these files are only
ever opened with torch's weights-only unpickler, which builds tensors and plain containers and refuses the rest.
Some old SD `.ckpt` files also carry training metadata (PyTorch Lightning callback objects, numpy scalars): those
names are bound to an inert stand-in that accepts anything and does nothing, so the weights still load. Anything
else the file asks for is refused with the names it asked for, found by reading the pickle's opcodes (never by
executing them). Only the `state_dict` tensors are kept.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .archives import ModelLoadError
from .files import FileProblem, check_regular, open_regular, signature

# Pickle bytes read by our own opcode scans (never executed). A legacy SD checkpoint's pickles, before the raw
# tensor data, are a few hundred KB; scanning is pure Python, so the cap also bounds its time.
MAX_SCAN_BYTES = 8 * 2**20
LEGACY_PICKLES = 5  # torch's legacy format: magic number, protocol, sys info, the object, storage keys
MAX_ZIP_MEMBERS = 100_000


class _Inert:
    """Stands in for a benign class or function a training checkpoint names (a Lightning callback, a numpy
    scalar): accepts anything, does nothing, holds nothing. Only `state_dict` tensors are kept anyway."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "numpy.", "argparse.Namespace",
                   "omegaconf.", "_codecs.encode", "collections.defaultdict")


def _is_inert_metadata(global_name: str) -> bool:
    return global_name.startswith(_INERT_PREFIXES)


def check_zip(path: Path) -> None:
    """A zip checkpoint's directory checked before any member is read: PyTorch stores its members uncompressed, so
    a member (or all of them together) declaring more bytes than the file holds is a zip bomb or a damaged file;
    either way nothing of it is decompressed."""
    size = path.stat().st_size
    try:
        with open_regular(path, "model file") as f, zipfile.ZipFile(f) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint, truncated or corrupt "
                             f"({_short(str(exc))})") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise ModelLoadError(f"{path.name}: a zip with {len(members):,} members is not a PyTorch checkpoint")
    declared = sum(m.file_size for m in members)
    if declared > size or any(m.file_size > size for m in members):
        raise ModelLoadError(f"{path.name}: refused: its zip members declare {declared / 2**20:,.0f} MiB "
                             f"uncompressed in a {size / 2**20:,.1f} MiB file (a zip bomb, or not a PyTorch "
                             "checkpoint)")


def check_legacy_pickles(path: Path) -> None:
    """The pickles a legacy (non-zip) checkpoint starts with, parsed opcode by opcode from memory before torch
    reads the file: a length field that runs past the data (a 5-byte file can ask the unpickler for a 2.6 GB
    string) or a stream that is no pickle at all is refused here, with nothing allocated for it."""
    with open_regular(path, "model file") as f:
        head = f.read(MAX_SCAN_BYTES + 1)
    data = head[:MAX_SCAN_BYTES]
    stream = io.BytesIO(data)
    for _ in range(LEGACY_PICKLES):
        if stream.tell() == len(data):  # a plain pickle ends here: torch.load and the scan below say what it is
            return
        try:
            for _opcode in pickletools.genops(stream):
                pass
        except Exception as exc:  # pickletools' own errors on bytes that are not (or no longer) a pickle
            if len(head) > MAX_SCAN_BYTES and stream.tell() >= MAX_SCAN_BYTES - 1024:
                raise ModelLoadError(f"{path.name}: its pickled index is larger than {MAX_SCAN_BYTES // 2**20} MiB; "
                                     "not a checkpoint this app reads (convert it to .safetensors)") from None
            raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint, truncated or corrupt "
                                 f"({_short(str(exc)) or type(exc).__name__})") from None


def safe_torch_load(path: Path) -> Any:
    """torch.load with the weights-only unpickler; benign training metadata becomes `_Inert`; anything else that
    is not plain data is refused with a ModelLoadError naming it. Nothing from the file is ever run."""
    try:
        check_regular(path, "model file")
    except FileProblem as exc:
        raise ModelLoadError(str(exc)) from None
    if zipfile.is_zipfile(path):
        check_zip(path)
    elif not tarfile.is_tarfile(path):  # (the oldest torch.save wrote tar files; torch.load reads them itself)
        check_legacy_pickles(path)
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as exc:
        error = _weights_only_reason(str(exc))
    unsafe = _unsafe_globals(path)
    if unsafe and all(_is_inert_metadata(g) for g in unsafe):
        try:
            with torch.serialization.safe_globals([(_Inert, name) for name in unsafe]):
                return _torch_load(path)
        except pickle.UnpicklingError as exc:
            error = _weights_only_reason(str(exc))
    refused = [g for g in unsafe if not _is_inert_metadata(g)]
    if not refused:
        raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint, truncated or corrupt ({error})")
    raise ModelLoadError(
        f"{path.name}: refused to load: the file asks to run code or build objects while loading "
        f"({', '.join(refused)[:300]}). Only plain tensors are ever loaded from pickle files; "
        "get a .safetensors version of this model"
    )


def _torch_load(path: Path) -> Any:
    try:
        if path.name.lower().endswith(".safetensors"):  # torch.load goes by that name alone: hand it the bytes
            with open_regular(path, "model file") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError, TypeError, MemoryError, RecursionError, OverflowError, struct.error) as exc:
        # what the unpickler raises on damaged bytes: a size read from them may ask for more memory than exists
        raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint, truncated or corrupt "
                             f"({_short(str(exc)) or type(exc).__name__})") from None


def _weights_only_reason(message: str) -> str:
    m = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", message, re.DOTALL)
    return _short(m.group(1) if m else message)


def _unsafe_globals(path: Path) -> list[str]:
    """What the pickle names beyond plain data (callables, classes), found by reading its opcodes, never by
    executing them."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # a damaged archive: read the pickle ourselves
            pass
        try:  # member sizes were checked against the file's (check_zip): nothing here can balloon
            with zipfile.ZipFile(path) as archive:
                streams = [archive.read(n)[:MAX_SCAN_BYTES] for n in archive.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError, NotImplementedError, RuntimeError):
            return []
    else:
        try:  # the pickles come first in torch's legacy format; raw storage bytes follow
            with open_regular(path, "model file") as f:
                streams = [f.read(MAX_SCAN_BYTES)]
        except (OSError, FileProblem):
            return []
    names: list[str] = []
    for data in streams:
        names += _pickle_globals(data)
    plain = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")
    return list(dict.fromkeys(n for n in names if not n.startswith(plain)))


def _pickle_globals(data: bytes) -> list[str]:
    """Module.name of every GLOBAL / STACK_GLOBAL in `data`, which may hold several pickles in a row (torch's
    legacy format) followed by raw bytes; reading stops at the first thing that is not a pickle opcode."""
    names: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        pushed: list[object] = []  # what each opcode pushed, strings kept (enough to resolve STACK_GLOBAL)
        memo: dict[object, object] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(pushed) >= 2:
                    names.append(f"{pushed[-2]}.{pushed[-1]}")
                elif name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                else:
                    pushed.append(arg if isinstance(arg, str) else None)
        except Exception:  # end of the pickles (tensor data follows) or a damaged stream
            break
    return names


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) < 200 else text[:197] + "..."


def state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: `state_dict` when it wraps one (Lightning), else the mapping itself."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name}: holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path.name}: holds no tensors")
    return tensors


class PickleArchive:
    """A pickle checkpoint loaded weights-only. Zip files are memory-mapped, so `get` returns views of the mapping
    (`fresh` is False: materialize copies them, and the file is checked unchanged before each read)."""

    fresh = False

    def __init__(self, path: Path):
        self.path = path
        before = path.stat()
        self.tensors = state_dict_of(safe_torch_load(path), path)
        self.shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}
        self.files = [(path, signature(before))]

    def get(self, name: str) -> torch.Tensor:
        try:
            now = signature(self.path.stat())
        except OSError:
            now = None
        if now != self.files[0][1]:
            raise ModelLoadError(f"{self.path.name}: the file changed on disk while it was being loaded; "
                                 "load it again once it is written")
        return self.tensors[name]

    def close(self) -> None:
        self.tensors.clear()
