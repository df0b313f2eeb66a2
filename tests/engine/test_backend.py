"""The engine's face (`studio.engine`): typed jobs in, immutable messages out, through LocalBackend."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from studio.engine import (
    VIEWS,
    Branch,
    Decoded,
    DecodeStep,
    EventKind,
    ForgetRun,
    Generate,
    GenerationRequest,
    Invert,
    JobFailed,
    LoadRuns,
    LocalBackend,
    ModelProbed,
    ProbeModel,
    RunsLoaded,
    RunSaved,
    SaveRun,
)

REQUEST = GenerationRequest(prompt="a red circle", model="tiny-random", steps=6, width=64, height=64, cfg=3.0, seed=5)


@pytest.fixture(scope="module")
def engine():
    from studio.engine import Engine

    return Engine()  # caches tiny-random between tests


@pytest.fixture
def backend(engine):
    backend = LocalBackend(lambda: engine)
    backend.start()
    return backend


def run_job(backend, job, cancel=None):
    return list(backend.execute(job, cancel or threading.Event()))


def test_a_generation_streams_frozen_snapshots_and_step_previews(backend):
    messages = run_job(backend, Generate(REQUEST, job_id=7))
    kinds = [m.kind for m in messages]
    assert kinds == [EventKind.STARTED] + [EventKind.STEP] * 6 + [EventKind.FINISHED]
    assert all(m.job_id == 7 for m in messages)
    steps = [m.step_info for m in messages if m.kind is EventKind.STEP]
    assert [s.index for s in steps] == list(range(6))
    sigmas = [s.sigma for s in steps]
    assert sigmas == sorted(sigmas, reverse=True)
    for step in steps:
        assert set(step.previews) == set(VIEWS)
        for image in step.previews.values():
            assert image.dtype == np.uint8 and image.shape[2] == 3 and not image.flags.writeable
    started, finished = messages[0].run, messages[-1].run
    assert started.id == finished.id and started.status == "running" and started.image is None
    assert finished.status == "finished" and finished.recorded == 6 and finished.steps == 6
    assert finished.image.shape == (64, 64, 3) and not finished.image.flags.writeable
    assert len(finished.sigmas) == 7
    # immutable: a UI cannot write to what it was told, and later messages never change earlier ones
    with pytest.raises(dataclasses.FrozenInstanceError):
        finished.status = "cancelled"  # type: ignore[misc]
    with pytest.raises(ValueError):
        finished.image[0, 0, 0] = 1
    assert messages[0].run.status == "running"


def test_branch_by_id_with_nothing_changed_reproduces_the_parent(backend):
    parent = run_job(backend, Generate(REQUEST))[-1].run
    child_messages = run_job(backend, Branch(REQUEST, parent.id, 3))
    child = child_messages[-1].run
    assert child.parent_id == parent.id and child.from_step == 3 and child.recorded == 6
    assert [m.step_info.index for m in child_messages if m.kind is EventKind.STEP] == [3, 4, 5]
    np.testing.assert_array_equal(child.image, parent.image)


def test_decode_save_load_and_forget(backend, tmp_path):
    run = run_job(backend, Generate(REQUEST))[-1].run
    (decoded,) = run_job(backend, DecodeStep(run.id, 2, "x0", job_id=3))
    assert isinstance(decoded, Decoded) and (decoded.run_id, decoded.index, decoded.job_id) == (run.id, 2, 3)
    assert decoded.image.shape == (64, 64, 3)

    path = str(tmp_path / "run.safetensors")
    assert run_job(backend, SaveRun(run.id, path)) == [RunSaved(0, run.id, path)]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    (loaded,) = run_job(backend, LoadRuns((path, str(junk))))
    assert isinstance(loaded, RunsLoaded) and len(loaded.runs) == 1 and len(loaded.errors) == 1
    assert "junk.safetensors" in loaded.errors[0]
    again = loaded.runs[0]
    assert again.run.id == run.id and again.run.status == "finished" and len(again.steps) == 6
    np.testing.assert_array_equal(again.run.image, run.image)

    assert run_job(backend, ForgetRun(run.id)) == []
    (failed,) = run_job(backend, DecodeStep(run.id, 0))
    assert isinstance(failed, JobFailed) and not failed.internal and "no longer loaded" in failed.message
    branch = run_job(backend, Branch(REQUEST, run.id, 1))
    assert branch[-1].kind is EventKind.ERROR and not branch[-1].internal


def test_a_model_file_is_not_a_run(backend, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    (loaded,) = run_job(backend, LoadRuns((str(path),)))
    assert loaded.runs == () and loaded.not_runs == (str(path),) and loaded.errors == ()


def test_probe_reports_what_the_ui_needs(backend):
    (probed,) = run_job(backend, ProbeModel("tiny-random", job_id=2))
    assert isinstance(probed, ModelProbed) and probed.job_id == 2
    info = probed.info
    assert info.spec == "tiny-random" and info.size_multiple > 0 and info.default_size % info.size_multiple == 0
    assert info.prediction in ("epsilon", "v") and info.default_cfg > 0


def test_a_probe_packs_the_model_for_the_asked_size_after_answering(backend, engine, monkeypatch):
    """The app probes a model when it is picked; the worker then packs its CPU weights for the picture's size
    (Engine.prepare), after the answer, so the first generation does not pay for it."""
    calls = []
    monkeypatch.setattr(engine, "prepare", lambda *args: calls.append(args))
    messages = backend.execute(ProbeModel("tiny-random", "cpu", "fp32", job_id=3, width=96, height=64),
                               threading.Event())
    assert isinstance(next(messages), ModelProbed) and calls == []  # the UI has its answer first
    assert list(messages) == [] and calls == [("tiny-random", "cpu", "fp32", 96, 64)]
    cancel = threading.Event()
    closing = backend.execute(ProbeModel("tiny-random", "cpu", "fp32", job_id=4), cancel)
    assert isinstance(next(closing), ModelProbed)
    cancel.set()  # the app is closing: the worker cancels its current job
    assert list(closing) == [] and len(calls) == 1  # no packing pass to wait for

    def out_of_memory(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(engine, "prepare", out_of_memory)
    answers = list(backend.execute(ProbeModel("tiny-random", "cpu", "fp32", job_id=5), threading.Event()))
    assert [type(a) for a in answers] == [ModelProbed]  # the probe still succeeds; the first generation packs


def test_user_mistakes_and_bugs_are_told_apart(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    mistake = run_job(backend, Generate(REQUEST.replace(steps=0)))
    assert mistake[-1].kind is EventKind.ERROR and not mistake[-1].internal and "steps" in mistake[-1].message

    class Broken:
        def generate(self, *args, **kwargs):
            raise ValueError("a bug deep inside")  # a ValueError from a bug is not the user's mistake

        def model(self, *args, **kwargs):
            raise KeyError("conv_in.weight")

    broken = LocalBackend(Broken)
    (error,) = run_job(broken, Generate(REQUEST))
    assert error.kind is EventKind.ERROR and error.internal
    assert "internal error" in error.message and "state" in error.message
    log = (tmp_path / "state" / "diffusion-studio" / "studio.log").read_text()
    assert "ValueError: a bug deep inside" in log and "Traceback" in log
    (failed,) = run_job(broken, ProbeModel("tiny-random"))
    assert isinstance(failed, JobFailed) and failed.internal and "KeyError" in failed.message


def test_cancel_keeps_the_steps_so_far(backend):
    cancel = threading.Event()
    messages = []
    for message in backend.execute(Generate(REQUEST.replace(steps=8)), cancel):
        messages.append(message)
        if message.kind is EventKind.STEP and message.step == 2:
            cancel.set()
    last = messages[-1]
    assert last.kind is EventKind.CANCELLED and last.run.status == "cancelled" and last.run.recorded == 2
    branch = run_job(backend, Branch(REQUEST.replace(steps=8), last.run.id, 1))
    assert branch[-1].kind is EventKind.FINISHED


def test_inversion_is_a_run_to_branch_from(backend):
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = (200, 40, 40)
    messages = run_job(backend, Invert(REQUEST.replace(steps=3, init_image=image), refine=0))
    run = messages[-1].run
    assert messages[-1].kind is EventKind.FINISHED and run.kind == "invert" and run.recorded == 3
    branch = run_job(backend, Branch(REQUEST.replace(steps=3, prompt="a blue square"), run.id, 1))
    assert branch[-1].kind is EventKind.FINISHED


def test_a_restored_run_previews_with_the_models_own_colours(backend, tmp_path):
    """A run file carries its model's latent → RGB map: restored previews equal the live ones, bit for bit."""
    shipped = REQUEST.replace(model="default", steps=3)  # its own (hidden-layer) map, unlike tiny-random's SD 1.5 one
    messages = run_job(backend, Generate(shipped))
    live = [m.step_info for m in messages if m.kind is EventKind.STEP]
    path = str(tmp_path / "run.safetensors")
    run_job(backend, SaveRun(messages[-1].run.id, path))
    fresh = LocalBackend(lambda: backend.engine)  # a new session: nothing in memory but the file
    (loaded,) = run_job(fresh, LoadRuns((path,)))
    for before, after in zip(live, loaded.runs[0].steps):
        for view in VIEWS:
            np.testing.assert_array_equal(before.previews[view], after.previews[view])
