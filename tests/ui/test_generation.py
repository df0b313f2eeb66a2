import threading

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QPushButton, QSlider
from ui_helpers import GENERATION_TIMEOUT_MS, paint_stroke, sample_image

from studio.engine import Decoded, EventKind


def record(window):
    events = []
    c = window.controller
    for signal in (c.started, c.step, c.finished, c.cancelled):
        signal.connect(lambda event: events.append(event))
    c.failed.connect(lambda message: events.append(message))
    return events


def test_inpainting_run_streams_steps_in_order_and_fills_the_timeline(window, qtbot):
    window.open_image(sample_image(64))
    window.canvas.set_brush_size(12)
    paint_stroke(window.canvas, (16, 32), (48, 32))
    window.prompt_panel.strength.setValue(1.0)  # re-run every step: N steps in, N on the timeline
    steps = window.prompt_panel.steps.value()
    c = window.controller
    signals = [c.started] + [c.step] * steps + [c.finished]
    with qtbot.waitSignals(signals, order="strict", timeout=GENERATION_TIMEOUT_MS):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    run = window.history.selected
    assert run.kind == "inpaint" and run.status == "finished"
    assert run.request.mask is not None and run.request.init_image is not None
    assert run.recorded == steps
    slider = window.findChild(QSlider, "timelineSlider")
    assert slider.maximum() == steps - 1 and slider.value() == steps - 1

    views = [window.timeline.views[k] for k in ("x_t", "x0", "eps")]
    shown_last = [v.array.copy() for v in views]
    slider.setValue(0)
    shown_first = [v.array.copy() for v in views]
    for last, first in zip(shown_last, shown_first):
        assert not np.array_equal(last, first)
    assert {v.objectName() for v in views} == {"xtView", "x0View", "epsView"}
    assert window.timeline.plot.current == 0
    QTest.keyClick(slider, Qt.Key.Key_Right)
    assert slider.value() == 1
    assert window.canvas.showing_result and window.viewbar.before_after.isEnabled()


def test_request_mode_follows_the_canvas(window):
    request = window.build_request()
    assert request.init_image is None and request.mask is None and request.width == 64
    window.open_image(sample_image(64))
    request = window.build_request()
    assert request.init_image is not None and request.mask is None
    paint_stroke(window.canvas, (10, 10), (20, 20))
    request = window.build_request()
    assert request.mask is not None and request.mask.shape == (64, 64) and request.mask.max() == 1.0


def test_txt2img_then_use_as_input(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    run = window.history.selected
    assert run.kind == "txt2img" and run.image.shape == (64, 64, 3)
    assert window.canvas.showing_result
    window.viewbar.use_as_input.click()
    assert window.canvas.has_image()
    np.testing.assert_array_equal(window.canvas.image_array(), run.image)
    assert window.build_request().init_image is not None


def test_cancel_stops_within_one_step(window, qtbot):
    window.prompt_panel.steps.setValue(8)
    events = record(window)
    cancelled_at = []

    def cancel_on_first_step(event):
        if not cancelled_at:
            cancelled_at.append(event.step)
            window.findChild(QPushButton, "cancelButton").click()

    window.controller.step.connect(cancel_on_first_step)
    with qtbot.waitSignal(window.controller.cancelled, timeout=GENERATION_TIMEOUT_MS) as blocker:
        window.generate()
    event = blocker.args[0]
    assert event.kind is EventKind.CANCELLED
    assert event.step <= cancelled_at[0] + 1 < 8
    assert not any(getattr(e, "kind", None) is EventKind.FINISHED for e in events)
    run = window.history.selected
    assert run.status == "cancelled" and run.recorded == event.step
    assert window.findChild(QPushButton, "generateButton").isEnabled()
    # still usable: the next run completes
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()


def test_escape_cancels(window, qtbot):
    window.prompt_panel.steps.setValue(8)
    window.controller.step.connect(lambda e: e.step == 1 and QTest.keyClick(window, Qt.Key.Key_Escape))
    with qtbot.waitSignal(window.controller.cancelled, timeout=GENERATION_TIMEOUT_MS):
        QTest.keyClick(window.prompt_panel.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)


def test_branch_from_a_step_appears_under_its_parent(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    parent = window.history.selected
    window.timeline.slider.setValue(3)
    window.prompt_panel.prompt.setPlainText("a blue square")
    window.prompt_panel.sampler.setCurrentIndex(window.prompt_panel.sampler.findData("euler_a"))
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS) as blocker:
        window.findChild(QPushButton, "branchButton").click()
    child = window.controller.record
    assert blocker.args[0].run.id == child.id
    assert child.parent is parent and child.from_step == 3
    assert child.request.prompt == "a blue square"
    assert window.history.children(parent) == [child]
    tree = window.history_panel.tree
    parent_item = window.history_panel.item_for(parent)
    assert parent_item.childCount() == 1 and parent_item.child(0) is window.history_panel.item_for(child)
    assert tree.topLevelItemCount() == 1
    # clicking the parent restores its settings and timeline
    tree.setCurrentItem(parent_item)
    window.activate_run(window.history.selected)
    assert window.timeline.run is parent
    assert window.prompt_panel.prompt.toPlainText() == "a red circle"


def test_decode_step_runs_on_the_worker(window, qtbot, monkeypatch):
    from studio.engine import pipeline

    monkeypatch.setattr(pipeline, "CHEAP_DECODE_BUDGET", 0)  # a big model's run: no x̂0 decodes come with the steps
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    window.timeline.slider.setValue(2)
    with qtbot.waitSignal(window.worker.message, timeout=GENERATION_TIMEOUT_MS,
                          check_params_cb=lambda m: isinstance(m, Decoded)) as blocker:
        window.findChild(QPushButton, "decodeStepButton").click()
    decoded = blocker.args[0]
    assert (decoded.run_id, decoded.index, decoded.view) == (window.timeline.run.id, 2, "x0")
    assert decoded.image.shape == (64, 64, 3) and not decoded.image.flags.writeable
    assert window.timeline.run.decoded(2, "x0") is decoded.image  # the one decode cache: the run's record
    assert window.timeline.views["x0"].note == "decoded"
    assert "decoded" in window.canvas._caption


def test_invert_image_opens_a_run_to_branch_from(window, qtbot):
    window.prompt_panel.steps.setValue(3)
    window.open_image(sample_image(64))
    window.findChild(QPushButton, "invertButton").click()
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.findChild(QPushButton, "invertOkButton").click()
    run = window.history.selected
    assert run.kind == "invert" and run.recorded == 3
    assert window.timeline.run is run and window.timeline.branch_button.isEnabled()


def test_missing_model_shows_in_the_message_bar_and_the_app_stays_usable(window, qtbot, tmp_path):
    bar = window.message_bar
    window.use_model(str(tmp_path / "nowhere.safetensors"))
    qtbot.waitUntil(bar.isVisible, timeout=GENERATION_TIMEOUT_MS)
    assert "not found" in bar.text()
    bar.dismiss()
    with qtbot.waitSignal(window.controller.failed, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    assert bar.isVisible() and "not found" in bar.text() and bar.objectName() == "messageBar"
    assert window.findChild(QPushButton, "generateButton").isEnabled()
    window.prompt_panel.set_model("tiny-random")
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()


def test_closing_during_a_run_cancels_and_joins_the_worker(make_window, qtbot):
    window = make_window()
    window.prompt_panel.steps.setValue(8)
    with qtbot.waitSignal(window.controller.step, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    assert window.worker.is_alive()
    window.close()
    assert not window.worker.is_alive()
    assert not any(t.name == "studio-engine" for t in threading.enumerate())
