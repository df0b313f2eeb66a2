"""Cross-attention projects the prompt's context once per context tensor while no gradient is recorded
(unet.CrossAttention._context_keys_values): the answers are those of projecting at every call, and anything that
changes the projection (the context or the weights edited in place, new weights, a recorded graph) projects again."""

from __future__ import annotations

import pytest
import torch

from studio.engine.unet import CrossAttention, UNetConfig, UNetModel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return UNetModel(UNetConfig.tiny()).eval()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, UNetConfig.tiny().context_dim, generator=g)
    return x, torch.tensor([10.0, 500.0]), context


def projections_counted(unet) -> list[int]:
    """How many times the context's key projections ran, counted by hooks on every cross-attention's to_k."""
    count = [0]
    for module in unet.modules():
        if isinstance(module, CrossAttention):
            module.to_k.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def projecting_every_call(unet, x, t, context):
    original = CrossAttention._context_keys_values
    try:
        CrossAttention._context_keys_values = lambda self, c: (self.to_k(c), self.to_v(c))
        with torch.no_grad():
            return unet(x, t, context)
    finally:
        CrossAttention._context_keys_values = original


def test_a_sampling_loop_projects_the_context_once_and_gets_the_same_answers(unet, inputs):
    x, t, context = inputs
    count = projections_counted(unet)
    attention_blocks = sum(isinstance(m, CrossAttention) for m in unet.modules())
    with torch.inference_mode():
        first = unet(x, t, context)
        per_call = count[0]
        second = unet(x * 0.5, t * 0.5, context)
    assert per_call == attention_blocks  # self-attention projects x; cross-attention the context, once
    assert count[0] - per_call == attention_blocks // 2  # the second call re-projects only the self-attentions
    assert torch.equal(first, projecting_every_call(unet, x, t, context))
    assert torch.equal(second, projecting_every_call(unet, x * 0.5, t * 0.5, context))


def test_an_edited_context_or_edited_weights_are_projected_again(unet, inputs):
    x, t, context = inputs
    with torch.no_grad():
        unet(x, t, context)
        context.mul_(2.0)  # the same tensor, edited in place
        assert torch.equal(unet(x, t, context), projecting_every_call(unet, x, t, context))
        for parameter in unet.parameters():
            parameter.mul_(1.01)  # as an EMA update does
        assert torch.equal(unet(x, t, context), projecting_every_call(unet, x, t, context))
        unet.double().float()  # new weight tensors
        assert torch.equal(unet(x, t, context), projecting_every_call(unet, x, t, context))
        other = torch.randn_like(context)
        assert torch.equal(unet(x, t, other), projecting_every_call(unet, x, t, other))


def test_a_recorded_graph_gets_fresh_projections_of_the_same_context(unet, inputs):
    x, t, context = inputs
    with torch.inference_mode():
        unet(x, t, context)  # fills the cache with inference tensors
    probe = x.clone().requires_grad_(True)  # guidance differentiates through the UNet with the run's context
    unet(probe, t, context).square().mean().backward()  # an inference tensor saved for backward would fail here
    reference = x.clone().requires_grad_(True)
    original = CrossAttention._context_keys_values
    try:
        CrossAttention._context_keys_values = lambda self, c: (self.to_k(c), self.to_v(c))
        unet(reference, t, context).square().mean().backward()
    finally:
        CrossAttention._context_keys_values = original
    assert torch.equal(probe.grad, reference.grad)
