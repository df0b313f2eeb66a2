"""Schedules and spacing against reference values: the definitions evaluated in float64, which diffusers' and
k-diffusion's schedulers reproduce."""

import math

import numpy as np
import pytest
import torch

from studio.engine.schedules import NoiseSchedule, ScheduleConfig, make_betas, q_sample, sampling_grid

SD = NoiseSchedule(ScheduleConfig())


@pytest.mark.parametrize(
    "t, beta, alpha_cumprod, sigma",
    [(0, 0.00085, 0.99915, 0.029167), (499, 0.00480379, 0.277670, 1.612886), (999, 0.012, 0.00466010, 14.614641)],
)
def test_sd_schedule_matches_reference_table(t, beta, alpha_cumprod, sigma):
    assert SD.betas[t].item() == pytest.approx(beta, rel=1e-5)
    assert SD.alphas_cumprod[t].item() == pytest.approx(alpha_cumprod, rel=1e-5)
    assert SD.sigmas[t].item() == pytest.approx(sigma, rel=1e-5)


def test_linear_and_cosine_schedules():
    linear = torch.cumprod(1 - make_betas("linear", 1000, 1e-4, 0.02), 0)
    assert linear[0].item() == pytest.approx(0.9999)
    assert linear[499].item() == pytest.approx(0.078587, rel=1e-4)
    assert linear[999].item() == pytest.approx(4.036e-5, rel=1e-3)
    cosine_betas = make_betas("cosine", 1000, 0, 0)
    assert cosine_betas[0].item() == pytest.approx(4.128e-5, rel=1e-3)
    assert cosine_betas[999].item() == pytest.approx(0.999)
    assert torch.cumprod(1 - cosine_betas, 0)[499].item() == pytest.approx(0.49384, rel=1e-4)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_betas("quadratic", 1000, 0.1, 0.2)


def test_leading_spacing_with_offset_one():
    assert SD.timesteps(10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    fifty = SD.timesteps(50)
    assert fifty[:2] == [981, 961] and fifty[-2:] == [21, 1] and len(fifty) == 50
    thirty = SD.timesteps(30)
    assert len(thirty) == 30 and thirty[:2] == [958, 925] and thirty[-1] == 1


def test_trailing_spacing():
    trailing = NoiseSchedule(ScheduleConfig(spacing="trailing"))
    assert trailing.timesteps(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    thirty = trailing.timesteps(30)
    assert thirty[:3] == [999, 966, 932] and thirty[-2:] == [66, 32]


def test_linspace_spacing_matches_diffusers_ddim():
    linspace = NoiseSchedule(ScheduleConfig(spacing="linspace"))
    # diffusers' "linspace" selection (Lin et al. 2023, Table 2)
    assert linspace.timesteps(10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    for steps in (1, 2, 7, 25, 50, 999, 1000):  # numpy's linspace + round (half to even), every step count
        expected = np.linspace(0, 999, steps).round()[::-1].astype(int).tolist()
        assert linspace.timesteps(steps) == expected, steps


def test_diffusers_scheduler_configs_keep_their_spacing(tmp_path):
    from studio.engine.checkpoints import _schedule_from

    for spacing in ("leading", "trailing", "linspace"):
        schedule, _ = _schedule_from({"timestep_spacing": spacing, "steps_offset": 0}, tmp_path / "scheduler")
        assert schedule.spacing == spacing


def test_karras_sigmas_match_k_diffusion():
    expected = [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292]
    assert SD.karras_sigmas(10) == pytest.approx(expected, abs=1e-4)


def test_timestep_of_a_sigma_interpolates_log_sigma():
    for t in (0, 1, 17, 500, 999):
        assert SD.t_at_sigma(float(SD.sigmas[t])) == pytest.approx(t, abs=1e-6)
    assert SD.t_at_sigma(1.612886) == pytest.approx(499, abs=1e-4)
    # between two integer timesteps t is linear in log σ (k-diffusion's sigma_to_t)
    mid = math.exp((math.log(SD.sigmas[499]) + math.log(SD.sigmas[500])) / 2)
    assert SD.t_at_sigma(mid) == pytest.approx(499.5, abs=1e-9)
    assert SD.t_at_sigma(1e-9) == 0.0 and SD.t_at_sigma(1e9) == 999.0


def test_grids_end_where_each_sampler_family_ends():
    ddim_grid = sampling_grid(SD, 10, final="alpha0")
    assert len(ddim_grid) == 11
    assert ddim_grid[-1].alpha_cumprod == pytest.approx(0.99915)  # SD's final ᾱ_0 (set_alpha_to_one=False)
    k_grid = sampling_grid(SD, 10, karras=True, final="clean")
    assert k_grid[-1].sigma == 0
    assert [lv.sigma for lv in k_grid[:-1]] == pytest.approx(SD.karras_sigmas(10), rel=1e-9)


def test_closed_form_marginal_equals_the_iterated_forward_chain():
    """q(x_t | x0) = N(√ᾱ_t·x0, (1−ᾱ_t)I) (DDPM eq. 4) against x_t = √(1−β_t)·x_{t−1} + √β_t·ε iterated."""
    betas = SD.betas
    mean_coef, variance = 1.0, 0.0
    for t in range(1000):
        mean_coef *= math.sqrt(1 - betas[t].item())
        variance = (1 - betas[t].item()) * variance + betas[t].item()
        if t in (0, 10, 250, 999):
            assert mean_coef == pytest.approx(math.sqrt(SD.alphas_cumprod[t].item()), rel=1e-9)
            assert variance == pytest.approx(1 - SD.alphas_cumprod[t].item(), rel=1e-9)
    # and by sampling: 200k scalar chains to t = 300 against q_sample's moments
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(301):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    closed = q_sample(x0, torch.randn(x.shape, generator=g, dtype=torch.float64), SD.alphas_cumprod[300].item())
    assert x.mean().item() == pytest.approx(closed.mean().item(), abs=0.01)
    assert x.var().item() == pytest.approx(closed.var().item(), rel=0.02)
