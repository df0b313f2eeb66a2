"""Seconds per UNet step with CFG, and what the timeline + live preview cost on top of bare sampling.

    python benchmarks/bench_engine.py --config tiny --size 64 --steps 20
    python benchmarks/bench_engine.py --config sd1 --size 256 --steps 6      # SD 1.x shapes, random weights

Both modes run the same plan (text encoding, initial noise, guided denoiser, sampler) in one process and
alternate, so machine load affects them alike; the overhead is reported as a ratio, not as absolute time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine import SAMPLER_TABLE, Engine, GenerationRequest, LatentDiffusion, load_model  # noqa: E402
from studio.engine.model import ModelConfig, build_tiny_random  # noqa: E402
from studio.engine.tasks import plan  # noqa: E402
from studio.engine.text_encoder import TextEncoderConfig  # noqa: E402
from studio.engine.unet import UNetConfig  # noqa: E402
from studio.engine.vae import VAEConfig  # noqa: E402


def build(name: str) -> LatentDiffusion:
    if name == "tiny":
        return build_tiny_random()
    if name == "sd1":
        config = ModelConfig(unet=UNetConfig.sd1(), vae=VAEConfig.sd(), text=TextEncoderConfig.clip_l())
    elif name == "shipped":
        return load_model("default", torch.device("cpu"), torch.float32)
    else:
        raise SystemExit(f"unknown config {name}")
    return LatentDiffusion(config).eval().requires_grad_(False)


def bare_sampling(model: LatentDiffusion, request: GenerationRequest) -> float:
    """The sampler loop alone: no timeline, no preview, no events."""
    began = time.perf_counter()
    with torch.inference_mode():
        cond = model.encode_text([request.prompt])
        uncond = model.encode_text([request.negative_prompt])
        p, generator = plan(model, request, cond, uncond)
        for _ in SAMPLER_TABLE[request.sampler].sample(p.denoiser, p.x, p.grid, eta=request.eta, generator=generator):
            pass
    return time.perf_counter() - began


def engine_sampling(engine: Engine, request: GenerationRequest) -> float:
    """The full engine minus the final VAE decode: timeline recording + RGB preview per step + events."""
    began = time.perf_counter()
    for event in engine.generate(request):
        if event.step == request.steps:  # last STEP: stop before FINISHED's decode, which bare sampling skips
            break
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="tiny", choices=["tiny", "sd1", "shipped"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args.config)
    engine = Engine(loader=lambda spec, device, dtype: model)
    request = GenerationRequest(prompt="a red circle on a blue background", model=args.config, steps=args.steps,
                                width=args.size, height=args.size, cfg=7.5, sampler=args.sampler)
    bare_sampling(model, request.replace(steps=2))  # warm-up
    bare, full = [], []
    for _ in range(args.repeats):
        bare.append(bare_sampling(model, request))
        full.append(engine_sampling(engine, request))
    b, f = min(bare), min(full)  # least-disturbed runs: other load on the machine only ever adds time
    latent = args.size // model.downsample_factor
    mb_50 = 50 * latent * latent * model.latent_channels * 6 / 1e6
    print(f"config {args.config}, {args.size}px, {args.steps} steps, CFG 7.5, {args.sampler}, {args.threads} threads")
    print(f"seconds per UNet step with CFG (bare loop): {b / args.steps:.4f}")
    print(f"engine with timeline + preview:             {f / args.steps:.4f}")
    print(f"overhead ratio (engine / bare):             {f / b:.4f}  ({(f / b - 1) * 100:+.2f} %)")
    print(f"timeline size for 50 steps at this size:    {mb_50:.2f} MB (512 px SD: {50 * 64 * 64 * 4 * 6 / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
