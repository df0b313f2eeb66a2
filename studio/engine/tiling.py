"""Tiled VAE encode/decode for images too large to convert in one piece, and when to use it.

The image (or latent) is covered by overlapping tiles; each tile is converted on its own and the results are
blended with weights that are 0 within a margin of every tile edge that lies inside the image, rise linearly
across the middle of the overlap, and are 1 elsewhere; the output is Σ wᵢ·yᵢ / Σ wᵢ. So:

- no seams: every transition is a linear cross-fade over half the overlap;
- pixels near a cut (where a tile lacks its neighbours' context) never contribute, so for any layer stack whose
  receptive field fits inside the margin the tiled result equals the untiled one exactly (tested).

The VAE is not that local: GroupNorm statistics and the mid-block attention see only one tile, so colours can
differ slightly from an untiled decode (the same trade-off as diffusers' `enable_vae_tiling`; docs/numerics.md);
large overlaps keep tiles' statistics alike and the cross-fade hides what differs.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch

from . import memory
from .vae import AutoencoderKL

# SD defaults (downsampling factor 8): 512 px tiles overlapping by 128 px, as diffusers' tiling (docs/numerics.md)
DECODE_TILE = 64  # latent pixels per tile side
DECODE_OVERLAP = 16  # latent pixels shared by neighbouring tiles
ENCODE_TILE = 512  # image pixels
ENCODE_OVERLAP = 128


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length), neighbours sharing at least `overlap`,
    spread evenly, each start a multiple of `align`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    starts = []
    for i in range(count):
        s = (round(i * last / (count - 1)) // align) * align
        starts.append(min(s, last - last % align))
    if starts[-1] + tile < length:  # alignment left the end uncovered: one more tile flush with it
        starts.append(last)
    return sorted(set(starts))


def _ramp(size: int, margin: int, fade: int, start_cut: bool, end_cut: bool, device: torch.device) -> torch.Tensor:
    """1-D weights over a tile side: 0 for `margin`, linear rise over `fade`, 1 …, mirrored at the far end;
    only at sides that are cuts (inside the image), an image border keeps weight 1."""
    pos = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    w = torch.ones(size, dtype=torch.float32, device=device)
    if fade > 0:
        if start_cut:
            w = torch.minimum(w, ((pos - margin) / fade).clamp(0, 1))
        if end_cut:
            w = torch.minimum(w, ((size - pos - margin) / fade).clamp(0, 1))
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale: float,
    align: int = 1,
) -> torch.Tensor:
    """Apply `fn` (B, C, h, w) → (B, C', h·scale, w·scale) over overlapping tiles of `x` and blend the results.

    `tile` and `overlap` are in input pixels; starts are multiples of `align` (the encoder's downsampling factor,
    so that every tile maps onto whole latent pixels)."""
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    height, width = x.shape[-2:]
    ys = tile_starts(height, tile, overlap, align)
    xs = tile_starts(width, tile, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x)
    out: torch.Tensor | None = None
    total: torch.Tensor | None = None
    margin = max(0, int(overlap * scale) // 4)  # a quarter of the overlap is never used at a cut ...
    fade = max(1, int(overlap * scale) // 2)  # ... the middle half cross-fades
    for y0 in ys:
        for x0 in xs:
            piece = fn(x[..., y0 : y0 + tile, x0 : x0 + tile]).float()
            th, tw = piece.shape[-2:]
            oy, ox = round(y0 * scale), round(x0 * scale)
            if out is None:
                out = torch.zeros((*piece.shape[:-2], round(height * scale), round(width * scale)),
                                  dtype=torch.float32, device=piece.device)
                total = torch.zeros(out.shape[-2:], dtype=torch.float32, device=piece.device)
            wy = _ramp(th, margin, fade, y0 > 0, y0 + tile < height, piece.device)
            wx = _ramp(tw, margin, fade, x0 > 0, x0 + tile < width, piece.device)
            weight = wy[:, None] * wx[None, :]
            out[..., oy : oy + th, ox : ox + tw] += piece * weight
            total[oy : oy + th, ox : ox + tw] += weight
            del piece
    assert out is not None and total is not None
    return out / total.clamp_min(1e-8)


def decode_tiled(vae: AutoencoderKL, z: torch.Tensor, tile: int = DECODE_TILE, overlap: int = DECODE_OVERLAP) -> torch.Tensor:
    """Unscaled latent → image, tile by tile (tile/overlap in latent pixels)."""
    return tiled_apply(vae.decode, z, tile=tile, overlap=overlap, scale=vae.downsample_factor)


def encode_moments_tiled(
    vae: AutoencoderKL, image: torch.Tensor, tile: int = ENCODE_TILE, overlap: int = ENCODE_OVERLAP
) -> torch.Tensor:
    """Image → the encoder's moments (mean ‖ log-variance), tile by tile (tile/overlap in image pixels)."""
    f = vae.downsample_factor

    def moments(x: torch.Tensor) -> torch.Tensor:
        return vae.quant_conv(vae.encoder(x))

    return tiled_apply(moments, image, tile=tile, overlap=overlap, scale=1 / f, align=f)


# -- when to tile -------------------------------------------------------------------------------------------------

def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`, or None when it cannot be told. On the CPU the least of the
    kernel's MemAvailable, the room left under this process's cgroup memory limit and under `ulimit -v`
    (RLIMIT_AS): whichever is hit first ends the process or the allocation."""
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free + cached)
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        if device.type == "cpu":
            limits = [v for v in (_meminfo_available(), _cgroup_room(), _address_space_room()) if v is not None]
            return max(0, min(limits)) if limits else None
    except (RuntimeError, AttributeError, OSError, ValueError):
        return None
    return None


def _meminfo_available() -> int | None:
    if not os.path.exists("/proc/meminfo"):
        return None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is not a number


def _cgroup_room() -> int | None:
    """Limit minus usage of the cgroup this process sees as its root (v2 `memory.max`, v1 `limit_in_bytes`)."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            return limit - usage
    return None


def _address_space_room() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    return None


def decode_bytes(vae: AutoencoderKL, latent_shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> int:
    """Peak memory of an untiled decode (memory.py walks the decoder's layers)."""
    device = next(vae.parameters()).device
    return memory.decode_bytes(vae.config, latent_shape[-2:], latent_shape[0], dtype, device)


def encode_bytes(vae: AutoencoderKL, image_shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> int:
    device = next(vae.parameters()).device
    return memory.encode_bytes(vae.config, image_shape[-2:], image_shape[0], dtype, device)


def decode_tiled_bytes(vae: AutoencoderKL, latent_shape: torch.Size | tuple[int, ...], dtype: torch.dtype,
                       tile: int = DECODE_TILE) -> int:
    """Peak memory of a tiled decode: one tile's decode plus the float32 picture and weights being blended."""
    b, _, h, w = latent_shape
    f = vae.downsample_factor
    one = decode_bytes(vae, (b, vae.config.z_channels, min(h, tile), min(w, tile)), dtype)
    return one + b * (vae.config.out_channels + 1) * (h * f) * (w * f) * 4


def should_tile(needed: int, device: torch.device, *, headroom: float = 0.8) -> bool:
    free = available_memory(device)
    return free is not None and needed > headroom * free


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text


class OutOfMemory(RuntimeError):
    """Out of memory even after the fallbacks; the message (which says "out of memory") is for the user."""


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
