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


@pytest.mark.parametrize("release", [False, True])
def test_a_new_input_size_gets_its_own_pack_with_the_same_values(release):
    """oneDNN lays a convolution's weight out for the input size it is packed for; after a size change the layer
    repacks once for the new size (else oneDNN reorders the weight inside every call), from the same values."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(6, 5, 3, padding=1)).eval().requires_grad_(False)
    plain = conv[0].weight.detach().clone()
    prepack_for_cpu(conv, release_dense=release)
    layer = conv[0]
    g = torch.Generator().manual_seed(3)
    small, large = torch.randn(2, 6, 4, 4, generator=g), torch.randn(1, 6, 12, 10, generator=g)
    with torch.inference_mode():
        for x, size in ((small, (4, 4)), (large, (12, 10)), (small, (4, 4))):
            before = layer._pack[1] if layer._pack is not None else None
            out = layer(x)
            assert layer._pack_layout == size and layer._pack[1] is not before  # packed again, for this size
            assert torch.allclose(out, torch.nn.functional.conv2d(x, plain, layer.bias, padding=1), atol=1e-5)
            again = layer._pack[1]
            layer(x[:1])  # another batch of the same size keeps the pack
            assert layer._pack[1] is again
    assert (raw_weight(layer).untyped_storage().nbytes() == 0) is release  # a repack does not bring the copy back
    assert torch.equal(layer.weight, plain)


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
    if not cpu_kernels.kernels_work(torch.bfloat16):
        # a CPU that claims bf16 but whose oneDNN build does not run it right (or at all) keeps the stock layers
        assert prepack_for_cpu(model.unet) == 0 and not isinstance(model.unet.out[2], PackedConv2d)
        return
    assert prepack_for_cpu(model.unet) > 50 and isinstance(model.unet.out[2], PackedConv2d)
    with torch.inference_mode():
        packed = model.unet(x, t, context).float()
    # both are bf16 computations (8 significant bits) summed in another order: they agree to bf16's precision
    assert ((packed - stock).norm() / stock.norm()).item() < 0.03


def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "1")
    assert prepack_for_cpu(torch.nn.Linear(4, 4)) == 0


def released_model(seed: int):
    """A model loaded for inference after its first calls: every layer packed (on its first call) and released."""
    model = random_model(sd1_config(), seed=seed).eval().requires_grad_(False)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepack_for_cpu(model, release_dense=True) > 100
    x, t, context = inputs(model)
    with torch.inference_mode():
        model.unet(x, t, context)
        model.vae.decode(model.vae.encode(torch.zeros(1, 3, 32, 32)).mean)
        model.encode_text(["a red circle"])
    return model, reference


def plain_bytes(model) -> int:
    """Bytes the parameters' storages hold, read without the Module API (which would bring the weights back)."""
    return sum(p.untyped_storage().nbytes() for m in model.modules() for p in dict.values(m._parameters) if p is not None)


def raw_weight(module):
    return dict.__getitem__(module._parameters, "weight")


def test_released_weights_sit_in_memory_once_and_read_back_exactly():
    model, reference = released_model(34)
    conv = model.unet.out[2]
    assert raw_weight(conv).untyped_storage().nbytes() == 0  # the pack holds the values now
    assert raw_weight(conv).shape == reference["model.diffusion_model.out.2.weight"].shape  # the Parameter stays
    packed_params = sum(raw_weight(m).numel() * 4 for m in model.modules() if isinstance(m, (PackedConv2d, PackedLinear)))
    total = sum(v.numel() * 4 for v in reference.values())
    assert plain_bytes(model) == total - packed_params
    state = model.state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)  # read back from the packs, bit for bit
    assert raw_weight(conv).untyped_storage().nbytes() == 0  # a state dict does not bring the plain copies back
    # reading a weight through the module brings its values back (nothing ever reads an emptied storage)
    assert torch.equal(conv.weight, reference["model.diffusion_model.out.2.weight"])
    assert raw_weight(conv).untyped_storage().nbytes() > 0
    name = "model.diffusion_model.time_embed.0.weight"
    assert torch.equal(dict(model.named_parameters())[name], reference[name])
    assert all(torch.equal(p, reference[k]) for k, p in model.named_parameters())
    assert plain_bytes(model) == total


def test_released_model_runs_like_the_stock_one_also_with_gradients():
    model, reference = released_model(35)
    stock = random_model(sd1_config(), seed=35).eval()
    x, t, context = inputs(model)
    with torch.inference_mode():
        assert torch.allclose(model.unet(x, t, context), stock.unet(x, t, context), atol=1e-4, rtol=1e-4)
    # guidance differentiates through the model with respect to its input: a temporary plain weight per call
    x_grad = x.clone().requires_grad_(True)
    model.unet(x_grad, t, context).square().mean().backward()
    x_stock = x.clone().requires_grad_(True)
    stock.unet(x_stock, t, context).square().mean().backward()
    assert torch.allclose(x_grad.grad, x_stock.grad, atol=1e-5, rtol=1e-3)
    assert raw_weight(model.unet.out[2]).untyped_storage().nbytes() == 0  # still released


def test_whatever_reads_or_replaces_released_weights_gets_them_back():
    import copy

    model, reference = released_model(36)
    key = "model.diffusion_model.out.2.weight"
    twin = copy.deepcopy(model)  # copying (and pickling) brings the plain values back first
    assert torch.equal(twin.state_dict()[key], reference[key])
    doubled = model.to(torch.float64)  # .to / .float / .half
    assert torch.equal(doubled.state_dict()[key], reference[key].double())
    model, reference = released_model(37)
    model.load_state_dict(reference)  # loads into real storage, not into a released one
    assert torch.equal(model.state_dict()[key], reference[key])
    model, reference = released_model(38)
    model.train()  # training needs its plain parameters, and learns into them
    assert plain_bytes(model) == sum(v.numel() * 4 for v in reference.values())
    model, reference = released_model(39)
    with torch.no_grad():
        model.unet.out[2].weight.mul_(2)  # an in-place edit of a released weight edits its plain values
    assert torch.equal(model.state_dict()[key], 2 * reference[key])
    out = model.unet.out[2]
    h = torch.randn(1, out.in_channels, 8, 8)
    with torch.inference_mode():  # and the packed kernel uses the edited weight
        edited = out(h)
    stock = torch.nn.functional.conv2d(h, 2 * reference[key], out.bias, padding=1)
    assert torch.allclose(edited, stock, atol=1e-5, rtol=1e-4)


def test_a_training_model_is_never_released():
    model = random_model(sd1_config(), seed=40).train()
    prepack_for_cpu(model, release_dense=True)
    layer = model.unet.out[2]
    with torch.no_grad():
        layer(torch.randn(1, layer.in_channels, 8, 8))
    assert raw_weight(layer).untyped_storage().nbytes() > 0


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_a_packing_pass_packs_for_the_size_and_computes_nothing(stride, padding, dilation):
    """Inside `packing_pass` a packed layer makes its pack for the input it is given and answers zeros of its real
    output's shape; the real calls after it reuse that pack and give the stock result."""
    conv = torch.nn.Conv2d(3, 6, 3, stride=stride, padding=padding, dilation=dilation).eval().requires_grad_(False)
    linear = torch.nn.Linear(7, 5).eval().requires_grad_(False)
    plain = conv.weight.detach().clone()
    prepack_for_cpu(conv, release_dense=True)
    prepack_for_cpu(linear, release_dense=True)
    g = torch.Generator().manual_seed(4)
    x, rows = torch.randn(2, 3, 11, 9, generator=g), torch.randn(6, 7, generator=g)
    stock = torch.nn.functional.conv2d(x, plain, conv.bias, stride=stride, padding=padding, dilation=dilation)
    with torch.inference_mode():
        with cpu_kernels.packing_pass():
            shaped, shaped_rows = conv(x), linear(rows)
        assert shaped.shape == stock.shape and not shaped.any()
        assert shaped_rows.shape == (6, 5) and not shaped_rows.any()
        assert conv._pack_layout == (11, 9)
        packs = conv._pack[1], linear._pack[1]
        assert torch.allclose(conv(x), stock, atol=1e-5)
        assert torch.allclose(linear(rows), torch.nn.functional.linear(rows, linear.weight, linear.bias), atol=1e-6)
        assert (conv._pack[1], linear._pack[1]) == packs  # the real calls made no new pack


def count_packs(monkeypatch) -> list[str]:
    made = []
    for kind in (PackedConv2d, PackedLinear):
        original = kind._make_pack

        def counting(self, weight, example, original=original, name=kind.__name__):
            made.append(name)
            return original(self, weight, example)

        monkeypatch.setattr(kind, "_make_pack", counting)
    return made


def test_a_prepared_model_makes_no_pack_in_its_first_generation(monkeypatch, tmp_path):
    """Engine.prepare (run by the CLI before generating and by the app's worker after loading a model) packs every
    layer for the size, so the first generation's steps make no pack and give the same picture."""
    from safetensors.torch import save_file

    from sd_checkpoint_factory import sd1_state_dict
    from studio.engine import Engine, GenerationRequest

    path = tmp_path / "tiny-sd1.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(), seed=8)), str(path))
    request = GenerationRequest(prompt="a red circle", model=str(path), steps=3, width=64, height=64, cfg=3.0,
                                seed=2, device="cpu", dtype="fp32")
    lazy = Engine().run(request).image
    engine = Engine()
    made = count_packs(monkeypatch)
    assert engine.prepare(str(path), "cpu", "fp32", 64, 64)
    assert "PackedConv2d" in made and "PackedLinear" in made
    made.clear()
    prepared = engine.run(request).image
    assert made == []  # every layer was packed for this size before the first step
    assert (prepared == lazy).all()
    assert engine.prepare(str(path), "cpu", "fp32", 64, 64) and made == []  # twice costs no packing
    engine.run(request.replace(width=96, height=96))
    assert "PackedConv2d" in made  # another size packs again, as it did before prepare existed
    assert not Engine().prepare("tiny-random", "cpu", "fp32")  # nothing packed (tiny-random is never prepacked)
