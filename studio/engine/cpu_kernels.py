"""Faster float32 inference on the CPU: convolution and linear weights pre-packed for oneDNN.

Eager PyTorch hands each CPU convolution to oneDNN with the weight in plain (O, I, kH, kW) order, and oneDNN
reorders it into its blocked layout on every call; at SD's low-resolution levels (1280 channels at 8×8 and 4×4)
that reorder costs more than the arithmetic. Packing once and calling oneDNN's pointwise ops with the packed
weight is what torch.compile's CPU "freezing" does (inductor `mkldnn_fusion.py`); done here eagerly, it needs no
compiler. Measured on one Zen 4 core, float32: convolutions 1.3–4× faster, linears ~2×, same results to ~1e-6.

The swap keeps every parameter and name (a module's class changes, not its state), so state dicts, `.to()` and
strict loading are untouched. The fast path is taken only for float32 tensors (and bfloat16 ones, on a CPU that
runs bf16 natively: "fast" precision, docs/numerics.md) on the CPU with autograd off; anything else (CUDA, MPS,
fp16, training, guidance gradients) runs the stock forward. Packed bf16 measured 0.70–0.83× the stock bf16 UNet
step (SD1.5 shape, 256 px, 2 threads, interleaved).

Each layer packs its weight on its first call, told the real input shape (packed blind, the small layers of the
built-in model got layouts that oneDNN reordered on every call). A model loaded for inference then gives back each
plain weight's memory, so its weights sit in RAM once; the plain values come back from the pack whenever something
reads them (`_PackedWeight`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .devices import cpu_runs_bf16_natively
from .tiling import available_memory

DISABLE_ENV = "STUDIO_NO_CPU_PREPACK"  # set to 1 to turn the packed kernels off


PACKED_DTYPES = (torch.float32, torch.bfloat16)


class _PackingPass(threading.local):
    active = False


_packing_pass = _PackingPass()


@contextmanager
def packing_pass() -> Iterator[None]:
    """Inside, a packed layer that would run its oneDNN kernel makes its pack for the input it is given and returns
    zeros of its output's shape instead, with no arithmetic. A model's forward on zeros inside this packs every
    layer for that input size at a fraction of a real call's cost, so a model can be made ready for a size when it
    loads rather than inside its first generation (`Engine.prepare`; docs/numerics.md, "Packing at load")."""
    previous, _packing_pass.active = _packing_pass.active, True
    try:
        yield
    finally:
        _packing_pass.active = previous


def is_packed(model: nn.Module) -> bool:
    """Whether `model` has layers swapped to the packed kind (prepack_for_cpu)."""
    return any(isinstance(m, _PackedWeight) for m in model.modules())


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in PACKED_DTYPES
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
    )


def _key(weight: torch.Tensor) -> tuple[int, int]:
    # a new tensor (`.to`, a reload) or an in-place edit invalidates the pack; inference tensors cannot be edited
    version = 0 if weight.is_inference() else weight._version
    return weight.data_ptr(), version


class _ReleasedParameters(dict):
    """A packed module's `_parameters` while its plain weight is released. Every way torch's Module API reads a
    parameter goes through here (attribute access, `parameters()`, `named_parameters()`, state dicts), and reading
    the weight gives it its plain values back first: nothing can read the emptied storage."""

    def __init__(self, owner: "_PackedWeight", parameters: dict):
        super().__init__(parameters)
        self.owner = owner

    def __getitem__(self, name):
        if name == "weight":
            self.owner.unpack()
        return dict.__getitem__(self, name)

    def get(self, name, default=None):
        return self[name] if name in self else default

    def items(self):
        self.owner.unpack()
        return dict.items(self)

    def values(self):
        self.owner.unpack()
        return dict.values(self)

    def __setitem__(self, name, value):
        if name == "weight":  # a new weight: the pack no longer holds its values
            self.owner.unpack()
            self.owner._pack = None
        dict.__setitem__(self, name, value)


class _PackedWeight:
    """What PackedLinear and PackedConv2d share: the packed weight, made once, and (for a model loaded for
    inference) the plain weight's memory given back while the pack holds the same values.

    A released weight keeps its Parameter, shape, dtype and device, but its storage is emptied; the module's
    parameter dict is swapped for `_ReleasedParameters`, so whatever reads the weight through the Module API
    (`.weight`, `parameters()`, `state_dict()`, `.to()`, `load_state_dict`, `.train()`, copying) gets the plain
    values back first. The forward reads the raw Parameter: the packed kernels need only its dtype and flags, and
    the stock ones (gradients, other dtypes) get a temporary plain copy."""

    _pack: tuple[tuple[int, int], torch.Tensor] | None = None
    _released = False  # the plain weight's storage is given back; the pack holds its values
    _release_after_pack = False  # set by prepack_for_cpu(release_dense=True)
    _pack_layout = None  # the `_layout_key` of the input the pack was made for
    _pack_source = None  # the mapped file a pack read from disk lies in (pack_cache.py), kept open while it is used

    def _make_pack(self, weight: torch.Tensor, example: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _raw_weight(self) -> nn.Parameter:
        return dict.__getitem__(self.__dict__["_parameters"], "weight")

    def _layout_key(self, example: torch.Tensor | None):
        """What of the input's shape the pack's layout depends on (None: nothing)."""
        return None

    def _packed(self, example: torch.Tensor | None = None) -> torch.Tensor:
        layout = self._layout_key(example) if example is not None else self._pack_layout
        if self._released:
            if layout != self._pack_layout:  # a new input size: the same values, repacked for it
                with torch.inference_mode(False), torch.no_grad():
                    self._pack = (self._pack[0], self._make_pack(self._plain_values(), example))
                self._pack_layout = layout
                self._pack_source = None  # a pack read from disk (pack_cache.py) is no longer used
            return self._pack[1]
        weight = self._raw_weight()
        key = _key(weight)
        if self._pack is None or self._pack[0] != key or layout != self._pack_layout:
            with torch.inference_mode(False), torch.no_grad():
                self._pack = (key, self._make_pack(weight.detach(), example))
            self._pack_layout, self._pack_source = layout, None
            if self._release_after_pack and not self.training and not weight.requires_grad:
                self._release()
        return self._pack[1]

    def _release(self) -> None:
        # The Parameter stays (optimizers, `model.device` and names hold on to it); its data becomes a tensor of the
        # same shape whose storage is empty, and the old storage goes when nothing else holds it (the file buffer
        # of a weight read without a cast, say, or a bigger buffer this weight is a view of).
        weight = self._raw_weight()
        placeholder = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)  # pages never touched
        placeholder.untyped_storage().resize_(0)
        weight.data = placeholder
        self.__dict__["_parameters"] = _ReleasedParameters(self, self.__dict__["_parameters"])
        self._released = True

    def _plain_values(self) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            return self._pack[1].to_dense().reshape(self._raw_weight().shape)

    def unpack(self) -> None:
        """Give the plain weight its values back (the pack stays valid for them)."""
        if not self._released:
            return
        weight = self._raw_weight()
        values = self._plain_values()
        weight.data = torch.empty_like(weight)
        with torch.inference_mode(False), torch.no_grad():
            weight.copy_(values)
        self.__dict__["_parameters"] = dict(dict.items(self.__dict__["_parameters"]))
        self._released = False
        self._pack = (_key(weight), self._pack[1])

    def _plain_weight(self) -> torch.Tensor:
        """The weight for the stock kernels: itself, or a temporary plain copy while it is released (a parameter
        that learns is brought back for good, so its gradient lands on it)."""
        weight = self._raw_weight()
        if not self._released:
            return weight
        if weight.requires_grad:
            self.unpack()
            return weight
        return self._plain_values()

    def _apply(self, fn, *args, **kwargs):
        self.unpack()
        self._pack = self._pack_source = None
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        if mode:  # training reads and writes the plain parameters
            self.unpack()
        return super().train(mode)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self._released and not keep_vars:  # a plain copy for the state dict; the module stays released
            for name, param in dict.items(self.__dict__["_parameters"]):
                if param is not None:
                    destination[prefix + name] = self._plain_values() if name == "weight" else param.detach()
            for name, buf in self._buffers.items():
                if buf is not None and name not in self._non_persistent_buffers_set:
                    destination[prefix + name] = buf.detach()
            return
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def __getstate__(self):
        self.unpack()
        state = self.__dict__.copy()
        state.pop("_pack", None)  # oneDNN's opaque tensors neither copy nor pickle; the copy packs afresh
        state.pop("_pack_source", None)  # nor does a mapped file (pack_cache.py)
        return state


class PackedLinear(_PackedWeight, nn.Linear):
    def _make_pack(self, weight: torch.Tensor, example: torch.Tensor | None) -> torch.Tensor:
        # the row count steers oneDNN's layout choice (the first call's rows; later calls may differ)
        rows = [max(1, example.numel() // example.shape[-1])] if example is not None else []
        return torch.ops.mkldnn._reorder_linear_weight(weight, *rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _usable(x, self._raw_weight()):
            return F.linear(x, self._plain_weight(), self.bias)
        if _packing_pass.active:
            self._packed(x)
            return x.new_zeros(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed(x), self.bias, "none", [], "")


class PackedConv2d(_PackedWeight, nn.Conv2d):
    def _layout_key(self, example: torch.Tensor | None):
        # oneDNN picks a convolution's weight layout for the input's spatial size; a pack made for another size is
        # reordered again inside every call (SD1.5's UNet packed at a 16×16 latent ran a 32×32 one 1.35–1.75× slower,
        # docs/numerics.md "CPU weights: packed once, held once"). The batch does not matter.
        return tuple(example.shape[-2:]) if example is not None else None

    def _make_pack(self, weight: torch.Tensor, example: torch.Tensor | None) -> torch.Tensor:
        # the first call's input shape: without it, oneDNN picked layouts it reordered on every call for small layers
        shape = [list(example.shape)] if example is not None else []
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups, *shape
        )

    def _output_size(self, x: torch.Tensor) -> tuple[int, int]:
        def side(i: int) -> int:
            reach = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            return (x.shape[2 + i] + 2 * self.padding[i] - reach) // self.stride[i] + 1

        return side(0), side(1)

    def _packable(self) -> bool:
        return self.padding_mode == "zeros" and not isinstance(self.padding, str)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packable() or not _usable(x, self._raw_weight()):
            return self._conv_forward(x, self._plain_weight(), self.bias)
        if _packing_pass.active:
            self._packed(x)
            return x.new_zeros(x.shape[0], self.out_channels, *self._output_size(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed(x), self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "",
        )


_SWAPS = {nn.Linear: PackedLinear, nn.Conv2d: PackedConv2d}


def kernels_work(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has the oneDNN ops for `dtype` and they agree with the stock ones."""
    if not torch.backends.mkldnn.is_available():
        return False
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 keeps 8 significant bits
    try:
        gen = torch.Generator().manual_seed(0)
        lin, conv = PackedLinear(8, 4).to(dtype), PackedConv2d(3, 4, 3, padding=1).to(dtype)
        x, image = torch.randn(5, 8, generator=gen).to(dtype), torch.randn(1, 3, 6, 6, generator=gen).to(dtype)
        with torch.inference_mode():
            ok = torch.allclose(lin(x).float(), F.linear(x, lin.weight, lin.bias).float(), atol=tolerance)
            stock = F.conv2d(image, conv.weight, conv.bias, padding=1).float()
            ok = ok and torch.allclose(conv(image).float(), stock, atol=tolerance)
        return bool(ok)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def packs(dtype: torch.dtype) -> bool:
    """Whether CPU weights of `dtype` are packed: float32, or bfloat16 on a CPU that runs it natively, unless
    STUDIO_NO_CPU_PREPACK is set."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_runs_bf16_natively())


def prepack_for_cpu(model: nn.Module, *, release_dense: bool = False, headroom: float = 0.5) -> int:
    """Swap the model's Linear/Conv2d modules to the packed kind (each packs its weight on its first call); the
    number swapped (0 if it was not done: turned off, not all float32 (or all bfloat16 on a CPU that runs it
    natively) on the CPU, or no oneDNN).

    release_dense: give each plain weight's memory back once its pack holds the values, so the weights sit in RAM
    once, not twice (a model loaded for inference: `loading.load_model`); memory grows by one layer at most while
    the first call packs. Without it, both copies stay, and packing is skipped when they would take more than
    `headroom` of the free memory."""
    weights = [m.weight for m in model.modules() if type(m) in _SWAPS]
    dtypes = {w.dtype for w in weights}
    if not weights or any(w.device.type != "cpu" for w in weights) or len(dtypes) != 1:
        return 0
    (dtype,) = dtypes
    if not packs(dtype):
        return 0
    need = sum(w.numel() * w.element_size() for w in weights)
    free = available_memory(torch.device("cpu"))
    if not release_dense and free is not None and need > headroom * free:
        return 0
    if not kernels_work(dtype):
        return 0
    count = 0
    for module in model.modules():
        if type(module) in _SWAPS:
            module.__class__ = _SWAPS[type(module)]
            # packed on its first call, told the real input shape: packed blind at load, the built-in model's small
            # layers got layouts oneDNN reorders on every call (a 64 px generation 4.5× slower; SD's were unaffected)
            module._release_after_pack = release_dense
            count += 1
    return count


def unpack(model: nn.Module) -> None:
    """Give every released weight of `model` its plain values back (before editing weights in place)."""
    for module in model.modules():
        if isinstance(module, _PackedWeight):
            module._release_after_pack = False
            module.unpack()


def parameter_count(model: nn.Module) -> int:
    """How many numbers the parameters hold, without bringing released weights back (`parameters()` would)."""
    return sum(p.numel() for m in model.modules() for p in dict.values(m._parameters) if p is not None)

