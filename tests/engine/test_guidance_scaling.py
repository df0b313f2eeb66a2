"""How guidance.py sizes its steps: Polyak's step for backward guidance (scale-free, a known closed form, the
minimum-norm minimiser in the limit), forward guidance's s(t) = s·n·√(ᾱ/(1−ᾱ)) (a ẑ0 step of one size at every
level, finite at ᾱ ≈ 0), the guides' support mask, and the cost line the app shows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.engine import Engine, GenerationRequest, Guide
from studio.engine.guidance import backward_delta, guidance_cost, guide_denoiser, guide_support
from studio.engine.samplers import predict_x0
from studio.engine.schedules import NoiseLevel


def quadratic(target, weight=1.0):
    return lambda z0: 0.5 * weight * ((z0 - target) ** 2).sum()


def test_polyak_step_halves_a_quadratic_residual_and_ignores_the_loss_scale():
    torch.manual_seed(0)
    z0, y = torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    # ℓ = ½‖r‖², ∇ℓ = r: η = ℓ/‖∇ℓ‖² = ½, so one step is Δ = ½(y − z0) and m steps Δ = (1 − 2^−m)(y − z0)
    one = backward_delta(quadratic(y), z0, steps=1, lr=1.0)
    torch.testing.assert_close(one, 0.5 * (y - z0))
    three = backward_delta(quadratic(y), z0, steps=3, lr=1.0)
    torch.testing.assert_close(three, (1 - 2**-3) * (y - z0))
    torch.testing.assert_close(backward_delta(quadratic(y, 1e4), z0, steps=3, lr=1.0), three)  # scale-free
    fixed = backward_delta(quadratic(y, 1e4), z0, steps=3, lr=1.0, step_size="fixed")
    assert not torch.isfinite(fixed).all() or fixed.abs().max() > 1e6  # a fixed step on the same loss diverges


def test_polyak_descent_reaches_the_minimum_norm_least_squares_solution():
    torch.manual_seed(3)
    A, b = torch.randn(8, 12, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    z0 = torch.randn(1, 12, dtype=torch.float64)
    objective = lambda z: 0.5 * ((z.reshape(-1) @ A.T - b) ** 2).sum()  # noqa: E731
    delta = backward_delta(objective, z0, steps=3000, lr=1.0)
    direct = torch.linalg.lstsq(A, b - A @ z0.reshape(-1), driver="gelsd").solution
    torch.testing.assert_close(delta.reshape(-1), direct, rtol=1e-5, atol=1e-5)


def test_polyak_stops_where_the_loss_is_flat():
    z0 = torch.zeros(1, 1, 2, 2)
    assert torch.equal(backward_delta(lambda z: (z * 0).sum(), z0, steps=3, lr=1.0), z0)


@pytest.mark.parametrize("alpha", [2.4e-9, 0.03, 0.5, 0.99])
def test_forward_guidance_moves_the_prediction_by_n_s_grad_at_every_level(alpha):
    """ε̃ = ε̂ + s·n·√(ᾱ/(1−ᾱ))·∇ ⇒ ẑ0(ε̃) = ẑ0 − s·n·∇_{z_t}ℓ (eq. 9's identity), finite even at ᾱ ≈ 0."""
    torch.manual_seed(1)
    level = NoiseLevel(999.0, alpha)
    x, y = torch.randn(1, 4, 2, 3, dtype=torch.float64), torch.randn(1, 4, 2, 3, dtype=torch.float64)
    denoise = lambda z, lv: 0.4 * z  # noqa: E731  linear ε̂
    s = 0.7
    guided = guide_denoiser(denoise, quadratic(y, s), mode="forward", active=lambda lv: True)(x, level)
    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quadratic(y, s)(predict_x0(z, denoise(z, level), alpha)), z)
    moved = predict_x0(x, guided, alpha) - predict_x0(x, denoise(x, level), alpha)
    assert torch.isfinite(guided).all()
    torch.testing.assert_close(moved, -6 * grad, rtol=1e-6, atol=1e-9 / math.sqrt(alpha))


def test_support_covers_a_hint_and_its_neighbour_cells_and_a_reference_is_global():
    hint = np.zeros((64, 64, 4), np.uint8)
    hint[:32, :32] = (0, 200, 0, 255)
    support = guide_support([Guide("colour", 1.0, hint)], (16, 16), "cpu")[0, 0]
    expected = torch.zeros(16, 16)
    expected[:9, :9] = 1  # the painted 8×8 latent cells, grown by one
    assert torch.equal(support, expected)
    keep = np.zeros((64, 64), np.float32)
    keep[60:, 60:] = 1
    both = guide_support([Guide("colour", 1.0, hint), Guide("keep", 1.0, keep)], (16, 16), "cpu")[0, 0]
    assert both[15, 15] == 1 and both[14, 14] == 1 and both[12, 12] == 0 and both[0, 0] == 1
    reference = np.zeros((64, 64, 3), np.uint8)
    assert guide_support([Guide("colour", 1.0, hint), Guide("reference", 1.0, reference)], (16, 16), "cpu") is None


def test_guidance_never_touches_the_latent_outside_the_hint():
    hint = np.zeros((64, 64, 4), np.uint8)
    hint[:16, :16] = (0, 200, 0, 255)
    torch.set_num_threads(1)
    request = GenerationRequest(prompt="x", model="tiny-random", steps=2, cfg=2.0, width=64, height=64,
                                device="cpu", dtype="fp32", guides=(Guide("colour", 1.0, hint),))
    for mode in ("forward", "backward"):
        run = Engine().run(request.replace(guide_mode=mode))
        for step in run.timeline:
            term = step.guidance.float()[0].abs().sum(0)  # (h, w) latent
            edge = 16 * term.shape[0] // 64 + 1  # the hinted cells, grown by one
            assert term[:edge, :edge].max() > 0 and term[edge:, :].max() == 0 and term[:, edge:].max() == 0


def test_cost_line():
    assert guidance_cost("forward", 5, 1) > 1
    assert guidance_cost("backward", 5, 1) > guidance_cost("backward", 1, 1) > 1
    assert guidance_cost("both", 5, 1) > max(guidance_cost("forward", 5, 1), guidance_cost("backward", 5, 1))
    assert guidance_cost("backward", 5, 2) == pytest.approx(2 * guidance_cost("backward", 5, 1))
    assert guidance_cost("forward", 1, 1) == guidance_cost("forward", 9, 1)  # forward takes no gradient steps
