"""`studio generate` with a cold model: its samplers, --noise, --init/--strength, --branch."""

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.engine.cold_model import ColdConfig, RestorationNet, save_cold_file


@pytest.fixture
def cold_file(tmp_path):
    torch.manual_seed(0)
    config = ColdConfig(steps=4, channels=(8, 16), gmm_weights=(1.0,), gmm_means=((0.1, 0.2, 0.3),),
                        gmm_stds=((0.1, 0.1, 0.1),))
    path = tmp_path / "tiny-cold.safetensors"
    save_cold_file(RestorationNet(config), (), path, dtype=torch.float32)
    return str(path)


def test_generate_branch_and_restore(cold_file, tmp_path, capsys):
    out, run = tmp_path / "a.png", tmp_path / "a.run"
    assert main(["generate", "--model", cold_file, "--steps", "4", "--noise", "0.01", "--out", str(out),
                 "--save-run", str(run), "--quiet"]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 64, 3)
    parameters = Image.open(out).info["parameters"]
    assert "Size: 64x64" in parameters and "Steps: 4" in parameters  # the size it ran at, not the default 512
    branch = tmp_path / "b.png"
    assert main(["generate", "--branch", str(run), "--from-step", "2", "--sampler", "cold_naive", "--out",
                 str(branch), "--quiet"]) == 0
    restored = tmp_path / "c.png"
    assert main(["generate", "--model", cold_file, "--sampler", "cold_improved", "--init", str(out), "--strength",
                 "0.5", "--out", str(restored), "--quiet"]) == 0
    assert np.asarray(Image.open(restored)).shape == (64, 64, 3)


def test_wrong_sampler_and_mask_are_one_line_errors(cold_file, tmp_path, capsys):
    assert main(["generate", "--model", cold_file, "--sampler", "ddim", "--out", str(tmp_path / "x.png")]) == 1
    assert "is a cold model: choose the sampler cold_improved or cold_naive" in capsys.readouterr().err
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "m.png")
    assert main(["generate", "--model", cold_file, "--init", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "m.png"), "--out", str(tmp_path / "y.png")]) == 1
    assert "cannot inpaint: use cold-mask" in capsys.readouterr().err


def test_the_guidance_scale_comes_from_the_cold_model_unless_given(cold_file, tmp_path):
    """A cold model that was not trained for guidance runs at CFG 1 (not the latent models' 7.5); `--cfg` wins."""
    from studio.engine import Run

    def cfg_of(*extra):
        run = tmp_path / "r.run"
        assert main(["generate", "--model", cold_file, "--steps", "4", "--out", str(tmp_path / "r.png"),
                     "--save-run", str(run), "--quiet", *extra]) == 0
        return Run.load(run).request.cfg

    assert cfg_of() == 1.0
    assert cfg_of("--cfg", "3") == 3.0
