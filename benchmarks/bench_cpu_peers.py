"""Ours against diffusers (and OpenVINO when installed) on the CPU: whole 20-step generations, side by side.

Each measurement is one fresh process that loads a random SD1.5-shaped checkpoint (the same file for everyone,
written by bench_sd.py's helpers), then runs one text-to-image generation: DDIM, CFG 7.5 (batch 2), `--steps`
steps at `--size` px. Reported per implementation and precision:

- wall seconds of the generation (loading excluded; text encoding, every UNet call and the VAE decode included),
  and its seconds per step (wall / steps);
- CPU seconds the process spent in it (user + system): the measure of spin-waiting, which wall time hides;
- peak resident memory of the process (VmHWM: weights, packed copies, activations, mapped file pages touched);
- PSNR of the image against our fp32 image of the same round (same seed and weights).

Rounds interleave the implementations (A B C D, A B C D, ...), so a shared, noisy machine slows all of them
alike; medians of the rounds are reported, and ratios against OpenVINO's (or diffusers' when OpenVINO is absent).
`--load` adds, to every round, the same runs with a competing CPU-bound process pinned to one core: a desktop
app always shares its cores.

    python benchmarks/bench_cpu_peers.py [--rounds 3] [--steps 20] [--size 256] [--threads 2] [--load]
                                         [--impls ours-fp32,ours-fast,ours+openvino-fp32,ours+openvino-fast,
                                                  diffusers-fp32,diffusers-bf16,openvino-f32,openvino]
                                         [--optimum-python PATH] [--workdir /tmp/bench-sd] [--json results.json]

`ours+openvino-*` is our engine on device "openvino" (the UNet's calls on OpenVINO, `pip install
diffusion-studio[openvino]`). `openvino-f32` and `openvino` are optimum-intel's whole OpenVINO pipeline, the
runtime FastSD CPU and Intel's tools use: forced f32 (INFERENCE_PRECISION_HINT f32) and out of the box (bf16 on
CPUs with AVX512-BF16 or AMX). optimum-intel pins older transformers/diffusers and its `pip install` pulls a CUDA
build of torch, so it lives in its own environment: `--optimum-python` names that interpreter (docs/numerics.md,
"Measuring against optimum-intel", says how it was built). Needs diffusers, transformers and accelerate.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from studio.process_env import runtime_defaults  # noqa: E402  (after the path: run from a checkout)

PROMPT, NEGATIVE, GUIDANCE, SEED = "a photo of a lighthouse on a cliff at sunset", "blurry", 7.5, 42
IMPLS = ("ours-fp32", "ours-fast", "ours+openvino-fp32", "ours+openvino-fast", "diffusers-fp32", "diffusers-bf16",
         "openvino-f32", "openvino")
OPTIMUM_IMPLS = ("openvino-f32", "openvino")  # run by --optimum-python


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# -- one generation per child process ---------------------------------------------------------------------------

def _ours(path: Path, precision: str, size: int, steps: int, device: str = "cpu"):
    from studio.engine import Engine, GenerationRequest

    engine = Engine()
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, model=str(path), sampler="ddim", steps=steps,
                                eta=0.0, cfg=GUIDANCE, seed=SEED, width=size, height=size, device=device,
                                dtype=precision)
    # loading is not timed (it is reported: load_s), and, as the CLI does, it includes packing the weights for this
    # size (Engine.prepare), as OpenVINO's loading includes compiling for it
    engine.prepare(request.model, device, precision, size, size)
    return lambda: engine.run(request).image


def _diffusers(path: Path, config: Path, precision: str, size: int, steps: int):
    import torch
    from bench_sd import load_diffusers_pipeline

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    pipe = load_diffusers_pipeline(path, config, "cpu", dtype)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        with torch.no_grad():
            image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE, eta=0.0,
                         height=size, width=size, generator=torch.Generator().manual_seed(SEED),
                         output_type="np").images[0]
        return (np.asarray(image, np.float32) * 255).round().clip(0, 255).astype(np.uint8)

    return generate


def _openvino(path: Path, config: Path, workdir: Path, size: int, steps: int, force_f32: bool):
    from optimum.intel import OVStableDiffusionPipeline

    exported = workdir / "openvino"
    if not (exported / "model_index.json").exists():
        from bench_sd import load_diffusers_pipeline
        import torch

        folder = workdir / "diffusers-folder"
        if not (folder / "model_index.json").exists():
            load_diffusers_pipeline(path, config, "cpu", torch.float32).save_pretrained(folder)
        OVStableDiffusionPipeline.from_pretrained(str(folder), export=True, compile=False).save_pretrained(exported)
    # Forced f32 is OpenVINO's exact path; without the hint it picks bf16 on capable CPUs (its default).
    ov_config = {"INFERENCE_PRECISION_HINT": "f32"} if force_f32 else {}
    pipe = OVStableDiffusionPipeline.from_pretrained(str(exported), compile=False, ov_config=ov_config)
    pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=1)
    pipe.compile()

    def generate():
        import torch

        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE, eta=0.0,
                     height=size, width=size, generator=torch.Generator().manual_seed(SEED),
                     output_type="np").images[0]
        return (np.asarray(image, np.float32) * 255).round().clip(0, 255).astype(np.uint8)

    return generate


def child(impl: str, workdir: Path, size: int, steps: int, threads: int, out: Path) -> dict:
    import torch

    from bench_sd import make_checkpoints, make_diffusers_config

    torch.set_num_threads(threads)
    path, config = make_checkpoints(workdir)["fp16"], make_diffusers_config(workdir)
    began = time.perf_counter()
    if impl.startswith("ours+openvino-"):  # our engine with the UNet on OpenVINO (device "openvino")
        os.environ.setdefault("STUDIO_CACHE_DIR", str(workdir / "cache"))  # its converted UNet, reused by later rounds
        generate = _ours(path, impl.split("-")[1], size, steps, device="openvino")
    elif impl.startswith("ours-"):
        generate = _ours(path, impl.split("-")[1], size, steps)
    elif impl.startswith("diffusers-"):
        generate = _diffusers(path, config, impl.split("-")[1], size, steps)
    else:
        generate = _openvino(path, config, workdir, size, steps, force_f32=impl == "openvino-f32")
    load_s = time.perf_counter() - began
    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
    image = generate()
    wall = time.perf_counter() - wall_before
    np.save(out, image)
    return {"impl": impl, "load_s": load_s, "wall_s": wall, "s_per_step": wall / steps,
            "cpu_s": cpu_seconds() - cpu_before, "peak_rss_bytes": peak_rss_bytes()}


# -- the competing load and the rounds --------------------------------------------------------------------------

def _spin() -> None:  # pragma: no cover - runs in the competitor process
    os.sched_setaffinity(0, {0})
    while True:
        pass


def run_child(impl: str, args, image: Path) -> dict:
    python = args.optimum_python if impl in OPTIMUM_IMPLS else sys.executable
    command = [python, __file__, "--child", impl, "--image", str(image), "--workdir", str(args.workdir),
               "--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = dict(os.environ)
    if impl.startswith("ours"):
        runtime_defaults(env)  # what `studio` (app and CLI) sets for itself before torch loads
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return {"impl": impl, "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def available(impl: str, optimum_python: str = sys.executable) -> bool:
    if impl in OPTIMUM_IMPLS:
        probe = "from optimum.intel import OVStableDiffusionPipeline"
        return subprocess.run([optimum_python, "-c", probe], capture_output=True).returncode == 0
    if impl.startswith("ours+openvino"):
        from studio.engine import openvino_unet

        return openvino_unet.available()
    return True


def measure(args) -> list[dict]:
    impls = [i for i in args.impls.split(",") if available(i, args.optimum_python)]
    loads = (False, True) if args.load else (False,)
    rows = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    for round_index in range(args.rounds):
        for loaded in loads:
            competitor = multiprocessing.Process(target=_spin, daemon=True) if loaded else None
            if competitor:
                competitor.start()
            try:
                images = {}
                for impl in impls:
                    image = args.workdir / f"image-{impl}.npy"
                    row = run_child(impl, args, image) | {"round": round_index, "loaded": loaded}
                    if "error" not in row:
                        images[impl] = np.load(image)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                for row in rows[-len(impls):]:
                    if row["impl"] in images and "ours-fp32" in images:
                        row["psnr_vs_ours_fp32"] = psnr(images[row["impl"]], images["ours-fp32"])
            finally:
                if competitor:
                    competitor.terminate()
                    competitor.join()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Medians over rounds, and each implementation's wall-time ratio against every reference present, taken
    within a round (so a noisy machine slows both sides of a ratio alike) and then the median over rounds."""
    table = []
    for loaded in sorted({r["loaded"] for r in rows}):
        done = [r for r in rows if r["loaded"] == loaded and "error" not in r]
        impls = list(dict.fromkeys(r["impl"] for r in done))
        references = [i for i in ("openvino-f32", "openvino", "diffusers-fp32") if i in impls]
        for impl in impls:
            mine = [r for r in done if r["impl"] == impl]
            row = {
                "impl": impl, "loaded": loaded, "rounds": len(mine),
                "s_per_step": statistics.median(r["s_per_step"] for r in mine),
                "wall_s": statistics.median(r["wall_s"] for r in mine),
                "cpu_s": statistics.median(r["cpu_s"] for r in mine),
                "peak_rss_gib": statistics.median(r["peak_rss_bytes"] for r in mine) / 2**30,
                "load_s": statistics.median(r["load_s"] for r in mine),
                "psnr_vs_ours_fp32": statistics.median(r.get("psnr_vs_ours_fp32", math.nan) for r in mine),
            }
            for reference in references:
                ratios = [r["wall_s"] / ref["wall_s"] for r in mine for ref in done
                          if ref["impl"] == reference and ref["round"] == r["round"]]
                row[f"wall_ratio_vs_{reference}"] = statistics.median(ratios) if ratios else math.nan
            table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-sd"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--load", action="store_true", help="also run every round beside a busy core")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--optimum-python", default=sys.executable,
                        help="interpreter of an environment with optimum-intel (for openvino-f32 and openvino)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir, args.size, args.steps, args.threads, args.image)))
        return
    rows = measure(args)
    table = summarise(rows)
    references = [k.removeprefix("wall_ratio_vs_") for k in table[0] if k.startswith("wall_ratio_vs_")] if table else []
    print(f"\n{'implementation':20} {'load':>5} {'s/step':>7} {'wall s':>7} {'CPU s':>7} {'peak GiB':>8} "
          f"{'PSNR dB':>7} " + " ".join(f"{'/' + r:>15}" for r in references))
    for row in table:
        print(f"{row['impl']:20} {'busy' if row['loaded'] else 'quiet':>5} {row['s_per_step']:7.2f} "
              f"{row['wall_s']:7.1f} {row['cpu_s']:7.1f} {row['peak_rss_gib']:8.2f} {row['psnr_vs_ours_fp32']:7.1f} "
              + " ".join(f"{row.get('wall_ratio_vs_' + r, math.nan):15.2f}" for r in references))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
