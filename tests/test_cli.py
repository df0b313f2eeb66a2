"""The command line: outputs, PNG metadata, branching, inversion, and one clear line for each bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.engine.images import parse_parameters, read_parameters
from studio.engine.run import Run

TINY = ["--model", "tiny-random", "--steps", "4", "--quiet"]


def generate(*extra):
    return main(["generate", *TINY, *extra])


def test_generate_writes_a_png_with_a1111_parameters(tmp_path):
    out = tmp_path / "out.png"
    assert generate("--prompt", "a red circle", "--negative", "blurry", "--seed", "5", "--cfg", "4",
                    "--out", str(out), "--timeline", str(tmp_path / "t.gif")) == 0
    image = Image.open(out)
    assert image.size == (64, 64)  # tiny-random's default size
    text = read_parameters(out)
    assert text.splitlines()[0] == "a red circle"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 4, Sampler: DDIM, CFG scale: 4, Seed: 5, Size: 64x64, Model: tiny-random, Eta: 0" in text
    settings = parse_parameters(text)
    assert settings["prompt"] == "a red circle" and settings["negative_prompt"] == "blurry"
    assert (settings["steps"], settings["seed"], settings["cfg"], settings["width"]) == (4, 5, 4.0, 64)
    gif = Image.open(tmp_path / "t.gif")
    assert gif.n_frames == 5  # one preview per step, then the result


def test_same_seed_same_bytes(tmp_path):
    for name in ("a.png", "b.png"):
        assert generate("--prompt", "x", "--seed", "3", "--out", str(tmp_path / name)) == 0
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)


def test_prompts_file_writes_numbered_images_with_consecutive_seeds(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n", encoding="utf-8")
    assert generate("--prompts-file", str(prompts), "--seed", "10", "--out", str(tmp_path / "batch")) == 0
    files = sorted(p.name for p in (tmp_path / "batch").iterdir())
    assert files == ["0000.png", "0001.png"]
    assert parse_parameters(read_parameters(tmp_path / "batch" / "0001.png"))["seed"] == 11


def test_img2img_inpaint_and_branch(tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(init)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    assert generate("--init", str(init), "--strength", "0.5", "--out", str(tmp_path / "i2i.png")) == 0
    assert generate("--init", str(init), "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "inp.png"),
                    "--save-run", str(tmp_path / "run.safetensors")) == 0
    result = np.asarray(Image.open(tmp_path / "inp.png"))
    assert np.all(result[:8] == 200)  # far from the mask: the original pixels
    assert main(["generate", "--quiet", "--branch", str(tmp_path / "run.safetensors"), "--from-step", "2",
                 "--out", str(tmp_path / "same.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), result)
    assert main(["generate", "--quiet", "--branch", str(tmp_path / "run.safetensors"), "--from-step", "2",
                 "--prompt", "a cat", "--out", str(tmp_path / "edit.png")]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "edit.png")), result)


def test_invert_then_branch(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    run_path = tmp_path / "inv.safetensors"
    assert main(["invert", str(image), "--prompt", "noise", "--model", "tiny-random", "--steps", "6", "--quiet",
                 "--save-run", str(run_path), "--out", str(tmp_path / "recon.png")]) == 0
    run = Run.load(run_path)
    assert run.kind == "invert" and len(run.timeline) == 6
    assert main(["generate", "--quiet", "--branch", str(run_path), "--from-step", "3", "--prompt", "a star",
                 "--out", str(tmp_path / "edited.png")]) == 0


def test_invert_refine_option(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    common = ["invert", str(image), "--model", "tiny-random", "--steps", "4", "--quiet"]
    assert main([*common, "--refine", "0", "--save-run", str(tmp_path / "plain.safetensors")]) == 0
    assert main([*common, "--refine", "2", "--save-run", str(tmp_path / "refined.safetensors")]) == 0
    plain, refined = Run.load(tmp_path / "plain.safetensors"), Run.load(tmp_path / "refined.safetensors")
    assert not torch.equal(plain.timeline[0].x_t, refined.timeline[0].x_t)  # another x_T
    assert main([*common, "--refine", "-1", "--save-run", str(tmp_path / "x.safetensors")]) == 1
    assert "--refine must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "plms"], "unknown sampler"),
        (["--steps", "-3"], "steps must be between 1 and 1000"),
        (["--width", "65", "--height", "64"], "multiples of"),
        (["--init", "/nonexistent.png"], "image file not found"),
        (["--model", "/nonexistent/model.safetensors"], "model not found"),
        (["--from-step", "2"], "--from-step needs --branch"),
        (["--cfg", "nan"], "CFG scale"),
    ],
)
def test_bad_input_is_one_clear_line_and_no_file(tmp_path, capsys, args, message):
    out = tmp_path / "never.png"
    assert generate(*args, "--out", str(out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("studio: error:") and message in err[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_empty_mask_and_corrupt_files_are_clear_errors(tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "init.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "empty.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert generate("--init", str(tmp_path / "init.png"), "--mask", str(tmp_path / "empty.png"),
                    "--out", str(tmp_path / "o.png")) == 1
    assert "mask is empty" in capsys.readouterr().err
    assert generate("--init", str(tmp_path / "broken.png"), "--out", str(tmp_path / "o.png")) == 1
    assert "cannot read image" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    assert main(["generate", "--quiet", "--branch", str(tmp_path / "bad.safetensors"), "--from-step", "1",
                 "--out", str(tmp_path / "o.png")]) == 1
    assert "run file" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_console_entry_point_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "studio", "generate", "--model", "tiny-random", "--steps", "0",
                             "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "studio: error: steps must be between 1 and 1000, got 0"


def test_cfg_defaults_to_the_models_own(tmp_path):
    import dataclasses

    import torch

    from studio.engine.loading import load_model, save_studio_file

    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    model.config = dataclasses.replace(model.config, default_cfg=2.5)
    path = tmp_path / "low-cfg.safetensors"
    save_studio_file(model, path)
    common = ["generate", "--model", str(path), "--steps", "2", "--quiet", "--prompt", "x"]
    assert main([*common, "--out", str(tmp_path / "a.png")]) == 0
    assert parse_parameters(read_parameters(tmp_path / "a.png"))["cfg"] == 2.5
    assert main([*common, "--cfg", "6", "--out", str(tmp_path / "b.png")]) == 0
    assert parse_parameters(read_parameters(tmp_path / "b.png"))["cfg"] == 6.0
    assert generate("--prompt", "x", "--out", str(tmp_path / "c.png")) == 0  # SD's customary 7.5 otherwise
    assert parse_parameters(read_parameters(tmp_path / "c.png"))["cfg"] == 7.5


def test_progress_in_a_log_is_plain_lines_and_the_summary_names_every_file(tmp_path):
    """stderr is a pipe here, as in a log: plain lines (no carriage returns), and 'wrote' names the GIF and run too."""
    import subprocess
    import sys

    out, gif, run = tmp_path / "x.png", tmp_path / "t.gif", tmp_path / "r.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "studio", "generate", "--model", "tiny-random", "--prompt", "t", "--steps", "20",
         "--width", "64", "--height", "64", "--out", str(out), "--timeline", str(gif), "--save-run", str(run)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == [f"{n}/20" for n in range(2, 21, 2)]
    assert lines[-1] == f"wrote {out}, timeline {gif}, run {run}"


def test_a_bug_is_an_internal_error_with_the_log_path(tmp_path, monkeypatch, capsys):
    from studio import cli

    def explode(args):
        raise KeyError("a bug")

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "generate", explode)
    code = cli.main(["generate", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "internal error" in err and str(tmp_path / "diffusion-studio" / "studio.log") in err
    assert "KeyError: 'a bug'" in (tmp_path / "diffusion-studio" / "studio.log").read_text()


def test_the_built_in_model_says_how_it_read_the_prompt(tmp_path, capsys):
    prompt = "Draw a tiny scarlet disc in the upper-left corner, backdrop: grey"
    common = ["generate", "--steps", "2", "--prompt", prompt]
    assert main([*common, "--out", str(tmp_path / "read.png")]) == 0
    assert "read as: a small red circle at the top left on a gray background" in capsys.readouterr().err
    assert main([*common, "--literal-prompt", "--out", str(tmp_path / "literal.png")]) == 0
    assert "read as" not in capsys.readouterr().err
    read, literal = (np.asarray(Image.open(tmp_path / n)) for n in ("read.png", "literal.png"))
    assert not np.array_equal(read, literal)  # the text encoder read different texts
    settings = parse_parameters(read_parameters(tmp_path / "read.png"))
    assert settings["prompt"].startswith("Draw a tiny") and settings["read_prompt"] is True
    text = read_parameters(tmp_path / "read.png")
    assert 'Read as: "a small red circle at the top left on a gray background"' in text
    assert parse_parameters(read_parameters(tmp_path / "literal.png"))["read_prompt"] is False  # "Read prompt: off"
