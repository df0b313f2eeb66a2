"""The guidance evaluation's cases and scores (training/guidance_eval.py): hints that differ from or agree with the
prompt, the quadrant's ΔE₀₀, the low-pass correlation, and the report's shape on a tiny random model."""

from __future__ import annotations

import numpy as np
import torch

from studio.engine.model import build_tiny_random
from studio.training.colour_difference import delta_e00_rgb
from studio.training.guidance_eval import (DIFFERS_DELTA_E, REPORT_SEED, TUNE_SEED, ColourCase, Setting,
                                           colour_cases, evaluate_guidance, format_report, hint_image,
                                           layout_cases, layout_correlation, open_colour_cases, quadrant_delta_e,
                                           quadrant_slice)
from studio.training.scenes import COLOURS, make_batch


def test_cases_differ_from_every_scene_colour_or_agree_with_the_majority():
    cases = colour_cases(12, REPORT_SEED)
    _, captions, scenes = make_batch(REPORT_SEED, 12, held_out=True)
    assert len(cases) == 24 and [c.agrees for c in cases] == [False, True] * 12
    for i, scene in enumerate(scenes):
        differing, agreeing = cases[2 * i], cases[2 * i + 1]
        assert differing.prompt == agreeing.prompt == captions[i] and differing.quadrant == agreeing.quadrant
        assert agreeing.hint in [COLOURS[scene.background]] + [COLOURS[o.colour] for o in scene.objects]
        assert delta_e00_rgb(differing.hint, agreeing.hint) >= DIFFERS_DELTA_E
    tuning = {(c.prompt, c.seed) for c in colour_cases(12, TUNE_SEED)}
    assert not tuning & {(c.prompt, c.seed) for c in cases}  # reported on other scenes and seeds than tuned on


def test_open_cases_have_no_prompt_and_palette_hints():
    cases = open_colour_cases(40, REPORT_SEED)
    assert len(cases) == 40 and all(c.prompt == "" and not c.agrees for c in cases)
    assert {c.hint for c in cases} <= set(COLOURS.values()) and len({c.hint for c in cases}) > 6
    assert {c.quadrant for c in cases} == {0, 1, 2, 3}
    assert not {c.seed for c in open_colour_cases(40, TUNE_SEED)} & {c.seed for c in cases}


def test_hint_picture_and_quadrant_score():
    case = ColourCase("x", 0, 3, (40, 170, 60), agrees=False)
    hint = hint_image(case)
    assert hint.shape == (64, 64, 4) and hint[..., 3].sum() == 32 * 32 * 255 and hint[40, 40, 3] == 255
    image = np.zeros((64, 64, 3), np.uint8)
    image[quadrant_slice(3)] = (40, 170, 60)
    assert quadrant_delta_e(image, case) == 0.0
    image[quadrant_slice(3)] = (220, 30, 35)
    assert quadrant_delta_e(image, case) > 50


def test_layout_correlation_sees_structure_not_detail():
    reference = layout_cases(1, REPORT_SEED)[0].reference
    assert layout_correlation(reference, reference) > 0.999
    noisy = np.clip(reference + np.random.default_rng(0).normal(0, 40, reference.shape), 0, 255).astype(np.uint8)
    assert layout_correlation(noisy, reference) > 0.9  # per-pixel noise leaves the low-pass nearly as it was
    assert layout_correlation(reference[::-1, ::-1].copy(), reference) < 0.5


def test_report_on_a_tiny_model():
    torch.set_num_threads(1)
    model = build_tiny_random()
    report = evaluate_guidance(model, scenes=1, setting=Setting(steps=2, cfg=2.0, backward_steps=1))
    assert set(report["colour_differs"]) == {"unguided", "forward", "backward"}
    assert set(report["colour_open"]) == {"unguided", "forward", "backward", "forward k=3"}
    assert 0 <= report["layout"]["backward"]["beats_unguided"] <= 1
    assert "colour_differs hit rate" in format_report(report) and "colour_open, forward k=3" in format_report(report)
