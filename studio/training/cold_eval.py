"""Evaluating the cold-diffusion models (Bansal et al. 2022) on held-out scenes:

- restoration: PSNR of Algorithm 2, Algorithm 1 and a single R call from D(x0, s) at s = T/2 and s = T;
- generation from blur: samples from the GMM start with and without the noise perturbation; the detector must
  find exactly one object on a flat background; diversity = distinct (shape, colour) pairs;
- cold inpainting (mask model): a box over one object of a held-out scene, the held-out caption; the object must
  come back (shape and colour) where it was, and every unmasked pixel must be unchanged.

    studio evaluate --cold blur,mask --json cold.json
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..engine.cold import Degradation, mask_order
from ..engine.cold_model import caption_tokens, guided_x0, load_cold_file, read_start_prior
from ..engine.cold_pipeline import cold_model_path, generation_start
from ..engine.samplers import Step, cold_improved, cold_naive
from ..engine.schedules import NoiseLevel
from .data import object_mask, to_unit
from .detector import detect
from .cold import hole_caption
from .scenes import CANVAS, caption, render_layers, sample_scene

HELD_OUT_SEED = 90_016  # training draws its batches from seeds [1600, step]
FLAT_BORDER = 30.0  # RGB distance: a border pixel this far from the border's median is not "flat background"


class BatchRestorer:
    """R and D for a batch (each image its own caption and masking order), in the samplers' denoiser form."""

    def __init__(self, net, words, degradation: Degradation, captions=None, order=None, known=None,
                 guidance: float = 1.0):
        self.net, self.degradation, self.order, self.known, self.guidance = net, degradation, order, known, guidance
        self.tokens = caption_tokens(captions, words) if net.config.vocabulary and captions else (None, None)

    def __call__(self, x, level):
        s = torch.full((x.shape[0],), int(level.timestep), dtype=torch.long)
        extra = self.degradation.mask(s, self.order) if self.degradation.kind == "mask" else None
        x0 = guided_x0(self.net, x, s, extra, *self.tokens, self.guidance)
        if self.known is not None:
            x0 = torch.where(self.order < 1.5, x0, self.known)
        return x0

    def degrade(self, x0, level):
        return self.degradation(x0, int(level.timestep), self.order)


def grid(start: int, steps: int) -> list[NoiseLevel]:
    return [NoiseLevel(float(s), 1.0 / (1.0 + (s / steps) ** 2)) for s in range(start, -1, -1)]


@torch.inference_mode()  # called from scripts too: without it each step's graph is kept (6 GB for 10 samples)
def run_sampler(sampler, restorer, x, start: int, steps: int, chunk: int = 50) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], chunk):
        y = x[i : i + chunk]
        for step in sampler(_part(restorer, i, i + chunk), y, grid(start, steps)):
            y = step.x_next
        out.append(y)
    return torch.cat(out)


def _slice_tokens(tokens, lo, hi):
    ids, offsets = tokens
    end = offsets[hi] if hi < len(offsets) else len(ids)
    return ids[offsets[lo] : end], offsets[lo:hi] - offsets[lo]


def to_u8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of 10·log10(255²/MSE)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def held_out(kind: str, n: int, seed: int = HELD_OUT_SEED):
    """Held-out scenes in the model's world: images, held-out captions, the masked object's index and its box."""
    rng = np.random.default_rng(seed)
    images, captions, scenes, boxes, which = [], [], [], [], []
    for _ in range(n):
        scene = sample_scene(rng, max_objects=1 if kind == "blur" else 2)
        image, alphas = render_layers(scene, rng)
        i = int(rng.integers(len(alphas)))
        images.append(image)
        captions.append(caption(scene, rng, held_out=True))
        scenes.append(scene)
        which.append(i)
        boxes.append(object_mask(rng, alphas[i : i + 1]))
    region = torch.from_numpy(np.stack(boxes)[:, None].astype(np.float32))
    return np.stack(images), captions, scenes, which, region


def restoration(kind: str, n: int = 64, log=print, model: str | None = None, guidance: float | None = None) -> dict:
    net, words = load_cold_file(cold_model_path(model or f"cold-{kind}"))
    cfg = net.config
    guidance = cfg.guidance if guidance is None else guidance
    d = Degradation(cfg.kind, cfg.steps, cfg.size)
    images, captions, _, _, region = held_out(kind, n)
    x0 = to_unit(images)
    order = mask_order(region) if kind == "mask" else None
    known = x0 if kind == "mask" else None
    r = BatchRestorer(net, words, d, captions, order, known, guidance)
    result = {}
    for s in (cfg.steps // 2, cfg.steps):
        x_s = d(x0, s, order)
        single = torch.cat([_part(r, i, i + 50)(x_s[i : i + 50], grid(s, cfg.steps)[0]) for i in range(0, n, 50)])
        row = {"degraded": psnr(to_u8(x_s), images), "single R": psnr(to_u8(single), images)}
        for name, sampler in (("Alg. 1", cold_naive), ("Alg. 2", cold_improved)):
            row[name] = psnr(to_u8(run_sampler(sampler, r, x_s, s, cfg.steps)), images)
        result[f"s={s}"] = row
        log(f"cold-{kind} restoration s={s}/{cfg.steps}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in row.items()))
    return result


def _part(r: BatchRestorer, lo: int, hi: int) -> BatchRestorer:
    part = BatchRestorer.__new__(BatchRestorer)
    part.__dict__ = dict(r.__dict__)
    part.order = None if r.order is None else r.order[lo:hi]
    part.known = None if r.known is None else r.known[lo:hi]
    if r.tokens[0] is not None:
        part.tokens = _slice_tokens(r.tokens, lo, min(hi, len(r.tokens[1])))
    return part


def one_flat_object(image: np.ndarray):
    """(ok, (shape, colour)): the detector finds exactly one object and the border is one flat colour."""
    found = detect(image)
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    flat = np.linalg.norm(border - np.median(border, axis=0), axis=1).max() <= FLAT_BORDER
    if len(found.objects) != 1 or not flat:
        return False, None
    obj = found.objects[0]
    return True, (obj.shape, obj.colour)


def start_noise(degradation: Degradation, n: int, generator: torch.Generator, kind: str = "white") -> torch.Tensor:
    """The perturbation added to the GMM colour at s = T (§5.1), unit scale: "white" is N(0, I) per pixel, as the
    app adds it; "low:S" is that noise blurred by D(·, S) and rescaled to unit std per image, so it lives in the low
    frequencies that x_s keeps at large s (the restorer has seen those at s < T; white noise it never saw)."""
    size = degradation.size
    white = torch.randn((n, 3, size, size), generator=generator)
    if kind == "white":
        return white
    low = degradation(white, int(kind.split(":")[1]))
    return low / low.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)


def hybrid(naive_steps: int):
    """Algorithm 1 for the first `naive_steps` steps, then Algorithm 2: the app's "branch at step k and switch
    sampler" (docs/cold.md), as one sampler for the evaluation."""

    def sample(denoiser, x, levels, start: int = 0):
        for step in cold_naive(denoiser, x, levels[: naive_steps + 1], start=start):
            x = step.x_next
            yield step
        yield from cold_improved(denoiser, x, levels, start=max(start, naive_steps))

    sample.__name__ = f"hybrid_{naive_steps}"
    return sample


def perturbed_naive(scale: float, seed: int = 0, until: int = 0):
    """Algorithm 1 with noise at each step: x_{s'} = D(x̂0, s') + scale·n, n = D(ε, s') rescaled to unit std per
    image (ε ~ N(0, I) fresh at each step with s' ≥ `until`): noise blurred to the level R reads next, never the
    white noise it never saw. The start's noise cannot break Alg. 1's symmetry (R reads a flat x_T's colour only,
    docs/cold.md); noise at later steps reaches R where x_s already has structure, so its shape choice depends on
    more than the start colour. A measurement for the generation-diversity target, not an app sampler."""

    def sample(denoiser, x, levels, start: int = 0):
        generator = torch.Generator().manual_seed(seed)
        for i in range(start, len(levels) - 1):
            level, nxt = levels[i], levels[i + 1]
            x0 = denoiser(x, level)
            x_next = denoiser.degrade(x0, nxt)
            if nxt.timestep >= max(until, 1):
                low = denoiser.degrade(torch.randn(x0.shape, generator=generator), nxt)
                x_next = x_next + scale * low / low.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
            yield Step(i, level, nxt, x, x0, denoiser.degrade(x0, level) - x_next, x_next)
            x = x_next

    sample.__name__ = f"perturbed_naive_{scale:g}_from_{until}"
    return sample


def generation(n: int = 100, noise: float = 0.002, sampler=cold_improved, seed: int = 0, log=print,
               save: Path | None = None, noise_kind: str = "white", start: str = "model",
               model: str = "cold-blur") -> dict:
    """`seed` 0 is the evaluation's; tune on other seeds (the model card's sweeps used seed 1). `start`: "model",
    the file's own generation start (its low-frequency prior at s0 when it has one, as the app starts); "flat",
    the paper's one colour per channel at s = T (§5.1), whatever the file carries."""
    path = cold_model_path(model)
    net, words = load_cold_file(path)
    cfg = net.config
    d = Degradation(cfg.kind, cfg.steps, cfg.size)
    prior = read_start_prior(path) if start == "model" else None
    generator = torch.Generator().manual_seed(seed)
    starts = []
    for _ in range(n):  # one at a time, each as the app draws it for one seed
        if noise_kind == "white":
            s0, x = generation_start(cfg, prior, 1, generator, noise)
        else:
            s0, x = generation_start(cfg, prior, 1, generator, 0.0)
            x = x + noise * start_noise(d, 1, generator, noise_kind)
        starts.append(x)
    x_t = torch.cat(starts)
    images = to_u8(run_sampler(sampler, BatchRestorer(net, words, d), x_t, s0, cfg.steps))
    checks = [one_flat_object(image) for image in images]
    pairs = {pair for ok, pair in checks if ok}
    result = {"samples": n, "seed": seed, "noise": noise, "noise kind": noise_kind, "sampler": sampler.__name__,
              "start step": s0,
              "one object on flat background": sum(ok for ok, _ in checks) / n, "distinct (shape, colour)": len(pairs),
              # what the detector read the valid ones as: soft blobs read as circles and rings
              "shapes": dict(Counter(pair[0] for ok, pair in checks if ok).most_common()),
              "distinct images": len({image.tobytes() for image in images})}
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        rows = n // 10
        grid_image = images[: rows * 10].reshape(rows, 10, CANVAS, CANVAS, 3).transpose(0, 2, 1, 3, 4)
        from PIL import Image

        Image.fromarray(grid_image.reshape(rows * CANVAS, 10 * CANVAS, 3)).save(save)
    log(f"cold-blur generation: {result}")
    return result


def inpainting(n: int = 40, sampler=cold_improved, log=print, prompt: str = "hole", model: str = "cold-mask",
               seed: int = HELD_OUT_SEED + 1, guidance: float | None = None) -> dict:
    """`prompt` "hole": the held-out noun phrase and place of the object under the hole, what a user types for the
    hole ("a heart in green in the bottom left corner"); "scene": the whole scene's held-out caption (every object,
    the background), which a bag of words cannot tie to the hole in a two-object scene. `seed`: the model card's 40
    cases by default; another seed gives a fresh set, to check a checkpoint chosen on the card's cases.
    `guidance`: the CFG scale w on x̂0 (cold_model.guided_x0); None: the model's own (ColdConfig.guidance)."""
    net, words = load_cold_file(cold_model_path(model))
    cfg = net.config
    guidance = cfg.guidance if guidance is None else guidance
    d = Degradation(cfg.kind, cfg.steps, cfg.size)
    images, captions, scenes, which, region = held_out("mask", n, seed=seed)
    if prompt == "hole":
        rng = np.random.default_rng(seed + 1)
        captions = [hole_caption(scene.objects[i], rng, held_out=True) for scene, i in zip(scenes, which)]
    x0 = to_unit(images)
    order = mask_order(region)
    r = BatchRestorer(net, words, d, captions, order, x0, guidance)
    out = to_u8(run_sampler(sampler, r, d(x0, cfg.steps, order), cfg.steps, cfg.steps))
    keep = region[:, 0].numpy() < 0.5
    unchanged = all(np.array_equal(out[i][keep[i]], images[i][keep[i]]) for i in range(n))
    hits = colour_hits = shape_hits = 0
    for i in range(n):
        target = scenes[i].objects[which[i]]
        found = [obj for obj in detect(out[i]).objects if obj.position == target.position]
        hits += any(obj.shape == target.shape and obj.colour == target.colour for obj in found)
        colour_hits += any(obj.colour == target.colour for obj in found)
        shape_hits += any(obj.shape == target.shape for obj in found)
    result = {"cases": n, "seed": seed, "sampler": sampler.__name__, "prompt": prompt, "guidance": guidance,
              "object (shape and colour) back in the hole": hits / n, "colour back in the hole": colour_hits / n,
              "shape back in the hole": shape_hits / n, "unmasked pixels unchanged": unchanged,
              "example prompt": captions[0]}
    log(f"cold-mask inpainting: {result}")
    return result


def evaluate(kinds: list[str], log=print, samples: Path | None = None) -> dict:
    torch.set_num_threads(1)
    began = time.monotonic()
    report: dict = {}
    with torch.inference_mode():
        for kind in kinds:
            report[kind] = {"restoration": restoration(kind, log=log)}
            if kind == "blur":
                report[kind]["generation"] = [  # the app's start (the file's prior), then the paper's flat one
                    generation(noise=0.002, log=log, save=samples / "cold-blur-noise.png" if samples else None),
                    generation(noise=0.0, log=log, save=samples / "cold-blur-no-noise.png" if samples else None),
                    generation(noise=0.002, sampler=cold_naive, log=log),
                    generation(noise=0.002, sampler=cold_naive, start="flat", log=log,
                               save=samples / "cold-blur-flat-naive.png" if samples else None),
                    generation(noise=0.0, sampler=cold_naive, start="flat", log=log),
                    generation(noise=0.002, start="flat", log=log),
                ]
            if kind == "mask":
                report[kind]["inpainting"] = [inpainting(sampler=sampler, prompt=prompt, log=log)
                                              for prompt in ("hole", "scene") for sampler in (cold_improved, cold_naive)]
    report["minutes"] = round((time.monotonic() - began) / 60, 1)
    return report




def run_cli(args) -> int:
    """`studio evaluate --cold blur,mask [--json FILE] [--samples DIR]`."""
    import json

    from ..engine import UserError

    kinds = [k.strip() for k in args.cold.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("blur", "mask", "down"):
            raise UserError(f"--cold takes blur, mask and down, got {kind!r}")
        if not cold_model_path(f"cold-{kind}").exists():
            raise UserError(f"cold-{kind} is not trained: studio train --stage cold --degradation {kind}")
    report = evaluate(kinds, log=lambda line: print(line, flush=True), samples=args.samples)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0
