"""Ours against diffusers (and OpenVINO when installed) on the CPU: whole 20-step generations, side by side.

Each measurement is one fresh process that loads a random SD1.5-shaped checkpoint (the same file for everyone,
written by bench_sd.py's helpers), then runs one text-to-image generation: DDIM, CFG 7.5 (batch 2), `--steps`
steps at `--size` px. Reported per implementation and precision:

- wall seconds of the generation (loading excluded; text encoding, every UNet call and the VAE decode included),
  and its seconds per step (wall / steps);
- CPU seconds the process spent in it (user + system): the measure of spin-waiting, which wall time hides;
- peak resident memory of the process (VmHWM: weights, packed copies, activations, mapped file pages touched);
- PSNR of the image against our fp32 image of the same round (same seed and weights);
- the whole process from spawn to exit (`process_s`: interpreter start, imports, loading, packing or compiling for
  the size, the generation, writing the picture, exit), with its CPU seconds and peak RSS from the kernel's
  accounting of that child: what a user of a command-line tool waits for.

`ours-cli-fp32` and `ours-cli-fast` are the real command line, `python -m studio generate ... --out X.png`, as a user
types it (only the whole-process measures exist for them). A start of ours after the first for the same model file
and size maps the packs the first one wrote (engine/pack_cache.py); the rounds after the first measure that.
`ours-cli-fp32-first` and `ours-cli-fast-first` are the same command on a first start: each run gets an empty cache
folder of its own (STUDIO_CACHE_DIR), so it hashes the model file, packs the weights and writes the packs (the
process ends when they are written), as a user's very first generation with a model does.

Rounds interleave the implementations (A B C D, A B C D, ...), so a shared, noisy machine slows all of them
alike; medians of the rounds are reported, and ratios against OpenVINO's (or diffusers' when OpenVINO is absent).
`--load` adds, to every round, the same runs with a competing CPU-bound process pinned to one core: a desktop
app always shares its cores.

    python benchmarks/bench_cpu_peers.py [--rounds 3] [--steps 20] [--size 256] [--threads 2] [--load]
                                         [--impls ours-fp32,ours-fast,ours+openvino-fp32,ours+openvino-fast,
                                                  ours-cli-fp32,ours-cli-fast,diffusers-fp32,diffusers-bf16,
                                                  openvino-f32,openvino]
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
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from studio.process_env import runtime_defaults  # noqa: E402  (after the path: run from a checkout)

PROMPT, NEGATIVE, GUIDANCE, SEED = "a photo of a lighthouse on a cliff at sunset", "blurry", 7.5, 42
IMPLS = ("ours-fp32", "ours-fast", "ours+openvino-fp32", "ours+openvino-fast", "ours-cli-fp32", "ours-cli-fast",
         "ours-cli-fp32-first", "ours-cli-fast-first", "diffusers-fp32", "diffusers-bf16", "openvino-f32", "openvino")
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


def cli_command(impl: str, args, png: Path) -> list[str]:
    """`studio generate` as a user types it, for the same picture as the other rows."""
    from bench_sd import make_checkpoints

    path = make_checkpoints(args.workdir)["fp16"]
    return [sys.executable, "-m", "studio", "generate", "--model", str(path), "--prompt", PROMPT, "--negative",
            NEGATIVE, "--sampler", "ddim", "--steps", str(args.steps), "--eta", "0", "--cfg", str(GUIDANCE),
            "--seed", str(SEED), "--width", str(args.size), "--height", str(args.size), "--device", "cpu",
            "--dtype", impl.removeprefix("ours-cli-").removesuffix("-first"), "--out", str(png), "--quiet"]


def run_child(impl: str, args, image: Path) -> dict:
    """One fresh process. Besides what the child reports, the whole process is measured from spawn to exit
    (interpreter start, imports, loading, packing or compiling, the generation, writing the picture, exit):
    `process_s`, its CPU seconds and its peak RSS, taken from the kernel's accounting of that child (wait4)."""
    python = args.optimum_python if impl in OPTIMUM_IMPLS else sys.executable
    png = image.with_suffix(".png")
    if impl.startswith("ours-cli-"):
        command = cli_command(impl, args, png)
    else:
        command = [python, __file__, "--child", impl, "--image", str(image), "--workdir", str(args.workdir),
                   "--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = dict(os.environ)
    if impl.startswith("ours"):
        runtime_defaults(env)  # what `studio` (app and CLI) sets for itself before torch loads
        if impl.startswith("ours-cli-"):  # (the CLI takes torch's default: a thread per core, unless told)
            env.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.TemporaryDirectory(dir=args.workdir, prefix="first-start-cache-") as empty_cache:
        if impl.endswith("-first"):
            env["STUDIO_CACHE_DIR"] = empty_cache
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        process_s = time.perf_counter() - began
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        return {"impl": impl, "error": stderr.strip().splitlines()[-1] if stderr.strip() else "failed"}
    whole = {"process_s": process_s, "process_cpu_s": usage.ru_utime + usage.ru_stime,
             "process_peak_rss_bytes": usage.ru_maxrss * 1024}
    if impl.startswith("ours-cli-"):
        from PIL import Image

        np.save(image, np.asarray(Image.open(png).convert("RGB")))
        return {"impl": impl} | whole
    return json.loads(stdout.strip().splitlines()[-1]) | whole


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

            def median(key: str) -> float:  # (the CLI rows have only the whole process's measures)
                return statistics.median(r.get(key, math.nan) for r in mine)

            row = {
                "impl": impl, "loaded": loaded, "rounds": len(mine),
                "s_per_step": median("s_per_step"), "wall_s": median("wall_s"), "cpu_s": median("cpu_s"),
                "peak_rss_gib": median("peak_rss_bytes") / 2**30, "load_s": median("load_s"),
                "psnr_vs_ours_fp32": median("psnr_vs_ours_fp32"),
                "process_s": median("process_s"), "process_peak_rss_gib": median("process_peak_rss_bytes") / 2**30,
            }
            for reference in references:
                for key, name in (("wall_s", "wall_ratio_vs_"), ("process_s", "process_ratio_vs_")):
                    ratios = [r.get(key, math.nan) / ref[key] for r in mine for ref in done
                              if ref["impl"] == reference and ref["round"] == r["round"]]
                    row[name + reference] = statistics.median(ratios) if ratios else math.nan
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
          f"{'PSNR dB':>7} " + " ".join(f"{'/' + r:>15}" for r in references)
          + f" {'start-to-exit s':>15} " + " ".join(f"{'/' + r:>15}" for r in references))
    for row in table:
        print(f"{row['impl']:20} {'busy' if row['loaded'] else 'quiet':>5} {row['s_per_step']:7.2f} "
              f"{row['wall_s']:7.1f} {row['cpu_s']:7.1f} {row['peak_rss_gib']:8.2f} {row['psnr_vs_ours_fp32']:7.1f} "
              + " ".join(f"{row.get('wall_ratio_vs_' + r, math.nan):15.2f}" for r in references)
              + f" {row['process_s']:15.1f} "
              + " ".join(f"{row.get('process_ratio_vs_' + r, math.nan):15.2f}" for r in references))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
