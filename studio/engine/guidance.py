"""Universal guidance (Bansal et al. 2023, "Universal Guidance for Diffusion Models"): steer any sampler with any
differentiable loss ℓ on the predicted clean image, with no retraining.

Notation as in the paper and samplers.py: ᾱ = alpha_cumprod of the current level, ẑ0 = (z_t − √(1−ᾱ)·ε̂)/√ᾱ
(DDIM eq. 9). Three pieces, each a wrapper, never a change inside a sampler:

- forward guidance (their eq. 6): ε̃ = ε̂ + s(t)·∇_{z_t} ℓ(f(ẑ0)), the gradient through the UNet's ε̂ (and the VAE
  decoder when ℓ is on pixels); `guide_denoiser` wraps the one denoiser contract. Here s(t) = s·n·√(ᾱ_t/(1−ᾱ_t))
  (n = latent pixels h·w), not the paper's default s·√(1−ᾱ_t): by eq. 9's identity the guided ẑ0 then moves by
  exactly −s·n·∇_{z_t}ℓ at every level, a gradient step of one size in ẑ0's own units. The classifier-guidance
  scaling moves ẑ0 by −s·(1−ᾱ)/√ᾱ·∇ℓ, which diverges on a zero-terminal-SNR schedule (the built-in model's first
  level has ᾱ = 2.4e-9) and fades to nothing in the late steps (measurements: DEFAULT_STRENGTH's note).
  The factor n undoes the 1/n that mean losses put into each latent pixel's gradient, so that a strength acts
  alike at every image size (reasoned, measured only at 64 px).
- backward guidance (their eq. 7 and 9): Δz0 = argmin_Δ ℓ(f(ẑ0 + Δ)) by m steps of gradient descent from Δ = 0 with
  no gradient through the UNet, then ε̃ = ε̂ − √(ᾱ_t/(1−ᾱ_t))·Δz0, which moves ẑ0 to ẑ0 + Δz0 exactly. Each step
  takes Polyak's step size η = lr·ℓ/‖∇ℓ‖² (Polyak 1987, "Introduction to Optimization" §5.3, for a known minimum
  ℓ* = 0): it needs no tuning per loss, picture size or decoder (a fixed step size that suits a quarter-picture
  hint overshoots on a small stroke, whose per-pixel gradient is larger), and it shrinks as ℓ → 0.
- per-step self-recurrence (their Algorithm 1): after a step z_t → z_{t−1}, re-noise back to the level of z_t with
  fresh noise, z_t' = √(ᾱ_t/ᾱ_{t−1})·z_{t−1} + √(1 − ᾱ_t/ᾱ_{t−1})·n, and take the step again, k times in all;
  `recurrent_steps` wraps the step, driving any sampler of the table one step at a time.

The strength s of each guide weighs its loss, so forward and backward guidance read the same setting; backward's
Polyak steps do not depend on the overall scale of ℓ, so there the strengths only weigh guides against each other
(how far backward guidance goes is set by m). Losses are means over the pixels they look at.
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

GuideKind = Literal["colour", "reference", "keep", "classifier", "clip"]
GuideMode = Literal["forward", "backward", "both", "noisy"]
GUIDE_KINDS: tuple[GuideKind, ...] = ("colour", "reference", "keep")  # guides with a picture (the app's hint layers)
TRAINED_GUIDE_KINDS: tuple[GuideKind, ...] = ("classifier", "clip")  # trained guides (classifier_ and clip_guidance.py)
ALL_GUIDE_KINDS: tuple[GuideKind, ...] = GUIDE_KINDS + TRAINED_GUIDE_KINDS
# forward/backward/both: universal guidance on ẑ0 (a classifier or CLIP guide uses the clean one there); noisy:
# classifier / CLIP guidance on z_t with the noise-aware guide, Dhariwal & Nichol's Algorithm 1 or 2 per sampler
GUIDE_MODES: tuple[GuideMode, ...] = ("forward", "backward", "both", "noisy")
UNIVERSAL_MODES: tuple[GuideMode, ...] = ("forward", "backward", "both")
BACKWARD_MODES: tuple[GuideMode, ...] = ("backward", "both")  # the modes that take backward steps (m)
REFERENCE_VARIANTS = ("layout", "palette")
LAYOUT_POOL = 8  # "layout": compare 8×8-pixel block means (structure, not detail)
# Each guide kind's strength s when none is given (CLI, app). Chosen on the built-in model (64 px, DDIM 25 steps,
# CFG 3, all steps guided) on held-out tuning scenes (training/guidance_eval.py, TUNE_SEED), a hint colour the
# prompt disagrees with over a quarter of the picture; success = that quarter within ΔE₀₀ 15 of the hint:
# - backward (Polyak steps, m = 5): 16/16 at any strength (the strength only weighs guides against each other).
# - forward: s = 1 leaves the picture intact but hardly moves the quarter; s = 3 already fills it with
#   high-frequency patterns; s = 4 → 2/8, s = 12 → 4/8, both with the picture broken. The gradient through the
#   UNet (eq. 6) has almost no component that changes a colour the model is sure of (a step of half ε̂'s norm along
#   it left x̂0's quarter as it was), and what it has is adversarial texture. With the paper's s(t) = s·√(1−ᾱ):
#   no effect up to s = 300 (also with recurrence k = 3), x̂0 blown up (std 31 vs ~1) from s = 1000 on. Forward
#   is therefore the gentle mode, backward the default.
# - reference layout (another scene's picture as the reference), forward: s = 3 → 6/8 runs more correlated with
#   the reference's low-pass than unguided (median gain +0.05), s = 10 → 7/8 (+0.3); backward 8/8.
# - keep: the colour hint's loss on the input's pixels; not measured, the colour hint's value.
# Held out (40 other scenes and seeds, REPORT_SEED; `studio evaluate --guidance 40`), these defaults:
#   colour hint the prompt disagrees with: unguided 0/40 within ΔE₀₀ 15, forward 0/40 (median ΔE₀₀ 43 vs 49
#   unguided), backward 40/40 (median 1.1, worst 9.1; the rest of the picture moves by a median 8 ΔE₀₀ a pixel);
#   hint the prompt agrees with: unguided 38/40, forward 39/40, backward 40/40;
#   reference layout beats unguided: forward 37/40 (median correlation 0.44 vs 0.02), backward 40/40 (0.96).
#   colour hint on an open prompt (empty prompt, CFG 1: nothing but the hint says what goes there): unguided 2/40,
#   forward 32/40 (median ΔE₀₀ 2.7), forward with self-recurrence k = 3 38/40 (median 0.3; k chosen on 20 tuning
#   cases), backward 40/40 (median 0.4). Forward guidance selects among the pictures the model finds plausible: its
#   gradient reaches z_t through ∂ẑ0/∂z_t, which for an ideal denoiser is proportional to Cov[x0 | z_t] (Tweedie's
#   formula differentiated once), and a prompt at CFG 3 that names a colour leaves no spread there to move.
# classifier (issue #15): s = 10 in noisy mode, the best of s ∈ {1, 3, 10, 30, 100} for DDIM (Algorithm 2) and DDPM
# (Algorithm 1) on 16 tuning seeds (docs/guidance_scale_sweep.md); with self-recurrence k = 3 give :20 (better than
# 10 for DDIM on 64 tuning cases, for DDPM on 16); in the universal modes s = 3 was measured with the shipped
# clean classifier (resources/guides/MODEL_CARD.md), so give :3 there.
# clip (issue #15): s = 10 in noisy mode (the score is the CLIP's logit exp(τ)·f·g, on the classifier's
# log-probability scale): the best of s ∈ {5, 10, 20} for DDIM with recurrence k = 3 on 32 tuning seeds with the
# first LiT CLIP; with the shipped one s = 10 ties s = 30 in the plain DDIM sweep of 8 (docs/guidance_scale_sweep.md).
DEFAULT_STRENGTH: dict[str, float] = {"colour": 1.0, "reference": 10.0, "keep": 1.0, "classifier": 10.0,
                                      "clip": 10.0}
RECURRENT_CLASSIFIER_STRENGTH = 20.0  # noisy mode with self-recurrence (docs/guidance_scale_sweep.md, sixth session)
UNIVERSAL_CLASSIFIER_STRENGTH = 3.0  # the clean classifier on ẑ0 (resources/guides/MODEL_CARD.md)


def suggested_strength(kind: str, mode: GuideMode = "noisy", recurrence: int = 1) -> float:
    """The strength measured best for a guide kind in a guide mode and with self-recurrence k: what the app and the
    CLI give a classifier or CLIP guide whose strength the user has not set. The classifier's best s depends on both
    (DEFAULT_STRENGTH's note: noisy 10, noisy with k = 3 20, on ẑ0 with the clean classifier 3); the other kinds'
    were measured in one setting only, so they keep DEFAULT_STRENGTH's."""
    if kind == "classifier":
        if mode in UNIVERSAL_MODES:
            return UNIVERSAL_CLASSIFIER_STRENGTH
        # measured at k = 3 (DDIM on 64 tuning cases, DDPM on 16); other k > 1 take it too (k = 5 ran at s = 10 only)
        return RECURRENT_CLASSIFIER_STRENGTH if recurrence > 1 else DEFAULT_STRENGTH["classifier"]
    return DEFAULT_STRENGTH[kind]


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
    # classifier: the labels asked for, as the captions name them, e.g. {"shape": "star", "position": "top left"}
    # (a dict is taken and kept as sorted (group, value) pairs, so the guide stays hashable and comparable)
    labels: tuple[tuple[str, str], ...] = ()
    text: str = ""  # clip: the caption the picture should match, e.g. "a red star at the top"

    def __post_init__(self) -> None:
        if isinstance(self.labels, dict):
            object.__setattr__(self, "labels", tuple(sorted((str(k), str(v)) for k, v in self.labels.items())))

    def settings(self) -> dict:
        values = {"kind": self.kind, "strength": self.strength, "variant": self.variant}
        if self.labels:
            values["labels"] = dict(self.labels)
        if self.text:
            values["text"] = self.text
        return values


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
                    size: tuple[int, int], device, init_image: np.ndarray | None = None,
                    latent_losses: Sequence[tuple[float, Objective]] = ()) -> Objective:
    """ℓ(ẑ0) = Σ_i s_i·ℓ_i(D(ẑ0)): every picture guide's loss on the decoded prediction, D differentiable, plus
    the `latent_losses` (s_i, ℓ_i) that read ẑ0 itself (a clean classifier's −log p(y | ẑ0))."""
    losses = [(g.strength, pixel_loss(g, size, device, init_image)) for g in guides if g.kind in GUIDE_KINDS]

    def objective(z0: torch.Tensor) -> torch.Tensor:
        total = sum(weight * loss(z0) for weight, loss in latent_losses)
        if losses:
            image = decode(z0)
            total = total + sum(weight * loss(image) for weight, loss in losses)
        return total

    return objective


def guide_support(guides: Sequence[Guide], latent_size: tuple[int, int], device) -> "torch.Tensor | None":
    """Where the guides look, as a latent mask (1, 1, h, w) (1 = guidance may change ẑ0 there): the latent pixels
    under a colour hint's painted pixels or a keep region, grown by one latent pixel; None when a guide looks at the
    whole picture (a reference). The losses see only those pixels, but the decoder's attention block reaches across
    the picture, so an unconfined gradient step also repaints what no guide asked about (on the tuning scenes it
    washed whole backgrounds in the hint's colour)."""
    import torch
    import torch.nn.functional as F

    support = None
    for guide in guides:
        if guide.kind in ("reference", *TRAINED_GUIDE_KINDS) or guide.image is None:
            return None
        image = np.asarray(guide.image, dtype=np.float32)
        painted = image[..., 3] if guide.kind == "colour" and image.ndim == 3 else (
            image[..., 0] if image.ndim == 3 else image)
        cells = F.adaptive_max_pool2d(torch.from_numpy((painted > 0).astype(np.float32))[None, None], latent_size)
        cells = F.max_pool2d(cells, 3, stride=1, padding=1)
        support = cells if support is None else torch.maximum(support, cells)
    return None if support is None else support.to(device)


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
                   mask: "torch.Tensor | None" = None, step_size: Literal["polyak", "fixed"] = "polyak"
                   ) -> "torch.Tensor":
    """Bansal et al. 2023 eq. 7: Δz0 ≈ argmin_Δ ℓ(ẑ0 + Δ), `steps` of gradient descent from Δ = 0, with ẑ0 held
    fixed (no gradient through the UNet). Step size: "polyak", lr·ℓ(Δ)/‖∇ℓ(Δ)‖² (Polyak's, for ℓ* = 0), or "fixed",
    lr. `mask` (latent, 1 = free) confines Δ to a region."""
    import torch

    delta = torch.zeros_like(z0)
    for _ in range(steps):
        with torch.enable_grad():
            probe = delta.detach().requires_grad_(True)
            loss = objective(z0.detach() + probe)
            (grad,) = torch.autograd.grad(loss, probe)
        if mask is not None:
            grad = grad * mask
        if step_size == "polyak":
            norm2 = float((grad.double() ** 2).sum())
            if norm2 <= 0.0:  # ℓ is flat here (or met): nothing to descend
                break
            delta = delta - (lr * float(loss.detach()) / norm2) * grad
        else:
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
            # s(t) = s·n·√(ᾱ/(1−ᾱ)) (module docstring): ẑ0(ε̃) = ẑ0 − s·n·∇_{z_t}ℓ; s sits in the loss weights
            cells = grad.shape[-1] * grad.shape[-2]
            guided = eps_hat + (a / (1 - a)) ** 0.5 * cells * grad
        else:
            eps_hat = guided = denoiser(x, level)
            loss_value = None
        if mode in BACKWARD_MODES:
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


# Time of a guided step over an unguided one in the app (whose steps all pay one x̂0 decode), in unguided-step units:
# forward = UNet and decoder forward and backward; backward = the UNet step and one decoder pass for ℓ, then per
# gradient step one decoder forward and backward. Built-in model, 64 px, CPU, 1 thread, 10 DDIM steps, median of
# 5 interleaved rounds (benchmarks/bench_guidance.py --decode-steps): forward 2.51, backward m = 1 2.47, m = 5 6.38
# (so 0.98 per gradient step, 1.49 for the rest), forward with k = 2 4.49, backward m = 5 with k = 2 11.9 (k× the
# cost overstates recurrence by ~8 %: the step's x̂0 decode is not repeated). Without the per-step decode (scripts,
# the CLI; an unguided step 20.5 ms) the ratios are larger: forward 3.87, backward m = 1 3.92, m = 5 11.1, forward
# k = 2 7.97, backward m = 5 k = 2 22.0.
FORWARD_COST = 2.5
BACKWARD_BASE_COST = 1.5
BACKWARD_STEP_COST = 1.0
# noisy mode (classifier guidance): one classifier forward and backward per step on the latent; 25-step DDIM runs
# on the built-in model, CPU, 1 thread, a busy machine: 2.5–2.7 s guided against 1.9 s unguided per picture
NOISY_COST = 1.4


def guidance_cost(mode: GuideMode, backward_steps: int, recurrence: int) -> float:
    """Expected time of a guided step as a multiple of an unguided one ("guided steps take ~3.1× as long"):
    forward's, backward's 1 + m gradient steps, both's sum, all taken k times with self-recurrence."""
    if mode == "noisy":
        return max(1, recurrence) * NOISY_COST
    cost = FORWARD_COST if mode in ("forward", "both") else 1.0
    if mode in BACKWARD_MODES:
        cost += BACKWARD_BASE_COST - 1.0 + backward_steps * BACKWARD_STEP_COST
    return max(1, recurrence) * cost


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
