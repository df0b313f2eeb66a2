"""Damaged run files (#17 item 10): each fault found when the file is read, one sentence naming it; and a branch
refuses what it cannot change (item 8) in the engine itself, for the app as for the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from studio.engine.events import EventKind
from studio.engine.pipeline import Engine
from studio.engine.request import GenerationRequest, RequestError
from studio.engine.run import NotARunFile, Run

REQUEST = GenerationRequest(prompt="a", model="tiny-random", sampler="euler_a", steps=3, width=16, height=16,
                            cfg=2.0)


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def run_file(engine, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run.safetensors"
    engine.run(REQUEST).save(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return path, meta, load_file(str(path))


def damaged(tmp_path, run_file, meta=None, drop=(), tensors=None):
    _, base_meta, base_tensors = run_file
    meta = {**base_meta, **(meta or {})}
    all_tensors = {k: v for k, v in {**base_tensors, **(tensors or {})}.items() if k not in drop}
    path = tmp_path / "damaged.safetensors"
    save_file(all_tensors, str(path), metadata=meta)
    return path


def test_an_intact_run_file_loads(run_file):
    run = Run.load(run_file[0])
    assert len(run.timeline) == 3 and run.steps == 3 and run.request == REQUEST


@pytest.mark.parametrize("change, message", [
    (dict(meta={"grid": json.dumps([[999, 0.0047], [0, 0.99]])}), "records 3 steps but its grid has only 1"),
    (dict(drop=["eps.1"]), "eps.1 is missing"),
    (dict(drop=["x_t.1"]), "x_t.1 is missing"),
    (dict(tensors={"rng.1": torch.arange(100, dtype=torch.uint8)}), "rng.1 is not a random generator state"),
    (dict(meta={"from_step": "one"}), "from_step must be a whole number, got 'one'"),
    (dict(meta={"request": "[1, 2]"}), "its request is list, not an object of settings"),
    (dict(meta={"request": json.dumps({**REQUEST.settings(), "steps": "3"})}), 'the setting steps is "3", not a whole'),
    (dict(meta={"request": json.dumps({**REQUEST.settings(), "sampler": "plms"})}),
     "the setting sampler is 'plms', not one of"),
    (dict(meta={"grid": json.dumps([[999 - i, 0.001 + 0.0009 * i] for i in range(1001)])}),
     "its grid has 1000 steps but the request asks for 3"),
    (dict(meta={"grid": "[[1, NaN], [0, 1]]"}), "grid level 0 is not a [timestep, alpha_cumprod] pair"),
    (dict(meta={"grid": "[[1, 1], [1, 1], [1, 1], [1, 1]]"}), "its grid's noise levels do not fall step by step"),
    (dict(meta={"status": "exploded"}), "unknown status 'exploded'"),
    (dict(tensors={"x_t.2": torch.zeros(1, 4, 9, 8)}), "x_t.2 is [1, 4, 9, 8], the other steps [1, 4, 8, 8]"),
    (dict(tensors={"image": torch.zeros(16, 16, 3)}), "image is not an HxWx3 8-bit picture"),
    (dict(tensors={"x_t.5": torch.zeros(1, 4, 8, 8)}), "x_t.3 is missing"),
    (dict(meta={"request": json.dumps({**REQUEST.settings(), "width": 24})}),
     "its 8x8 latent does not belong to a 24x16 picture"),
    (dict(meta={"guidance_loss": '"x"'}), "guidance losses are not a list"),
])
def test_each_fault_is_one_sentence(tmp_path, run_file, change, message):
    path = damaged(tmp_path, run_file, **change)
    with pytest.raises(RequestError, match="damaged run file") as info:
        Run.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_model_file_is_not_a_run_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"format": "pt"})
    with pytest.raises(NotARunFile):
        Run.load(path)


def test_cosmetic_extras_fall_back_when_damaged(tmp_path, run_file):
    path = damaged(tmp_path, run_file, meta={"preview": "[" * 100_000, "lineage": "{"})
    run = Run.load(path)
    assert run.preview is None and run.saved_lineage == ()


@pytest.mark.parametrize("change, message", [
    (dict(width=32, height=32), "a branch keeps its run's size (16x16); it cannot change to 32x32"),
])
def test_a_branch_refuses_what_it_cannot_change(engine, run_file, change, message):
    parent = Run.load(run_file[0])
    events = list(engine.generate(REQUEST.replace(**change), parent=parent, from_step=1))
    assert events[-1].kind is EventKind.ERROR and message in events[-1].message
