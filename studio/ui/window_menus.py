"""The window's menu bar: every command with its shortcut (shortcuts live on QActions, so text fields keep
their own Ctrl+Z, Ctrl+V and printable keys: Qt gives the focused editor first claim on a key)."""

from __future__ import annotations

from PySide6.QtGui import QAction, QActionGroup, QKeySequence

from .theme import THEMES


def _action(window, menu, text: str, slot, shortcut=None, name: str | None = None, tip: str = "") -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        shortcuts = shortcut if isinstance(shortcut, list) else [shortcut]
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
    if name:
        action.setObjectName(name)
    if tip:
        action.setStatusTip(tip)
    action.triggered.connect(lambda _=False: slot())
    menu.addAction(action)
    return action


def build_menus(window) -> dict[str, QAction]:
    """File, Edit, View, Generate and Help for the MainWindow; returns the theme actions."""
    bar = window.menuBar()
    f = bar.addMenu("&File")
    _action(window, f, "&New blank canvas", window.new_blank_canvas, "Ctrl+N", "newCanvasAction")
    _action(window, f, "&Open image…", window.open_image_dialog, QKeySequence.StandardKey.Open, "openImageAction")
    _action(window, f, "&Paste image", window.paste, QKeySequence.StandardKey.Paste, "pasteAction")
    _action(window, f, "Open &run or model…", window.open_run_dialog, None, "openRunAction")
    f.addSeparator()
    _action(window, f, "&Save image…", window.save_image_dialog, QKeySequence.StandardKey.Save, "saveImageAction")
    _action(window, f, "Save &mask…", window.save_mask_dialog, None, "saveMaskAction")
    _action(window, f, "Save r&un…", window.save_run_dialog, None, "saveRunAction")
    f.addSeparator()
    _action(window, f, "&Quit", window.close, QKeySequence.StandardKey.Quit, "quitAction")

    e = bar.addMenu("&Edit")
    window.undo_action = _action(window, e, "&Undo", window.canvas.undo, QKeySequence.StandardKey.Undo, "undoAction")
    window.redo_action = _action(window, e, "&Redo", window.canvas.redo, ["Ctrl+Shift+Z", "Ctrl+Y"], "redoAction")
    e.addSeparator()
    _action(window, e, "Clear mask", window.canvas.mask.clear, ["Ctrl+Shift+Backspace", "Delete"], "clearMaskAction")
    _action(window, e, "Invert mask", window.canvas.mask.invert, "Ctrl+I", "invertMaskAction")
    e.addSeparator()
    e.addAction(window.toolbar.brush_action)
    e.addAction(window.toolbar.eraser_action)
    for name in ("hint_action", "keep_action"):  # the guidance tools (guide_tools.py)
        if hasattr(window.toolbar, name):
            e.addAction(getattr(window.toolbar, name))
    _action(window, e, "Smaller brush", lambda: window.canvas.set_brush_size(min(window.canvas.brush_size - 1, round(window.canvas.brush_size / 1.2))), "[", "smallerBrushAction")
    _action(window, e, "Larger brush", lambda: window.canvas.set_brush_size(max(window.canvas.brush_size + 1, round(window.canvas.brush_size * 1.2))), "]", "largerBrushAction")

    v = bar.addMenu("&View")
    _action(window, v, "Zoom to &fit", window.canvas.fit, "Ctrl+0", "zoomFitAction")
    _action(window, v, "&Actual size", window.canvas.actual_size, "Ctrl+1", "zoomActualAction")
    _action(window, v, "Zoom &in", lambda: window.canvas.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn, "zoomInAction")
    _action(window, v, "Zoom &out", lambda: window.canvas.zoom_by(1 / 1.25), QKeySequence.StandardKey.ZoomOut, "zoomOutAction")
    v.addSeparator()
    for dock in (window.prompt_dock, window.history_dock, window.timeline_dock):
        v.addAction(dock.toggleViewAction())
    v.addSeparator()
    themes = v.addMenu("&Theme")
    group = QActionGroup(window)
    theme_actions = {}
    for name in THEMES:
        action = QAction(name.capitalize(), window, checkable=True)
        action.triggered.connect(lambda _=False, n=name: window.set_theme(n))
        group.addAction(action)
        themes.addAction(action)
        theme_actions[name] = action

    _generate_menu(window, bar.addMenu("&Generate"))
    h = bar.addMenu("&Help")
    _action(window, h, "&Keyboard shortcuts", window._show_shortcuts, QKeySequence.StandardKey.HelpContents, "shortcutsAction")
    _action(window, h, "&About Diffusion Studio", window._show_about, None, "aboutAction")
    return theme_actions


def _generate_menu(window, g) -> None:
    window.generate_action = _action(window, g, "&Generate", window.generate, ["Ctrl+Return", "Ctrl+Enter"], "generateAction")
    window.cancel_action = _action(window, g, "&Cancel", window.cancel, "Esc", "cancelAction")
    window.cancel_action.setEnabled(False)
    g.addSeparator()
    window.branch_action = _action(window, g, "&Branch from the selected step", lambda: window.branch(window.timeline.run, window.timeline.index()), "Ctrl+B", "branchAction")
    _action(window, g, "&Decode the selected step", lambda: window.decode_step(window.timeline.run, window.timeline.index()), "Ctrl+D", "decodeStepAction")
    # ← / → scrub wherever the focus is; a text field or spin box being typed in keeps them (it claims the keys first)
    _action(window, g, "&Previous step", lambda: window.timeline.step_by(-1), "Left", "previousStepAction")
    _action(window, g, "&Next step", lambda: window.timeline.step_by(1), "Right", "nextStepAction")
    _action(window, g, "&Invert image…", window.invert_image, None, "invertImageAction")
    _action(window, g, "&Use result as input", window.use_result_as_input, "Ctrl+U", "useAsInputAction")
    _action(window, g, "New random &seed", window.prompt_panel.randomize_seed, "Ctrl+R", "randomSeedAction")
