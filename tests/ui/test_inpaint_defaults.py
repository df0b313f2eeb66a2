"""Inpainting defaults (#18 item 4): strength 1 with a model that inpaints natively, a mask tint that shows on the
picture, the mask opacity remembered."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image
from ui_helpers import GENERATION_TIMEOUT_MS, paint_stroke, sample_image

from studio.ui.mask_tint import TINTS, contrasting_tint
from studio.ui.settings_model import REQUEST_DEFAULTS, GenerationSettings

PINK, GREEN_TINT, RED_TINT = (255, 180, 200), (40, 200, 90), TINTS[0]


@pytest.fixture(scope="module")
def inpainting_model_file(tmp_path_factory):
    """tiny-random's topology with a 9-channel UNet (noisy latent 4 + mask 1 + masked-image latent 4), as a file."""
    import torch

    from studio.engine.loading import save_studio_file
    from studio.engine.model import LatentDiffusion, ModelConfig
    from studio.engine.unet import UNetConfig

    unet = dataclasses.replace(UNetConfig.tiny(), in_channels=9)
    config = dataclasses.replace(ModelConfig.tiny(), unet=unet, name="tiny-inpaint")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = LatentDiffusion(config).eval()
    path = tmp_path_factory.mktemp("models") / "tiny-inpaint.safetensors"
    save_studio_file(model, path)
    return path


def use_model(window, qtbot, spec):
    window.use_model(str(spec))
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready"), timeout=GENERATION_TIMEOUT_MS)


# -- strength 1 for a model that inpaints natively -------------------------------------------------------------------
def test_settings_model_follows_the_task_until_the_user_sets_a_strength():
    settings = GenerationSettings()
    default = REQUEST_DEFAULTS["strength"]
    settings.follow_inpaint_strength(True)
    assert settings.strength == 1.0 and settings.to_request().strength == 1.0
    assert settings.to_dict()["strength"] == default  # the task's value is not saved as the user's
    settings.follow_inpaint_strength(False)
    assert settings.strength == default
    settings.strength = 0.6  # the user's choice
    settings.follow_inpaint_strength(True)
    assert settings.strength == 0.6 and settings.to_dict()["strength"] == 0.6


def test_native_inpainting_uses_strength_one_and_says_so(make_window, qtbot, inpainting_model_file, tmp_path):
    window = make_window()
    panel = window.prompt_panel
    use_model(window, qtbot, inpainting_model_file)
    window.open_image(sample_image(64))
    assert panel.strength.value() == 0.75  # image to image: A1111's default
    window.canvas.set_brush_size(12)
    paint_stroke(window.canvas, (16, 32), (48, 32))
    assert panel.strength.value() == 1.0 and "inpaints natively" in panel.strength.toolTip()
    assert window.build_request().strength == 1.0
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    run = window.history.selected
    assert run.kind == "inpaint" and run.request.strength == 1.0 and run.recorded == panel.steps.value()

    # the PNG names the model file and its short hash (A1111's), never the path
    path = tmp_path / "inpainted.png"
    assert window.save_image(run, str(path))
    with Image.open(path) as im:
        text = im.info["parameters"]
    short = hashlib.sha256(inpainting_model_file.read_bytes()).hexdigest()[:10]
    assert f"Model hash: {short}, Model: tiny-inpaint," in text and "Denoising strength: 1," in text
    assert str(inpainting_model_file.parent) not in text

    window.canvas.mask.clear()  # back to image to image
    assert panel.strength.value() == 0.75 and "inpaints natively" not in panel.strength.toolTip()


def test_a_strength_the_user_chose_stays(make_window, qtbot, inpainting_model_file):
    window = make_window()
    panel = window.prompt_panel
    use_model(window, qtbot, inpainting_model_file)
    window.open_image(sample_image(64))
    panel.strength.setValue(0.5)
    paint_stroke(window.canvas, (16, 32), (48, 32))
    assert panel.strength.value() == 0.5 and window.build_request().strength == 0.5


def test_a_model_that_does_not_inpaint_natively_keeps_the_img2img_strength(window):
    window.open_image(sample_image(64))  # tiny-random: 4 channels, latent blending
    paint_stroke(window.canvas, (16, 32), (48, 32))
    assert window.prompt_panel.strength.value() == 0.75 and window.build_request().strength == 0.75


# -- the mask's tint and opacity -------------------------------------------------------------------------------------
def test_tint_contrasts_with_the_picture():
    pink = np.full((64, 64, 3), PINK, np.uint8)
    assert contrasting_tint(pink) == GREEN_TINT  # red-pink on pink was the complaint
    assert contrasting_tint(np.full((64, 64, 3), 128, np.uint8)) == RED_TINT  # grey: the usual tint is fine
    assert contrasting_tint(np.full((32, 32, 3), (200, 60, 60), np.uint8)) != RED_TINT
    assert contrasting_tint(None) == RED_TINT
    big = np.full((2000, 1500, 3), PINK, np.uint8)  # sampled, not every pixel
    assert contrasting_tint(big) == GREEN_TINT


def test_the_canvas_paints_the_mask_in_the_contrasting_tint(window):
    from PySide6.QtCore import QPointF

    canvas = window.canvas
    window.open_image(np.full((64, 64, 3), PINK, np.uint8))
    canvas.set_brush_size(20)
    paint_stroke(canvas, (32, 32), (33, 32))
    assert canvas.mask_tint() == GREEN_TINT
    shot = canvas.grab().toImage()
    masked = shot.pixelColor(canvas.to_widget(QPointF(32.5, 32.5)).toPoint())
    outside = shot.pixelColor(canvas.to_widget(QPointF(3.5, 3.5)).toPoint())
    assert (outside.red(), outside.green(), outside.blue()) == PINK
    assert masked.green() > masked.red() + 30 and masked.red() < outside.red() - 80  # green over pink shows
    window.open_image(np.full((64, 64, 3), 128, np.uint8))
    assert canvas.mask_tint() == RED_TINT  # chosen anew for each picture


def test_mask_opacity_is_remembered(make_window):
    first = make_window()
    first.toolbar.opacity.setValue(30)
    assert first.canvas.mask_opacity == pytest.approx(0.30)
    first.close()
    second = make_window(offer_restore=False)
    assert second.toolbar.opacity.value() == 30 and second.canvas.mask_opacity == pytest.approx(0.30)
