"""Ours against diffusers on the same random SD1.5-shaped weights, in one run.

Measures, on the CPU (float32):
- seconds per UNet step with classifier-free guidance (batch 2: uncond + cond, context 77×768) at 256 px
  (latent 32×32). The two implementations alternate step by step, so both see the same machine load; the median
  of each is reported, plus the ratio ours / diffusers (goal ≤ 0.9), at 1 and at 2 threads;
- load time of a single-file .safetensors checkpoint (an fp16 file, as SD1.5 is usually shipped, and an fp32 one)
  into float32 on the CPU: ours `load_model`, diffusers `StableDiffusionPipeline.from_single_file` (with a local
  config folder, `accelerate` installed so it builds on the meta device, its fastest path);
- peak RAM of each load, in a fresh process each: VmHWM − VmRSS-before-load, and the resident anonymous /
  file-backed split after it (memory-mapped file pages are file-backed: the OS can drop them, they are no copy;
  a float32 file is used in place by both, so its pages are only read in when the first step touches them);
- whether the two UNets' outputs agree.
With a CUDA GPU, the same step timing at 512 px in fp16, and whether full DDIM generations agree.

The weights are random (seeded), scaled like a trained network's (std 1/√fan_in), written by this script.
Needs diffusers, transformers and accelerate (benchmark-only). Run from the repository root:

    python benchmarks/bench_sd.py [--workdir /tmp/bench-sd] [--repeats 5] [--json results.json]

It takes a few minutes on 2 cores and ~7 GB of disk in the work folder (kept for reruns unless --clean).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GUIDANCE = 7.5


# -- files ------------------------------------------------------------------------------------------------------

def random_sd15_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    from studio.engine import LatentDiffusion
    from studio.engine.model import ModelConfig

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LatentDiffusion(ModelConfig()).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            tensors[name] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        elif name.endswith("weight"):  # norms
            tensors[name] = torch.ones(shape)
        else:
            tensors[name] = torch.zeros(shape)
    return tensors


def make_checkpoints(workdir: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    paths = {"fp16": workdir / "random-sd15-fp16.safetensors", "fp32": workdir / "random-sd15-fp32.safetensors"}
    if all(p.exists() for p in paths.values()):
        return paths
    print("writing random SD1.5-shaped checkpoints ...", flush=True)
    tensors = random_sd15_tensors()
    save_file(tensors, str(paths["fp32"]))
    save_file({k: v.half() for k, v in tensors.items()}, str(paths["fp16"]))
    return paths


def make_diffusers_config(workdir: Path) -> Path:
    """The config folder `from_single_file` needs (normally fetched from the Hub): SD1.5's component configs."""
    folder = workdir / "sd15-config"
    if (folder / "model_index.json").exists():
        return folder
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from studio.engine.tokenizer import CLIPTokenizer

    with torch.device("meta"):
        UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).save_config(folder / "unet")
        AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        ).save_config(folder / "vae")
    CLIPTextConfig(  # CLIP ViT-L/14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    ).save_pretrained(folder / "text_encoder")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_config(folder / "scheduler")
    tok = folder / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    ours = CLIPTokenizer()
    (tok / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(ours.vocab)}))
    pairs = sorted(ours._ranks.items(), key=lambda kv: kv[1])
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in pairs) + "\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False}))
    return folder


# -- children (one measurement per fresh process) ---------------------------------------------------------------

def memory() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def load_ours(path: Path, device: str, dtype: torch.dtype):
    from studio.engine import load_model

    return load_model(str(path), torch.device(device), dtype)


def load_diffusers_pipeline(path: Path, config: Path, device: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=dtype, safety_checker=None,
        requires_safety_checker=False)
    return pipe.to(device)


def child_load(impl: str, path: Path, config: Path) -> dict:
    import diffusers  # noqa: F401  (imports outside the measured span, both sides alike)
    import transformers  # noqa: F401

    before = memory()
    began = time.perf_counter()
    if impl == "ours":
        model = load_ours(path, "cpu", torch.float32)
    else:
        model = load_diffusers_pipeline(path, config, "cpu", torch.float32)
    seconds = time.perf_counter() - began
    after = memory()
    del model
    return {
        "seconds": seconds,
        "peak_ram_bytes": after["VmHWM"] - before["VmRSS"],
        "resident_anon_bytes": after["RssAnon"] - before["RssAnon"],
        "resident_file_bytes": after["RssFile"] - before["RssFile"],
    }


def child_steps(path: Path, config: Path, device: str, size: int, repeats: int, threads: int) -> dict:
    from diffusers import UNet2DConditionModel

    from studio.engine.denoisers import guided_denoiser
    from studio.engine.schedules import NoiseLevel

    if device == "cpu":
        torch.set_num_threads(threads)
    dtype = torch.float32 if device == "cpu" else torch.float16
    ours = load_ours(path, device, dtype)
    theirs = UNet2DConditionModel.from_single_file(
        str(path), config=str(config), subfolder="unet", local_files_only=True, torch_dtype=dtype).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, size // 8, size // 8, generator=gen).to(device)
    cond = (torch.randn(1, 77, 768, generator=gen) * 0.5).to(device, dtype)
    uncond = (torch.randn(1, 77, 768, generator=gen) * 0.5).to(device, dtype)
    level = NoiseLevel(501.0, float(ours.schedule.alphas_cumprod[501]))
    denoise = guided_denoiser(ours.unet, cond, uncond, GUIDANCE)
    context = torch.cat([uncond, cond])

    def step_ours():
        with torch.inference_mode():  # as our pipeline runs
            return denoise(x, level)

    def step_theirs():
        with torch.no_grad():  # as StableDiffusionPipeline.__call__ runs: its loop body
            latent_in = torch.cat([x] * 2).to(dtype)
            noise = theirs(latent_in, torch.tensor(501, device=device), encoder_hidden_states=context).sample
            uncond_pred, cond_pred = noise.chunk(2)
            return (uncond_pred + GUIDANCE * (cond_pred - uncond_pred)).float()

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began, out

    first_ours, out_ours = timed(step_ours)  # includes the one-off weight packing on the CPU
    first_theirs, out_theirs = timed(step_theirs)
    times = {"ours": [], "diffusers": []}
    for _ in range(repeats):
        times["ours"].append(timed(step_ours)[0])
        times["diffusers"].append(timed(step_theirs)[0])
    scale = out_theirs.abs().max().item()
    return {
        "device": device, "size": size, "threads": threads if device == "cpu" else None, "dtype": str(dtype),
        "first_step_s": {"ours": first_ours, "diffusers": first_theirs},
        "step_s": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio": statistics.median(times["ours"]) / statistics.median(times["diffusers"]),
        "output_max_abs_diff": (out_ours - out_theirs).abs().max().item(),
        "output_scale": scale,
    }


def child_generate_cuda(path: Path, config: Path, steps: int = 20) -> dict:
    """Full DDIM generations at 512 px fp16 on CUDA, same seed: do the images agree?"""
    import numpy as np

    from studio.engine import Engine, GenerationRequest

    prompt, negative = "a photo of an astronaut riding a horse on mars", "blurry"
    model = load_ours(path, "cuda", torch.float16)
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, model=str(path), sampler="ddim",
                                steps=steps, eta=0.0, cfg=GUIDANCE, seed=42, width=512, height=512,
                                device="cuda", dtype="fp16")
    ours = Engine(loader=lambda *a: model).run(request).image.astype(np.int16)
    del model
    torch.cuda.empty_cache()
    pipe = load_diffusers_pipeline(path, config, "cuda", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=GUIDANCE, eta=0.0,
                  height=512, width=512, generator=torch.Generator("cpu").manual_seed(42),
                  output_type="np").images[0]
    theirs = (theirs * 255).round().astype(np.int16)
    diff = np.abs(ours - theirs)
    mse = float((diff.astype(np.float64) ** 2).mean())
    return {"max_abs_diff_u8": int(diff.max()), "mean_abs_diff_u8": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)}


def run_child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- main -------------------------------------------------------------------------------------------------------

def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-sd"))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation and setting")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts for the step timing")
    parser.add_argument("--load-rounds", type=int, default=3, help="alternating loads per implementation and file")
    parser.add_argument("--size", type=int, default=256, help="CPU image size in pixels")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--clean", action="store_true", help="delete the work folder afterwards")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "load":
            out = child_load(rest[0], Path(rest[1]), Path(rest[2]))
        elif kind == "steps":
            out = child_steps(Path(rest[0]), Path(rest[1]), rest[2], int(rest[3]), int(rest[4]), int(rest[5]))
        elif kind == "generate-cuda":
            out = child_generate_cuda(Path(rest[0]), Path(rest[1]))
        else:
            raise SystemExit(f"unknown child task {kind}")
        print(json.dumps(out))
        return

    import diffusers
    import transformers

    args.workdir.mkdir(parents=True, exist_ok=True)
    files = make_checkpoints(args.workdir)
    config = make_diffusers_config(args.workdir)
    results: dict = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                     "load": {}, "steps": [], "cuda": None}

    for kind, path in files.items():
        runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
        for round_ in range(args.load_rounds):  # alternate, so both see the same machine load
            for impl in runs:
                print(f"load {kind} file, {impl} ({round_ + 1}/{args.load_rounds}) ...", flush=True)
                runs[impl].append(run_child(["load", impl, str(path), str(config)]))
        for impl, measured in runs.items():
            results["load"][f"{kind}/{impl}"] = {
                "seconds": statistics.median(r["seconds"] for r in measured),
                "all_seconds": [r["seconds"] for r in measured],
                **{k: max(r[k] for r in measured) for k in measured[0] if k.endswith("_bytes")},
            }

    for threads in (int(t) for t in args.threads.split(",")):
        print(f"UNet steps at {args.size} px, {threads} thread(s) ...", flush=True)
        results["steps"].append(run_child(["steps", str(files["fp16"]), str(config), "cpu", str(args.size),
                                           str(args.repeats), str(threads)]))

    if torch.cuda.is_available():
        print("CUDA: UNet steps at 512 px fp16, then full generations ...", flush=True)
        results["cuda"] = {
            "steps": run_child(["steps", str(files["fp16"]), str(config), "cuda", "512", str(args.repeats), "0"]),
            "generation": run_child(["generate-cuda", str(files["fp16"]), str(config)]),
        }

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.clean:
        shutil.rmtree(args.workdir)


def report(results: dict) -> None:
    print(f"\ntorch {results['torch']}, diffusers {results['diffusers']}, transformers {results['transformers']}, "
          f"{results['cpu_count']} CPUs")
    print("\nLoad a single-file SD1.5 checkpoint into float32 on the CPU (fresh process each; median seconds,")
    print("largest peak RAM over the rounds):")
    print(f"{'file':6} {'impl':10} {'seconds':>8} {'peak RAM':>11} {'anon after':>11} {'file-backed':>12}")
    for key, r in results["load"].items():
        kind, impl = key.split("/")
        print(f"{kind:6} {impl:10} {r['seconds']:8.2f} {gib(r['peak_ram_bytes']):>11} "
              f"{gib(r['resident_anon_bytes']):>11} {gib(r['resident_file_bytes']):>12}")
    print("\nUNet step with CFG (batch 2), seconds, median of alternating runs:")
    rows = results["steps"] + ([results["cuda"]["steps"]] if results["cuda"] else [])
    for r in rows:
        where = f"{r['device']} {r['dtype'].replace('torch.', '')} {r['size']}px"
        if r["threads"]:
            where += f" {r['threads']} thr"
        print(f"{where:28} ours {r['median_s']['ours']:.3f}  diffusers {r['median_s']['diffusers']:.3f}  "
              f"ratio {r['ratio']:.2f}  (first step {r['first_step_s']['ours']:.2f} / "
              f"{r['first_step_s']['diffusers']:.2f})  outputs max |Δ| {r['output_max_abs_diff']:.1e} "
              f"of {r['output_scale']:.2f}")
    if results["cuda"] is None:
        print("\nNo CUDA GPU in this run: the 512 px fp16 GPU rows were not measured.")
    else:
        g = results["cuda"]["generation"]
        print(f"\nCUDA fp16 512 px DDIM generation, same seed: max |Δ| {g['max_abs_diff_u8']} / 255, "
              f"mean {g['mean_abs_diff_u8']:.2f}, PSNR {g['psnr_db']:.1f} dB")


if __name__ == "__main__":
    main()
