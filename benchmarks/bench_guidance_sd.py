"""Memory of forward guidance on an SD1.5-sized model (issue #14): peak resident memory of one unguided and then
one forward-guided DDIM step (CFG, a colour hint), random SD1.5-shaped weights, float32, CPU.

    python benchmarks/bench_guidance_sd.py --sizes 256 384 512 --limit-gb 14

Each size runs in a fresh process whose address space is capped at --limit-gb (RLIMIT_AS), so a size that needs
more fails with the engine's out-of-memory message instead of taking a shared machine down. Peak = the process's
high-water mark (getrusage ru_maxrss); the guided step's extra = peak after it − peak after the unguided step
(which holds the weights, the text encoder and the plain step's activations). With CUDA: --device cuda --dtype
fp16 reports torch.cuda.max_memory_allocated the same way (gradients go through the fp16 model; the guidance
loss and its weights are float32).

Measured (2 CPU threads, fp32, --limit-gb 16 --no-estimate-check): 256 px 6.65 GiB peak (unguided 4.59), 384 px
9.37 (4.93), 512 px 13.36 (5.31): forward guidance at 512 px adds 8.05 GiB to the unguided run's peak. The engine's
estimate (limits.run_bytes) asks 15.4 GiB beyond the weights at 512 px, so without --no-estimate-check it refuses
384 and 512 px on a machine with 9 GiB free.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(size: int, device: str, dtype: str, check_estimate: bool = True) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from studio.engine import Engine, GenerationRequest, Guide, LatentDiffusion
    from studio.engine.model import ModelConfig
    from studio.engine.text_encoder import TextEncoderConfig
    from studio.engine.unet import UNetConfig
    from studio.engine.vae import VAEConfig

    torch.set_num_threads(2)
    if not check_estimate:  # measure even where the engine's memory estimate (limits.check_fits) would refuse
        import studio.engine.limits as limits

        limits.check_fits = lambda model, request: None
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    config = ModelConfig(unet=UNetConfig.sd1(), vae=VAEConfig.sd(), text=TextEncoderConfig.clip_l(), name="sd15-random")
    model = LatentDiffusion(config).eval().requires_grad_(False).to(device, torch_dtype)
    engine = Engine(loader=lambda spec, dev, dt: model)
    hint = np.zeros((size, size, 4), np.uint8)
    hint[: size // 2, : size // 2] = (40, 170, 60, 255)
    request = GenerationRequest(prompt="a green circle", model="sd15-random", steps=1, cfg=7.5, width=size,
                                height=size, device=device, dtype=dtype)

    def peak() -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux → GiB

    out = {"size": size, "device": device, "dtype": dtype}
    try:
        engine.run(request)
        out["unguided_peak_gib"] = round(peak(), 2)
        engine.run(request.replace(guides=(Guide("colour", 1.0, hint),), guide_mode="forward"))
        out["forward_peak_gib"] = round(peak(), 2)
        out["forward_extra_gib"] = round(out["forward_peak_gib"] - out["unguided_peak_gib"], 2)
    except Exception as exc:  # the engine's RequestError for out of memory, or the allocator's own error
        out["failed"] = " ".join(str(exc).split())[:200]
        out["peak_before_failure_gib"] = round(peak(), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    parser.add_argument("--limit-gb", type=float, default=14.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--no-estimate-check", action="store_true",
                        help="run sizes the engine's memory estimate refuses (the address-space cap still holds)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: measure one size
    args = parser.parse_args()
    if args.one is not None:
        if args.device == "cpu":
            limit = int(args.limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(measure(args.one, args.device, args.dtype, not args.no_estimate_check)))
        return
    for size in args.sizes:
        child = subprocess.run([sys.executable, __file__, "--one", str(size), "--limit-gb", str(args.limit_gb),
                                "--device", args.device, "--dtype", args.dtype]
                               + (["--no-estimate-check"] if args.no_estimate_check else []),
                               capture_output=True, text=True)
        lines = child.stdout.strip().splitlines()
        print(lines[-1] if lines else json.dumps({"size": size, "failed": child.stderr.strip()[-300:]}), flush=True)


if __name__ == "__main__":
    main()
