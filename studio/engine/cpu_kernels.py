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
step (SD1.5 shape, 256 px, 2 threads, interleaved). The packed copies cost one more copy of the weights in RAM, so
packing is skipped when memory is short.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .devices import cpu_runs_bf16_natively
from .tiling import available_memory

DISABLE_ENV = "STUDIO_NO_CPU_PREPACK"  # set to 1 to turn the packed kernels off


PACKED_DTYPES = (torch.float32, torch.bfloat16)


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


def prepack_for_cpu(model: nn.Module, *, headroom: float = 0.5) -> int:
    """Swap the model's Linear/Conv2d modules to the packed kind; the number swapped (0 if it was not done:
    turned off, not all float32 (or all bfloat16 on a CPU that runs it natively) on the CPU, no oneDNN, or less
    free memory than `headroom` of the weights needs)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return 0
    weights = [m.weight for m in model.modules() if type(m) in _SWAPS]
    dtypes = {w.dtype for w in weights}
    if not weights or any(w.device.type != "cpu" for w in weights) or len(dtypes) != 1:
        return 0
    (dtype,) = dtypes
    if dtype not in PACKED_DTYPES or (dtype == torch.bfloat16 and not cpu_runs_bf16_natively()):
        return 0
    need = sum(w.numel() * w.element_size() for w in weights)
    free = available_memory(torch.device("cpu"))
    if free is not None and need > headroom * free:
        return 0
    if not kernels_work(dtype):
        return 0
    count = 0
    for module in model.modules():
        if type(module) in _SWAPS:
            module.__class__ = _SWAPS[type(module)]
            count += 1
    return count

