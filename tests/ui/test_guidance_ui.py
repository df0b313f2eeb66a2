"""Universal guidance in the app: painting a hint, the request's guides, the timeline's guidance view and loss
curve, branching with guidance switched, and the guidance settings kept across PNGs, sessions and QSettings."""

from __future__ import annotations

import dataclasses

import numpy as np
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QCheckBox, QComboBox, QLabel, QPushButton, QSlider, QToolButton
from ui_helpers import GENERATION_TIMEOUT_MS, paint_stroke, sample_image

from studio.engine import Generate, GenerationRequest, Guide, format_parameters, save_png
from studio.ui.autosave import read_session

BLUE = (0, 0, 255)


def submitted_jobs(window):
    """Every job the window hands the engine worker (the real submit still runs)."""
    jobs, submit = [], window.worker.submit

    def spy(job):
        jobs.append(job)
        return submit(job)

    window.worker.submit = spy
    return jobs


def paint_blue_hint(window):
    QTest.mouseClick(window.findChild(QToolButton, "hintButton"), Qt.MouseButton.LeftButton)
    window.canvas.set_hint_colour(QColor(*BLUE))
    window.canvas.set_brush_size(12)
    paint_stroke(window.canvas, (8, 40), (56, 40))


def generate(window, qtbot):
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    return window.history.selected


def guided_setup(window, steps=4, fraction=0.5, strength=50.0):
    panel = window.prompt_panel
    panel.steps.setValue(steps)
    panel.guide_steps.setValue(fraction)
    panel.guide_mode.setCurrentIndex(panel.guide_mode.findData("forward"))
    panel.colour_strength.setValue(strength)


def test_a_painted_hint_guides_the_run_and_the_timeline_shows_it(window, qtbot):
    jobs = submitted_jobs(window)
    guided_setup(window)
    paint_blue_hint(window)
    hint = window.canvas.hint_array()
    assert hint is not None and hint.shape == (64, 64, 4)
    painted = hint[..., 3] > 0
    assert painted[40, 8:56].all() and not painted[:20].any()  # where the mouse went, nothing elsewhere
    assert (hint[painted][:, :3] == BLUE).all()
    assert window.findChild(QCheckBox, "colourGuideCheck").isChecked()  # the first stroke switched the guide on
    run = generate(window, qtbot)

    (job,) = [j for j in jobs if isinstance(j, Generate)]
    (guide,) = job.request.guides
    assert (guide.kind, guide.strength) == ("colour", 50.0)
    np.testing.assert_array_equal(guide.image, hint)
    assert run.request.guides[0].kind == "colour"

    timeline, slider = window.timeline, window.findChild(QSlider, "timelineSlider")
    view = timeline.views["guidance"]
    assert view.objectName() == "guidanceView"
    assert window.findChild(QLabel, "guidanceCaption").text() == "guidance Δε"
    shown = {}
    for index in range(4):  # ceil(0.5 · 4) = 2 guided steps, then two unguided
        slider.setValue(index)
        assert timeline.plot.current == index and timeline.loss_plot.current == index
        shown[index] = {key: None if v.array is None else v.array.copy() for key, v in timeline.views.items()}
        if index < 2:
            assert view.array is not None and view.array.any() and view.isEnabled()
        else:
            assert view.array is None and view.placeholder == "not guided" and not view.isEnabled()
    for key in ("x_t", "x0", "eps", "guidance"):  # scrubbing from step 1 to step 2 moved all four
        assert not np.array_equal(shown[0][key], shown[1][key]), key
    plot = window.findChild(type(timeline.loss_plot), "lossPlot")
    assert plot.isVisible() and [i for i, _ in plot.points] == [0, 1]
    assert all(loss == run.step(i).loss for i, loss in plot.points)
    assert "guided: colour 50" in window.history_panel.item_for(run).text(0)


def test_branch_switches_guidance_off_and_on_at_step_k(window, qtbot):
    guided_setup(window, steps=4, fraction=1.0)
    paint_blue_hint(window)
    parent = generate(window, qtbot)
    assert all(parent.step(i).loss is not None for i in range(4))

    window.findChild(QCheckBox, "colourGuideCheck").click()  # off
    window.timeline.set_index(1)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        QTest.mouseClick(window.findChild(QPushButton, "branchButton"), Qt.MouseButton.LeftButton)
    off = window.history.selected
    assert off.parent_id == parent.id and off.from_step == 1 and off.request.guides == ()
    assert off.step(0).loss is not None  # the shared step before the branch point was guided
    assert all(off.step(i).loss is None and "guidance" not in off.step(i).previews for i in range(1, 4))
    assert "guided" not in window.history_panel.item_for(off).text(0)

    # on again at another strength, the hint cleared from the canvas: the parent's hint carries on
    window.canvas.clear_hints()
    window.findChild(QCheckBox, "colourGuideCheck").click()
    window.prompt_panel.colour_strength.setValue(5.0)
    window.history.select(parent)
    window.timeline.set_index(2)
    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.branch(parent, 2)
    stronger = window.history.selected
    (guide,) = stronger.request.guides
    assert guide.strength == 5.0
    np.testing.assert_array_equal(guide.image, parent.request.guides[0].image)
    assert all(stronger.step(i).loss is not None for i in range(2, 4))
    assert "guided: colour 5" in window.history_panel.item_for(stronger).text(0)


def test_hint_keep_and_mask_strokes_undo_in_the_order_made(window):
    canvas, toolbar = window.canvas, window.toolbar
    window.open_image(sample_image(64))
    canvas.set_brush_size(8)
    paint_stroke(canvas, (10, 10), (50, 10))  # mask
    toolbar.hint_action.trigger()
    paint_stroke(canvas, (10, 30), (50, 30))  # hint
    toolbar.keep_action.trigger()
    paint_stroke(canvas, (10, 45), (50, 45))  # keep
    toolbar.brush_action.trigger()
    paint_stroke(canvas, (10, 58), (50, 58))  # mask again

    def state():
        mask = canvas.mask.array()
        return (bool(mask[10].any()), canvas.hint_array() is not None, canvas.keep_array() is not None,
                bool(mask[58].any()))

    assert state() == (True, True, True, True)
    expected = [(True, True, True, False), (True, True, False, False), (True, False, False, False),
                (False, False, False, False)]
    for after in expected:
        canvas.undo()
        assert state() == after
    for after in reversed([(True, True, True, True)] + expected[:-1]):
        canvas.redo()
        assert state() == after
    # each layer's first stroke switched its guide on
    assert [g.kind for g in window.build_request().guides] == ["colour", "keep"]


def test_keep_region_and_reference_picture_reach_the_request(window, qtbot, tmp_path):
    window.open_image(sample_image(64))
    window.toolbar.keep_action.trigger()
    window.canvas.set_brush_size(10)
    paint_stroke(window.canvas, (5, 20), (60, 20))
    assert window.prompt_panel.settings_model.guide_keep_on
    reference = np.zeros((40, 30, 3), np.uint8)
    reference[:, :, 1] = 200
    path = tmp_path / "green.png"
    save_png(reference, str(path), "")
    section = window.prompt_panel.guidance_section
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    enter = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(section, enter)  # dropped on the Guidance section, not on the window
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(section, drop)
    assert not window.canvas.has_image() or window.canvas.image_array().shape == (64, 64, 3)  # not the input
    assert section.reference is not None and section.reference.shape == (40, 30, 3)
    assert not section.reference_thumb.pixmap().isNull()
    assert window.findChild(QCheckBox, "referenceGuideCheck").isChecked()
    combo = window.findChild(QComboBox, "referenceVariantCombo")
    combo.setCurrentIndex(combo.findData("palette"))
    guides = {g.kind: g for g in window.build_request().guides}
    assert set(guides) == {"keep", "reference"}
    keep = guides["keep"].image
    assert keep.shape == (64, 64) and keep.dtype == np.float32 and keep[20, 5:60].min() > 0.5 and keep[50].max() == 0
    assert guides["reference"].variant == "palette"
    np.testing.assert_array_equal(guides["reference"].image, reference)
    window.findChild(QToolButton, "clearReferenceButton").click()
    assert [g.kind for g in window.build_request().guides] == ["keep"]
    assert "reference picture" in window.message_bar.text()  # on without a picture: left out, and said


def test_guidance_settings_panel_cost_and_png_restore(window, tmp_path):
    panel, settings = window.prompt_panel, window.prompt_panel.settings_model
    section = panel.guidance_section
    assert section.objectName() == "guidanceSection" and not section.body.isVisible()
    section.toggle.click()
    assert section.body.isVisible()
    cost = window.findChild(QLabel, "guideCostLabel")
    forward = cost.text()
    assert forward.startswith("guided steps take ~") and forward.endswith("× as long")
    panel.guide_mode.setCurrentIndex(panel.guide_mode.findData("both"))
    panel.recurrence.setValue(3)
    assert cost.text() != forward and panel.backward_steps.isEnabled()

    hint = np.zeros((64, 64, 4), np.uint8)
    hint[:16, :, :] = (255, 0, 0, 255)
    made = GenerationRequest(prompt="guided", model="tiny-random", width=64, height=64, guide_mode="backward",
                             backward_steps=3, guide_steps=0.4, recurrence=2,
                             guides=(Guide("colour", 12.5, hint), Guide("reference", 2.0, hint[..., :3], "palette")))
    path = tmp_path / "guided.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(path), format_parameters(made))
    window.handle_dropped_path(str(path))
    assert (settings.guide_mode, settings.backward_steps, settings.guide_steps, settings.recurrence) == (
        "backward", 3, 0.4, 2)
    assert settings.guide_colour_on and settings.guide_colour_strength == 12.5
    assert settings.guide_reference_on and settings.guide_reference_variant == "palette"
    assert not settings.guide_keep_on
    assert "does not hold the guides' pictures" in window.message_bar.text()
    unguided = tmp_path / "plain.png"
    save_png(np.zeros((64, 64, 3), np.uint8), str(unguided), format_parameters(GenerationRequest(prompt="plain")))
    window.handle_dropped_path(str(unguided))
    assert not settings.guide_colour_on and not settings.guide_reference_on


def test_autosave_keeps_the_hint_and_the_reference(make_window, qtbot, tmp_path):
    first = make_window(autosave_dir=tmp_path / "a")
    paint_blue_hint(first)
    first.prompt_panel.guidance_section.set_reference(sample_image(32), "ref.png")
    first.prompt_panel.colour_strength.setValue(33.0)
    first.autosave_now()
    session = read_session(first.autosave.current)
    np.testing.assert_array_equal(session.hint, first.canvas.hint_array())
    np.testing.assert_array_equal(session.reference, sample_image(32))
    second = make_window(autosave_dir=tmp_path / "b", offer_restore=False)
    second.restore_session(session)
    np.testing.assert_array_equal(second.canvas.hint_array(), first.canvas.hint_array())
    np.testing.assert_array_equal(second.prompt_panel.guidance_section.reference, sample_image(32))
    assert second.prompt_panel.settings_model.guide_colour_strength == 33.0
    assert second.prompt_panel.settings_model.guide_reference_on


def test_the_history_line_and_the_cost_of_a_guided_step():
    from studio.ui.guides import guide_cost, guided_line

    hint = np.zeros((8, 8, 4), np.uint8)
    request = GenerationRequest(guides=(Guide("colour", 10.0, hint), Guide("reference", 1.5, hint[..., :3], "palette")),
                                guide_mode="both", backward_steps=3, recurrence=2)
    assert guided_line(request) == "guided: colour 10, reference 1.5 palette · both m=3 · k=2"
    assert guided_line(GenerationRequest()) == ""
    noisy = dataclasses.replace(request, guide_mode="noisy", recurrence=1)
    assert guided_line(noisy) == "guided: colour 10, reference 1.5 palette · noisy"  # no backward steps in this mode
    assert guide_cost("backward", 5, 1) > guide_cost("backward", 1, 1) > 1
    assert guide_cost("forward", 5, 2) > guide_cost("forward", 5, 1) > 1


def test_the_loss_axis_labels_fit_the_margin_the_sigma_plot_sets(window):
    """The loss plot's range labels sit in a margin as wide as "10.0" (the σ plot's, so the axes line up): every
    loss from 1e-9 to 1e14 gets a label that fits, and one that still reads as its value."""
    from studio.ui.loss_plot import axis_text

    plot = window.timeline.loss_plot
    room = plot._plot_rect().left() - 4
    for exponent in range(-9, 15):
        for mantissa in (1.0, 1.23, 4.5, 9.99):
            value = mantissa * 10.0**exponent
            text = axis_text(value)
            assert plot.fontMetrics().horizontalAdvance(text) <= room, (value, text)
            number = float(text.replace("k", "e3").replace("M", "e6").replace("G", "e9"))
            assert abs(number - value) <= 0.5 * value, (value, text)  # the right order of magnitude at least
    assert axis_text(120.0) == "120" and axis_text(0.25) == "0.25" and axis_text(1234.0) == "1.2k"
