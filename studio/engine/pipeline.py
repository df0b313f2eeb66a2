"""The engine: turns a GenerationRequest into a stream of Events, keeping every step on a timeline.

One `Engine` lives in one thread (the app's worker, the CLI's main thread) and caches the last model it loaded.
`Engine.generate` is a generator: each STEP event is the preview point and, through `cancel`, the stop point.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import numpy as np
import torch

from .devices import resolve_device, resolve_dtype
from .errors import UserError
from .events import EventKind, RunEvent
from .images import image_to_tensor, tensor_to_image
from .limits import check_branch, check_for_model, validate_limits
from .cpu_kernels import is_packed, packing_pass, parameter_count
from . import pack_cache
from .loading import load_model, source_changed
from .model import LatentDiffusion
from .model_info import file_hash
from .api import frozen_array
from .request import GenerationRequest, RequestError
from .run import Run
from .cold_pipeline import cold_generate, is_cold_run
from .guidance import (
    ALL_GUIDE_KINDS,
    GUIDE_MODES,
    REFERENCE_VARIANTS,
    GuidanceTrace,
    guide_active,
    guide_denoiser,
    guide_support,
    pixel_objective,
    recurrent_steps,
)
from .samplers import SAMPLER_TABLE, ddim_inversion
from .tasks import Plan, check_size
from .tasks import plan as make_plan
from .tiling import decode_bytes, is_out_of_memory, should_tile
from .timeline import Timeline, View

ModelLoader = Callable[[str, torch.device, torch.dtype], LatentDiffusion]


@contextmanager
def guided_context() -> Iterator[None]:
    """Gradients off but autograd possible inside (guides enable it locally), and out of any inference mode."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def validate(request: GenerationRequest) -> None:
    """Checks that need no model; each failure is one sentence for the user."""
    spec = SAMPLER_TABLE.get(request.sampler)
    if spec is None:
        raise RequestError(f"unknown sampler {request.sampler!r}; choose one of {', '.join(SAMPLER_TABLE)}")
    if request.karras and not spec.supports_karras:
        raise RequestError(f"{spec.display_name} has no Karras schedule; leave Karras off")
    if not 1 <= request.steps <= 1000:
        raise RequestError(f"steps must be between 1 and 1000, got {request.steps}")
    if not math.isfinite(request.cfg) or request.cfg < 0:
        raise RequestError(f"CFG scale must be a number ≥ 0, got {request.cfg}")
    if not math.isfinite(request.eta) or request.eta < 0:
        raise RequestError(f"eta must be ≥ 0, got {request.eta}")
    if not 0 < request.strength <= 1:
        raise RequestError(f"strength must be in (0, 1], got {request.strength}")
    if request.width <= 0 or request.height <= 0:
        raise RequestError(f"size must be positive, got {request.width}x{request.height}")
    if request.clip_skip < 1:
        raise RequestError(f"clip skip must be ≥ 1, got {request.clip_skip}")
    if request.prediction not in ("auto", "epsilon", "v"):
        raise RequestError(f"prediction must be auto, epsilon or v, got {request.prediction!r}")
    if not 0 <= request.seed < 2**63:
        raise RequestError(f"seed must be between 0 and 2^63 − 1, got {request.seed}")
    validate_limits(request)  # sides, mask grow/feather/padding, prompt text (limits.py)
    _validate_guidance(request)


def _validate_guidance(request: GenerationRequest) -> None:
    if request.guide_mode not in GUIDE_MODES:
        raise RequestError(f"guidance mode must be forward, backward, both or noisy, got {request.guide_mode!r}")
    if not (isinstance(request.guide_steps, (int, float)) and 0 <= request.guide_steps <= 1):
        raise RequestError(f"the guided fraction of steps must be between 0 and 1, got {request.guide_steps}")
    if not 1 <= request.backward_steps <= 100:
        raise RequestError(f"backward guidance steps must be between 1 and 100, got {request.backward_steps}")
    if not 1 <= request.recurrence <= 20:
        raise RequestError(f"recurrence must be between 1 (off) and 20, got {request.recurrence}")
    for guide in request.guides:
        if guide.kind not in ALL_GUIDE_KINDS:
            raise RequestError(f"unknown guide {guide.kind!r}; choose one of {', '.join(ALL_GUIDE_KINDS)}")
        if not math.isfinite(guide.strength) or guide.strength < 0:
            raise RequestError(f"a guide's strength must be a number ≥ 0, got {guide.strength}")
        if guide.kind == "reference" and guide.variant not in REFERENCE_VARIANTS:
            raise RequestError(f"a reference guide is 'layout' or 'palette', got {guide.variant!r}")
        if guide.kind == "classifier":
            if not guide.labels:
                raise RequestError("a classifier guide needs labels, e.g. shape=star")
            continue
        if guide.kind == "clip":
            if not isinstance(guide.text, str) or not guide.text.strip():
                raise RequestError('a CLIP guide needs a caption, e.g. "a red star at the top"')
            continue
        if request.guide_mode == "noisy":
            raise RequestError(f"noisy guidance is classifier guidance on z_t (a classifier or CLIP guide): a "
                               f"{guide.kind} guide works with forward, backward or both")
        if guide.image is None:
            raise RequestError(f"the {guide.kind} guide has no picture; give it one")
        if guide.kind == "keep" and request.init_image is None:
            raise RequestError("a keep-region guide keeps part of the input image: give an input image")
    if request.guides and request.only_masked:
        raise RequestError("guidance and only-masked inpainting do not work together yet; turn one of them off")


# Backward guidance's step: this fraction of Polyak's step ℓ/‖∇ℓ‖² (guidance.backward_delta), the same for every
# loss, size and model. A fixed step size has no right value: on the built-in model (64 px, a quarter-picture hint)
# a step of 1 left the picture as it was and 1e4 moved it only part of the way, while on a small stroke the
# per-pixel gradient of a mean loss is larger and the same step overshoots. With 1.0 and m = 5 on all steps:
# 16/16 tuning scenes within ΔE₀₀ 15 of the hint (training/guidance_eval.py; held-out numbers in DEFAULT_STRENGTH's
# note). 2.0 (the full step on a quadratic) did better with 70 % of the steps guided (4/8 against 2/8); not tried
# with all steps guided, where 1.0 already reached every tuning case.
BACKWARD_LR = 1.0


# Fixed-point iterations per inversion step. Shipped model, 16 held-out scenes, 50 steps, PSNR of the regenerated
# picture against the VAE round trip (benchmarks/bench_inversion.py): 0 → mean 38.1 dB, worst 5.3 dB; 1 → 56.5 / 39.2;
# 2 → 64.3 / 48.1; 4 → 74.2 / 62.4. One iteration removes the failures at twice the cost.
INVERSION_REFINE = 1

# Decoding x̂0 at every step is "cheap" below this many decoder parameters × decoded pixels (a proxy for the
# decoder's multiply-adds that needs no timing, so the choice is the same on every run and machine). Measured on two
# busy CPU cores (benchmarks/bench_step_decode.py, interleaved rounds): the built-in model's decoder (1.49 M
# parameters) at 64 px = 6.1e9, one decode ≈ 0.66 of a guided sampler step (11–33 ms against 17–50 ms), so a
# 25-step picture takes ×1.7–1.8 as long; tiny-random (0.40 M) at 64 px = 1.6e9, ≈ 0.9 of a step, ×1.9. The SD
# VAE decoder (49.5 M) is 2e11 already at 64 px: SD runs keep the latent → RGB map and the Decode button.
CHEAP_DECODE_BUDGET = 2.5e10


def decodes_cheaply(model: LatentDiffusion, width: int, height: int) -> bool:
    decoder = parameter_count(model.vae.decoder)
    return decoder * width * height <= CHEAP_DECODE_BUDGET


def prompt_for(model: LatentDiffusion, request: GenerationRequest) -> str:
    """The text the model's encoder reads for this request: its prompt reader's caption when the request lets it
    (GenerationRequest.read_prompt; issue #20), else the prompt as typed."""
    return model.read_prompt(request.prompt, request.mask) if request.read_prompt else request.prompt


class Engine:
    def __init__(self, loader: ModelLoader = load_model, *, decode_steps: bool = False):
        """`decode_steps`: decode every step's x̂0 exactly when the model's decoder is cheap (an app showing the
        steps wants it; it makes a built-in-model run ~1.7× as long, so scripts, the CLI and evaluation do not)."""
        self._loader = loader
        self.decode_steps = decode_steps
        self._loaded: tuple[tuple[str, str, str], LatentDiffusion] | None = None

    # -- models -----------------------------------------------------------------------------------------------------
    def model(self, spec: str, device: str = "auto", dtype: str = "auto",
              size: tuple[int, int] | None = None) -> LatentDiffusion:
        """The model, loaded unless it is loaded already. `size` (width, height; Engine.prepare's) lets a second start
        skip reading the weights whose packs are cached for that size (pack_cache.py)."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        on_openvino = device == "openvino"  # the CPU, with the UNet's calls on OpenVINO (openvino_unet.py)
        key = (spec, str(torch_device), str(torch_dtype), on_openvino)
        # a file changed on disk since it was loaded is loaded again (model files are read, never mapped: #17)
        if self._loaded is None or self._loaded[0] != key or source_changed(self._loaded[1]):
            self._loaded = None  # drop the old model before loading the next: one model in memory at a time
            # normal tensors even inside a script's torch.inference_mode(): guided runs differentiate through them
            with torch.inference_mode(False), \
                    pack_cache.loading_for(*size) if size is not None and not on_openvino else nullcontext():
                model = self._loader(spec, torch_device, torch_dtype)
            if on_openvino:
                from .openvino_unet import accelerate

                model = accelerate(model, torch_dtype)
            self._loaded = (key, model)
        return self._loaded[1]

    def prepare(self, spec: str, device: str = "auto", dtype: str = "auto", width: int = 0, height: int = 0) -> bool:
        """Load the model and, on the CPU, pack its weights for `width`×`height` pictures now (0: the model's own
        size) rather than inside the first generation, which otherwise pays for it: SD1.5 at 256 px, 2 threads,
        ~3 s of its first UNet call in fp32 and ~1 s in bf16 (docs/numerics.md, "Packing at load"). The packing
        pass runs the text encoder, one CFG-batch UNet call and the decoder on zeros with no convolution or linear
        arithmetic (cpu_kernels.packing_pass). On device "openvino" the UNet is compiled for a CFG batch of this
        size (openvino_unet.py). Returns whether there was anything to pack or compile."""
        model = self.model(spec, device, dtype, size=(width, height))
        config = model.config
        _, h, w = pack_cache.latent_shape(model, width, height)
        packed = is_packed(model)
        specialise = getattr(model.unet, "specialise", None)  # device "openvino": compile for this size now
        if not packed and specialise is None:
            return False
        # a second start reads the packs an earlier one wrote for this model and size (pack_cache.py); the pass
        # below then finds every layer it reaches packed
        restored = pack_cache.restore(model, (2, h, w)) if packed else 0
        with torch.inference_mode(), packing_pass() if packed else nullcontext():
            context = model.encode_text(["", ""])  # cond and uncond, as encode_prompts batches them
            if specialise is not None:  # (on OpenVINO a UNet call computes: nothing to pack there)
                specialise(2, h, w, context.shape[1])
            else:
                latent = torch.zeros(2, config.unet.in_channels, h, w, dtype=model.dtype, device=model.device)
                model.unet(latent, torch.full((2,), 500.0, device=model.device), context)
            z = torch.zeros(1, model.latent_channels, h, w, dtype=model.vae_dtype, device=model.device)
            if packed and not should_tile(decode_bytes(model.vae, z.shape, model.vae_dtype), model.device):
                model.vae.decode(z)  # a tiled decode packs for its tiles when it runs
        if packed and not restored:
            pack_cache.store(model, (2, h, w))  # written in the background
        return True

    # -- generation -------------------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        job_id: int = 0,
        cancel: threading.Event | None = None,
        parent: Run | None = None,
        from_step: int = 0,
    ) -> Iterator[RunEvent]:
        """Run `request` (or continue `parent` from `from_step` with it), yielding STARTED, STEP…, then FINISHED,
        CANCELLED or ERROR. Errors are reported as events with one clear message, never raised."""
        yield from self._reporting_errors(self._generate(request, job_id, cancel, parent, from_step), request, job_id)

    def _reporting_errors(self, events: Iterator[RunEvent], request: GenerationRequest, job_id: int) -> Iterator[RunEvent]:
        """Pass events through; a user error, NaN or out-of-memory ends the stream with one ERROR event that keeps
        the run so far (status "failed": its steps can still be scrubbed and branched from)."""
        run: Run | None = None
        try:
            for event in events:
                run = event.run or run
                yield event
            return
        except (UserError, FloatingPointError) as exc:
            message = str(exc)
        except torch.cuda.OutOfMemoryError:
            message = _oom_message(request)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):  # the CPU allocator says "can't allocate memory" (tiling.py)
                raise
            message = _oom_message(request)
        if run is not None:
            run.status = "failed"
        yield RunEvent(EventKind.ERROR, job_id, run=run, message=message)

    def run(self, request: GenerationRequest, **kwargs) -> Run:
        """Blocking convenience for scripts: the finished (or cancelled) run, or a RequestError."""
        for event in self.generate(request, **kwargs):
            if event.kind is EventKind.ERROR:
                raise RequestError(event.message)
            if event.run is not None and event.kind in (EventKind.FINISHED, EventKind.CANCELLED):
                return event.run
        raise RuntimeError("generation ended without a result")

    def _generate(self, request, job_id, cancel, parent, from_step) -> Iterator[RunEvent]:
        if is_cold_run(request):  # cold diffusion: its own plan on the same Run and timeline (cold_pipeline.py)
            yield from cold_generate(self, request, job_id, cancel, parent, from_step)
            return
        validate(request)
        model = self.model(request.model, request.device, request.dtype)
        check_for_model(model, request)  # steps, CLIP skip and memory for this size, before any work
        # a guided run differentiates through the UNet and the decoder: no inference tensors anywhere in it, even when
        # a script calls it inside its own torch.inference_mode()
        with guided_context() if request.guides else torch.inference_mode():
            prompt = prompt_for(model, request)
            cond, uncond = model.encode_prompts(prompt, request.negative_prompt, request.clip_skip)
            plan, generator = make_plan(model, request, cond, uncond)
            if parent is not None:
                run, x, history = self._branch_start(request, parent, from_step, plan, generator)
            else:
                run, x, history = Run(request, plan.grid, Timeline(), kind=plan.kind), plan.x, ()
            self._describe(run, model, x, prompt)
            spec = SAMPLER_TABLE[request.sampler]
            denoiser, trace, repeats, spec = _guidance(model, request, plan, run.grid, spec)
            if trace is not None and parent is not None and spec.history_steps:  # the history the guided run saw
                history = self._branch_history(spec, denoiser, parent, from_step, plan.x.device)
            stochastic = spec.draws_noise(request.eta) or repeats is not None
            start = len(run.timeline)
            yield RunEvent(EventKind.STARTED, job_id, step=start, total=run.steps, run=run)

            began = time.perf_counter()
            if repeats is None:
                steps = spec.sample(denoiser, x, run.grid, eta=request.eta, generator=generator, start=start,
                                    history=history)
            else:
                steps = recurrent_steps(spec, denoiser, x, run.grid, eta=request.eta, generator=generator,
                                        start=start, history=history, repeats=repeats)
            x = yield from self._sample(run, steps, x, job_id, cancel, began, generator if stochastic else None,
                                        decode=self._x0_decoder(model, run), trace=trace,
                                        keep_x0=repeats is not None and spec.history_steps > 0)
            if x is None:
                return
            run.final_latent = x.detach().float().cpu()
            run.image = plan.finish(tensor_to_image(model.decode_latent(x)))
            run.status = "finished"
            yield RunEvent(EventKind.FINISHED, job_id, run.steps, run.steps, time.perf_counter() - began, run=run)

    def _branch_start(self, request: GenerationRequest, parent: Run, k: int, plan: Plan, generator: torch.Generator):
        """Continue `parent` from its step k with `request`: same x_t, the parent's noise stream if the seed is
        unchanged, and the new sampler's levels below σ_k if the sampler or step count changed."""
        if not 0 <= k < len(parent.timeline):
            raise RequestError(f"cannot branch from step {k}: the run has steps 0–{len(parent.timeline) - 1}")
        at = parent.timeline[k]
        check_branch(request, parent.request, tuple(at.x_t.shape), tuple(plan.x.shape))  # size and model fit (limits.py)
        same_grid = (
            SAMPLER_TABLE[request.sampler].grid_end
            == getattr(SAMPLER_TABLE.get(parent.request.sampler), "grid_end", None)
            and request.steps == parent.request.steps
            and request.karras == parent.request.karras
            and request.strength == parent.request.strength
        )
        if same_grid:
            grid = list(parent.grid)
        else:
            grid = list(parent.grid[: k + 1]) + [lv for lv in plan.grid if lv.sigma < at.level.sigma]
        if request.seed == parent.request.seed and at.rng_state is not None:
            generator.set_state(at.rng_state)
        device = plan.x.device
        history = self._branch_history(SAMPLER_TABLE[request.sampler], plan.denoiser, parent, k, device)
        run = Run(request, grid, Timeline(parent.timeline, k), kind=parent.kind, parent=parent, from_step=k)
        return run, at.x_t.to(device).clone(), history

    @staticmethod
    def _branch_history(spec, denoiser, parent: Run, k: int, device) -> tuple[torch.Tensor, ...]:
        """A multistep sampler's history at step k, recomputed exactly from the parent's recorded x_{k-1}, …"""
        before = [parent.timeline[j] for j in range(max(0, k - spec.history_steps), k)]
        if before and all(s.x0_exact is not None for s in before):  # after self-recurrence: as recorded
            return tuple(s.x0_exact.to(device) for s in before)
        return spec.resume_history(denoiser, [(s.x_t.to(device), s.level) for s in before])

    def invert(self, request: GenerationRequest, *, job_id: int = 0, cancel: threading.Event | None = None,
               refine: int = INVERSION_REFINE) -> Iterator[RunEvent]:
        """DDIM inversion (η = 0 run backwards, Song et al. 2021 Sec. 4.3) of `request.init_image`, then the forward DDIM pass
        from the found x_T, recorded as an ordinary run (kind "invert") to branch from. `refine`: fixed-point
        iterations per step (samplers.ddim_inversion), each one more model call per step."""
        yield from self._reporting_errors(self._invert(request, job_id, cancel, refine), request, job_id)

    def _invert(self, request, job_id, cancel, refine) -> Iterator[RunEvent]:
        if request.init_image is None:
            raise RequestError("inversion needs an image")
        image = np.asarray(request.init_image)
        request = request.replace(sampler="ddim", eta=0.0, strength=1.0, width=image.shape[1], height=image.shape[0])
        validate(request)
        model = self.model(request.model, request.device, request.dtype)
        check_size(model, request.width, request.height)
        check_for_model(model, request)
        with torch.inference_mode():
            prompt = prompt_for(model, request)
            cond, uncond = model.encode_prompts(prompt, request.negative_prompt, request.clip_skip)
            # the plain text-to-image plan gives the denoiser (9-channel conditioning included) and DDIM's grid
            plan, _ = make_plan(model, request.replace(init_image=None, mask=None), cond, uncond)
            denoiser, grid = plan.denoiser, plan.grid
            x = model.encode_image(image_to_tensor(image)).to(model.device)
            total = 2 * request.steps
            began = time.perf_counter()
            yield RunEvent(EventKind.STARTED, job_id, 0, total)
            for step in ddim_inversion(denoiser, x, grid, refine=refine):  # upward: not a run, nothing recorded
                x = step.x_next
                done = step.index + 1
                yield RunEvent(EventKind.STEP, job_id, done, total, time.perf_counter() - began, model.preview.to_rgb(step.x0_pred))
                if cancel is not None and cancel.is_set():
                    yield RunEvent(EventKind.CANCELLED, job_id, done, total, time.perf_counter() - began)
                    return
            run = Run(request, grid, Timeline(), kind="invert")
            self._describe(run, model, x, prompt)
            steps = SAMPLER_TABLE["ddim"].sample(denoiser, x, grid, eta=0.0, generator=None)
            x = yield from self._sample(run, steps, x, job_id, cancel, began, None, done_before=request.steps,
                                        total=total, decode=self._x0_decoder(model, run))
            if x is None:
                return
            run.final_latent = x.detach().float().cpu()
            run.image = tensor_to_image(model.decode_latent(x))
            run.status = "finished"
            yield RunEvent(EventKind.FINISHED, job_id, total, total, time.perf_counter() - began, run=run)

    @staticmethod
    def _describe(run: Run, model: LatentDiffusion, latent: torch.Tensor, prompt: str) -> None:
        """What a run keeps of its model: the preview map, the file's short hash, whether x̂0 decodes are cheap
        (judged at the size the sampler works at: an only-masked crop, not the whole picture)."""
        run.preview = model.preview
        run.model_hash = file_hash(run.request.model)
        h, w = latent.shape[-2:]
        run.cheap_decode = decodes_cheaply(model, w * model.downsample_factor, h * model.downsample_factor)
        run.read_as = prompt if prompt != run.request.prompt else None  # `prompt`: what the text encoder read

    def _x0_decoder(self, model: LatentDiffusion, run: Run) -> Callable[[torch.Tensor], np.ndarray] | None:
        if not (self.decode_steps and run.cheap_decode):
            return None
        return lambda x0: frozen_array(tensor_to_image(model.decode_latent(x0)))

    def _sample(self, run: Run, steps: Iterator, x: torch.Tensor, job_id: int, cancel: threading.Event | None,
                began: float, generator: torch.Generator | None, *, done_before: int = 0, total: int | None = None,
                decode: Callable[[torch.Tensor], np.ndarray] | None = None, trace: GuidanceTrace | None = None,
                keep_x0: bool = False):
        """The one sampling loop of generate, branch and invert: record each step on `run`'s timeline (with the
        noise generator's state when the step began, for a stochastic run), refuse NaN, decode x̂0 when `decode`
        is given (a cheap decoder), yield a STEP event (the preview point) and stop at the step boundary when
        `cancel` is set. Returns the final latent, or None when cancelled (after a CANCELLED event)."""
        total = run.steps if total is None else total
        rng_state = generator.get_state() if generator is not None else None
        for step in steps:
            guidance, loss = trace.take() if trace is not None else (None, None)
            run.timeline.record(step, rng_state, guidance, loss, keep_x0=keep_x0)
            if not torch.isfinite(step.x_next).all():
                raise FloatingPointError("the model produced NaN values; try fp32, another seed or lower CFG")
            x = step.x_next
            done = done_before + step.index + 1
            if decode is not None:
                run.decoded[step.index] = decode(step.x0_pred)
            preview = run.preview.to_rgb(step.x0_pred)
            yield RunEvent(EventKind.STEP, job_id, done, total, time.perf_counter() - began, preview, run)
            if generator is not None:
                rng_state = generator.get_state()
            if cancel is not None and cancel.is_set() and done < total:
                run.status = "cancelled"
                yield RunEvent(EventKind.CANCELLED, job_id, done, total, time.perf_counter() - began, preview, run)
                return None
        return x

    # -- timeline views ---------------------------------------------------------------------------------------------
    def decode_step(self, run: Run, index: int, view: View = "x0") -> np.ndarray:
        """Full VAE decode of one step's x_t or x̂0 (not cached here: whoever shows it keeps it)."""
        if is_cold_run(run.request):  # pixels already: nothing to decode
            return tensor_to_image(run.timeline[index].view(view))
        model = self.model(run.request.model, run.request.device, run.request.dtype)
        with torch.inference_mode():
            return tensor_to_image(model.decode_latent(run.timeline[index].view(view).to(model.device)))


def _oom_message(request: GenerationRequest) -> str:
    return (f"out of memory at {request.width}x{request.height}: try a smaller size or fp16 (the VAE already "
            "tiles itself when memory is short); nothing was lost")


def _guidance(model: LatentDiffusion, request: GenerationRequest, plan: Plan, grid: list, spec):
    """Universal guidance (guidance.py) or, in "noisy" mode, classifier / CLIP guidance (classifier_guidance.py,
    clip_guidance.py) around the plan's denoiser or the sampler's step, on the first `guide_steps` of this run's
    grid: (denoiser, trace, repeats, sampler spec). Without guides: the plan's own denoiser, None, None, `spec` (the
    run is the unguided one)."""
    if not request.guides:
        return plan.denoiser, None, None, spec
    from . import classifier_guidance as cg
    from . import clip_guidance as clg

    scale = model.config.vae.scaling_factor
    steps = len(grid) - 1
    guided_levels = {lv.timestep for i, lv in enumerate(grid[:-1]) if guide_active(i, steps, request.guide_steps)}
    trace = GuidanceTrace()
    repeats = None
    if request.recurrence > 1:
        def repeats(i: int) -> int:
            return request.recurrence if guide_active(i, steps, request.guide_steps) else 1
    if request.guide_mode == "noisy":  # Dhariwal & Nichol 2021 Algorithm 1 or 2 by sampler; GLIDE eq. 3 for CLIP
        objectives = []
        if cg.classifier_guides(request.guides):
            classifier = cg.shipped_classifier(False, model.device)
            cg.check_fits(classifier, plan.x)
            objectives.append(cg.log_prob_fn(request.guides, classifier))
        if clg.clip_guides(request.guides):
            clip = clg.shipped_clip(False, model.device)
            clg.check_fits(clip, plan.x)
            objectives.append(clg.log_prob_fn(request.guides, clip))
        log_prob = lambda z, level: sum(f(z, level) for f in objectives)  # noqa: E731
        active = lambda level: level.timestep in guided_levels  # noqa: E731
        if cg.algorithm_for(spec, request.eta) == 1:
            return plan.denoiser, trace, repeats, cg.noisy_sampler(spec, log_prob, active, trace)
        return cg.noisy_denoiser(plan.denoiser, log_prob, active, trace), trace, repeats, spec
    latent_losses = []
    if cg.classifier_guides(request.guides):  # the clean classifier on ẑ0
        classifier = cg.shipped_classifier(True, model.device)
        cg.check_fits(classifier, plan.x)
        latent_losses = cg.clean_losses(request.guides, classifier)
    if clg.clip_guides(request.guides):  # the clean CLIP's score on ẑ0
        clip = clg.shipped_clip(True, model.device)
        clg.check_fits(clip, plan.x)
        latent_losses = latent_losses + clg.clean_losses(request.guides, clip)

    def decode(z0: torch.Tensor) -> torch.Tensor:  # differentiable: no tiling, no NaN retry
        return model.vae.decode((z0 / scale).to(model.vae_dtype)).float()

    objective = pixel_objective(request.guides, decode, (request.height, request.width), model.device,
                                request.init_image, latent_losses)
    denoiser = guide_denoiser(
        plan.denoiser, objective, mode=request.guide_mode, active=lambda level: level.timestep in guided_levels,
        backward_steps=request.backward_steps, backward_lr=BACKWARD_LR,
        mask=_guide_mask(request, plan), trace=trace,
    )
    return denoiser, trace, repeats, spec


def _guide_mask(request: GenerationRequest, plan: Plan) -> torch.Tensor | None:
    """Where guidance may change ẑ0: the guides' own support (guidance.guide_support), within the inpainting mask
    when `guide_in_mask`; None = everywhere."""
    latent = plan.x
    mask = guide_support(request.guides, tuple(latent.shape[-2:]), latent.device)
    if request.guide_in_mask and plan.latent_mask is not None:
        mask = plan.latent_mask if mask is None else mask * plan.latent_mask
    return None if mask is None else mask.to(latent.dtype)
