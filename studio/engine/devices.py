"""Device and precision choice. Nothing here assumes CUDA: MPS and the CPU are first-class."""

from __future__ import annotations

import torch

from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for, but this torch build sees no CUDA GPU")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("device 'mps' was asked for, but Metal (MPS) is not available here")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; expected auto, cpu, cuda or mps")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # Half precision is the point of a GPU; on the CPU fp16 kernels are slow or missing (docs/numerics.md).
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; expected auto, fp32, fp16 or bf16")
    return DTYPES[name]


def available_devices() -> list[str]:
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names
