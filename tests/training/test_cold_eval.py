"""The cold evaluation's generation starts and its hybrid sampler (Alg. 1 for k steps, then Alg. 2)."""

import torch

from studio.engine.cold import Degradation
from studio.engine.samplers import cold_improved, cold_naive
from studio.training import cold_eval


class Dummy:  # a restorer that is wrong in a known way: x̂0 = 0.9·x_s + 0.1
    def __init__(self, d):
        self.d = d

    def __call__(self, x, level):
        return 0.9 * x + 0.1

    def degrade(self, x0, level):
        return self.d(x0, int(level.timestep))


def test_hybrid_is_naive_then_improved():
    d = Degradation("blur", 8)
    x = d(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 8) + 0.05
    levels = cold_eval.grid(8, 8)
    steps = list(cold_eval.hybrid(3)(Dummy(d), x, levels))
    assert len(steps) == 8
    y = x
    for step in cold_naive(Dummy(d), x, levels[:4]):
        y = step.x_next
    torch.testing.assert_close(steps[2].x_next, y)
    for step in cold_improved(Dummy(d), y, levels, start=3):
        y = step.x_next
    torch.testing.assert_close(steps[-1].x_next, y)
    assert [s.index for s in steps] == list(range(8))


def test_low_frequency_start_noise():
    d = Degradation("blur", 40)
    white = cold_eval.start_noise(d, 4, torch.Generator().manual_seed(1))
    low = cold_eval.start_noise(d, 4, torch.Generator().manual_seed(1), "low:30")
    torch.testing.assert_close(low.std(dim=(1, 2, 3)), torch.ones(4), rtol=1e-4, atol=1e-4)
    # neighbouring pixels: independent in white noise, nearly equal in the low-frequency one
    assert (white[..., 1:] - white[..., :-1]).abs().mean() > 1.0
    assert (low[..., 1:] - low[..., :-1]).abs().mean() < 0.1


def test_perturbed_naive_adds_blurred_unit_noise_only_down_to_its_last_level():
    d = Degradation("blur", 8)
    x = d(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 8) + 0.05
    levels = cold_eval.grid(8, 8)
    naive = list(cold_naive(Dummy(d), x, levels))
    torch.testing.assert_close(list(cold_eval.perturbed_naive(0.0)(Dummy(d), x, levels))[-1].x_next, naive[-1].x_next)
    steps = list(cold_eval.perturbed_naive(0.1, seed=3, until=5)(Dummy(d), x, levels))
    for step in steps:  # x_{s'} = D(x̂0, s') + 0.1·n, n of unit std per image, for s' ≥ 5 only
        extra = step.x_next - d(step.x0_pred, int(step.next_level.timestep))
        if step.next_level.timestep >= 5:
            torch.testing.assert_close(extra.std(dim=(1, 2, 3)), torch.full((2,), 0.1))
        else:
            assert float(extra.abs().max()) == 0.0
    torch.testing.assert_close(steps[-1].x_next, steps[-1].x0_pred)  # the last step: D(x̂0, 0) = x̂0, no noise
