"""Our samplers against diffusers' schedulers: the same analytic denoiser, the same noise levels, the same start.

The denoiser is a nonlinear ε-model, ε̂ = tanh(1.5·x)·f(σ), given the noise level as σ: diffusers rounds the
timesteps of a Karras grid to integers for its multistep schedulers while keeping the exact σs, so a model of t
would see different inputs on the two sides for a reason that has nothing to do with the solvers.

Grids (schedules.sampling_grid; every sampler here ends at σ = 0, diffusers' final_sigmas_type="zero"):
- SD's own timesteps, leading spacing with offset 1 (901, 801, …, 1 for 10 steps), are what diffusers' Euler and
  Heun build with timestep_spacing="leading", steps_offset=1. diffusers' multistep schedulers space "leading" over
  N + 1 points, so they are compared on the trailing grid (999, 899, …, 99), which both sides build the same way.
- Karras σs (Karras et al. 2022 eq. 5) run from the table's σ_max to σ_min. diffusers' Euler and Heun take those
  ends from the σs at their spaced timesteps, so they get timestep_spacing="linspace" (999 … 0); the multistep
  schedulers take them from the table.
Each test first checks that the two grids agree, so a mismatch is reported as such and not as a solver error.

diffusers' Euler and Heun hold the VE latent x/√ᾱ and scale the model input by 1/√(σ²+1); its multistep schedulers
hold the VP latent as we do. At σ = 0 the two forms coincide, so final latents compare directly.

Tolerance as in test_diffusers_parity: 1e-4 relative to the largest value of the final latent. Both sides compute
in float32 from the same input; diffusers keeps σ and ᾱ in float32, we keep the grid in float64. Measured: 3e-7 to
8e-7 for the ODE samplers, 1.7e-6 for DPM++ 2M SDE. Leaving out UniPC's corrector moves the result by 1e-3,
Heun's correction by 8e-3, a wrong grid by more.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from studio.engine.samplers import SAMPLER_TABLE
from studio.engine.schedules import NoiseSchedule, ScheduleConfig, sampling_grid

pytestmark = pytest.mark.usefixtures("one_thread")

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
LEADING = NoiseSchedule(ScheduleConfig())  # SD's release: leading spacing, offset 1
TRAILING = NoiseSchedule(ScheduleConfig(spacing="trailing", steps_offset=0))
SHAPE = (1, 4, 16, 16)
RTOL = 1e-4


def eps_model(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.tanh(1.5 * x) * (0.8 + 0.4 / (1.0 + sigma))


def start_latent() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234))


def ours(name: str, grid, x: torch.Tensor, eta: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    steps = list(SAMPLER_TABLE[name].sample(lambda x, level: eps_model(x, level.sigma), x, grid, eta=eta,
                                            generator=generator))
    assert len(steps) == len(grid) - 1
    return steps[-1].x_next


def theirs(scheduler, x: torch.Tensor, noises: list[torch.Tensor] | None = None) -> torch.Tensor:
    """diffusers' own loop: scale_model_input, the model, step; the j-th model call sits at scheduler.sigmas[j]."""
    ve = isinstance(scheduler, (diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler))
    sample = x * (1 + float(scheduler.sigmas[0]) ** 2) ** 0.5 if ve else x.clone()
    for j, t in enumerate(scheduler.timesteps):
        eps = eps_model(scheduler.scale_model_input(sample, t), float(scheduler.sigmas[j]))
        extra = {} if noises is None else {"variance_noise": noises[j]}
        sample = scheduler.step(eps, t, sample, **extra).prev_sample
    return sample


def assert_same_grid(scheduler, grid) -> None:
    their_sigmas = torch.unique_consecutive(scheduler.sigmas.double())  # Heun lists each inner σ twice
    our_sigmas = torch.tensor([level.sigma for level in grid], dtype=torch.float64)
    # diffusers builds ᾱ in float32: σ_0 = √((1−ᾱ_0)/ᾱ_0) loses ~1e-5 of itself to the cancellation in 1 − ᾱ_0;
    # another spacing would be off by 1e-2 or more
    torch.testing.assert_close(our_sigmas, their_sigmas, rtol=1e-4, atol=0)


def max_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# (our sampler, diffusers scheduler class, its config, our schedule, steps, karras)
CASES = {
    "euler": ("euler", diffusers.EulerDiscreteScheduler,
              dict(timestep_spacing="leading", steps_offset=1), LEADING, 10, False),
    "euler_karras": ("euler", diffusers.EulerDiscreteScheduler,
                     dict(timestep_spacing="linspace", use_karras_sigmas=True), LEADING, 10, True),
    "heun": ("heun", diffusers.HeunDiscreteScheduler,
             dict(timestep_spacing="leading", steps_offset=1), LEADING, 10, False),
    "heun_karras": ("heun", diffusers.HeunDiscreteScheduler,
                    dict(timestep_spacing="linspace", use_karras_sigmas=True), LEADING, 10, True),
    # diffusers' default lower_order_final also drops to first order one step early when N < 15; ours (like
    # Lu et al. 2022, Algorithm 2) does not, so compare at 20 steps with the default config, and at 8 without it
    "dpmpp_2m": ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler,
                 dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"), TRAILING, 20, False),
    "dpmpp_2m_8": ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler,
                   dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
                        lower_order_final=False), TRAILING, 8, False),
    "dpmpp_2m_karras": ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler,
                        dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True), LEADING, 20, True),
    "unipc": ("unipc", diffusers.UniPCMultistepScheduler, dict(timestep_spacing="trailing"), TRAILING, 10, False),
    "unipc_20": ("unipc", diffusers.UniPCMultistepScheduler, dict(timestep_spacing="trailing"), TRAILING, 20, False),
    "unipc_karras": ("unipc", diffusers.UniPCMultistepScheduler, dict(use_karras_sigmas=True), LEADING, 10, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_samplers_match_diffusers(case):
    name, scheduler_class, config, schedule, steps, karras = CASES[case]
    scheduler = scheduler_class(**SD_BETAS, **config)  # everything else at diffusers' defaults
    scheduler.set_timesteps(steps)
    grid = sampling_grid(schedule, steps, karras=karras, final=SAMPLER_TABLE[name].grid_end)
    assert_same_grid(scheduler, grid)
    x = start_latent()
    expected = theirs(scheduler, x)
    got = ours(name, grid, x, eta=SAMPLER_TABLE[name].default_eta)
    assert max_deviation(got, expected) < RTOL


@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_sde_matches_diffusers_given_the_same_noise(karras):
    """η = 1 is diffusers' sde-dpmsolver++ (midpoint, order 2). Its step() takes the noise as `variance_noise`, so it
    gets exactly the z our sampler draws: one standard normal per step from the CPU generator, none on the move to
    σ = 0 (where its noise term is 0·z)."""
    steps, seed = 20, 7
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **SD_BETAS, algorithm_type="sde-dpmsolver++", solver_order=2,
        **(dict(use_karras_sigmas=True) if karras else dict(timestep_spacing="trailing")))
    scheduler.set_timesteps(steps)
    grid = sampling_grid(LEADING if karras else TRAILING, steps, karras=karras, final="clean")
    assert_same_grid(scheduler, grid)
    generator = torch.Generator().manual_seed(seed)
    noises = [torch.randn(SHAPE, generator=generator) for _ in range(steps - 1)] + [torch.zeros(SHAPE)]
    x = start_latent()
    expected = theirs(scheduler, x, noises)
    got = ours("dpmpp_2m_sde", grid, x, eta=1.0, seed=seed)
    assert max_deviation(got, expected) < RTOL


def test_dpmpp_2m_sde_with_eta_zero_is_dpmpp_2m_bit_for_bit():
    """With η = 0 the SDE step's noise σ_{i+1}·√(1 − e^{−2ηh}) vanishes and its x-coefficient e^{−ηh}·σ_{i+1}/σ_i and
    x̂0-coefficient 1 − e^{−(1+η)h} become DPM-Solver++'s (Lu et al. 2022, Algorithm 2): the same solver, no draws."""
    for karras in (False, True):
        grid = sampling_grid(LEADING, 12, karras=karras, final="clean")
        generator = torch.Generator().manual_seed(3)
        before = generator.get_state()
        x = start_latent()
        sde = list(SAMPLER_TABLE["dpmpp_2m_sde"].sample(lambda x, lv: eps_model(x, lv.sigma), x, grid, eta=0.0,
                                                         generator=generator))
        ode = list(SAMPLER_TABLE["dpmpp_2m"].sample(lambda x, lv: eps_model(x, lv.sigma), x, grid, eta=0.0,
                                                     generator=None))
        assert all(torch.equal(a.x_next, b.x_next) for a, b in zip(sde, ode))
        assert torch.equal(generator.get_state(), before)
