"""`studio generate --guide classifier:…` (issue #15): the label syntax, its errors, and a guided run end to end with
the shipped scene classifier (noisy mode, DDIM and DDPM; 64 px, a few steps)."""

from __future__ import annotations

import pytest

from studio.cli import main
from studio.engine import DEFAULT_STRENGTH, UserError
from studio.engine.classifier_guidance import classifier_path
from studio.engine.images import read_parameters
from studio.guide_options import parse_guide


def test_labels_and_strength_parse():
    guide = parse_guide("classifier:shape=star,colour=red:3.5")
    assert guide.kind == "classifier" and guide.strength == 3.5
    assert dict(guide.labels) == {"shape": "star", "colour": "red"}
    guide = parse_guide("classifier:position=top left, Color=Green")
    assert dict(guide.labels) == {"position": "top left", "colour": "green"}
    assert guide.strength == DEFAULT_STRENGTH["classifier"]


@pytest.mark.parametrize("spec, says", [
    ("classifier:", "names no label"),
    ("classifier:star", "GROUP=VALUE"),
    ("classifier:shape=", "GROUP=VALUE"),
    ("classifier:shape=star,shape=heart", "two shapes"),
    ("classifier:shape=star:lots", "bad strength"),
    ("classifier:shape=star:-1", "bad strength"),
    ("smell:shape=star", "unknown guide kind"),
])
def test_bad_classifier_guides_are_one_sentence(spec, says):
    with pytest.raises(UserError, match=says):
        parse_guide(spec)


needs_weights = pytest.mark.skipif(not classifier_path(False).exists(), reason="the scene classifier is not trained")
BASE = ["generate", "--model", "default", "--prompt", "", "--cfg", "1", "--steps", "6", "--width", "64", "--height",
        "64", "--quiet", "--seed", "5"]


@needs_weights
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_classifier_guided_run_from_the_command_line(tmp_path, sampler):
    out = tmp_path / "g.png"
    assert main([*BASE, "--sampler", sampler, "--guide", "classifier:shape=star,colour=red,position=top left:2",
                 "--guide-mode", "noisy", "--out", str(out)]) == 0
    text = read_parameters(out)
    assert "classifier" in text and "noisy" in text and "top left" in text


@needs_weights
def test_an_unknown_label_is_one_line(tmp_path, capsys):
    assert main([*BASE, "--guide", "classifier:shape=hexagon", "--guide-mode", "noisy",
                 "--out", str(tmp_path / "x.png")]) == 1
    assert "knows no shape 'hexagon'" in capsys.readouterr().err


def test_a_classifier_guide_without_strength_takes_the_one_measured_for_its_mode():
    from studio.cli import build_parser
    from studio.engine import GenerationRequest
    from studio.guide_options import guidance_changes

    def strength(*options):
        args = build_parser().parse_args(["generate", "--out", "x.png", "--guide", "classifier:shape=star", *options])
        (guide,) = guidance_changes(args, GenerationRequest())["guides"]
        return guide.strength

    assert strength() == 3.0  # the default mode, backward: universal guidance with the clean classifier
    assert strength("--guide-mode", "noisy") == DEFAULT_STRENGTH["classifier"] == 10.0
    assert strength("--guide-mode", "noisy", "--recurrence", "3") == 20.0
    args = build_parser().parse_args(["generate", "--out", "x.png", "--guide", "classifier:shape=star:4",
                                      "--guide-mode", "noisy"])
    assert guidance_changes(args, GenerationRequest())["guides"][0].strength == 4.0
