"""The UI's copy of one run, built only from the engine's immutable messages (RunInfo, StepInfo, Decoded).

The engine thread never sees a RunRecord and the UI never sees the engine's live run: the record holds the latest
`RunInfo` snapshot, the steps received so far (a branch starts with its parent's steps before the branch point,
shared, not copied), the live thumbnail, and the one cache of full-quality decodes.
"""

from __future__ import annotations

import numpy as np

from ..engine import GenerationRequest, RunInfo, StepInfo


class RunRecord:
    def __init__(self, info: RunInfo, steps: tuple[StepInfo, ...] | list[StepInfo] = (),
                 parent: "RunRecord | None" = None):
        self.info = info
        self.parent = parent
        if not steps and parent is not None and info.from_step > 0:
            steps = parent.step_infos[: info.from_step]  # the shared prefix a branch continues from
        self.step_infos: list[StepInfo] = list(steps)
        self.preview: np.ndarray | None = None  # the newest step's x̂0 preview, until the image exists
        self.elapsed: float | None = None  # seconds the engine sampled for (unknown for a run loaded from a file)
        self._decoded: dict[tuple[int, str], np.ndarray] = {}

    # -- what the engine said ---------------------------------------------------------------------------------------
    def update(self, info: RunInfo) -> None:
        self.info = info

    def add_step(self, step: StepInfo) -> None:
        """Keep `step`; a repeated or out-of-order message (none should come) never corrupts the list."""
        if step.index == len(self.step_infos):
            self.step_infos.append(step)
        elif step.index < len(self.step_infos):
            self.step_infos[step.index] = step

    def add_decoded(self, index: int, view: str, image: np.ndarray) -> None:
        self._decoded[(index, view)] = image

    def decoded(self, index: int, view: str = "x0") -> np.ndarray | None:
        """A full-quality decode: asked for (DecodeStep), or made by the engine at every step (cheap decoders)."""
        image = self._decoded.get((index, view))
        if image is None and view == "x0" and 0 <= index < len(self.step_infos):
            image = self.step_infos[index].decoded
        return image

    @property
    def cheap_decode(self) -> bool:
        """The engine decodes this run's steps cheaply: asking for a missing decode (a loaded run) costs little."""
        return self.info.cheap_decode

    # -- reading ----------------------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.info.id

    @property
    def request(self) -> GenerationRequest:
        return self.info.request

    @property
    def read_as(self) -> str | None:
        """What the model's text encoder read instead of the prompt (its prompt reader's caption), if anything."""
        return self.info.read_as

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def image(self) -> np.ndarray | None:
        return self.info.image

    @property
    def parent_id(self) -> str | None:
        return self.info.parent_id

    @property
    def from_step(self) -> int:
        return self.info.from_step

    @property
    def steps(self) -> int:
        """Steps the run has when complete."""
        return self.info.steps

    @property
    def recorded(self) -> int:
        """Steps received so far (a branch's shared prefix included)."""
        return len(self.step_infos)

    @property
    def sigmas(self) -> tuple[float, ...]:
        return self.info.sigmas

    def step(self, index: int) -> StepInfo:
        return self.step_infos[index]

    def step_image(self, index: int, view: str) -> np.ndarray | None:
        """The cheap latent-resolution RGB of one step's x_t, x̂0, ε̂ or guidance term Δε (None on a step that was
        not guided)."""
        return self.step_infos[index].previews.get(view)

    def __repr__(self) -> str:
        return f"RunRecord({self.id}, {self.kind}, {self.status}, {self.recorded}/{self.steps})"
