"""Stage "text" (text-encoder distillation through the frozen UNet) on the tiny architecture: the UNet and VAE stay
bit-identical, only the text encoder learns, the loss starts where the teacher is, resume is exact, and the
student's captions never use the held-out grammar."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from studio.cli import main
from studio.engine.loading import save_studio_file
from studio.engine.model import LatentDiffusion
from studio.training import grammar
from studio.training import text_distill as td
from studio.training.config import tiny_model_config
from studio.training.data import Captioner, build_cache
from studio.training.scenes import HELD_OUT_TEMPLATES, SIZE_WORDS, sample_scene
from studio.training.train import Budget, load_checkpoint

SMALL = td.TextDistillConfig(batch_size=4, lr=2e-3, warmup_steps=1, total_steps=20, dataset_size=24, max_objects=3,
                             busy_masks=True, checkpoint_minutes=100.0)


def tiny_model(seed: int = 0) -> LatentDiffusion:
    torch.manual_seed(seed)
    return LatentDiffusion(tiny_model_config())


def frozen_state(model: LatentDiffusion) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(td.TEXT_PREFIX)}


def text_state(model: LatentDiffusion) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(td.TEXT_PREFIX)}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A 24-scene latent cache of the tiny model's VAE, under the name prepare_unet_data looks for."""
    folder = tmp_path_factory.mktemp("text-cache")
    model = tiny_model()
    cache = build_cache(model, SMALL.dataset_size, seed=10_000 + SMALL.data_seed, log=lambda _: None,
                        max_objects=SMALL.max_objects, busy=SMALL.busy_masks)
    from studio.training.train import encoder_fingerprint

    cache.save(folder / f"latents-{encoder_fingerprint(model)}-{SMALL.dataset_size}-{SMALL.data_seed}-o3b.pt")
    return folder


def test_template_captions_state_every_size():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = sample_scene(rng, 2)
        text = td.template_caption(scene, rng)
        for obj in scene.objects:
            assert any(re.search(rf"\b{re.escape(w)}\b", text) for w in SIZE_WORDS[obj.size]), text


def test_student_captions_never_use_the_held_out_grammar():
    rng = np.random.default_rng(4)
    filler = Captioner(49407, 77).filler
    held_out_templates = [re.compile(".+".join(re.escape(p) for p in re.split(r"\{\w+\}", t)), re.IGNORECASE)
                          for ts in HELD_OUT_TEMPLATES.values() for t in ts]
    colours = "|".join(w for ws in grammar.COLOUR_SYNONYMS.values() for w in ws)
    held_out_nouns = [re.compile(rf"\bin ({colours})\b", re.IGNORECASE), re.compile(r"\bsize\b", re.IGNORECASE)]
    students = set()
    for _ in range(2000):
        student, teacher = td.caption_pair(sample_scene(rng, 2), rng, td.TextDistillConfig(), filler)
        words = set(re.findall(r"[a-z]+", student.lower()))
        assert not words & grammar.HELD_OUT_WORDS, student
        assert not any(p.search(student) for p in held_out_templates + held_out_nouns), student
        assert teacher == teacher.strip() and teacher
        students.add(student)
    assert len(students) > 1900  # the grammar composes: nearly every caption is new


def test_loss_starts_at_zero_when_student_reads_the_template(cache_dir):
    model = tiny_model()
    teacher = td.copy.deepcopy(model.text_encoder)
    cache = td.prepare_unet_data(model, SMALL.cache_config(), cache_dir, lambda _: None)
    captioner = Captioner(model.config.pad_id, model.config.text.max_length)
    batch = td.distill_batch(cache, td.template_pool(cache), np.random.default_rng(0), SMALL, captioner, 1.0)
    assert all(len(cache.scenes[i].objects) <= 2 for i in td.template_pool(cache).tolist())
    batch.student_tokens = batch.teacher_tokens.clone()
    empty = torch.tensor(captioner.tokenizer([""], pad_id=captioner.pad_id, context_length=77))
    loss, parts = td.distill_loss(model, teacher, batch, empty, torch.Generator().manual_seed(0), 10.0)
    assert parts["distill"] == 0.0 and parts["preserve"] == 0.0 and float(loss.detach()) == 0.0


def test_only_the_text_encoder_learns_and_resume_is_exact(cache_dir, tmp_path):
    for name in cache_dir.iterdir():
        (tmp_path / name.name).symlink_to(name)
    model = tiny_model()
    frozen, before = frozen_state(model), text_state(model)
    progress = td.train_text(model, SMALL, tmp_path, Budget(steps=3), log=lambda _: None)
    assert progress["step"] == 3 and np.isfinite(progress["loss"])
    after = frozen_state(model)
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # UNet and VAE: bit-identical
    assert any(not torch.equal(before[k], v) for k, v in text_state(model).items())
    snapshot = load_file(str(tmp_path / "text-step00003.safetensors"))
    assert all(torch.equal(snapshot[k], frozen[k].half()) for k in frozen)

    # 3 steps + resume 2 more == 5 steps straight
    state = load_checkpoint(tmp_path / td.CHECKPOINT_NAME)
    resumed, teacher, cfg = td.restore(state)
    assert cfg == SMALL and all(torch.equal(teacher.state_dict()[k[len(td.TEXT_PREFIX) + len("transformer."):]], v)
                                for k, v in before.items())
    td.train_text(resumed, cfg, tmp_path, Budget(steps=5), state, teacher, snapshots=False, log=lambda _: None)
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    for name in cache_dir.iterdir():
        (straight_dir / name.name).symlink_to(name)
    straight = tiny_model()
    td.train_text(straight, SMALL, straight_dir, Budget(steps=5), snapshots=False, log=lambda _: None)
    for key, value in text_state(straight).items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6)


def test_cli_stage_text_trains_resumes_and_exports(cache_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in cache_dir.iterdir():
        (out / name.name).symlink_to(name)
    init = tmp_path / "init.safetensors"
    save_studio_file(tiny_model(), init)
    common = ["train", "--stage", "text", "--out", str(out), "--threads", "1", "--batch-size", "4",
              "--dataset-size", "24", "--checkpoint-minutes", "100"]
    assert main(common + ["--init", str(init), "--steps", "2"]) == 0
    assert main(common + ["--steps", "3"]) == 0  # resumes text.pt
    assert load_checkpoint(out / td.CHECKPOINT_NAME)["progress"]["step"] == 3
    exported = tmp_path / "distilled.safetensors"
    assert main(["train", "--stage", "text", "--out", str(out), "--export-only", "--export", str(exported)]) == 0
    original, distilled = load_file(str(init)), load_file(str(exported))
    assert original.keys() == distilled.keys()
    frozen = [k for k in original if not k.startswith(td.TEXT_PREFIX)]
    assert frozen and all(torch.equal(original[k], distilled[k]) for k in frozen)
    assert any(not torch.equal(original[k], distilled[k]) for k in original if k.startswith(td.TEXT_PREFIX))


def test_cli_teacher_option_sets_the_frozen_teacher(cache_dir, tmp_path):
    # continuing a distilled student: the teacher is another file's text encoder, kept across the resume
    out = tmp_path / "run"
    out.mkdir()
    for name in cache_dir.iterdir():
        (out / name.name).symlink_to(name)
    student, teacher = tmp_path / "student.safetensors", tmp_path / "teacher.safetensors"
    save_studio_file(tiny_model(0), student)
    save_studio_file(tiny_model(1), teacher)
    common = ["train", "--stage", "text", "--out", str(out), "--threads", "1", "--batch-size", "4",
              "--dataset-size", "24", "--checkpoint-minutes", "100"]
    assert main(common + ["--init", str(student), "--teacher", str(teacher), "--steps", "1"]) == 0
    assert main(common + ["--steps", "2"]) == 0
    state = load_checkpoint(out / td.CHECKPOINT_NAME)
    expected = {k[len(td.TEXT_PREFIX) + len("transformer."):]: v.float()
                for k, v in load_file(str(teacher)).items() if k.startswith(td.TEXT_PREFIX)}
    assert state["progress"]["step"] == 2 and state["teacher"].keys() == expected.keys()
    assert all(torch.equal(state["teacher"][k], expected[k]) for k in expected)
    initial = {k: v.float() for k, v in load_file(str(student)).items() if k.startswith(td.TEXT_PREFIX)}
    assert not all(torch.equal(state["model"][k], v) for k, v in initial.items())  # the student, not the teacher


def test_high_t_share_draws_from_the_schedule_upper_half():
    n, steps = 4000, 1000
    plain = td.sample_timesteps(n, steps, 0.0, torch.Generator().manual_seed(5))
    # share 0 is the plain uniform draw, the same numbers as before the option existed (resume stays exact)
    assert torch.equal(plain, torch.randint(0, steps, (n,), generator=torch.Generator().manual_seed(5)))
    assert 0.45 < float((plain >= steps // 2).float().mean()) < 0.55
    half = td.sample_timesteps(n, steps, 0.5, torch.Generator().manual_seed(5))
    assert int(half.min()) >= 0 and int(half.max()) < steps
    assert 0.70 < float((half >= steps // 2).float().mean()) < 0.80  # 0.5 + 0.5 · 0.5
    every = td.sample_timesteps(n, steps, 1.0, torch.Generator().manual_seed(5))
    assert int(every.min()) >= steps // 2 and int(every.max()) < steps


def test_two_object_share_sets_the_batch_mix(cache_dir):
    model = tiny_model()
    cache = td.prepare_unet_data(model, SMALL.cache_config(), cache_dir, lambda _: None)
    pool = td.template_pool(cache)
    two = np.array([len(cache.scenes[i].objects) == 2 for i in pool.tolist()])
    assert two.any() and not two.all()
    p = td.pool_probabilities(cache, pool, 0.8)
    assert abs(p.sum() - 1.0) < 1e-9 and abs(p[two].sum() - 0.8) < 1e-9
    assert np.allclose(p[two], p[two][0]) and np.allclose(p[~two], p[~two][0])
    # distill_batch draws with these probabilities: which scene each row came from shows in its latent (scale 1)
    captioner = Captioner(model.config.pad_id, model.config.text.max_length)
    latents = cache.latents.float().flatten(1)
    for share in (0.8, 0.1):
        cfg = td.dataclasses.replace(SMALL, batch_size=600, two_object_share=share)
        batch = td.distill_batch(cache, pool, np.random.default_rng(1), cfg, captioner, 1.0)
        rows = torch.cdist(batch.x0.flatten(1), latents).argmin(dim=1).tolist()
        drawn = np.mean([len(cache.scenes[r].objects) == 2 for r in rows])
        assert abs(drawn - share) < 0.06, (share, drawn)
