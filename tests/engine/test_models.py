"""UNet, VAE and CLIP text encoder: SD checkpoint layout (names, shapes, parameter counts on the meta device)
and behaviour of tiny random instances (shapes, strict loading, causality, dtypes, attention maths)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from studio.engine.text_encoder import CLIPTextModel, TextEncoderConfig
from studio.engine.unet import (
    CrossAttention,
    GroupNorm32,
    SpatialTransformer,
    UNetConfig,
    UNetModel,
    timestep_embedding,
)
from studio.engine.vae import AutoencoderKL, DiagonalGaussian, VAEConfig


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(factory):
    with torch.device("meta"):
        return factory()


@pytest.fixture(scope="module")
def sd1_unet():
    return on_meta(lambda: UNetModel(UNetConfig.sd1()))


@pytest.fixture(scope="module")
def sd2_unet():
    return on_meta(lambda: UNetModel(UNetConfig.sd2()))


@pytest.fixture(scope="module")
def sd_vae():
    return on_meta(lambda: AutoencoderKL(VAEConfig.sd()))


@pytest.fixture(scope="module")
def clip_l():
    return on_meta(lambda: CLIPTextModel(TextEncoderConfig.clip_l()))


def seeded(factory, seed: int = 0):
    torch.manual_seed(seed)
    return factory().eval()


# -- full-size layouts (docs/checkpoints.md: key names and parameter counts) ------------------------------------


def test_parameter_counts(sd1_unet, sd2_unet, sd_vae, clip_l):
    assert n_params(sd1_unet) == 859_520_964
    assert n_params(sd2_unet) == 865_910_724
    assert n_params(sd_vae) == 83_653_863
    assert n_params(clip_l) == 123_060_480
    assert n_params(on_meta(lambda: CLIPTextModel(TextEncoderConfig.sd2()))) == 340_387_840  # SD2 "used" params


SD1_UNET_SHAPES = {
    "input_blocks.0.0.weight": (320, 4, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (320,),
    "input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (320, 1280),
    "input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
    "input_blocks.1.1.norm.weight": (320,),
    "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias": (320,),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": (320, 768),
    "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
    "input_blocks.1.1.transformer_blocks.0.norm3.weight": (320,),
    "input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
    "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
    "middle_block.1.proj_out.weight": (1280, 1280, 1, 1),
    "middle_block.2.emb_layers.1.weight": (1280, 1280),
    "output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
    "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "output_blocks.5.0.in_layers.2.weight": (1280, 1920, 3, 3),
    "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
    "output_blocks.9.0.in_layers.2.weight": (320, 960, 3, 3),
    "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    "output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
    "time_embed.0.weight": (1280, 320),
    "time_embed.2.weight": (1280, 1280),
    "out.0.weight": (320,),
    "out.2.weight": (4, 320, 3, 3),
}


def test_sd1_unet_keys(sd1_unet):
    sd = sd1_unet.state_dict()
    for key, shape in SD1_UNET_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert "input_blocks.1.0.skip_connection.weight" not in sd  # 320 → 320 needs no 1×1 skip
    assert "input_blocks.10.1.norm.weight" not in sd  # the 1/8 level has no transformer
    assert "output_blocks.11.2.conv.weight" not in sd  # the last level does not upsample


def test_sd2_unet_keys(sd2_unet):
    sd = sd2_unet.state_dict()
    assert tuple(sd["input_blocks.1.1.proj_in.weight"].shape) == (320, 320)  # Linear, not a 1×1 conv
    assert tuple(sd["middle_block.1.proj_out.weight"].shape) == (1280, 1280)
    assert tuple(sd["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape) == (320, 1024)
    assert sd2_unet.input_blocks[1][1].transformer_blocks[0].attn1.heads == 5  # 320 / 64


VAE_SHAPES = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "encoder.down.2.block.1.conv2.weight": (512, 512, 3, 3),
    "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
    "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "encoder.mid.attn_1.proj_out.bias": (512,),
    "encoder.conv_out.weight": (8, 512, 3, 3),
    "quant_conv.weight": (8, 8, 1, 1),
    "post_quant_conv.weight": (4, 4, 1, 1),
    "decoder.conv_in.weight": (512, 4, 3, 3),
    "decoder.mid.block_2.norm2.weight": (512,),
    "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "decoder.up.3.block.2.conv1.weight": (512, 512, 3, 3),
    "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
    "decoder.norm_out.weight": (128,),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}


def test_vae_keys(sd_vae):
    sd = sd_vae.state_dict()
    for key, shape in VAE_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("decoder.up.0.upsample") for k in sd)
    assert not any(k.startswith("encoder.down.3.downsample") for k in sd)
    assert "encoder.down.0.block.0.nin_shortcut.weight" not in sd
    assert sd_vae.downsample_factor == 8


def test_text_encoder_keys(clip_l):
    sd = clip_l.state_dict()
    assert all(k.startswith("text_model.") for k in sd)
    assert tuple(sd["text_model.embeddings.token_embedding.weight"].shape) == (49408, 768)
    assert tuple(sd["text_model.embeddings.position_embedding.weight"].shape) == (77, 768)
    assert tuple(sd["text_model.encoder.layers.11.mlp.fc1.weight"].shape) == (3072, 768)
    assert tuple(sd["text_model.encoder.layers.0.self_attn.out_proj.bias"].shape) == (768,)
    assert tuple(sd["text_model.final_layer_norm.weight"].shape) == (768,)
    assert "text_model.encoder.layers.12.mlp.fc1.weight" not in sd


# -- tiny models: behaviour ---------------------------------------------------------------------------------------


def test_unet_tiny_forward_and_strict_round_trip():
    config = UNetConfig.tiny()
    a, b = seeded(lambda: UNetModel(config), 0), seeded(lambda: UNetModel(config), 1)
    x, t, ctx = torch.randn(2, 4, 16, 8), torch.tensor([10.0, 900.0]), torch.randn(2, 77, 32)
    with torch.no_grad():
        out = a(x, t, ctx)
        assert out.shape == (2, 4, 16, 8)
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(b(x, t, ctx), out)
        # context length is free (long prompts are 154, 231, ... tokens)
        assert a(x, t, torch.randn(2, 154, 32)).shape == (2, 4, 16, 8)
    assert a.downsample_factor == 2
    # odd latent sides work: each upsampler takes its skip connection's size (as diffusers' upsample_size)
    with torch.no_grad():
        assert a(torch.randn(1, 4, 15, 16), t[:1], ctx[:1]).shape == (1, 4, 15, 16)


def test_unet_uses_context_and_channels_last():
    unet = seeded(lambda: UNetModel(UNetConfig.tiny()))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    ctx1, ctx2 = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    with torch.no_grad():
        out1 = unet(x, t, ctx1)
        assert not torch.allclose(out1, unet(x, t, ctx2), atol=1e-4)
        unet_cl = unet.to(memory_format=torch.channels_last)
        out_cl = unet_cl(x.to(memory_format=torch.channels_last), t, ctx1)
    torch.testing.assert_close(out_cl, out1, atol=1e-5, rtol=1e-4)


def test_timestep_embedding_cos_first_and_continuous():
    t = torch.tensor([0.0, 500.0, 500.25, 501.0])
    emb = timestep_embedding(t, 320)
    assert emb.shape == (4, 320)
    torch.testing.assert_close(emb[:, 0], torch.cos(t))  # f_0 = 1, cos half first
    torch.testing.assert_close(emb[:, 160], torch.sin(t))
    k = 7
    f = math.exp(-math.log(10000) * k / 160)
    # float32 like LDM: t·f ≈ 300 rad carries ~3e-5 of rounding
    torch.testing.assert_close(emb[1, k], torch.tensor(math.cos(500.0 * f)), atol=1e-4, rtol=0)
    # |d emb/dt| ≤ max frequency = 1, so a quarter step moves each entry by at most 0.25
    assert (emb[2] - emb[1]).abs().max() <= 0.25 + 1e-5
    assert not torch.equal(emb[2], emb[1]) and not torch.equal(emb[2], emb[3])
    unet = seeded(lambda: UNetModel(UNetConfig.tiny()))
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        outs = [unet(x, torch.tensor([s]), ctx) for s in (500.0, 500.25, 510.0)]
    near, far = (outs[1] - outs[0]).abs().max(), (outs[2] - outs[0]).abs().max()
    assert 0 < near < far


def test_bfloat16_weights_and_groupnorm():
    norm = GroupNorm32(4, 16).to(torch.bfloat16)
    x = torch.randn(2, 16, 5, 5)
    y = norm(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), torch.nn.functional.group_norm(x, 4), atol=0.05, rtol=0.02)

    unet = seeded(lambda: UNetModel(UNetConfig.tiny()))
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([250.5]), torch.randn(1, 77, 32)
    with torch.no_grad():
        ref = unet(x, t, ctx)
        out = unet.to(torch.bfloat16)(x.bfloat16(), t, ctx.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05

    vae = seeded(lambda: AutoencoderKL(VAEConfig.tiny()))
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        ref = vae.decode(z)
        out = vae.to(torch.bfloat16).decode(z.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_vae_tiny_round_trip_and_gaussian():
    config = VAEConfig.tiny()
    a, b = seeded(lambda: AutoencoderKL(config), 0), seeded(lambda: AutoencoderKL(config), 1)
    image = torch.rand(2, 3, 16, 12) * 2 - 1
    with torch.no_grad():
        posterior = a.encode(image)
        assert posterior.mean.shape == (2, 4, 8, 6) and a.downsample_factor == 2
        z1 = posterior.sample(torch.Generator().manual_seed(3))
        z2 = posterior.sample(torch.Generator().manual_seed(3))
        assert torch.equal(z1, z2) and not torch.equal(z1, posterior.mode())
        assert a.decode(z1).shape == (2, 3, 16, 12)
        b.load_state_dict(a.state_dict(), strict=True)
        torch.testing.assert_close(b.encode(image).mode(), posterior.mode(), rtol=0, atol=0)
    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), -100.0)], dim=1)
    assert DiagonalGaussian(moments).logvar.min() == -30.0


def test_text_encoder_causal_skip_and_position_ids():
    config = TextEncoderConfig.tiny()
    model = seeded(lambda: CLIPTextModel(config))
    ids = torch.randint(0, config.vocab_size, (2, 77))
    changed = ids.clone()
    changed[:, 40] = (changed[:, 40] + 1) % config.vocab_size
    with torch.no_grad():
        out, out2 = model(ids), model(changed)
        assert out.shape == (2, 77, 32)
        torch.testing.assert_close(out2[:, :40], out[:, :40], rtol=0, atol=1e-6)  # the past never sees the future
        assert not torch.allclose(out2[:, 40:], out[:, 40:])
        assert model(ids[:, :10]).shape == (2, 10, 32)
        # skip_layers=1 ("CLIP skip 2"): final LayerNorm applied to the output of the first block
        text = model.text_model
        h = text.encoder.layers[0](text.embeddings(ids))
        torch.testing.assert_close(model(ids, skip_layers=1), text.final_layer_norm(h))
        assert not torch.allclose(model(ids, skip_layers=1), out)
    with pytest.raises(ValueError):
        model(ids, skip_layers=2)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 78, dtype=torch.long))
    # a stored position_ids buffer (HF / SD files, sometimes float) is tolerated by a strict load
    sd = model.state_dict()
    sd["text_model.embeddings.position_ids"] = torch.arange(77.0)[None]
    other = seeded(lambda: CLIPTextModel(config), 1)
    other.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other(ids), out, rtol=0, atol=0)


# -- attention against explicit softmax(QKᵀ/√d)V -------------------------------------------------------------------


def explicit_attention(attn: CrossAttention, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    q, k, v = x @ attn.to_q.weight.T, ctx @ attn.to_k.weight.T, ctx @ attn.to_v.weight.T
    heads = attn.heads
    d = q.shape[-1] // heads
    outs = []
    for i in range(heads):
        qi, ki, vi = (m[..., i * d : (i + 1) * d] for m in (q, k, v))
        weights = torch.softmax(qi @ ki.transpose(-1, -2) / math.sqrt(d), dim=-1)
        outs.append(weights @ vi)
    return torch.cat(outs, dim=-1) @ attn.to_out[0].weight.T + attn.to_out[0].bias


def explicit_norm(x, weight, bias, eps, groups=None):
    shape = x.shape
    flat = x.reshape(shape[0], groups, -1) if groups else x
    mean = flat.mean(-1, keepdim=True)
    var = ((flat - mean) ** 2).mean(-1, keepdim=True)
    y = ((flat - mean) / torch.sqrt(var + eps)).reshape(shape)
    if groups:
        return y * weight[:, None, None] + bias[:, None, None]
    return y * weight + bias


@pytest.mark.parametrize("linear", [False, True])
def test_spatial_transformer_matches_explicit_maths(linear):
    config = dataclasses.replace(UNetConfig.tiny(), use_linear_projection=linear, num_heads=4, context_dim=12)
    torch.manual_seed(0)
    st = SpatialTransformer(32, config).eval()
    for p in st.parameters():  # non-trivial norms too
        p.data.add_(0.1 * torch.randn_like(p))
    x, ctx = torch.randn(2, 32, 4, 6), torch.randn(2, 5, 12)
    with torch.no_grad():
        out = st(x, ctx)
        h = explicit_norm(x, st.norm.weight, st.norm.bias, 1e-6, groups=config.norm_groups)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        w_in, w_out = st.proj_in.weight.reshape(32, 32), st.proj_out.weight.reshape(32, 32)
        h = h @ w_in.T + st.proj_in.bias
        block = st.transformer_blocks[0]

        def ln(m, y):
            return explicit_norm(y, m.weight, m.bias, 1e-5)

        h = h + explicit_attention(block.attn1, ln(block.norm1, h), ln(block.norm1, h))
        h = h + explicit_attention(block.attn2, ln(block.norm2, h), ctx)
        a, g = (ln(block.norm3, h) @ block.ff.net[0].proj.weight.T + block.ff.net[0].proj.bias).chunk(2, dim=-1)
        gelu = 0.5 * g * (1 + torch.erf(g / math.sqrt(2)))
        h = h + (a * gelu) @ block.ff.net[2].weight.T + block.ff.net[2].bias
        h = h @ w_out.T + st.proj_out.bias
        expected = h.transpose(1, 2).reshape(2, 32, 4, 6) + x
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_cross_attention_upcast_matches():
    torch.manual_seed(0)
    attn = CrossAttention(16, heads=2, dim_head=8, context_dim=12, upcast=True).eval()
    x, ctx = torch.randn(1, 9, 16), torch.randn(1, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ctx), explicit_attention(attn, x, ctx), atol=1e-5, rtol=1e-4)
        half = attn.to(torch.bfloat16)(x.bfloat16(), ctx.bfloat16())
    assert half.dtype == torch.bfloat16
