"""Status that tells the truth (#18 item 8): the selected run's own status, a branch's own steps, an inversion's
two passes; a branched PNG that records its lineage, and a drop that says how to reproduce it (and does)."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image
from ui_helpers import GENERATION_TIMEOUT_MS, sample_image

from studio.engine import parse_parameters


def progress(window) -> str:
    return window.prompt_panel.progress.format()


def generate(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    return window.history.selected


def branch(window, qtbot, run, index):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.branch(run, index)
    return window.controller.record


def test_the_status_line_follows_the_selected_run(window, qtbot):
    done = generate(window, qtbot)
    assert re.fullmatch(r"Done · 6 steps in \d+:\d\d", progress(window))
    window.prompt_panel.steps.setValue(12)
    window.controller.step.connect(lambda e: e.step == 2 and window.cancel())
    with qtbot.waitSignal(window.controller.cancelled, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    cancelled = window.history.selected
    assert progress(window) == f"Cancelled at step {cancelled.recorded}/12"
    window.history.select(done)
    assert re.fullmatch(r"Done · 6 steps in \d+:\d\d", progress(window))  # not the last job's "Cancelled …"
    window.history.select(cancelled)
    assert progress(window) == f"Cancelled at step {cancelled.recorded}/12"


def test_a_branch_counts_its_own_steps(window, qtbot):
    parent = generate(window, qtbot)
    child = branch(window, qtbot, parent, 2)
    assert child.steps == 6 and child.from_step == 2
    assert re.fullmatch(r"Done · 4 steps \(branched after step 2\) in \d+:\d\d", progress(window))


def test_an_inversion_says_both_passes(window, qtbot):
    window.prompt_panel.steps.setValue(3)
    texts = []
    window.controller.step.connect(lambda e: texts.append(progress(window).split(" · ")[0]))
    request = window.prompt_panel.request(init_image=sample_image(64), cfg=1.0, width=64, height=64)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.controller.invert(request, 0)
    assert texts == ["Inverting 1/3", "Inverting 2/3", "Inverting 3/3",
                     "Reconstructing 1/3", "Reconstructing 2/3", "Reconstructing 3/3"]
    run = window.history.selected
    assert run.kind == "invert" and run.recorded == 3
    assert re.fullmatch(r"Inverted in 3 \+ 3 steps · \d+:\d\d", progress(window))


def test_a_branched_png_records_its_lineage_and_a_drop_reproduces_it(make_window, qtbot, tmp_path):
    window = make_window()
    panel = window.prompt_panel
    panel.seed.setValue(11)
    root = generate(window, qtbot)
    panel.prompt.setPlainText("a blue square")
    panel.seed.setValue(12)
    panel.sampler.setCurrentIndex(panel.sampler.findData("euler_a"))
    child = branch(window, qtbot, root, 3)
    panel.cfg.setValue(5.0)
    grandchild = branch(window, qtbot, child, 4)
    path = tmp_path / "branch.png"
    assert window.save_image(grandchild, str(path))
    with Image.open(path) as im:
        text, saved = im.info["parameters"], np.asarray(im.convert("RGB"))
    settings = parse_parameters(text)
    assert settings["prompt"] == "a blue square" and settings["cfg"] == 5.0 and "Model: tiny-random," in text
    assert [(e["from_step"], e["settings"].get("seed")) for e in settings["lineage"]] == [(4, 12), (3, 11)]

    other = make_window(offer_restore=False)
    other.prompt_panel.prompt.setPlainText("something else")
    other.handle_dropped_path(str(path))
    bar = other.message_bar.text()
    assert other.prompt_panel.prompt.toPlainText() == "a blue square" and other.prompt_panel.cfg.value() == 5.0
    assert "after step 4 of a run with seed 12" in bar and "branch from its step 5" in bar
    labels = [b.text() for b in other.message_bar.action_buttons()]
    assert labels == ["Open as image", "Reproduce"]
    other.message_bar.action_buttons()[1].click()
    qtbot.waitUntil(lambda: "Reproduced" in other.message_bar.text(), timeout=3 * GENERATION_TIMEOUT_MS)
    final = other.history.selected
    assert len(other.history) == 3 and final.from_step == 4 and final.parent.from_step == 3
    assert final.parent.parent.request.seed == 11 and final.request.sampler == "euler_a"
    np.testing.assert_array_equal(final.image, saved)  # the same picture, from its PNG alone


def test_a_plain_png_offers_no_reproduce(window, qtbot, tmp_path):
    run = generate(window, qtbot)
    path = tmp_path / "plain.png"
    assert window.save_image(run, str(path))
    window.handle_dropped_path(str(path))
    assert [b.text() for b in window.message_bar.action_buttons()] == ["Open as image"]
    assert "branch" not in window.message_bar.text()
