"""Universal guidance (Bansal et al. 2023, "Universal Guidance for Diffusion Models"): steer any sampler with any
differentiable loss ℓ on the predicted clean image, with no retraining.

Notation as in the paper and samplers.py: ᾱ = alpha_cumprod of the current level, ẑ0 = (z_t − √(1−ᾱ)·ε̂)/√ᾱ
(DDIM eq. 9). Three pieces, each a wrapper, never a change inside a sampler:

- forward guidance (their eq. 6): ε̃ = ε̂ + s(t)·∇_{z_t} ℓ(f(ẑ0)), the gradient through the UNet's ε̂ (and the VAE
  decoder when ℓ is on pixels), with s(t) = s·√(1−ᾱ_t) (the classifier-guidance scaling, Dhariwal & Nichol 2021
  Algorithm 2); `guide_denoiser` wraps the one denoiser contract.
- backward guidance (their eq. 7 and 9): Δz0 = argmin_Δ ℓ(f(ẑ0 + Δ)) by m steps of gradient descent from Δ = 0 with
  no gradient through the UNet, then ε̃ = ε̂ − √(ᾱ_t/(1−ᾱ_t))·Δz0, which moves ẑ0 to ẑ0 + Δz0 exactly.
- per-step self-recurrence (their Algorithm 1): after a step z_t → z_{t−1}, re-noise back to the level of z_t with
  fresh noise, z_t' = √(ᾱ_t/ᾱ_{t−1})·z_{t−1} + √(1 − ᾱ_t/ᾱ_{t−1})·n, and take the step again, k times in all;
  `recurrent_steps` wraps the step, driving any sampler of the table one step at a time.

The strength s of each guide weighs its loss, so forward and backward guidance read the same setting. Losses are
means over the pixels they look at: a strength means the same at every image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Sequence

import numpy as np

from .samplers import Step, draw_noise, predict_x0

if TYPE_CHECKING:
    import torch

    from .samplers import Denoiser, SamplerSpec
    from .schedules import NoiseLevel

GuideKind = Literal["colour", "reference", "keep"]
GuideMode = Literal["forward", "backward", "both"]
GUIDE_KINDS: tuple[GuideKind, ...] = ("colour", "reference", "keep")
GUIDE_MODES: tuple[GuideMode, ...] = ("forward", "backward", "both")
REFERENCE_VARIANTS = ("layout", "palette")
LAYOUT_POOL = 8  # "layout": compare 8×8-pixel block means (structure, not detail)
DEFAULT_STRENGTH: dict[str, float] = {"colour": 10.0, "reference": 10.0, "keep": 10.0}  # placeholder: tuned below

Objective = Callable[["torch.Tensor"], "torch.Tensor"]  # ẑ0 latent (1, C, h, w) → scalar loss


@dataclass(frozen=True)
class Guide:
    """One guidance function: a loss on the decoded x̂0 against a target picture, weighed by `strength`.

    colour: `image` is an RGBA hint (HxWx4 uint8): the hint colour where alpha > 0, nothing elsewhere;
            ℓ = alpha-weighted mean squared error between the (lightly blurred) decoded x̂0 and the hint.
    reference: `image` is any RGB picture (HxWx3 uint8); `variant` "layout" compares 8×8 block means (structure),
               "palette" each channel's mean and standard deviation (colours, style).
    keep: `image` is a mask (HxW float in [0, 1], 1 = keep) tying that region to the request's input image.
    """

    kind: GuideKind
    strength: float = 1.0
    image: np.ndarray | None = field(default=None, compare=False, repr=False)
    variant: str = "layout"

    def settings(self) -> dict:
        return {"kind": self.kind, "strength": self.strength, "variant": self.variant}


def guide_active(index: int, steps: int, fraction: float) -> bool:
    """Guidance runs on the first `fraction` of the steps (e.g. 0.7: the first 70 %); late steps only add detail."""
    return index < math.ceil(fraction * steps - 1e-9)


# -- the losses ------------------------------------------------------------------------------------------------------
def _blur(x: "torch.Tensor", radius: int) -> "torch.Tensor":
    """A box blur of (2·radius + 1)² pixels (edges averaged over what is inside): a hint is a colour, not a texture,
    so x̂0's fine detail is not asked to match it."""
    import torch.nn.functional as F

    if radius <= 0:
        return x
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def _as_unit(image: np.ndarray, device, size: tuple[int, int]) -> "torch.Tensor":
    """HxWxC uint8 → (1, C, H, W) float32 in [−1, 1] at `size` (H, W)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t.to(device)


def pixel_loss(guide: Guide, size: tuple[int, int], device, init_image: np.ndarray | None = None
               ) -> Callable[["torch.Tensor"], "torch.Tensor"]:
    """The guide's ℓ on a decoded image (1, 3, H, W) in [−1, 1] (unweighted)."""
    import torch
    import torch.nn.functional as F

    from .errors import UserError

    if guide.image is None:
        raise UserError(f"the {guide.kind} guide needs a picture")
    image = np.asarray(guide.image)
    if guide.kind == "colour":
        if image.ndim != 3 or image.shape[2] != 4:
            raise UserError("a colour hint is an RGBA picture: the hint colour where alpha > 0")
        target = _as_unit(image[..., :3], device, size)
        weight = _as_unit(image[..., 3:], device, size) * 0.5 + 0.5  # alpha in [0, 1]
        if float(weight.sum()) <= 0:
            raise UserError("the colour hint is empty: paint some colour on it")
        total = weight.sum() * 3

        def colour(x: torch.Tensor) -> torch.Tensor:
            return (weight * (_blur(x, 2) - target) ** 2).sum() / total

        return colour
    if guide.kind == "reference":
        target = _as_unit(image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, 2), device, size)
        if guide.variant == "palette":
            t_mean, t_std = target.mean(dim=(2, 3)), target.std(dim=(2, 3))

            def palette(x: torch.Tensor) -> torch.Tensor:
                return ((x.mean(dim=(2, 3)) - t_mean) ** 2).mean() + ((x.std(dim=(2, 3)) - t_std) ** 2).mean()

            return palette
        pooled = F.avg_pool2d(target, LAYOUT_POOL, ceil_mode=True)

        def layout(x: torch.Tensor) -> torch.Tensor:
            return ((F.avg_pool2d(x, LAYOUT_POOL, ceil_mode=True) - pooled) ** 2).mean()

        return layout
    if guide.kind == "keep":
        if init_image is None:
            raise UserError("a keep-region guide needs an input image to keep")
        region = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if region.dim() == 3:
            region = region[..., 0]
        region = F.interpolate(region[None, None], size=size, mode="bilinear", align_corners=False).to(device)
        if float(region.sum()) <= 0:
            raise UserError("the keep region is empty: paint the area to keep")
        original, total = _as_unit(init_image, device, size), region.sum() * 3

        def keep(x: torch.Tensor) -> torch.Tensor:
            return (region * (x - original) ** 2).sum() / total

        return keep
    raise UserError(f"unknown guide {guide.kind!r}; choose one of {', '.join(GUIDE_KINDS)}")


def pixel_objective(guides: Sequence[Guide], decode: Callable[["torch.Tensor"], "torch.Tensor"],
                    size: tuple[int, int], device, init_image: np.ndarray | None = None) -> Objective:
    """ℓ(ẑ0) = Σ_i s_i·ℓ_i(D(ẑ0)): every guide's loss on the decoded prediction, D differentiable."""
    losses = [(g.strength, pixel_loss(g, size, device, init_image)) for g in guides]

    def objective(z0: torch.Tensor) -> torch.Tensor:
        image = decode(z0)
        return sum(weight * loss(image) for weight, loss in losses)

    return objective


# -- forward and backward guidance -------------------------------------------------------------------------------------
@dataclass
class GuidanceTrace:
    """What the guided denoiser did at its first call of the current step: the guidance term it added (Δε for
    forward guidance, the Δε that backward guidance's Δz0 amounts to, or both summed) and the loss at ẑ0 before
    guidance. The pipeline takes it after each step (`take`)."""

    delta: "torch.Tensor | None" = None
    loss: float | None = None
    _fresh: bool = True

    def record(self, delta: "torch.Tensor", loss: float) -> None:
        if self._fresh:  # Heun calls the denoiser twice per step: the step's own state is its first call
            self.delta, self.loss, self._fresh = delta.detach(), loss, False

    def take(self) -> tuple["torch.Tensor | None", float | None]:
        out = (self.delta, self.loss)
        self.delta, self.loss, self._fresh = None, None, True
        return out


def backward_delta(objective: Objective, z0: "torch.Tensor", steps: int, lr: float,
                   mask: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Bansal et al. 2023 eq. 7: Δz0 ≈ argmin_Δ ℓ(ẑ0 + Δ), `steps` of plain gradient descent from Δ = 0 (step size
    `lr`), with ẑ0 held fixed (no gradient through the UNet). `mask` (latent, 1 = free) confines Δ to a region."""
    import torch

    delta = torch.zeros_like(z0)
    for _ in range(steps):
        with torch.enable_grad():
            probe = delta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(z0.detach() + probe), probe)
        if mask is not None:
            grad = grad * mask
        delta = delta - lr * grad
    return delta.detach()


def guide_denoiser(denoiser: "Denoiser", objective: Objective, *, mode: GuideMode, active: Callable[["NoiseLevel"], bool],
                   backward_steps: int = 5, backward_lr: float = 1.0, mask: "torch.Tensor | None" = None,
                   trace: GuidanceTrace | None = None) -> "Denoiser":
    """Wrap the one denoiser contract with universal guidance on the levels where `active(level)`."""
    import torch

    def denoise(x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        if not active(level):
            return denoiser(x, level)
        a = level.alpha_cumprod
        if mode in ("forward", "both"):
            # eq. 6: the gradient of ℓ(ẑ0(z_t)) with respect to z_t, through the UNet's ε̂ and the decoder
            with torch.inference_mode(False), torch.enable_grad():
                z = x.detach().clone().requires_grad_(True)
                eps = denoiser(z, level)
                loss = objective(predict_x0(z, eps, a))
                (grad,) = torch.autograd.grad(loss, z)
            if mask is not None:
                grad = grad * mask
            eps_hat, loss_value = eps.detach(), float(loss.detach())
            guided = eps_hat + (1 - a) ** 0.5 * grad  # s(t) = s·√(1−ᾱ_t); s sits in the loss weights
        else:
            eps_hat = guided = denoiser(x, level)
            loss_value = None
        if mode in ("backward", "both"):
            z0 = predict_x0(x, guided, a)
            with torch.inference_mode(False):
                z0 = z0.detach().clone()
                if loss_value is None:
                    with torch.enable_grad():
                        loss_value = float(objective(z0).detach())
                delta = backward_delta(objective, z0, backward_steps, backward_lr, mask)
            guided = guided - (a / (1 - a)) ** 0.5 * delta  # eq. 9: ẑ0(ε̃) = ẑ0 + Δz0
        if trace is not None:
            trace.record(guided - eps_hat, loss_value)
        return guided

    return denoise


# -- self-recurrence ---------------------------------------------------------------------------------------------------
def renoise(x_next: "torch.Tensor", here: "NoiseLevel", there: "NoiseLevel", noise: "torch.Tensor") -> "torch.Tensor":
    """Algorithm 1 of Bansal et al. 2023: back from the level of z_{t−1} (`there`) to that of z_t (`here`),
    z_t' = √(ᾱ_t/ᾱ_{t−1})·z_{t−1} + √(1 − ᾱ_t/ᾱ_{t−1})·n (the forward process between two levels, DDPM eq. 2)."""
    ratio = here.alpha_cumprod / there.alpha_cumprod
    return ratio**0.5 * x_next + max(0.0, 1 - ratio) ** 0.5 * noise


def recurrent_steps(spec: "SamplerSpec", denoiser: "Denoiser", x: "torch.Tensor", grid: Sequence["NoiseLevel"], *,
                    eta: float, generator, start: int, history: Sequence["torch.Tensor"], repeats: Callable[[int], int]
                    ) -> Iterator[Step]:
    """Drive `spec`'s sampler one step at a time, taking step i `repeats(i)` times (re-noising in between with fresh
    noise from the run's generator), and yield one Step per grid move. The yielded Step's x_t is the latent that
    entered the step (the resume point a branch starts from); its ε̂ is the one that maps that x_t to the final
    repetition's x̂0, so the timeline's x̂0 view is the step's real prediction. With repeats ≡ 1 this is the sampler
    itself, bit for bit."""
    history = list(history)
    for i in range(start, len(grid) - 1):
        entering = x
        for r in range(max(1, repeats(i))):
            if r > 0:
                x = renoise(step.x_next, grid[i], grid[i + 1], draw_noise(x, generator))
            step = next(spec.sample(denoiser, x, grid, eta=eta, generator=generator, start=i, history=tuple(history)))
        if x is not entering:
            a = grid[i].alpha_cumprod
            eps = (entering - a**0.5 * step.x0_pred) / (1 - a) ** 0.5
            step = Step(step.index, step.level, step.next_level, entering, step.x0_pred, eps, step.x_next)
        if spec.history_steps:
            history = (history + [step.x0_pred])[-spec.history_steps:]
        yield step
        x = step.x_next
