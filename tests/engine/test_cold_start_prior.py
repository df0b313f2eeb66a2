"""Generation's low-frequency start for cold-blur (cold_model.StartPrior): the start is the degradation
D(x̃0, s0) of a picture drawn from a kernel density over training pictures' kept DCT coefficients."""

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.engine import GenerationRequest, UserError
from studio.engine.cold import Degradation, dct_matrix
from studio.engine.cold_model import (START_PRIOR, ColdConfig, RestorationNet, StartPrior, load_cold_file,
                                      read_start_prior, save_cold_file)
from studio.engine.pipeline import Engine
from studio.training import cold
from studio.training.cli import add_training_commands

T = 8


def coefficients(x: torch.Tensor) -> torch.Tensor:
    c = dct_matrix(x.shape[-1], dtype=torch.float64)
    return c @ x.double() @ c.T


def test_the_prior_keeps_the_frequencies_the_blur_keeps():
    d = Degradation("blur", T)
    flat = torch.full((2, 3, 64, 64), 0.25)
    prior = cold.fit_start_prior(d, T - 1, flat, bandwidth_share=0.1)
    gain = d.blur_gain(torch.tensor([T - 1]), torch.zeros(1, 1, 64, 64, dtype=torch.float64))[0, 0]
    assert {tuple(f) for f in prior.frequencies.tolist()} == {tuple(f) for f in (gain > 1e-3).nonzero().tolist()}
    dc = [i for i, (u, v) in enumerate(prior.frequencies.tolist()) if u == v == 0][0]
    # orthonormal 2-D DCT-II: the constant picture a has the single coefficient N·a at (0, 0)
    torch.testing.assert_close(prior.coefficients[:, :, dc], torch.full((2, 3), 64 * 0.25))
    others = [i for i in range(len(prior.frequencies)) if i != dc]
    assert prior.coefficients[:, :, others].abs().max() < 1e-5 and prior.bandwidth.abs().max() < 1e-5


def test_a_draw_without_kernel_noise_is_a_training_picture_low_passed():
    d = Degradation("blur", 40)
    pictures = cold.scene_batch("blur", np.random.default_rng(3), 1)[0]
    prior = cold.fit_start_prior(d, 36, pictures, bandwidth_share=0.0)
    drawn = prior.sample(2, 64, torch.Generator().manual_seed(0))
    full = coefficients(pictures)
    kept = torch.zeros_like(full)
    kept[:, :, prior.frequencies[:, 0], prior.frequencies[:, 1]] = full[:, :, prior.frequencies[:, 0],
                                                                        prior.frequencies[:, 1]]
    c = dct_matrix(64, dtype=torch.float64)
    torch.testing.assert_close(drawn, (c.T @ kept @ c).float().expand(2, -1, -1, -1), atol=1e-5, rtol=0)
    # what the blur removes at s0 is below a tenth of an 8-bit level: D(x̃0, s0) is D(x0, s0) of the picture
    assert (d(drawn[:1], 36) - d(pictures, 36)).abs().max() < 0.1 / 127.5
    assert (d(drawn[:1], 36) - pictures).abs().max() > 0.3  # and it is far from the sharp picture


def tiny_blur_file(tmp_path, start_step=T - 2):
    torch.manual_seed(0)
    config = ColdConfig(kind="blur", steps=T, channels=(8, 16), gmm_weights=(1.0,), gmm_means=((0.1, 0.2, 0.3),),
                        gmm_stds=((0.01, 0.01, 0.01),), start_step=start_step)
    rng = np.random.default_rng(1)
    prior = None
    if start_step:
        prior = cold.fit_start_prior(Degradation("blur", T), start_step, cold.scene_batch("blur", rng, 4)[0], 0.1)
    path = tmp_path / "tiny-blur.safetensors"
    save_cold_file(RestorationNet(config), (), path, dtype=torch.float32, prior=prior)
    return path, prior


def test_a_generation_starts_at_s0_from_a_blurred_picture(tmp_path):
    path, prior = tiny_blur_file(tmp_path)
    engine = Engine()
    request = GenerationRequest(model=str(path), sampler="cold_improved", steps=T, seed=5, cold_noise=0.0)
    run = engine.run(request)
    assert run.status == "finished" and [lv.timestep for lv in run.grid] == list(range(T - 2, -1, -1))
    start = run.timeline[0].x_t.double()
    full = coefficients(start)
    kept = torch.zeros_like(full, dtype=torch.bool)
    kept[:, :, prior.frequencies[:, 0], prior.frequencies[:, 1]] = True
    assert full[~kept].abs().max() < 1e-3 and full[kept].abs().max() > 1  # only the prior's frequencies
    assert start.std(dim=(2, 3)).max() > 1e-3  # not one flat colour: the start carries where things are
    again = engine.run(request)
    torch.testing.assert_close(again.timeline[0].x_t, run.timeline[0].x_t, atol=0, rtol=0)  # the seed decides
    other = engine.run(request.replace(seed=6))
    assert (other.timeline[0].x_t - run.timeline[0].x_t).abs().max() > 1e-3
    noisy = engine.run(request.replace(cold_noise=0.05))  # §5.1's perturbation on top, drawn after the picture
    assert 0.03 < float((noisy.timeline[0].x_t - run.timeline[0].x_t).std()) < 0.07


def test_start_step_rewrites_only_the_start_and_keeps_the_weights(tmp_path):
    path, _ = tiny_blur_file(tmp_path, start_step=0)
    before = load_file(str(path))
    assert read_start_prior(path) is None and load_cold_file(path)[0].config.generation_step == T
    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    args = parser.parse_args(["train", "--stage", "cold", "--degradation", "blur", "--out", str(tmp_path),
                              "--export", str(path), "--start-step", str(T - 1)])
    cold.PRIOR_IMAGES, saved = 200, cold.PRIOR_IMAGES
    try:
        assert args.handler(args) == 0
    finally:
        cold.PRIOR_IMAGES = saved
    after = load_file(str(path))
    for name, tensor in before.items():
        if not name.startswith(START_PRIOR):
            assert torch.equal(after[name], tensor), name
    net, _ = load_cold_file(path)
    assert net.config.start_step == T - 1 and net.config.generation_step == T - 1
    prior = read_start_prior(path)
    assert prior is not None and prior.coefficients.shape[0] == 200


def test_a_start_prior_that_does_not_fit_is_a_clear_error(tmp_path):
    path, prior = tiny_blur_file(tmp_path)
    tensors = load_file(str(path))
    tensors[START_PRIOR + "bandwidth"] = torch.zeros(3, prior.frequencies.shape[0] + 1)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="start prior"):
        read_start_prior(path)
    with pytest.raises(UserError, match="cannot read the cold model"):
        Engine().run(GenerationRequest(model=str(path), sampler="cold_improved", steps=T, seed=1))


def test_start_step_on_a_file_that_is_not_cold_blur_is_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny-mask.safetensors"
    save_cold_file(RestorationNet(ColdConfig(kind="mask", steps=T, channels=(8, 16), vocabulary=3)), ("a", "b"), path)
    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    args = parser.parse_args(["train", "--stage", "cold", "--degradation", "mask", "--out", str(tmp_path),
                              "--export", str(path), "--start-step", "4"])
    with pytest.raises(UserError, match="for cold-blur"):
        args.handler(args)
