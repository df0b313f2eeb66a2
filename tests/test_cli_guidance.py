"""`studio generate --guide …` (issue #14): guided runs from the command line, in batches and saved runs, branches
that switch guidance off or change its strength, the PNG `parameters` round trip, and one clear line per bad value.
tiny-random, 64 px, 3 steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.engine import DEFAULT_STRENGTH, GenerationRequest, guide_pictures_note
from studio.engine.images import parse_parameters, read_parameters
from studio.engine.run import Run

TINY = ["--model", "tiny-random", "--steps", "3", "--width", "64", "--height", "64", "--quiet"]


def generate(*extra) -> int:
    return main(["generate", *TINY, *extra])


@pytest.fixture()
def pictures(tmp_path):
    hint = np.zeros((64, 64, 4), np.uint8)
    hint[:32, :32] = (0, 200, 0, 255)
    Image.fromarray(hint, "RGBA").save(tmp_path / "hint.png")
    Image.fromarray(hint[..., :3]).save(tmp_path / "opaque.png")  # RGB: no alpha
    reference = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(reference).save(tmp_path / "ref.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "init.png")
    keep = np.zeros((64, 64), np.uint8)
    keep[32:] = 255
    Image.fromarray(keep).save(tmp_path / "keep.png")
    return tmp_path


def test_guided_run_writes_its_guidance_into_the_png_and_reads_it_back(pictures):
    p = pictures
    plain, guided = p / "plain.png", p / "guided.png"
    assert generate("--prompt", "a red circle", "--seed", "2", "--out", str(plain)) == 0
    assert generate("--prompt", "a red circle", "--seed", "2", "--guide", f"colour:{p / 'hint.png'}:4",
                    "--guide", f"reference:{p / 'ref.png'}:0.5:palette", "--guide-mode", "both",
                    "--backward-steps", "2", "--recurrence", "2", "--guide-steps", "0.5", "--out", str(guided)) == 0
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(guided)))
    text = read_parameters(guided)
    assert ('Guidance: "colour 4, reference 0.5 palette", Guidance mode: both, Guided steps: 0.5, '
            "Backward steps: 2, Recurrence: 2") in text
    assert "Guidance" not in read_parameters(plain)
    settings = parse_parameters(text)
    assert settings["guides"] == [{"kind": "colour", "strength": 4.0, "variant": "layout"},
                                  {"kind": "reference", "strength": 0.5, "variant": "palette"}]
    assert (settings["guide_mode"], settings["guide_steps"], settings["backward_steps"], settings["recurrence"]) == (
        "both", 0.5, 2, 2)
    request = GenerationRequest.from_settings({k: v for k, v in settings.items() if k != "lineage"})
    assert [(g.kind, g.strength, g.variant, g.image) for g in request.guides] == [
        ("colour", 4.0, "layout", None), ("reference", 0.5, "palette", None)]
    assert "colour hint, reference picture" in guide_pictures_note(settings)


def test_strength_defaults_per_kind_and_keep_needs_an_input(pictures, capsys):
    p = pictures
    assert generate("--guide", f"colour:{p / 'hint.png'}", "--guide", f"reference:{p / 'ref.png'}",
                    "--save-run", str(p / "run.safetensors"), "--out", str(p / "o.png")) == 0
    guides = Run.load(p / "run.safetensors").request.guides
    assert [(g.kind, g.strength, g.variant) for g in guides] == [
        ("colour", DEFAULT_STRENGTH["colour"], "layout"), ("reference", DEFAULT_STRENGTH["reference"], "layout")]
    assert generate("--guide", f"keep:{p / 'keep.png'}", "--out", str(p / "k.png")) == 1
    assert "keep-region guide" in capsys.readouterr().err
    assert generate("--init", str(p / "init.png"), "--strength", "0.6", "--guide", f"keep:{p / 'keep.png'}:3",
                    "--out", str(p / "k.png")) == 0


def test_prompts_file_batch_is_guided(pictures):
    p = pictures
    (p / "prompts.txt").write_text("a red circle\na blue square\n", encoding="utf-8")
    assert generate("--prompts-file", str(p / "prompts.txt"), "--guide", f"colour:{p / 'hint.png'}:3",
                    "--out", str(p / "batch")) == 0
    for name in ("0000.png", "0001.png"):
        assert 'Guidance: "colour 3"' in read_parameters(p / "batch" / name)


def test_branch_switches_guidance_off_or_changes_its_strength(pictures):
    p = pictures
    run_path = p / "run.safetensors"
    assert generate("--seed", "4", "--guide", f"colour:{p / 'hint.png'}:5", "--guide-mode", "backward",
                    "--save-run", str(run_path), "--out", str(p / "parent.png")) == 0
    parent = Run.load(run_path)
    assert parent.request.guides[0].image.shape == (64, 64, 4) and parent.timeline[0].loss is not None
    branch = ["generate", "--quiet", "--branch", str(run_path), "--from-step", "1"]
    assert main([*branch, "--out", str(p / "same.png"), "--save-run", str(p / "same.safetensors")]) == 0
    assert np.array_equal(np.asarray(Image.open(p / "same.png")), np.asarray(Image.open(p / "parent.png")))
    assert main([*branch, "--no-guides", "--out", str(p / "off.png"), "--save-run", str(p / "off.safetensors")]) == 0
    off = Run.load(p / "off.safetensors")
    assert off.request.guides == () and off.timeline[2].loss is None
    assert main([*branch, "--guide-strength", "0.5", "--backward-steps", "1", "--out", str(p / "weak.png"),
                 "--save-run", str(p / "weak.safetensors")]) == 0
    weak = Run.load(p / "weak.safetensors").request
    assert weak.guides[0].strength == 0.5 and weak.backward_steps == 1
    assert np.array_equal(weak.guides[0].image, parent.request.guides[0].image)  # the parent's picture, kept
    for name in ("off.png", "weak.png"):
        assert not np.array_equal(np.asarray(Image.open(p / name)), np.asarray(Image.open(p / "parent.png")))


@pytest.mark.parametrize(
    "guide_args, message",
    [
        (["--guide", "colour:{p}/missing.png"], "colour hint file not found"),
        (["--guide", "colour:{p}/opaque.png"], "no alpha channel"),
        (["--guide", "sketch:{p}/hint.png"], "unknown guide kind 'sketch'"),
        (["--guide", "colour:{p}/hint.png:abc"], "bad strength 'abc'"),
        (["--guide", "colour:{p}/hint.png:-1"], "bad strength '-1'"),
        (["--guide", "colour:{p}/hint.png:nan"], "bad strength 'nan'"),
        (["--guide", "colour:{p}/hint.png:1:palette"], "only a reference guide has a variant"),
        (["--guide", "colour"], "names no picture"),
        (["--guide", "reference:{p}/broken.png"], "cannot read image"),
        (["--guide", "colour:{p}/hint.png", "--guide-mode", "sideways"], "guidance mode must be forward"),
        (["--guide", "colour:{p}/hint.png", "--backward-steps", "0"], "backward guidance steps must be between"),
        (["--guide", "colour:{p}/hint.png", "--backward-steps", "two"], "--backward-steps must be a whole number"),
        (["--guide", "colour:{p}/hint.png", "--recurrence", "0"], "recurrence must be between 1"),
        (["--guide", "colour:{p}/hint.png", "--guide-steps", "1.5"], "guided fraction of steps"),
        (["--guide", "colour:{p}/hint.png", "--no-guides"], "contradict"),
        (["--guide-strength", "2"], "--guide-strength needs a guide"),
        (["--guide", "colour:{p}/hint.png", "--guide-strength", "-2"], "--guide-strength must be a number ≥ 0"),
    ],
)
def test_bad_guidance_input_is_one_clear_line_and_no_file(pictures, capsys, guide_args, message):
    p = pictures
    (p / "broken.png").write_bytes(b"\x89PNG not really")
    out = p / "never.png"
    args = [a.replace("{p}", str(p)) for a in guide_args]
    assert generate(*args, "--out", str(out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("studio: error:") and message in err[0], err
    assert not out.exists()
