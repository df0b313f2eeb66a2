"""Exact x̂0 decodes at every step for cheap decoders; a run's lineage and model hash, kept and written to PNGs."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from sd_checkpoint_factory import random_model, sd1_config
from studio.engine import (
    Branch,
    DecodeStep,
    EventKind,
    Generate,
    GenerationRequest,
    Invert,
    LoadRuns,
    LocalBackend,
    SaveRun,
    format_run_parameters,
    parse_parameters,
)
from studio.engine import pipeline
from studio.engine.loading import save_studio_file
from studio.engine.model import build_tiny_random

REQUEST = GenerationRequest(prompt="a red circle", model="tiny-random", steps=5, width=64, height=64, cfg=3.0, seed=5)


@pytest.fixture(scope="module")
def engine():
    from studio.engine import Engine

    return Engine(decode_steps=True)  # as the app's LocalBackend makes it


@pytest.fixture
def backend(engine):
    backend = LocalBackend(lambda: engine)
    backend.start()
    return backend


def run_job(backend, job):
    return list(backend.execute(job, threading.Event()))


def steps_of(messages):
    return [m.step_info for m in messages if m.kind is EventKind.STEP and m.step_info is not None]


# -- x̂0 decoded at every step --------------------------------------------------------------------------------------
def test_cheap_decoder_sends_the_exact_x0_of_every_step(backend):
    messages = run_job(backend, Generate(REQUEST))
    run = messages[-1].run
    assert run.cheap_decode
    steps = steps_of(messages)
    assert len(steps) == 5
    for step in steps:
        assert step.decoded.shape == (64, 64, 3) and step.decoded.dtype == np.uint8 and not step.decoded.flags.writeable
        # the picture the Decode button's full VAE decode gives (which rebuilds x̂0 from the timeline's float16 ε̂,
        # so a few pixels may differ by one level)
        exact = run_job(backend, DecodeStep(run.id, step.index, "x0"))[0].image
        assert np.abs(step.decoded.astype(int) - exact).max() <= 2
    assert not np.array_equal(steps[0].decoded, steps[-1].decoded)


def test_expensive_decoder_keeps_the_latent_map(backend, monkeypatch):
    monkeypatch.setattr(pipeline, "CHEAP_DECODE_BUDGET", 0)
    messages = run_job(backend, Generate(REQUEST))
    assert not messages[-1].run.cheap_decode
    assert all(step.decoded is None for step in steps_of(messages))
    assert all(step.previews["x0"].shape == (32, 32, 3) for step in steps_of(messages))


def test_the_rule_keeps_sd_sized_decoders_out():
    tiny, sd = build_tiny_random(), random_model(sd1_config())
    assert pipeline.decodes_cheaply(tiny, 64, 64) and not pipeline.decodes_cheaply(tiny, 512, 512)
    # the SD decoder at full width has 49.5 M parameters: a 64 px picture is already past the budget
    assert 49.5e6 * 64 * 64 > pipeline.CHEAP_DECODE_BUDGET
    assert sum(p.numel() for p in sd.vae.decoder.parameters()) * 512 * 512 > pipeline.CHEAP_DECODE_BUDGET


def test_a_branch_shares_its_parents_decodes_and_decodes_its_own(backend):
    parent = run_job(backend, Generate(REQUEST))
    parent_steps = steps_of(parent)
    child = run_job(backend, Branch(REQUEST.replace(prompt="a blue square"), parent[-1].run.id, 2))
    child_steps = steps_of(child)
    assert [s.index for s in child_steps] == [2, 3, 4] and all(s.decoded is not None for s in child_steps)
    live = backend.run(child[-1].run.id)
    assert live.step_info(1).decoded is parent_steps[1].decoded  # shared, not decoded again


def test_inversion_decodes_its_recorded_steps(backend):
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = (220, 40, 40)
    messages = run_job(backend, Invert(REQUEST.replace(init_image=image, cfg=1.0), refine=0))
    recorded = steps_of(messages)
    assert len(recorded) == 5 and all(s.decoded is not None for s in recorded)


# -- lineage and model hash -----------------------------------------------------------------------------------------
def test_lineage_reaches_the_png_and_survives_the_run_file(backend, tmp_path):
    root = run_job(backend, Generate(REQUEST))[-1].run
    child_request = REQUEST.replace(prompt="a blue square", seed=9, sampler="euler_a")
    child = run_job(backend, Branch(child_request, root.id, 3))[-1].run
    grandchild = run_job(backend, Branch(child_request.replace(cfg=5.0), child.id, 4))[-1].run
    assert [(r.prompt, k) for r, k in grandchild.lineage] == [("a blue square", 4), ("a red circle", 3)]

    text = format_run_parameters(grandchild)
    assert "Branched from: " in text and text.splitlines()[0] == "a blue square"
    settings = parse_parameters(text)
    assert settings["cfg"] == 5.0 and settings["seed"] == 9
    parent, root_entry = settings["lineage"]
    assert parent["from_step"] == 4 and parent["settings"]["cfg"] == 3.0 and parent["settings"]["sampler"] == "euler_a"
    assert root_entry["from_step"] == 3 and root_entry["settings"]["seed"] == 5
    replayed_root = GenerationRequest.from_settings(root_entry["settings"])
    assert replayed_root == REQUEST  # the root is reproducible from the PNG alone

    # saved alone (its parents not loaded), the branch still knows where it came from
    run_job(backend, SaveRun(grandchild.id, str(tmp_path / "g.safetensors")))
    loaded = run_job(LocalBackend(lambda: backend.engine), LoadRuns((str(tmp_path / "g.safetensors"),)))[0]
    info = loaded.runs[0].run
    assert info.parent_id == child.id and [(r.seed, k) for r, k in info.lineage] == [(9, 4), (5, 3)]
    assert format_run_parameters(info) == text
    assert info.cheap_decode and all(step.decoded is None for step in loaded.runs[0].steps)  # decodes are not saved


def test_a_run_records_its_model_files_short_hash(backend, tmp_path):
    path = tmp_path / "my-model.safetensors"
    save_studio_file(build_tiny_random(), path)
    request = REQUEST.replace(model=str(path), steps=2)
    run = run_job(backend, Generate(request))[-1].run
    assert run.model_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    text = format_run_parameters(run)
    assert f"Model hash: {run.model_hash}, Model: my-model," in text and str(tmp_path) not in text
    assert run_job(backend, Generate(REQUEST))[-1].run.model_hash is None  # built-in: its name, no hash


def test_scripts_and_the_cli_do_not_pay_for_step_decodes():
    """Engine() without decode_steps (the CLI, evaluation, scripts) sends no per-step decodes."""
    from studio.engine import Engine

    backend = LocalBackend(lambda: Engine())
    backend.start()
    steps = steps_of(run_job(backend, Generate(REQUEST)))
    assert len(steps) == 5 and all(step.decoded is None for step in steps)
