"""Diffusion Studio's engine: what the UI, the CLI, training, benchmarks and scripts may use.

Everything named here is the engine's public face; the modules behind it may change. Importing this package
loads no torch: the torch-backed names (`Engine`, `LocalBackend`, `Run`, `load_model`, …) are imported on first
use, so the UI thread and `studio --help` stay fast.

    from studio.engine import GenerationRequest, LocalBackend, Generate
    backend = LocalBackend(); backend.start()
    for message in backend.execute(Generate(GenerationRequest(prompt="a red circle")), threading.Event()): ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .api import (
    GENERATION_JOBS,
    VIEWS,
    Backend,
    BackendReady,
    Branch,
    Decoded,
    DecodeStep,
    Event,
    EventKind,
    ForgetRun,
    Generate,
    Invert,
    Job,
    JobFailed,
    LoadedRun,
    LoadRuns,
    Message,
    ModelInfo,
    ModelProbed,
    ProbeModel,
    RunInfo,
    RunKind,
    RunsLoaded,
    RunSaved,
    RunStatus,
    SaveRun,
    StepInfo,
    View,
)
from .errors import UserError, log_file, report_internal_error
from .files import atomic_write, check_writable
from .images import (
    format_parameters,
    format_run_parameters,
    guide_pictures_note,
    load_mask,
    load_rgb,
    load_rgba,
    model_name,
    parse_parameters,
    read_parameters,
    save_png,
)
from .guidance import DEFAULT_STRENGTH, GUIDE_KINDS, GUIDE_MODES, REFERENCE_VARIANTS, Guide, guidance_cost
from .guidance import suggested_strength
from .guidance import ALL_GUIDE_KINDS, BACKWARD_MODES, TRAINED_GUIDE_KINDS, UNIVERSAL_MODES
from .classifier_guidance import classifier_labels
from .masks import feather_inward, grow_mask
from .cold import shipped_cold_models
from .request import GenerationRequest, RequestError
from .samplers import SAMPLER_TABLE, SamplerSpec

# name → module that defines it; imported (with torch) on first access
_LAZY = {
    "Engine": "pipeline",
    "INVERSION_REFINE": "pipeline",
    "validate": "pipeline",
    "LocalBackend": "backend",
    "Run": "run",
    "RunEvent": "events",
    "load_model": "loading",
    "ModelLoadError": "loading",
    "LatentDiffusion": "model",
    "available_devices": "devices",
    "model_info": "model_info",
    # universal guidance's per-kind default strengths and the time multiple of a guided step (guidance.py; no torch)
    "DEFAULT_STRENGTH": "guidance",
    "guidance_cost": "guidance",
    "is_cold_model": "cold_pipeline",  # cold diffusion (cold_pipeline.py): whether a model spec names a cold model
    "cold_model_info": "cold_pipeline",  # and what the UI and CLI need to know about it (size, guidance scale)
}

__all__ = [
    "GENERATION_JOBS", "VIEWS", "Backend", "BackendReady", "Branch", "Decoded", "DecodeStep", "Event", "EventKind",
    "ForgetRun", "Generate", "Invert", "Job", "JobFailed", "LoadedRun", "LoadRuns", "Message", "ModelInfo",
    "ModelProbed", "ProbeModel", "RunInfo", "RunKind", "RunsLoaded", "RunSaved", "RunStatus", "SaveRun", "StepInfo",
    "View", "UserError", "log_file", "report_internal_error", "atomic_write", "check_writable",
    "format_parameters", "format_run_parameters",
    "model_name", "load_mask", "load_rgb", "load_rgba", "guide_pictures_note",
    "parse_parameters", "read_parameters", "save_png", "GenerationRequest", "RequestError", "SAMPLER_TABLE",
    "SamplerSpec", "grow_mask", "feather_inward", "Guide", "GUIDE_KINDS", "GUIDE_MODES", "REFERENCE_VARIANTS",
    "DEFAULT_STRENGTH", "guidance_cost", "ALL_GUIDE_KINDS", "TRAINED_GUIDE_KINDS", "UNIVERSAL_MODES", "BACKWARD_MODES",
    "suggested_strength",
    "classifier_labels", "shipped_cold_models", *_LAZY,
]

if TYPE_CHECKING:
    from .backend import LocalBackend
    from .devices import available_devices
    from .events import RunEvent
    from .loading import ModelLoadError, load_model
    from .model import LatentDiffusion
    from .model_info import model_info
    from .guidance import DEFAULT_STRENGTH, guidance_cost
    from .pipeline import INVERSION_REFINE, Engine, validate
    from .run import Run


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
