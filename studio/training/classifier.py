"""Train the guides of classifier guidance for the built-in world: a noise-aware classifier p_φ(y | z_t, t) on the
built-in model's latents (Dhariwal & Nichol 2021, §4: "we train a classifier on noisy images x_t"), and the same
network on clean latents only (t = 0), for universal guidance on ẑ0.

Data: fresh scenes (scenes.sample_scene, their own seeds), each encoded once by the model's frozen VAE encoder into
a cache of scaled latents (the UNet's coordinates) with its labels. The labels describe the *main* object, the one
covering the most pixels (a scene has one or two), and the background. Every step noises a batch with the model's
own schedule at uniform t, z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε (DDPM eq. 4), with fresh ε, and minimises the summed cross
entropy of the heads. The clean classifier sees ᾱ = 1 (z_t = z0).

`studio train --stage classifier [--clean]`, or `python -m studio.training.classifier`; resumable from its
checkpoint; exports fp16 safetensors with the held-out accuracy in the metadata (engine/classifier.py loads it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.classifier import JOINT, ClassifierConfig, NoisyClassifier, save_classifier
from .data import render_scenes, to_unit
from .descent import descend
from .scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene

SINGLE_HEADS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", SIZES), ("position", POSITIONS),
    ("background", tuple(COLOURS)))


def joint_head(first: str, second: str) -> tuple[str, tuple[str, ...]]:
    """One softmax over the main object's (first, second) pairs, "star+red" (engine/classifier.py: a guide asking
    for both reads it, so that the first on one object and the second on another do not count as the pair)."""
    values = dict(SINGLE_HEADS)
    return first + JOINT + second, tuple(f"{a}{JOINT}{b}" for a in values[first] for b in values[second])


# the single heads, then the joint ones; label columns follow this order (older caches lack the joint columns)
HEADS = SINGLE_HEADS + (joint_head("shape", "colour"), joint_head("colour", "position"))
# the joint heads each shipped classifier trains (resources/guides/MODEL_CARD.md, "Training"): shape+colour for
# the clean one; colour+position for the noise-aware one, whose asked colour otherwise often went to a second
# object beside the asked shape at the asked place (issue #15's sixth session; its shape+colour head lost colour)
JOINT_HEADS: dict[bool, tuple[str, ...]] = {True: ("shape+colour",), False: ("colour+position",)}

TRAIN_SEED = 8_100_000  # scenes of the classifier's training cache (the UNet's cache used other seeds)
HELD_OUT_SEED = 8_200_000  # scenes its accuracy is reported on
EVAL_LEVELS = (0, 250, 500, 700, 850, 950)  # timesteps the held-out accuracy is broken down by
NOISY_NAME = "scene-classifier-noisy.safetensors"
CLEAN_NAME = "scene-classifier-clean.safetensors"


def trained_heads(clean: bool, joint: tuple[str, ...] | None = None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The heads a run trains: the single ones and the `joint` ones (default: JOINT_HEADS of its kind)."""
    joint = JOINT_HEADS[clean] if joint is None else joint
    unknown = set(joint) - {name for name, _ in HEADS if JOINT in name}
    if unknown:
        raise ValueError(f"no joint head {', '.join(sorted(unknown))}; known: "
                         + ", ".join(name for name, _ in HEADS if JOINT in name))
    return tuple(head for head in HEADS if JOINT not in head[0] or head[0] in joint)


def main_object(scene: Scene, alphas: np.ndarray) -> int:
    """Index of the object covering the most pixels: the one the labels describe."""
    return int(np.argmax(alphas.reshape(len(alphas), -1).sum(axis=1)))


def scene_labels(scene: Scene, alphas: np.ndarray) -> list[int]:
    obj = scene.objects[main_object(scene, alphas)]
    values = {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": obj.position,
              "background": scene.background}
    for name, _ in HEADS[len(SINGLE_HEADS):]:
        values[name] = JOINT.join(values[part] for part in name.split(JOINT))
    return [labels.index(values[name]) for name, labels in HEADS]


def with_joint_labels(labels: torch.Tensor) -> torch.Tensor:
    """A cache written before a joint head (fewer columns) gets the missing joint columns, each first·|second's
    values| + second: the order of joint_head's values."""
    sizes = {name: len(values) for name, values in SINGLE_HEADS}
    column = {name: i for i, (name, _) in enumerate(SINGLE_HEADS)}
    extra = []
    for name, _ in HEADS[labels.shape[1]:]:
        first, second = name.split(JOINT)
        extra.append(labels[:, column[first]] * sizes[second] + labels[:, column[second]])
    return torch.cat([labels, *(e[:, None] for e in extra)], dim=1) if extra else labels


@torch.no_grad()
def build_cache(model, n: int, seed: int, chunk: int = 256, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (n, C, h, w) float16 scaled, labels (n, heads) int64) of n fresh scenes."""
    rng = np.random.default_rng(seed)
    latents, labels = [], []
    began = time.perf_counter()
    for start in range(0, n, chunk):
        images, scenes, layers = render_scenes(rng, min(chunk, n - start))
        latents.append(model.encode_image(to_unit(images).to(model.device)).cpu().half())
        labels.extend(scene_labels(s, a) for s, a in zip(scenes, layers))
        log(f"classifier cache (seed {seed}): {start + len(scenes)}/{n} in {time.perf_counter() - began:.0f} s")
    return torch.cat(latents), torch.tensor(labels, dtype=torch.long)


def cached(model, n: int, seed: int, folder: Path, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    path = folder / f"classifier-cache-{seed}-{n}.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        return state["latents"], with_joint_labels(state["labels"])
    latents, labels = build_cache(model, n, seed, log=log)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"latents": latents, "labels": labels}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return latents, labels


def noised(z0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator,
           clean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, ᾱ_t) for timesteps t; the clean classifier's ᾱ is 1."""
    if clean:
        return z0, torch.ones(len(z0))
    a = alphas_cumprod[t].float()
    eps = torch.randn(z0.shape, generator=generator)
    return a.sqrt()[:, None, None, None] * z0 + (1 - a).sqrt()[:, None, None, None] * eps, a


def classifier_loss(net: NoisyClassifier, z: torch.Tensor, a: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = net(z, a)
    return sum(F.cross_entropy(logits[name], labels[:, i]) for i, (name, _) in enumerate(HEADS) if name in logits)


@torch.no_grad()
def accuracy(net: NoisyClassifier, latents: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor,
             clean: bool, levels=EVAL_LEVELS, seed: int = 0) -> dict:
    """Held-out accuracy per head: at each timestep of `levels` and over uniform t (the clean one: at t = 0)."""
    net.eval()
    generator = torch.Generator().manual_seed(seed)
    z0 = latents.float()
    out: dict = {}
    settings = {"clean": None} if clean else {**{f"t={t}": t for t in levels}, "uniform t": "uniform"}
    for key, t in settings.items():
        if t is None:
            times = torch.zeros(len(z0), dtype=torch.long)
        elif t == "uniform":
            times = torch.randint(0, len(alphas_cumprod), (len(z0),), generator=generator)
        else:
            times = torch.full((len(z0),), t, dtype=torch.long)
        heads = [(i, name) for i, (name, _) in enumerate(HEADS) if name in net.heads]  # a file may lack the joint one
        correct = torch.zeros(len(HEADS))
        for start in range(0, len(z0), 512):
            z, a = noised(z0[start:start + 512], times[start:start + 512], alphas_cumprod, generator, clean)
            logits = net(z, a)
            for i, name in heads:
                correct[i] += (logits[name].argmax(1) == labels[start:start + 512, i]).sum()
        out[key] = {name: round(float(correct[i]) / len(z0), 4) for i, name in heads}
    net.train()
    return out


def learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup)))))


def train(model, out: Path, *, clean: bool, steps: int, batch: int, lr: float, scenes: int, held_out: int,
          export: Path | None, minutes: float | None = None, init: Path | None = None,
          joint: tuple[str, ...] | None = None, log=print) -> dict:
    """Train (or resume from `out`'s checkpoint); `init`: start a fresh run from an exported classifier file's
    weights (net and EMA both; a new optimiser and the learning-rate schedule from its warm-up, a warm restart)."""
    alphas_cumprod = model.schedule.alphas_cumprod
    latents, labels = cached(model, scenes, TRAIN_SEED, out, log)
    test_latents, test_labels = cached(model, held_out, HELD_OUT_SEED, out, log)
    config = ClassifierConfig(heads=trained_heads(clean, joint), in_channels=latents.shape[1],
                              latent_size=latents.shape[-1], clean=clean,
                              scaling_factor=model.config.vae.scaling_factor, trained_for=model.config.name)
    torch.manual_seed(0)
    net = NoisyClassifier(config)
    ema = NoisyClassifier(config).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    name = "classifier-clean" if clean else "classifier-noisy"
    checkpoint = out / f"{name}.pt"
    step, seconds = 0, 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = int(state["step"]), float(state["seconds"])
        log(f"resumed {checkpoint} at step {step}")
    elif init is not None:
        from ..engine.classifier import load_classifier

        start = load_classifier(init)
        # the same network, possibly with fewer heads: a head the file lacks (a joint head added later) starts fresh
        if replace(start.config, heads=config.heads) != config or not set(start.config.heads) <= set(config.heads):
            raise ValueError(f"{init} is a classifier of other settings ({start.config}); it cannot start this run")
        net.load_state_dict(start.state_dict(), strict=False)
        ema.load_state_dict(net.state_dict())
        fresh = [name for name, values in config.heads if (name, values) not in start.config.heads]
        log(f"started from {init}" + (f" (new heads: {', '.join(fresh)})" if fresh else ""))
    log(f"{name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, {len(latents)} scenes")
    began, last_log = time.perf_counter(), time.perf_counter()
    running = None

    def save() -> None:
        state = {"net": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                 "step": torch.tensor(step), "seconds": torch.tensor(seconds + time.perf_counter() - began)}
        torch.save(state, checkpoint.with_suffix(".tmp"))
        checkpoint.with_suffix(".tmp").replace(checkpoint)

    while step < steps:
        rng = np.random.default_rng([step, 17])
        generator = torch.Generator().manual_seed(step * 7919 + 1)
        index = torch.from_numpy(rng.integers(len(latents), size=batch))
        t = torch.from_numpy(rng.integers(len(alphas_cumprod), size=batch))
        z0 = latents[index].float()
        z, a = noised(z0, t, alphas_cumprod, generator, clean)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        loss = classifier_loss(net, z, a, labels[index])
        descend(loss, net, optimizer, ema, 0.995)
        step += 1
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if time.perf_counter() - last_log > 60 or step == steps:
            last_log = time.perf_counter()
            log(f"{name} step {step}/{steps} loss {running:.3f} lr {learning_rate(step, steps, lr):.2e} "
                f"({(time.perf_counter() - began) / 60:.1f} min this session)")
        if step % 250 == 0 or step == steps:
            save()
        if minutes is not None and time.perf_counter() - began > minutes * 60:
            save()
            log(f"{name}: time budget spent at step {step}")
            break
    save()
    metrics = {"steps": step, "batch": batch, "train_scenes": len(latents), "held_out_scenes": len(test_latents),
               "train_minutes": round((seconds + time.perf_counter() - began) / 60, 1),
               "accuracy": accuracy(ema, test_latents, test_labels, alphas_cumprod, clean)}
    log(json.dumps(metrics))
    if export is not None:
        save_classifier(ema, export, metrics)
        log(f"exported {export}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    from ..engine import load_model
    from ..resources import resources_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="train at t = 0 only (a guide for universal guidance)")
    parser.add_argument("--out", type=Path, default=Path("runs/classifier"), help="checkpoint and cache folder")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scenes", type=int, default=16000)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--export", type=Path, default=None, help="weights file (default resources/guides/...)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this exported classifier's weights (a fresh optimiser; warm restart)")
    parser.add_argument("--joint-heads", default=None, metavar="HEAD,...",
                        help="the joint heads to train, e.g. colour+position (default: the shipped recipe's; "
                             "'' for none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("default", torch.device("cpu"), torch.float32)
    export = args.export or resources_dir() / "guides" / (CLEAN_NAME if args.clean else NOISY_NAME)
    export.parent.mkdir(parents=True, exist_ok=True)
    train(model, args.out, clean=args.clean, steps=args.steps, batch=args.batch, lr=args.lr, scenes=args.scenes,
          held_out=args.held_out, export=export, minutes=args.minutes, init=args.init,
          joint=None if args.joint_heads is None else tuple(h for h in args.joint_heads.split(",") if h),
          log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
