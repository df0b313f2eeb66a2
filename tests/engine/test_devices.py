"""Device and precision choice, and the half-precision NaN fall-back of the VAE decode."""

import pytest
import torch

from studio.engine import devices
from studio.engine.errors import UserError
from studio.engine.loading import load_model
from studio.engine.devices import available_devices, resolve_device, resolve_dtype
from studio.engine.model import build_tiny_random
from studio.engine.pipeline import Engine
from studio.engine.request import GenerationRequest


def test_auto_picks_cuda_then_mps_then_cpu():
    device = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device.type == "cpu"
    assert "cpu" in available_devices()


def test_auto_dtype_is_fp32_on_cpu_and_half_on_gpus():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    events = list(Engine().generate(GenerationRequest(model="tiny-random", device="cuda", width=64, height=64)))
    assert events[-1].kind.value == "error" and "CUDA" in events[-1].message


def test_bf16_generation_runs_on_the_cpu():
    request = GenerationRequest(prompt="x", model="tiny-random", steps=3, width=64, height=64, dtype="bf16")
    run = Engine().run(request)
    assert run.image.shape == (64, 64, 3)
    # sampler state stays float32 whatever the model's dtype
    assert run.timeline[1].x_t.dtype == torch.float32


def test_half_precision_nan_decode_is_retried_in_fp32():
    model = build_tiny_random().to(torch.bfloat16)
    vae = model.vae
    real_decode = vae.decode
    calls = []

    def flaky_decode(z):
        calls.append(z.dtype)
        out = real_decode(z)
        return torch.full_like(out, float("nan")) if z.dtype != torch.float32 else out

    vae.decode = flaky_decode
    image = model.decode_latent(torch.randn(1, 4, 32, 32))
    assert torch.isfinite(image).all()
    assert calls == [torch.bfloat16, torch.float32]
    assert model.dtype == torch.bfloat16  # the model is back in its own precision afterwards


def test_nan_from_the_model_is_a_clear_error_event():
    model = build_tiny_random()
    model.unet.forward = lambda x, t, c: torch.full((x.shape[0], 4, *x.shape[2:]), float("nan"))
    engine = Engine(loader=lambda spec, device, dtype: model)
    events = list(engine.generate(GenerationRequest(prompt="x", model="m", steps=3, width=64, height=64)))
    assert events[-1].kind.value == "error" and "NaN" in events[-1].message
    assert events[-1].run.status == "failed" and len(events[-1].run.timeline) == 1  # kept for scrubbing


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_fast_precision_is_bf16_only_on_cpus_that_run_it_natively(monkeypatch, native, expected):
    import torch.cpu

    for name in devices.BF16_CPU_PROBES:
        monkeypatch.setattr(torch.cpu, name, lambda: native, raising=False)
    assert devices.cpu_runs_bf16_natively() is native
    assert resolve_dtype("fast", torch.device("cpu")) == expected
    assert resolve_dtype("fast", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # exact stays the default


def test_bf16_on_the_cpu_runs_the_autoencoder_in_bf16_and_returns_fp32(monkeypatch):
    monkeypatch.setattr(devices, "cpu_runs_bf16_natively", lambda: True)
    model = load_model("tiny-random", torch.device("cpu"), torch.bfloat16)
    assert model.dtype == torch.bfloat16 and {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert model.vae_dtype == torch.bfloat16  # half the VAE decode's time (docs/numerics.md, "Fast precision")
    reference = load_model("tiny-random", torch.device("cpu"), torch.float32)
    latent = torch.randn(1, 4, 8, 8)
    image = model.decode_latent(latent)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert torch.allclose(image, reference.decode_latent(latent), atol=0.05)  # bf16 keeps 8 significant bits
    encoded = model.encode_image(image)
    assert encoded.dtype == torch.float32 and encoded.shape == (1, 4, 8, 8)


def test_fast_precision_on_the_shipped_model_matches_fp32_closely(monkeypatch):
    """bf16 UNet, text encoder and VAE: measured 49.7–53.4 dB PSNR against fp32 over 8 held-out prompts."""
    import numpy as np

    monkeypatch.setattr(devices, "cpu_runs_bf16_natively", lambda: True)
    torch.set_num_threads(1)
    images = {}
    for dtype in ("fp32", "fast"):
        request = GenerationRequest(prompt="a big red star in the top left corner, on a blue background", seed=3,
                                    steps=12, width=64, height=64, dtype=dtype, device="cpu")
        images[dtype] = Engine().run(request).image.astype(np.float64)
    mse = ((images["fp32"] - images["fast"]) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 40
