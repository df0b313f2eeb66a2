"""The scene CLIP (Radford et al. 2021) and CLIP guidance (GLIDE eq. 3): the towers' shapes and pooling, the
symmetric InfoNCE against its definition, files (safe, clear errors), GLIDE's update in Dhariwal & Nichol's
Algorithm 2 (DDIM) and Algorithm 1 (DDPM) against a hand-derived gradient of a toy linear image tower, and CLIP
guides in the pipeline with random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from studio.engine import classifier_guidance as cg
from studio.engine import clip_guidance as clg
from studio.engine.clip_guide import ClipConfig, SceneClip, clip_metrics, contrastive_loss, load_clip, save_clip
from studio.engine.errors import UserError
from studio.engine.guidance import Guide, GuidanceTrace
from studio.engine.samplers import SAMPLER_TABLE, ddpm_posterior, draw_noise, predict_x0
from studio.engine.schedules import NoiseLevel
from studio.engine.tokenizer import EOS_ID

TINY = ClipConfig(widths=(8, 16, 16), level_dim=16, hidden=32, embed_dim=8, text_width=16, text_layers=1,
                  text_heads=2, context_length=16)
C = 0.4  # the linear denoiser ε̂(x) = C·x


def linear(x, level):
    return C * x


def grid_of(*alphas):
    return [NoiseLevel(900.0 - 300 * i, a) for i, a in enumerate(alphas)]


# -- the towers --------------------------------------------------------------------------------------------------------
def test_towers_give_unit_embeddings_of_the_shared_width():
    torch.manual_seed(0)
    clip = SceneClip(TINY)
    image = clip.encode_image(torch.randn(3, 4, 16, 16), torch.tensor([0.1, 0.5, 1.0]))
    ids = clip.tokens(["a red star at the top", "a big blue ring"])
    text = clip.encode_text(ids)
    assert image.shape == (3, 8) and text.shape == (2, 8) and ids.shape == (2, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert clip.score(torch.randn(3, 4, 16, 16), 0.5, text[:1]).shape == (3,)


def test_text_is_pooled_at_the_first_end_of_text_token():
    """CLIP reads the transformer at [EOS]; padding after it (eos again, SD1's padding) cannot change that."""
    torch.manual_seed(1)
    clip = SceneClip(TINY)
    ids = clip.tokens(["a red star"])
    eos = int((ids[0] == EOS_ID).nonzero()[0])
    other_padding = ids.clone()
    other_padding[0, eos + 1:] = 0
    torch.testing.assert_close(clip.text(ids), clip.text(other_padding))
    hidden = clip.text.transformer(ids)[0, eos]
    torch.testing.assert_close(clip.text(ids)[0], clip.text.text_projection(hidden))
    with pytest.raises(UserError, match="needs a caption"):
        clip.tokens(["  "])


def test_contrastive_loss_is_the_symmetric_cross_entropy():
    torch.manual_seed(2)
    image, text = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = 10.0 * image @ text.T
    by_hand = -(torch.log_softmax(logits, 1).diagonal().mean() + torch.log_softmax(logits, 0).diagonal().mean()) / 2
    torch.testing.assert_close(contrastive_loss(image, text, scale), by_hand)
    assert float(contrastive_loss(image, image, torch.tensor(100.0))) < 1e-3  # matched pairs: near zero
    negatives = F.normalize(torch.randn(5, 8), dim=-1)  # NegCLIP: extra columns of the image → text direction
    to_text = torch.cat([logits, 10.0 * image @ negatives.T], dim=1)
    by_hand = -(torch.log_softmax(to_text, 1).diagonal().mean() + torch.log_softmax(logits, 0).diagonal().mean()) / 2
    torch.testing.assert_close(contrastive_loss(image, text, scale, negatives), by_hand)


def test_pure_noise_level_gives_a_bounded_gradient():
    torch.manual_seed(3)
    clip = SceneClip(TINY)
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    text = clip.encode_text(clip.tokens(["a star"])).detach()
    clip.score(z, 2e-9, text).sum().backward()
    assert float(z.grad.abs().max()) < 1e-3


# -- files -------------------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(4)
    clip = SceneClip(TINY)
    path = tmp_path / "c.safetensors"
    save_clip(clip, path, {"zero_shot": 0.5}, dtype=torch.float32)
    loaded = load_clip(path)
    assert loaded.config == TINY and clip_metrics(path) == {"zero_shot": 0.5}
    z, ids = torch.randn(2, 4, 16, 16), clip.tokens(["a red star"])
    torch.testing.assert_close(loaded.encode_image(z, 0.5), clip.encode_image(z, 0.5))
    torch.testing.assert_close(loaded.encode_text(ids), clip.encode_text(ids))
    torch.testing.assert_close(loaded.temperature_scale(), clip.temperature_scale())
    assert not any(p.requires_grad for p in loaded.parameters())


def test_bad_files_are_clear_user_errors(tmp_path):
    from safetensors.torch import save_file

    from studio.engine.classifier import ClassifierConfig, NoisyClassifier, save_classifier

    with pytest.raises(UserError, match="no CLIP file"):
        load_clip(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(UserError, match="junk.safetensors"):
        load_clip(junk)
    truncated = tmp_path / "truncated.safetensors"
    save_clip(SceneClip(TINY), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated.safetensors"):
        load_clip(truncated)
    classifier = tmp_path / "classifier.safetensors"  # a guide, but the wrong one
    save_classifier(NoisyClassifier(ClassifierConfig(heads=(("shape", ("a", "b")),), widths=(8, 16, 16),
                                                     embed_dim=16, hidden=32)), classifier)
    with pytest.raises(UserError, match="not a Diffusion Studio scene CLIP"):
        load_clip(classifier)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(2)}, str(wrong), metadata={"studio_clip": TINY.to_json()})
    with pytest.raises(UserError, match="do not fit"):
        load_clip(wrong)
    damaged = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(damaged), metadata={"studio_clip": "{\"widths\": 3}"})
    with pytest.raises(UserError, match="damaged CLIP settings"):
        load_clip(damaged)
    clip = SceneClip(TINY)
    clip.image.hidden.weight.data[0, 0] = float("nan")
    nan = tmp_path / "nan.safetensors"
    save_clip(clip, nan, dtype=torch.float32)
    with pytest.raises(UserError, match="NaN"):
        load_clip(nan)


# -- GLIDE eq. 3 in the two algorithms, against a hand-derived gradient ------------------------------------------------
class LinearImage(torch.nn.Module):
    """A toy image tower: f_raw(z_t) = W·(√ᾱ·z_t), so f = W u / ‖W u‖ with u = √ᾱ·z_t (as the real tower reads)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, z, alpha_cumprod):
        a = alpha_cumprod.reshape(-1).float()
        return (z * a.sqrt()[:, None, None, None]).flatten(1) @ self.weight.T


def toy_clip(seed: int) -> tuple[SceneClip, torch.Tensor]:
    torch.manual_seed(seed)
    clip = SceneClip(TINY)
    weight = torch.randn(8, 4 * 3 * 3)
    clip.image = LinearImage(weight)
    clip.logit_scale.data.fill_(math.log(20.0))
    return clip.requires_grad_(False), weight


def hand_gradient(clip: SceneClip, weight: torch.Tensor, text: torch.Tensor, x: torch.Tensor, a: float):
    """∇_{z_t} exp(τ)·(f·g) by hand: with r = W u, f = r/‖r‖, ∇_r (f·g) = (g − (f·g) f)/‖r‖, ∇_u = Wᵀ∇_r,
    and ∇_{z_t} = √ᾱ·∇_u."""
    r = math.sqrt(a) * weight @ x.flatten()
    f = r / r.norm()
    g = text[0]
    grad_r = (g - (f @ g) * f) / r.norm()
    return 20.0 * math.sqrt(a) * (weight.T @ grad_r).reshape(x.shape), 20.0 * float(f @ g)


def test_algorithm_2_with_the_clip_score_is_the_hand_computed_ddim_step():
    """ε̃ = ε̂ − √(1−ᾱ)·s·∇(exp(τ)·f·g) and DDIM eq. 12 (η = 0) with it; ẑ0 moves by s(1−ᾱ)/√ᾱ·∇ (DDIM eq. 9)."""
    clip, weight = toy_clip(5)
    x, s, (a, a_prev) = torch.randn(1, 4, 3, 3), 3.0, (0.3, 0.6)
    guide = Guide("clip", s, text="a red star at the top")
    text = clip.encode_text(clip.tokens([guide.text]))
    grad, score = hand_gradient(clip, weight, text, x, a)
    trace = GuidanceTrace()
    guided = cg.noisy_denoiser(linear, clg.log_prob_fn([guide], clip), lambda lv: True, trace)
    eps_tilde = C * x - math.sqrt(1 - a) * s * grad
    torch.testing.assert_close(guided(x, grid_of(a)[0]), eps_tilde)
    delta, loss = trace.take()
    assert loss == pytest.approx(-s * score, rel=1e-5)
    step = next(SAMPLER_TABLE["ddim"].sample(guided, x, grid_of(a, a_prev), eta=0.0, generator=None))
    x0 = (x - math.sqrt(1 - a) * eps_tilde) / math.sqrt(a)
    torch.testing.assert_close(step.x_next, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps_tilde)
    torch.testing.assert_close(step.x0_pred - predict_x0(x, C * x, a), s * (1 - a) / math.sqrt(a) * grad)


def test_glide_eq_3_ddpm_step_is_the_shifted_posterior_mean_with_the_same_noise():
    """z_{t−1} = μ̃ + s·Σ·∇(exp(τ)·f·g) + √Σ·n (GLIDE eq. 3 with DDPM's posterior, eq. 6–7), n the run's own noise."""
    clip, weight = toy_clip(6)
    x, s, grid = torch.randn(1, 4, 3, 3), 2.0, grid_of(0.2, 0.5, 0.9)
    guide = Guide("clip", s, text="a blue ring on the left")
    grad, _ = hand_gradient(clip, weight, clip.encode_text(clip.tokens([guide.text])), x, 0.2)
    spec = cg.noisy_sampler(SAMPLER_TABLE["ddpm"], clg.log_prob_fn([guide], clip), lambda lv: True)
    step = next(spec.sample(linear, x, grid, eta=1.0, generator=torch.Generator().manual_seed(9)))
    coef_x0, coef_xt, variance = ddpm_posterior(0.2, 0.5)
    noise = draw_noise(x, torch.Generator().manual_seed(9))
    expected = coef_x0 * predict_x0(x, C * x, 0.2) + coef_xt * x + s * variance * grad + variance**0.5 * noise
    torch.testing.assert_close(step.x_next, expected)


def test_clean_loss_is_minus_the_scaled_score_per_latent_pixel():
    clip, weight = toy_clip(7)
    z0 = torch.randn(1, 4, 3, 3)
    ((strength, loss),) = clg.clean_losses([Guide("clip", 4.0, text="a green heart")], clip)
    _, score = hand_gradient(clip, weight, clip.encode_text(clip.tokens(["a green heart"])), z0, 1.0)
    assert strength == 4.0 and float(loss(z0)) == pytest.approx(-score / 9, rel=1e-5)


# -- in the pipeline (the shipped model, random CLIPs) -----------------------------------------------------------------
from studio.engine import Engine, GenerationRequest  # noqa: E402
from studio.engine.request import RequestError  # noqa: E402

EMPTY = GenerationRequest(prompt="", model="default", steps=5, width=64, height=64, cfg=1.0, seed=11)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("guides")
    for clean in (False, True):
        torch.manual_seed(int(clean))
        save_clip(SceneClip(TINY), folder / clg.CLIP_FILES[clean], dtype=torch.float32)
    patch = pytest.MonkeyPatch()
    patch.setattr(clg, "clip_path", lambda clean: folder / clg.CLIP_FILES[clean])
    clg._load.cache_clear()
    yield Engine()
    patch.undo()
    clg._load.cache_clear()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_zero_strength_clip_guide_changes_nothing(engine, sampler):
    plain = engine.run(EMPTY.replace(sampler=sampler))
    zero = engine.run(EMPTY.replace(sampler=sampler, guide_mode="noisy", guides=(Guide("clip", 0.0, text="a star"),)))
    assert torch.equal(plain.final_latent, zero.final_latent)
    assert zero.timeline[0].loss is not None


@pytest.mark.parametrize("mode, sampler", [("noisy", "ddim"), ("noisy", "ddpm"), ("backward", "ddim")])
def test_clip_guides_run_and_record(engine, mode, sampler):
    guide = Guide("clip", 200.0, text="a red star at the top")
    run = engine.run(EMPTY.replace(sampler=sampler, guide_mode=mode, guides=(guide,)))
    assert run.image.shape == (64, 64, 3)
    assert run.timeline[1].guidance is not None and run.timeline[1].loss is not None
    assert not torch.equal(run.final_latent, engine.run(EMPTY.replace(sampler=sampler)).final_latent)


def test_bad_clip_requests_are_user_errors(engine):
    from studio.engine.pipeline import validate

    with pytest.raises(RequestError, match="needs a caption"):
        validate(EMPTY.replace(guides=(Guide("clip", 1.0),)))
    with pytest.raises(RequestError, match="reads 4×16×16 latents"):
        engine.run(EMPTY.replace(width=96, height=96, guide_mode="noisy", guides=(Guide("clip", 1.0, text="a ring"),)))


def test_the_caption_travels_in_the_settings_and_the_png_fields():
    from studio.engine.images import guidance_fields, parse_guidance_fields

    request = EMPTY.replace(guide_mode="noisy", guides=(Guide("colour", 2.0, np.zeros((64, 64, 4), np.uint8)),
                                                        Guide("clip", 2.0, text='a red star, "big", at the top')))
    again = GenerationRequest.from_settings(request.settings(), guide_images=(request.guides[0].image,))
    assert again.guides == request.guides and again.guides[1].text == 'a red star, "big", at the top'
    import json

    fields = {k: json.loads(v) if k == "Guidance" else str(v) for k, v in guidance_fields(request)}
    guides = parse_guidance_fields(fields)["guides"]
    assert [g["kind"] for g in guides] == ["colour", "clip"] and guides[1]["text"] == 'a red star, "big", at the top'


def test_a_script_may_call_a_clip_guided_run_under_inference_mode(engine):
    """The CLIP, loaded inside a script's torch.inference_mode(), is still differentiated: the same picture."""
    request = EMPTY.replace(sampler="ddim", guide_mode="noisy", guides=(Guide("clip", 20.0, text="a star"),))
    clg._load.cache_clear()
    with torch.inference_mode():
        inside = engine.run(request).final_latent
    assert torch.equal(inside, engine.run(request).final_latent)


def test_a_branch_swaps_the_classifier_guide_for_a_clip_guide_at_step_k(engine):
    """Issue #15: a branch can swap one guide for another at step k. The steps before k are the parent's
    (classifier-guided); from k on the CLIP guides, so the result is neither the parent's nor a CLIP run's from 0."""
    classifier = EMPTY.replace(sampler="ddim", guide_mode="noisy",
                               guides=(Guide("classifier", 10.0, labels={"shape": "star"}),))
    clip = classifier.replace(guides=(Guide("clip", 200.0, text="a red star at the top"),))
    parent = engine.run(classifier)
    child = engine.run(clip, parent=parent, from_step=2)
    assert child.from_step == 2 and [g.kind for g in child.request.guides] == ["clip"]
    for i in range(3):  # x_2 is the branch point itself: where the parent's classifier-guided steps led
        assert torch.equal(child.timeline[i].x_t, parent.timeline[i].x_t), i
    assert all(child.timeline[i].loss is not None for i in range(2, 5))  # the CLIP's score, recorded per step
    assert child.timeline[2].loss != parent.timeline[2].loss  # the same x_2, another objective
    assert not torch.equal(child.final_latent, parent.final_latent)
    assert not torch.equal(child.final_latent, engine.run(clip).final_latent)
