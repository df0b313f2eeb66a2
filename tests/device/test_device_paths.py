"""The device paths, run on the device named by STUDIO_TEST_DEVICE (cpu by default; benchmarks/device_check.sh runs
them with cuda or mps): every reduced precision the device offers, against fp32 on the CPU, the reference.

On the CPU these are the bf16 paths ("fast" precision); on a GPU, fp16 and bf16 (docs/numerics.md). Each check runs
the shipped model at 64 px, so the whole file takes seconds on the CPU.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from studio.engine import Engine, GenerationRequest, Guide

pytestmark = pytest.mark.device

DEVICE = os.environ.get("STUDIO_TEST_DEVICE", "cpu")
PROMPT = "a big red star in the top left corner, on a blue background"
# Lowest PSNR (dB) of a reduced-precision image against the fp32 CPU image. Measured on the CPU: bf16 47.9–56 dB
# over 8 held-out prompts at 25 steps. fp16 keeps 3 more mantissa bits than bf16, so it must do at least as well.
MIN_PSNR = {"bf16": 38.0, "fp16": 38.0}


def reduced_precisions() -> list[str]:
    if DEVICE == "cpu":
        return ["bf16"]
    if DEVICE == "mps":
        return ["fp16"]
    return ["fp16", "bf16"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def request(**changes) -> GenerationRequest:
    base = GenerationRequest(prompt=PROMPT, seed=5, steps=10, width=64, height=64, device=DEVICE, dtype="fp32")
    return base.replace(**changes)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    torch.set_num_threads(1)
    return Engine().run(request(device="cpu")).image


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def test_the_device_exists():
    if DEVICE == "cuda":
        assert torch.cuda.is_available(), "STUDIO_TEST_DEVICE=cuda on a machine whose torch sees no CUDA GPU"
    elif DEVICE == "mps":
        assert torch.backends.mps.is_available(), "STUDIO_TEST_DEVICE=mps without Metal"
    else:
        assert DEVICE == "cpu"


@pytest.mark.parametrize("dtype", reduced_precisions())
def test_reduced_precision_matches_fp32(engine, reference, dtype):
    run = engine.run(request(dtype=dtype))
    assert run.status == "finished" and run.image.shape == (64, 64, 3)
    assert psnr(run.image, reference) >= MIN_PSNR[dtype]
    assert run.timeline[-1].x_t.dtype == torch.float32  # the sampler's state stays fp32 in every precision


def test_fp32_on_the_device_matches_the_cpu(engine, reference):
    image = engine.run(request()).image
    assert psnr(image, reference) >= (math.inf if DEVICE == "cpu" else 45.0)


@pytest.mark.parametrize("dtype", reduced_precisions())
def test_guidance_in_reduced_precision(engine, dtype):
    """Forward and backward guidance differentiate through the UNet and the decoder in the model's precision
    (gradients accumulate in fp32): a hint the prompt leaves open must pull the guided quarter towards it."""
    hint = np.zeros((64, 64, 4), np.uint8)
    hint[32:, 32:] = (40, 170, 60, 255)  # green over the bottom-right quarter
    guided = request(prompt="", cfg=1.0, dtype=dtype, guides=(Guide("colour", 1.0, hint),))
    plain = engine.run(guided.replace(guides=()))
    for mode in ("forward", "backward"):
        run = engine.run(guided.replace(guide_mode=mode))
        assert np.isfinite(run.image.astype(np.float64)).all()
        distance = lambda image: np.abs(image[32:, 32:].reshape(-1, 3).mean(0) - (40, 170, 60)).sum()  # noqa: E731
        assert distance(run.image) < distance(plain.image), mode


def test_branch_replays_on_the_device(engine):
    run = engine.run(request(dtype=reduced_precisions()[0], sampler="euler_a"))
    branch = engine.run(run.request, parent=run, from_step=4)
    if DEVICE == "cpu":
        assert np.array_equal(branch.image, run.image)
    else:  # GPU kernels may pick other algorithms between calls; the replay must still be the same picture
        assert psnr(branch.image, run.image) >= 45.0
