"""The full pipeline on tiny-random: txt2img, img2img, cancellation, determinism, the timeline."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from studio.engine.images import tensor_to_image

from studio.engine.events import EventKind
from studio.engine.model import ModelConfig
from studio.engine.pipeline import Engine
from studio.engine.request import GenerationRequest, RequestError
from studio.engine.run import Run
from studio.engine.timeline import LatentPreview

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread (2 contend on a busy CPU)

BASE = GenerationRequest(prompt="a red circle", model="tiny-random", steps=6, width=64, height=64, seed=7, cfg=3.0)


@pytest.fixture(scope="module")
def engine():
    return Engine()


def kinds(events):
    return [e.kind for e in events]


def test_txt2img_event_order_and_timeline(engine):
    events = list(engine.generate(BASE))
    assert kinds(events) == [EventKind.STARTED] + [EventKind.STEP] * 6 + [EventKind.FINISHED]
    assert [e.step for e in events[1:-1]] == [1, 2, 3, 4, 5, 6]
    run = events[-1].run
    assert run.status == "finished" and run.kind == "txt2img"
    assert run.image.shape == (64, 64, 3) and run.image.dtype == np.uint8
    assert len(run.timeline) == 6
    timesteps = [s.level.timestep for s in run.timeline]
    assert timesteps == sorted(timesteps, reverse=True)
    assert events[1].preview.ndim == 3 and events[1].preview.shape[2] == 3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler_a", "dpmpp_2m"])
def test_same_seed_same_bytes_other_seed_differs(engine, sampler):
    request = BASE.replace(sampler=sampler, eta=1.0 if sampler != "dpmpp_2m" else 0.0)
    a = engine.run(request).image
    b = engine.run(request).image
    c = engine.run(request.replace(seed=8)).image
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_initial_latent_is_cpu_randn_of_the_seed(engine):
    run = engine.run(BASE)
    expected = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(7))
    assert torch.equal(run.timeline[0].x_t, expected)


def test_negative_prompt_and_guidance_change_the_result(engine):
    plain = engine.run(BASE).image
    assert not np.array_equal(plain, engine.run(BASE.replace(negative_prompt="blue")).image)
    assert not np.array_equal(plain, engine.run(BASE.replace(cfg=1.0)).image)


def test_img2img_reruns_the_strength_fraction(engine):
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = (255, 0, 0)
    run = engine.run(BASE.replace(init_image=image, strength=0.5, steps=10))
    assert run.kind == "img2img" and len(run.timeline) == 5
    # the first step sits where SDEdit puts it: the 6th of the 10 levels (leading spacing: 401)
    assert run.timeline[0].level.timestep == 401
    with pytest.raises(RequestError, match="re-runs no step"):
        engine.run(BASE.replace(init_image=image, strength=0.05, steps=10))


def test_cancel_stops_at_the_next_step_and_keeps_the_timeline(engine):
    cancel = threading.Event()
    events = []
    for event in engine.generate(BASE.replace(steps=10), cancel=cancel):
        events.append(event)
        if event.kind is EventKind.STEP and event.step == 3:
            cancel.set()
    assert events[-1].kind is EventKind.CANCELLED
    assert events[-1].step == 3
    run = events[-1].run
    assert run.status == "cancelled" and len(run.timeline) == 3 and run.image is None


def test_bad_requests_are_one_clear_error_event(engine):
    for request, message in [
        (BASE.replace(sampler="plms"), "unknown sampler"),
        (BASE.replace(steps=0), "steps must be"),
        (BASE.replace(width=65), "multiples of 2"),  # tiny-random's VAE halves each side
        (BASE.replace(model="/nonexistent/model.safetensors"), "not found"),
        (BASE.replace(strength=0), "strength"),
    ]:
        events = list(engine.generate(request))
        assert kinds(events) == [EventKind.ERROR], request
        assert message in events[0].message


def test_timeline_views_are_consistent_and_small(engine):
    run = engine.run(BASE)
    step = run.timeline[2]
    x0 = step.x0
    a = step.level.alpha_cumprod
    torch.testing.assert_close(a**0.5 * x0 + (1 - a) ** 0.5 * step.eps.float(), step.x_t, atol=1e-5, rtol=1e-5)
    for view in ("x_t", "x0", "eps"):  # the numpy path the UI scrubs with equals the torch one
        np.testing.assert_allclose(step.view_array(view), step.view(view).numpy(), atol=1e-5, rtol=1e-5)
    views = {v: run.step_image(2, v) for v in ("x_t", "x0", "eps")}
    assert all(img.shape == (32, 32, 3) for img in views.values())
    assert not np.array_equal(views["x_t"], views["x0"])


def test_timeline_holds_what_its_tensors_hold_and_stays_in_budget(engine):
    """timeline.py's budget: per step x_t in float32 and ε̂ in float16 (plus the noise generator's state for an
    ancestral sampler), so a 50-step 512 px SD run, a 64×64×4 latent, stays under 5 MiB. Measured on a real run
    with that latent: tiny-random at 128 px (its VAE halves each side), with euler_a, which stores the most."""
    steps = 8
    run = engine.run(BASE.replace(width=128, height=128, steps=steps, sampler="euler_a", eta=1.0))
    assert len(run.timeline) == steps and run.timeline[0].x_t.shape == (1, 4, 64, 64)
    tensors = [t for step in run.timeline for t in (step.x_t, step.eps, step.rng_state) if t is not None]
    assert len(tensors) == 3 * steps
    for t in tensors:
        assert t.device.type == "cpu"
        # no view into a larger buffer (one half of a CFG batch would hold both halves)
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)  # nothing shared or aliased
    held = sum(t.numel() * t.element_size() for t in tensors)
    assert run.nbytes == held
    assert held / steps <= 5 * 1024 * 1024 / 50


def test_sides_need_only_be_whole_latent_pixels(engine):
    """tiny-random's UNet halves once: a 66×70 picture is a 33×35 latent, whose upsampler lands on 33×35 again."""
    run = engine.run(BASE.replace(width=66, height=70, steps=2))
    assert run.image.shape == (70, 66, 3) and run.timeline[0].x_t.shape == (1, 4, 35, 33)


def test_decode_step_is_the_vae_decode_of_that_steps_prediction(engine):
    run = engine.run(BASE)
    model = engine.model(BASE.model)
    decoded = engine.decode_step(run, 3, "x0")
    assert decoded.shape == (64, 64, 3)
    with torch.inference_mode():
        expected = tensor_to_image(model.decode_latent(run.timeline[3].x0))
    np.testing.assert_array_equal(decoded, expected)
    assert not np.array_equal(engine.decode_step(run, 1, "x0"), decoded)  # another step, another picture


def test_save_and_load_run_round_trip(engine, tmp_path):
    run = engine.run(BASE.replace(sampler="euler_a", eta=1.0))
    path = tmp_path / "run.safetensors"
    run.save(path)
    loaded = Run.load(path)
    assert loaded.request == run.request and loaded.id == run.id
    assert len(loaded.timeline) == len(run.timeline)
    for a, b in zip(run.timeline, loaded.timeline):
        assert torch.equal(a.x_t, b.x_t) and torch.equal(a.eps, b.eps) and torch.equal(a.rng_state, b.rng_state)
    assert np.array_equal(loaded.image, run.image)
    assert not (tmp_path / "run.safetensors.partial").exists()


def test_latent_preview_fit_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    factors, bias = torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
    latents = torch.randn(8, 4, 5, 5, generator=g)
    images = torch.einsum("nchw,cr->nrhw", latents, factors) + bias[None, :, None, None]
    fitted = LatentPreview.fit(latents, images)
    torch.testing.assert_close(fitted.factors, factors, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-4, rtol=1e-4)


def test_latent_preview_hidden_layer_fits_a_nonlinear_map_and_survives_the_config():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(16, 4, 8, 8, generator=g)
    # a colour code that no linear map reads: RGB depends on products and a saturation of the channels
    images = torch.stack([torch.tanh(latents[:, 0] * latents[:, 1]), torch.tanh(2 * latents[:, 2]),
                          latents[:, 3].abs() - 0.8], dim=1)
    linear = LatentPreview.fit(latents, images)
    hidden = LatentPreview.fit_hidden(latents, images, width=32)

    def error(preview):
        rgb = np.stack([preview.to_rgb(z) for z in latents]).astype(np.float32) / 127.5 - 1
        return float(np.abs(rgb - images.permute(0, 2, 3, 1).numpy()).mean())

    assert error(hidden) < 0.5 * error(linear)
    # the numpy preview is the torch map it was fitted as
    w1, b1 = hidden.hidden
    reference = (torch.nn.functional.silu(latents[0].permute(1, 2, 0) @ w1 + b1) @ hidden.factors + hidden.bias)
    expected = ((reference.clamp(-1, 1) + 1) * 127.5).round().numpy()
    assert np.abs(hidden.to_rgb(latents[0]).astype(np.float32) - expected).max() <= 1
    # through a ModelConfig (as a model file stores it) and back
    rows, hidden_rows = hidden.rows()
    config = ModelConfig.from_json(dataclasses.replace(ModelConfig.tiny(), latent_rgb=rows,
                                                       latent_rgb_hidden=hidden_rows).to_json())
    restored = LatentPreview.from_rows(config.latent_rgb, config.latent_rgb_hidden)
    assert np.abs(restored.to_rgb(latents[0]).astype(int) - hidden.to_rgb(latents[0]).astype(int)).max() <= 1


def test_prediction_override_changes_how_the_output_is_read(engine):
    eps = engine.run(BASE.replace(prediction="epsilon")).image
    assert np.array_equal(eps, engine.run(BASE).image)  # tiny-random is an ε-model
    assert not np.array_equal(eps, engine.run(BASE.replace(prediction="v")).image)


def test_long_prompts_and_negative_prompts_of_other_lengths(engine):
    long_prompt = ", ".join(["a small red circle on a blue background"] * 12)  # > 75 tokens: two chunks
    run = engine.run(BASE.replace(prompt=long_prompt, negative_prompt="blurry"))
    assert run.image.shape == (64, 64, 3)
    assert not np.array_equal(run.image, engine.run(BASE.replace(prompt="a small red circle")).image)
