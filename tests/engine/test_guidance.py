"""Universal guidance (Bansal et al. 2023) against hand-derived cases: a linear denoiser and a quadratic loss give the
forward-guided ε̃ in closed form (eq. 6), backward guidance's Δz0 (eq. 7) must match a direct minimiser and move ẑ0
exactly by Δz0 (eq. 9), and self-recurrence with k = 1 is the plain sampler bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.engine.guidance import (
    Guide,
    GuidanceTrace,
    backward_delta,
    guide_active,
    guide_denoiser,
    pixel_loss,
    recurrent_steps,
    renoise,
)
from studio.engine.samplers import SAMPLER_TABLE, predict_x0, samplers_for
from studio.engine.schedules import NoiseLevel

LEVEL = NoiseLevel(500.0, 0.3)
C = 0.4  # the linear denoiser ε̂(x) = C·x


def linear(x, level):
    return C * x


def quadratic(target, weight=1.0):
    return lambda z0: 0.5 * weight * ((z0 - target) ** 2).sum()


def test_forward_guidance_is_equation_6_in_closed_form():
    torch.manual_seed(0)
    x, y = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    a, s = LEVEL.alpha_cumprod, 2.5
    trace = GuidanceTrace()
    guided = guide_denoiser(linear, quadratic(y, s), mode="forward", active=lambda lv: True, trace=trace)
    # ẑ0 = k·x with k = (1 − √(1−ᾱ)·C)/√ᾱ, so ∇_x ½s‖kx − y‖² = s·k·(kx − y); ε̃ = C·x + s(t)·that with
    # s(t) = n·√(ᾱ/(1−ᾱ)), n = 3·3 latent pixels (guidance.py's forward scaling)
    k = (1 - math.sqrt(1 - a) * C) / math.sqrt(a)
    expected = C * x + 9 * math.sqrt(a / (1 - a)) * s * k * (k * x - y)
    torch.testing.assert_close(guided(x, LEVEL), expected, rtol=1e-5, atol=1e-6)
    delta, loss = trace.take()
    torch.testing.assert_close(delta, expected - C * x, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(float(0.5 * s * ((k * x - y) ** 2).sum()), rel=1e-5)
    assert trace.take() == (None, None)  # taken once per step


def test_forward_guidance_lowers_the_loss_of_the_prediction():
    torch.manual_seed(1)
    x, y = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    objective = quadratic(y, 1 / y.numel())  # a mean over the latent, as the engine's losses are
    guided = guide_denoiser(linear, objective, mode="forward", active=lambda lv: True)
    a = LEVEL.alpha_cumprod
    before = objective(predict_x0(x, linear(x, LEVEL), a))
    after = objective(predict_x0(x, guided(x, LEVEL), a))
    assert after < before


def test_backward_guidance_moves_the_prediction_by_delta_z0_exactly():
    torch.manual_seed(2)
    x, y = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    a = LEVEL.alpha_cumprod
    guided = guide_denoiser(linear, quadratic(y), mode="backward", active=lambda lv: True, backward_steps=1,
                            backward_lr=2.0)
    # Polyak's step on ½‖ẑ0 + Δ − y‖² from Δ = 0 is ½(y − ẑ0); twice it is y − ẑ0: the guided ẑ0 is y (eq. 9)
    torch.testing.assert_close(predict_x0(x, guided(x, LEVEL), a), y, rtol=1e-5, atol=1e-5)
    # m steps of size η: Δ_m = (1 − (1 − η)^m)·(y − ẑ0)
    z0 = predict_x0(x, linear(x, LEVEL), a)
    delta = backward_delta(quadratic(y), z0, steps=4, lr=0.3, step_size="fixed")
    torch.testing.assert_close(delta, (1 - 0.7**4) * (y - z0), rtol=1e-5, atol=1e-6)


def test_backward_delta_matches_a_direct_least_squares_minimiser():
    """ℓ(Δ) = ½‖A(ẑ0 + Δ) − b‖² with A wide: gradient descent from 0 converges to the minimum-norm minimiser."""
    torch.manual_seed(3)
    n = 12
    A, b, z0 = torch.randn(8, n, dtype=torch.float64), torch.randn(8, dtype=torch.float64), torch.randn(1, n, dtype=torch.float64)
    objective = lambda z: 0.5 * ((z.reshape(-1) @ A.T - b) ** 2).sum()  # noqa: E731
    lr = 1.0 / torch.linalg.matrix_norm(A, ord=2).item() ** 2
    delta = backward_delta(objective, z0, steps=4000, lr=lr, step_size="fixed")
    direct = torch.linalg.lstsq(A, b - A @ z0.reshape(-1), driver="gelsd").solution  # minimum norm
    torch.testing.assert_close(delta.reshape(-1), direct, rtol=1e-6, atol=1e-6)


def test_inactive_levels_and_masks():
    torch.manual_seed(4)
    x, y = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    off = guide_denoiser(linear, quadratic(y), mode="both", active=lambda lv: False)
    assert torch.equal(off(x, LEVEL), linear(x, LEVEL))
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 0, :] = 1
    masked = guide_denoiser(linear, quadratic(y), mode="both", active=lambda lv: True, mask=mask)
    change = masked(x, LEVEL) - linear(x, LEVEL)
    assert change[..., 1:, :].abs().max() == 0 and change[..., 0, :].abs().max() > 0


def test_guide_steps_fraction():
    assert [guide_active(i, 10, 0.7) for i in range(10)] == [True] * 7 + [False] * 3
    assert not any(guide_active(i, 10, 0.0) for i in range(10))
    assert all(guide_active(i, 3, 1.0) for i in range(3))


def test_renoise_is_the_forward_process_between_two_levels():
    here, there = NoiseLevel(600.0, 0.2), NoiseLevel(400.0, 0.5)
    x_next, n = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    r = 0.2 / 0.5
    assert renoise(x_next, here, there, n).item() == pytest.approx(math.sqrt(r) * 2 - math.sqrt(1 - r))


def _grid(steps):
    from studio.engine.schedules import NoiseSchedule, ScheduleConfig, sampling_grid

    return lambda end: sampling_grid(NoiseSchedule(ScheduleConfig()), steps, final=end)


@pytest.mark.parametrize("name", sorted(samplers_for("ldm")))
def test_recurrence_once_is_the_sampler_bit_for_bit(name):
    spec = SAMPLER_TABLE[name]
    grid = _grid(6)(spec.grid_end)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    denoise = lambda z, lv: torch.tanh(z) * 0.5 + 0.01 * lv.timestep / 1000  # noqa: E731  (nonlinear)
    eta = spec.default_eta
    plain = list(spec.sample(denoise, x, grid, eta=eta, generator=torch.Generator().manual_seed(1)))
    stepped = list(recurrent_steps(spec, denoise, x, grid, eta=eta, generator=torch.Generator().manual_seed(1),
                                   start=0, history=(), repeats=lambda i: 1))
    assert len(plain) == len(stepped)
    for p, s in zip(plain, stepped):
        assert torch.equal(p.x_next, s.x_next) and torch.equal(p.x_t, s.x_t)


def test_recurrence_draws_fresh_noise_and_keeps_the_step_consistent():
    spec = SAMPLER_TABLE["ddim"]
    grid = _grid(4)("alpha0")
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    denoise = lambda z, lv: torch.tanh(z) * 0.5  # noqa: E731
    once = list(recurrent_steps(spec, denoise, x, grid, eta=0.0, generator=torch.Generator().manual_seed(1),
                                start=0, history=(), repeats=lambda i: 1))
    generator = torch.Generator().manual_seed(1)
    thrice = list(recurrent_steps(spec, denoise, x, grid, eta=0.0, generator=generator, start=0, history=(),
                                  repeats=lambda i: 3 if i < 2 else 1))
    assert not torch.equal(once[0].x_next, thrice[0].x_next)  # re-noised twice before the final repetition
    assert torch.equal(thrice[0].x_t, x)  # the step's entering latent stays the resume point
    for step in thrice:  # the recorded ε̂ reproduces the step's real x̂0 from its entering x_t
        torch.testing.assert_close(predict_x0(step.x_t, step.eps_pred, step.level.alpha_cumprod), step.x0_pred)
    # the same generator seed gives the same recurrences: a branch replays them
    again = list(recurrent_steps(spec, denoise, x, grid, eta=0.0, generator=torch.Generator().manual_seed(1),
                                 start=0, history=(), repeats=lambda i: 3 if i < 2 else 1))
    assert all(torch.equal(a.x_next, b.x_next) for a, b in zip(thrice, again))


def test_pixel_losses_are_zero_on_their_target_and_positive_elsewhere():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(picture.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    other = torch.flip(as_tensor, dims=[3])
    hint = np.zeros((16, 16, 4), np.uint8)
    hint[4:12, 4:12] = (255, 0, 0, 255)
    colour = pixel_loss(Guide("colour", image=hint), (16, 16), "cpu")
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1
    red[:, 1:] = -1
    assert float(colour(red)) == pytest.approx(0, abs=1e-6) and float(colour(-red)) > 1
    for variant in ("layout", "palette"):
        loss = pixel_loss(Guide("reference", image=picture, variant=variant), (16, 16), "cpu")
        assert float(loss(as_tensor)) == pytest.approx(0, abs=1e-6)
    assert float(pixel_loss(Guide("reference", image=picture), (16, 16), "cpu")(other)) > 1e-3
    region = np.zeros((16, 16), np.float32)
    region[:8] = 1
    keep = pixel_loss(Guide("keep", image=region), (16, 16), "cpu", init_image=picture)
    changed = as_tensor.clone()
    changed[..., 8:, :] = 0  # outside the kept region: free
    assert float(keep(changed)) == pytest.approx(0, abs=1e-6) and float(keep(other)) > 1e-3


def test_bad_guides_are_user_errors():
    from studio.engine.errors import UserError

    with pytest.raises(UserError, match="RGBA"):
        pixel_loss(Guide("colour", image=np.zeros((4, 4, 3), np.uint8)), (4, 4), "cpu")
    with pytest.raises(UserError, match="empty"):
        pixel_loss(Guide("colour", image=np.zeros((4, 4, 4), np.uint8)), (4, 4), "cpu")
    with pytest.raises(UserError, match="input image"):
        pixel_loss(Guide("keep", image=np.ones((4, 4), np.float32)), (4, 4), "cpu")
    with pytest.raises(UserError, match="needs a picture"):
        pixel_loss(Guide("reference"), (4, 4), "cpu")


# -- in the pipeline ---------------------------------------------------------------------------------------------------
from studio.engine import Engine, GenerationRequest  # noqa: E402
from studio.engine.run import Run  # noqa: E402

HINT = np.zeros((64, 64, 4), np.uint8)
HINT[:32, :32] = (0, 200, 0, 255)  # green over the top-left quarter
TINY = GenerationRequest(prompt="a red circle", model="tiny-random", steps=5, width=64, height=64, cfg=3.0, seed=7)


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return Engine()


@pytest.mark.parametrize("name", sorted(samplers_for("ldm")))
def test_a_zero_strength_guide_changes_nothing(engine, name):
    """The guided path (autograd through the UNet and decoder) computes the very ε̂ the plain path does."""
    plain = engine.run(TINY.replace(sampler=name))
    zero = engine.run(TINY.replace(sampler=name, guides=(Guide("colour", 0.0, HINT),), guide_mode="both"))
    assert torch.equal(plain.final_latent, zero.final_latent)
    assert zero.timeline[0].loss is not None and plain.timeline[0].loss is None


def test_guided_steps_record_their_term_and_loss(engine, tmp_path):
    run = engine.run(TINY.replace(guides=(Guide("colour", 5.0, HINT),), guide_steps=0.6))
    guided = [step.guidance is not None for step in run.timeline]
    assert guided == [True, True, True, False, False]  # the first 60 % of 5 steps
    assert all(step.loss > 0 for step in run.timeline if step.guidance is not None)
    info = run.step_info(0)
    assert info.loss == run.timeline[0].loss and info.previews["guidance"].shape[2] == 3
    path = tmp_path / "guided.safetensors"
    run.save(path)
    loaded = Run.load(path)
    assert loaded.request.guides == run.request.guides
    np.testing.assert_array_equal(loaded.request.guides[0].image, HINT)
    assert [s.loss for s in loaded.timeline] == [s.loss for s in run.timeline]
    assert torch.equal(loaded.timeline[1].guidance, run.timeline[1].guidance)


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("k", [0, 2])
def test_a_guided_run_with_recurrence_replays_bit_for_bit_when_branched(engine, sampler, k):
    request = TINY.replace(sampler=sampler, guides=(Guide("colour", 5.0, HINT),), recurrence=2, guide_mode="both",
                           backward_steps=2)
    parent = engine.run(request)
    child = engine.run(request, parent=parent, from_step=k)
    assert torch.equal(child.final_latent, parent.final_latent)


def test_recurrence_once_is_no_recurrence_in_the_pipeline(engine):
    guided = TINY.replace(guides=(Guide("colour", 5.0, HINT),), sampler="euler_a")
    assert torch.equal(engine.run(guided).final_latent, engine.run(guided.replace(recurrence=1)).final_latent)
    assert not torch.equal(engine.run(guided).final_latent, engine.run(guided.replace(recurrence=3)).final_latent)


def test_a_colour_hint_pulls_its_region_towards_the_hint_on_the_shipped_model(engine):
    request = GenerationRequest(prompt="a red circle on a blue background", model="default", steps=10, width=64,
                                height=64, cfg=3.0, seed=3)
    target = np.array([0, 200, 0], np.float64)

    def distance(run):
        return float(np.linalg.norm(run.image[:32, :32].reshape(-1, 3).mean(0) - target))

    unguided = distance(engine.run(request))
    guided = distance(engine.run(request.replace(guides=(Guide("colour", 10.0, HINT),))))
    assert guided < unguided - 20, (unguided, guided)


def test_bad_guidance_settings_are_user_errors(engine):
    from studio.engine.pipeline import validate
    from studio.engine.request import RequestError

    for bad in (dict(guide_mode="sideways"), dict(guide_steps=1.5), dict(recurrence=0), dict(backward_steps=0),
                dict(guides=(Guide("colour", float("nan"), HINT),)), dict(guides=(Guide("smell", 1.0, HINT),))):
        with pytest.raises(RequestError):
            validate(TINY.replace(**bad))
