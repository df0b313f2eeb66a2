"""Previews for a small model (#18 item 6): the exact x̂0 at every step on the canvas and in the timeline, while
generating and while scrubbing; one smoothing rule for every picture."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF
from ui_helpers import GENERATION_TIMEOUT_MS

from studio.engine import Decoded
from studio.ui.images import smooth_scaling
from studio.ui.step_view import StepView


def test_the_canvas_shows_each_steps_exact_x0_while_generating(window, qtbot):
    shown = []
    window.controller.step.connect(lambda event: shown.append((event.step_info, window.canvas.shown_picture())))
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    assert len(shown) == window.prompt_panel.steps.value()
    for step, (image, caption) in shown:
        assert step.decoded.shape == (64, 64, 3)  # full resolution, not the 32×32 latent map
        assert image is step.decoded and caption.endswith("x̂0")
    run = window.history.selected
    assert run.preview is None or run.preview.shape == (64, 64, 3)  # the history thumbnail, too


def test_scrubbing_moves_the_canvas_and_the_x0_view_through_exact_decodes(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    run = window.history.selected
    window.timeline.slider.setValue(2)
    image, caption = window.canvas.shown_picture()
    assert image is run.step(2).decoded and caption == "Step 3 · x̂0 decoded"
    x0 = window.timeline.views["x0"]
    assert x0.array is run.step(2).decoded and x0.note == "decoded"
    assert not window.message_bar.isVisible()  # nothing to wait for: no "Decoding…" message
    window.timeline.slider.setValue(run.recorded - 1)  # the last step of a finished run: its result
    image, caption = window.canvas.shown_picture()
    np.testing.assert_array_equal(image, run.image)
    assert caption.startswith("Result")


def test_a_run_loaded_from_a_file_decodes_quietly_while_scrubbing(make_window, qtbot, tmp_path):
    first = make_window()
    with qtbot.waitSignal(first.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        first.generate()
    path = tmp_path / "run.safetensors"
    with qtbot.waitSignal(first.worker.message, timeout=GENERATION_TIMEOUT_MS):
        first.write_run_file(first.history.selected.id, str(path))
    expected = first.history.selected.step(1).decoded

    second = make_window(offer_restore=False)
    with qtbot.waitSignal(second.history.selectionChanged, timeout=GENERATION_TIMEOUT_MS):
        second.open_run_or_model(str(path))
    run = second.history.selected
    assert run.cheap_decode and run.step(1).decoded is None  # decodes are not saved with the run
    with qtbot.waitSignal(second.worker.message, timeout=GENERATION_TIMEOUT_MS,
                          check_params_cb=lambda m: isinstance(m, Decoded)):
        second.timeline.slider.setValue(1)
    image, caption = second.canvas.shown_picture()
    assert caption == "Step 2 · x̂0 decoded" and np.abs(image.astype(int) - expected).max() <= 2
    assert second.timeline.views["x0"].note == "decoded"


def test_the_big_model_path_keeps_the_latent_map_and_the_decode_button(window, qtbot, monkeypatch):
    from studio.engine import pipeline

    monkeypatch.setattr(pipeline, "CHEAP_DECODE_BUDGET", 0)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    run = window.history.selected
    assert not run.cheap_decode and run.step(2).decoded is None
    result = window.canvas.shown_picture()
    window.timeline.slider.setValue(2)
    assert window.canvas.shown_picture()[1] == result[1]  # nothing exact to show: the canvas stays
    assert window.timeline.views["x0"].array.shape == (32, 32, 3)


# -- one smoothing rule ----------------------------------------------------------------------------------------------
def test_smoothing_rule():
    assert not smooth_scaling(1.0) and not smooth_scaling(4.0) and not smooth_scaling(3.0000001)
    assert smooth_scaling(3.5) and smooth_scaling(0.5) and smooth_scaling(7.52)


def checkerboard(size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.where(((yy + xx) % 2 == 0)[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)


def colours_on_screen(canvas) -> int:
    """How many grey levels the picture has on screen (2: drawn as pixels; many: smoothed)."""
    shot = canvas.grab().toImage()
    rect = canvas.image_rect().adjusted(2, 2, -2, -2)
    levels = {shot.pixelColor(int(x), int(y)).red()
              for x in np.linspace(rect.left(), rect.right(), 40) for y in np.linspace(rect.top(), rect.bottom(), 40)}
    return len(levels)


def test_input_and_result_follow_the_same_rule(window):
    canvas = window.canvas
    window.open_image(checkerboard())
    for zoom, smoothed in ((4.0, False), (3.5, True)):
        canvas.actual_size()
        canvas.zoom_by(zoom, QPointF(canvas.width() / 2, canvas.height() / 2))
        assert canvas.zoom == zoom
        canvas.set_showing_result(False)
        as_input = colours_on_screen(canvas)
        canvas.set_preview(checkerboard(), "a result")
        as_result = colours_on_screen(canvas)
        canvas.set_preview(None)
        assert (as_input > 2) == (as_result > 2) == smoothed, (zoom, as_input, as_result)


def test_step_views_follow_the_rule(qtbot):
    view = StepView("testView")
    qtbot.addWidget(view)
    view.resize(200, 200)
    view.set_image(checkerboard())
    def levels():
        shot = view.grab().toImage()
        return len({shot.pixelColor(x, y).red() for x in range(40, 160, 3) for y in range(40, 160, 3)})

    assert levels() == 2  # a whole-number zoom: pixels as squares
    view.set_smooth(True)  # fills the box: 200 / 16 = 12.5, smoothed
    assert levels() > 2
