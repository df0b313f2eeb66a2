"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", §4) with the
noise-aware classifier p_φ(y | z_t, t) of classifier.py, and the clean classifier as a loss on ẑ0 for universal
guidance (guidance.py).

The papers' two algorithms, each a wrapper, never a change inside a sampler (notation of samplers.py, ᾱ = ᾱ_t):
- Algorithm 2 (DDIM-type samplers: every sampler that reads only ε̂): ε̃ = ε̂ − s·√(1−ᾱ_t)·∇_{z_t} log p_φ(y | z_t),
  the score of p(z_t | y) = p(z_t)·p_φ(y | z_t) written as a noise prediction (their eq. 12–14). `noisy_denoiser`
  wraps the one denoiser contract. The built-in model predicts v; the contract hands out ε̂ (denoisers.py converts,
  ε = √(1−ᾱ)·x_t + √ᾱ·v), so the correction is made where ε̂ is and the sampler needs nothing else. By DDIM eq. 9
  it moves ẑ0 by s·(1−ᾱ_t)/√ᾱ_t·∇ log p_φ, which stays bounded because the classifier reads √ᾱ·z_t (classifier.py).
- Algorithm 1 (ancestral samplers: DDPM, Euler a, DPM++ 2M SDE when η > 0): z_{t−1} ~ N(μ + s·Σ·∇_{z_t} log
  p_φ(y | z_t), Σ), their eq. 3–10: the step's own mean and fresh noise, the mean shifted by s·Σ·g with Σ the
  variance of the noise that step adds (in the VP coordinates the step's z_{t−1} lives in). Since z_{t−1} = μ + √Σ·n,
  adding s·Σ·g to the sampler's z_{t−1} draws exactly from the shifted Gaussian; `noisy_sampler` wraps the step.
  The gradient is taken at z_t, as in the paper; on the first step of a zero-terminal-SNR schedule z_t is pure
  noise and the classifier can say almost nothing there, so that step is hardly guided (Algorithm 2's deterministic
  jump gets more from it).
Which algorithm a sampler gets is `algorithm_for(spec, eta)`. Guide strengths s_i weigh each guide's log p_φ;
several classifier guides add their log-probabilities (independent heads: their labels multiply).

Strength (built-in model, DEFAULT_STRENGTH["classifier"]): see the measurements in resources/guides/MODEL_CARD.md.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Sequence

from .errors import UserError
from .guidance import Guide, GuidanceTrace
from .samplers import SamplerSpec, Step, ddpm, ddpm_posterior, dpmpp_2m_sde, euler_ancestral

if TYPE_CHECKING:
    import torch

    from .classifier import NoisyClassifier
    from .samplers import Denoiser
    from .schedules import NoiseLevel

GUIDES_FOLDER = "guides"
CLASSIFIER_FILES = {False: "scene-classifier-noisy.safetensors", True: "scene-classifier-clean.safetensors"}
JOINT = "+"  # classifier.JOINT, the mark of a joint head's name (repeated: this module reads headers without torch)
# universal guidance's clean classifier also asks that the background is not the object's asked colour
# (NoisyClassifier._log_background_is_not). Measured (issue #15's seventh session, empty prompt, both, k = 3, s = 3):
# DDIM without it set the background to the asked colour in 9 of its 23 misses of 64 tuning cases, with it 0 of 20
# (41 → 44 right); DDPM 49 → 53 of 64 other cases (docs/guidance_scale_sweep.md). Noisy mode does not use it: its
# rows met their targets without it and were not measured with it.
EXCLUSIVE_BACKGROUND = True
LogProb = Callable[["torch.Tensor", "NoiseLevel"], "torch.Tensor"]  # (z_t, level) → Σ_i s_i·log p_φ(y_i | z_t), scalar


def classifier_path(clean: bool):
    from ..resources import resources_dir

    return resources_dir() / GUIDES_FOLDER / CLASSIFIER_FILES[clean]


@lru_cache(maxsize=4)
def _load(path: str, device: str) -> "NoisyClassifier":
    from .classifier import load_classifier

    return load_classifier(path, device)


def shipped_classifier(clean: bool, device) -> "NoisyClassifier":
    """The built-in world's classifier (noise-aware, or clean for ẑ0), loaded once per device."""
    path = classifier_path(clean)
    if not path.exists():
        raise UserError(f"the {'clean' if clean else 'noise-aware'} scene classifier is missing ({path}); "
                        "train it with `studio train --stage classifier" + (" --clean`" if clean else "`"))
    return _load(str(path), str(device))


def classifier_labels(clean: bool = False) -> dict[str, tuple[str, ...]]:
    """The shipped classifier's label groups and values, read from its file's header without torch (the app lists
    them); {} when the file is missing or unreadable (the run then says why)."""
    import json
    import struct

    try:
        with open(classifier_path(clean), "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 1 << 20:
                return {}
            header = json.loads(f.read(length))
        heads = json.loads(header["__metadata__"]["studio_classifier"])["heads"]
        return {str(group): tuple(str(v) for v in values) for group, values in heads if JOINT not in str(group)}
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return {}


def check_fits(classifier: "NoisyClassifier", latent: "torch.Tensor") -> None:
    c = classifier.config
    if latent.shape[1] != c.in_channels or tuple(latent.shape[-2:]) != (c.latent_size, c.latent_size):
        raise UserError(f"the classifier guide reads {c.in_channels}×{c.latent_size}×{c.latent_size} latents "
                        f"({c.trained_for or 'the built-in model'} at {c.latent_size * 4} px); this run's latent is "
                        f"{latent.shape[1]}×{latent.shape[2]}×{latent.shape[3]}")


def classifier_guides(guides: Sequence[Guide]) -> list[Guide]:
    return [g for g in guides if g.kind == "classifier"]


def log_prob_fn(guides: Sequence[Guide], classifier: "NoisyClassifier") -> LogProb:
    """Σ_i s_i·log p_φ(y_i | z_t, t) over the classifier guides (labels checked now, not at the first step)."""
    from .classifier import label_indices

    asks = [(g.strength, dict(g.labels)) for g in classifier_guides(guides)]
    for _, labels in asks:
        label_indices(classifier.config, labels)

    def log_prob(z: "torch.Tensor", level: "NoiseLevel") -> "torch.Tensor":
        import torch

        a = torch.full((z.shape[0],), float(level.alpha_cumprod))
        return sum(s * classifier.log_prob(z, a, labels).sum() for s, labels in asks)

    return log_prob


def clean_losses(guides: Sequence[Guide], classifier: "NoisyClassifier") -> list[tuple[float, Callable]]:
    """For universal guidance: (s_i, ℓ_i) with ℓ_i(ẑ0) = −log p_clean(y_i | ẑ0), the clean classifier at ᾱ = 1.
    (A mean over latent pixels is what the picture guides' losses are; guidance.guide_denoiser multiplies forward
    guidance's gradient by the latent pixel count n, so ℓ_i is divided by n here to weigh alike.)"""
    import torch

    from .classifier import label_indices

    out = []
    for g in classifier_guides(guides):
        labels = dict(g.labels)
        label_indices(classifier.config, labels)

        def loss(z0: torch.Tensor, labels=labels) -> torch.Tensor:
            cells = z0.shape[-1] * z0.shape[-2]
            log_p = classifier.log_prob(z0, torch.ones(z0.shape[0]), labels, exclusive_background=EXCLUSIVE_BACKGROUND)
            return -log_p.sum() / cells

        out.append((g.strength, loss))
    return out


def log_prob_gradient(log_prob: LogProb, x: "torch.Tensor", level: "NoiseLevel") -> tuple["torch.Tensor", float]:
    """(∇_{z_t} Σ s_i log p_φ(y_i | z_t), its value), outside any inference mode."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        z = x.detach().clone().float().requires_grad_(True)
        value = log_prob(z, level)
        (grad,) = torch.autograd.grad(value, z)
    return grad.to(x.dtype), float(value.detach())


# -- Algorithm 2: the denoiser wrapper ---------------------------------------------------------------------------------
def noisy_denoiser(denoiser: "Denoiser", log_prob: LogProb, active: Callable[["NoiseLevel"], bool],
                   trace: GuidanceTrace | None = None) -> "Denoiser":
    """Algorithm 2: ε̃ = ε̂ − √(1−ᾱ_t)·∇_{z_t} Σ s_i log p_φ(y_i | z_t) on the levels where `active(level)`."""

    def denoise(x: "torch.Tensor", level: "NoiseLevel") -> "torch.Tensor":
        eps = denoiser(x, level)
        if not active(level):
            return eps
        grad, value = log_prob_gradient(log_prob, x, level)
        delta = -((1 - level.alpha_cumprod) ** 0.5) * grad
        if trace is not None:
            trace.record(delta, -value)  # the trace's loss: −Σ s_i log p_φ
        return eps + delta

    return denoise


# -- Algorithm 1: the step wrapper -------------------------------------------------------------------------------------
def step_variance(spec: SamplerSpec, grid: Sequence["NoiseLevel"], i: int, eta: float) -> float:
    """Σ of Algorithm 1: the variance of the fresh noise step i of `spec` adds, in VP coordinates at grid[i + 1]
    (0 for a step that adds none). Written from each sampler's own update in samplers.py."""
    here, there = grid[i], grid[i + 1]
    if spec.sample is ddpm:  # z_{t−1} = μ̃ + η·√β̃·n (no noise on the last step)
        if i >= len(grid) - 2:
            return 0.0
        return eta**2 * ddpm_posterior(here.alpha_cumprod, there.alpha_cumprod)[2]
    if spec.sample is euler_ancestral:  # VE noise σ_up·n, then ×√ᾱ_{t−1} back to VP
        sigma, nxt = here.sigma, there.sigma
        if nxt <= 0:
            return 0.0
        up = min(nxt, eta * math.sqrt(max(0.0, nxt**2 * (sigma**2 - nxt**2) / sigma**2)))
        return there.alpha_cumprod * up**2
    if spec.sample is dpmpp_2m_sde:  # VE noise σ_{i+1}·√(1 − e^{−2ηh})·n
        if there.sigma <= 0:
            return 0.0
        h = math.log(here.sigma / there.sigma)
        return there.alpha_cumprod * there.sigma**2 * -math.expm1(-2 * eta * h)
    raise ValueError(f"{spec.display_name} is not an ancestral sampler")


ANCESTRAL = (ddpm, euler_ancestral, dpmpp_2m_sde)


def algorithm_for(spec: SamplerSpec, eta: float) -> Literal[1, 2]:
    """Dhariwal & Nichol's Algorithm 1 for ancestral samplers that draw fresh noise, Algorithm 2 for the rest
    (DDIM at any η, as the paper pairs them, and every deterministic sampler)."""
    return 1 if spec.sample in ANCESTRAL and spec.draws_noise(eta) else 2


def noisy_sampler(spec: SamplerSpec, log_prob: LogProb, active: Callable[["NoiseLevel"], bool],
                  trace: GuidanceTrace | None = None) -> SamplerSpec:
    """Algorithm 1 around an ancestral sampler: each step as the sampler takes it, then z_{t−1} += s·Σ·g with
    g = ∇_{z_t} Σ s_i log p_φ(y_i | z_t) (the strengths are inside log_prob). The sampler is driven one step at a
    time (its `start`/`history` resume contract), so its noise stream is untouched: guidance off replays it."""
    import dataclasses

    def sample(denoiser, x, grid, *, eta, generator, start=0, history=()) -> Iterator[Step]:
        history = list(history)
        for i in range(start, len(grid) - 1):
            step = next(spec.sample(denoiser, x, grid, eta=eta, generator=generator, start=i,
                                    history=tuple(history)))
            variance = step_variance(spec, grid, i, eta)
            if variance > 0 and active(step.level):
                grad, value = log_prob_gradient(log_prob, step.x_t, step.level)
                shift = variance * grad  # Algorithm 1: μ + s·Σ·∇ log p_φ(y | x_t)
                step = Step(step.index, step.level, step.next_level, step.x_t, step.x0_pred, step.eps_pred,
                            step.x_next + shift)
                if trace is not None:
                    trace.record(shift, -value)
            if spec.history_steps:
                history = (history + [step.x0_pred])[-spec.history_steps:]
            yield step
            x = step.x_next

    return dataclasses.replace(spec, sample=sample)

