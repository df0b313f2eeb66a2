"""Samplers as generator functions over a denoiser, and SAMPLER_TABLE: the one place that says what a sampler is.

Every sampler walks a grid of `steps + 1` noise levels (schedules.sampling_grid) and yields one frozen `Step`
per move from grid[i] to grid[i+1]. A yield is the preview point and the cancellation point: the caller stops
iterating and the run is over. No sampler keeps state outside its own frame, so several can run at once.

Conventions shared by all samplers:
- latents are in VP coordinates, x_t = √ᾱ·x0 + √(1−ᾱ)·ε, the scale the UNet sees; σ-samplers convert to the VE
  form x/√ᾱ = x0 + σ·ε (σ = √((1−ᾱ)/ᾱ), Karras et al. 2022's form with s(t) = 1) internally and back, so records
  from any sampler line up.
- `denoiser(x_t, level) -> ε̂` is the only model contract (ε- or v-models, guidance and inpainting are wrapped
  into it by denoisers.py).
- per-step noise comes from the CPU `generator` in float32, then moves to the latent's device, so a seed gives the
  same stream on every device; a sampler draws nothing else from it, so the generator's state between two yields
  is all a branch needs to replay the same noise.
- a multistep sampler's memory is the x̂0 of its previous steps, passed back in as `history` when a run resumes at
  `start` (SamplerSpec.resume_history rebuilds it exactly from the recorded x_t), so a resumed run is bit for bit
  the run it continues.

Imports no torch at module level: the CLI's --help and the UI thread read SAMPLER_TABLE before torch loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Protocol, Sequence

if TYPE_CHECKING:
    import torch

    from .schedules import NoiseLevel

Denoiser = Callable[["torch.Tensor", "NoiseLevel"], "torch.Tensor"]
GridEnd = Literal["alpha0", "clean"]


@dataclass(frozen=True)
class Step:
    index: int  # 0-based step number within the run
    level: NoiseLevel  # where x_t sits (timestep, ᾱ, σ)
    next_level: NoiseLevel  # where x_next sits
    x_t: torch.Tensor  # latent entering the step (VP): what the denoiser saw
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
        history: Sequence[torch.Tensor] = (),
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
    import torch  # here, not at the top: the sampler table must load without torch

    noise = torch.randn(like.shape, generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=like.device, dtype=like.dtype)


def ddim_sigma(alpha_cumprod: float, alpha_cumprod_prev: float, eta: float) -> float:
    """DDIM eq. 16: σ_t(η) = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)."""
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1 - alpha_cumprod_prev) / (1 - alpha_cumprod)) * math.sqrt(
        max(0.0, 1 - alpha_cumprod / alpha_cumprod_prev)
    )


def ddim(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
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


def ddpm(denoiser, x, grid, *, eta=1.0, generator=None, start=0, history=()) -> Iterator[Step]:
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


def euler_ancestral(denoiser, x, grid, *, eta=1.0, generator=None, start=0, history=()) -> Iterator[Step]:
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


def euler(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """Euler (Karras et al. 2022, Algorithm 1 without the 2nd-order correction, no churn) in the VE form."""
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        x_ve = x / level.alpha_cumprod**0.5
        d = (x_ve - x0) / level.sigma  # Alg. 1 line 4: d_i = (x_i − D(x_i; σ_i))/σ_i
        x_ve = x_ve + (nxt.sigma - level.sigma) * d  # line 5: x_{i+1} = x_i + (σ_{i+1} − σ_i)·d_i
        x_next = x_ve * nxt.alpha_cumprod**0.5
        yield Step(i, level, nxt, x, x0, eps, x_next)
        x = x_next


def heun(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1): two model calls a step, Euler to σ = 0."""
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        sigma, sigma_next = level.sigma, nxt.sigma
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        x_ve = x / level.alpha_cumprod**0.5
        d = (x_ve - x0) / sigma  # Alg. 1 line 4
        x_ve_next = x_ve + (sigma_next - sigma) * d  # line 5: the Euler step
        if sigma_next > 0:  # lines 6–8: the slope where the Euler step landed, then the trapezoidal rule
            x_euler = x_ve_next * nxt.alpha_cumprod**0.5
            x0_euler = predict_x0(x_euler, denoiser(x_euler, nxt), nxt.alpha_cumprod)
            d_next = (x_ve_next - x0_euler) / sigma_next
            x_ve_next = x_ve + (sigma_next - sigma) * (d + d_next) / 2
        x_next = x_ve_next * nxt.alpha_cumprod**0.5
        yield Step(i, level, nxt, x, x0, eps, x_next)
        x = x_next


def dpmpp_2m(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic; `history` holds the previous step's x̂0."""
    older_x0 = history[-1] if history else None
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


def dpmpp_2m_sde(denoiser, x, grid, *, eta=1.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, SDE-DPM-Solver++ with the 2M midpoint multistep); η scales the noise.

    One step, VE form, from DDIM eq. 12 with its free noise chosen as σ_noise = σ_{i+1}·√(1 − e^{−2ηh}): the
    "direction to x_t" term keeps √(σ_{i+1}² − σ_noise²) = σ_{i+1}·e^{−ηh} of ε̂ = (x − D)/σ_i, so
        x_{i+1} = (σ_{i+1}/σ_i)·e^{−ηh}·x_i + (1 − e^{−(1+η)h})·D + σ_{i+1}·√(1 − e^{−2ηh})·z.
    η = 1 is SDE-DPM-Solver++'s step (the discretised reverse SDE), η = 0 is DPM-Solver++'s ODE step exactly, and
    D is x̂0 or, with the previous x̂0, Algorithm 2's multistep D_i (whose weight keeps the x̂0 coefficient's 1/2).
    """
    older_x0 = history[-1] if history else None
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        sigma, sigma_next = level.sigma, nxt.sigma
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        x_ve = x / level.alpha_cumprod**0.5
        if sigma_next == 0:  # h = ∞: nothing of x_i and no noise is left
            x_ve = x0
        else:
            h = math.log(sigma / sigma_next)  # h_i = λ_{i+1} − λ_i with λ = −log σ
            d = x0
            if older_x0 is not None and i > 0:
                h_last = math.log(grid[i - 1].sigma / sigma)
                r = h_last / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * older_x0
            # written as dpmpp_2m writes it, so that η = 0 gives the same bits
            x_ve = (sigma_next / sigma) * math.exp(-eta * h) * x_ve + (1 - math.exp(-(1 + eta) * h)) * d
            if eta > 0:
                x_ve = x_ve + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * draw_noise(x, generator)
        x_next = x_ve * nxt.alpha_cumprod**0.5
        yield Step(i, level, nxt, x, x0, eps, x_next)
        older_x0 = x0
        x = x_next


def unic_weights(h: float, r: float) -> tuple[float, float]:
    """UniC-2's a_1, a_2 for B(h) = e^h − 1 in the data-prediction form (Zhao et al. 2023, Theorem 3.1):
    R_2·a = g_2/B(h) with R_2 = [[1, 1], [r, 1]] and g_k = k!·z·φ_{k+1}(z) at z = −h, where φ_1(z) = (e^z − 1)/z
    and φ_{k+1}(z) = (φ_k(z) − 1/k!)/z; r = (λ_{i−2} − λ_{i−1})/h < 0 places the older model output."""
    z = -h
    b_h = math.expm1(z)
    g1 = math.expm1(z) / z - 1  # 1!·z·φ_2(z)
    g2 = 2 * (g1 / z - 0.5)  # 2!·z·φ_3(z)
    a1 = (g1 - g2) / b_h / (1 - r)
    return a1, g1 / b_h - a1


def unipc(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """UniPC-2 (Zhao et al. 2023): UniP-2 predictor + UniC corrector, B(h) = e^h − 1 ("bh2"), predicting x0.

    Each step evaluates the model once at x̃_i (the predictor's output, what `Step.x_t` records), corrects x̃_i with
    that evaluation (UniC: one order more, no extra call) and predicts x̃_{i+1} from the corrected point. UniC and
    UniP share their first terms, (σ_i/σ_{i−1})·x^c_{i−1} + (1 − e^{−h})·x̂0_{i−1}, so the correction is x̃_i plus
    terms in the model outputs only: a run resumed at step k needs x̃_k and the x̂0 of steps k−2 and k−1, nothing
    else. (A branch from another sampler's step k is corrected as if UniP had made x_k.) The predictor is first
    order on the first step (the multistep warm-up) and on the last, as the authors' implementation does.
    """
    last = len(grid) - 2
    x0s = list(history[-2:])  # x̂0 of steps i−2 and i−1, oldest first
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        sigma, sigma_next = level.sigma, nxt.sigma
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, level.alpha_cumprod)
        x_ve = x / level.alpha_cumprod**0.5
        if i > 0 and x0s:  # UniC on the move grid[i−1] → grid[i] that produced x̃_i
            h = math.log(grid[i - 1].sigma / sigma)
            d_now = x0 - x0s[-1]  # D_t = x̂0_i − x̂0_{i−1}
            if i >= 2 and len(x0s) == 2:  # UniP-2 made x̃_i: swap its 1/2·D_1 for UniC-2's a_1·D_1 + a_2·D_t
                r = math.log(grid[i - 1].sigma / grid[i - 2].sigma) / h
                a1, a2 = unic_weights(h, r)
                d_1 = (x0s[-2] - x0s[-1]) / r
                x_ve = x_ve + (1 - math.exp(-h)) * ((a1 - 0.5) * d_1 + a2 * d_now)
            else:  # UniP-1 (DDIM) made x̃_i: UniC-1 adds a_1·D_t with a_1 = 1/2
                x_ve = x_ve + (1 - math.exp(-h)) * 0.5 * d_now
        if sigma_next == 0:  # λ = ∞: the update is x̂0 itself
            x_ve = x0
        else:
            h = math.log(sigma / sigma_next)  # h_i = λ_{i+1} − λ_i with λ = −log σ
            d = x0
            if x0s and 0 < i < last:  # UniP-2 with a_1 = 1/2 is DPM-Solver++(2M)'s update (Lu et al. 2022, Alg. 2)
                r = math.log(grid[i - 1].sigma / sigma) / h
                d = x0 + (x0 - x0s[-1]) / (2 * r)
            x_ve = (sigma_next / sigma) * x_ve + (1 - math.exp(-h)) * d
        x_next = x_ve * nxt.alpha_cumprod**0.5
        yield Step(i, level, nxt, x, x0, eps, x_next)
        x0s = (x0s + [x0])[-2:]
        x = x_next


def ddim_inversion(denoiser, x, grid, refine: int = 0) -> Iterator[Step]:
    """DDIM inversion: the η = 0 map of Song et al. 2021 (eq. 12) run upward through `grid` reversed, reusing
    ε̂(x_cur) for the move to the next, noisier level. Exact when ε̂ does not change along the path; yields one Step
    per move.

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


def cold_improved(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """Cold diffusion's improved sampling (Bansal et al. 2022, Algorithm 2): x_{s'} = x_s − D(x̂0, s) + D(x̂0, s').

    `denoiser(x_s, level)` is the restoration R(x_s, s) = x̂0 (not ε̂) and `denoiser.degrade(x0, level)` is D; the
    level's timestep is s. Step.eps_pred records the correction D(x̂0, s) − D(x̂0, s'). Deterministic: the only
    randomness of a cold run is its start. The paper's argument (§3.3): for D(x, s) = x + s·e, linear in s,
    x_s = D(x0, s) gives x_{s−1} = x0 + s·e − x̂0 − s·e + x̂0 + (s−1)·e = D(x0, s − 1) whatever x̂0 is, so R's errors
    do not accumulate; for a smooth D this holds to first order in the step, where Algorithm 1 carries R's error
    D(x̂0 − x0, s − 1) into every step.
    """
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        x0 = denoiser(x, level)
        correction = denoiser.degrade(x0, level) - denoiser.degrade(x0, nxt)
        x_next = x - correction  # Algorithm 2, line 4, with s − 1 → s' (a strided grid)
        yield Step(i, level, nxt, x, x0, correction, x_next)
        x = x_next


def cold_naive(denoiser, x, grid, *, eta=0.0, generator=None, start=0, history=()) -> Iterator[Step]:
    """Cold diffusion's naive sampling (Bansal et al. 2022, Algorithm 1): x_{s'} = D(x̂0, s'), x̂0 = R(x_s, s).

    Records the same correction D(x̂0, s) − D(x̂0, s') as Algorithm 2, so the two can be compared step by step."""
    for i in range(start, len(grid) - 1):
        level, nxt = grid[i], grid[i + 1]
        x0 = denoiser(x, level)
        x_next = denoiser.degrade(x0, nxt)  # Algorithm 1, line 4
        yield Step(i, level, nxt, x, x0, denoiser.degrade(x0, level) - x_next, x_next)
        x = x_next


@dataclass(frozen=True)
class SamplerSpec:
    """Everything the rest of the studio knows about one sampler: validation, the pipeline, branching, the CLI, the
    app's choices and PNG metadata all read it from SAMPLER_TABLE."""

    sample: Sampler  # the generator function
    display_name: str  # as AUTOMATIC1111 writes it in a PNG's `parameters`; " Karras" follows with --karras
    grid_end: GridEnd  # "alpha0": end on ᾱ_0 like SD's DDIM; "clean": integrate to σ = 0 (schedules.sampling_grid)
    uses_eta: bool = False  # η scales this sampler's fresh per-step noise (the app enables its η box)
    default_eta: float = 0.0  # the η of a request that names none
    history_steps: int = 0  # how many previous steps' x̂0 the multistep update reads (rebuilt for a resumed run)
    supports_karras: bool = True  # can walk Karras et al. 2022 eq. 5 σs (fractional timesteps)
    model_calls_per_step: int = 1  # denoiser calls per step; stages past the first are skipped on a move to σ = 0
    family: str = "ldm"  # the models it runs with: "ldm" (ε/v latent diffusion) or "cold" (cold.py's restorers)

    def draws_noise(self, eta: float) -> bool:
        """Whether a run with this η consumes the noise generator (then its state is kept per step for branching)."""
        return self.uses_eta and eta > 0

    def model_calls(self, steps: int) -> int:
        """Denoiser calls for a whole run (time estimates): Heun's 10 steps to σ = 0 take 19."""
        extra = self.model_calls_per_step - 1 if self.grid_end == "clean" else 0
        return steps * self.model_calls_per_step - extra

    def resume_history(
        self, denoiser: Denoiser, recorded: Sequence[tuple[torch.Tensor, NoiseLevel]]
    ) -> tuple[torch.Tensor, ...]:
        """The `history` for resuming at step k, from the recorded (x_t, level) of steps 0 … k−1 (only the last
        `history_steps` are used): each x̂0 predicted again from its exact recorded x_t, the same computation the
        sampler made, so the resumed run continues bit for bit. Costs `history_steps` model calls."""
        wanted = recorded[max(0, len(recorded) - self.history_steps):] if self.history_steps else ()
        return tuple(predict_x0(x, denoiser(x, level), level.alpha_cumprod) for x, level in wanted)


# CLI name → spec; dict order is the order the app lists them in. To add a sampler: its function above and one entry.
SAMPLER_TABLE: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(ddim, "DDIM", "alpha0", uses_eta=True, default_eta=0.0),
    "ddpm": SamplerSpec(ddpm, "DDPM", "alpha0", uses_eta=True, default_eta=1.0),
    "euler_a": SamplerSpec(euler_ancestral, "Euler a", "clean", uses_eta=True, default_eta=1.0),
    "euler": SamplerSpec(euler, "Euler", "clean"),
    "heun": SamplerSpec(heun, "Heun", "clean", model_calls_per_step=2),
    "dpmpp_2m": SamplerSpec(dpmpp_2m, "DPM++ 2M", "clean", history_steps=1),
    "dpmpp_2m_sde": SamplerSpec(dpmpp_2m_sde, "DPM++ 2M SDE", "clean", uses_eta=True, default_eta=1.0, history_steps=1),
    "unipc": SamplerSpec(unipc, "UniPC", "clean", history_steps=2),
    "cold_improved": SamplerSpec(cold_improved, "Cold improved (Alg. 2)", "clean", supports_karras=False,
                                 family="cold"),
    "cold_naive": SamplerSpec(cold_naive, "Cold naive (Alg. 1)", "clean", supports_karras=False, family="cold"),
}


def samplers_for(family: str) -> dict[str, SamplerSpec]:
    """The table's samplers that run with a model of this family ("ldm" or "cold"), in the table's order."""
    return {name: spec for name, spec in SAMPLER_TABLE.items() if spec.family == family}
