"""Samplers as generator functions over a denoiser.

Every sampler walks a grid of `steps + 1` noise levels (schedules.sampling_grid) and yields one frozen `Step`
per move from grid[i] to grid[i+1]. A yield is the preview point and the cancellation point: the caller stops
iterating and the run is over. No sampler keeps state outside its own frame, so several can run at once.

Conventions shared by all samplers:
- latents are in VP coordinates, x_t = √ᾱ·x0 + √(1−ᾱ)·ε, the scale the UNet sees; σ-samplers convert to the VE
  form x/√ᾱ = x0 + σ·ε internally (engine.md §3.4) and back, so records from any sampler line up.
- `denoiser(x_t, level) -> ε̂` is the only model contract (ε- or v-models, guidance and inpainting are wrapped
  into it by denoisers.py).
- per-step noise comes from the CPU `generator` in float32, then moves to the latent's device, so a seed gives the
  same stream on every device; a sampler draws nothing else from it, so the generator's state between two yields
  is all a branch needs to replay the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch

from .request import SAMPLER_DISPLAY_NAMES, SAMPLERS_USING_ETA
from .schedules import NoiseLevel

Denoiser = Callable[[torch.Tensor, NoiseLevel], torch.Tensor]


@dataclass(frozen=True)
class Step:
    index: int  # 0-based step number within the run
    level: NoiseLevel  # where x_t sits (timestep, ᾱ, σ)
    next_level: NoiseLevel  # where x_next sits
    x_t: torch.Tensor  # latent entering the step (VP)
    x0_pred: torch.Tensor  # predicted clean latent
    eps_pred: torch.Tensor  # predicted noise
    x_next: torch.Tensor  # latent leaving the step (VP, at next_level)


class Sampler(Protocol):
    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        grid: Sequence[NoiseLevel],
        *,
        eta: float,
        generator: torch.Generator | None,
        start: int = 0,
        previous_x0: torch.Tensor | None = None,
    ) -> Iterator[Step]: ...


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
    # DDIM eq. 9 / DDPM eq. 15: x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ
    return (x_t - (1 - alpha_cumprod) ** 0.5 * eps) / alpha_cumprod**0.5


def predict_eps(x_t: torch.Tensor, x0: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
    return (x_t - alpha_cumprod**0.5 * x0) / (1 - alpha_cumprod) ** 0.5


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
    # Salimans & Ho 2022: v = √ᾱ·ε − √(1−ᾱ)·x0  ⇒  ε = √(1−ᾱ)·x_t + √ᾱ·v
    return (1 - alpha_cumprod) ** 0.5 * x_t + alpha_cumprod**0.5 * v


def v_from_eps(x0: torch.Tensor, eps: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
    return alpha_cumprod**0.5 * eps - (1 - alpha_cumprod) ** 0.5 * x0


def draw_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(like.shape, generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=like.device, dtype=like.dtype)


def ddim_sigma(alpha_cumprod: float, alpha_cumprod_prev: float, eta: float) -> float:
    """DDIM eq. 16: σ_t(η) = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)."""
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1 - alpha_cumprod_prev) / (1 - alpha_cumprod)) * math.sqrt(
        max(0.0, 1 - alpha_cumprod / alpha_cumprod_prev)
    )


def ddim(denoiser, x, grid, *, eta=0.0, generator=None, start=0, previous_x0=None) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12 with σ from eq. 16): η = 0 deterministic, η = 1 DDPM-like."""
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        a, a_prev = level.alpha_cumprod, nxt.alpha_cumprod
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, a)
        sigma = ddim_sigma(a, a_prev, eta)
        # "direction pointing to x_t" term, then fresh noise σ_t·z
        x_next = a_prev**0.5 * x0 + max(0.0, 1 - a_prev - sigma**2) ** 0.5 * eps
        if sigma > 0:
            x_next = x_next + sigma * draw_noise(x, generator)
        yield Step(i, level, nxt, x, x0, eps, x_next)
        x = x_next


def ddpm_posterior(alpha_cumprod: float, alpha_cumprod_prev: float) -> tuple[float, float, float]:
    """Coefficients of q(x_prev | x_t, x0) for a strided pair (DDPM eq. 6–7 with β' = 1 − ᾱ_t/ᾱ_prev).

    Returns (coef_x0, coef_xt, variance) with μ̃ = coef_x0·x0 + coef_xt·x_t and β̃ = variance.
    """
    a, a_prev = alpha_cumprod, alpha_cumprod_prev
    beta = 1 - a / a_prev
    coef_x0 = a_prev**0.5 * beta / (1 - a)
    coef_xt = (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)
    variance = beta * (1 - a_prev) / (1 - a)
    return coef_x0, coef_xt, variance


def ddpm(denoiser, x, grid, *, eta=1.0, generator=None, start=0, previous_x0=None) -> Iterator[Step]:
    """Ancestral DDPM (Ho et al. 2020) with the posterior variance β̃ ("fixed_small", as SD), strided.

    η scales the posterior standard deviation (η = 1 is the paper's sampler, η = 0 its posterior mean).
    """
    last = len(grid) - 2
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        coef_x0, coef_xt, variance = ddpm_posterior(level.alpha_cumprod, nxt.alpha_cumprod)
        x_next = coef_x0 * x0 + coef_xt * x
        if i < last and variance > 0 and eta > 0:  # no noise on the final step
            x_next = x_next + eta * variance**0.5 * draw_noise(x, generator)
        yield Step(i, level, nxt, x, x0, eps, x_next)
        x = x_next


def euler_ancestral(denoiser, x, grid, *, eta=1.0, generator=None, start=0, previous_x0=None) -> Iterator[Step]:
    """Euler ancestral (k-diffusion sample_euler_ancestral) in the VE form, η scaling the ancestral noise."""
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        sigma, sigma_next = level.sigma, nxt.sigma
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        x_ve = x / level.alpha_cumprod**0.5
        # get_ancestral_step: split σ_next into a deterministic part σ_down and fresh noise σ_up
        sigma_up = min(sigma_next, eta * math.sqrt(max(0.0, sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)))
        sigma_down = math.sqrt(max(0.0, sigma_next**2 - sigma_up**2))
        d = (x_ve - x0) / sigma  # Karras Alg. 1: dx/dσ
        x_ve = x_ve + d * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x_ve = x_ve + sigma_up * draw_noise(x, generator)
        x_next = x_ve * nxt.alpha_cumprod**0.5
        yield Step(i, level, nxt, x, x0, eps, x_next)
        x = x_next


def dpmpp_2m(denoiser, x, grid, *, eta=0.0, generator=None, start=0, previous_x0=None) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic; `previous_x0` resumes the multistep."""
    older_x0 = previous_x0
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        sigma, sigma_next = level.sigma, nxt.sigma
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        x_ve = x / level.alpha_cumprod**0.5
        if sigma_next == 0:
            x_ve = x0
        else:
            h = math.log(sigma / sigma_next)  # h_i = λ_{i+1} − λ_i with λ = −log σ
            d = x0
            if older_x0 is not None and i > 0:
                h_last = math.log(grid[i - 1].sigma / sigma)
                r = h_last / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * older_x0
            x_ve = (sigma_next / sigma) * x_ve + (1 - math.exp(-h)) * d
        x_next = x_ve * nxt.alpha_cumprod**0.5
        yield Step(i, level, nxt, x, x0, eps, x_next)
        older_x0 = x0
        x = x_next


def ddim_inversion(denoiser, x, grid, refine: int = 0) -> Iterator[Step]:
    """DDIM inversion (engine.md §3.3): the η = 0 map run upward through `grid` reversed, reusing ε̂(x_cur) for
    the move to the next, noisier level. Exact when ε̂ does not change along the path; yields one Step per move.

    `refine` > 0 adds fixed-point iterations per move (after Pan et al. 2023, "Effective real image editing with
    accelerated iterative diffusion inversion"), each one more model call. We want the x' at the noisier level
    (ᾱ') that DDIM's own downward step maps exactly onto x (at ᾱ): x = √ᾱ·x̂0(x') + √(1−ᾱ)·ε̂(x'). Two ways to
    solve that equation for x' give two fixed-point maps:
        F_x0(x') = c·(x − √ᾱ·x̂0) + √ᾱ'·x̂0,              c = √(1−ᾱ')/√(1−ᾱ),
        F_ε(x')  = √(ᾱ'/ᾱ)·(x − √(1−ᾱ)·ε̂) + √(1−ᾱ')·ε̂.
    With u = √ᾱ'·∂x̂0/∂x' (0: the model's x̂0 ignores x', 1: x̂0 ≈ x'/√ᾱ') and r = √(SNR'/SNR) ≤ 1, their slopes
    are −u(1−r)/r and (1−r)(1−u): F_x0 is exact at high noise and blows up at low noise (first moves: ×5 per
    iteration, measured), F_ε the reverse. For data of unit variance the Gaussian posterior gives u = ᾱ', and the
    blend λ·F_x0 + (1−λ)·F_ε with λ = r(1−u)/(r(1−u) + u) has slope 0 there; the latents are scaled to unit
    variance, so we iterate that blend."""
    upward = list(grid)[::-1]
    for j in range(len(upward) - 1):
        here, there = upward[j], upward[j + 1]
        a, a_next = here.alpha_cumprod, there.alpha_cumprod
        eps = denoiser(x, here)
        x0 = predict_x0(x, eps, a)
        x_next = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps  # DDIM eq. 12, reversed
        if refine:
            c = ((1 - a_next) / (1 - a)) ** 0.5
            r = (a_next * (1 - a) / ((1 - a_next) * a)) ** 0.5
            blend = r * (1 - a_next) / (r * (1 - a_next) + a_next)
        for _ in range(refine):
            eps = denoiser(x_next, there)
            x0 = predict_x0(x_next, eps, a_next)
            via_x0 = c * (x - a**0.5 * x0) + a_next**0.5 * x0
            via_eps = (a_next / a) ** 0.5 * (x - (1 - a) ** 0.5 * eps) + (1 - a_next) ** 0.5 * eps
            x_next = blend * via_x0 + (1 - blend) * via_eps
        yield Step(j, here, there, x, x0, eps, x_next)
        x = x_next


SAMPLERS: dict[str, Sampler] = {
    "ddim": ddim,
    "ddpm": ddpm,
    "euler_a": euler_ancestral,
    "dpmpp_2m": dpmpp_2m,
}

# Which samplers end on ᾱ_0 like SD's DDIM, and which integrate to σ = 0 (see schedules.sampling_grid).
GRID_END = {"ddim": "alpha0", "ddpm": "alpha0", "euler_a": "clean", "dpmpp_2m": "clean"}
USES_ETA, DISPLAY_NAMES = SAMPLERS_USING_ETA, SAMPLER_DISPLAY_NAMES  # torch-free copies live in request.py
