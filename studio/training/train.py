"""The training loops: stage "vae" (the autoencoder alone), then stage "unet" (UNet and text encoder jointly).

Both stages train one `LatentDiffusion`, so a checkpoint is always a whole model in the SD layout. Each keeps an
EMA of the weights it trains (the EMA is what gets exported), resumes from `<out>/<stage>.pt` exactly (step,
optimiser, EMA, data stream: each step's data and noise come from generators seeded with (seed, step)), and stops
cleanly on a time or step budget, Ctrl-C or SIGTERM, saving first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import LatentDiffusion
from ..engine.loading import save_studio_file
from ..engine.model import ModelConfig
from ..engine.samplers import v_from_eps
from ..engine.schedules import q_sample
from ..engine.timeline import LatentPreview
from .config import MODEL_NAME, TrainConfig, shapes_model_config
from .descent import checked_step
from .data import Captioner, LatentCache, add_object_emphasis, build_cache, render_scenes, to_unit, unet_batch, vae_batch
from .scenes import COLOURS

Log = Callable[[str], None]
PROGRESS_SECONDS = 30.0


# ---- pieces -----------------------------------------------------------------------------------------------------


DECODER_PREFIXES = ("first_stage_model.decoder.", "first_stage_model.post_quant_conv.")
ENCODER_PREFIXES = ("first_stage_model.encoder.", "first_stage_model.quant_conv.")


def trained_prefixes(stage: str, decoder_only: bool = False) -> tuple[str, ...]:
    if stage == "vae":
        return DECODER_PREFIXES if decoder_only else ("first_stage_model.",)
    return ("model.diffusion_model.", "cond_stage_model.")


def checkpoint_name(cfg: TrainConfig) -> str:
    return "vae-decoder.pt" if cfg.stage == "vae" and cfg.decoder_only else f"{cfg.stage}.pt"


def trained_parameters(model: LatentDiffusion, stage: str, decoder_only: bool = False) -> dict[str, torch.nn.Parameter]:
    prefixes = trained_prefixes(stage, decoder_only)
    return {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ with d = min(decay, (1 + n)/(10 + n)) (warm start, as LDM's LitEma)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, state: dict | None = None):
        self.params = params
        self.decay = decay
        self.updates = 0 if state is None else state["updates"]
        source = {k: p.detach() for k, p in params.items()} if state is None else state["shadow"]
        self.shadow = {k: source[k].detach().clone().float().to(params[k].device) for k in params}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        names = list(self.params)
        torch._foreach_lerp_([self.shadow[k] for k in names], [self.params[k].detach().float() for k in names], 1 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def copy_to(self, model: LatentDiffusion) -> None:
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if name in self.shadow:
                    value.copy_(self.shadow[name])


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then a cosine from lr down to min_lr_ratio·lr at total_steps (constant after)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def step_rngs(cfg: TrainConfig, step: int, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """The data and noise generators of one step: a resumed run sees exactly the data it would have seen."""
    data = np.random.default_rng([cfg.data_seed, cfg.seed, step])
    noise = torch.Generator(device=device).manual_seed(int(data.integers(2**62)))
    return data, noise


def encoder_fingerprint(model: LatentDiffusion) -> str:
    """Identifies the latent space: a hash of the encoder's weights (the decoder may be fine-tuned later)."""
    digest = hashlib.sha1()
    state = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    for name, value in sorted(state.items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---- losses -----------------------------------------------------------------------------------------------------


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_loss(model: LatentDiffusion, x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
             weights: torch.Tensor | None = None):
    """L1 + edge_weight·L1 of image gradients + kl_weight·KL(q(z|x) ‖ N(0, I)), all per-element means.

    weights (B, 1, H, W), if given, weigh each pixel's L1 and the gradient L1 of each pixel pair (the pair's mean
    weight); the means stay per element, so a weight of 1 everywhere is the plain loss.

    With cfg.decoder_only the encoder is frozen (the UNet's latent space stays put) and only the decoder learns."""
    with torch.no_grad() if cfg.decoder_only else nullcontext():
        posterior = model.vae.encode(x)
    y = model.vae.decode(posterior.sample(generator)).float()
    if weights is None:
        weights = torch.ones_like(x[:, :1])
    wx = 0.5 * (weights[..., :, 1:] + weights[..., :, :-1])  # per horizontal pixel pair
    wy = 0.5 * (weights[..., 1:, :] + weights[..., :-1, :])
    l1 = ((y - x).abs() * weights).mean()
    (gx, gy), (hx, hy) = image_gradients(y), image_gradients(x)
    edge = 0.5 * (((gx - hx).abs() * wx).mean() + ((gy - hy).abs() * wy).mean())
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.std.float() ** 2 - 1 - posterior.logvar.float()).mean()
    loss = l1 + cfg.edge_weight * edge + cfg.kl_weight * kl
    mse = F.mse_loss(y.detach().clamp(-1, 1), x)
    psnr = float(10 * torch.log10(4.0 / mse.clamp_min(1e-10)))  # peak-to-peak 2 in [−1, 1]
    return loss, {"l1": float(l1.detach()), "edge": float(edge.detach()), "kl": float(kl.detach()), "psnr": psnr}


def diffusion_loss(model: LatentDiffusion, batch, generator: torch.Generator, min_snr_gamma: float = 5.0):
    """MSE on v (Salimans & Ho 2022: v = √ᾱ·ε − √(1−ᾱ)·x0) or on ε, at uniform t, x_t from DDPM eq. 4.

    Weighting after Min-SNR-γ (Hang et al. 2023), which caps the weight of easy low-noise steps, SNR = ᾱ/(1−ᾱ):
    for v, w = min(SNR + 1, γ)/(SNR + 1), i.e. plain v-MSE (x0-MSE weighted SNR + 1) until SNR + 1 reaches γ. The
    paper's min(SNR, γ)/(SNR + 1) would give t ≈ T no weight at all, and with zero terminal SNR the first
    sampling step is exactly the caption's mean picture (background colour, layout). For ε: min(SNR, γ)/SNR."""
    device = model.device
    x0 = batch.x0.to(device)
    n = x0.shape[0]
    t = torch.randint(0, model.schedule.num_train_timesteps, (n,), generator=generator, device=device)
    a = model.schedule.alphas_cumprod.to(device)[t].float()
    noise = torch.randn(x0.shape, generator=generator, device=device)
    a4 = a[:, None, None, None]  # one ᾱ per sample, broadcast over (C, H, W)
    x_t = q_sample(x0, noise, a4)
    v_prediction = model.config.prediction == "v"
    target = v_from_eps(x0, noise, a4) if v_prediction else noise
    context = model.text_encoder(batch.tokens.to(device))
    pred = model.unet(torch.cat([x_t, batch.concat.to(device)], dim=1), t.float(), context).float()
    squared = (pred - target).pow(2)
    if batch.weights is not None:  # per latent cell, the same for every channel (data.object_emphasis)
        squared = squared * batch.weights.to(device)
    per_sample = squared.mean(dim=(1, 2, 3))
    snr = a / (1 - a).clamp_min(1e-8)
    if min_snr_gamma <= 0:
        weight = torch.ones_like(snr)
    elif v_prediction:
        weight = (snr + 1).clamp(max=min_snr_gamma) / (snr + 1)
    else:
        weight = snr.clamp(max=min_snr_gamma) / snr.clamp_min(1e-8)
    return (weight * per_sample).mean(), {}


# ---- checkpoints ------------------------------------------------------------------------------------------------


def checkpoint_state(model, optimizer, ema: EMA, progress: dict) -> dict:
    """What every resumable trainer here saves: the model (its config and weights), EMA, optimizer, progress."""
    return {
        "model_config": model.config.to_json(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": progress,
    }


def optimizer_state(params: dict, lr: float, weight_decay: float, ema_decay: float, resume: dict | None):
    """(AdamW, EMA, progress) for `params`, fresh or as a checkpoint left them."""
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    if resume is None:
        return optimizer, EMA(params, ema_decay), {"step": 0, "samples": 0, "seconds": 0.0, "loss": float("nan")}
    optimizer.load_state_dict(resume["optimizer"])
    return optimizer, EMA(params, ema_decay, resume["ema"]), dict(resume["progress"])


def write_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never a half-written checkpoint


def save_checkpoint(path: Path, model, optimizer, ema: EMA, cfg: TrainConfig, progress: dict) -> None:
    write_checkpoint(path, {"stage": cfg.stage, "train_config": cfg.to_json(),
                            **checkpoint_state(model, optimizer, ema, progress)})


def load_checkpoint(path: Path) -> dict:
    """Tensors, numbers and strings only: no pickle code runs (weights_only=True), as for a user's .ckpt."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(state: dict, use_ema: bool) -> LatentDiffusion:
    model = LatentDiffusion(ModelConfig.from_json(state["model_config"]))
    model.load_state_dict(state["model"])
    if use_ema:
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if name in state["ema"]["shadow"]:
                    value.copy_(state["ema"]["shadow"][name])
    return model


@torch.no_grad()
def fit_latent_rgb(model: LatentDiffusion, n: int = 256, seed: int = 12345) -> LatentPreview:
    """The cheap preview's latent → RGB map (one hidden layer), fitted on real scenes and the flat palette."""
    images, _, _ = render_scenes(np.random.default_rng(seed), n)
    flat = np.stack([np.full_like(images[0], COLOURS[name]) for name in COLOURS])
    x = to_unit(np.concatenate([images, flat])).to(model.device, model.dtype)
    z = model.vae.encode(x).mode().float() * model.config.vae.scaling_factor
    small = F.avg_pool2d(x.float(), model.downsample_factor)
    return LatentPreview.fit_hidden(z.cpu(), small.cpu())


def take_decoder(model: LatentDiffusion, checkpoint: Path) -> bool:
    """Copy the EMA decoder of a decoder-only VAE checkpoint into `model` if it shares `model`'s encoder."""
    if not checkpoint.exists():
        return False
    donor = model_from_checkpoint(load_checkpoint(checkpoint), use_ema=True)
    if encoder_fingerprint(donor) != encoder_fingerprint(model):
        raise ValueError(f"{checkpoint}: its encoder differs from the model's; the latents would not match")
    with torch.no_grad():
        mine = model.state_dict()
        for name, value in donor.state_dict().items():
            if name.startswith(DECODER_PREFIXES):
                mine[name].copy_(value)
    return True


def export(model: LatentDiffusion, ema: EMA | None, path: Path, decoder_from: Path | None = None) -> None:
    """The EMA weights, fp16, with fitted preview factors, to our own safetensors format (atomically)."""
    shipped = LatentDiffusion(model.config)
    shipped.load_state_dict(model.state_dict())
    if ema is not None:
        ema.copy_to(shipped)
    if decoder_from is not None:
        take_decoder(shipped, decoder_from)
    rows, hidden_rows = fit_latent_rgb(shipped).rows()
    shipped.config = dataclasses.replace(shipped.config, latent_rgb=rows, latent_rgb_hidden=hidden_rows)
    if shipped.config.name == MODEL_NAME:  # usage settings follow the recipe, also for checkpoints older than them
        shipped.config = dataclasses.replace(shipped.config, default_cfg=shapes_model_config().default_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_studio_file(shipped, tmp)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


# ---- the loop ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Budget:
    steps: int | None = None  # stop at this global step
    minutes: float | None = None  # stop after this much wall time in this run

    def done(self, step: int, elapsed: float) -> bool:
        return (self.steps is not None and step >= self.steps) or (
            self.minutes is not None and elapsed >= 60 * self.minutes
        )

    def eta(self, step: int, start_step: int, elapsed: float) -> float:
        left = []
        rate = (step - start_step) / max(elapsed, 1e-9)
        if self.steps is not None and rate > 0:
            left.append((self.steps - step) / rate)
        if self.minutes is not None:
            left.append(60 * self.minutes - elapsed)
        return max(0.0, min(left)) if left else float("nan")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


CACHE_BLOCK = 24_000  # scenes per latent-cache file: a larger data set adds blocks and keeps the ones it has


def cache_blocks(cfg: TrainConfig) -> list[tuple[int, int]]:
    """(scenes, data seed) of each block of the latent cache: block k draws its scenes from data_seed + 1000·k, so
    growing --dataset-size keeps every block already encoded (and the first block is the whole cache up to 24,000)."""
    blocks, left, k = [], cfg.dataset_size, 0
    while left > 0:
        blocks.append((min(CACHE_BLOCK, left), cfg.data_seed + 1000 * k))
        left -= CACHE_BLOCK
        k += 1
    return blocks


def prepare_unet_data(model: LatentDiffusion, cfg: TrainConfig, out: Path, log: Log) -> LatentCache:
    """Load or build the latent cache for this VAE, block by block."""
    fingerprint = encoder_fingerprint(model)
    parts = []
    for count, data_seed in cache_blocks(cfg):
        variant = "" if cfg.max_objects == 2 and not cfg.busy_masks else f"-o{cfg.max_objects}{'b' * cfg.busy_masks}"
        path = out / f"latents-{fingerprint}-{count}-{data_seed}{variant}.pt"
        scene_seed = 10_000 + data_seed
        if path.exists():
            parts.append(LatentCache.load(path))
            log(f"latent cache: {count} scenes from {path}")
            if cfg.object_weight and parts[-1].object_emphasis is None:
                add_object_emphasis(parts[-1], seed=scene_seed)
                parts[-1].save(path)
                log(f"latent cache: object emphasis added to {path}")
        else:
            parts.append(build_cache(model, count, seed=scene_seed, log=log, max_objects=cfg.max_objects,
                                     busy=cfg.busy_masks))
            parts[-1].save(path)
    return LatentCache.concatenate(parts)


def train(
    model: LatentDiffusion,
    cfg: TrainConfig,
    out: Path,
    budget: Budget,
    resume: dict | None = None,
    export_path: Path | None = None,
    log: Log = print,
    decoder_from: Path | None = None,
) -> dict:
    """Train `model` in place for `cfg.stage`; returns the progress record (step, samples, seconds, last loss)."""
    device = model.device
    out.mkdir(parents=True, exist_ok=True)
    stage = cfg.stage
    model.requires_grad_(False)
    params = trained_parameters(model, stage, cfg.decoder_only)
    for p in params.values():
        p.requires_grad_(True)
    model.train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    cache = captioner = None
    if stage == "unet":
        model.vae.eval()
        cache = prepare_unet_data(model, cfg, out, log)
        if model.config.vae.scaling_factor == 1.0 and resume is None:
            factor = round(1.0 / cache.latent_std(), 5)
            model.config = dataclasses.replace(
                model.config, vae=dataclasses.replace(model.config.vae, scaling_factor=factor)
            )
            log(f"latent scaling factor: {factor} (1/std of the cached latents)")
        captioner = Captioner(model.config.pad_id, model.config.text.max_length, cfg.grammar_share)

    optimizer, ema, progress = optimizer_state(params, cfg.lr, cfg.weight_decay, cfg.ema_decay, resume)
    ckpt_path = out / checkpoint_name(cfg)

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, request_stop) if _main_thread() else None
    start_step, began = progress["step"], time.perf_counter()
    last_print = last_save = began
    window: list[float] = []
    extras: dict[str, float] = {}
    try:
        while not stop["now"] and not budget.done(progress["step"], time.perf_counter() - began):
            step = progress["step"]
            data_rng, noise_rng = step_rngs(cfg, step, device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            with autocast(device):
                if stage == "vae":
                    seed = int(data_rng.integers(2**62))
                    x, weights = vae_batch(seed, cfg.batch_size, cfg.masked_share, cfg.object_weight)
                    x, weights = x.to(device), weights.to(device)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    loss, extras = vae_loss(model, x, cfg, noise_rng, weights)
                else:
                    batch = unet_batch(cache, data_rng, cfg.batch_size, captioner,
                                       model.config.vae.scaling_factor, cfg.caption_dropout, cfg.full_mask,
                                       cfg.object_weight)
                    loss, extras = diffusion_loss(model, batch, noise_rng, cfg.min_snr_gamma)
            checked_step(loss, step, optimizer, params.values(), cfg.grad_clip, ema)
            progress["step"] += 1
            progress["samples"] += cfg.batch_size
            window.append(float(loss.detach()))
            now = time.perf_counter()
            if now - last_print >= PROGRESS_SECONDS or budget.done(progress["step"], now - began):
                elapsed = now - began
                progress["loss"] = sum(window) / len(window)
                rate = (progress["step"] - start_step) * cfg.batch_size / elapsed
                detail = "".join(f" | {k} {v:.4g}" for k, v in extras.items())
                log(f"[{stage}] step {progress['step']} | {progress['samples']:,} samples | "
                    f"loss {progress['loss']:.4f}{detail} | lr {learning_rate(cfg, step):.2e} | "
                    f"{rate:.1f} samples/s | elapsed {_clock(elapsed)} | "
                    f"ETA {_clock(budget.eta(progress['step'], start_step, elapsed))}")
                window.clear()
                last_print = now
            if now - last_save >= 60 * cfg.checkpoint_minutes:
                progress["seconds"] += now - last_save
                last_save = now
                save_checkpoint(ckpt_path, model, optimizer, ema, cfg, progress)
                if export_path is not None:
                    export(model, ema, export_path, decoder_from)
                log(f"checkpoint: {ckpt_path} (step {progress['step']})")
    finally:
        progress["seconds"] += time.perf_counter() - last_save
        if window:
            progress["loss"] = sum(window) / len(window)
        save_checkpoint(ckpt_path, model, optimizer, ema, cfg, progress)
        log(f"checkpoint: {ckpt_path} (step {progress['step']}, {progress['samples']:,} samples, "
            f"{progress['seconds'] / 60:.1f} min in this stage)")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if export_path is not None:
        export(model, ema, export_path, decoder_from)
        log(f"exported EMA weights to {export_path}")
    model.eval().requires_grad_(False)
    return progress


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
