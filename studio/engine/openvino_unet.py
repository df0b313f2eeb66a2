"""The UNet on OpenVINO: an optional CPU accelerator (`pip install diffusion-studio[openvino]`, device "openvino").

Why: on this project's CPU, with SD1.5-shaped weights, torch's best UNet call (oneDNN-packed weights,
cpu_kernels.py) stayed 1.4× OpenVINO's in float32 and 1.9× in bfloat16 (benchmarks/bench_cpu_peers.py; numbers
in README "Performance"): OpenVINO fuses whole blocks (norm + activation + convolution, attention) that eager torch
runs op by op. A UNet call is a UNet call, so only the UNet moves: the text encoder, the VAE, the samplers, the
timeline, branching, inversion and guidance stay as they are. What needs gradients through the UNet (forward
universal guidance) runs the torch UNet, which is kept.

The UNet is traced once per checkpoint, precision and OpenVINO version into OpenVINO's IR, kept in the cache
directory (`cache_dir()`, keyed by the file's signature): the second start reads it instead of converting. It is
compiled at every start, for the picture's shape when Engine.prepare names it (dynamic batch and size otherwise).
OpenVINO's compiled-model cache is not used: for SD1.5 at 256 px it made the compile slower (5.0 against 3.3 s, the
whole graph's weights hashed to find the entry) and held a second copy of the weights (9.8 against 6.6 GiB resident;
docs/numerics.md, "OpenVINO (device "openvino")").
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import torch

from .errors import UserError
from .user_cache import cache_dir

CONVERSION_VERSION = 1  # bump when what is traced changes: old cached IR is then not reused
INSTALL_HINT = "pip install 'diffusion-studio[openvino]'"


def available() -> bool:
    """Whether OpenVINO is installed (without importing it: the import takes a second)."""
    return importlib.util.find_spec("openvino") is not None


def _openvino():
    if not available():
        raise UserError(f"device 'openvino' needs OpenVINO, which is not installed: {INSTALL_HINT}")
    # OpenVINO's model converter sends usage reports (its `openvino_telemetry` package takes consent for granted when
    # no consent file exists) from background threads. Nothing in this app talks to the network: with that package
    # unimportable, the converter falls back to its own no-op stub, and starts no threads.
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def cache_key(model, dtype: torch.dtype) -> str:
    """What decides the IR: the weights' files (path, size, modification time), the architecture, the precision,
    OpenVINO's version and ours. A model without files (built in code) gets no cache entry."""
    openvino = _openvino()

    files = [list(map(str, entry)) for entry in getattr(model, "source_files", ())]
    text = json.dumps([files, model.config.to_json(), str(dtype), openvino.__version__, CONVERSION_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _example_inputs(unet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    config = unet.config
    x = torch.zeros(2, config.in_channels, 16, 16)
    return x, torch.full((2,), 500.0), torch.zeros(2, 77, config.context_dim)


def _convert(unet):
    """Trace the stock torch UNet (float32) into OpenVINO's model representation."""
    openvino = _openvino()
    plain = _stock_copy(unet).float().eval()
    with torch.no_grad():
        return openvino.convert_model(plain, example_input=_example_inputs(plain))


def _stock_copy(unet):
    """A fresh UNet of the same architecture holding `unet`'s values: stock Linear/Conv2d layers (oneDNN's packed
    ones cannot be traced) and plain weights, which go when the conversion is done. Built from the state dict, so a
    loaded model's released weights (cpu_kernels.py) are read back without being brought back in the model."""
    with torch.device("meta"):
        fresh = type(unet)(unet.config)
    # weights packed inside inference mode (Engine.prepare's packing pass) read back as inference tensors, which
    # cannot become parameters: those are copied into ordinary tensors (one at a time, as they are read)
    state = {name: value.clone() if value.is_inference() else value for name, value in unet.state_dict().items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    return fresh


def _core_and_graph(model, dtype: torch.dtype):
    """An OpenVINO Core and the UNet's graph, read from the cached IR or converted now and saved for the next
    start. A graph read from the IR maps its weights from the file rather than holding a copy in memory, so a fresh
    conversion is read back too."""
    ov = _openvino()
    core = ov.Core()
    if not getattr(model, "source_files", ()):
        return core, _convert(model.unet)  # a model built in code has no file to key a cache entry on
    folder = cache_dir() / "openvino" / cache_key(model, dtype)
    # compiled blobs that earlier versions cached there (a copy of the weights each, gigabytes for SD): unused now
    shutil.rmtree(folder / "compiled", ignore_errors=True)
    ir = folder / "unet.xml"
    if not ir.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "unet.partial.xml"
        ov.save_model(_convert(model.unet), str(partial), compress_to_fp16=dtype != torch.float32)
        partial.with_suffix(".bin").replace(ir.with_suffix(".bin"))
        partial.replace(ir)  # the .xml last: an interrupted save leaves no IR that looks whole
    return core, core.read_model(str(ir))


def _compile(core, graph, dtype: torch.dtype, threads: int | None = None):
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    if dtype == torch.float32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return core.compile_model(graph, "CPU", config)


def _shaped(graph, config, shape: tuple[int, ...] | None):
    """`graph`, or a copy of it whose inputs are fixed to `shape`: (batch, latent height, latent width, context
    tokens)."""
    if shape is None:
        return graph
    batch, height, width, tokens = shape
    graph = graph.clone()
    x, timesteps, context = graph.inputs
    graph.reshape({x: [batch, config.in_channels, height, width], timesteps: [batch],
                   context: [batch, tokens, config.context_dim]})
    return graph


def compile_unet(model, dtype: torch.dtype, threads: int | None = None, shape: tuple[int, ...] | None = None):
    """OpenVINO's compiled UNet for `model`, converted (or read from the cache) and compiled for the CPU: float32
    inference for fp32, OpenVINO's default (bf16 on a CPU that runs it natively, like our "fast") otherwise.
    `shape` (batch, latent height, latent width, context tokens) compiles for those inputs only; None keeps every
    size dynamic."""
    core, graph = _core_and_graph(model, dtype)
    return _compile(core, _shaped(graph, model.config.unet, shape), dtype, threads)


class _Compiled:
    """The UNet's compiled forms: one per input shape it was specialised for (Engine.prepare asks for the
    picture's), and a dynamic one, compiled on first need, for every other shape. A static shape lets OpenVINO
    choose kernels and memory for it once (as optimum-intel's pipelines do with `reshape`). The graph is converted
    (or read) once, here: a model that cannot be converted fails at load, not mid-run."""

    def __init__(self, model, dtype: torch.dtype):
        self.core, self.graph = _core_and_graph(model, dtype)
        self.config, self.dtype = model.config.unet, dtype
        self.static: dict[tuple[int, ...], tuple] = {}
        self.dynamic: tuple | None = None

    def _compiled(self, shape: tuple[int, ...] | None) -> tuple:
        network = _compile(self.core, _shaped(self.graph, self.config, shape), self.dtype)
        return network, network.create_infer_request()

    def specialise(self, batch: int, height: int, width: int, tokens: int = 77) -> None:
        """Compile for `batch` latents of `height`×`width` with `tokens` context tokens (CLIP's 77 for a prompt of
        one chunk), and run it once on zeros: OpenVINO's CPU plugin lays out weights and memory in a network's first
        inference (SD1.5 at 256 px, bf16: 1.19 s against 0.97 s for the calls after it), work that belongs to
        loading, as our own packing pass does for torch's CPU path (Engine.prepare)."""
        shape = (batch, height, width, tokens)
        if shape not in self.static:
            network, request = self.static[shape] = self._compiled(shape)
            request.infer([np.zeros(tuple(port.get_shape()), np.float32) for port in network.inputs])

    def for_shape(self, shape: tuple[int, ...]) -> tuple:
        if shape in self.static:
            return self.static[shape]
        if self.dynamic is None:
            self.dynamic = self._compiled(None)
        return self.dynamic


def accelerate(model, dtype: torch.dtype):
    """`model` with its UNet's calls on OpenVINO where no gradient is asked for (the torch UNet runs those). The
    model itself is left as it was: the result is a shallow copy whose UNet alone differs, sharing every weight.
    The UNet is converted (or its cached IR read) now; it is compiled for a shape when `unet.specialise(batch,
    height, width, tokens)` asks or a call first needs it."""
    compiled = _Compiled(model, dtype)
    torch_unet = model.unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or context.requires_grad)
        if wants_grad or x.device.type != "cpu":
            return torch_unet(x, timesteps, context)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        network, request = compiled.for_shape((x.shape[0], x.shape[2], x.shape[3], context.shape[1]))
        inputs = [t.detach().float().contiguous().numpy() for t in (x, timesteps, context)]
        out = request.infer(inputs)
        return torch.from_numpy(out[network.output(0)].copy()).to(x.dtype)

    unet = copy.copy(torch_unet)
    unet.forward = types.MethodType(forward, unet)
    unet.specialise = compiled.specialise
    unet.openvino = compiled  # what runs it, for whoever asks (tests, the benchmark)
    wrapper = _replacing(model.model, "diffusion_model", unet)
    return _replacing(model, "model", wrapper)


def _replacing(module, name: str, child):
    """A shallow copy of `module` with its submodule `name` swapped for `child`; the original is untouched."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    twin._modules[name] = child
    return twin
