"""Noise schedules, timestep spacing and the noise-level grids the samplers walk.

Notation follows DDPM (Ho et al. 2020): ``alphas_cumprod[t]`` is ᾱ_t (the DDIM paper's α_t), the VP forward
marginal is x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (DDPM eq. 4) and the VE / Karras noise level is σ_t = √((1−ᾱ_t)/ᾱ_t).
Everything is computed in float64 and handed to samplers as plain floats, so no sampler state lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

ScheduleKind = Literal["linear", "scaled_linear", "cosine"]
Spacing = Literal["leading", "trailing", "linspace"]

SCHEDULE_KINDS: tuple[str, ...] = ("linear", "scaled_linear", "cosine")
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


def make_betas(kind: ScheduleKind, num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    t = num_train_timesteps
    if kind == "linear":  # DDPM, Ho et al. 2020 Sec. 4
        return torch.linspace(beta_start, beta_end, t, dtype=torch.float64)
    if kind == "scaled_linear":  # SD 1.x / 2.x: linear in √β (CompVis calls this "linear")
        return torch.linspace(beta_start**0.5, beta_end**0.5, t, dtype=torch.float64) ** 2
    if kind == "cosine":  # improved DDPM, Nichol & Dhariwal 2021 eq. 17, s = 0.008, β capped at 0.999
        s = 0.008

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        return torch.tensor([min(1 - f((i + 1) / t) / f(i / t), 0.999) for i in range(t)], dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: ScheduleKind = "scaled_linear"  # what every SD 1.x / 2.x checkpoint was trained with
    num_train_timesteps: int = 1000  # T
    beta_start: float = 0.00085  # SD's linear_start
    beta_end: float = 0.012  # SD's linear_end
    spacing: Spacing = "leading"  # the original SD release's spacing ...
    steps_offset: int = 1  # ... with offset 1: 901, 801, ..., 1 for 10 steps


class NoiseSchedule:
    """ᾱ_t and σ_t tables for one training schedule, plus the conversions samplers need."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        self.betas = make_betas(config.kind, config.num_train_timesteps, config.beta_start, config.beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self._log_sigmas = self.sigmas.log()

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def final_alpha_cumprod(self) -> float:
        # SD's DDIM ends on ᾱ_0, not 1 (diffusers set_alpha_to_one=False, CompVis prepends alphacums[0]).
        return float(self.alphas_cumprod[0])

    def timesteps(self, steps: int) -> list[int]:
        """Descending training timesteps for `steps` sampling steps: the "leading", "trailing" and "linspace"
        selections compared by Lin et al. 2023 (Table 2); SD ships "leading" with offset 1 (901, 801, …, 1 for 10)."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        t = self.num_train_timesteps
        if steps > t:
            raise ValueError(f"steps must be at most {t}, got {steps}")
        if self.config.spacing == "leading":
            ts = [i * (t // steps) + self.config.steps_offset for i in range(steps)]
        elif self.config.spacing == "trailing":
            ts = [round(t - i * t / steps) - 1 for i in range(steps)][::-1]
        elif self.config.spacing == "linspace":  # diffusers DDIM/Euler: round(linspace(0, T − 1, N)), half to even
            stride = (t - 1) / (steps - 1) if steps > 1 else 0.0
            ts = [round(i * stride) for i in range(steps - 1)] + [t - 1 if steps > 1 else 0]
        else:
            raise ValueError(f"unknown timestep spacing {self.config.spacing!r}")
        return sorted((min(max(v, 0), t - 1) for v in ts), reverse=True)

    def t_at_sigma(self, sigma: float) -> float:
        """Fractional timestep whose σ is `sigma` (piecewise-linear in log σ; k-diffusion sigma_to_t)."""
        log_sigma = math.log(max(sigma, 1e-12))
        logs = self._log_sigmas
        if log_sigma <= float(logs[0]):
            return 0.0
        if log_sigma >= float(logs[-1]):
            return float(self.num_train_timesteps - 1)
        high = int(torch.searchsorted(logs, torch.tensor(log_sigma, dtype=torch.float64)))
        low = high - 1
        w = (log_sigma - float(logs[low])) / (float(logs[high]) - float(logs[low]))
        return low + w

    def karras_sigmas(self, steps: int, rho: float = 7.0) -> list[float]:
        """Karras et al. 2022 eq. 5 between this schedule's σ_max and σ_min (no trailing 0)."""
        sigma_min, sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        if steps == 1:
            return [sigma_max]
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)]


@dataclass(frozen=True)
class NoiseLevel:
    """One point of a sampling grid: the model timestep and its ᾱ (σ follows)."""

    timestep: float
    alpha_cumprod: float

    @property
    def sigma(self) -> float:
        return math.sqrt((1 - self.alpha_cumprod) / self.alpha_cumprod) if self.alpha_cumprod < 1 else 0.0


def sampling_grid(schedule: NoiseSchedule, steps: int, *, karras: bool = False, final: Literal["alpha0", "clean"]) -> list[NoiseLevel]:
    """The `steps` noise levels a sampler visits, plus the level it ends on (so `steps + 1` points).

    DDIM / DDPM end on ᾱ_0 as SD does (`final="alpha0"`); the σ-samplers end at σ = 0 (`final="clean"`).
    With `karras`, the levels are Karras σs mapped back to fractional timesteps.
    """
    if karras:
        levels = [NoiseLevel(schedule.t_at_sigma(s), 1.0 / (1.0 + s * s)) for s in schedule.karras_sigmas(steps)]
    else:
        levels = [NoiseLevel(float(t), float(schedule.alphas_cumprod[t])) for t in schedule.timesteps(steps)]
    end = NoiseLevel(0.0, schedule.final_alpha_cumprod) if final == "alpha0" else NoiseLevel(-1.0, 1.0)
    return levels + [end]


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha_cumprod: float | torch.Tensor) -> torch.Tensor:
    """Closed-form forward process q(x_t | x0) (DDPM eq. 4); `alpha_cumprod` may be a tensor broadcast over x0,
    one ᾱ per sample of a training batch."""
    return alpha_cumprod**0.5 * x0 + (1 - alpha_cumprod) ** 0.5 * noise
