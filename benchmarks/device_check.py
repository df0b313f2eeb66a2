"""The GPU check's measurements (run by device_check.sh), written as one JSON report.

On a GPU (`--device cuda` or `mps`), with random SD1.5-shaped weights (bench_sd.py writes the file once):
- our fp16 and bf16 images against our fp32 image on the same device (PSNR), 512 px, DDIM 20 steps, CFG 7.5;
- our fp16 image against diffusers' (SDPA attention) when diffusers is importable;
- seconds per UNet step at 512 px fp16 (CFG batch 2), ours against diffusers, and ours in channels_last;
- peak VRAM of a 512 px fp16 generation, unguided and with forward guidance (the gradient through UNet and VAE);
- the shipped model's fp16 image against its fp32 image (64 px).
`--dry-run` runs the same code paths on the CPU with bf16, the shipped model at 64 px and a tiny SD-layout model
(CI runs it: the script cannot rot between the rare sessions that have a GPU).

    python benchmarks/device_check.py --device cuda --json report.json [--workdir /tmp/bench-sd]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from studio.engine import Engine, GenerationRequest, Guide  # noqa: E402

PROMPT, NEGATIVE, GUIDANCE = "a photo of an astronaut riding a horse on mars", "blurry", 7.5


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def peak_memory(device: str, run) -> tuple[object, int | None]:
    if device != "cuda":
        return run(), None
    torch.cuda.reset_peak_memory_stats()
    result = run()
    return result, int(torch.cuda.max_memory_allocated())


def precisions(device: str) -> list[str]:
    return {"cpu": ["bf16"], "mps": ["fp16"]}.get(device, ["fp16", "bf16"])


def shipped_model_check(device: str) -> dict:
    request = GenerationRequest(prompt="a big red star in the top left corner, on a blue background", seed=1,
                                steps=25, width=64, height=64, device=device, dtype="fp32")
    engine = Engine()
    reference = engine.run(request).image
    return {dtype: psnr(engine.run(request.replace(dtype=dtype)).image, reference) for dtype in precisions(device)}


def sd_checks(device: str, model_path: Path, size: int, steps: int) -> dict:
    engine = Engine()
    base = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, model=str(model_path), sampler="ddim",
                             steps=steps, eta=0.0, cfg=GUIDANCE, seed=42, width=size, height=size, device=device,
                             dtype="fp32")
    report: dict = {"size": size, "steps": steps}
    reference = engine.run(base).image
    images = {}
    for dtype in precisions(device):
        request = base.replace(dtype=dtype)
        engine.model(request.model, device, dtype)
        synchronize(device)
        began = time.perf_counter()
        run, peak = peak_memory(device, lambda: engine.run(request))
        synchronize(device)
        images[dtype] = run.image
        report[dtype] = {"psnr_vs_fp32": psnr(run.image, reference), "generation_s": time.perf_counter() - began,
                         "peak_bytes": peak}
    low = precisions(device)[0]
    hint = np.zeros((size, size, 4), np.uint8)
    hint[size // 2:, size // 2:] = (40, 170, 60, 255)
    guided = base.replace(dtype=low, steps=max(2, steps // 4), guides=(Guide("colour", 1.0, hint),),
                          guide_mode="forward")
    run, peak = peak_memory(device, lambda: engine.run(guided))
    report["forward_guidance"] = {"dtype": low, "steps": guided.steps, "finite": bool(np.isfinite(
        run.image.astype(np.float64)).all()), "peak_bytes": peak}
    report["images"] = images
    return report


def step_times(device: str, model_path: Path, config: Path | None, size: int, repeats: int) -> dict:
    """Seconds per UNet step (CFG batch 2), ours (plain and channels_last) against diffusers, interleaved."""
    from studio.engine import load_model
    from studio.engine.denoisers import guided_denoiser
    from studio.engine.schedules import NoiseLevel

    dtype = torch.float16 if device != "cpu" else torch.bfloat16
    ours = load_model(str(model_path), torch.device(device), dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, size // 8, size // 8, generator=gen).to(device)
    width = ours.config.unet.context_dim
    cond, uncond = (torch.randn(2, 1, 77, width, generator=gen) * 0.5).to(device, dtype)
    level = NoiseLevel(501.0, float(ours.schedule.alphas_cumprod[501]))
    calls = {"ours": guided_denoiser(ours.unet, cond, uncond, GUIDANCE)}
    if config is not None:
        from diffusers import UNet2DConditionModel

        theirs = UNet2DConditionModel.from_single_file(str(model_path), config=str(config), subfolder="unet",
                                                       local_files_only=True, torch_dtype=dtype).to(device).eval()
        context = torch.cat([uncond, cond])

        def diffusers_step():
            noise = theirs(torch.cat([x] * 2).to(dtype), torch.tensor(501, device=device),
                           encoder_hidden_states=context).sample
            return noise.chunk(2)[0] + GUIDANCE * (noise.chunk(2)[1] - noise.chunk(2)[0])

        calls["diffusers"] = lambda x_, level_: diffusers_step()
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for name, call in calls.items():  # warm-up: kernel selection, packing
            call(x, level)
        for _ in range(repeats):
            for name, call in calls.items():
                synchronize(device)
                began = time.perf_counter()
                call(x, level)
                synchronize(device)
                times[name].append(time.perf_counter() - began)
    report = {name: statistics.median(t) for name, t in times.items()}
    ours.unet.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        calls["ours"](x, level)
        cl = []
        for _ in range(repeats):
            synchronize(device)
            began = time.perf_counter()
            calls["ours"](x, level)
            synchronize(device)
            cl.append(time.perf_counter() - began)
    report["ours_channels_last"] = statistics.median(cl)
    report["dtype"] = str(dtype)
    return report


def diffusers_image(device: str, model_path: Path, config: Path, size: int, steps: int) -> np.ndarray:
    from bench_sd import load_diffusers_pipeline

    pipe = load_diffusers_pipeline(model_path, config, device, torch.float16)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE, eta=0.0,
                 height=size, width=size, generator=torch.Generator("cpu").manual_seed(42),
                 output_type="np").images[0]
    return (np.asarray(image, np.float64) * 255).round().astype(np.uint8)


def tiny_sd_file(workdir: Path) -> Path:
    """A small checkpoint in SD1's single-file layout with seeded random weights (the dry run's stand-in for SD1.5):
    SD1's topology at a tenth of its width."""
    from safetensors.torch import save_file

    from studio.engine.model import LatentDiffusion, ModelConfig
    from studio.engine.text_encoder import TextEncoderConfig
    from studio.engine.unet import UNetConfig
    from studio.engine.vae import VAEConfig

    path = workdir / "tiny-sd1.safetensors"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = LatentDiffusion(ModelConfig(unet=UNetConfig(model_channels=32, context_dim=64), vae=VAEConfig(ch=32),
                                            text=TextEncoderConfig(width=64, layers=2, heads=1)))
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        tensors |= {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}
        save_file(tensors, str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "mps", "cpu"])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, bf16, small models: checks the script")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-sd"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    device = "cpu" if args.dry_run else args.device
    report: dict = {"device": device, "torch": torch.__version__, "dry_run": args.dry_run}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    report["shipped_model_psnr_vs_fp32"] = shipped_model_check(device)
    print(json.dumps(report), flush=True)
    if args.dry_run:
        model_path, config, size, steps = tiny_sd_file(args.workdir), None, 64, 4
    else:
        from bench_sd import make_checkpoints

        model_path, size, steps = make_checkpoints(args.workdir)["fp16"], 512, 20
        try:
            from bench_sd import make_diffusers_config

            config = make_diffusers_config(args.workdir)
        except ImportError:
            config, report["diffusers"] = None, "not installed: no comparison with diffusers"
    sd = sd_checks(device, model_path, size, steps)
    images = sd.pop("images")
    report["sd"] = sd
    print(json.dumps(report), flush=True)
    if config is not None:
        report["ours_fp16_vs_diffusers_fp16_psnr"] = psnr(images["fp16"], diffusers_image(device, model_path, config,
                                                                                          size, steps))
    report["step_s"] = step_times(device, model_path, config, size, 2 if args.dry_run else args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
