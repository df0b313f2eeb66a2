"""Classifier guidance (Dhariwal & Nichol 2021) against hand-derived cases: Algorithm 2's ε̃ and the DDIM step it
makes with a linear denoiser and a linear or quadratic log p; Algorithm 1's DDPM and Euler-a steps with their own
noise; the noise-aware classifier's shapes, files (safe, clear errors) and its place in the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.engine import classifier_guidance as cg
from studio.engine.classifier import (
    ClassifierConfig,
    NoisyClassifier,
    classifier_metrics,
    head_indices,
    label_indices,
    load_classifier,
    save_classifier,
)
from studio.engine.errors import UserError
from studio.engine.guidance import Guide, GuidanceTrace
from studio.engine.samplers import SAMPLER_TABLE, ddpm_posterior, draw_noise, predict_x0
from studio.engine.schedules import NoiseLevel

HEADS = (("shape", ("circle", "square", "star")), ("colour", ("red", "green")), ("position", ("left", "right")))
CONFIG = ClassifierConfig(heads=HEADS, widths=(8, 16, 16), embed_dim=16, hidden=32)
C = 0.4  # the linear denoiser ε̂(x) = C·x


def linear(x, level):
    return C * x


def grid_of(*alphas):
    return [NoiseLevel(900.0 - 300 * i, a) for i, a in enumerate(alphas)]


# -- the network and its file ------------------------------------------------------------------------------------------
def test_heads_shapes_and_log_prob():
    torch.manual_seed(0)
    net = NoisyClassifier(CONFIG)
    z = torch.randn(3, 4, 16, 16)
    logits = net(z, torch.tensor([0.1, 0.5, 1.0]))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"shape": (3, 3), "colour": (3, 2), "position": (3, 2)}
    logp = net.log_prob(z, 0.3, {"shape": "star", "colour": "green"})
    expected = (torch.log_softmax(net(z, torch.tensor([0.3]))["shape"], 1)[:, 2]
                + torch.log_softmax(net(z, torch.tensor([0.3]))["colour"], 1)[:, 1])
    torch.testing.assert_close(logp, expected)
    assert label_indices(CONFIG, {"position": "right"}) == {"position": 1}


def test_pure_noise_level_gives_a_bounded_gradient():
    """The network reads √ᾱ·z_t (classifier.py): at ᾱ = 2e-9 the slope in z_t is √ᾱ times the slope in u."""
    torch.manual_seed(1)
    net = NoisyClassifier(CONFIG)
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    net.log_prob(z, 2e-9, {"shape": "star"}).sum().backward()
    assert float(z.grad.abs().max()) < 1e-3


JOINT_HEADS = HEADS + (("shape+colour", tuple(f"{s}+{c}" for s in HEADS[0][1] for c in HEADS[1][1])),)
JOINT_CONFIG = ClassifierConfig(heads=JOINT_HEADS, widths=(8, 16, 16), embed_dim=16, hidden=32)


def test_a_joint_head_replaces_the_heads_it_covers_when_both_are_asked():
    # star = 2, green = 1: the joint value "star+green" is 2·2 + 1 = 5
    assert head_indices(JOINT_CONFIG, {"shape": "star", "colour": "green"}) == {"shape+colour": 5}
    assert head_indices(JOINT_CONFIG, {"shape": "star", "colour": "green", "position": "left"}) == {
        "shape+colour": 5, "position": 0}
    assert head_indices(JOINT_CONFIG, {"shape": "star", "position": "left"}) == {"shape": 2, "position": 0}
    assert head_indices(CONFIG, {"shape": "star", "colour": "green"}) == {"shape": 2, "colour": 1}  # no joint head
    torch.manual_seed(0)
    net = NoisyClassifier(JOINT_CONFIG)
    z = torch.randn(2, 4, 16, 16)
    logits = net(z, torch.tensor([0.3]))
    expected = torch.log_softmax(logits["shape+colour"], 1)[:, 5] + torch.log_softmax(logits["position"], 1)[:, 0]
    torch.testing.assert_close(net.log_prob(z, 0.3, {"shape": "star", "colour": "green", "position": "left"}),
                               expected)
    # the user picks groups, never the joint head itself
    assert list(JOINT_CONFIG.groups()) == ["shape", "colour", "position"]
    with pytest.raises(UserError, match="knows shape, colour, position$"):
        label_indices(JOINT_CONFIG, {"size": "small"})


def test_a_colour_and_position_joint_head_leaves_the_shape_to_its_own_head():
    heads = HEADS + (("colour+position", tuple(f"{c}+{p}" for c in HEADS[1][1] for p in HEADS[2][1])),)
    config = ClassifierConfig(heads=heads, widths=(8, 16, 16), embed_dim=16, hidden=32)
    # green = 1, right = 1: "green+right" is 1·2 + 1 = 3
    assert head_indices(config, {"shape": "star", "colour": "green", "position": "right"}) == {
        "colour+position": 3, "shape": 2}
    assert head_indices(config, {"shape": "star", "colour": "green"}) == {"shape": 2, "colour": 1}


def test_the_exclusive_background_term_is_log_of_one_minus_p_background():
    heads = HEADS + (("background", ("red", "green", "blue")),)
    net = NoisyClassifier(ClassifierConfig(heads=heads, widths=(8, 16, 16), embed_dim=16, hidden=32))
    torch.manual_seed(3)
    z = torch.randn(2, 4, 16, 16)
    logits = net(z, torch.tensor([1.0]))
    asked = {"shape": "star", "colour": "green"}
    p_green_background = torch.softmax(logits["background"], 1)[:, 1]
    torch.testing.assert_close(net.log_prob(z, 1.0, asked, exclusive_background=True),
                               net.log_prob(z, 1.0, asked) + torch.log(1 - p_green_background))
    for labels in ({"shape": "star"}, {"colour": "green", "background": "red"}):  # no colour, or the background asked
        torch.testing.assert_close(net.log_prob(z, 1.0, labels, exclusive_background=True), net.log_prob(z, 1.0, labels))
    no_background_head = NoisyClassifier(CONFIG)
    torch.testing.assert_close(no_background_head.log_prob(z, 1.0, asked, exclusive_background=True),
                               no_background_head.log_prob(z, 1.0, asked))


def test_the_app_lists_no_joint_head(tmp_path, monkeypatch):
    path = tmp_path / "joint.safetensors"
    save_classifier(NoisyClassifier(JOINT_CONFIG), path)
    monkeypatch.setattr(cg, "classifier_path", lambda clean: path)
    assert list(cg.classifier_labels(True)) == ["shape", "colour", "position"]


def test_label_errors_are_user_errors():
    with pytest.raises(UserError, match="no 'size' labels"):
        label_indices(CONFIG, {"size": "small"})
    with pytest.raises(UserError, match="knows no shape 'hexagon'"):
        label_indices(CONFIG, {"shape": "hexagon"})
    with pytest.raises(UserError, match="at least one label"):
        label_indices(CONFIG, {})


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(2)
    net = NoisyClassifier(CONFIG)
    path = tmp_path / "c.safetensors"
    save_classifier(net, path, {"accuracy": 0.5}, dtype=torch.float32)
    loaded = load_classifier(path)
    assert loaded.config == CONFIG and classifier_metrics(path) == {"accuracy": 0.5}
    z = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(loaded(z, torch.tensor([0.5]))["shape"], net(z, torch.tensor([0.5]))["shape"])
    assert not any(p.requires_grad for p in loaded.parameters())


def test_bad_files_are_clear_user_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(UserError, match="no classifier file"):
        load_classifier(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(UserError, match="junk.safetensors"):
        load_classifier(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="not a Diffusion Studio classifier"):
        load_classifier(plain)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(2)}, str(wrong), metadata={"studio_classifier": CONFIG.to_json()})
    with pytest.raises(UserError, match="do not fit"):
        load_classifier(wrong)
    damaged = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(damaged), metadata={"studio_classifier": "{\"heads\": 3}"})
    with pytest.raises(UserError, match="damaged classifier settings"):
        load_classifier(damaged)
    net = NoisyClassifier(CONFIG)
    net.hidden.weight.data[0, 0] = float("nan")
    nan = tmp_path / "nan.safetensors"
    save_classifier(net, nan, dtype=torch.float32)
    with pytest.raises(UserError, match="NaN"):
        load_classifier(nan)


# -- Algorithm 2 (DDIM) ------------------------------------------------------------------------------------------------
def test_algorithm_2_on_a_linear_log_p_is_the_closed_form_ddim_step():
    """log p = s·⟨w, z⟩ has ∇ = s·w; ε̃ = C·x − √(1−ᾱ)·s·w and DDIM eq. 12 (η = 0) with it."""
    torch.manual_seed(3)
    x, w = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    s, (a, a_prev) = 2.0, (0.3, 0.6)
    trace = GuidanceTrace()
    guided = cg.noisy_denoiser(linear, lambda z, level: s * (w * z).sum(), lambda lv: True, trace)
    eps_tilde = C * x - math.sqrt(1 - a) * s * w
    torch.testing.assert_close(guided(x, grid_of(a)[0]), eps_tilde)
    delta, loss = trace.take()
    torch.testing.assert_close(delta, -math.sqrt(1 - a) * s * w)
    assert loss == pytest.approx(-float(s * (w * x).sum()), rel=1e-5)
    step = next(SAMPLER_TABLE["ddim"].sample(guided, x, grid_of(a, a_prev), eta=0.0, generator=None))
    x0 = (x - math.sqrt(1 - a) * eps_tilde) / math.sqrt(a)
    torch.testing.assert_close(step.x_next, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps_tilde)
    # the guided ẑ0 moved by s·(1−ᾱ)/√ᾱ·∇ log p (DDIM eq. 9)
    torch.testing.assert_close(step.x0_pred - predict_x0(x, C * x, a), s * (1 - a) / math.sqrt(a) * w)


def test_algorithm_2_on_a_quadratic_log_p():
    """log p = −½k‖z − m‖²: ∇ = −k(z − m), so ε̃ = C·x + √(1−ᾱ)·k·(x − m), and DDIM's ẑ0 moves towards m."""
    torch.manual_seed(4)
    x, m = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    k, a = 0.7, 0.5
    guided = cg.noisy_denoiser(linear, lambda z, level: -0.5 * k * ((z - m) ** 2).sum(), lambda lv: True)
    torch.testing.assert_close(guided(x, grid_of(a)[0]), C * x + math.sqrt(1 - a) * k * (x - m))
    inactive = cg.noisy_denoiser(linear, lambda z, level: -0.5 * k * ((z - m) ** 2).sum(), lambda lv: False)
    assert torch.equal(inactive(x, grid_of(a)[0]), C * x)


# -- Algorithm 1 (ancestral) -------------------------------------------------------------------------------------------
def test_algorithm_1_ddpm_step_is_the_shifted_posterior_mean_with_the_same_noise():
    """z_{t−1} = μ̃ + s·β̃·w + √β̃·n with μ̃ = coef_x0·ẑ0 + coef_xt·z_t (DDPM eq. 6–7), n the run's own noise."""
    torch.manual_seed(5)
    x, w = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    s, grid = 1.5, grid_of(0.2, 0.5, 0.9)
    trace = GuidanceTrace()
    spec = cg.noisy_sampler(SAMPLER_TABLE["ddpm"], lambda z, level: s * (w * z).sum(), lambda lv: True, trace)
    step = next(spec.sample(linear, x, grid, eta=1.0, generator=torch.Generator().manual_seed(9)))
    coef_x0, coef_xt, variance = ddpm_posterior(0.2, 0.5)
    noise = draw_noise(x, torch.Generator().manual_seed(9))
    expected = coef_x0 * predict_x0(x, C * x, 0.2) + coef_xt * x + s * variance * w + variance**0.5 * noise
    torch.testing.assert_close(step.x_next, expected)
    torch.testing.assert_close(trace.take()[0], s * variance * w)


def test_algorithm_1_euler_a_shift_uses_the_ancestral_variance():
    torch.manual_seed(6)
    x, w = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    grid = grid_of(0.2, 0.5, 0.9)
    plain = next(SAMPLER_TABLE["euler_a"].sample(linear, x, grid, eta=1.0, generator=torch.Generator().manual_seed(1)))
    spec = cg.noisy_sampler(SAMPLER_TABLE["euler_a"], lambda z, level: (w * z).sum(), lambda lv: True)
    guided = next(spec.sample(linear, x, grid, eta=1.0, generator=torch.Generator().manual_seed(1)))
    sigma, nxt = grid[0].sigma, grid[1].sigma
    up2 = nxt**2 * (sigma**2 - nxt**2) / sigma**2  # k-diffusion's σ_up² at η = 1
    torch.testing.assert_close(guided.x_next - plain.x_next, grid[1].alpha_cumprod * up2 * w)


def test_which_algorithm_each_sampler_gets():
    table = SAMPLER_TABLE
    assert cg.algorithm_for(table["ddim"], 0.0) == 2 and cg.algorithm_for(table["ddim"], 1.0) == 2
    assert cg.algorithm_for(table["ddpm"], 1.0) == 1 and cg.algorithm_for(table["ddpm"], 0.0) == 2
    assert cg.algorithm_for(table["euler_a"], 1.0) == 1 and cg.algorithm_for(table["dpmpp_2m_sde"], 1.0) == 1
    assert all(cg.algorithm_for(table[n], 0.0) == 2 for n in ("euler", "heun", "dpmpp_2m", "unipc"))


def test_ddpm_last_step_adds_no_noise_and_no_shift():
    grid = grid_of(0.2, 0.5, 0.9)
    assert cg.step_variance(SAMPLER_TABLE["ddpm"], grid, 1, 1.0) == 0.0
    assert cg.step_variance(SAMPLER_TABLE["ddpm"], grid, 0, 0.5) == pytest.approx(0.25 * ddpm_posterior(0.2, 0.5)[2])


# -- in the pipeline (the shipped model, random classifiers) -----------------------------------------------------------
from studio.engine import Engine, GenerationRequest  # noqa: E402
from studio.engine.request import RequestError  # noqa: E402

WORLD = ClassifierConfig(heads=(("shape", ("circle", "star")), ("colour", ("red", "green"))), widths=(8, 16, 16),
                         embed_dim=16, hidden=32)
EMPTY = GenerationRequest(prompt="", model="default", steps=6, width=64, height=64, cfg=1.0, seed=11)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("guides")
    for clean in (False, True):
        torch.manual_seed(int(clean))
        save_classifier(NoisyClassifier(WORLD), folder / cg.CLASSIFIER_FILES[clean], dtype=torch.float32)
    patch = pytest.MonkeyPatch()
    patch.setattr(cg, "classifier_path", lambda clean: folder / cg.CLASSIFIER_FILES[clean])
    cg._load.cache_clear()
    yield Engine()
    patch.undo()
    cg._load.cache_clear()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler_a", "dpmpp_2m"])
def test_a_zero_strength_classifier_changes_nothing(engine, sampler):
    plain = engine.run(EMPTY.replace(sampler=sampler))
    zero = engine.run(EMPTY.replace(sampler=sampler, guide_mode="noisy",
                                    guides=(Guide("classifier", 0.0, labels={"shape": "star"}),)))
    assert torch.equal(plain.final_latent, zero.final_latent)
    assert zero.timeline[0].loss is not None


@pytest.mark.parametrize("mode", ["noisy", "backward", "forward"])
def test_classifier_guides_run_and_record(engine, mode):
    guide = Guide("classifier", 50.0, labels={"shape": "star", "colour": "green"})
    run = engine.run(EMPTY.replace(sampler="ddpm" if mode == "noisy" else "ddim", guide_mode=mode, guides=(guide,)))
    assert run.image.shape == (64, 64, 3)
    assert run.timeline[1].guidance is not None and run.timeline[1].loss is not None
    assert not torch.equal(run.final_latent, engine.run(EMPTY.replace(sampler="ddpm" if mode == "noisy" else "ddim")
                                                        ).final_latent)


def test_a_branch_of_a_noisy_guided_ddpm_run_replays_it(engine):
    request = EMPTY.replace(sampler="ddpm", guide_mode="noisy",
                            guides=(Guide("classifier", 30.0, labels={"colour": "red"}),))
    parent = engine.run(request)
    assert torch.equal(engine.run(request, parent=parent, from_step=3).final_latent, parent.final_latent)


def test_bad_classifier_requests_are_user_errors(engine):
    from studio.engine.pipeline import validate

    with pytest.raises(RequestError, match="needs labels"):
        validate(EMPTY.replace(guides=(Guide("classifier", 1.0),)))
    with pytest.raises(RequestError, match="noisy guidance is classifier guidance"):
        validate(EMPTY.replace(guide_mode="noisy", guides=(Guide("colour", 1.0, np.zeros((64, 64, 4), np.uint8)),)))
    with pytest.raises(RequestError, match="knows no shape 'hexagon'"):
        engine.run(EMPTY.replace(guide_mode="noisy", guides=(Guide("classifier", 1.0, labels={"shape": "hexagon"}),)))
    with pytest.raises(RequestError, match="reads 4×16×16 latents"):
        engine.run(EMPTY.replace(width=96, height=96, guide_mode="noisy",
                                 guides=(Guide("classifier", 1.0, labels={"shape": "star"}),)))


def test_guide_labels_travel_in_the_settings():
    request = EMPTY.replace(guide_mode="noisy", guides=(Guide("classifier", 2.0, labels={"shape": "star"}),))
    again = GenerationRequest.from_settings(request.settings())
    assert again.guides == request.guides and again.guides[0].labels == (("shape", "star"),)


@pytest.mark.parametrize("mode", ["noisy", "both"])
def test_a_script_may_call_a_guided_run_under_inference_mode(engine, mode):
    """A script that wraps its runs in torch.inference_mode() (as for unguided ones) gets the same picture: the guide,
    loaded inside it, is still differentiated."""
    request = EMPTY.replace(sampler="ddim", guide_mode=mode,
                            guides=(Guide("classifier", 30.0, labels={"shape": "star"}),))
    cg._load.cache_clear()
    with torch.inference_mode():
        inside = engine.run(request).final_latent
    assert torch.equal(inside, engine.run(request).final_latent)
