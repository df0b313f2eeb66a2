"""Stage "text": teach the text encoder the free caption grammar through the frozen UNet (issue #20).

The shipped UNet draws the template captions well; what it lacks on people's phrasings is mostly language (new
synonyms, clause order, fillers), which lives in the text encoder. So the UNet and the VAE stay frozen, bit for bit,
and only the text encoder (the student, started from the shipped one) learns, by distillation through the UNet: for
a cached scene latent z0, a random t and noise, x_t = √ᾱ·z0 + √(1−ᾱ)·ε (DDPM eq. 4), the UNet's prediction with
the student's context of a free-grammar caption must match its prediction with the frozen teacher's context of the
same scene's template caption (the sentences the shipped model was trained on):

    L_distill  = ‖f_θ(x_t, t, E_s(c_free)) − f_θ(x_t, t, E_t(c_template))‖²
    L_preserve = ‖E_s(c_template) − E_t(c_template)‖² + ‖E_s("") − E_t("")‖²
    L          = L_distill + preserve_weight · L_preserve

f_θ is the UNet's own output (v for the shipped model), so the student is taught in the quantity the sampler uses.
The preservation term keeps the template captions, and the empty caption that classifier-free guidance subtracts
(Ho & Salimans 2022, eq. 6), where they were: the held-out-template behaviour cannot drift away unnoticed. Only the
held-out grammar's *training* half reaches the student (grammar.compose(held_out=False)); the held-out grammar
stays unseen. A step costs one UNet pass without gradients (teacher) and one with gradients into the context only.

Like train.py: an EMA of the student is what gets exported, `<out>/text.pt` resumes exactly (each step's data and
noise come from generators seeded with (seed, step)), and the loop stops cleanly on a time or step budget or SIGTERM.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..engine import LatentDiffusion
from ..engine.loading import save_studio_file
from ..engine.model import ModelConfig
from ..engine.schedules import q_sample
from . import grammar
from .config import TrainConfig
from .data import Captioner, LatentCache
from .descent import checked_step
from .scenes import SIZE_WORDS, Scene, caption, with_filler
from .train import (EMA, Budget, checkpoint_state, learning_rate, load_checkpoint, optimizer_state,
                    prepare_unet_data, step_rngs, write_checkpoint)

Log = Callable[[str], None]
CHECKPOINT_NAME = "text.pt"
TEXT_PREFIX = "cond_stage_model."
TEMPLATE_OBJECTS = 2  # scenes.caption has templates for one or two objects; the teacher knows nothing else


@dataclass(frozen=True)
class TextDistillConfig:
    batch_size: int = 32  # scenes per step: one teacher UNet pass and one student pass (with backward) each
    lr: float = 3e-4  # AdamW peak; the token rows of new synonyms (tiny, disc, aqua, …) start untrained
    warmup_steps: int = 50
    total_steps: int = 4000  # length of the cosine decay to min_lr_ratio·lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # the exported weights; ~200 steps of memory suits a run of a few thousand steps
    # share of student captions that are the teacher's own template with filler words (scenes.with_filler): the rest
    # come from the free grammar's training half. Plain templates are in the preservation term already.
    template_share: float = 0.2
    preserve_weight: float = 10.0  # on the per-element context MSE (contexts are layer-normed, ~unit scale)
    full_mask: float = 0.5  # share of text-to-image samples (mask 1, grey image); the rest use the cache's hole
    # share of samples whose t is drawn from the upper half of the schedule, [T/2, T), the rest from all of it: at
    # high noise the v-target is mostly -x0 (v = √ᾱ·ε − √(1−ᾱ)·x0, Salimans & Ho 2022 eq. 10), i.e. the layout the
    # caption decides (objects, colours, sides); at low noise it is mostly ε, which the text barely changes. 0 keeps
    # the plain uniform t (and the same random draws as before the option existed).
    high_t_share: float = 0.0
    # share of scenes with two objects (attribute binding); 0: scenes drawn uniformly from the template pool
    two_object_share: float = 0.0
    # the latent cache of the #20 fine-tunes (data_seed 20, up to 3 objects, busy holes) is reused as it is
    dataset_size: int = 24_000
    data_seed: int = 20
    max_objects: int = 3
    busy_masks: bool = True
    seed: int = 0
    checkpoint_minutes: float = 10.0  # also the snapshot interval (text-step*.safetensors beside the checkpoint)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TextDistillConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def cache_config(self) -> TrainConfig:
        return TrainConfig(stage="unet", dataset_size=self.dataset_size, data_seed=self.data_seed,
                           max_objects=self.max_objects, busy_masks=self.busy_masks, object_weight=0.0)


# ---- captions -----------------------------------------------------------------------------------------------------


_SIZE_PATTERNS = {size: re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")
                  for size, words in SIZE_WORDS.items()}


def template_caption(scene: Scene, rng: np.random.Generator, tries: int = 20) -> str:
    """A training-template caption that states every object's size: scenes.caption leaves a size out one time in
    ten, and a teacher told less than the student would pull the student's sizes toward the average."""
    for _ in range(tries):
        text = caption(scene, rng)
        if all(_SIZE_PATTERNS[o.size].search(text) for o in scene.objects):
            return text
    return text


def caption_pair(scene: Scene, rng: np.random.Generator, cfg: TextDistillConfig,
                 filler: tuple[str, ...]) -> tuple[str, str]:
    """(student caption, teacher caption) of one scene: the grammar's training half (or the template itself), with
    filler words as in UNet training, against the plain template."""
    teacher = template_caption(scene, rng)
    student = teacher if rng.random() < cfg.template_share else grammar.compose(scene, rng)
    return with_filler(student, rng, filler), teacher


@dataclass
class DistillBatch:
    x0: torch.Tensor  # (B, C, h, w) scaled clean latents
    concat: torch.Tensor  # (B, 1 + C, h, w) mask and scaled masked-image latent, as data.UNetBatch
    student_tokens: torch.Tensor  # (B, 77)
    teacher_tokens: torch.Tensor  # (B, 77)


def pool_probabilities(cache: LatentCache, pool: torch.Tensor, two_object_share: float) -> np.ndarray:
    """Sampling probabilities over `pool` that give two-object scenes the share `two_object_share` (in expectation)
    and split the rest evenly over the one-object scenes."""
    two = np.array([len(cache.scenes[i].objects) == 2 for i in pool.tolist()])
    if two.all() or not two.any():
        return np.full(len(pool), 1.0 / len(pool))
    return np.where(two, two_object_share / two.sum(), (1.0 - two_object_share) / (~two).sum())


def distill_batch(cache: LatentCache, pool: torch.Tensor, rng: np.random.Generator, cfg: TextDistillConfig,
                  captioner: Captioner, scaling_factor: float) -> DistillBatch:
    if cfg.two_object_share > 0:
        picks = rng.choice(len(pool), size=cfg.batch_size, p=pool_probabilities(cache, pool, cfg.two_object_share))
    else:
        picks = rng.integers(len(pool), size=cfg.batch_size)
    index = pool[torch.from_numpy(picks)]
    n = len(index)
    x0 = cache.latents[index].float() * scaling_factor
    text_to_image = torch.from_numpy(rng.random(n) < cfg.full_mask)[:, None, None, None]
    mask = torch.where(text_to_image, torch.ones_like(cache.masks[index], dtype=torch.float32),
                       cache.masks[index].float())
    masked = torch.where(text_to_image, cache.grey_latent[None] * scaling_factor,
                         cache.masked_latents[index].float() * scaling_factor)
    pairs = [caption_pair(cache.scenes[i], rng, cfg, captioner.filler) for i in index.tolist()]
    tokenize = lambda texts: torch.tensor(captioner.tokenizer(texts, pad_id=captioner.pad_id,
                                                              context_length=captioner.context_length))
    return DistillBatch(x0, torch.cat([mask, masked], dim=1), tokenize([s for s, _ in pairs]),
                        tokenize([t for _, t in pairs]))


def template_pool(cache: LatentCache) -> torch.Tensor:
    return torch.tensor([i for i, s in enumerate(cache.scenes) if len(s.objects) <= TEMPLATE_OBJECTS])


# ---- the loss -----------------------------------------------------------------------------------------------------


def sample_timesteps(n: int, num_train_timesteps: int, high_t_share: float,
                     generator: torch.Generator) -> torch.Tensor:
    """t uniform over the schedule, except a share high_t_share of the samples drawn from its upper half."""
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    if high_t_share <= 0:
        return t
    high = torch.randint(num_train_timesteps // 2, num_train_timesteps, (n,), generator=generator)
    return torch.where(torch.rand(n, generator=generator) < high_t_share, high, t)


def distill_loss(model: LatentDiffusion, teacher: torch.nn.Module, batch: DistillBatch, empty_tokens: torch.Tensor,
                 generator: torch.Generator, preserve_weight: float,
                 high_t_share: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L_distill + preserve_weight · L_preserve of the module docstring; model.text_encoder is the student."""
    x0 = batch.x0
    n = x0.shape[0]
    t = sample_timesteps(n, model.schedule.num_train_timesteps, high_t_share, generator)
    a4 = model.schedule.alphas_cumprod[t].float()[:, None, None, None]
    noise = torch.randn(x0.shape, generator=generator)
    unet_input = torch.cat([q_sample(x0, noise, a4), batch.concat], dim=1)
    kept_tokens = torch.cat([batch.teacher_tokens, empty_tokens])
    with torch.no_grad():
        kept_reference = teacher(kept_tokens)
        target = model.unet(unet_input, t.float(), kept_reference[:n]).float()
    pred = model.unet(unet_input, t.float(), model.text_encoder(batch.student_tokens)).float()
    distill = (pred - target).pow(2).mean()
    preserve = (model.text_encoder(kept_tokens) - kept_reference).pow(2).mean()
    return distill + preserve_weight * preserve, {"distill": float(distill.detach()),
                                                   "preserve": float(preserve.detach())}


# ---- checkpoints and export ---------------------------------------------------------------------------------------


def student_parameters(model: LatentDiffusion) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if name.startswith(TEXT_PREFIX)}


def save_checkpoint(path: Path, model: LatentDiffusion, teacher: torch.nn.Module, optimizer, ema: EMA,
                    cfg: TextDistillConfig, progress: dict) -> None:
    write_checkpoint(path, {
        "stage": "text",
        "distill_config": cfg.to_json(),
        "teacher": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
        **checkpoint_state(model, optimizer, ema, progress),
    })


def restore(state: dict) -> tuple[LatentDiffusion, torch.nn.Module, TextDistillConfig]:
    """(model with the raw student, frozen teacher, config) of a text.pt checkpoint."""
    model = LatentDiffusion(ModelConfig.from_json(state["model_config"]))
    model.load_state_dict(state["model"])
    teacher = copy.deepcopy(model.text_encoder)
    teacher.load_state_dict(state["teacher"])
    return model, teacher, TextDistillConfig.from_dict(json.loads(state["distill_config"]))


def export(model: LatentDiffusion, ema: EMA | None, path: Path) -> None:
    """The whole model with the EMA student as its text encoder. The UNet and VAE are written as they were loaded:
    a shipped fp16 file read into fp32 and written back in fp16 is the same bytes. The config (CFG, preview
    factors) is the init's."""
    shipped = LatentDiffusion(model.config)
    shipped.load_state_dict(model.state_dict())
    if ema is not None:
        ema.copy_to(shipped)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_studio_file(shipped, tmp)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


# ---- the loop -----------------------------------------------------------------------------------------------------


def train_text(model: LatentDiffusion, cfg: TextDistillConfig, out: Path, budget: Budget,
               resume: dict | None = None, teacher: torch.nn.Module | None = None, export_path: Path | None = None,
               snapshots: bool = True, log: Log = print) -> dict:
    """Distil `model`'s text encoder in place; the UNet and VAE are never written. Returns the progress record."""
    out.mkdir(parents=True, exist_ok=True)
    model.requires_grad_(False).eval()
    if teacher is None:
        teacher = copy.deepcopy(model.text_encoder)
    teacher.requires_grad_(False).eval()
    params = student_parameters(model)
    for p in params.values():
        p.requires_grad_(True)
    model.text_encoder.train()

    cache = prepare_unet_data(model, cfg.cache_config(), out, log)
    pool = template_pool(cache)
    log(f"text distillation: {len(pool)} of {len(cache)} cached scenes have template captions")
    captioner = Captioner(model.config.pad_id, model.config.text.max_length)
    empty_tokens = torch.tensor(captioner.tokenizer([""], pad_id=captioner.pad_id,
                                                    context_length=captioner.context_length))

    optimizer, ema, progress = optimizer_state(params, cfg.lr, 0.0, cfg.ema_decay, resume)
    ckpt_path = out / CHECKPOINT_NAME
    device = torch.device("cpu")

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    import threading

    previous = signal.signal(signal.SIGTERM, request_stop) \
        if threading.current_thread() is threading.main_thread() else None
    start_step, began = progress["step"], time.perf_counter()
    last_print = last_save = began
    window: dict[str, list[float]] = {"loss": [], "distill": [], "preserve": []}

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, model, teacher, optimizer, ema, cfg, progress)
        if snapshots:
            export(model, ema, out / f"text-step{progress['step']:05d}.safetensors")
        if export_path is not None:
            export(model, ema, export_path)
        log(f"checkpoint: {ckpt_path} (step {progress['step']})")

    try:
        while not stop["now"] and not budget.done(progress["step"], time.perf_counter() - began):
            step = progress["step"]
            data_rng, noise_rng = step_rngs(cfg, step, device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            batch = distill_batch(cache, pool, data_rng, cfg, captioner, model.config.vae.scaling_factor)
            loss, parts = distill_loss(model, teacher, batch, empty_tokens, noise_rng, cfg.preserve_weight,
                                       cfg.high_t_share)
            checked_step(loss, step, optimizer, params.values(), cfg.grad_clip, ema)
            progress["step"] += 1
            progress["samples"] += cfg.batch_size
            for key, value in ({"loss": float(loss.detach())} | parts).items():
                window[key].append(value)
            now = time.perf_counter()
            if now - last_print >= 30.0 or budget.done(progress["step"], now - began):
                elapsed = now - began
                means = {k: sum(v) / len(v) for k, v in window.items() if v}
                progress["loss"] = means["loss"]
                rate = (progress["step"] - start_step) * cfg.batch_size / elapsed
                log(f"[text] step {progress['step']} | loss {means['loss']:.5f} | distill {means['distill']:.5f} | "
                    f"preserve {means['preserve']:.2e} | lr {learning_rate(cfg, step):.2e} | {rate:.1f} samples/s "
                    f"| elapsed {elapsed / 60:.1f} min")
                for v in window.values():
                    v.clear()
                last_print = now
            if now - last_save >= 60 * cfg.checkpoint_minutes:
                progress["seconds"] += now - last_save
                last_save = now
                checkpoint()
    finally:
        progress["seconds"] += time.perf_counter() - last_save
        last_save = time.perf_counter()
        checkpoint()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    model.eval().requires_grad_(False)
    return progress


# ---- `studio train --stage text` ----------------------------------------------------------------------------------

CLI_OVERRIDES = ("batch_size", "lr", "warmup_steps", "total_steps", "ema_decay", "full_mask", "dataset_size",
                 "data_seed", "max_objects", "busy_masks", "checkpoint_minutes", "high_t_share", "two_object_share")


def initial_model(init: str | None, tiny: bool) -> LatentDiffusion:
    """A plain (unpacked, fp32) model to distil: the shipped one by default, a model file, or a fresh tiny one."""
    from ..engine import load_model
    from .config import tiny_model_config

    if tiny:
        return LatentDiffusion(tiny_model_config())
    loaded = load_model(init or "default", torch.device("cpu"), torch.float32)
    plain = LatentDiffusion(loaded.config)  # load_model packs layers for the CPU; training needs plain modules
    plain.load_state_dict(loaded.state_dict())
    return plain


def run_cli(args) -> int:
    from ..engine import ModelLoadError, UserError

    out: Path = args.out
    ckpt = out / CHECKPOINT_NAME
    overrides = {k: getattr(args, k) for k in CLI_OVERRIDES if getattr(args, k, None) is not None}
    if args.export_only:
        if args.export is None or not ckpt.exists():
            raise UserError(f"--export-only needs --export FILE and an existing {ckpt}")
        state = load_checkpoint(ckpt)
        model, _, cfg = restore(state)
        export(model, EMA(student_parameters(model), cfg.ema_decay, state["ema"]), args.export)
        print(f"exported {ckpt} (step {state['progress']['step']}) to {args.export}")
        return 0
    if args.steps is None and args.minutes is None:
        raise UserError("give a budget: --minutes and/or --steps")
    resume = teacher = None
    if ckpt.exists():
        resume = load_checkpoint(ckpt)
        model, teacher, saved = restore(resume)
        cfg = dataclasses.replace(saved, **overrides)
        print(f"resuming {ckpt} at step {resume['progress']['step']}", flush=True)
    else:
        cfg = TextDistillConfig(**overrides)
        try:
            model = initial_model(args.init, args.tiny)
            if getattr(args, "teacher", None):
                # continuing a distilled student: the teacher must stay the encoder the UNet learned to read
                teacher = initial_model(args.teacher, False).text_encoder
        except (ModelLoadError, OSError) as exc:
            raise UserError(str(exc)) from None
    train_text(model, cfg, out, Budget(args.steps, args.minutes), resume, teacher, args.export,
               log=lambda line: print(line, flush=True))
    return 0
