"""Seconds per 64×64 picture from the shipped model: 25 DDIM steps with classifier-free guidance, end to end.

    python benchmarks/bench_shipped.py                  # 2 threads, as on the 2-core target
    python benchmarks/bench_shipped.py --threads 1 --runs 20 --model /work/ckpt/export.safetensors
    python benchmarks/bench_shipped.py --prompt "in the center sits a huge violet star and toward the top right …"

Target (issue #7): under 1 s on 2 CPU cores. Reports the median and the best of `--runs` whole generations
(`Engine.run`: prompt encoding, 25 guided UNet calls on a batch of 2, VAE decode, timeline), and the UNet's share.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine import Engine, GenerationRequest, load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=3.0, help="the model card's guidance scale")
    parser.add_argument("--prompt", default="a small green star at the top left, on a white background",
                        help="a prompt naming two or three objects times the prompt reader's clause reading too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, torch.device("cpu"), torch.float32)
    unet_seconds = [0.0]
    forward = model.unet.forward

    def timed_forward(*a, **k):
        began = time.perf_counter()
        try:
            return forward(*a, **k)
        finally:
            unet_seconds[0] += time.perf_counter() - began

    model.unet.forward = timed_forward
    engine = Engine(loader=lambda spec, device, dtype: model)
    request = GenerationRequest(prompt=args.prompt, model="x",
                                width=64, height=64, steps=args.steps, cfg=args.cfg, device="cpu", dtype="fp32")
    engine.run(request)  # warm-up: allocator, kernels, tokenizer caches
    totals, unets = [], []
    for seed in range(args.runs):
        unet_seconds[0] = 0.0
        began = time.perf_counter()
        engine.run(request.replace(seed=seed))
        totals.append(time.perf_counter() - began)
        unets.append(unet_seconds[0])
    print(f"{model.config.name}: 64x64, {args.steps} DDIM steps, CFG {args.cfg}, {args.threads} threads, "
          f"{args.runs} runs")
    print(f"  median {statistics.median(totals):.3f} s, best {min(totals):.3f} s per picture "
          f"(UNet {statistics.median(unets):.3f} s, {args.steps * 2 / statistics.median(unets):.0f} UNet rows/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
