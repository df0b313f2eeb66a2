"""A second start with the packed-weight cache (engine/pack_cache.py) against packing again, in interleaved rounds.

Each measurement is a fresh process (a start): `Engine.prepare` for the size, which loads the model and packs it
(or, with an entry an earlier start wrote, reads the file without the packed layers' weights and maps their
packs), then a 20-step DDIM generation with CFG. Rounds alternate "packs again"
(STUDIO_NO_PACK_CACHE=1) and "reads the cache", so load on the machine hits both alike. Reported per variant:
medians over the rounds of the start (load and prepare), the generation's seconds per step and peak RSS; and whether the
pictures are the same bit for bit. The first start, which writes the entry, is measured once before the rounds:
its start, its generation (the writer runs beside it at the lowest priority) and the wait for the writer at exit.

    python benchmarks/bench_pack_cache.py --model /path/to/sd15.safetensors [--size 256] [--rounds 3] [--steps 20]

`bench_sd.py` writes an SD1.5-shaped checkpoint with random weights (`make_checkpoints`) for a model to try.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.process_env import runtime_defaults  # noqa: E402  (after the path: run from a checkout)


def child(model: str, size: int, steps: int, threads: int, out: str) -> None:
    import resource

    import numpy as np
    import torch

    from studio.engine import Engine, GenerationRequest, pack_cache

    torch.set_num_threads(threads)
    engine = Engine()
    began = time.perf_counter()
    engine.prepare(model, "cpu", "fp32", size, size)  # loads the model (for this size) and packs it, as `studio` does
    prepared = time.perf_counter()
    request = GenerationRequest(prompt="a photo of a lighthouse on a cliff at sunset", negative_prompt="blurry",
                                model=model, steps=steps, width=size, height=size, cfg=7.5, seed=42, device="cpu",
                                dtype="fp32", sampler="ddim")
    image = engine.run(request).image
    generated = time.perf_counter()
    pack_cache.wait_for_writes()
    waited = time.perf_counter()
    np.save(out, image)
    print(json.dumps({"start": prepared - began, "per step": (generated - prepared) / steps,
                      "writer wait": waited - generated,
                      "peak RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def run(args, cache: Path, use_cache: bool, image: Path) -> dict:
    env = runtime_defaults(dict(os.environ, STUDIO_CACHE_DIR=str(cache)))  # what `studio` sets before torch loads
    if not use_cache:
        env["STUDIO_NO_PACK_CACHE"] = "1"
    command = [sys.executable, __file__, "--child", "--model", args.model, "--size", str(args.size), "--steps",
               str(args.steps), "--threads", str(args.threads), "--out", str(image)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.child:
        child(args.model, args.size, args.steps, args.threads, args.out)
        return 0
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench-pack-cache-") as work:
        work = Path(work)
        first = run(args, work / "cache", True, work / "first.npy")
        print("first start (writes the entry):", json.dumps(first))
        results = {"packs again": [], "reads the cache": []}
        same = True
        for round_ in range(args.rounds):
            for name, use in (("packs again", False), ("reads the cache", True)):
                out = work / f"{round_}-{use}.npy"
                results[name].append(run(args, work / "cache", use, out))
                same = same and np.array_equal(np.load(out), np.load(work / "first.npy"))
                print(round_, name, json.dumps(results[name][-1]), flush=True)
    print(f"\n{args.rounds} rounds, medians ({args.size} px, {args.steps} steps, {args.threads} threads):")
    for name, rows in results.items():
        print(f"  {name:16s}" + "  ".join(f"{key} {statistics.median(r[key] for r in rows):.2f}"
                                          for key in ("start", "per step", "peak RSS GiB")))
    print("pictures identical to the first start's:", same)
    return 0


if __name__ == "__main__":
    sys.exit(main())
