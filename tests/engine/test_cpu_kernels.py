"""Pre-packed oneDNN kernels for float32 CPU inference: same results, same state, stock path elsewhere."""

from __future__ import annotations

import pytest
import torch

from sd_checkpoint_factory import random_model, sd1_config
from studio.engine import cpu_kernels
from studio.engine.cpu_kernels import PackedConv2d, PackedLinear, prepack_for_cpu

pytestmark = [
    pytest.mark.skipif(not cpu_kernels.kernels_work(), reason="this torch build has no usable oneDNN ops"),
    pytest.mark.usefixtures("one_thread"),
]




def inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    return x, torch.tensor([500.0, 20.0]), torch.randn(2, 77, model.config.unet.context_dim, generator=g)


def test_packed_model_matches_the_stock_one():
    model = random_model(sd1_config(), seed=31)
    keys = list(model.state_dict())
    x, t, context = inputs(model)
    with torch.inference_mode():
        stock = model.unet(x, t, context)
        image = model.vae.decode(x[:1])
        text = model.encode_text(["a red circle"])
    assert prepack_for_cpu(model) > 100
    assert isinstance(model.unet.out[2], PackedConv2d)
    assert isinstance(model.unet.time_embed[0], PackedLinear)
    assert list(model.state_dict()) == keys  # same names, same parameters
    with torch.inference_mode():
        assert torch.allclose(model.unet(x, t, context), stock, atol=1e-4, rtol=1e-4)
        assert torch.allclose(model.vae.decode(x[:1]), image, atol=1e-4, rtol=1e-4)
        assert torch.allclose(model.encode_text(["a red circle"]), text, atol=1e-5)


def test_edited_weights_are_repacked():
    layer = torch.nn.Linear(8, 4)
    prepack_for_cpu(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2)
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-6)


def test_stock_path_for_training_and_other_dtypes():
    model = random_model(sd1_config(), seed=32)
    prepack_for_cpu(model)
    conv = model.unet.input_blocks[0][0]
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = conv(x)  # autograd on: the stock convolution, so gradients flow
    out.sum().backward()
    assert x.grad is not None
    half = torch.nn.Conv2d(4, 4, 3, padding=1).to(torch.float16)
    assert prepack_for_cpu(half) == 0  # fp16 is never packed: the CPU has no fast fp16 kernels
    mixed = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).to(torch.bfloat16))
    assert prepack_for_cpu(mixed) == 0  # one precision per packed part


def test_bf16_is_packed_only_where_the_cpu_runs_it(monkeypatch):
    model = random_model(sd1_config(), seed=33).to(torch.bfloat16)
    x, t, context = (v.to(torch.bfloat16) if v.is_floating_point() else v for v in inputs(model))
    with torch.inference_mode():
        stock = model.unet(x, t, context).float()
    monkeypatch.setattr(cpu_kernels, "cpu_runs_bf16_natively", lambda: False)
    assert prepack_for_cpu(model.unet) == 0
    monkeypatch.setattr(cpu_kernels, "cpu_runs_bf16_natively", lambda: True)
    assert prepack_for_cpu(model.unet) > 50 and isinstance(model.unet.out[2], PackedConv2d)
    with torch.inference_mode():
        packed = model.unet(x, t, context).float()
    # both are bf16 computations (8 significant bits) summed in another order: they agree to bf16's precision
    assert ((packed - stock).norm() / stock.norm()).item() < 0.03


def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "1")
    assert prepack_for_cpu(torch.nn.Linear(4, 4)) == 0
