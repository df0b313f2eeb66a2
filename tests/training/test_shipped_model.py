"""The shipped model (resources/model/studio-shapes.safetensors): a regression test, not the targets.

The accuracy bars are the model's measured accuracy on these prompts minus a margin (see MODEL_CARD.md); raise
them whenever a better model is shipped. The full evaluation is `studio evaluate --model default`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.engine import loading
from studio.engine.loading import ModelLoadError, load_model, load_studio_file, shipped_model_path
from studio.training.evaluate import EVAL_SEED, engine_for, generate, text_to_image_cases
from studio.training.data import to_unit
from studio.training.evaluate import binding_cases, binding_scores, busy_inpaint_cases, busy_inpaint_scores
from studio.training.evaluate import grammar_cases, grammar_scores, inpaint_cases, inpaint_scores, text_to_image_scores
from studio.training.scenes import COLOURS

GOLDEN = Path(__file__).parent / "data" / "golden_shapes.png"
GOLDEN_PROMPT = "a large red circle in the center, on a blue background"
GOLDEN_SEED = 0
PROMPTS, INPAINT_CASES = 32, 16
# Measured with the shipped weights (UNet step 39,848, decoder step 43,747; 25 DDIM steps, the model's default CFG)
# on these cases: background 32/32, colour 32, shape 31, size 32, position 32; inpainting 16/16 objects in the hole
# (the same again with the distilled text encoder of issue #20); with the text encoder distilled further (step
# 1,435 against the original teacher, MODEL_CARD.md "Fourth attempt"): 32, 31, 30, 31, 31 of 32, inpainting 16/16;
# the same again with the fifth attempt's encoder (step 786, MODEL_CARD.md "Fifth attempt"), and with the prompt
# reader of session 18 (32, 32, 31, 32, 32; inpainting 16/16).
# Bar = measured minus 3 of 32 prompts (2 of 16 inpaintings).
BARS = {"background": 0.9, "colour": 0.87, "shape": 0.84, "size": 0.87, "position": 0.87}
INPAINT_BAR = 0.87
# Issue #20: the first 40 held-out-grammar prompts of `studio evaluate` (far from their targets; a regression guard).
# Measured with the shipped weights (text encoder distilled by `studio train --stage text`, step 2,674; UNet and VAE
# unchanged): background 35/40, colour 28, shape 27, size 29, position 35, 4 empty pictures (before the
# distillation: 33, 26, 22, 23, 32, 8 empty); distilled further (step 1,435 against the original teacher): 36, 30,
# 27, 30, 35, 4 empty; fifth attempt (step 786, batch 48, high t and two-object scenes weighted up): 38, 35, 31,
# 30, 37, 2 empty. With the prompt reader (session 18, MODEL_CARD.md): 40 of 40 on every attribute, 0 empty; the
# first 20 binding prompts 20 of 20 both right; the first 12 busy inpaintings 7 of 12 (its target is far above).
# Session 19's reader (free layouts): 40 of 40, 20 of 20, busy 10 of 12; read clause by clause (session 20): busy
# 12 of 12, the rest unchanged; session 20's reader (width 96, clause by clause): 40 of 40, 20 of 20, busy 12 of 12.
# Bar = measured minus 3 of 40 (rounded down a hair); empty: measured plus 3; binding and busy: minus 2.
GRAMMAR_PROMPTS = 40
GRAMMAR_BARS = {"background": 0.92, "colour": 0.92, "shape": 0.92, "size": 0.92, "position": 0.92}
GRAMMAR_EMPTY_MAX = 3
BINDING_PROMPTS, BINDING_BAR = 20, 0.9
BUSY_CASES, BUSY_BAR = 12, 10 / 12


@pytest.fixture(scope="module")
def model():
    return load_model("default", torch.device("cpu"), torch.float32)


def test_shipped_model_is_small_and_complete(model):
    assert shipped_model_path().stat().st_size <= 20 * 2**20
    config = model.config
    assert config.name == "studio-shapes" and config.default_size == 64
    assert model.is_inpainting and model.downsample_factor == 4
    assert config.latent_rgb is not None and len(config.latent_rgb_hidden) == model.latent_channels + 1


def test_cheap_preview_shows_the_palette_colours(model):
    # the live preview and the timeline's x̂0 strip use this map, not the VAE: a flat background must come out
    # close to its own colour, not as another palette colour
    images = np.stack([np.full((64, 64, 3), COLOURS[name], np.uint8) for name in COLOURS])
    with torch.no_grad():
        latents = model.vae.encode(to_unit(images)).mode() * model.config.vae.scaling_factor
    palette = np.array(list(COLOURS.values()), np.float32)
    for latent, truth in zip(latents, palette):
        centre = model.preview.to_rgb(latent)[4:12, 4:12].reshape(-1, 3).astype(np.float32).mean(0)
        assert np.linalg.norm(centre - truth) < 50, (centre, truth)  # linear fit: up to 120 (green as grey)
        nearest = np.linalg.norm(palette - centre, axis=1).argmin()
        assert np.array_equal(palette[nearest], truth)


def test_accuracy_on_held_out_prompts(model):
    scores, _ = text_to_image_scores(model, text_to_image_cases(PROMPTS, EVAL_SEED + 500), cfg=model.config.default_cfg)
    for attribute, bar in BARS.items():
        assert scores[attribute] >= bar, f"{attribute}: {scores[attribute]:.2f} < {bar:.2f} ({scores})"


def test_inpainting_puts_the_object_in_the_hole_and_keeps_the_rest(model):
    scores, _ = inpaint_scores(model, inpaint_cases(INPAINT_CASES, EVAL_SEED + 600), cfg=model.config.default_cfg)
    assert scores["unmasked_unchanged"] == 1.0  # every pixel outside every hole, bit for bit
    assert scores["object_in_mask"] >= INPAINT_BAR, scores


def test_held_out_grammar_does_not_regress(model):
    cases = grammar_cases(100)[:GRAMMAR_PROMPTS]
    scores, _ = grammar_scores(model, cases, cfg=model.config.default_cfg)
    for attribute, bar in GRAMMAR_BARS.items():
        assert scores[attribute] >= bar, f"{attribute}: {scores[attribute]:.2f} < {bar:.2f} ({scores})"
    assert scores["empty"] <= GRAMMAR_EMPTY_MAX, scores


def test_two_objects_keep_their_own_attributes(model):
    scores, _ = binding_scores(model, binding_cases(100)[:BINDING_PROMPTS], cfg=model.config.default_cfg)
    assert scores["both_right"] >= BINDING_BAR and scores["empty"] == 0, scores


def test_an_object_added_to_a_busy_scene_leaves_the_others_alone(model):
    scores, _ = busy_inpaint_scores(model, busy_inpaint_cases(60)[:BUSY_CASES], cfg=model.config.default_cfg)
    assert scores["unmasked_unchanged"] == 1.0 and scores["others_kept"] == 1.0, scores
    assert scores["object_in_mask"] >= BUSY_BAR - 1e-9, scores


def test_golden_image(model):
    # the weights' own picture: the text encoder reads the prompt as typed (the prompt reader has its own tests)
    image = generate(engine_for(model), GOLDEN_PROMPT, GOLDEN_SEED, cfg=model.config.default_cfg, steps=25,
                     read_prompt=False)
    golden = np.asarray(Image.open(GOLDEN).convert("RGB"))
    diff = np.abs(image.astype(np.int16) - golden.astype(np.int16))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, f"mean {diff.mean():.2f}, max {diff.max()}"


def test_truncated_file_gives_a_clear_message(tmp_path):
    copy = tmp_path / "studio-shapes.safetensors"
    data = shipped_model_path().read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="studio-shapes.safetensors"):
        load_studio_file(copy, torch.device("cpu"), torch.float32)


def test_garbage_header_gives_a_clear_message(tmp_path):
    copy = tmp_path / "studio-shapes.safetensors"
    shutil.copy(shipped_model_path(), copy)
    with open(copy, "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 16)
    with pytest.raises(ModelLoadError, match="studio-shapes.safetensors"):
        load_studio_file(copy, torch.device("cpu"), torch.float32)


def test_missing_file_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "shipped_model_path", lambda: tmp_path / "model" / "studio-shapes.safetensors")
    with pytest.raises(ModelLoadError, match="shipped model is missing"):
        load_model("default", torch.device("cpu"), torch.float32)
