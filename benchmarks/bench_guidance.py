"""Guided step time / unguided step time (issue #14): forward, backward (m = 1, 5) and self-recurrence (k = 2).

    python benchmarks/bench_guidance.py                      # built-in model, 64 px, CPU, 1 thread
    python benchmarks/bench_guidance.py --rounds 7 --steps 10

Every run goes through the real engine (timeline and preview included) with all steps guided by a quarter-picture
colour hint; --decode-steps adds the exact x̂0 decode the app makes at every step (Engine(decode_steps=True)), which
both guided and unguided steps pay, so the app's ratios are smaller than a script's. The configurations run in
interleaved rounds (a different order each round), so a busy machine slows them alike; each round's times are
divided by the same round's unguided time and the table shows the median ratio over rounds. Step time = the
sampling time up to the last STEP event / steps.
guidance.guidance_cost's constants come from this table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine import Engine, GenerationRequest, Guide, load_model  # noqa: E402
from studio.engine.guidance import guidance_cost  # noqa: E402

CONFIGS = {  # name → (guide_mode, backward_steps, recurrence); None: unguided
    "unguided": None,
    "forward": ("forward", 5, 1),
    "backward m=1": ("backward", 1, 1),
    "backward m=5": ("backward", 5, 1),
    "forward, recurrence k=2": ("forward", 5, 2),
    "backward m=5, recurrence k=2": ("backward", 5, 2),
}


def hint(size: int) -> np.ndarray:
    picture = np.zeros((size, size, 4), np.uint8)
    picture[: size // 2, : size // 2] = (40, 170, 60, 255)
    return picture


def step_seconds(engine: Engine, request: GenerationRequest) -> float:
    elapsed = 0.0
    for event in engine.generate(request):
        if event.kind.name == "ERROR":
            raise SystemExit(event.message)
        if event.kind.name == "STEP":
            elapsed = event.elapsed
            if event.step == request.steps:  # before FINISHED's final decode
                break
    return elapsed / request.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode-steps", action="store_true", help="decode x̂0 at every step, as the app does")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, torch.device("cpu"), torch.float32)
    engine = Engine(loader=lambda spec, device, dtype: model, decode_steps=args.decode_steps)
    base = GenerationRequest(prompt="a green circle at the top left on a red background", model="bench",
                             width=args.size, height=args.size, steps=args.steps, cfg=model.config.default_cfg,
                             device="cpu", dtype="fp32", guide_steps=1.0)
    requests = {name: base if c is None else base.replace(guides=(Guide("colour", 1.0, hint(args.size)),),
                                                          guide_mode=c[0], backward_steps=c[1], recurrence=c[2])
                for name, c in CONFIGS.items()}
    step_seconds(engine, base)  # warm-up
    ratios: dict[str, list[float]] = {name: [] for name in CONFIGS}
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: each config takes each slot in turn
        times = {name: step_seconds(engine, requests[name]) for name in order}
        for name in names:
            seconds[name].append(times[name])
            ratios[name].append(times[name] / times["unguided"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {1000 * times[n]:.0f} ms" for n in names),
              file=sys.stderr, flush=True)
    print(f"{args.model} at {args.size} px, {args.steps} DDIM steps, all guided, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds, x̂0 decoded at every step: {args.decode_steps}")
    print(f"{'configuration':30} {'ms/step':>9} {'× unguided':>11} {'guidance_cost':>14}")
    for name, config in CONFIGS.items():
        predicted = 1.0 if config is None else guidance_cost(*config)
        print(f"{name:30} {1000 * statistics.median(seconds[name]):9.1f} {statistics.median(ratios[name]):11.2f} "
              f"{predicted:14.2f}")


if __name__ == "__main__":
    main()
