"""Device "openvino": the UNet's calls on OpenVINO, the rest of the engine unchanged (studio/engine/openvino_unet.py).

The shipped model is converted once for the module (its IR lands in a temporary cache directory); every test
compares against the same model on torch's CPU path, the reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from studio.engine import Engine, GenerationRequest, UserError, available_devices
from studio.engine import devices, openvino_unet, user_cache
from studio.engine.devices import resolve_device

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(user_cache.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def accelerated(cache):
    return Engine().model("default", "openvino", "fp32")


@pytest.fixture(scope="module")
def reference():
    return Engine().model("default", "cpu", "fp32")


def unet_inputs(model, batch: int, height: int, width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    config = model.unet.config
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    t = torch.linspace(50, 950, batch)
    return x, t, torch.randn(batch, 77, config.context_dim, generator=g)


@pytest.mark.parametrize("batch, height, width", [(2, 16, 16), (1, 24, 12), (3, 10, 18)])
def test_unet_calls_match_torch_at_any_batch_and_size(accelerated, reference, batch, height, width):
    x, t, context = unet_inputs(reference, batch, height, width)
    with torch.inference_mode():
        ours, theirs = reference.unet(x, t, context), accelerated.unet(x, t, context)
    assert theirs.shape == ours.shape and theirs.dtype == ours.dtype
    assert ((theirs - ours).norm() / ours.norm()).item() < 1e-4  # float32 both, summed in another order


def test_gradients_run_on_the_torch_unet(accelerated, reference):
    # forward universal guidance differentiates through the UNet: OpenVINO has no backward, the torch UNet does
    x, t, context = unet_inputs(reference, 1, 16, 16, seed=1)
    grads = []
    for model in (reference, accelerated):
        probe = x.clone().requires_grad_(True)
        model.unet(probe, t, context).square().mean().backward()
        grads.append(probe.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_a_generation_on_openvino_matches_the_cpu_one(accelerated, cache):
    request = GenerationRequest(prompt="a big red star on the left, on a blue background", seed=5, steps=12)
    images = [np.asarray(Engine().run(dataclasses.replace(request, device=d)).image, np.float64)
              for d in ("cpu", "openvino")]
    mse = ((images[0] - images[1]) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 60


def test_prepare_compiles_for_the_pictures_size_and_other_sizes_still_run(cache):
    engine = Engine()
    assert engine.prepare("default", "openvino", "fp32", 64, 48)
    model = engine.model("default", "openvino", "fp32")
    compiled = model.unet.openvino
    factor = model.downsample_factor
    assert list(compiled.static) == [(2, 48 // factor, 64 // factor, 77)] and compiled.dynamic is None
    (_, request), = compiled.static.values()
    assert request.latency > 0  # it already ran once: OpenVINO's first-inference setup happened at load
    request = GenerationRequest(prompt="a big red star on the left, on a blue background", seed=7, steps=6,
                                width=64, height=48)
    prepared = np.asarray(engine.run(dataclasses.replace(request, device="openvino")).image, np.float64)
    assert compiled.dynamic is None  # the CFG batch of that size ran on the static form
    reference = np.asarray(Engine().run(dataclasses.replace(request, device="cpu")).image, np.float64)
    mse = ((prepared - reference) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 60

    other = np.asarray(engine.run(dataclasses.replace(request, device="openvino", width=48)).image)
    assert other.shape == (48, 48, 3) and compiled.dynamic is not None  # any other size: the dynamic form


def test_a_model_packed_by_prepare_on_the_cpu_still_converts(cache):
    engine = Engine()
    engine.prepare("default", "cpu", "fp32", 64, 64)  # packs inside inference mode
    from studio.engine.openvino_unet import accelerate

    faster = accelerate(engine.model("default", "cpu", "fp32"), torch.float32)
    x, t, context = unet_inputs(faster, 2, 16, 16, seed=3)
    with torch.inference_mode():
        ours, theirs = engine.model("default", "cpu", "fp32").unet(x, t, context), faster.unet(x, t, context)
    assert ((theirs - ours).norm() / ours.norm()).item() < 1e-4


def test_the_second_start_reads_the_converted_unet_from_the_cache(accelerated, cache, monkeypatch):
    (folder,) = (cache / "openvino").iterdir()
    assert (folder / "unet.xml").is_file() and (folder / "unet.bin").is_file()
    assert not list(folder.glob("*.partial.*"))

    def no_conversion(unet):
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(openvino_unet, "_convert", no_conversion)
    model = Engine().model("default", "openvino", "fp32")
    assert hasattr(model.unet, "openvino")


def test_compiled_blobs_an_earlier_version_cached_are_removed(accelerated, cache):
    (folder,) = (cache / "openvino").iterdir()
    stale = folder / "compiled" / "1234.blob"
    stale.parent.mkdir()
    stale.write_bytes(b"\0" * 1024)
    Engine().model("default", "openvino", "fp32")
    assert not (folder / "compiled").exists() and (folder / "unet.xml").is_file()


def test_the_cache_key_follows_the_files_precision_and_architecture(accelerated):
    key = openvino_unet.cache_key(accelerated, torch.float32)
    assert key == openvino_unet.cache_key(accelerated, torch.float32)
    assert key != openvino_unet.cache_key(accelerated, torch.bfloat16)
    path, signature = accelerated.source_files[0]
    edited = type("Edited", (), {"source_files": ((path, (signature, "changed")),), "config": accelerated.config})()
    assert openvino_unet.cache_key(edited, torch.float32) != key


def test_without_openvino_the_device_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setattr(openvino_unet, "available", lambda: False)
    assert "openvino" not in available_devices()
    with pytest.raises(UserError, match=r"pip install 'diffusion-studio\[openvino\]'"):
        resolve_device("openvino")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_openvino_is_offered_where_it_is_installed():
    assert openvino_unet.available()  # a test dependency: the accelerator is checked in CI, not skipped
    assert "openvino" in available_devices()


def test_the_loaded_model_is_left_as_it_was(accelerated, reference):
    from studio.engine.openvino_unet import accelerate

    faster = accelerate(reference, torch.float32)
    assert hasattr(faster.unet, "openvino") and not hasattr(reference.unet, "openvino")
    assert faster.unet.out[2] is reference.unet.out[2]  # the weights are shared, not copied
    assert faster.unet.forward != reference.unet.forward


def test_converting_sends_no_usage_reports(accelerated):
    import sys
    import threading

    from studio.engine.openvino_unet import accelerate
    from studio.engine.model import build_tiny_random

    # OpenVINO's converter would report usage from background threads; its telemetry package is kept out
    before = set(threading.enumerate())
    accelerate(build_tiny_random(), torch.float32)  # no files: converted afresh
    assert sys.modules.get("openvino_telemetry") is None
    assert set(threading.enumerate()) <= before
