"""Inpainting on tiny-random: paste-back exactness, feather reach, the one fixed noise tensor, only-masked, errors."""

import numpy as np
import pytest
import torch

from studio.engine import inpaint
from studio.engine.model import LatentDiffusion, ModelConfig, build_tiny_random
from studio.engine.pipeline import Engine
from studio.engine.request import GenerationRequest, RequestError
from studio.engine.schedules import q_sample
from studio.engine.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread (2 contend on a busy CPU)

SIZE = 64


def picture(size=SIZE):
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)


def square_mask(size=SIZE, lo=24, hi=40):
    mask = np.zeros((size, size), np.float32)
    mask[lo:hi, lo:hi] = 1.0
    return mask


BASE = GenerationRequest(prompt="a green star", model="tiny-random", steps=5, width=SIZE, height=SIZE, seed=3,
                         cfg=2.0, init_image=picture(), mask=square_mask(), strength=1.0)


def tiny_inpainting_model() -> LatentDiffusion:
    config = ModelConfig.tiny()
    unet = UNetConfig(**{**config.unet.__dict__, "in_channels": 2 * config.vae.z_channels + 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = LatentDiffusion(ModelConfig(unet=unet, vae=config.vae, text=config.text, default_size=64))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def inpaint_engine():
    model = tiny_inpainting_model()
    return Engine(loader=lambda spec, device, dtype: model)


def outside(blend):
    return blend <= 0


def unpainted(mask, grow=0):
    """Every pixel the user did not paint (after the grow they asked for): what must come back bit for bit."""
    from studio.engine.masks import grow_mask

    return ~grow_mask(np.asarray(mask) >= 0.5, grow)


@pytest.mark.parametrize("mode", ["blend", "model"])
def test_unmasked_pixels_are_bit_identical_and_the_hole_changes(engine, inpaint_engine, mode):
    eng = engine if mode == "blend" else inpaint_engine
    run = eng.run(BASE.replace(inpaint_mode=mode))
    keep = unpainted(BASE.mask, BASE.grow)  # the feather (4 px by default) lies inside the painted region
    assert run.kind == "inpaint" and BASE.feather > 0
    assert np.array_equal(run.image[keep], BASE.init_image[keep])
    hole = BASE.mask > 0
    assert np.abs(run.image[hole].astype(int) - BASE.init_image[hole]).mean() > 5


def test_auto_mode_picks_the_model_by_its_input_channels(engine, inpaint_engine):
    assert not engine.model("tiny-random").is_inpainting
    assert inpaint_engine.model("x").is_inpainting
    with pytest.raises(RequestError, match="no inpainting UNet"):
        engine.run(BASE.replace(inpaint_mode="model"))


def test_only_masked_keeps_everything_outside_the_mask(engine):
    big = picture(128)
    mask = np.zeros((128, 128), np.float32)
    mask[90:100, 20:34] = 1
    run = engine.run(BASE.replace(init_image=big, mask=mask, only_masked=True, padding=8))
    keep = unpainted(mask)
    assert run.image.shape == big.shape
    assert np.array_equal(run.image[keep], big[keep])
    assert not np.array_equal(run.image[mask > 0], big[mask > 0])


def test_the_feather_lies_inside_the_painted_square():
    from studio.engine.masks import feather_inward

    mask = inpaint.binarise(square_mask())  # the square 24..39 × 24..39
    soft = feather_inward(mask, 8)
    assert (soft[mask == 0] == 0).all()  # nothing outside what was painted
    ys, xs = np.nonzero((soft > 0) & (soft < 1))
    depth = np.minimum(np.minimum(ys - 24, 39 - ys), np.minimum(xs - 24, 39 - xs)) + 1  # distance to the outside
    assert len(ys) and depth.max() <= 8 and depth.min() == 1
    assert soft[31, 31] == 1 and 0 < soft[24, 31] < soft[26, 31] < soft[29, 31] < 1  # rising inward
    assert (feather_inward(mask, 0) == mask).all()


def test_a_thin_stroke_is_feathered_softly_not_dropped_and_the_border_counts_as_painted():
    from studio.engine.masks import feather_inward

    stroke = np.zeros((32, 32), np.float32)
    stroke[10:13, 4:28] = 1  # 3 px wide, thinner than twice the feather
    soft = feather_inward(stroke, 4)
    assert soft[11, 16] > 0.3 and soft.max() < 1 and (soft[stroke == 0] == 0).all()
    edge = np.zeros((32, 32), np.float32)
    edge[:, :16] = 1  # painted up to the left border
    assert feather_inward(edge, 4)[16, 0] == 1  # full at the image border, soft only at its painted edge


@pytest.mark.parametrize("mode", ["blend", "model"])
def test_every_unpainted_pixel_is_kept_with_a_wide_feather(engine, inpaint_engine, mode):
    """#18: with a feather the soft edge used to reach 50–420 unpainted pixels; now none."""
    eng = engine if mode == "blend" else inpaint_engine
    run = eng.run(BASE.replace(inpaint_mode=mode, feather=12.0))
    keep = unpainted(BASE.mask)
    assert np.array_equal(run.image[keep], BASE.init_image[keep])


def test_feather_zero_vs_eight_changes_only_pixels_near_the_edge(engine):
    a = engine.run(BASE.replace(feather=0)).image
    b = engine.run(BASE.replace(feather=8)).image
    differs = np.any(a != b, axis=-1)
    far_outside = inpaint.grow_mask(square_mask(), 8) == 0
    assert differs.any()
    assert not differs[far_outside].any()


def test_grow_dilates_by_a_disk():
    mask = np.zeros((21, 21), np.float32)
    mask[10, 10] = 1
    grown = inpaint.grow_mask(mask, 3)
    ys, xs = np.nonzero(grown)
    assert grown.sum() == 29  # lattice points with x² + y² ≤ 9
    assert ((ys - 10) ** 2 + (xs - 10) ** 2).max() == 9


def test_the_kept_region_is_renoised_with_one_noise_tensor_at_every_step():
    model = build_tiny_random()
    seen = []
    unet = model.unet
    original_forward = unet.forward

    def spy(x, t, context):
        seen.append((x[:1].clone(), float(t[0])))
        return original_forward(x, t, context)

    unet.forward = spy
    engine = Engine(loader=lambda spec, device, dtype: model)
    request = BASE.replace(feather=0, sampler="euler_a", eta=1.0)  # an ancestral sampler: the hardest case
    run = engine.run(request)
    z0 = model.encode_image(torch.from_numpy(BASE.init_image).permute(2, 0, 1)[None].float() / 127.5 - 1)
    m_lat = inpaint.latent_mask(inpaint.prepare_mask(BASE.mask, (SIZE, SIZE), 0, 0).blend, z0.shape[2:], z0.device)
    kept = (m_lat == 0).expand_as(z0)
    noises = []
    for (x_in, _), step in zip(seen, run.timeline):
        a = step.level.alpha_cumprod
        noises.append(((x_in - a**0.5 * z0) / (1 - a) ** 0.5)[kept])
    assert len(noises) == 5
    for n in noises[1:]:
        torch.testing.assert_close(n, noises[0], atol=2e-4, rtol=1e-4)
    initial = torch.randn(z0.shape, generator=torch.Generator().manual_seed(BASE.seed))
    torch.testing.assert_close(noises[0], initial[kept], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("fill", ["original", "noise", "blur"])
def test_fill_modes_run_and_keep_the_outside(engine, fill):
    run = engine.run(BASE.replace(fill=fill, strength=0.8, steps=5))
    keep = outside(inpaint.prepare_mask(BASE.mask, (SIZE, SIZE), 0, BASE.feather).blend)
    assert np.array_equal(run.image[keep], BASE.init_image[keep])


def test_blur_fill_only_touches_the_hole():
    image = picture()
    edit = inpaint.binarise(square_mask())
    filled = inpaint.blur_fill(image, edit)
    assert np.array_equal(filled[edit == 0], image[edit == 0])
    assert not np.array_equal(filled[edit == 1], image[edit == 1])


@pytest.mark.parametrize("mode", ["blend", "model"])
def test_full_mask_at_strength_one_is_txt2img_whatever_the_image(engine, inpaint_engine, mode):
    """Everything masked (m = 1) and strength 1: the start is the seed's noise, latent blending weighs the image's
    latent by 1 − m = 0 exactly, the 9-channel conditioning sees image·(mask < 0.5) = 0, and paste-back takes the
    generated pixels with weight 1. So the picture cannot matter (byte-identical results for two pictures), and the
    result is txt2img with the same seed: byte for byte on the 9-channel model (its txt2img conditions on the same
    all-masked, all-zero input), within float rounding for blending (its ε̂ goes through x̂0 and back)."""
    eng = engine if mode == "blend" else inpaint_engine
    full = BASE.replace(mask=np.ones((SIZE, SIZE), np.float32), feather=0, strength=1.0, inpaint_mode=mode)
    run = eng.run(full)
    other = eng.run(full.replace(init_image=np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)))
    plain = eng.run(full.replace(init_image=None, mask=None))
    assert run.kind == "inpaint" and plain.kind == "txt2img"
    assert np.array_equal(run.image, other.image)
    assert torch.equal(run.final_latent, other.final_latent)
    if mode == "model":
        assert np.array_equal(run.image, plain.image)
    else:
        torch.testing.assert_close(run.final_latent, plain.final_latent, atol=1e-4, rtol=1e-4)
        assert np.abs(run.image.astype(int) - plain.image).max() <= 1
    assert np.abs(run.image.astype(int) - BASE.init_image).mean() > 5  # it painted, it did not return the image


def test_bad_masks_are_clear_errors(engine):
    with pytest.raises(RequestError, match="mask is empty"):
        engine.run(BASE.replace(mask=np.zeros((SIZE, SIZE), np.float32)))
    with pytest.raises(RequestError, match="mask is 32x32 but the image is 64x64"):
        engine.run(BASE.replace(mask=np.ones((32, 32), np.float32)))


def test_masked_crop_widens_to_the_output_aspect():
    edit = np.zeros((100, 200), np.float32)
    edit[40:50, 100:110] = 1
    crop = inpaint.masked_crop(edit, padding=5, aspect=2.0)
    w, h = crop.size
    assert abs(w / h - 2.0) < 0.1
    x0, y0, x1, y1 = crop.box
    assert x0 <= 95 and x1 >= 115 and y0 <= 35 and y1 >= 55
