"""A few training steps of each stage on the tiny architecture: finite, decreasing losses, exact resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from studio.cli import main
from studio.engine.loading import load_studio_file
from studio.engine.model import LatentDiffusion
from studio.training import train as training
from studio.training.config import TrainConfig, tiny_model_config
from studio.training.data import Captioner, add_object_emphasis, build_cache, object_emphasis, render_scenes, unet_batch
from studio.training.data import vae_batch
from studio.engine.masks import grow_mask


def tiny_model(seed: int = 0) -> LatentDiffusion:
    torch.manual_seed(seed)
    return LatentDiffusion(tiny_model_config())


def fit_fixed_batch(model, stage, loss_fn, steps=12, lr=2e-3):
    params = training.trained_parameters(model, stage)
    model.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_vae_loss_decreases_on_a_fixed_batch():
    model = tiny_model()
    x, weights = vae_batch(seed=3, n=8, masked_share=0.25, object_weight=1.0)
    cfg = TrainConfig(stage="vae")
    losses = fit_fixed_batch(
        model, "vae", lambda: training.vae_loss(model, x, cfg, torch.Generator().manual_seed(0), weights)[0]
    )
    assert losses[-1] < 0.7 * losses[0]


def test_diffusion_loss_decreases_on_a_fixed_batch():
    model = tiny_model()
    cache = build_cache(model, 16, seed=5, chunk=8, log=lambda line: None)
    batch = unet_batch(cache, np.random.default_rng(0), 8, Captioner(model.config.pad_id, 77), 1.0, 0.1, 0.5)
    assert batch.x0.shape == (8, 4, 32, 32) and batch.concat.shape == (8, 5, 32, 32) and batch.tokens.shape == (8, 77)
    losses = fit_fixed_batch(
        model, "unet", lambda: training.diffusion_loss(model, batch, torch.Generator().manual_seed(0))[0]
    )
    assert losses[-1] < 0.8 * losses[0]


def test_text_to_image_samples_use_the_engine_convention():
    model = tiny_model()
    cache = build_cache(model, 8, seed=5, chunk=8, log=lambda line: None)
    batch = unet_batch(cache, np.random.default_rng(1), 64, Captioner(model.config.pad_id, 77), 2.0, 0.0, 1.0)
    assert torch.all(batch.concat[:, :1] == 1)  # mask 1 everywhere, as tasks.inpaint_concat for txt2img
    grey = model.vae.encode(torch.zeros(1, 3, 64, 64)).mode()[0] * 2.0
    torch.testing.assert_close(batch.concat[:, 1:], grey.expand(64, -1, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_resume_continues_exactly(tmp_path, stage):
    cfg = TrainConfig(stage=stage, batch_size=4, dataset_size=16, warmup_steps=2, total_steps=10)
    quiet = lambda line: None  # noqa: E731

    straight = tiny_model()
    training.train(straight, cfg, tmp_path / "a", training.Budget(steps=4), log=quiet)

    first = tiny_model()
    training.train(first, cfg, tmp_path / "b", training.Budget(steps=2), log=quiet)
    state = training.load_checkpoint(tmp_path / "b" / f"{stage}.pt")
    assert state["progress"]["step"] == 2
    resumed = training.model_from_checkpoint(state, use_ema=False)
    progress = training.train(resumed, cfg, tmp_path / "b", training.Budget(steps=4), resume=state, log=quiet)
    assert progress["step"] == 4 and progress["samples"] == 16 and np.isfinite(progress["loss"])
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")


def test_cli_trains_resumes_and_exports(tmp_path, capsys):
    out, export = tmp_path / "ckpt", tmp_path / "model.safetensors"
    common = ["--out", str(out), "--tiny", "--batch-size", "4", "--threads", "1"]
    assert main(["train", "--stage", "vae", "--steps", "2", *common]) == 0
    assert main(["train", "--stage", "unet", "--steps", "2", "--dataset-size", "8", "--export", str(export),
                 *common]) == 0
    assert main(["train", "--stage", "unet", "--steps", "3", *common]) == 0
    log = capsys.readouterr()
    assert "resuming" in log.err and "step 3" in log.out and "ETA" in log.out
    model = load_studio_file(export, torch.device("cpu"), torch.float32)
    assert model.is_inpainting and model.config.prediction == "v" and model.config.latent_rgb is not None
    assert len(model.config.latent_rgb_hidden) == model.latent_channels + 1  # W1 rows + b1
    assert len(model.config.latent_rgb) == len(model.config.latent_rgb_hidden[0]) + 1  # W2 rows + b2
    assert model.config.vae.scaling_factor != 1.0
    # a later session continues from the shipped file: fresh optimiser, EMA from the file's weights
    again = ["--out", str(tmp_path / "again"), "--batch-size", "4", "--dataset-size", "8"]
    assert main(["train", "--stage", "unet", "--init", str(export), "--steps", "1", *again]) == 0
    continued = training.load_checkpoint(tmp_path / "again" / "unet.pt")
    assert continued["progress"]["step"] == 1
    assert json.loads(continued["model_config"])["vae"]["scaling_factor"] == model.config.vae.scaling_factor


def test_cli_needs_a_budget_and_a_vae(tmp_path, capsys):
    assert main(["train", "--stage", "unet", "--out", str(tmp_path), "--tiny", "--steps", "1"]) == 1
    assert "train --stage vae first" in capsys.readouterr().err


def test_decoder_fine_tuning_keeps_the_latent_space(tmp_path):
    out, export = tmp_path / "ckpt", tmp_path / "model.safetensors"
    common = ["--out", str(out), "--tiny", "--batch-size", "4"]
    assert main(["train", "--stage", "vae", "--steps", "2", *common]) == 0
    assert main(["train", "--stage", "unet", "--steps", "1", "--dataset-size", "8", *common]) == 0
    assert main(["train", "--stage", "vae", "--decoder-only", "--steps", "3", *common]) == 0
    unet_stage = training.model_from_checkpoint(training.load_checkpoint(out / "unet.pt"), use_ema=True)
    tuned = training.model_from_checkpoint(training.load_checkpoint(out / "vae-decoder.pt"), use_ema=True)
    assert training.encoder_fingerprint(tuned) == training.encoder_fingerprint(unet_stage)
    assert main(["train", "--stage", "unet", "--export-only", "--export", str(export),
                 "--decoder-from", str(out / "vae-decoder.pt"), *common]) == 0
    shipped = load_studio_file(export, torch.device("cpu"), torch.float32)
    decoder = tuned.vae.decoder.conv_out.weight
    torch.testing.assert_close(shipped.vae.decoder.conv_out.weight, decoder.half().float())
    assert not torch.equal(unet_stage.vae.decoder.conv_out.weight, decoder)


def test_training_captions_encode_as_the_engine_encodes_prompts():
    model = tiny_model().eval()
    prompts = ["a big red circle at the top left, on a blue background", ""]
    captioner = Captioner(model.config.pad_id, model.config.text.max_length)
    with torch.no_grad():
        ids = captioner.tokenizer(prompts, pad_id=model.config.pad_id, context_length=model.config.text.max_length)
        trained = model.text_encoder(torch.tensor(ids))
    torch.testing.assert_close(trained, model.encode_text(prompts))


def test_evaluate_cli_reports_every_metric(tmp_path, capsys):
    out, export, report = tmp_path / "ckpt", tmp_path / "model.safetensors", tmp_path / "metrics.json"
    common = ["--out", str(out), "--tiny", "--batch-size", "4"]
    assert main(["train", "--stage", "vae", "--steps", "1", *common]) == 0
    assert main(["train", "--stage", "unet", "--steps", "1", "--dataset-size", "4", "--export", str(export),
                 *common]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(export), "--prompts", "2", "--train-prompts", "1", "--inpaint", "1",
                 "--reconstructions", "3", "--steps", "2", "--grammar-prompts", "2", "--binding", "1",
                 "--busy-inpaint", "2", "--json", str(report)]) == 0
    table = capsys.readouterr().out
    rows = ("txt2img.shape", "txt2img_train_templates.colour", "inpaint.object_in_mask", "inpaint.unmasked_unchanged",
            "ae.psnr_db", "ae.detector_shape", "grammar.colour", "grammar_cfg5.shape", "binding.both_right",
            "busy_inpaint.object_in_mask", "busy_inpaint.others_kept", "empty pictures")
    for row in rows:
        assert row in table
    metrics = json.loads(report.read_text())
    assert metrics["inpaint"]["unmasked_unchanged"] == 1.0  # paste-back keeps every pixel outside the hole
    assert set(metrics["txt2img"]) >= {"background", "colour", "shape", "size", "position"}
    assert metrics["busy_inpaint"]["unmasked_unchanged"] == 1.0
    assert metrics["empty_pictures"]["n"] == 4 and metrics["grammar_cfg5"]["cfg"] == 5.0


def test_evaluate_cli_names_a_missing_model(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope.safetensors"), "--prompts", "1"]) == 1
    assert "nope.safetensors" in capsys.readouterr().err


def test_latent_cache_grows_by_blocks_and_loads_without_pickle(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CACHE_BLOCK", 8)
    model = tiny_model()
    quiet = lambda line: None  # noqa: E731
    small = training.prepare_unet_data(model, TrainConfig(dataset_size=8), tmp_path, quiet)
    files = sorted(p.name for p in tmp_path.iterdir())
    grown = training.prepare_unet_data(model, TrainConfig(dataset_size=20), tmp_path, quiet)
    assert len(small) == 8 and len(grown) == 20
    assert len(sorted(p.name for p in tmp_path.iterdir())) == len(files) + 2  # the first block was kept, 2 added
    assert grown.scenes[:8] == small.scenes and torch.equal(grown.latents[:8], small.latents)
    assert grown.scenes[8:16] != small.scenes  # a new block draws new scenes (seed data_seed + 1000)
    for path in tmp_path.iterdir():  # tensors and JSON only: loads with weights_only=True
        assert set(torch.load(path, weights_only=True)) >= {"latents", "masks", "masked_latents", "scenes_json"}


def test_training_checkpoints_load_without_pickle(tmp_path):
    cfg = TrainConfig(stage="unet", batch_size=2, dataset_size=4, warmup_steps=1, total_steps=2)
    training.train(tiny_model(), cfg, tmp_path, training.Budget(steps=1), log=lambda line: None)
    state = torch.load(tmp_path / "unet.pt", weights_only=True)
    assert state["progress"]["step"] == 1 and "optimizer" in state


def test_object_weights_give_every_object_the_weight_of_a_whole_image():
    x, weights = vae_batch(seed=11, n=32, masked_share=0.0, object_weight=1.0)
    plain, ones = vae_batch(seed=11, n=32, masked_share=0.0)
    torch.testing.assert_close(x, plain)  # the weights change nothing about the images
    assert torch.all(ones == 1)
    scenes = render_scenes(np.random.default_rng(11), 32)[1]  # vae_batch's own draw: same seed, same scenes
    for i in range(32):
        extra = weights[i, 0] - 1
        if torch.all(x[i] == 0):  # the all-grey images have no objects
            assert torch.all(extra == 0)
            continue
        # Σ over pixels of region · H·W / area = H·W per object
        assert float(extra.sum()) == pytest.approx(len(scenes[i].objects) * 64 * 64, rel=1e-4)
        assert float(extra.max()) > 64 * 64 / (31 + 4) ** 2  # even a large object's ring weighs several times


@torch.no_grad()
def test_weighted_vae_loss_is_the_plain_loss_for_unit_weights():
    model = tiny_model()
    x, _ = vae_batch(seed=3, n=4, masked_share=0.25)
    cfg = TrainConfig(stage="vae")
    plain = training.vae_loss(model, x, cfg, torch.Generator().manual_seed(0))[0]
    unit = training.vae_loss(model, x, cfg, torch.Generator().manual_seed(0), torch.ones(4, 1, 64, 64))[0]
    doubled = training.vae_loss(model, x, cfg, torch.Generator().manual_seed(0), torch.full((4, 1, 64, 64), 2.0))[0]
    torch.testing.assert_close(unit, plain)
    kl = cfg.kl_weight * training.vae_loss(model, x, cfg, torch.Generator().manual_seed(0))[1]["kl"]
    assert float(doubled) - kl == pytest.approx(2 * (float(plain) - kl), rel=1e-4)


def test_latent_object_emphasis_weighs_each_object_as_a_whole_latent():
    images, scenes, layers = render_scenes(np.random.default_rng(4), 24)
    for alphas, scene in zip(layers, scenes):
        emphasis = object_emphasis(alphas, factor=4)
        assert emphasis.shape == (16, 16)
        assert float(emphasis.sum()) == pytest.approx(len(scene.objects) * 16 * 16, rel=1e-4)
        touched = dilate_any(alphas)  # cells that hold some object pixel (or one within 2 px) and no others
        assert np.all((emphasis > 0) == touched)
        small = [a for a, o in zip(alphas, scene.objects) if o.size == "small"]
        if small and len(scene.objects) == 1:
            assert emphasis.max() > 10  # a small object (≤ 5×5 cells with its margin) weighs > 10× per cell


def dilate_any(alphas):
    pixels = np.zeros((64, 64), bool)
    for alpha in alphas:
        pixels |= grow_mask(alpha > 0.02, 2)
    return pixels.reshape(16, 4, 16, 4).any(axis=(1, 3))


def test_older_caches_get_the_object_emphasis_a_fresh_build_has(tmp_path):
    model = tiny_model()
    fresh = build_cache(model, 12, seed=9, chunk=5, log=lambda line: None)
    old = build_cache(model, 12, seed=9, chunk=5, log=lambda line: None)
    old.object_emphasis = None
    old.save(tmp_path / "old.pt")
    loaded = training.LatentCache.load(tmp_path / "old.pt")
    assert loaded.object_emphasis is None
    add_object_emphasis(loaded, seed=9, chunk=5)
    assert torch.equal(loaded.object_emphasis, fresh.object_emphasis)
    with pytest.raises(ValueError, match="does not hold the scenes"):
        add_object_emphasis(loaded, seed=10, chunk=5)


def test_object_weighted_diffusion_loss():
    model = tiny_model()
    cache = build_cache(model, 8, seed=5, chunk=8, log=lambda line: None)
    captioner = Captioner(model.config.pad_id, 77)
    plain = unet_batch(cache, np.random.default_rng(2), 6, captioner, 1.0, 0.1, 0.5)
    weighted = unet_batch(cache, np.random.default_rng(2), 6, captioner, 1.0, 0.1, 0.5, object_weight=1.0)
    assert plain.weights is None and torch.equal(plain.x0, weighted.x0) and torch.equal(plain.tokens, weighted.tokens)
    assert weighted.weights.shape == (6, 1, 32, 32) and float(weighted.weights.min()) == 1.0

    @torch.no_grad()
    def loss(batch):  # the same t and noise for every batch
        return float(training.diffusion_loss(model, batch, torch.Generator().manual_seed(0))[0])

    unit = dataclasses.replace(plain, weights=torch.ones(6, 1, 32, 32))
    doubled = dataclasses.replace(plain, weights=torch.full((6, 1, 32, 32), 2.0))
    assert loss(unit) == pytest.approx(loss(plain), rel=1e-6)
    assert loss(doubled) == pytest.approx(2 * loss(plain), rel=1e-5)
    assert loss(weighted) > loss(plain)
