"""The engine's face: typed jobs in, immutable messages out, through one `Backend` interface.

Whoever drives the engine (the app's worker thread, a test, later a remote server's client) hands a `Job` to
`Backend.execute` and iterates the messages it yields. A yield is a preview point; setting `cancel` stops a
generation at the next step boundary. Messages are frozen and carry only plain data (numbers, strings, read-only
numpy images, the frozen request), never the engine's live objects: only the engine writes a run, and a UI can
hold a message for as long as it likes while the engine goes on.

Imports no torch: the UI thread reads these types before the engine has loaded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, Literal, Mapping, Protocol, Union

import numpy as np

from .request import GenerationRequest

View = Literal["x_t", "x0", "eps"]  # a step's noisy latent, predicted clean latent, predicted noise
VIEWS: tuple[View, ...] = ("x_t", "x0", "eps")
RunKind = Literal["txt2img", "img2img", "inpaint", "invert"]
RunStatus = Literal["running", "finished", "cancelled", "failed"]


def frozen_array(array: np.ndarray | None) -> np.ndarray | None:
    """A read-only copy, so a message's images cannot be changed by whoever holds it."""
    if array is None:
        return None
    copy = np.array(array, copy=True)
    copy.setflags(write=False)
    return copy


# -- what the engine tells -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What the UI needs to know about a model before it generates with it (the answer to a ProbeModel job)."""

    spec: str  # as asked: "default", "tiny-random" or a path
    label: str  # short name to show: the file name, or the built-in name
    default_size: int  # pixels per side the model was trained at
    size_multiple: int  # image sides must be multiples of this
    default_cfg: float  # recommended classifier-free guidance scale
    prediction: str  # "epsilon" or "v"
    inpaints_natively: bool  # a 9-channel inpainting UNet
    latent_channels: int
    vae_factor: int  # pixels per latent pixel
    file_hash: str | None = None  # A1111's short hash: first 10 hex digits of the file's SHA-256; None for built-ins
    family: str = "ldm"  # "ldm" (latent diffusion) or "cold" (cold diffusion's restoration nets, cold_pipeline.py)
    samplers: tuple[str, ...] = ()  # the SAMPLER_TABLE names that run with this model (empty: every "ldm" one)


@dataclass(frozen=True)
class StepInfo:
    """One recorded step, as a UI shows it: where it sits on the noise schedule and its cheap previews."""

    index: int  # 0-based step number within the run
    timestep: float
    alpha_cumprod: float  # ᾱ_t
    sigma: float  # √((1−ᾱ)/ᾱ)
    previews: Mapping[str, np.ndarray] = field(repr=False)  # View → read-only HxWx3 uint8 at latent resolution
    # the exact VAE decode of x̂0 (read-only HxWx3 uint8, full resolution), made at every step when the run's
    # decoder is cheap (RunInfo.cheap_decode); None otherwise: the previews, or a DecodeStep job, stand in
    decoded: np.ndarray | None = field(default=None, repr=False, compare=False)
    loss: float | None = None  # universal guidance's loss ℓ at this step (None: not guided); previews["guidance"]
    # then shows the guidance term Δε, mapped like ε̂


@dataclass(frozen=True)
class RunInfo:
    """A run as it stands when the message was made: settings, lineage, status and (once finished) the image."""

    id: str
    request: GenerationRequest
    kind: RunKind
    status: RunStatus
    steps: int  # steps the run will have when complete
    recorded: int  # steps recorded so far, a branch's shared prefix included
    sigmas: tuple[float, ...]  # σ of each grid level (steps + 1 values), for the σ plot
    parent_id: str | None = None
    from_step: int = 0  # where this run branched off its parent
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # read-only HxWx3 uint8 result
    # every ancestor, nearest first: (its request, the step its child branched from); kept when the parent is not
    # loaded, so a branch's PNG can say how to reproduce it
    lineage: tuple[tuple[GenerationRequest, int], ...] = ()
    model_hash: str | None = None  # the model file's short hash (ModelInfo.file_hash) when the run was made
    cheap_decode: bool = False  # the engine decodes x̂0 at every step (StepInfo.decoded); DecodeStep is cheap too
    read_as: str | None = None  # the caption the text encoder read instead of the prompt (the prompt reader's)


class EventKind(Enum):
    STARTED = "started"  # sampling begins; `run` is known (and `total`)
    STEP = "step"  # one sampler step finished; `step_info` is it, `preview` its predicted x0 as RGB
    FINISHED = "finished"  # `run` holds the image
    CANCELLED = "cancelled"  # stopped at a step boundary; `run` keeps the steps so far
    ERROR = "error"  # `message` is one clear sentence for the user; `run` (if any) keeps its steps


class Progress:
    """Speed and time left, for any record with `step`, `total` and `elapsed` (this Event, the engine's RunEvent)."""

    step: int
    total: int
    elapsed: float

    @property
    def its_per_second(self) -> float:
        return self.step / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        rate = self.its_per_second
        return (self.total - self.step) / rate if rate > 0 else float("nan")


@dataclass(frozen=True)
class Event(Progress):
    """Progress of a generate, branch or invert job."""

    kind: EventKind
    job_id: int
    step: int = 0  # steps done so far
    total: int = 0  # steps in this job
    elapsed: float = 0.0  # seconds since sampling started
    preview: np.ndarray | None = field(default=None, repr=False)  # HxWx3 uint8 (latent resolution)
    run: RunInfo | None = None
    message: str = ""
    step_info: StepInfo | None = None  # STEP events of a recorded run
    internal: bool = False  # ERROR from a bug (its traceback is in the log), not from the user's input


@dataclass(frozen=True)
class Decoded:
    job_id: int
    run_id: str
    index: int
    view: View
    image: np.ndarray = field(repr=False)  # read-only HxWx3 uint8 at full resolution


@dataclass(frozen=True)
class ModelProbed:
    job_id: int
    info: ModelInfo


@dataclass(frozen=True)
class LoadedRun:
    run: RunInfo
    steps: tuple[StepInfo, ...]  # every recorded step, a parent's shared prefix included


@dataclass(frozen=True)
class RunsLoaded:
    job_id: int
    runs: tuple[LoadedRun, ...]  # in the order asked; a file that failed is named in `errors`
    errors: tuple[str, ...] = ()  # "name: why", one per damaged run file
    not_runs: tuple[str, ...] = ()  # paths that are no run file at all (a model checkpoint, most likely)


@dataclass(frozen=True)
class RunSaved:
    job_id: int
    run_id: str
    path: str


@dataclass(frozen=True)
class JobFailed:
    """A job other than generate / branch / invert went wrong."""

    job_id: int
    message: str  # one sentence for the user
    internal: bool = False  # a bug: the traceback is in the log


@dataclass(frozen=True)
class BackendReady:
    job_id: int  # 0: not the answer to a job
    devices: tuple[str, ...]  # what the engine can run on: "cpu", "cuda", "mps"


Message = Union[Event, Decoded, ModelProbed, RunsLoaded, RunSaved, JobFailed, BackendReady]


# -- what the engine is asked ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Generate:
    request: GenerationRequest
    job_id: int = 0


@dataclass(frozen=True)
class Branch:
    """Continue run `parent_id` from its step `from_step` with `request` (the parent's x_t and noise stream)."""

    request: GenerationRequest
    parent_id: str
    from_step: int
    job_id: int = 0


@dataclass(frozen=True)
class Invert:
    """DDIM inversion of `request.init_image` into a run to branch from."""

    request: GenerationRequest
    refine: int | None = None  # fixed-point iterations per step; None: the engine's default
    job_id: int = 0


@dataclass(frozen=True)
class DecodeStep:
    """Full-quality VAE decode of one step's view."""

    run_id: str
    index: int
    view: View = "x0"
    job_id: int = 0


@dataclass(frozen=True)
class ProbeModel:
    """Load a model and say what it is (ModelProbed); then, on the CPU, pack its weights for width×height pictures
    (0: the model's own size) so the first generation does not pay for it (Engine.prepare)."""
    spec: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    job_id: int = 0
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class SaveRun:
    run_id: str
    path: str
    job_id: int = 0


@dataclass(frozen=True)
class LoadRuns:
    paths: tuple[str, ...]
    job_id: int = 0


@dataclass(frozen=True)
class ForgetRun:
    """The UI no longer shows run `run_id`: the engine may free it (its branches keep what they share)."""

    run_id: str
    job_id: int = 0


Job = Union[Generate, Branch, Invert, DecodeStep, ProbeModel, SaveRun, LoadRuns, ForgetRun]
GENERATION_JOBS = (Generate, Branch, Invert)


class Backend(Protocol):
    """Everything a UI may ask of an engine. The in-process engine (`studio.engine.LocalBackend`) implements it; a
    remote one would too, and the UI would not change. One caller thread at a time."""

    def start(self) -> BackendReady:
        """Get ready (import torch, find devices); called once on the thread that will execute jobs."""
        ...

    def execute(self, job: Job, cancel: threading.Event) -> Iterator[Message]:
        """Run one job, yielding its messages. Never raises for a user's mistake or a bug: generation jobs end
        with an ERROR Event, the others with JobFailed."""
        ...
