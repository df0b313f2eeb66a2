"""Tiled VAE encode/decode: exact for local layers, seamless for the VAE, chosen when memory is short or runs out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sd_checkpoint_factory import random_model, sd1_config
from studio.engine import tiling
from studio.engine.tiling import decode_tiled, encode_moments_tiled, tile_starts, tiled_apply

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def model():
    return random_model(sd1_config(), seed=21)  # VAE with the SD topology (factor 8) at 1/4 width


def smooth(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(shape[0], shape[1], shape[2] // 4 + 1, shape[3] // 4 + 1, generator=g)
    return nn.functional.interpolate(coarse, size=shape[2:], mode="bicubic", align_corners=False)


@pytest.mark.parametrize("length, tile, overlap, align", [(100, 32, 8, 1), (64, 64, 16, 1), (65, 64, 16, 1),
                                                          (333, 128, 32, 8), (48, 24, 8, 1), (1000, 512, 128, 8)])
def test_tiles_cover_with_the_overlap(length, tile, overlap, align):
    starts = tile_starts(length, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(s % align == 0 for s in starts[:-1])
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap - align + 1  # neighbours share (about) the overlap ...
        assert b > a  # ... and no tile is repeated


@pytest.mark.parametrize("scale", [1, 2])
def test_tiling_is_exact_for_local_layers(scale):
    """Pixels near a cut never count, so layers whose receptive field fits in the margin tile exactly."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.SiLU()]
    if scale == 2:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += [nn.Conv2d(8, 3, 3, padding=1)]
    fn = nn.Sequential(*layers).eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.inference_mode():
        whole = fn(x)
        tiled = tiled_apply(fn, x, tile=32, overlap=16, scale=scale)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_one_tile_is_the_plain_decode(model):
    z = smooth((1, 4, 16, 16))
    with torch.inference_mode():
        assert torch.equal(decode_tiled(model.vae, z, tile=16, overlap=4), model.vae.decode(z))


def column_steps(image: torch.Tensor) -> torch.Tensor:
    """Mean |horizontal step| of each column."""
    return (image[..., 1:] - image[..., :-1]).abs().mean(dim=(0, 1, 2))


def per_tile_statistic(x: torch.Tensor) -> torch.Tensor:
    """A decoder-like map whose output depends on the whole input through one statistic, as GroupNorm does:
    ×8 upsampling plus the input's mean. Each tile sees its own mean, so tiles disagree by a constant."""
    return nn.functional.interpolate(x, scale_factor=8.0, mode="nearest") + x.mean(dim=(-2, -1), keepdim=True)


def test_cross_fade_leaves_no_seams():
    """Where tiles disagree (per-tile statistics), the blend moves from one to the other over the fade, with no
    step where they meet; pasting the same tiles side by side leaves a step there."""
    z = smooth((1, 4, 40, 48), seed=1) + torch.linspace(0, 4, 48)  # a ramp: every tile has another mean
    whole = per_tile_statistic(z)
    tiled = tiled_apply(per_tile_statistic, z, tile=24, overlap=8, scale=8)
    pasted = torch.zeros_like(whole)
    for x0 in tile_starts(48, 24, 8):
        pasted[..., x0 * 8 : (x0 + 24) * 8] = per_tile_statistic(z[..., x0 : x0 + 24])
    blended_steps = column_steps(tiled - whole)
    pasted_steps = column_steps(pasted - whole)
    assert pasted_steps.max() > 0.5  # tiles do disagree
    assert blended_steps.max() < 0.1 * pasted_steps.max()


def test_tiled_vae_decode_stays_close(model):
    """GroupNorm and attention see one tile at a time, so a tiled decode is close to, not equal to, a whole one
    (for this random VAE, at small tiles; trained VAEs at 512 px tiles differ far less)."""
    z = smooth((1, 4, 40, 48), seed=1)
    with torch.inference_mode():
        whole = model.vae.decode(z)
        tiled = decode_tiled(model.vae, z, tile=24, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 320, 384)
    assert (tiled - whole).abs().mean() < 0.5 * whole.std()


def test_tiled_encode_matches_shape_and_stays_close(model):
    image = smooth((1, 3, 320, 256), seed=2).clamp(-1, 1)
    with torch.inference_mode():
        whole = model.vae.quant_conv(model.vae.encoder(image))
        tiled = encode_moments_tiled(model.vae, image, tile=128, overlap=48)
        one = encode_moments_tiled(model.vae, image, tile=320, overlap=48)
    assert tiled.shape == whole.shape == (1, 8, 40, 32)
    assert torch.equal(one, whole)
    assert (tiled - whole).abs().mean() < 0.5 * whole.std()


def test_decode_tiles_when_memory_is_short(model, monkeypatch):
    calls = []
    monkeypatch.setattr(tiling, "available_memory", lambda device: 1000)
    real = tiling.decode_tiled
    monkeypatch.setattr(tiling, "decode_tiled", lambda vae, z: calls.append(z.shape) or real(vae, z, 8, 4))
    image = model.decode_latent(smooth((1, 4, 16, 16)))
    assert calls and image.shape == (1, 3, 128, 128)
    monkeypatch.setattr(tiling, "available_memory", lambda device: None)  # unknown: decode whole
    calls.clear()
    model.decode_latent(smooth((1, 4, 16, 16)))
    assert not calls


def test_out_of_memory_falls_back_to_tiles_then_says_so(model, monkeypatch):
    vae = model.vae
    real_decode = vae.decode

    def decode_small_only(z):
        if z.shape[-1] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_decode(z)

    monkeypatch.setattr(vae, "decode", decode_small_only)
    real_tiled = tiling.decode_tiled
    monkeypatch.setattr(tiling, "decode_tiled", lambda v, z: real_tiled(v, z, 8, 4))
    image = model.decode_latent(smooth((1, 4, 16, 16)), tiled=False)
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()

    monkeypatch.setattr(tiling, "decode_tiled", lambda v, z: real_tiled(v, z, 16, 4))  # tiles too big as well
    with pytest.raises(tiling.OutOfMemory, match="out of memory decoding a 128x128 image, even in tiles"):
        model.decode_latent(smooth((1, 4, 16, 16)), tiled=False)


def test_encode_image_tiled_and_whole(model, monkeypatch):
    image = smooth((1, 3, 128, 128), seed=3).clamp(-1, 1)
    whole = model.encode_image(image, tiled=False)
    assert whole.shape == (1, 4, 16, 16)
    real = tiling.encode_moments_tiled
    monkeypatch.setattr(tiling, "encode_moments_tiled", lambda vae, x: real(vae, x, 128, 32))
    assert torch.equal(model.encode_image(image, tiled=True), whole)  # one tile covers it


def test_half_precision_nan_decode_retries_in_fp32(monkeypatch):
    model = random_model(sd1_config(), seed=22).to(torch.bfloat16)
    real_decode = model.vae.decode

    def nan_in_half(z):
        out = real_decode(z)
        return out * float("nan") if z.dtype == torch.bfloat16 else out

    monkeypatch.setattr(model.vae, "decode", nan_in_half)
    image = model.decode_latent(smooth((1, 4, 8, 8)), tiled=False)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}  # the VAE is put back
