"""Memory decided before it is allocated (#17 items 3, 14): estimates that cover what a decode and a UNet call
really take, tiling chosen from them, sizes refused with what fits, and the CPU's out-of-memory wording caught."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.engine import limits, memory, tiling
from studio.engine.model import ModelConfig, build_tiny_random
from studio.engine.pipeline import Engine, _oom_message
from studio.engine.request import GenerationRequest, RequestError
from studio.engine.unet import UNetConfig
from studio.engine.vae import VAEConfig

ROOT = Path(__file__).resolve().parents[2]
# An SD-shaped network at 1/10 of SD's width: four levels, attention at three of them (tiny-random has two levels)
MINI_UNET = UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), attention_levels=(0, 1, 2), num_heads=4,
                       context_dim=32, norm_groups=8)
MINI_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), norm_groups=8)

MEASURE = textwrap.dedent("""
    import json, sys, torch
    from studio.engine.model import LatentDiffusion, ModelConfig
    from studio.engine.text_encoder import TextEncoderConfig
    from studio.engine.unet import UNetConfig
    from studio.engine.vae import VAEConfig
    torch.set_num_threads(1)
    what, side, mini = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "mini"
    config = ModelConfig.tiny()
    if mini:
        config = ModelConfig(unet=UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), attention_levels=(0, 1, 2),
                                             num_heads=4, context_dim=32, norm_groups=8),
                             vae=VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), norm_groups=8), text=TextEncoderConfig.tiny())
    model = LatentDiffusion(config).eval()
    z = torch.randn(1, 4, side, side)

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with torch.inference_mode():
        if what == "decode":  # warm up at a small size, so the one-off allocations are in the baseline
            model.decode_latent(z[..., :8, :8], tiled=False)
        else:
            model.unet(torch.cat([z, z])[..., :8, :8], torch.tensor([1.0, 1.0]), torch.randn(2, 77, 32))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to what is resident now (Linux's proc(5), clear_refs)
        base = status("VmRSS:")
        if what == "decode":
            model.decode_latent(z, tiled=False)
        elif what == "attention":
            model.vae.decoder.mid.attn_1(torch.randn(1, config.vae.ch * config.vae.ch_mult[-1], side, side))
        else:
            model.unet(torch.cat([z, z]), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32))
    print(json.dumps(status("VmHWM:") - base))
""")


def measured_peak(what: str, side: int, mini: bool) -> int:
    """Peak RSS growth of one call, in a fresh child whose peak is reset just before it."""
    result = subprocess.run([sys.executable, "-c", MEASURE, what, str(side), "mini" if mini else "tiny"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SLACK = 48 * 2**20  # allocator and kernel workspaces that do not grow with the picture


@pytest.mark.parametrize("what, side, mini", [("decode", 64, False), ("decode", 48, True), ("unet", 96, False),
                                              ("unet", 64, True)])
def test_estimates_cover_the_measured_peak(what, side, mini):
    """The estimate must not be below what the call takes (or tiling and refusals come too late), nor wildly above
    (or a size that fits is refused)."""
    peak = measured_peak(what, side, mini)
    tiny = ModelConfig.tiny()
    if what == "decode":
        estimate = memory.decode_bytes(MINI_VAE if mini else tiny.vae, (side, side), 1, torch.float32)
    else:
        estimate = memory.unet_bytes(MINI_UNET if mini else tiny.unet, (side, side), 2, torch.float32)
    assert estimate + SLACK >= peak, f"estimate {estimate / 2**20:.0f} MiB < measured {peak / 2**20:.0f} MiB"
    assert estimate <= 6 * peak + SLACK, f"estimate {estimate / 2**20:.0f} MiB ≫ measured {peak / 2**20:.0f} MiB"


def test_vae_attention_memory_grows_linearly_with_the_pixels():
    """A 128×128 latent: 16384 tokens, whose (HW)² scores alone would take 1 GiB (2.3 GiB measured when strided
    inputs sent SDPA down its math path). The fused kernels need a few MiB."""
    assert measured_peak("attention", 128, False) < 256 * 2**20


def test_the_tile_choice_follows_the_estimate(monkeypatch):
    model = build_tiny_random()
    calls = []
    real = tiling.decode_tiled
    monkeypatch.setattr(tiling, "decode_tiled", lambda vae, z: calls.append(z.shape) or real(vae, z, 16, 4))
    z = torch.randn(1, 4, 40, 40)
    whole = tiling.decode_bytes(model.vae, z.shape, torch.float32)
    monkeypatch.setattr(tiling, "available_memory", lambda device: int(whole / 0.8) + 1)
    model.decode_latent(z)
    assert not calls  # fits: one piece
    monkeypatch.setattr(tiling, "available_memory", lambda device: int(whole / 0.8) - 1)
    model.decode_latent(z)
    assert calls  # does not fit by the estimate: tiles, without trying (and overcommitting) the whole first


def _fits(model, request, free):
    return limits.run_bytes(model, request, request.width, request.height, free) <= limits.HEADROOM * free


def test_a_size_that_does_not_fit_is_refused_with_one_that_does(monkeypatch):
    model = build_tiny_random()
    free = 400 * 2**20
    monkeypatch.setattr(tiling, "available_memory", lambda device: free)
    request = GenerationRequest(model="tiny-random", width=4096, height=2048)
    with pytest.raises(RequestError, match=r"4096x2048 needs about .* GiB of memory but only 400 MiB is "
                                           r"available; about (\d+)x(\d+) would fit") as info:
        limits.check_for_model(model, request)
    w, h = (int(v) for v in str(info.value).rsplit("about ", 1)[1].split(" ")[0].split("x"))
    assert w % 2 == 0 and h % 2 == 0 and 1.8 < w / h < 2.2  # the model's multiple, about the same aspect
    assert _fits(model, request.replace(width=w, height=h), free)
    limits.check_for_model(model, request.replace(width=w, height=h))  # and it is accepted


def _address_space(limit: int):
    def apply() -> None:  # in the child: `ulimit -v`
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def test_available_memory_honours_ulimit_v():
    code = ("import torch; from studio.engine.tiling import available_memory; "
            "print(available_memory(torch.device('cpu')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_address_space(3_000_000_000))
    assert result.returncode == 0, result.stderr
    assert 0 < int(result.stdout) < 3_000_000_000


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 68719476736 bytes."),
                                   MemoryError()])
def test_cpu_out_of_memory_ends_the_run_with_one_sentence(monkeypatch, error):
    engine = Engine()
    model = engine.model("tiny-random", "cpu", "fp32")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(model.unet, "forward", fail)
    events = list(engine.generate(GenerationRequest(prompt="x", model="tiny-random", device="cpu", dtype="fp32",
                                                    steps=2, width=16, height=16)))
    assert events[-1].kind.name == "ERROR"
    assert events[-1].message == _oom_message(GenerationRequest(width=16, height=16))


def test_sizes_beyond_the_fixed_limit_need_no_model():
    with pytest.raises(RequestError, match="width must be at most 16384 px, got 100000"):
        limits.validate_limits(GenerationRequest(width=100000))


@pytest.mark.parametrize("field, value, message", [
    ("feather", 1e9, "feather must be a number of pixels from 0 to 128"),
    ("feather", float("inf"), "feather must be"), ("feather", float("nan"), "feather must be"),
    ("grow", 100000, "grow must be a whole number of pixels from 0 to 128"), ("grow", -1, "grow must be"),
    ("padding", 10**9, "padding must be"), ("eta", 1e308, "eta must be at most 10"),
    ("cfg", 10**40, "CFG scale must be at most 100"), ("prompt", "x" * 20001, "the prompt is 20,001 characters long"),
    ("negative_prompt", "caf\udce9", "the negative prompt is not valid text"),
])
def test_mask_and_prompt_bounds(field, value, message):
    with pytest.raises(RequestError, match=message):
        limits.validate_limits(GenerationRequest(**{field: value}))


def test_the_issue_14_run_stays_small():
    """tiny-random at 512 px (a 256×256 latent, SD's at 2048 px) grew to 24 GB: the decode's estimate now covers it
    and stays far below that."""
    tiny = build_tiny_random()
    assert tiling.decode_bytes(tiny.vae, (1, 4, 256, 256), torch.float32) < 2 * 2**30
    image = np.zeros((512, 512, 3), np.uint8)
    assert limits.run_bytes(tiny, GenerationRequest(width=512, height=512, init_image=image), 512, 512,
                            2**34) < 4 * 2**30
