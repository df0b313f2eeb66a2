"""How good is the model at its small world? Generate, then let the scene detector read the pictures back.

Everything goes through the real engine (`Engine.run` with the user's sampler, steps and guidance), from held-out
caption templates (`scenes.HELD_OUT_TEMPLATES`) and seeds no training run uses:

- text-to-image: the share of pictures whose background / object colour / shape / size / position the detector
  reads as the prompt says (detector.score: with two objects, an attribute is right only if right for both);
- inpainting: a one-object scene, a square hole over an empty grid cell, a prompt describing the scene plus a new
  object in that cell; right when the detector finds the new object (colour, shape, cell) there; and every pixel
  outside the hole must come back bit-identical (feather 0, so the blend mask is the hole);
- autoencoder: PSNR of reconstructions and the detector's accuracy on them (as on the originals).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine import Engine, GenerationRequest, LatentDiffusion
from ..engine.images import tensor_to_image
from ..engine.masks import grow_mask
from .detector import detect, score
from .scenes import (ANCHORS, COLOURS, SHAPES, CANVAS, POSITIONS, Scene, SceneObject, caption, grid_cell, make_batch,
                     render_layers, sample_scene)
from .data import to_unit

EVAL_SEED = 7_000_000  # held-out scenes and noise seeds; training draws from np.random.default_rng([data_seed, …])
ATTRIBUTES = ("background", "colour", "shape", "size", "position")
TARGETS = {
    "txt2img.background": 0.95, "txt2img.colour": 0.95, "txt2img.shape": 0.90, "txt2img.size": 0.85,
    "txt2img.position": 0.90, "inpaint.object_in_mask": 0.90, "inpaint.unmasked_unchanged": 1.0,
    "ae.psnr_db": 30.0, "ae.detector_all": 0.99,
}
INPAINT_HOLE = 26  # px side of the square hole: a medium object (≤ 22 px) plus margin
INPAINT_SIZES = ("small", "medium")


def engine_for(model: LatentDiffusion) -> Engine:
    return Engine(loader=lambda spec, device, dtype: model)


def generate(engine: Engine, prompt: str, seed: int, *, cfg: float, steps: int, sampler: str = "ddim",
             image: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    request = GenerationRequest(
        prompt=prompt, model="under-test", seed=seed, width=CANVAS, height=CANVAS, steps=steps, cfg=cfg,
        sampler=sampler, device="cpu", dtype="fp32", init_image=image, mask=mask, feather=0.0, grow=0,
        strength=1.0,  # inpaint the hole from pure noise: the model card's numbers were measured so
        inpaint_mode="model" if mask is not None else "auto",
    )
    return engine.run(request).image


# ---- text to image ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    scene: Scene
    prompt: str
    seed: int


def text_to_image_cases(n: int, seed: int = EVAL_SEED, held_out: bool = True) -> list[Case]:
    _, captions, scenes = make_batch(seed, n, held_out=held_out)
    return [Case(scene, text, seed + i) for i, (scene, text) in enumerate(zip(scenes, captions))]


def text_to_image_scores(model: LatentDiffusion, cases: list[Case], *, cfg: float, steps: int = 25,
                         sampler: str = "ddim") -> tuple[dict[str, float], list[np.ndarray]]:
    engine = engine_for(model)
    hits = {a: 0 for a in ATTRIBUTES}
    images = []
    for case in cases:
        image = generate(engine, case.prompt, case.seed, cfg=cfg, steps=steps, sampler=sampler)
        images.append(image)
        for attribute, right in score(case.scene, detect(image)).items():
            hits[attribute] += right
    return {a: hits[a] / len(cases) for a in ATTRIBUTES}, images


# ---- inpainting -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InpaintCase:
    image: np.ndarray  # the one-object scene
    mask: np.ndarray  # (64, 64) float32, 1 = repaint
    target: Scene  # the scene with the new object
    new: SceneObject
    prompt: str
    seed: int


def _hole(position: str) -> np.ndarray:
    row, column = grid_cell(position)
    cx, cy = ANCHORS[column], ANCHORS[row]
    grid = np.arange(CANVAS) + 0.5
    inside_x = np.abs(grid - cx) <= INPAINT_HOLE / 2
    inside_y = np.abs(grid - cy) <= INPAINT_HOLE / 2
    return (inside_y[:, None] & inside_x[None, :]).astype(np.float32)


def inpaint_cases(n: int, seed: int = EVAL_SEED + 1) -> list[InpaintCase]:
    rng = np.random.default_rng(seed)
    cases: list[InpaintCase] = []
    while len(cases) < n:
        scene = sample_scene(rng, max_objects=1)
        image, alphas = render_layers(scene, rng)
        occupied = alphas[0] > 0
        free = [p for p in POSITIONS if not (_hole(p).astype(bool) & grow_mask(occupied, 2)).any()]
        if not free:
            continue
        colours = [c for c in COLOURS if c != scene.background]
        new = SceneObject(SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))],
                          INPAINT_SIZES[rng.integers(len(INPAINT_SIZES))], free[rng.integers(len(free))])
        target = Scene(scene.background, scene.objects + (new,))
        cases.append(InpaintCase(image, _hole(new.position), target, new, caption(target, rng, held_out=True),
                                 seed + len(cases)))
    return cases


def inpaint_scores(model: LatentDiffusion, cases: list[InpaintCase], *, cfg: float, steps: int = 25,
                   sampler: str = "ddim") -> tuple[dict[str, float], list[np.ndarray]]:
    engine = engine_for(model)
    found = unchanged = complete = 0
    images = []
    for case in cases:
        result = generate(engine, case.prompt, case.seed, cfg=cfg, steps=steps, sampler=sampler,
                          image=case.image, mask=case.mask)
        images.append(result)
        keep = case.mask < 0.5
        unchanged += bool(np.array_equal(result[keep], case.image[keep]))
        detection = detect(result)
        found += any(
            o.colour == case.new.colour and o.shape == case.new.shape and o.position == case.new.position
            for o in detection.objects
        )
        complete += all(score(case.target, detection).values())
    n = len(cases)
    return {"object_in_mask": found / n, "unmasked_unchanged": unchanged / n, "whole_scene": complete / n}, images


# ---- autoencoder ------------------------------------------------------------------------------------------------


@torch.no_grad()
def autoencoder_scores(model: LatentDiffusion, n: int, seed: int = EVAL_SEED + 2) -> dict[str, float]:
    """PSNR of VAE reconstructions (mean latent) and the detector on them: all facts right, and per attribute."""
    images, _, scenes = make_batch(seed, n, held_out=True)
    x = to_unit(images)
    psnrs, hits, original_hits = [], 0, 0
    per_attribute = {a: 0 for a in ATTRIBUTES}
    for start in range(0, n, 50):
        chunk = x[start:start + 50].to(model.device, model.dtype)
        y = model.vae.decode(model.vae.encode(chunk).mode()).float().cpu()
        for i in range(len(chunk)):
            recon, original, scene = tensor_to_image(y[i:i + 1]), images[start + i], scenes[start + i]
            mse = np.mean((recon.astype(np.float64) - original.astype(np.float64)) ** 2)
            psnrs.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
            right = score(scene, detect(recon))
            hits += all(right.values())
            for attribute in ATTRIBUTES:
                per_attribute[attribute] += right[attribute]
            original_hits += all(score(scene, detect(original)).values())
    report = {"psnr_db": float(np.mean(psnrs)), "detector_all": hits / n}
    report |= {f"detector_{a}": per_attribute[a] / n for a in ATTRIBUTES}
    return report | {"detector_all_on_originals": original_hits / n}


# ---- the report -------------------------------------------------------------------------------------------------


def load_for_evaluation(spec: str) -> LatentDiffusion:
    from ..engine import load_model

    if spec.endswith(".pt"):
        from .train import load_checkpoint, model_from_checkpoint

        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        return model_from_checkpoint(load_checkpoint(path), use_ema=True).eval().requires_grad_(False)
    try:
        return load_model(spec, torch.device("cpu"), torch.float32)
    except ValueError as exc:
        raise FileNotFoundError(str(exc)) from None


def evaluate(model: LatentDiffusion, *, prompts: int = 120, inpaint: int = 40, reconstructions: int = 200,
             train_prompts: int = 0, cfg: float | None = None, steps: int = 25, sampler: str = "ddim",
             seed: int = EVAL_SEED, samples: Path | None = None) -> dict:
    cfg = model.config.default_cfg if cfg is None else cfg  # the guidance the model is meant to be used at
    report: dict = {"model": model.config.name, "cfg": cfg, "steps": steps, "sampler": sampler}
    began = time.perf_counter()
    if reconstructions:
        report["ae"] = autoencoder_scores(model, reconstructions, seed + 2)
    sheet = []
    if prompts:
        report["txt2img"], images = text_to_image_scores(model, text_to_image_cases(prompts, seed), cfg=cfg,
                                                         steps=steps, sampler=sampler)
        report["txt2img"]["n"] = prompts
        sheet += images
    if train_prompts:  # the training sentence templates (held-out seeds): how much is template generalisation?
        report["txt2img_train_templates"], _ = text_to_image_scores(
            model, text_to_image_cases(train_prompts, seed + 3, held_out=False), cfg=cfg, steps=steps, sampler=sampler
        )
        report["txt2img_train_templates"]["n"] = train_prompts
    if inpaint:
        report["inpaint"], images = inpaint_scores(model, inpaint_cases(inpaint, seed + 1), cfg=cfg, steps=steps,
                                                   sampler=sampler)
        report["inpaint"]["n"] = inpaint
        sheet += images
    report["seconds"] = round(time.perf_counter() - began, 1)
    if samples is not None and sheet:
        contact_sheet(sheet).save(samples)
    return report


def evaluate_spec(args: argparse.Namespace) -> dict:
    model = load_for_evaluation(args.model)
    return evaluate(
        model, prompts=args.prompts, inpaint=args.inpaint, reconstructions=args.reconstructions,
        train_prompts=args.train_prompts,
        cfg=args.cfg, steps=args.steps, sampler=args.sampler,
        seed=EVAL_SEED if args.seed is None else args.seed, samples=args.samples,
    )


def contact_sheet(images: list[np.ndarray], columns: int = 16) -> Image.Image:
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (CANVAS + 2), rows * (CANVAS + 2)), (255, 255, 255))
    for i, image in enumerate(images):
        sheet.paste(Image.fromarray(image), ((i % columns) * (CANVAS + 2), (i // columns) * (CANVAS + 2)))
    return sheet


def format_table(report: dict) -> str:
    lines = [f"model {report['model']}: {report['sampler']}, {report['steps']} steps, CFG {report['cfg']}",
             f"{'metric':34} {'value':>9} {'target':>9}"]
    for group in ("txt2img", "txt2img_train_templates", "inpaint", "ae"):
        for key, value in report.get(group, {}).items():
            if key == "n":
                continue
            name = f"{group}.{key}"
            target = TARGETS.get(name)
            shown = f"{value:9.2f}" if key == "psnr_db" else f"{100 * value:8.1f}%"
            goal = "" if target is None else (f"{target:9.1f}" if key == "psnr_db" else f"{100 * target:8.0f}%")
            lines.append(f"{name:34} {shown} {goal:>9}")
    lines.append(f"({report['seconds']} s)")
    return "\n".join(lines)
