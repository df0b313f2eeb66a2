"""Outputs of the command line (#17 items 2, 4, 8, 13): checked before any work, written atomically under names no
other writer shares, never lost because a side file failed; branches that cannot change the size say so."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio import cli
from studio.engine import files
from studio.engine.images import parse_parameters, read_parameters, save_png
from studio.engine.pipeline import Engine
from studio.engine.run import Run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["generate", "--model", "tiny-random", "--prompt", "t", "--steps", "2", "--width", "16", "--height", "16",
        "--quiet"]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("studio: error: "), lines
    return lines[0]


@pytest.fixture
def no_generation(monkeypatch):
    """Fails the test if a generation starts: every output must be checked before."""
    monkeypatch.setattr(Engine, "generate", lambda *a, **k: pytest.fail("generation started"))
    monkeypatch.setattr(Engine, "invert", lambda *a, **k: pytest.fail("inversion started"))


# -- 4: every output path before the work -------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--save-run", "/missing/dir/r.safetensors"], "cannot write run file /missing/dir/r.safetensors: the folder "
                                                   "/missing/dir does not exist"),
    (["--timeline", "/missing/t.gif"], "cannot write timeline /missing/t.gif: the folder /missing does not exist"),
    (["--timeline", "{tmp}/t.png"], "--timeline must be a .gif file"),
    (["--out", "{tmp}/folder.png"], "it is an existing folder"),
])
def test_bad_output_paths_are_refused_before_generating(tmp_path, capsys, no_generation, extra, message):
    (tmp_path / "folder.png").mkdir()
    extra = [e.format(tmp=tmp_path) for e in extra]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "o.png")]
    assert cli.main([*TINY, *out, *extra]) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o.png").exists()


def test_prompts_file_into_an_existing_file_is_refused_before_generating(tmp_path, capsys, no_generation):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    (tmp_path / "existing").write_text("x")
    assert cli.main([*TINY, "--prompts-file", str(prompts), "--out", str(tmp_path / "existing")]) == 1
    assert "--out is a folder, but" in one_error_line(capsys)


def test_invert_checks_its_run_file_before_inverting(tmp_path, capsys, no_generation):
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    assert cli.main(["invert", str(image), "--model", "tiny-random", "--steps", "2", "--quiet",
                     "--save-run", "/missing/x.safetensors"]) == 1
    assert "cannot write run file /missing/x.safetensors" in one_error_line(capsys)


def test_a_failing_side_file_never_loses_the_picture(tmp_path, capsys, monkeypatch):
    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Run, "save", disk_full)
    out, run = tmp_path / "o.png", tmp_path / "r.safetensors"
    assert cli.main([*TINY, "--out", str(out), "--save-run", str(run)]) == 1
    line = one_error_line(capsys)
    assert f"wrote {out}, but could not write the run file" in line and "No space left" in line
    assert Image.open(out).size == (16, 16)


def test_an_undecodable_prompt_byte_is_read_as_latin1_and_the_png_written(tmp_path):
    """`--prompt $'caf\\xe9'`: the picture used to be lost to a UnicodeEncodeError writing the PNG chunk."""
    out = tmp_path / "cafe.png"
    argv = [os.fsencode(a) for a in ["-m", "studio", *TINY, "--out", str(out)]]
    argv[argv.index(b"t")] = b"caf\xe9"
    result = subprocess.run([os.fsencode(sys.executable), *argv], capture_output=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert read_parameters(out).splitlines()[0] == "café"


def test_save_png_never_fails_on_text(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    save_png(image, tmp_path / "a.png", "snow ☃ and caf\udce9")  # outside Latin-1 (iTXt), and a lone surrogate
    assert read_parameters(tmp_path / "a.png") == "snow ☃ and caf?"


# -- 2, 13: unique temporary files, stale ones cleaned -------------------------------------------------------------

def test_two_writers_of_one_output_never_share_a_temporary_file(tmp_path):
    """The second writer starts while the first is half-way: both finish, the output is one whole picture."""
    path = tmp_path / "same.png"
    red, blue = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    temporaries = []

    def first(tmp: Path) -> None:
        temporaries.append(tmp)
        Image.fromarray(red).save(tmp, format="PNG")
        files.atomic_write(path, lambda other: temporaries.append(other) or
                           Image.fromarray(blue).save(other, format="PNG"))  # the second run, mid-write

    files.atomic_write(path, first)
    assert temporaries[0] != temporaries[1]
    assert np.array_equal(np.asarray(Image.open(path)), red)  # the last to finish wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.png"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    out = tmp_path / "o.png"
    dead = tmp_path / f".o.png.{_dead_pid()}.0badc0de.partial"
    alive = tmp_path / f".o.png.{os.getppid()}.0badc0de.partial"  # a running process: maybe writing now
    legacy = tmp_path / "o.png.partial"  # the old fixed name, left by a kill an hour ago
    for p in (dead, alive, legacy):
        p.write_bytes(b"half a picture")
    old = time.time() - 2 * files.LEGACY_STALE_SECONDS
    os.utime(legacy, (old, old))
    save_png(np.zeros((4, 4, 3), np.uint8), out)
    assert out.exists() and alive.exists()
    assert not dead.exists() and not legacy.exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(files.FileProblem, match="cannot write image .*: the disk is full"):
        files.atomic_write(tmp_path / "x.png", fail, "image")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("grow, ok", [("128", True), ("129", False), ("100000", False)])
def test_grow_is_capped_as_in_the_app(tmp_path, capsys, grow, ok):
    init, mask = tmp_path / "i.png", tmp_path / "m.png"
    Image.fromarray(np.full((16, 16, 3), 99, np.uint8)).save(init)
    Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), 6)).save(mask)
    code = cli.main([*TINY, "--init", str(init), "--mask", str(mask), "--grow", grow, "--out", str(tmp_path / "o.png")])
    assert code == (0 if ok else 1)
    if not ok:
        assert "grow must be a whole number of pixels from 0 to 128" in one_error_line(capsys)


# -- 8: what a branch cannot change -------------------------------------------------------------------------------

@pytest.fixture
def saved_run(tmp_path):
    path = tmp_path / "run.safetensors"
    assert cli.main([*TINY, "--steps", "3", "--out", str(tmp_path / "a.png"), "--save-run", str(path)]) == 0
    return path


def test_a_branch_cannot_change_the_size(tmp_path, capsys, saved_run):
    out = tmp_path / "b.png"
    assert cli.main(["generate", "--quiet", "--branch", str(saved_run), "--from-step", "1", "--width", "32",
                     "--height", "32", "--out", str(out)]) == 1
    assert "a branch keeps its run's size (16x16); it cannot change to 32x32" in one_error_line(capsys)
    assert not out.exists()


def test_a_branch_cannot_switch_to_a_model_with_other_latents(tmp_path, capsys, saved_run):
    import torch

    from studio.engine.loading import save_studio_file
    from studio.engine.model import LatentDiffusion, ModelConfig
    from studio.engine.vae import VAEConfig

    other = dataclasses.replace(ModelConfig.tiny(), vae=VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                                                                  norm_groups=8))
    model_path = tmp_path / "factor4.safetensors"
    save_studio_file(LatentDiffusion(other), model_path, dtype=torch.float32)
    assert cli.main(["generate", "--quiet", "--branch", str(saved_run), "--from-step", "1", "--model",
                     str(model_path), "--out", str(tmp_path / "b.png")]) == 1
    line = one_error_line(capsys)
    assert "the run's latents (4x8x8) do not fit this model's (4x4x4 at 16x16)" in line
    assert "branch with the run's model (tiny-random)" in line


def test_a_branch_png_describes_the_picture_it_holds(tmp_path, saved_run):
    out = tmp_path / "b.png"
    assert cli.main(["generate", "--quiet", "--branch", str(saved_run), "--from-step", "1", "--prompt", "u",
                     "--out", str(out)]) == 0
    settings = parse_parameters(read_parameters(out))
    assert Image.open(out).size == (settings["width"], settings["height"]) == (16, 16)
