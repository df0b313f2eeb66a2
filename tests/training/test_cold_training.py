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


def test_cold_stage_needs_a_degradation(tmp_path):
    from studio.engine import UserError

    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    args = parser.parse_args(["train", "--stage", "cold", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="needs --degradation"):
        args.handler(args)
