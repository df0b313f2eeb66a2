"""Faster float32 inference on the CPU: convolution and linear weights pre-packed for oneDNN.

Eager PyTorch hands each CPU convolution to oneDNN with the weight in plain (O, I, kH, kW) order, and oneDNN
reorders it into its blocked layout on every call; at SD's low-resolution levels (1280 channels at 8×8 and 4×4)
that reorder costs more than the arithmetic. Packing once and calling oneDNN's pointwise ops with the packed
weight is what torch.compile's CPU "freezing" does (inductor `mkldnn_fusion.py`); done here eagerly, it needs no
compiler. Measured on one Zen 4 core, float32: convolutions 1.3–4× faster, linears ~2×, same results to ~1e-6.

The swap keeps every parameter and name (a module's class changes, not its state), so state dicts, `.to()` and
strict loading are untouched. The fast path is taken only for float32 tensors on the CPU with autograd off;
anything else (CUDA, MPS, half precision, training) runs the stock forward. The packed copies cost one more
copy of the weights in RAM, so packing is skipped when memory is short.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .tiling import available_memory

DISABLE_ENV = "STUDIO_NO_CPU_PREPACK"  # set to 1 to turn the packed kernels off


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
    )


def _key(weight: torch.Tensor) -> tuple[int, int]:
    # a new tensor (`.to`, a reload) or an in-place edit invalidates the pack; inference tensors cannot be edited
    version = 0 if weight.is_inference() else weight._version
    return weight.data_ptr(), version


class PackedLinear(nn.Linear):
    _pack: tuple[tuple[int, int], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _usable(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        key = _key(self.weight)
        if self._pack is None or self._pack[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                rows = max(1, x.numel() // x.shape[-1])  # a hint for oneDNN's layout choice; any M works
                self._pack = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), rows))
        return torch.ops.mkldnn._linear_pointwise(x, self._pack[1], self.bias, "none", [], "")


class PackedConv2d(nn.Conv2d):
    _pack: tuple[tuple[int, int], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or not _usable(x, self.weight):
            return super().forward(x)
        key = _key(self.weight)
        if self._pack is None or self._pack[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    self.weight.detach().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation),
                    self.groups, list(x.shape),
                )
                self._pack = (key, packed)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._pack[1], self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "",
        )


_SWAPS = {nn.Linear: PackedLinear, nn.Conv2d: PackedConv2d}


def kernels_work() -> bool:
    """Whether this torch build has the oneDNN ops and they agree with the stock ones."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        lin, conv = PackedLinear(8, 4), PackedConv2d(3, 4, 3, padding=1)
        x, image = torch.randn(5, 8, generator=gen), torch.randn(1, 3, 6, 6, generator=gen)
        with torch.inference_mode():
            ok = torch.allclose(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5)
            ok = ok and torch.allclose(conv(image), F.conv2d(image, conv.weight, conv.bias, padding=1), atol=1e-5)
        return bool(ok)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def prepack_for_cpu(model: nn.Module, *, headroom: float = 0.5) -> int:
    """Swap the model's Linear/Conv2d modules to the packed kind; the number swapped (0 if it was not done:
    turned off, not float32 on the CPU, no oneDNN, or less free memory than `headroom` of the weights needs)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return 0
    weights = [m.weight for m in model.modules() if type(m) in _SWAPS]
    if not weights or any(w.device.type != "cpu" or w.dtype != torch.float32 for w in weights):
        return 0
    need = sum(w.numel() * w.element_size() for w in weights)
    free = available_memory(torch.device("cpu"))
    if free is not None and need > headroom * free:
        return 0
    if not kernels_work():
        return 0
    count = 0
    for module in model.modules():
        if type(module) in _SWAPS:
            module.__class__ = _SWAPS[type(module)]
            count += 1
    return count

