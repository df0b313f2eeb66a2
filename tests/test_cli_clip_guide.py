"""`studio generate --guide clip:…` (issue #15): the caption syntax, its errors, `studio train --stage clip` and
`studio evaluate --clip-guidance` parsing, and a guided run end to end with the shipped scene CLIP (noisy mode,
DDIM and DDPM; 64 px, a few steps)."""

from __future__ import annotations

import pytest

from studio.cli import main
from studio.engine import DEFAULT_STRENGTH, UserError
from studio.engine.clip_guidance import clip_path
from studio.engine.images import read_parameters
from studio.guide_options import parse_guide


def test_caption_and_strength_parse():
    guide = parse_guide("clip:a red star at the top:30")
    assert guide.kind == "clip" and guide.strength == 30.0 and guide.text == "a red star at the top"
    guide = parse_guide('clip:"a big ring: blue"')  # quotes kept by the shell inside other quotes are dropped
    assert guide.text == "a big ring: blue" and guide.strength == DEFAULT_STRENGTH["clip"]
    assert parse_guide("clip:a star on the left:2.5e1").strength == 25.0


@pytest.mark.parametrize("spec, says", [
    ("clip:", "names no caption"),
    ('clip:"":3', "names no caption"),
    ("clip:a red star:-1", "bad strength"),
    ("clip:a red star:nan", "bad strength"),
    ("clips:a red star", "unknown guide kind"),
])
def test_bad_clip_guides_are_one_sentence(spec, says):
    with pytest.raises(UserError, match=says):
        parse_guide(spec)


def test_train_and_evaluate_take_the_clip_options():
    import argparse

    from studio.training.cli import add_training_commands

    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--stage", "clip", "--clean", "--out", "/tmp/x", "--minutes", "5"])
    assert args.stage == "clip" and args.clean and args.minutes == 5
    args = parser.parse_args(["evaluate", "--clip-guidance", "8", "--sweep", "3,10", "--rows", "DDIM,unguided"])
    assert args.clip_guidance == 8 and args.sweep == "3,10" and args.rows == "DDIM,unguided"
    assert main(["evaluate", "--clip-guidance", "0"]) == 1


needs_weights = pytest.mark.skipif(not clip_path(False).exists(), reason="the scene CLIP is not trained")
BASE = ["generate", "--model", "default", "--prompt", "", "--cfg", "1", "--steps", "6", "--width", "64", "--height",
        "64", "--quiet", "--seed", "5"]


@needs_weights
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_clip_guided_run_from_the_command_line(tmp_path, sampler):
    out = tmp_path / "g.png"
    assert main([*BASE, "--sampler", sampler, "--guide", "clip:a red star, at the top left:20",
                 "--guide-mode", "noisy", "--out", str(out)]) == 0
    text = read_parameters(out)
    assert "clip 20" in text and "noisy" in text and "a red star, at the top left" in text
