"""Packed CPU weights kept on disk, so that a second start maps them instead of reading and packing again (#19).

Engine.prepare packs every convolution and linear for the picture's size (cpu_kernels.py): for SD1.5 in fp32 that
is 3.2 GiB of reordering, 2.9–3.3 s on two threads, after reading 4.3 GB of weights. The packs are oneDNN tensors,
opaque to torch's public API, but their bytes and their memory descriptor can be read out
(`torch.ops.mkldnn.data_ptr`, `_nbytes`, `_get_mkldnn_serialized_md`), and torch's own ahead-of-time runtime makes
such a tensor from bytes and a descriptor without reordering (`aoti_torch_create_tensor_from_blob_v2`, the C entry
point AOTInductor's compiled models use for their packed constants). So: after the first packing pass for a model
and a size, every pack goes into one file; the next start loading for that size does not read those layers'
weights from the model file at all (materialize.py, `weights_to_skip`), maps the entry read-only and builds each
pack over its mapped bytes. Measured on SD1.5's shape at 256 px, fp32, 2 threads: a start (load and prepare) of
1.8 s against 8.5–14 s, the same pictures bit for bit (docs/numerics.md, "Packs on disk").

What decides an entry (its folder name is a hash of these): the model's files (path, size, modification time),
its architecture, the precision, the picture's latent size and CFG batch, torch's version and oneDNN's, and the
CPU (oneDNN picks layouts for the instruction set it finds). An entry is checked as it is read (every pack's size
against the file; three layers' values against the file's, which are read for that) and dropped if anything is
off; the model file is then read whole and packed as before. The two most recently used entries are kept (an
SD1.5 entry is 3.8 GB in fp32). Models under MIN_BYTES of packed weights (the built-in model: milliseconds of
packing) get no entry. STUDIO_NO_PACK_CACHE=1 turns the cache off. Where torch lacks the entry points (older
versions) nothing is cached.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import mmap
import os
import platform
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import cpu_kernels
from .cpu_kernels import _key, _PackedWeight
from .user_cache import cache_dir

log = logging.getLogger(__name__)

DISABLE_ENV = "STUDIO_NO_PACK_CACHE"
FORMAT_VERSION = 1  # bump when what is written changes: older entries are then not read
MIN_BYTES = 256 * 2**20  # packing less than this takes well under a second: not worth a file
ENTRIES_KEPT = 2
ALIGN = 4096  # each pack starts on a page: oneDNN wants aligned weights, and a page is aligned for every ISA
FOLDER = "cpu-packs"
INDEX, BLOB = "index.json", "packs.bin"


@functools.lru_cache(maxsize=1)
def _shim():
    """torch's C entry points for making a oneDNN tensor from bytes, or None where this torch lacks them."""
    try:
        for name in ("data_ptr", "_nbytes", "_get_mkldnn_serialized_md"):  # reading a pack out (store)
            getattr(torch.ops.mkldnn, name)
        torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr  # noqa: B018  (the handle to tensor step of restore)
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / _library_name()))
        create = library.aoti_torch_create_tensor_from_blob_v2
        codes = {}
        for name in ("aoti_torch_dtype_float32", "aoti_torch_dtype_bfloat16", "aoti_torch_device_type_cpu",
                     "aoti_torch_layout__mkldnn"):
            function = getattr(library, name)
            function.restype = ctypes.c_int32
            codes[name] = function()
    except (AttributeError, OSError, RuntimeError):
        return None
    create.restype = ctypes.c_int32
    create.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
        ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int32,
        ctypes.POINTER(ctypes.c_uint8), ctypes.c_int64,
    ]
    capsule = ctypes.pythonapi.PyCapsule_New
    capsule.restype = ctypes.py_object
    capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    dtypes = {torch.float32: codes["aoti_torch_dtype_float32"], torch.bfloat16: codes["aoti_torch_dtype_bfloat16"]}
    return create, capsule, dtypes, codes["aoti_torch_device_type_cpu"], codes["aoti_torch_layout__mkldnn"]


def _library_name() -> str:
    system = platform.system()
    return {"Darwin": "libtorch_cpu.dylib", "Windows": "torch_cpu.dll"}.get(system, "libtorch_cpu.so")


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") in ("", "0") and _shim() is not None


def _packed_modules(model: nn.Module) -> list[tuple[str, _PackedWeight]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _PackedWeight)]


def _cpu_identity() -> str:
    """What oneDNN's layout choice depends on: the processor and its instruction sets."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(dict.fromkeys(wanted))  # the first core's lines (every core repeats them)
    except OSError:
        return platform.processor() + platform.machine()


def entry_key(files, config, dtype: torch.dtype, shape: tuple[int, ...]) -> str | None:
    """The entry's name for a model read from `files` ((path, signature) pairs) with `config`, packed in `dtype`
    for `shape` (CFG batch, latent height, latent width); None for a model without files (built in code: nothing
    to key on)."""
    files = [list(map(str, entry)) for entry in files]
    if not files:
        return None
    # what the UNet's output is taken for (ε or v) is set after the weights are read and does not change them
    config = dataclasses.replace(config, prediction="epsilon")
    text = json.dumps([FORMAT_VERSION, files, config.to_json(), str(dtype), list(shape), torch.__version__,
                       torch.backends.mkldnn.is_available(), _cpu_identity()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def latent_shape(model, width: int, height: int) -> tuple[int, int, int]:
    """What Engine.prepare packs for: a CFG batch of latents for `width`×`height` pictures (0: the model's own)."""
    config, factor = model.config, model.downsample_factor
    return 2, (height or config.default_size) // factor, (width or config.default_size) // factor


def _entry(model, shape) -> Path | None:
    dtypes = {m._raw_weight().dtype for _, m in _packed_modules(model)}
    if len(dtypes) != 1:
        return None
    key = entry_key(getattr(model, "source_files", ()), model.config, dtypes.pop(), shape)
    return None if key is None else cache_dir() / FOLDER / key


def _checked(count: int) -> list[int]:
    """The layers whose cached values are compared with the file's as an entry is read: first, middle, last."""
    return sorted({0, count // 2, count - 1})


# -- loading without the packed layers' weights -------------------------------------------------------------------

_plan = threading.local()


@contextmanager
def loading_for(width: int | None, height: int = 0) -> Iterator[None]:
    """Inside, a model file read for the CPU (materialize.py) with an entry for `width`×`height` does not read the
    weights that entry holds packed: the packs stand for them (`weights_to_skip`). Engine.prepare loads this way,
    so a second start reads 0.9 GB of an SD1.5 file instead of 4.3 GB. (A thread's own setting: the worker's.)
    `loading_for(None)`: every weight is read (the retry after an entry that did not fit)."""
    previous, _plan.size = getattr(_plan, "size", None), None if width is None else (width, height)
    try:
        yield
    finally:
        _plan.size = previous


def weights_to_skip(model, files, device: torch.device, dtype: torch.dtype) -> frozenset[str]:
    """The state-dict names of `model` (being built from `files`) not to read: those of the packed layers of the
    entry for the size being loaded for, but for the three whose values `restore` compares. Empty when there is no
    such entry (or no size, another device, a precision that is not packed, the cache off)."""
    size = getattr(_plan, "size", None)
    if size is None or device.type != "cpu" or not enabled() or not cpu_kernels.packs(dtype):
        return frozenset()
    key = entry_key(files, model.config, dtype, latent_shape(model, *size))
    if key is None:
        return frozenset()
    try:
        names = [entry["name"] for entry in
                 json.loads((cache_dir() / FOLDER / key / INDEX).read_text(encoding="utf-8"))["packs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset()  # no entry, or a damaged one: `restore` deletes the latter after a full read
    checked = {names[i] for i in _checked(len(names))} if names else set()
    model.unread_weights_for = latent_shape(model, *size)
    return frozenset(f"{name}.weight" for name in names if name not in checked)


def placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A weight that was not read: its shape and dtype, no memory (as cpu_kernels releases a packed weight)."""
    empty = torch.empty(shape, dtype=dtype)
    empty.untyped_storage().resize_(0)
    return empty


# -- reading ------------------------------------------------------------------------------------------------------

def restore(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Give every packed layer of a freshly loaded `model` its pack from the entry for `shape`, and release its
    plain weight as packing would; the number of layers restored (0: no entry, or one that did not fit, which is
    then deleted: the model packs as before)."""
    if not enabled():
        return 0
    folder = _entry(model, shape)
    modules = dict(_packed_modules(model))
    if folder is None or not (folder / INDEX).exists() or any(m._pack is not None for m in modules.values()):
        return 0
    try:
        count = _restore(folder, modules)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        log.warning("packed-weight cache entry %s not used: %s", folder.name, error)
        for module in modules.values():  # back to unpacked: the packing pass makes them
            module._pack, module._pack_layout = None, None
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    os.utime(folder / INDEX)  # most recently used
    return count


def _restore(folder: Path, layers: dict[str, _PackedWeight]) -> int:
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    entries = index["packs"]
    if not entries or any(entry["name"] not in layers for entry in entries):
        raise ValueError("it was written for other layers")
    modules = [(entry["name"], layers[entry["name"]]) for entry in entries]
    unread = [name for name, module in modules if module._raw_weight().untyped_storage().nbytes() == 0]
    if any(name in unread for name in (modules[i][0] for i in _checked(len(modules)))):
        raise ValueError("the layers compared with the file were not read")
    with open(folder / BLOB, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != index["bytes"] or size == 0:
            raise ValueError(f"{BLOB} has {size} bytes, the index says {index['bytes']}")
        # read-only and never written to: entries are replaced by renaming new files in, never rewritten in place
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    base = _address(mapping)
    create, capsule, dtypes, cpu, layout_code = _shim()
    packs = []
    for (name, module), entry in zip(modules, entries):
        weight = module._raw_weight()
        if list(weight.shape) != entry["shape"] or str(weight.dtype) != entry["dtype"]:
            raise ValueError(f"{name}: the pack is for another weight")
        if entry["offset"] % ALIGN or entry["offset"] + entry["nbytes"] > size:
            raise ValueError(f"{name}: the pack lies outside {BLOB}")
        sizes = entry["shape"]
        strides = [1] * len(sizes)
        for i in range(len(sizes) - 2, -1, -1):
            strides[i] = strides[i + 1] * sizes[i + 1]
        descriptor = bytes(entry["descriptor"])
        handle = ctypes.c_void_p()
        status = create(
            base + entry["offset"], len(sizes), (ctypes.c_int64 * len(sizes))(*sizes),
            (ctypes.c_int64 * len(sizes))(*strides), 0, dtypes[weight.dtype], cpu, 0, ctypes.byref(handle),
            layout_code, (ctypes.c_uint8 * len(descriptor)).from_buffer_copy(descriptor), len(descriptor),
        )
        if status != 0 or not handle.value:
            raise RuntimeError(f"{name}: torch could not make the pack")
        pack = torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr(capsule(handle.value, None, None))
        if torch.ops.mkldnn._nbytes(pack) != entry["nbytes"]:
            raise ValueError(f"{name}: the pack's layout does not match its size")
        packs.append(pack)
    # the values: three layers (first, middle, last) against the weights just read from the model's files
    for i in _checked(len(modules)):
        name, module = modules[i]
        weight = module._raw_weight()
        if not torch.equal(packs[i].to_dense().reshape(weight.shape), weight.detach()):
            raise ValueError(f"{name}: the cached pack holds other values than the model's file")
    if any(name in unread and not _releases(module) for name, module in modules):
        raise ValueError("a layer whose weight was not read would keep it plain")
    for (name, module), entry, pack in zip(modules, entries, packs):
        module._pack_source = mapping  # the bytes under the pack: kept mapped while the module holds it
        module._pack = ((0, 0), pack)
        module._pack_layout = tuple(entry["layout"]) if entry["layout"] is not None else None
        if _releases(module):
            module._release()
        else:  # a weight that stays plain: the pack is keyed to it as a fresh pack would be
            module._pack = (_key(module._raw_weight()), pack)
    return len(modules)  # layers the packing pass does not reach (the VAE's encoder) pack on their first call


def _releases(module: _PackedWeight) -> bool:
    """Whether packing gives `module`'s plain weight back (a model loaded for inference), as cpu_kernels does."""
    return module._release_after_pack and not module.training and not module._raw_weight().requires_grad


def _address(mapping: mmap.mmap) -> int:
    return int(np.frombuffer(mapping, dtype=np.uint8).ctypes.data)


# -- writing ------------------------------------------------------------------------------------------------------

_writers: list[threading.Thread] = []


def store(model: nn.Module, shape: tuple[int, ...]) -> threading.Thread | None:
    """Write `model`'s packs for `shape` to a new entry, in a thread of its own (SD1.5 fp32: 3.2 GiB, seconds
    of disk writes the first generation need not wait for). The thread holds the packs until it is done, so the
    model may go meanwhile; it is not a daemon, so a CLI run that ends first waits for it. None when there is
    nothing to write (no files, too small, already there, the cache off, too little disk). Only the layers that
    hold a pack are written (the packing pass does not reach the VAE's encoder, which packs when it first runs)."""
    if not enabled():
        return None
    folder = _entry(model, shape)
    if folder is None or (folder / INDEX).exists():
        return None
    # each pack with the mapped file it may lie in (a layer a restored entry left as it was): both stay alive
    # while the thread writes, whatever becomes of the model
    packs = [(name, module._pack[1], module._pack_layout, module._raw_weight(), module._pack_source)
             for name, module in _packed_modules(model) if module._pack is not None]
    if not packs:
        return None
    total = sum(torch.ops.mkldnn._nbytes(pack) for _, pack, *_ in packs)
    if total < MIN_BYTES:
        return None
    folder.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder.parent).free < 2 * total + 2**30:
        log.info("packed-weight cache: not enough free disk for %.1f GiB", total / 2**30)
        return None
    if _held is not None:  # a one-shot run writes it when its work is done (writes_held)
        _held.append((folder, packs))
        return None
    writer = threading.Thread(target=_write, args=(folder, packs), name="pack-cache-writer", daemon=False)
    writer.start()
    _writers.append(writer)
    return writer


_held: list | None = None


@contextmanager
def writes_held(announce=None) -> Iterator[None]:
    """Within the block, `store` keeps the entries it would write and the block's end writes them, in this thread:
    for a one-shot run (the CLI), whose process waits for the writing in any case. Beside the generation, the
    writer's slices on a busy core stall the whole OpenMP team each time: SD1.5's first fp32 start spent 55 s
    generating beside a 15.5 s write, against 42 s alone (docs/numerics.md, "The first start"). `announce(bytes)`
    is told before the writing starts. Nothing is written when the block fails or is interrupted."""
    global _held
    _held = held = []
    try:
        yield
    finally:
        _held = None
    if held and announce is not None:
        announce(sum(torch.ops.mkldnn._nbytes(pack) for _, packs in held for _, pack, *_ in packs))
    for folder, packs in held:
        _write(folder, packs, lowest_priority=False)


def wait_for_writes() -> None:
    """Block until every entry being written is complete (tests; a caller about to delete the cache)."""
    while _writers:
        _writers.pop().join()


def _write(folder: Path, packs: list, lowest_priority: bool = True) -> None:
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}-{threading.get_ident()}")
    if lowest_priority:
        _lowest_priority()
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        entries, offset = [], 0
        with open(partial / BLOB, "wb") as out:
            for name, pack, layout, weight, _ in packs:
                offset = -(-offset // ALIGN) * ALIGN
                nbytes = torch.ops.mkldnn._nbytes(pack)
                out.seek(offset)
                # straight from the pack's memory: a bytes copy first doubled the fresh memory the write touches
                out.write((ctypes.c_char * nbytes).from_address(torch.ops.mkldnn.data_ptr(pack)))
                entries.append({
                    "name": name, "offset": offset, "nbytes": nbytes, "shape": list(weight.shape),
                    "dtype": str(weight.dtype), "layout": list(layout) if layout is not None else None,
                    "descriptor": torch.ops.mkldnn._get_mkldnn_serialized_md(pack).tolist(),
                })
                offset += nbytes
            out.truncate(offset)
        (partial / INDEX).write_text(json.dumps({"bytes": offset, "packs": entries}), encoding="utf-8")
        if (folder / INDEX).exists():  # another process wrote it meanwhile
            return
        shutil.rmtree(folder, ignore_errors=True)
        partial.replace(folder)  # whole or not at all
        _evict(keep=folder)
    except OSError as error:
        log.warning("packed-weight cache entry not written: %s", error)
    finally:
        packs.clear()  # the packs may go now
        shutil.rmtree(partial, ignore_errors=True)


def _lowest_priority() -> None:
    """Let the generation that usually runs meanwhile have the cores: on two cores a writer at normal priority
    made SD1.5's first 2-step generation take 17.2 s instead of 8.2 (the kernel's copying into the page cache is
    CPU time). On Linux a thread's nice value is its own."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux: the writer runs at the process's priority
        pass


def _evict(keep: Path) -> None:
    """Keep the ENTRIES_KEPT most recently used entries (`keep` among them); stale partial folders go too."""
    entries = []
    for folder in keep.parent.iterdir():
        if ".partial-" in folder.name:  # a writer's, or one a killed process left: those go after a day
            if time.time() - folder.stat().st_mtime > 86400:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        index = folder / INDEX
        entries.append((index.stat().st_mtime if index.exists() else 0.0, folder))
    entries.sort(reverse=True)
    for _, folder in [e for e in entries if e[1] != keep][ENTRIES_KEPT - 1:]:
        shutil.rmtree(folder, ignore_errors=True)
