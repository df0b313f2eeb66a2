"""Branch from step k and DDIM inversion, on tiny-random."""

import numpy as np
import pytest
import torch

from studio.engine.pipeline import Engine
from studio.engine.request import GenerationRequest, RequestError
from studio.engine.run import Run
from studio.engine.samplers import SAMPLER_TABLE, samplers_for

BASE = GenerationRequest(prompt="a red circle", model="tiny-random", steps=8, width=64, height=64, seed=11, cfg=3.0)
# every sampler at its own default η (so the stochastic ones draw noise), plus DDIM with some noise
REPLAYS = [(name, None) for name in samplers_for("ldm")] + [("ddim", 0.5)]


@pytest.fixture(scope="module")
def engine(one_thread):
    return Engine()


@pytest.fixture(scope="module")
def parents(engine):
    cache = {}

    def parent(request):
        if request not in cache:
            cache[request] = engine.run(request)
        return cache[request]

    return parent


@pytest.mark.parametrize("sampler, eta", REPLAYS)
@pytest.mark.parametrize("k", [0, 3, 7])
def test_branch_with_nothing_changed_reproduces_the_image(engine, parents, sampler, eta, k):
    request = BASE.replace(sampler=sampler, eta=eta)
    assert request.eta == (SAMPLER_TABLE[sampler].default_eta if eta is None else eta)
    parent = parents(request)
    child = engine.run(request, parent=parent, from_step=k)
    assert np.array_equal(child.image, parent.image)
    assert torch.equal(child.final_latent, parent.final_latent)
    assert child.parent is parent and child.parent_id == parent.id and child.from_step == k


def test_branch_with_a_new_prompt_shares_the_prefix_and_differs_after(engine):
    parent = engine.run(BASE.replace(sampler="euler_a", eta=1.0))
    child = engine.run(parent.request.replace(prompt="a blue square"), parent=parent, from_step=4)
    assert len(child.timeline) == len(parent.timeline)
    for i in range(4):
        assert child.timeline[i] is parent.timeline[i]  # shared, not copied
    assert torch.equal(child.timeline[4].x_t, parent.timeline[4].x_t)
    assert not torch.equal(child.timeline[5].x_t, parent.timeline[5].x_t)
    assert not np.array_equal(child.image, parent.image)
    # only the branch's own steps cost memory
    assert child.timeline.nbytes == sum(s.nbytes for s in child.timeline.own_steps)
    assert len(child.timeline.own_steps) == 4


def test_branch_to_another_sampler_continues_below_the_branch_point(engine):
    parent = engine.run(BASE)
    child = engine.run(BASE.replace(sampler="dpmpp_2m", karras=True, steps=12), parent=parent, from_step=3)
    sigma_k = parent.timeline[3].level.sigma
    later = [lv.sigma for lv in child.grid[4:]]
    assert all(s < sigma_k for s in later)
    assert later == sorted(later, reverse=True) and later[-1] == 0
    assert child.image is not None and child.status == "finished"


def test_branch_with_a_new_seed_changes_only_the_remaining_noise(engine):
    parent = engine.run(BASE.replace(sampler="ddpm", eta=1.0))
    child = engine.run(parent.request.replace(seed=99), parent=parent, from_step=5)
    assert torch.equal(child.timeline[5].x_t, parent.timeline[5].x_t)
    assert not np.array_equal(child.image, parent.image)


def test_branch_of_a_branch_and_bad_step(engine):
    root = engine.run(BASE)
    child = engine.run(BASE.replace(cfg=5.0), parent=root, from_step=2)
    grandchild = engine.run(BASE.replace(cfg=5.0), parent=child, from_step=5)
    assert grandchild.timeline[1] is root.timeline[1] and grandchild.timeline[3] is child.timeline[3]
    assert np.array_equal(grandchild.image, child.image)
    with pytest.raises(RequestError, match="cannot branch from step 8"):
        engine.run(BASE, parent=root, from_step=8)


def test_branch_from_a_saved_run_file_is_identical(engine, tmp_path):
    parent = engine.run(BASE.replace(sampler="euler_a", eta=1.0))
    parent.save(tmp_path / "run.safetensors")
    loaded = Run.load(tmp_path / "run.safetensors")
    child = engine.run(loaded.request, parent=loaded, from_step=4)
    assert np.array_equal(child.image, parent.image)


def test_inverted_noise_regenerates_the_image(engine):
    """Invert (DDIM η = 0 upward, guidance 1), then DDIM forward from the found x_T: the latent comes back, far
    closer than a generation from an unrelated x_T with the same prompt."""
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    request = BASE.replace(init_image=image, cfg=1.0, steps=20)
    events = list(engine.invert(request))
    run = events[-1].run
    assert run.kind == "invert" and run.status == "finished"
    assert len(run.timeline) == 20 and len(run.grid) == 21  # x_T … x_1, plus the level it ends on
    assert [e.step for e in events if e.kind.value == "step"] == list(range(1, 41))  # 20 up + 20 down
    model = engine.model("tiny-random")
    z0 = model.encode_image(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)
    inverted_error = (run.final_latent - z0).pow(2).mean().sqrt()
    unrelated = engine.run(request.replace(init_image=None))
    unrelated_error = (unrelated.final_latent - z0).pow(2).mean().sqrt()
    assert inverted_error < 0.01 * unrelated_error


def test_inversion_then_branch_with_a_new_prompt_edits(engine):
    image = np.full((64, 64, 3), 128, np.uint8)
    run = [e for e in engine.invert(BASE.replace(init_image=image, cfg=1.0, steps=6))][-1].run
    same = engine.run(run.request, parent=run, from_step=2)
    assert np.array_equal(same.image, run.image)
    edited = engine.run(run.request.replace(prompt="a blue square", cfg=4.0), parent=run, from_step=2)
    assert not np.array_equal(edited.image, run.image)
