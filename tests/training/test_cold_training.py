"""Training the cold restoration nets: a few resumable steps of a tiny net, the GMM start, the caption words."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.engine.cold_model import load_cold_file
from studio.training import cold
from studio.training.cli import add_training_commands


def test_channel_gmm_finds_two_clusters():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal([0.5, -0.5, 0.0], 0.02, (300, 3)), rng.normal([-0.6, 0.2, 0.7], 0.02, (100, 3))])
    weights, means, stds = cold.fit_channel_gmm(points, 2)
    order = np.argsort(-weights)
    np.testing.assert_allclose(weights[order], [0.75, 0.25], atol=0.01)
    np.testing.assert_allclose(means[order], [[0.5, -0.5, 0.0], [-0.6, 0.2, 0.7]], atol=0.01)
    assert (stds < 0.05).all()


def test_scene_batches_per_degradation():
    x, captions, region, scenes = cold.scene_batch("blur", np.random.default_rng(1), 6)
    assert x.shape == (6, 3, 64, 64) and region is None and all(len(s.objects) == 1 for s in scenes)
    x, captions, region, scenes = cold.scene_batch("mask", np.random.default_rng(1), 6)
    assert region.shape == (6, 1, 64, 64) and len(captions) == 6 and (region.sum(dim=(1, 2, 3)) > 0).all()


def test_trained_words_blank_what_training_captions_never_say():
    words = cold.trained_words(samples=400)
    assert len(words) == len(cold.caption_vocabulary())
    assert "circle" in words and "background" in words and "canvas" not in words and "" in words


def test_train_resume_and_export_through_the_cli(tmp_path):
    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    export = tmp_path / "cold-mask.safetensors"
    argv = ["train", "--stage", "cold", "--degradation", "mask", "--out", str(tmp_path), "--tiny", "--batch-size", "2",
            "--export", str(export)]
    args = parser.parse_args(argv + ["--steps", "2"])
    assert args.handler(args) == 0
    state = torch.load(tmp_path / "cold-mask.pt", weights_only=True)
    assert state["step"] == 2
    args = parser.parse_args(argv + ["--steps", "3"])  # resumes at step 2
    assert args.handler(args) == 0
    assert torch.load(tmp_path / "cold-mask.pt", weights_only=True)["step"] == 3
    net, words = load_cold_file(export)
    assert net.config.kind == "mask" and net.config.channels == (8, 16) and "circle" in words
    assert len(net.config.gmm_weights) == cold.GMM_COMPONENTS


def _cpu_autocast_dtype():
    try:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    except TypeError:  # torch < 2.4 names these per device
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def test_bf16_runs_the_forward_under_cpu_autocast_and_keeps_fp32_weights(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    seen = []
    real_loss = cold.cold_loss

    def recording_loss(net, *args, **kwargs):
        loss = real_loss(net, *args, **kwargs)
        seen.append((_cpu_autocast_dtype(), loss.dtype))
        return loss

    monkeypatch.setattr(cold, "cold_loss", recording_loss)
    args = parser.parse_args(["train", "--stage", "cold", "--degradation", "mask", "--out", str(tmp_path), "--tiny",
                              "--batch-size", "2", "--steps", "2", "--bf16",
                              "--export", str(tmp_path / "cold-mask.safetensors")])
    assert args.handler(args) == 0
    assert seen == [(torch.bfloat16, torch.float32)] * 2  # the forward in bf16, the ℓ1 in fp32
    state = torch.load(tmp_path / "cold-mask.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_cold_stage_needs_a_degradation(tmp_path):
    from studio.engine import UserError

    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    args = parser.parse_args(["train", "--stage", "cold", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="needs --degradation"):
        args.handler(args)


def test_a_hole_caption_names_the_object_under_it():
    from studio.training.scenes import SceneObject

    obj = SceneObject("heart", "green", "small", "bottom left")
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = cold.hole_caption(obj, rng, held_out=True)
        assert "heart" in text and "green" in text and "left" in text and "background" not in text
    texts = [cold.hole_caption(obj, rng) for _ in range(200)]
    assert all("heart" in t for t in texts) and 40 < sum("left" in t for t in texts) < 160  # place half the time


def test_mask_batches_caption_box_holes_with_their_object():
    _, captions, region, scenes = cold.scene_batch("mask", np.random.default_rng(4), 40)
    short = [i for i, c in enumerate(captions) if "background" not in c and " and " not in c and "behind" not in c
             and "against" not in c and "backdrop" not in c and "over" not in c and "front" not in c]
    assert len(short) >= 15  # ~0.75 · 0.8 of the batch
    for i in short:
        objects = [o for o in scenes[i].objects if o.shape in captions[i]]
        assert objects  # the hole's object is one of the scene's


def test_mask_loss_reads_the_region_only():
    class Oracle(torch.nn.Module):  # right inside the region, wildly wrong outside
        def __init__(self, x0, region):
            super().__init__()
            self.x0, self.region, self.config = x0, region, cold.ColdConfig(kind="mask", vocabulary=0)

        def forward(self, x_s, s, extra=None, tokens=None, offsets=None):
            return torch.where(self.region > 0, self.x0, self.x0 + 5.0)

    x0, captions, region, _ = cold.scene_batch("mask", np.random.default_rng(2), 3)
    d = cold.Degradation("mask", 8)
    loss = cold.cold_loss(Oracle(x0, region), d, x0, captions, region, torch.Generator().manual_seed(0), ())
    assert float(loss) == 0.0
    loss = cold.cold_loss(Oracle(x0, 1 - region), d, x0, captions, region, torch.Generator().manual_seed(0), ())
    assert float(loss) == pytest.approx(5.0)


def test_step_draws_weight_the_upper_half_when_asked():
    uniform = cold.draw_steps(20_000, 32, torch.Generator().manual_seed(0))
    assert int(uniform.min()) == 1 and int(uniform.max()) == 32
    assert float((uniform >= 16).float().mean()) == pytest.approx(17 / 32, abs=0.02)
    weighted = cold.draw_steps(20_000, 32, torch.Generator().manual_seed(0), high_share=0.5)
    assert int(weighted.min()) == 1 and int(weighted.max()) == 32
    # half the batch from 16 … 32, half from 1 … 32: P(s ≥ 16) = 0.5 + 0.5 · 17/32
    assert float((weighted >= 16).float().mean()) == pytest.approx(0.5 + 0.5 * 17 / 32, abs=0.02)


def test_the_mask_recipe_weights_big_holes_and_the_others_do_not(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    seen = []
    monkeypatch.setattr(cold, "train", lambda cfg, *a, **k: seen.append(cfg))
    for kind in ("mask", "blur"):
        cold.run_cli(parser.parse_args(["train", "--stage", "cold", "--degradation", kind, "--out", str(tmp_path),
                                        "--export", str(tmp_path / "x.safetensors")]))
    assert [cfg.high_s_share for cfg in seen] == [cold.HIGH_S_SHARE, 0.0]
    assert [cfg.caption_dropout for cfg in seen] == [cold.CAPTION_DROPOUT, 0.0]
    assert cold.CAPTION_DROPOUT == 0.0  # the shipped cold-mask's recipe (model card); the option is measured there


def test_caption_dropout_empties_the_asked_share_to_the_null_caption():
    from studio.engine.cold_model import caption_tokens

    captions = ["a red circle"] * 20_000
    dropped = cold.drop_captions(captions, np.random.default_rng(0), 0.12)
    assert set(dropped) == {"", "a red circle"}
    assert dropped.count("") / len(dropped) == pytest.approx(0.12, abs=0.01)
    assert cold.drop_captions(captions[:50], np.random.default_rng(0), 0.0) == captions[:50]
    ids, offsets = caption_tokens(["", "red"], cold.caption_vocabulary())
    assert ids[0] == 0 and offsets.tolist() == [0, 1]  # "" is id 0, the ∅ that guided_x0 passes


def test_a_run_with_caption_dropout_says_so_in_its_model_file(tmp_path):
    out = tmp_path / "m.safetensors"
    cold.train(cold.ColdTrainConfig(kind="mask", batch_size=2, caption_dropout=0.5), tmp_path / "a", out,
               log=lambda _: None, max_steps=1, tiny=True)
    config = load_cold_file(out)[0].config
    assert config.caption_dropout == 0.5 and config.guidable and config.guidance == 1.0


def test_a_fresh_run_can_start_from_a_model_file(tmp_path):
    first = tmp_path / "first.safetensors"
    cold.train(cold.ColdTrainConfig(kind="mask", batch_size=2), tmp_path / "a", first, log=lambda _: None,
               max_steps=1, tiny=True)
    second = tmp_path / "second.safetensors"
    cold.train(cold.ColdTrainConfig(kind="mask", batch_size=2), tmp_path / "b", second, log=lambda _: None,
               max_steps=0, init=first)
    a, b = load_cold_file(first)[0], load_cold_file(second)[0]
    assert a.config == b.config
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)


def test_total_steps_sets_the_cosine_and_the_end_of_training(tmp_path):
    by_steps = cold.ColdTrainConfig(lr=1e-3, warmup_steps=1, minutes=1e6, total_steps=100)
    # the cosine follows the step whatever the clock says: half-way at step 50, at its floor (5 %) at the end
    assert cold.learning_rate(by_steps, 50, elapsed=0.0) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert cold.learning_rate(by_steps, 50, elapsed=1e9) == cold.learning_rate(by_steps, 50, elapsed=0.0)
    assert cold.learning_rate(by_steps, 100, elapsed=0.0) == pytest.approx(1e-3 * 0.05)
    by_clock = cold.ColdTrainConfig(lr=1e-3, warmup_steps=1, minutes=10)
    assert cold.learning_rate(by_clock, 50, elapsed=300.0) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))

    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    args = parser.parse_args(["train", "--stage", "cold", "--degradation", "blur", "--out", str(tmp_path), "--tiny",
                              "--batch-size", "2", "--total-steps", "3", "--export", str(tmp_path / "b.safetensors")])
    assert args.handler(args) == 0
    assert torch.load(tmp_path / "cold-blur.pt", weights_only=True)["step"] == 3


def test_no_warm_up_starts_at_the_full_rate():
    cfg = cold.ColdTrainConfig(lr=4e-4, warmup_steps=0, total_steps=100)
    assert cold.learning_rate(cfg, 0, 0.0) == pytest.approx(4e-4)
    assert cold.learning_rate(cfg, 100, 0.0) == pytest.approx(4e-4 * 0.05)  # the cosine's floor
