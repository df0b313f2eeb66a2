"""Cold diffusion's degradations D(x0, s) (Bansal et al. 2022, "Cold Diffusion: Inverting Arbitrary Image
Transforms Without Noise", §3): deterministic operators with D(x0, 0) = x0 whose severity grows with the step
s = 0 … T. Each is linear in x0 (the property Algorithm 2's argument uses, §3.3) and differentiable, written once
and used by training, the samplers and the tests alike.

- blur: Gaussian blur of growing width σ_s, applied as the heat equation in the DCT-II basis (reflecting borders,
  §4.1's Gaussian blur), so a cosine of frequency ω is scaled by exactly exp(−ω²σ_s²/2); at s = T every
  frequency but the constant one is gone: each channel is its mean, the paper's "blur to a single colour" (§5.1).
- mask: pixel masking with a growing mask (§4.1, inpainting). Pixels of the region (a painted mask, or the whole
  image) go to 0 in the order of an `order` field: the deepest first, the region's edge last, so at s = T the
  whole region is 0 and outside it nothing ever changes.
- down: 2× downsampling steps (§4.1, super-resolution): average pooling to 64/2^k px, shown by nearest upsampling;
  T = 2·log2(64) steps, the odd ones a linear blend of two neighbouring levels, so the last is the channel mean.

Images are (B, C, H, W) in [−1, 1]; s is an int or a (B,) integer tensor. Imports no torch at module level (the
model list and the sampler table read DEGRADATIONS before torch loads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import torch

Steps = Union[int, "torch.Tensor"]

BLUR_SIGMA_MIN = 0.5  # px, σ_1: a barely visible blur
BLUR_SIGMA_MAX = 40.0  # px, σ_{T−1}: the lowest frequency is down to 8 % (exp(−(π/64)²·40²/2))
DEFAULT_STEPS = {"blur": 40, "mask": 32, "down": 12}  # T per kind; the model file records its own
COLD_MODEL_LABELS = {"cold-blur": "Cold diffusion: blur", "cold-mask": "Cold diffusion: masking (inpaints)",
                     "cold-down": "Cold diffusion: downsampling"}


@dataclass(frozen=True)
class Degradation:
    kind: str  # "blur" | "mask" | "down"
    steps: int  # T: D(·, T) is the fully degraded image
    size: int = 64  # image side, px

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_STEPS:
            raise ValueError(f"unknown degradation {self.kind!r}")
        if self.kind == "down" and self.steps != 2 * round(math.log2(self.size)):
            raise ValueError(f"down has T = 2·log2(size) = {2 * round(math.log2(self.size))} steps")

    def __call__(self, x0: torch.Tensor, s: Steps, order: torch.Tensor | None = None) -> torch.Tensor:
        """D(x0, s). `order` (B or 1, 1, H, W) is the mask kind's masking order (`mask_order`); None = whole image."""
        import torch

        s = _per_image(s, x0)
        if self.kind == "blur":
            return self._blur(x0, s)
        if self.kind == "mask":
            return x0 * (1 - self.mask(s, order if order is not None else whole_order(x0)))
        return self._down(x0, s)

    # ---- blur: heat equation in the DCT-II basis --------------------------------------------------------------

    def blur_sigma(self, s: int) -> float:
        """σ_s in px for 1 ≤ s ≤ T − 1, geometric from BLUR_SIGMA_MIN to BLUR_SIGMA_MAX (s = 0: none, s = T: ∞)."""
        if s <= 0:
            return 0.0
        if s >= self.steps:
            return math.inf
        if self.steps == 2:
            return BLUR_SIGMA_MIN
        return BLUR_SIGMA_MIN * (BLUR_SIGMA_MAX / BLUR_SIGMA_MIN) ** ((s - 1) / (self.steps - 2))

    def blur_gain(self, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) factor on each DCT coefficient: exp(−(ω_u² + ω_v²)·σ_s²/2), ω_k = πk/N; at s = T only (0, 0)."""
        import torch

        n = like.shape[-1]
        omega = (math.pi * torch.arange(n, dtype=torch.float64) / n) ** 2
        squared = omega[:, None] + omega[None, :]
        sigma = torch.tensor([self.blur_sigma(int(v)) for v in s.tolist()], dtype=torch.float64)
        finite = torch.where(torch.isinf(sigma), torch.zeros_like(sigma), sigma)
        gain = torch.exp(-squared[None] * finite[:, None, None] ** 2 / 2)
        dc_only = torch.zeros_like(squared)
        dc_only[0, 0] = 1
        gain = torch.where(torch.isinf(sigma)[:, None, None], dc_only[None], gain)
        return gain[:, None].to(device=like.device, dtype=like.dtype)

    def _blur(self, x0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        c = dct_matrix(x0.shape[-1], x0.device, x0.dtype)
        coefficients = c @ x0 @ c.T  # separable 2-D DCT-II, orthonormal
        return c.T @ (coefficients * self.blur_gain(s, x0)) @ c

    # ---- mask: a growing mask over a region --------------------------------------------------------------------

    def mask(self, s: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """m_s (B, 1, H, W): 1 where pixel p is masked at step s, i.e. order(p) < s/T (order ≥ 1: never)."""
        level = (s.to(order.dtype) / self.steps).reshape(-1, 1, 1, 1)
        return (order < level).to(order.dtype)

    # ---- down: 2× average pooling per two steps ------------------------------------------------------------------

    def _down(self, x0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        import torch

        levels = [pooled(x0, 2**k) for k in range(self.steps // 2 + 1)]
        out = torch.empty_like(x0)
        for i, step in enumerate(s.tolist()):
            k, odd = divmod(int(step), 2)
            out[i] = levels[k][i] if not odd else (levels[k][i] + levels[k + 1][i]) / 2
        return out


def shipped_cold_models() -> dict[str, str]:
    """Built-in cold model name → label, for the model files present in resources/cold/ (no torch: the app's model
    list reads it)."""
    from ..resources import resources_dir

    folder = resources_dir() / "cold"
    return {spec: label for spec, label in COLD_MODEL_LABELS.items() if (folder / f"{spec}.safetensors").is_file()}


def _per_image(s: Steps, x0: torch.Tensor) -> torch.Tensor:
    import torch

    if isinstance(s, int):
        return torch.full((x0.shape[0],), s, dtype=torch.long)
    s = s.reshape(-1).to("cpu", torch.long)
    return s.expand(x0.shape[0]) if s.numel() == 1 else s


def dct_matrix(n: int, device=None, dtype=None) -> torch.Tensor:
    """Orthonormal DCT-II: C[k, i] = √(2/N)·cos(π(i + ½)k/N), row 0 scaled by 1/√2; C·Cᵀ = I."""
    import torch

    i = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c.to(device=device, dtype=dtype or torch.float32)


def pooled(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average over factor×factor blocks, repeated back to full size (nearest upsampling)."""
    import torch.nn.functional as F

    if factor == 1:
        return x
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")


def mask_order(region: torch.Tensor) -> torch.Tensor:
    """The masking order of a region (B, 1, H, W), 1 = inside: 1 − d(p)/d_max inside, where d is the chessboard
    distance to the nearest pixel outside (counted in 3×3 erosions, the image border counting as outside); 2
    outside, so never masked. The deepest pixels go first (order 0 < 1/T), the edge last (order ≤ 1 − 1/d_max)."""
    import torch
    import torch.nn.functional as F

    inside = (region > 0.5).to(torch.float32)
    depth = torch.zeros_like(inside)
    current = inside
    while bool(current.any()):
        depth = depth + current
        current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1), value=0.0), 3, stride=1)  # erosion
    deepest = depth.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    order = torch.where(inside > 0, 1 - depth / deepest, torch.full_like(depth, 2.0))
    return order.to(region.dtype)


def whole_order(like: torch.Tensor) -> torch.Tensor:
    import torch

    return mask_order(torch.ones_like(like[:1, :1]))
