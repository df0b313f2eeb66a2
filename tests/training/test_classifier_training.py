"""The scene classifier's trainer (training/classifier.py): labels of the main object, a few steps on the tiny
architecture that export a loadable file with its metrics, exact resume, and the shipped classifiers' held-out
accuracy (bars set from the measured numbers in resources/guides/MODEL_CARD.md, on fewer scenes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from studio.engine import classifier_guidance as cg
from studio.engine.classifier import NoisyClassifier, classifier_metrics, load_classifier, save_classifier
from studio.engine.model import LatentDiffusion
from studio.training import classifier as training
from studio.training.config import tiny_model_config
from studio.training.scenes import Scene, SceneObject, render_layers


def test_labels_describe_the_object_covering_most_pixels():
    scene = Scene("blue", (SceneObject("star", "red", "small", "top left"),
                           SceneObject("square", "green", "large", "bottom right")))
    _, alphas = render_layers(scene)
    assert training.main_object(scene, alphas) == 1
    labels = training.scene_labels(scene, alphas)
    names = dict(training.HEADS)
    assert [names[g][i] for (g, _), i in zip(training.HEADS, labels)] == [
        "square", "green", "large", "bottom right", "blue", "square+green", "green+bottom right"]
    # a cache written before the joint heads (or before the second) gets the same joint columns
    for columns in (5, 6):
        assert training.with_joint_labels(torch.tensor([labels[:columns]])).tolist() == [labels]


def test_the_joint_heads_a_run_trains(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LatentDiffusion(tiny_model_config())
    training.train(model, tmp_path, clean=False, steps=1, batch=8, lr=1e-3, scenes=32, held_out=16,
                   export=tmp_path / "c.safetensors", joint=("colour+position",), log=lambda s: None)
    heads = dict(load_classifier(tmp_path / "c.safetensors").config.heads)
    assert "colour+position" in heads and "shape+colour" not in heads
    assert len(heads["colour+position"]) == len(heads["colour"]) * len(heads["position"])
    assert heads["colour+position"][1] == f"{heads['colour'][0]}+{heads['position'][1]}"
    with pytest.raises(ValueError, match="no joint head size"):
        training.trained_heads(False, ("size+shape",))


@pytest.mark.parametrize("clean", [False, True])
def test_a_few_steps_export_a_loadable_classifier_and_resume(tmp_path, clean):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LatentDiffusion(tiny_model_config())
    kwargs = dict(clean=clean, batch=8, lr=1e-3, scenes=32, held_out=16, log=lambda s: None)
    metrics = training.train(model, tmp_path, steps=2, export=tmp_path / "c.safetensors", **kwargs)
    loaded = load_classifier(tmp_path / "c.safetensors")
    assert loaded.config.clean == clean and loaded.config.heads == training.trained_heads(clean)
    # the shipped recipes' joint heads: shape+colour on the clean classifier, colour+position on the noise-aware one
    assert ("shape+colour" in loaded.heads) == clean and ("colour+position" in loaded.heads) == (not clean)
    assert classifier_metrics(tmp_path / "c.safetensors")["steps"] == 2 == metrics["steps"]
    keys = set(metrics["accuracy"])
    assert keys == ({"clean"} if clean else {f"t={t}" for t in training.EVAL_LEVELS} | {"uniform t"})
    resumed = training.train(model, tmp_path, steps=3, export=None, **kwargs)  # continues at step 2
    assert resumed["steps"] == 3


def test_a_run_can_start_from_an_exported_classifier(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LatentDiffusion(tiny_model_config())
    kwargs = dict(batch=8, lr=1e-3, scenes=32, held_out=16, log=lambda s: None)
    training.train(model, tmp_path / "a", clean=False, steps=2, export=tmp_path / "a.safetensors", **kwargs)
    first = load_classifier(tmp_path / "a.safetensors")
    # zero steps from the file: the export is the file's weights (fp16 round trip), not a fresh network's
    training.train(model, tmp_path / "b", clean=False, steps=0, export=tmp_path / "b.safetensors",
                   init=tmp_path / "a.safetensors", **kwargs)
    again = load_classifier(tmp_path / "b.safetensors")
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    # a file without the joint head starts a run with it: the shared weights load, the joint head is fresh
    older = dataclasses.replace(first.config, heads=training.SINGLE_HEADS, clean=True)
    torch.manual_seed(1)
    save_classifier(NoisyClassifier(older), tmp_path / "older.safetensors")
    training.train(model, tmp_path / "e", clean=True, steps=0, export=tmp_path / "e.safetensors",
                   init=tmp_path / "older.safetensors", **kwargs)
    grown, before = load_classifier(tmp_path / "e.safetensors"), load_classifier(tmp_path / "older.safetensors")
    assert grown.config.heads == training.trained_heads(True)
    assert torch.equal(grown.stem.weight, before.stem.weight) and "shape+colour" in grown.heads
    # a clean classifier cannot start a noise-aware run
    training.train(model, tmp_path / "c", clean=True, steps=1, export=tmp_path / "c.safetensors", **kwargs)
    with pytest.raises(ValueError, match="other settings"):
        training.train(model, tmp_path / "d", clean=False, steps=1, export=None, init=tmp_path / "c.safetensors",
                       **kwargs)


def _held_out(n: int):
    from studio.engine import load_model

    model = load_model("default", torch.device("cpu"), torch.float32)
    latents, labels = training.build_cache(model, n, training.HELD_OUT_SEED + 1, log=lambda s: None)
    return model, latents, labels


@pytest.mark.skipif(not cg.classifier_path(False).exists(), reason="the scene classifier is not trained")
def test_the_shipped_classifiers_read_held_out_latents():
    torch.set_num_threads(1)
    model, latents, labels = _held_out(256)
    noisy = load_classifier(cg.classifier_path(False))
    acc = training.accuracy(noisy, latents, labels, model.schedule.alphas_cumprod, clean=False, levels=(0, 500))
    # measured on 2,000 held-out scenes (MODEL_CARD.md): t = 0 shape 93.5 %, colour 97.4 %, position 97.8 %,
    # background 100 %, colour+position 97.8 %; t = 500 colour 87.4 %, position 95.7 %, colour+position 86.2 %
    assert acc["t=0"]["shape"] >= 0.84 and acc["t=0"]["background"] >= 0.97, acc
    assert acc["t=0"]["colour"] >= 0.92 and acc["t=0"]["position"] >= 0.92, acc
    assert acc["t=0"]["colour+position"] >= 0.9, acc
    assert acc["t=500"]["colour"] >= 0.78 and acc["t=500"]["position"] >= 0.88, acc
    assert acc["t=500"]["colour+position"] >= 0.76, acc
    clean = load_classifier(cg.classifier_path(True))
    acc = training.accuracy(clean, latents, labels, model.schedule.alphas_cumprod, clean=True)
    # measured on 2,000 held-out scenes: shape 98.2 %, colour 98.6 %, position 99.1 %, background 100 %,
    # shape+colour 97.3 % (the weights before issue #15's longer run: shape 85.5 %, colour 96.7 %)
    assert acc["clean"]["shape"] >= 0.93 and acc["clean"]["background"] >= 0.97, acc
    assert acc["clean"]["colour"] >= 0.94 and acc["clean"]["position"] >= 0.95, acc
    assert acc["clean"]["shape+colour"] >= 0.9, acc
    assert np.isfinite(list(acc["clean"].values())).all()
