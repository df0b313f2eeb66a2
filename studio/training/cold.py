"""Training the cold-diffusion restoration networks on fresh scenes (Bansal et al. 2022, eq. 2 with the ℓ1 norm
of their §4: min E‖R(D(x0, s), s) − x0‖₁, s uniform in 1 … T).

    studio train --stage cold --degradation blur --out /work/ckpt/cold --minutes 45 --export resources/cold/cold-blur.safetensors

Every batch is rendered afresh by scenes.py, seeded by (seed, step), so a resumed run sees the batches the
uninterrupted one would have. The scene world per degradation:
- blur: one object per scene, unconditional: generation from a flat colour has to invent one object, and the
  detector's test is "one valid object on a flat background";
- mask: one or two objects, caption-conditioned; the region is a box around one object (75 %), a random painted
  mask (15 %) or the whole image (10 %). A box's caption is, most of the time, the object under it as a user
  types it into the inpainting box ("a small red circle", sometimes with its place): a whole-scene caption names
  every object and a bag of words cannot say which one the hole is for (docs/cold.md). The ℓ1 is taken over the
  region's pixels only: outside it the samplers replace x̂0 by the known pixels (cold_pipeline.Restorer);
- down: one or two objects, unconditional (super-resolution).
The learning rate follows a cosine over the time budget; weights are exported as an EMA, fp16.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..engine.cold import DEFAULT_STEPS, Degradation, dct_matrix, mask_order
from ..engine.cold_model import ColdConfig, RestorationNet, StartPrior, caption_tokens, save_cold_file
from .data import object_mask, to_unit
from .descent import descend
from .scenes import (CANVAS, POSITION_WORDS, caption, caption_words, fix_articles, noun_phrase, random_mask,
                     render_layers, sample_scene)

CHANNELS = (24, 48, 96, 128)  # ~1.8 M parameters, ~50 ms per 64 px image for a training step on one thread
REGION_SHARES = (0.75, 0.15, 0.1)  # mask kind: object box, random painted mask, whole image
HOLE_CAPTION_SHARE = 0.8  # mask kind, object box: the hole's object as the caption (else the whole scene's)
HOLE_CAPTION_PLACE = 0.5  # of those, the share that also names the object's place ("… in the top left corner")
HIGH_S_SHARE = 0.5  # mask kind: share of samples with s from the upper half T/2 … T instead of 1 … T (issue #16)
# mask kind: share of captions emptied, so that R also learns R(x_s, s, ∅) for classifier-free guidance. 0 in the
# recipe: 0.12 was measured (issue #16, 553 steps from the shipped weights) and neither the fine-tune nor any
# guidance scale beat the shipped weights (model card), which were trained without it
CAPTION_DROPOUT = 0.0
GMM_COMPONENTS = 12
GMM_IMAGES = 4000
# generation's start step s0 per kind (cold_model.StartPrior): blur starts at s0 = 36 of 40 (σ 28 px, 8 DCT
# coefficients per channel kept), chosen on the tuning seed 1 among 34, 36, 38 (model card); the other kinds keep
# the flat start of §5.1
START_STEPS = {"blur": 36}
PRIOR_IMAGES = 4000  # training pictures behind the kernel density (385 KB in the file)
PRIOR_BANDWIDTH = 0.3  # the kernel's std, as a share of each coefficient's std over those pictures (model card)
PRIOR_SEED = 7  # their scenes' seed; training batches use [cfg.seed, step], the evaluation 90,016 and up
KEPT_GAIN = 1e-3  # a coefficient D(·, s0) scales below this is left out: < 0.1 of an 8-bit level in the picture


@dataclass(frozen=True)
class ColdTrainConfig:
    kind: str = "blur"
    batch_size: int = 24
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995  # ~1–2 k steps in a CPU budget: a short EMA
    minutes: float = 45.0  # the cosine runs over this budget (wall time, pauses included), unless total_steps is set
    # with it, the cosine runs over steps and training ends at that step (the minutes still cap the run): a budget
    # that a busy or paused machine does not shorten
    total_steps: int | None = None
    checkpoint_minutes: float = 3.0
    seed: int = 1600
    high_s_share: float = 0.0  # share of s drawn from T/2 … T (draw_steps); run_cli sets HIGH_S_SHARE for mask
    # share of captions replaced by "" (id 0, "no known word"): the unconditional R(x_s, s, ∅) that classifier-free
    # guidance needs (Ho & Salimans 2022 §3.2 drop the condition with a fixed probability); run_cli sets
    # CAPTION_DROPOUT for mask
    caption_dropout: float = 0.0
    # the forward pass under CPU autocast to bf16 (weights, optimizer and loss stay fp32): on a CPU with AVX512-BF16
    # or AMX, 0.59 s per batch of 24 against 0.94 s in fp32 (cold-mask, 2 threads; the model card's training table)
    bf16: bool = False


def scene_batch(kind: str, rng: np.random.Generator, n: int):
    """(images (n, 3, 64, 64) in [−1, 1], captions, regions (n, 1, 64, 64) float or None, scenes)."""
    images = np.empty((n, CANVAS, CANVAS, 3), np.uint8)
    captions, scenes, regions = [], [], []
    for i in range(n):
        scene = sample_scene(rng, max_objects=1 if kind == "blur" else 2)
        images[i], alphas = render_layers(scene, rng)
        captions.append(caption(scene, rng))
        scenes.append(scene)
        if kind == "mask":
            pick = rng.random()
            if pick < REGION_SHARES[0]:
                which = int(rng.integers(len(alphas)))
                regions.append(object_mask(rng, alphas[which : which + 1]))
                if rng.random() < HOLE_CAPTION_SHARE:
                    captions[-1] = hole_caption(scene.objects[which], rng)
            elif pick < REGION_SHARES[0] + REGION_SHARES[1]:
                regions.append(random_mask(rng))
            else:
                regions.append(np.ones((CANVAS, CANVAS), bool))
    region = torch.from_numpy(np.stack(regions)[:, None].astype(np.float32)) if regions else None
    return to_unit(images), captions, region, scenes


def drop_captions(captions: list[str], rng: np.random.Generator, share: float) -> list[str]:
    """Each caption emptied with probability `share` (caption_tokens reads "" as id 0, the null condition)."""
    return [("" if rng.random() < share else text) for text in captions]


def hole_caption(obj, rng: np.random.Generator, held_out: bool = False) -> str:
    """What a user types for the object a hole should get: its noun phrase ("a small red circle"), with its place
    (HOLE_CAPTION_PLACE of the time; always for held-out captions, so the evaluation reads every fact)."""
    text = noun_phrase(obj, rng, held_out)
    if held_out or rng.random() < HOLE_CAPTION_PLACE:
        places = POSITION_WORDS[obj.position]
        text += " " + places[int(rng.integers(len(places)))]
    return fix_articles(text)


def fit_channel_gmm(means: np.ndarray, k: int, seed: int = 0, iterations: int = 100):
    """A diagonal Gaussian mixture over (N, 3) channel means by EM (Dempster et al. 1977); k-means++-style init."""
    rng = np.random.default_rng(seed)
    centres = [means[rng.integers(len(means))]]
    for _ in range(k - 1):
        d = np.min([((means - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(means[rng.choice(len(means), p=d / d.sum())])
    mu = np.array(centres)
    var = np.full_like(mu, means.var(0).mean() / k)
    weights = np.full(k, 1 / k)
    for _ in range(iterations):
        log_p = -0.5 * (((means[:, None] - mu[None]) ** 2) / var[None] + np.log(2 * math.pi * var[None])).sum(2)
        log_p += np.log(weights)[None]
        log_p -= log_p.max(1, keepdims=True)
        resp = np.exp(log_p)
        resp /= resp.sum(1, keepdims=True)
        total = resp.sum(0) + 1e-9
        weights = total / total.sum()
        mu = (resp.T @ means) / total[:, None]
        var = (resp.T @ means**2) / total[:, None] - mu**2
        var = np.maximum(var, 1e-5)
    return weights, mu, np.sqrt(var)


def fit_start_prior(degradation: Degradation, start_step: int, images: torch.Tensor,
                    bandwidth_share: float = PRIOR_BANDWIDTH) -> StartPrior:
    """The kernel density of cold_model.StartPrior: the DCT-II coefficients of `images` (n, 3, H, W) that
    D(·, start_step) keeps (gain above KEPT_GAIN), with a kernel std of `bandwidth_share` × their spread."""
    if not 0 < start_step < degradation.steps:
        raise ValueError(f"a start prior needs 0 < s0 < T = {degradation.steps}, got {start_step}")
    size = images.shape[-1]
    gain = degradation.blur_gain(torch.tensor([start_step]), torch.zeros(1, 1, size, size, dtype=torch.float64))
    frequencies = (gain[0, 0] > KEPT_GAIN).nonzero()
    c = dct_matrix(size, dtype=torch.float64)
    coefficients = (c @ images.double() @ c.T)[:, :, frequencies[:, 0], frequencies[:, 1]]
    bandwidth = bandwidth_share * coefficients.std(dim=0, unbiased=False)
    return StartPrior(frequencies, coefficients.float(), bandwidth.float())


def start_prior(config: ColdConfig, tiny: bool = False) -> StartPrior | None:
    """The start prior a model of this config ships with (None: the flat start)."""
    if config.kind != "blur" or config.generation_step >= config.steps:
        return None
    rng = np.random.default_rng(PRIOR_SEED)
    images = torch.cat([scene_batch("blur", rng, 200)[0] for _ in range(1 if tiny else PRIOR_IMAGES // 200)])
    return fit_start_prior(Degradation(config.kind, config.steps, config.size), config.start_step, images)


def refit_start(path: Path, start_step: int) -> None:
    """Give an existing cold-blur file generation's low-frequency start at `start_step` (0: the flat start): the
    net's tensors are written back byte for byte, only the config's start_step and the prior change."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..engine.cold_model import COLD_METADATA_KEY, START_PRIOR

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if not k.startswith(START_PRIOR)}
    if COLD_METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not a cold model file")
    config = replace(ColdConfig.from_json(json.loads(metadata[COLD_METADATA_KEY])), start_step=start_step)
    if config.kind != "blur":
        raise ValueError(f"a low-frequency start is for cold-blur; {path} is cold-{config.kind}")
    prior = start_prior(config)
    if prior is not None:
        tensors.update(prior.tensors())
    metadata[COLD_METADATA_KEY] = json.dumps(config.to_json())
    save_file(tensors, str(path), metadata=metadata)


def model_config(kind: str, seed: int, tiny: bool = False) -> ColdConfig:
    rng = np.random.default_rng(seed + 99)
    images, _, _, _ = scene_batch("blur" if kind == "blur" else "down", rng, 200 if tiny else GMM_IMAGES)
    weights, mu, std = fit_channel_gmm(images.mean(dim=(2, 3)).numpy().astype(np.float64), GMM_COMPONENTS, seed)
    return ColdConfig(
        kind=kind,
        steps=DEFAULT_STEPS[kind],
        channels=(8, 16) if tiny else CHANNELS,
        vocabulary=len(caption_vocabulary()) + 1 if kind == "mask" else 0,
        gmm_weights=tuple(float(w) for w in weights),
        gmm_means=tuple(tuple(float(v) for v in row) for row in mu),
        gmm_stds=tuple(tuple(float(v) for v in row) for row in std),
        start_step=START_STEPS.get(kind, 0),
    )


def caption_vocabulary() -> tuple[str, ...]:
    return tuple(sorted(caption_words()))


def draw_steps(n: int, steps: int, generator: torch.Generator, high_share: float = 0.0) -> torch.Tensor:
    """s uniform in 1 … T (Bansal et al. 2022, Alg. 1's training loop), or with `high_share` of the batch from the
    upper half T/2 … T. For the mask model those are the big holes: from s = T cold inpainting commits the hole's
    outer rings, where the object's outline lies, from guesses that only the caption can inform (Alg. 2 sets each
    pixel once, at the step that uncovers it), and there the shipped model still got the shape wrong (docs/cold.md)."""
    s = torch.randint(1, steps + 1, (n,), generator=generator)
    if high_share > 0:
        high = torch.randint(steps // 2, steps + 1, (n,), generator=generator)
        s = torch.where(torch.rand(n, generator=generator) < high_share, high, s)
    return s


def cold_loss(net: RestorationNet, degradation: Degradation, x0, captions, region, generator: torch.Generator,
              words: tuple[str, ...], high_s_share: float = 0.0):
    s = draw_steps(x0.shape[0], degradation.steps, generator, high_s_share)
    order = mask_order(region) if region is not None else None
    with torch.no_grad():
        x_s = degradation(x0, s, order)
    extra = degradation.mask(s, order) if degradation.kind == "mask" else None
    tokens = caption_tokens(captions, words) if net.config.vocabulary else (None, None)
    x0_pred = net(x_s, s, extra, *tokens).float()  # the ℓ1 in fp32 when the forward ran under autocast
    if region is None:
        return (x0_pred - x0).abs().mean()
    # ℓ1 over the region only (mean per image over its pixels): outside it R's output is never used
    per_image = ((x0_pred - x0).abs() * region).sum(dim=(1, 2, 3)) / (3 * region.sum(dim=(1, 2, 3))).clamp(min=1)
    return per_image.mean()


def learning_rate(cfg: ColdTrainConfig, step: int, elapsed: float) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0  # 0: no warm-up (a resume)
    frac = min(1.0, step / cfg.total_steps if cfg.total_steps else elapsed / (cfg.minutes * 60))
    return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(cfg: ColdTrainConfig, out: Path, export: Path | None = None, threads: int = 1, log=print,
          max_steps: int | None = None, tiny: bool = False, init: Path | None = None) -> Path:
    """Train (or resume) `<out>/cold-<kind>.pt` for cfg.minutes of this run's time budget, or to cfg.total_steps
    (or `max_steps`, this call's own stop) if that comes first; returns the checkpoint.
    `init`: a cold model file (e.g. the shipped weights) to start a fresh run from: its config (GMM included) and
    weights, as both the net and the EMA."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cold-{cfg.kind}.pt"
    words = caption_vocabulary() if cfg.kind == "mask" else ()
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = ColdConfig.from_json(json.loads(state["config"]))
        step, elapsed = int(state["step"]), float(state["elapsed"])
    elif init is not None:
        from ..engine.cold_model import load_cold_file

        start, _ = load_cold_file(init)
        if start.config.kind != cfg.kind:
            raise ValueError(f"{init} is a cold-{start.config.kind} model, not cold-{cfg.kind}")
        state, config, step, elapsed = None, start.config, 0, 0.0
    else:
        state, config, step, elapsed = None, model_config(cfg.kind, cfg.seed, tiny), 0, 0.0
    if state is None and cfg.caption_dropout > 0:  # the file says R(x_s, s, ∅) was learned (ColdConfig.guidable)
        config = replace(config, caption_dropout=cfg.caption_dropout)
    net = RestorationNet(config)
    ema = RestorationNet(config)
    if state is None and init is not None:
        net.load_state_dict(start.state_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    if state is not None:
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
    else:
        ema.load_state_dict(net.state_dict())
    degradation = Degradation(config.kind, config.steps, config.size)
    prior = start_prior(config, tiny) if export is not None else None
    log(f"cold-{cfg.kind}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, step {step}, "
        f"{elapsed / 60:.1f} of {cfg.minutes} min")

    def save() -> None:
        snapshot = {"config": json.dumps(config.to_json()), "step": step, "elapsed": elapsed,
                    "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(snapshot, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        if export is not None:
            export.parent.mkdir(parents=True, exist_ok=True)
            save_cold_file(ema, trained_words() if words else (), export, prior=prior)

    started, last_save, losses = time.monotonic() - elapsed, time.monotonic(), []
    stops = [n for n in (max_steps, cfg.total_steps) if n is not None]
    while elapsed < cfg.minutes * 60 and (not stops or step < min(stops)):
        rng = np.random.default_rng([cfg.seed, step])
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0, captions, region, _ = scene_batch(cfg.kind, rng, cfg.batch_size)
        if cfg.caption_dropout > 0:
            captions = drop_captions(captions, rng, cfg.caption_dropout)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, elapsed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = cold_loss(net, degradation, x0, captions, region, generator, words, cfg.high_s_share)
        descend(loss, net, optimizer, ema, cfg.ema_decay)
        losses.append(loss.item())
        step += 1
        elapsed = time.monotonic() - started
        if step % 50 == 0:
            log(f"step {step} loss {np.mean(losses):.4f} lr {learning_rate(cfg, step, elapsed):.2e} "
                f"{elapsed / 60:.1f} min")
            losses = []
        if time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
            save()
            last_save = time.monotonic()
    save()
    log(f"cold-{cfg.kind}: done at step {step}, {elapsed / 60:.1f} min")
    return path


def trained_words(samples: int = 3_000, seed: int = 5) -> tuple[str, ...]:
    """caption_vocabulary() with the words that training captions never use blanked (their embeddings never
    moved from their random start, so a caption is better read without them); the indices stay."""
    rng = np.random.default_rng(seed)
    seen = set()
    for _ in range(samples):
        seen.update(re.findall(r"[a-z]+", caption(sample_scene(rng), rng).lower()))
    return tuple(w if w in seen else "" for w in caption_vocabulary())


def export_only(out: Path, kind: str, export: Path) -> None:
    state = torch.load(out / f"cold-{kind}.pt", map_location="cpu", weights_only=True)
    config = ColdConfig.from_json(json.loads(state["config"]))
    ema = RestorationNet(config)
    ema.load_state_dict(state["ema"])
    save_cold_file(ema, trained_words() if kind == "mask" else (), export, prior=start_prior(config))


def run_cli(args) -> int:
    """`studio train --stage cold --degradation KIND --out DIR [--minutes M | --total-steps N] [--export FILE]
    [--export-only]`."""
    from ..engine import UserError

    if args.degradation is None:
        raise UserError("--stage cold needs --degradation blur, mask or down")
    export = args.export or Path("resources/cold") / f"cold-{args.degradation}.safetensors"
    if getattr(args, "start_step", None) is not None:  # only the generation start of an existing file changes
        if not export.is_file():
            raise UserError(f"--start-step rewrites a model file's generation start: no file {export}")
        try:
            refit_start(export, args.start_step)
        except ValueError as error:  # not a cold-blur file: one line, not a traceback
            raise UserError(str(error)) from error
        return 0
    if args.export_only:
        if not (args.out / f"cold-{args.degradation}.pt").exists():
            raise UserError(f"no checkpoint {args.out / f'cold-{args.degradation}.pt'} to export")
        export_only(args.out, args.degradation, export)
        return 0
    mask = args.degradation == "mask"
    cfg = ColdTrainConfig(kind=args.degradation, high_s_share=HIGH_S_SHARE if mask else 0.0,
                          caption_dropout=CAPTION_DROPOUT if mask else 0.0)
    changes = {"minutes": args.minutes, "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema_decay,
               "warmup_steps": args.warmup_steps, "checkpoint_minutes": args.checkpoint_minutes,
               "total_steps": args.total_steps, "bf16": args.bf16 or None}
    cfg = replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    init = Path(args.init).expanduser() if getattr(args, "init", None) else None
    if init is not None and not init.is_file():
        raise UserError(f"--init {init}: no such cold model file")
    train(cfg, args.out, export, threads=args.threads, log=lambda line: print(line, flush=True),
          max_steps=args.steps, tiny=args.tiny, init=init)
    return 0


if __name__ == "__main__":  # python -m studio.training.cold KIND MINUTES [EXPORT]
    import sys

    kind, minutes = sys.argv[1], float(sys.argv[2])
    target = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(f"resources/cold/cold-{kind}.safetensors")
    cfg = ColdTrainConfig(kind=kind, minutes=minutes, high_s_share=HIGH_S_SHARE if kind == "mask" else 0.0,
                          caption_dropout=CAPTION_DROPOUT if kind == "mask" else 0.0)
    train(cfg, Path("/work/ckpt/cold"), target, log=lambda line: print(line, flush=True))
