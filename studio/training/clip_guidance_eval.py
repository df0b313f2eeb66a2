"""Does CLIP guidance steer the built-in model? Issue #15's CLIP row, measured with the scene detector.

As classifier_guidance_eval.py: every picture goes through the real engine with an **empty prompt** (CFG 1) and 25
steps, so only the guide says what to draw; each case asks for a random shape, colour and position (the same
targets and seeds: REPORT_SEED reports, TUNE_SEED chose the strength), here as one caption, "a red star at the top"
(the first wording of each position in scenes.POSITION_WORDS). Success ("all") = the detected object that matches
the most asked attributes has all three.

Rows: unguided; the noise-aware CLIP with DDIM (GLIDE's objective in Dhariwal & Nichol's Algorithm 2) and with DDPM
(GLIDE eq. 3, Algorithm 1), each also with self-recurrence (DDIM k = 4, DDPM k = 3); the clean CLIP's score on ẑ0
through universal guidance (forward + backward, k = 3). `sweep` runs one row over strengths on the tuning seeds.
"""

from __future__ import annotations

import time

import numpy as np

from ..engine import Engine, Guide, LatentDiffusion
from .classifier_guidance_eval import REPORT_SEED, STEPS, TUNE_SEED, Target, _request, judge, targets
from .detector import detect
from .scenes import POSITION_WORDS

STRENGTH = 10.0  # s of the noisy rows: DEFAULT_STRENGTH["clip"], chosen on TUNE_SEED (resources/guides/MODEL_CARD.md)
RECURRENCE = 3
# the DDIM row's recurrence: k = 4 (issue #15's seventh session, the shipped CLIP, s = 10: 43 of 64 TUNE_SEED cases
# 128 … 191 against k = 3's 38, then 37 against 34 on cases 192 … 255; docs/guidance_scale_sweep.md)
DDIM_RECURRENCE = 4
UNIVERSAL_STRENGTH = 1.0
ATTRIBUTES = ("shape", "colour", "position")


def target_caption(case: Target) -> str:
    text = f"a {case.colour} {case.shape} {POSITION_WORDS[case.position][0]}"
    return text.replace("a orange", "an orange")


def row_scores(engine: Engine, cases: list[Target], *, sampler: str = "ddim", mode: str | None = "noisy",
               strength: float = STRENGTH, recurrence: int = 1, images: list | None = None) -> dict:
    """Success rates of one row (mode None: unguided)."""
    hits: dict[str, list[bool]] = {}
    began = time.perf_counter()
    for case in cases:
        request = _request("", case.seed, 1.0, sampler)
        if mode is not None:
            guide = Guide("clip", strength, text=target_caption(case))
            request = request.replace(guides=(guide,), guide_mode=mode, recurrence=recurrence)
        image = engine.run(request).image
        if images is not None:
            images.append(image)
        for key, ok in judge(image, case.labels(ATTRIBUTES)).items():
            hits.setdefault(key, []).append(ok)
    return {k: round(float(np.mean(v)), 3) for k, v in hits.items()} | {
        "seconds_per_image": round((time.perf_counter() - began) / max(1, len(cases)), 2)}


def rows(strength: float | None = None) -> dict[str, dict]:
    strength = STRENGTH if strength is None else strength
    return {
        "unguided (empty prompt)": dict(mode=None),
        f"CLIP, DDIM (Alg. 2), s={strength:g}": dict(sampler="ddim", strength=strength),
        f"CLIP, DDIM (Alg. 2) + recurrence k={DDIM_RECURRENCE}, s={strength:g}": dict(
            sampler="ddim", strength=strength, recurrence=DDIM_RECURRENCE),
        f"CLIP, DDPM (GLIDE eq. 3, Alg. 1), s={strength:g}": dict(sampler="ddpm", strength=strength),
        f"CLIP, DDPM (GLIDE eq. 3) + recurrence k={RECURRENCE}, s={strength:g}": dict(
            sampler="ddpm", strength=strength, recurrence=RECURRENCE),
        f"universal, clean CLIP (both, k={RECURRENCE}), s={UNIVERSAL_STRENGTH:g}": dict(
            mode="both", strength=UNIVERSAL_STRENGTH, recurrence=RECURRENCE),
    }


def evaluate(model: LatentDiffusion, n: int = 40, seed: int = REPORT_SEED, only: tuple[str, ...] = (),
             strength: float | None = None, log=print) -> dict:
    """The rows on n held-out seeds; `only`: the rows whose name contains one of these words."""
    engine = Engine(loader=lambda spec, device, dtype: model)
    cases = targets(n, seed)
    report: dict = {"scenes": n, "seed": seed, "steps": STEPS, "caption": "a {colour} {shape} {position}"}
    for name, kwargs in rows(strength).items():
        if only and not any(word in name for word in only):
            continue
        report[name] = row_scores(engine, cases, **kwargs)
        log(f"{name}: {report[name]}")
    return report


def sweep(model: LatentDiffusion, strengths, n: int = 16, seed: int = TUNE_SEED, sampler: str = "ddim",
          mode: str = "noisy", recurrence: int = 1, log=print) -> dict:
    """One row over strengths (s = 0: unguided), with how many results the detector reads no object in."""
    engine = Engine(loader=lambda spec, device, dtype: model)
    cases = targets(n, seed)
    out = {}
    for s in strengths:
        images: list = []
        scores = row_scores(engine, cases, sampler=sampler, mode=mode if s > 0 else None, strength=s,
                            recurrence=recurrence, images=images)
        scores["no object read"] = round(float(np.mean([not detect(im).objects for im in images])), 3)
        out[s] = scores
        log(f"s={s:g}: {scores}")
    return out
