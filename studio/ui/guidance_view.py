"""The timeline's fourth view, the guidance term Δε of the selected step, and the loss curve under the σ plot.

The engine's StepInfo carries both: `previews["guidance"]` (the term universal guidance added to the predicted
noise, mapped to RGB like ε̂) on guided steps, and `loss` (ℓ before guidance). An unguided step — the run is not
guided, or the step lies past the guided fraction — shows a greyed "not guided".
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QBoxLayout

from .loss_plot import LossPlot

# the timeline's VIEWS entry: (preview key, objectName, caption, tooltip)
GUIDANCE_VIEW = ("guidance", "guidanceView", "guidance Δε",
                 "The guidance term Δε the guides added to the predicted noise at this step (mapped like ε̂)")


def losses(run: Any) -> list[tuple[int, float]]:
    """(step, ℓ) of every guided step recorded so far."""
    if run is None:
        return []
    return [(i, step.loss) for i, step in enumerate(run.step_infos) if step.loss is not None]


def add_loss_plot(timeline: Any, column: QBoxLayout) -> None:
    """The loss curve under the σ plot (shown for guided runs); a click picks a step, as on the σ plot."""
    timeline.loss_plot = LossPlot()
    timeline.loss_plot.stepClicked.connect(timeline.set_index)
    timeline.loss_plot.setVisible(False)
    column.addWidget(timeline.loss_plot, 1)


def refresh_guidance(timeline: Any, run: Any, index: int) -> None:
    """The guidance view's empty state and the loss curve at step `index` of `run` (the timeline's refresh has
    put the step's guidance term, or nothing, in the view)."""
    view = timeline.views["guidance"]
    guided = run is not None and (bool(run.request.guides) or any(s.loss is not None for s in run.step_infos))
    view.placeholder = "not guided" if run is not None and run.recorded > 0 else "—"
    view.setEnabled(view.array is not None)  # greyed on an unguided step
    view.setToolTip(GUIDANCE_VIEW[3] if view.array is not None else "No guidance at this step")
    timeline.loss_plot.setVisible(guided)
    timeline.loss_plot.set_losses(losses(run), run.steps if run is not None else 0)
    timeline.loss_plot.set_current(index)
