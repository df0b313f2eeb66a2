"""Issue #14 on an SD-layout checkpoint: a colour hint and a reference-layout guide run on a random SD1 file (the
original single-file key layout, loaded by the engine like a user's checkpoint) on the CPU, forward and backward,
and backward guidance run to the last step moves the picture towards the hint. (CUDA and fp16: the device check
in benchmarks/bench_guidance_sd.py; this file runs on every machine.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd_checkpoint_factory import random_model, sd1_config, sd1_state_dict
from studio.engine import Engine, GenerationRequest, Guide

SIZE = 64
HINT = (0, 200, 0)


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd1") / "tiny-sd1.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(), seed=5)), str(path))
    return path


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine()
    torch.set_num_threads(threads)


def hint_picture() -> np.ndarray:
    hint = np.zeros((SIZE, SIZE, 4), np.uint8)
    hint[: SIZE // 2, : SIZE // 2] = (*HINT, 255)
    return hint


def request(path, **changes) -> GenerationRequest:
    return GenerationRequest(prompt="a red circle", model=str(path), steps=3, cfg=2.0, seed=1, width=SIZE,
                             height=SIZE, device="cpu", dtype="fp32", **changes)


def hint_error(image: np.ndarray) -> float:
    quarter = image[: SIZE // 2, : SIZE // 2].reshape(-1, 3).astype(np.float64)
    return float(np.abs(quarter.mean(axis=0) - HINT).mean())


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_colour_and_layout_guides_run_on_an_sd1_checkpoint(engine, sd1_file, mode):
    reference = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    guides = (Guide("colour", 10.0, hint_picture()), Guide("reference", 10.0, reference, "layout"))
    plain = engine.run(request(sd1_file))
    run = engine.run(request(sd1_file, guides=guides, guide_mode=mode, backward_steps=2, guide_steps=1.0))
    assert run.status == "finished" and bool(torch.isfinite(run.final_latent).all())
    steps = list(run.timeline)
    assert all(s.loss is not None and np.isfinite(s.loss) for s in steps)
    assert all(s.guidance is not None and s.guidance.float().abs().max() > 0 for s in steps)
    assert not np.array_equal(run.image, plain.image)


def test_backward_guidance_moves_an_sd1_picture_towards_the_hint(engine, sd1_file):
    plain = engine.run(request(sd1_file))
    guided = engine.run(request(sd1_file, guides=(Guide("colour", 1.0, hint_picture()),), guide_mode="backward",
                                guide_steps=1.0))
    # a random decoder cannot paint the quarter green (more steps plateau near 0.7), but it gets closer:
    # measured 94 → 72 (mean |RGB error| of the quarter's mean colour); a fixed step size of 1 left it at 94
    assert hint_error(guided.image) < 0.85 * hint_error(plain.image)
