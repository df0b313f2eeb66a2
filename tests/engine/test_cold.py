"""Cold diffusion's degradations against hand-computed cases, and its two samplers against the paper's argument
(Bansal et al. 2022, §3.3 and Algorithms 1–2)."""

import math

import pytest
import torch

from studio.engine.cold import DEFAULT_STEPS, Degradation, dct_matrix, mask_order, whole_order
from studio.engine.samplers import SAMPLER_TABLE, cold_improved, cold_naive, samplers_for
from studio.engine.schedules import NoiseLevel


def image(seed=0, size=64, batch=2):
    return torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- degradations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DEFAULT_STEPS))
def test_step_zero_is_the_identity_and_step_t_fully_degrades(kind):
    d = Degradation(kind, DEFAULT_STEPS[kind])
    x = image()
    torch.testing.assert_close(d(x, 0), x, atol=2e-6, rtol=0)
    full = d(x, d.steps)
    if kind == "mask":  # the whole image is the region: everything masked to 0
        assert torch.equal(full, torch.zeros_like(x))
    else:  # one colour per channel, the channel's mean
        torch.testing.assert_close(full, x.mean(dim=(2, 3), keepdim=True).expand_as(x), atol=2e-6, rtol=0)


def test_dct_matrix_is_orthonormal():
    c = dct_matrix(8, dtype=torch.float64)
    torch.testing.assert_close(c @ c.T, torch.eye(8, dtype=torch.float64))


def test_blur_scales_a_cosine_by_the_gaussians_transfer_function():
    """A cosine cos(ω(i + ½)) with ω = πk/N is an eigenvector of the reflecting-border heat equation: a blur of
    width σ multiplies it by exp(−ω²σ²/2) (the Gaussian's Fourier transform), computed here by hand."""
    d = Degradation("blur", 10)
    n, k = 64, 3
    omega = math.pi * k / n
    i = torch.arange(n, dtype=torch.float32)
    pattern = torch.cos(omega * (i + 0.5))[None, :].expand(n, n)  # varies along x only
    x = (0.4 * pattern)[None, None].expand(1, 3, n, n).contiguous()
    for s in (1, 4, 8):
        sigma = d.blur_sigma(s)
        torch.testing.assert_close(d(x, s), x * math.exp(-(omega**2) * sigma**2 / 2), atol=1e-5, rtol=0)
    assert d.blur_sigma(1) == 0.5 and math.isclose(d.blur_sigma(9), 40.0)


def test_blur_is_linear_keeps_the_mean_and_grows():
    d = Degradation("blur", 12)
    a, b = image(1), image(2)
    torch.testing.assert_close(d(2 * a - b, 5), 2 * d(a, 5) - d(b, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(d(a, 7).mean(dim=(2, 3)), a.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    spread = [float(d(a, s).std()) for s in range(13)]
    assert all(x > y for x, y in zip(spread, spread[1:]))


def test_mask_order_and_growing_mask_by_hand():
    """A 3×3 region in a 5×5 picture: its centre lies 2 erosions deep, its ring 1, so the order is 0 at the
    centre, ½ on the ring and 2 (never) outside; with T = 4 the centre goes at s = 1, the ring at s = 3."""
    region = torch.zeros(1, 1, 5, 5)
    region[..., 1:4, 1:4] = 1
    order = mask_order(region)
    expected = torch.full((5, 5), 2.0)
    expected[1:4, 1:4] = 0.5
    expected[2, 2] = 0.0
    assert torch.equal(order[0, 0], expected)
    d = Degradation("mask", 4, size=5)
    x = torch.ones(1, 3, 5, 5)
    centre_only = torch.ones(5, 5)
    centre_only[2, 2] = 0
    hole = 1 - region[0, 0]
    for s, want in ((0, torch.ones(5, 5)), (1, centre_only), (2, centre_only), (3, hole), (4, hole)):
        assert torch.equal(d(x, s, order)[0, 0], want), s


def test_whole_image_mask_grows_from_the_centre():
    d = Degradation("mask", 32)
    x = torch.ones(1, 3, 64, 64)
    masked = [(d(x, s) == 0).float().mean().item() for s in range(33)]
    assert masked[0] == 0 and masked[-1] == 1 and all(a <= b for a, b in zip(masked, masked[1:]))
    assert d(x, 1)[0, 0, 31, 31] == 0 and d(x, 1)[0, 0, 0, 0] == 1
    assert whole_order(x).shape == (1, 1, 64, 64)


def test_downsampling_by_hand():
    """4×4 picture, T = 2·log2 4 = 4: s = 2 is the 2×2 block means, s = 1 halfway, s = 4 the mean."""
    d = Degradation("down", 4, size=4)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    blocks = torch.tensor([[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5], [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]])
    assert torch.equal(d(x, 2)[0, 0], blocks)
    assert torch.equal(d(x, 1)[0, 0], (x[0, 0] + blocks) / 2)
    assert torch.equal(d(x, 4)[0, 0], torch.full((4, 4), 7.5))
    with pytest.raises(ValueError):
        Degradation("down", 6, size=4)


def test_per_image_steps_in_a_batch():
    d = Degradation("blur", 10)
    x = image(3, batch=3)
    both = d(x, torch.tensor([0, 4, 10]))
    for i, s in enumerate((0, 4, 10)):
        torch.testing.assert_close(both[i : i + 1], d(x[i : i + 1], s), atol=1e-6, rtol=0)


# ---- samplers -------------------------------------------------------------------------------------------------


def levels(steps):
    return [NoiseLevel(float(s), 1 / (1 + (s / steps) ** 2)) for s in range(steps, -1, -1)]


class Restorer:
    """R is any function (here a fixed random mix of channels and a tanh: badly wrong), D is given."""

    def __init__(self, degrade):
        self._degrade = degrade
        self.weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(7))

    def __call__(self, x, level):
        return torch.tanh(torch.einsum("ij,bjhw->bihw", self.weight, x) + level.timestep / 10)

    def degrade(self, x0, level):
        return self._degrade(x0, int(level.timestep))


def test_algorithm_2_lands_on_every_degraded_step_with_a_linear_d_and_any_r():
    """§3.3: for D(x, s) = x + s·e, x_{s−1} = x_s − D(x̂0, s) + D(x̂0, s − 1) = D(x0, s − 1) whatever R says, so the
    run ends on x0 exactly; Algorithm 1 ends wherever R's last guess is."""
    x0, e = image(4, size=8), 0.1 * image(5, size=8)
    r = Restorer(lambda x, s: x + s * e)
    steps = list(cold_improved(r, x0 + 10 * e, levels(10)))
    for step in steps:
        torch.testing.assert_close(step.x_next, x0 + int(step.next_level.timestep) * e, atol=1e-6, rtol=0)
        torch.testing.assert_close(step.eps_pred, e.expand_as(x0), atol=1e-6, rtol=0)  # D(x̂0, s) − D(x̂0, s−1)
    naive = list(cold_naive(r, x0 + 10 * e, levels(10)))
    assert (naive[-1].x_next - x0).abs().max() > 0.5
    torch.testing.assert_close(naive[-1].x_next, naive[-1].x0_pred)


def test_algorithm_2_with_a_perfect_restorer_follows_the_degradation():
    d = Degradation("blur", 8, size=16)
    x0 = image(6, size=16)

    class Oracle(Restorer):
        def __call__(self, x, level):
            return x0

    for sampler in (cold_improved, cold_naive):
        steps = list(sampler(Oracle(d), d(x0, 8), levels(8)))
        for step in steps:
            torch.testing.assert_close(step.x_next, d(x0, int(step.next_level.timestep)), atol=1e-5, rtol=0)


def test_cold_samplers_are_table_entries_of_their_own_family():
    cold = samplers_for("cold")
    assert list(cold) == ["cold_improved", "cold_naive"]
    assert all(not spec.uses_eta and not spec.supports_karras for spec in cold.values())
    assert set(samplers_for("ldm")) | set(cold) == set(SAMPLER_TABLE)
