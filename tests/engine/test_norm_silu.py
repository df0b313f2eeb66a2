"""GroupNorm32 and the SiLU after it: the CPU bf16 shortcut agrees with the float32 path, and the in-place SiLU is
used only where no gradient is recorded (guidance differentiates through the same modules)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from studio.engine.unet import GroupNorm32, SiLUAfterNorm, silu_after_norm


def test_bf16_group_norm_on_the_cpu_matches_the_float32_path():
    g = torch.Generator().manual_seed(0)
    norm = GroupNorm32(8, 64)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(64, generator=g))
    x = torch.randn(2, 64, 24, 24, generator=g) * 4 + 2  # a large mean: statistics in bf16 would lose it
    exact = F.group_norm(x, 8, norm.weight, norm.bias, norm.eps)
    norm = norm.bfloat16()
    x16 = x.bfloat16()
    float_path = F.group_norm(x16.float(), 8, norm.weight.float(), norm.bias.float(), norm.eps)
    out = norm(x16)
    assert out.dtype == torch.bfloat16
    # one bf16 rounding of the result away from the float32 path, like the float path's own cast back
    assert torch.allclose(out.float(), float_path, atol=0.05, rtol=0.01)
    assert (out.float() - exact).abs().max() <= (float_path.bfloat16().float() - exact).abs().max() + 0.02


def test_silu_after_a_norm_is_in_place_only_without_gradients():
    x = torch.randn(3, 5)
    with torch.no_grad():
        h = x.clone()
        assert silu_after_norm(h) is h and torch.allclose(h, F.silu(x))
    leaf = x.clone().requires_grad_(True)
    h = leaf * 1.0
    out = SiLUAfterNorm()(h)
    assert out is not h and torch.allclose(h, x)  # the norm's output is left as it was
    out.sum().backward()
    sig = torch.sigmoid(x)
    assert torch.allclose(leaf.grad, sig * (1 + x * (1 - sig)), atol=1e-6)  # d/dx x·σ(x)
