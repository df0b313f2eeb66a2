"""Device and precision choice. Nothing here assumes CUDA: MPS and the CPU are first-class."""

from __future__ import annotations

import torch

from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The CPU features that run bfloat16 matrix products natively (oneDNN picks AVX512-BF16's VDPBF16PS or AMX tiles);
# without them torch emulates bf16 through fp32 and it is slower than fp32 (docs/numerics.md).
BF16_CPU_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def cpu_runs_bf16_natively() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX (Intel since Cooper Lake / Sapphire Rapids, AMD since Zen 4)."""
    import torch.cpu

    for name in BF16_CPU_PROBES:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # an old build that declares the probe but cannot answer it
            continue
    return False


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
    if name == "openvino":  # the CPU, with the UNet on OpenVINO (openvino_unet.py); torch's side stays on the CPU
        from .openvino_unet import INSTALL_HINT, available

        if not available():
            raise UserError(f"device 'openvino' needs OpenVINO, which is not installed: {INSTALL_HINT}")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; expected auto, cpu, openvino, cuda or mps")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": fp16 on a GPU, exact fp32 on the CPU (the reference every test compares against). "fast": fp16 on
    a GPU, bf16 on a CPU that runs it natively (fp32 elsewhere), the VAE included (docs/numerics.md)."""
    if name in ("auto", "fast"):
        # Half precision is the point of a GPU; on the CPU fp16 kernels are slow or missing (docs/numerics.md).
        if device.type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if name == "fast" and cpu_runs_bf16_natively() else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; expected auto, fast, fp32, fp16 or bf16")
    return DTYPES[name]


def available_devices() -> list[str]:
    from .openvino_unet import available

    names = ["auto", "cpu"] + (["openvino"] if available() else [])
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names
