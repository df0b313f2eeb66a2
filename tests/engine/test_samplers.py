"""Samplers against the papers' formulas, with dummy denoisers whose trajectories can be checked by hand."""

import math

import pytest
import torch

from studio.engine.samplers import (
    SAMPLER_TABLE,
    ddim,
    ddim_sigma,
    ddpm,
    ddpm_posterior,
    dpmpp_2m,
    eps_from_v,
    euler,
    euler_ancestral,
    predict_eps,
    predict_x0,
    samplers_for,
    v_from_eps,
)
from studio.engine.schedules import NoiseSchedule, ScheduleConfig, sampling_grid

SD = NoiseSchedule(ScheduleConfig())
SHAPE = (1, 4, 8, 8)


def oracle(target: torch.Tensor):
    """A perfect denoiser for a single data point: ε̂ = (x_t − √ᾱ·x0)/√(1−ᾱ)."""
    return lambda x, level: predict_eps(x, target, level.alpha_cumprod)


def scaled_denoiser(x, level):
    """diffusers' test model, sample·t/(t+1): a known function of x and t."""
    return x * level.timestep / (level.timestep + 1)


def noise(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run(sampler, denoiser, grid, seed=1, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return list(sampler(denoiser, noise(), grid, generator=generator, **kwargs))


def test_conversions_round_trip():
    x0, eps = noise(1), noise(2)
    for a in (0.999, 0.5, 0.0047):
        x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        torch.testing.assert_close(predict_x0(x_t, eps, a), x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(predict_eps(x_t, x0, a), eps, atol=1e-4, rtol=1e-4)
        v = v_from_eps(x0, eps, a)
        torch.testing.assert_close(eps_from_v(x_t, v, a), eps, atol=1e-5, rtol=1e-5)
        # v = (√ᾱ·x_t − x0)/√(1−ᾱ) (Salimans & Ho 2022, Sec. 4 and Appendix D)
        torch.testing.assert_close(v, (a**0.5 * x_t - x0) / (1 - a) ** 0.5, atol=1e-4, rtol=1e-4)


def test_ddim_eta_zero_is_deterministic_with_zero_sigma():
    grid = sampling_grid(SD, 10, final="alpha0")
    assert all(ddim_sigma(a.alpha_cumprod, b.alpha_cumprod, 0.0) == 0 for a, b in zip(grid, grid[1:]))
    generator = torch.Generator().manual_seed(5)
    before = generator.get_state()
    first = [s.x_next for s in ddim(scaled_denoiser, noise(), grid, eta=0.0, generator=generator)]
    assert torch.equal(generator.get_state(), before), "η = 0 must not draw noise"
    second = [s.x_next for s in ddim(scaled_denoiser, noise(), grid, eta=0.0, generator=torch.Generator().manual_seed(9))]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_ddim_eta_zero_hand_computed_trajectory():
    """With ε̂ ≡ 0, x̂0 = x/√ᾱ and DDIM moves x to √ᾱ_prev·x̂0, so x_end = x_T·√ᾱ_end/√ᾱ_start."""
    grid = sampling_grid(SD, 10, final="alpha0")
    steps = run(ddim, lambda x, level: torch.zeros_like(x), grid, eta=0.0)
    expected = noise() * math.sqrt(grid[-1].alpha_cumprod / grid[0].alpha_cumprod)
    torch.testing.assert_close(steps[-1].x_next, expected)


def test_ddim_eta_one_sigma_is_the_ddpm_posterior_variance():
    grid = sampling_grid(SD, 10, final="alpha0")
    for level, nxt in zip(grid, grid[1:]):
        _, _, variance = ddpm_posterior(level.alpha_cumprod, nxt.alpha_cumprod)
        assert ddim_sigma(level.alpha_cumprod, nxt.alpha_cumprod, 1.0) ** 2 == pytest.approx(variance, rel=1e-9)
    # σ_t(η=1) of SD's 10-step DDIM grid (DDIM eq. 16 on SD's scaled-linear schedule): t = 901 → 0.7763, t = 1 → 0.0206
    assert ddim_sigma(grid[0].alpha_cumprod, grid[1].alpha_cumprod, 1.0) == pytest.approx(0.7763, abs=1e-4)
    assert ddim_sigma(grid[-2].alpha_cumprod, grid[-1].alpha_cumprod, 1.0) == pytest.approx(0.0206, abs=1e-4)


def test_ddim_eta_one_equals_ancestral_ddpm_step_for_step():
    grid = sampling_grid(SD, 12, final="clean")
    a = run(ddim, scaled_denoiser, grid, eta=1.0)
    b = run(ddpm, scaled_denoiser, grid, eta=1.0)
    for sa, sb in zip(a, b):
        torch.testing.assert_close(sa.x_next, sb.x_next, atol=1e-5, rtol=1e-5)


def test_ddpm_posterior_mean_matches_equation_7():
    """μ̃ from the coefficients equals the Gaussian posterior computed from q(x_t|x_prev) and q(x_prev|x0)."""
    a, a_prev = float(SD.alphas_cumprod[500]), float(SD.alphas_cumprod[400])
    coef_x0, coef_xt, variance = ddpm_posterior(a, a_prev)
    alpha = a / a_prev  # effective α for the strided pair
    # product of Gaussians: precision = 1/(1−ᾱ_prev) + α/(1−α)
    precision = 1 / (1 - a_prev) + alpha / (1 - alpha)
    assert variance == pytest.approx(1 / precision, rel=1e-9)
    assert coef_x0 == pytest.approx(a_prev**0.5 / (1 - a_prev) / precision, rel=1e-9)
    assert coef_xt == pytest.approx(alpha**0.5 / (1 - alpha) / precision, rel=1e-9)


def test_euler_ancestral_equals_ddim_eta_one_on_the_same_grid():
    """Euler a with η = 1 on discrete-timestep σs is DDIM(η = 1), i.e. DDPM's ancestral step (Karras et al. 2022, Sec. 3; DDIM eq. 16)."""
    grid = sampling_grid(SD, 10, final="clean")
    a = run(euler_ancestral, scaled_denoiser, grid, eta=1.0)
    b = run(ddim, scaled_denoiser, grid, eta=1.0)
    for sa, sb in zip(a, b):
        torch.testing.assert_close(sa.x_next, sb.x_next, atol=1e-4, rtol=1e-4)


def test_euler_with_eta_zero_equals_ddim_eta_zero():
    grid = sampling_grid(SD, 10, final="clean")
    a = run(euler_ancestral, scaled_denoiser, grid, eta=0.0)
    b = run(ddim, scaled_denoiser, grid, eta=0.0)
    torch.testing.assert_close(a[-1].x_next, b[-1].x_next, atol=1e-5, rtol=1e-5)


def test_dpmpp_2m_first_step_is_ddim_and_second_uses_the_multistep_formula():
    grid = sampling_grid(SD, 10, karras=True, final="clean")
    steps = run(dpmpp_2m, scaled_denoiser, grid)
    ddim_first = next(ddim(scaled_denoiser, noise(), grid, eta=0.0, generator=None))
    torch.testing.assert_close(steps[0].x_next, ddim_first.x_next, atol=1e-5, rtol=1e-5)
    # step 2 by hand (Lu et al. 2022, Alg. 2), in the VE form
    s0, s1, s2 = grid[0].sigma, grid[1].sigma, grid[2].sigma
    h, h_last = math.log(s1 / s2), math.log(s0 / s1)
    r = h_last / h
    d = (1 + 1 / (2 * r)) * steps[1].x0_pred - 1 / (2 * r) * steps[0].x0_pred
    x_ve = steps[1].x_t / grid[1].alpha_cumprod ** 0.5
    expected = ((s2 / s1) * x_ve + (1 - math.exp(-h)) * d) * grid[2].alpha_cumprod ** 0.5
    torch.testing.assert_close(steps[1].x_next, expected)


def test_euler_is_ddim_eta_zero_on_the_same_grid():
    """Karras et al. 2022's Euler step in σ, x' = x + (σ' − σ)·(x − x̂0)/σ, is DDIM eq. 12 with η = 0 in VE units."""
    for karras in (False, True):
        grid = sampling_grid(SD, 10, karras=karras, final="clean")
        a = run(euler, scaled_denoiser, grid)
        b = run(ddim, scaled_denoiser, grid, eta=0.0)
        for sa, sb in zip(a, b):
            torch.testing.assert_close(sa.x_next, sb.x_next, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(samplers_for("ldm")))
def test_model_calls_match_the_table(name):
    """SamplerSpec.model_calls (time estimates) counts what the sampler really asks of the model: Heun twice per
    step except on the move to σ = 0."""
    spec = SAMPLER_TABLE[name]
    calls = []

    def counting(x, level):
        calls.append(level)
        return scaled_denoiser(x, level)

    grid = sampling_grid(SD, 7, final=spec.grid_end)
    run(spec.sample, counting, grid, eta=spec.default_eta)
    assert len(calls) == spec.model_calls(7)


@pytest.mark.parametrize("name", sorted(samplers_for("ldm")))
def test_draws_noise_says_when_the_generator_is_used(name):
    """The pipeline records the generator's state per step only when `draws_noise(η)`; a sampler that drew without
    saying so would break branch replay silently."""
    spec = SAMPLER_TABLE[name]
    grid = sampling_grid(SD, 6, final=spec.grid_end)
    for eta in sorted({0.0, spec.default_eta, 0.5}):
        generator = torch.Generator().manual_seed(4)
        before = generator.get_state()
        list(spec.sample(scaled_denoiser, noise(), grid, eta=eta, generator=generator))
        assert (not torch.equal(generator.get_state(), before)) == spec.draws_noise(eta), eta
    assert spec.uses_eta or spec.default_eta == 0


def test_sampler_table_names_are_unique_and_torch_free():
    import subprocess
    import sys

    names = [spec.display_name.lower() for spec in SAMPLER_TABLE.values()]
    assert len(set(names)) == len(names)
    code = "import sys, studio.engine.samplers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", sorted(samplers_for("ldm")))
def test_every_sampler_lands_on_the_data_point_with_an_oracle_denoiser(name):
    target = torch.linspace(-1, 1, 256).reshape(SHAPE)
    spec = SAMPLER_TABLE[name]
    grid = sampling_grid(SD, 20, final="clean")
    steps = run(spec.sample, oracle(target), grid, eta=spec.default_eta)
    assert len(steps) == 20 and [s.index for s in steps] == list(range(20))
    torch.testing.assert_close(steps[-1].x_next, target, atol=1e-4, rtol=1e-4)
    for s in steps:  # every record carries a consistent (x_t, x̂0, ε̂) triple
        torch.testing.assert_close(predict_x0(s.x_t, s.eps_pred, s.level.alpha_cumprod), s.x0_pred)


@pytest.mark.parametrize("name", sorted(samplers_for("ldm")))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_resuming_from_any_step_reproduces_the_run_bit_for_bit(name, k):
    """Resume at step k from the recorded x_t of steps < k alone (SamplerSpec.resume_history), with the
    generator's state from when step k began: the same bits as the uninterrupted run."""
    spec = SAMPLER_TABLE[name]
    grid = sampling_grid(SD, 8, final="clean")
    generator = torch.Generator().manual_seed(3)
    states, steps = [], []
    for step in spec.sample(scaled_denoiser, noise(), grid, eta=1.0, generator=generator):
        steps.append(step)
        states.append(generator.get_state())  # state after step i = state when step i + 1 begins
    resumed_generator = torch.Generator().manual_seed(999)
    resumed_generator.set_state(states[k - 1])
    history = spec.resume_history(scaled_denoiser, [(s.x_t.clone(), s.level) for s in steps[:k]])
    assert len(history) == min(k, spec.history_steps)
    resumed = list(
        spec.sample(scaled_denoiser, steps[k].x_t, grid, eta=1.0, generator=resumed_generator, start=k, history=history)
    )
    assert [s.index for s in resumed] == list(range(k, 8))
    assert torch.equal(resumed[-1].x_next, steps[-1].x_next)


def test_stochastic_samplers_draw_fresh_noise_per_seed():
    grid = sampling_grid(SD, 6, final="clean")
    a = run(ddpm, scaled_denoiser, grid, seed=1)
    b = run(ddpm, scaled_denoiser, grid, seed=2)
    assert not torch.equal(a[-1].x_next, b[-1].x_next)


def test_ddim_inversion_is_exact_when_the_noise_prediction_is_constant():
    """With ε̂ independent of x and t the DDIM ODE map is exactly invertible (Song et al. 2021, Sec. 4.3)."""
    from studio.engine.samplers import ddim_inversion

    fixed = noise(4)
    grid = sampling_grid(SD, 10, final="alpha0")
    x0 = noise(5) * 0.5
    up = list(ddim_inversion(lambda x, level: fixed, x0, grid))
    assert [s.next_level.timestep for s in up] == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    down = list(ddim(lambda x, level: fixed, up[-1].x_next, grid, eta=0.0))
    torch.testing.assert_close(down[-1].x_next, x0, atol=1e-5, rtol=1e-5)


def test_refined_ddim_inversion_is_exact_for_gaussian_data():
    """For data x0 ~ N(0, I) the ideal denoiser is linear, x̂0(x_t) = √ᾱ·x_t, so ε̂ changes along the path and plain
    inversion is off; the blended fixed point has slope 0 there (samplers.ddim_inversion), so one iteration lands
    exactly on the x_T that DDIM maps back onto the start."""
    from studio.engine.samplers import ddim_inversion

    def gaussian_denoiser(x, level):
        a = level.alpha_cumprod
        return (x - a**0.5 * (a**0.5 * x)) / (1 - a) ** 0.5  # ε̂ from x̂0 = √ᾱ·x, DDIM eq. 9

    grid = sampling_grid(SD, 10, final="alpha0")
    start = noise(6)
    errors = {}
    for refine in (0, 1, 3):
        up = list(ddim_inversion(gaussian_denoiser, start, grid, refine=refine))
        down = list(ddim(gaussian_denoiser, up[-1].x_next, grid, eta=0.0))
        errors[refine] = float((down[-1].x_next - start).abs().max())
    assert errors[0] > 1e-2  # plain inversion misses
    assert errors[1] < 1e-4 and errors[3] < 1e-4


@pytest.mark.parametrize("kind, steps", [("cosine", 50), ("scaled_linear", 20)])
def test_refined_ddim_inversion_converges_for_a_nonlinear_model(kind, steps):
    """A smooth nonlinear model and a start it can reach (its own DDIM output): the round-trip error shrinks with
    every iteration instead of blowing up, also with zero terminal SNR (cosine: ᾱ' ≈ 0 at the last move)."""
    from studio.engine.samplers import ddim_inversion

    schedule = NoiseSchedule(ScheduleConfig(kind=kind, spacing="trailing", steps_offset=0))
    grid = sampling_grid(schedule, steps, final="alpha0")

    def denoiser(x, level):  # x̂0 = tanh(√ᾱ·x) + 0.3·ᾱ·sin(x): bounded, nonlinear, depends on the level
        a = level.alpha_cumprod
        x0 = torch.tanh(a**0.5 * x) + 0.3 * torch.sin(x) * a
        return (x - a**0.5 * x0) / (1 - a) ** 0.5

    start = list(ddim(denoiser, noise(7), grid, eta=0.0))[-1].x_next
    errors = []
    for refine in (0, 1, 2, 4):
        up = list(ddim_inversion(denoiser, start, grid, refine=refine))
        down = list(ddim(denoiser, up[-1].x_next, grid, eta=0.0))
        errors.append(float((down[-1].x_next - start).abs().max()))
    assert errors[0] > 0.1, errors  # plain inversion is visibly off
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] and errors[3] < errors[2], errors
    assert errors[3] < errors[0] / 10, errors
