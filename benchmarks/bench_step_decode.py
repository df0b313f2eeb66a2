"""What decoding x̂0 at every step costs: one VAE decode, one sampler step, and whole generations with and without
the per-step decode (pipeline.CHEAP_DECODE_BUDGET), in interleaved rounds so load on the machine hits both alike.

    python benchmarks/bench_step_decode.py                     # built-in and tiny-random, 2 threads
    python benchmarks/bench_step_decode.py --models default --rounds 10 --steps 50

Prints, per model: milliseconds per x̂0 decode (the model's own size), per sampler step without decoding, and the
median over rounds of (generation with decodes) / (generation without), with its spread.
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
from studio.engine import pipeline  # noqa: E402


def time_decode(model, repeats: int = 20) -> float:
    size = model.config.default_size // model.downsample_factor
    z = torch.randn(1, model.latent_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(3):
            model.decode_latent(z)
        began = time.perf_counter()
        for _ in range(repeats):
            model.decode_latent(z)
    return (time.perf_counter() - began) / repeats


def generation_seconds(engine: Engine, request: GenerationRequest, decode: bool) -> float:
    budget = pipeline.CHEAP_DECODE_BUDGET
    pipeline.CHEAP_DECODE_BUDGET = budget if decode else 0
    try:
        began = time.perf_counter()
        run = engine.run(request)
        seconds = time.perf_counter() - began
    finally:
        pipeline.CHEAP_DECODE_BUDGET = budget
    assert run.cheap_decode == decode, "the model is past the budget: nothing to measure"
    return seconds


def bench(spec: str, rounds: int, steps: int, cfg: float) -> None:
    model = load_model(spec, torch.device("cpu"), torch.float32)
    engine = Engine(loader=lambda *_: model)
    size = model.config.default_size
    request = GenerationRequest(prompt="a small green star at the top left, on a white background", model=spec,
                                width=size, height=size, steps=steps, cfg=cfg, device="cpu", dtype="fp32")
    decoder = sum(p.numel() for p in model.vae.decoder.parameters())
    decode_ms = time_decode(model) * 1e3
    engine.run(request)  # warm-up
    ratios, plain = [], []
    for round_ in range(rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)  # interleaved: neither side always goes first
        seconds = {decode: generation_seconds(engine, request.replace(seed=round_), decode) for decode in order}
        ratios.append(seconds[True] / seconds[False])
        plain.append(seconds[False])
    step_ms = statistics.median(plain) / steps * 1e3
    print(f"{spec} ({model.config.name}): {size}x{size}, decoder {decoder / 1e6:.2f} M parameters, "
          f"{decoder * size * size:.2e} parameter·pixels (budget {pipeline.CHEAP_DECODE_BUDGET:.1e})")
    print(f"  x̂0 decode {decode_ms:.1f} ms; sampler step with CFG {cfg:g} {step_ms:.1f} ms "
          f"(decode / step = {decode_ms / step_ms:.2f})")
    print(f"  generation, {steps} steps: {statistics.median(plain):.3f} s without decodes; with a decode at every "
          f"step ×{statistics.median(ratios):.2f} (min ×{min(ratios):.2f}, max ×{max(ratios):.2f}, {rounds} rounds)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "tiny-random"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.models:
        bench(spec, args.rounds, args.steps, args.cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
