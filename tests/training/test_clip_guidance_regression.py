"""CLIP guidance still steers the built-in model (issue #15): a few seeds of its recommended row (GLIDE's CLIP score
in Algorithm 2 with self-recurrence k = 4, DDIM, s = 10, empty prompt, CFG 1, 25 steps) against the unguided runs,
judged by the scene detector. Bars are set below the rates measured on the held-out seeds
(resources/guides/MODEL_CARD.md), with room for 6 cases' luck."""

from __future__ import annotations

import pytest
import torch

from studio.engine import Engine, load_model
from studio.engine.clip_guidance import clip_path
from studio.training import classifier_guidance_eval as cge
from studio.training import clip_guidance_eval as clip_eval

pytestmark = pytest.mark.skipif(not clip_path(False).exists(), reason="the scene CLIP is not trained")
REGRESSION_SEED = 8_500_000  # neither the tuning nor the report seeds
CASES = 6


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    model = load_model("default", torch.device("cpu"), torch.float32)
    return Engine(loader=lambda spec, device, dtype: model)


def test_the_ddim_row_draws_what_the_caption_asks(engine):
    cases = cge.targets(CASES, REGRESSION_SEED)
    guided = clip_eval.row_scores(engine, cases, sampler="ddim", strength=clip_eval.STRENGTH,
                                  recurrence=clip_eval.DDIM_RECURRENCE)
    unguided = clip_eval.row_scores(engine, cases, mode=None)
    assert guided["position"] >= POSITION_BAR and guided["shape"] >= SHAPE_BAR, guided
    assert guided["all"] >= ALL_BAR, guided
    assert guided["position"] + guided["shape"] + guided["colour"] > unguided["position"] + unguided["shape"] + \
        unguided["colour"] + GAIN_BAR, (guided, unguided)


# held out (120 report seeds, MODEL_CARD.md, the ninth session's CLIP): k = 4 shape 88.3 %, colour 90.8 %, position
# 93.3 %, all three 77.5 %; the sum of the three 2.7 against 0.75 unguided (40 seeds). On 6 cases the bars leave room
# for about two cases' luck each
POSITION_BAR, SHAPE_BAR, ALL_BAR, GAIN_BAR = 4 / 6, 4 / 6, 3 / 6, 1.2
