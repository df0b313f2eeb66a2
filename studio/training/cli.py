"""`studio train …` and `studio evaluate …`: the training tools on the command line.

    studio train --stage vae  --out /work/ckpt --minutes 40
    studio train --stage unet --out /work/ckpt --minutes 120 --export resources/model/studio-shapes.safetensors
    studio evaluate --model default --json metrics.json

A stage resumes from `<out>/<stage>.pt` when it exists. A fresh UNet stage starts from `--init`: a VAE-stage
checkpoint (`<out>/vae.pt` by default, when present), a training checkpoint, a model file, or `default` (the
shipped weights, to continue their training).

Building the parser imports no torch (`studio --help` answers at once); the handlers import it when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..engine import UserError

TRAIN_OVERRIDES = ("batch_size", "lr", "warmup_steps", "total_steps", "dataset_size", "ema_decay", "caption_dropout",
                   "full_mask", "min_snr_gamma", "data_seed", "max_objects", "busy_masks", "grammar_share", "kl_weight", "edge_weight", "object_weight", "checkpoint_minutes", "channels_last")


def add_training_commands(sub) -> None:
    train = sub.add_parser("train", help="train the built-in model (stage vae, then stage unet) or its guides")
    train.add_argument("--stage", choices=["vae", "unet", "text", "reader", "classifier", "clip", "cold"],
                       required=True,
                       help="text: distil the text encoder through the frozen UNet (training/text_distill.py); "
                            "reader: the built-in model's prompt reader (training/reader.py; --init, --total-steps, "
                            "--batch-size, --lr, --data-seed, --reader-width, --export); "
                            "classifier: the scene classifier for classifier guidance (training/classifier.py); "
                            "clip: the scene CLIP for CLIP guidance (training/clip.py); "
                            "cold: a cold-diffusion restoration net (training/cold.py)")
    train.add_argument("--degradation", choices=["blur", "mask", "down"],
                       help="stage cold: the degradation D(x0, s) its restoration net learns to undo")
    train.add_argument("--start-step", type=int, metavar="S0",
                       help="stage cold, blur: rewrite the --export file's generation start (weights untouched): "
                            "from D(x, S0) of a low-frequency prior, or 0 for the flat start at T")
    train.add_argument("--clean", action="store_true",
                       help="stage classifier / clip: train on clean latents only (t = 0), the guide of universal "
                            "guidance (clip: its image trunk is the clean classifier's)")
    train.add_argument("--out", type=Path, required=True, help="checkpoint folder (keep it outside git)")
    train.add_argument("--init", help="fresh UNet stage: vae.pt / a training checkpoint / a model file / default; "
                       "stage classifier: an exported classifier file to continue from (a warm restart); "
                       "stage reader: a prompt reader file to fine-tune")
    train.add_argument("--reader-width", type=int, metavar="W",
                       help="stage reader, from scratch: the reader's vector size (64 by default; the shipped one 96)")
    train.add_argument("--minutes", type=float, help="stop after this many minutes (checkpoint saved)")
    train.add_argument("--steps", type=int, help="stop at this global step")
    train.add_argument("--export", type=Path, metavar="FILE", help="write the EMA weights here at every checkpoint")
    train.add_argument("--export-only", action="store_true", help="just export the stage's checkpoint (--export)")
    train.add_argument("--decoder-only", action="store_true",
                       help="stage vae: fine-tune only the decoder of <out>/vae.pt (the latent space stays put)")
    train.add_argument("--decoder-from", type=Path, metavar="CKPT",
                       help="stage unet: export with the decoder of this decoder-only checkpoint")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--threads", type=int, default=1,
                       help="CPU threads for torch (1: on a shared 2-core machine 2 threads ran 6x slower)")
    train.add_argument("--tiny", action="store_true", help="a tiny architecture (smoke runs)")
    train.add_argument("--bf16", action="store_true",
                       help="stage cold / clip: run the forward pass in bf16 (CPU autocast), faster on CPUs with "
                            "AVX512-BF16 or AMX (cold-mask: 1.6×); weights and the optimizer stay fp32")
    train.add_argument("--teacher", metavar="FILE",
                       help="stage text, fresh run: the frozen teacher is this model file's text encoder (the one "
                            "its UNet was trained with) instead of the --init model's own")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--warmup-steps", type=int)
    train.add_argument("--total-steps", type=int, help="length of the cosine learning-rate decay")
    train.add_argument("--dataset-size", type=int, help="scenes in the UNet's latent cache")
    train.add_argument("--ema-decay", type=float)
    train.add_argument("--caption-dropout", type=float)
    train.add_argument("--full-mask", type=float, help="share of text-to-image samples in the UNet stage")
    train.add_argument("--min-snr-gamma", type=float)
    train.add_argument("--data-seed", type=int, help="training scenes' seed (a new one draws a new latent cache)")
    train.add_argument("--max-objects", type=int, choices=[2, 3], help="objects per scene in the latent cache, at most")
    train.add_argument("--busy-masks", action=argparse.BooleanOptionalAction, default=None,
                       help="inpainting holes over and beside objects in multi-object scenes (issue #20)")
    train.add_argument("--grammar-share", type=float, help="share of captions from the free grammar (grammar.py)")
    train.add_argument("--kl-weight", type=float)
    train.add_argument("--edge-weight", type=float)
    train.add_argument("--object-weight", type=float,
                       help="extra loss weight around each object, per area (VAE: pixels, UNet: latent cells)")
    train.add_argument("--checkpoint-minutes", type=float)
    train.add_argument("--high-t-share", type=float,
                       help="stage text: share of samples with t from the schedule's upper half (layout, binding)")
    train.add_argument("--two-object-share", type=float,
                       help="stage text: share of two-object scenes (attribute binding); 0: uniform over scenes")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    train.set_defaults(handler=run_train)

    ev = sub.add_parser("evaluate", help="score a model with the scene detector (held-out prompts and seeds)")
    ev.add_argument("--model", default="default", help="default, a model file, or a training checkpoint (.pt)")
    ev.add_argument("--prompts", type=int, default=120, help="held-out text-to-image prompts")
    ev.add_argument("--train-prompts", type=int, default=40,
                    help="prompts from the training templates (held-out seeds), to separate template generalisation")
    ev.add_argument("--inpaint", type=int, default=40, help="inpainting checks")
    ev.add_argument("--reconstructions", type=int, default=200, help="autoencoder reconstructions")
    ev.add_argument("--grammar-prompts", type=int, default=100,
                    help="one-object prompts from the held-out grammar (grammar.py), scored at the CFG and --extra-cfg")
    ev.add_argument("--extra-cfg", type=float, default=5.0, help="second guidance scale for the held-out grammar")
    ev.add_argument("--binding", type=int, default=100, help="two-object attribute-binding prompts")
    ev.add_argument("--busy-inpaint", type=int, default=60, help="inpaintings into scenes of one or two objects")
    ev.add_argument("--fresh-grammar", type=int, default=0, metavar="N",
                    help="N one-object prompts and N busy inpaintings worded by the fresh held-out grammar "
                         "(grammar.compose_fresh), a check on the first held-out grammar")
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model card's)")
    ev.add_argument("--sampler", default="ddim")
    ev.add_argument("--seed", type=int, default=None, help="first held-out seed")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--json", type=Path, help="also write the numbers as JSON")
    ev.add_argument("--samples", type=Path, help="write a contact sheet of the generations (PNG)")
    ev.add_argument("--guidance", type=int, metavar="SCENES",
                    help="instead, score universal guidance (colour hint, reference layout) on SCENES held-out scenes")
    ev.add_argument("--classifier-guidance", type=int, metavar="SCENES",
                    help="instead, score classifier guidance (issue #15's table) on SCENES held-out seeds")
    ev.add_argument("--clip-guidance", type=int, metavar="SCENES",
                    help="instead, score CLIP guidance (issue #15's CLIP row) on SCENES held-out seeds")
    ev.add_argument("--rows", metavar="WORD,...", help="with --clip-guidance: only the rows naming one of these words")
    ev.add_argument("--sweep", metavar="S1,S2,...",
                    help="with --classifier-guidance or --clip-guidance: the DDIM row over these strengths instead "
                         "(tuning seeds)")
    ev.add_argument("--cold", metavar="KINDS",
                    help="instead, score the cold models (blur,mask,down): restoration PSNR, generation, inpainting")
    ev.set_defaults(handler=run_evaluate)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device(name)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..engine import ModelLoadError
    from . import train as training
    from .config import TrainConfig, shapes_model_config, tiny_model_config

    torch.set_num_threads(args.threads)
    if args.stage == "text":  # text-encoder distillation, UNet and VAE frozen (issue #20)
        from .text_distill import run_cli as run_text

        return run_text(args)
    if args.stage == "reader":  # the prompt reader: its own small loop (training/reader.py)
        from .reader import run_cli as run_reader

        return run_reader(args)
    if args.stage == "cold":  # cold diffusion's restoration nets: their own loop (training/cold.py)
        from .cold import run_cli

        return run_cli(args)
    if args.stage == "classifier":
        return _train_classifier(args)
    if args.stage == "clip":
        return _train_clip(args)
    device = _device(args.device)
    out: Path = args.out
    overrides = {k: getattr(args, k) for k in TRAIN_OVERRIDES if getattr(args, k, None) is not None}
    if args.decoder_only:
        if args.stage != "vae":
            raise UserError("--decoder-only is for --stage vae")
        overrides["decoder_only"] = True
    checkpoint = out / training.checkpoint_name(TrainConfig(stage=args.stage, decoder_only=args.decoder_only))
    if args.export_only:
        if args.export is None or not checkpoint.exists():
            raise UserError(f"--export-only needs --export FILE and an existing {checkpoint}")
        state = training.load_checkpoint(checkpoint)
        model = training.model_from_checkpoint(state, use_ema=False)
        saved = TrainConfig.from_dict(json.loads(state["train_config"]))
        params = training.trained_parameters(model, saved.stage, saved.decoder_only)
        ema = training.EMA(params, 0.0, state["ema"])
        training.export(model, ema, args.export, args.decoder_from)
        print(f"exported {checkpoint} (step {state['progress']['step']}) to {args.export}")
        return 0
    resume = None
    if checkpoint.exists():
        resume = training.load_checkpoint(checkpoint)
        cfg = dataclasses.replace(TrainConfig.from_dict(json.loads(resume["train_config"])), **overrides)
        model = training.model_from_checkpoint(resume, use_ema=False)
        print(f"resuming {checkpoint} at step {resume['progress']['step']}", file=sys.stderr)
    else:
        cfg = TrainConfig(stage=args.stage, **overrides)
        try:
            model = _initial_model(args, out, tiny_model_config() if args.tiny else shapes_model_config())
        except (ModelLoadError, OSError) as exc:
            raise UserError(str(exc)) from None
    model.to(device)
    if args.steps is None and args.minutes is None:
        raise UserError("give a budget: --minutes and/or --steps")
    training.train(model, cfg, out, training.Budget(args.steps, args.minutes), resume, args.export,
                   log=lambda line: print(line, flush=True), decoder_from=args.decoder_from)
    return 0


def _initial_model(args: argparse.Namespace, out: Path, config):
    import torch

    from ..engine import LatentDiffusion, load_model
    from . import train as training

    init = args.init
    if args.decoder_only and init is None:
        init = str(out / "vae.pt")
        if not Path(init).exists():
            raise UserError(f"--decoder-only fine-tunes {init}, which does not exist")
    if init is None and args.stage == "unet":
        init = str(out / "vae.pt") if (out / "vae.pt").exists() else None
        if init is None:
            raise UserError(f"no VAE for the UNet stage: train --stage vae first, or pass --init default")
    if init is None:
        return LatentDiffusion(config)
    if init.endswith(".pt"):
        if not Path(init).exists():
            raise UserError(f"--init: no such checkpoint {init}")
        state = training.load_checkpoint(Path(init))
        model = training.model_from_checkpoint(state, use_ema=True)
        if state["stage"] == "vae" and args.stage == "unet":
            # a fresh UNet and text encoder on the trained VAE (whose EMA weights were just loaded)
            fresh = LatentDiffusion(dataclasses.replace(config, vae=model.config.vae))
            fresh.first_stage_model.load_state_dict(model.first_stage_model.state_dict())
            model = fresh
        return model
    return load_model(init, torch.device("cpu"), torch.float32).train()


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .evaluate import evaluate_spec, format_table

    torch.set_num_threads(args.threads)
    if args.cold is not None:
        from .cold_eval import run_cli

        return run_cli(args)
    if args.classifier_guidance is not None:
        return _evaluate_classifier_guidance(args)
    if args.clip_guidance is not None:
        return _evaluate_clip_guidance(args)
    if args.guidance is not None:
        return _evaluate_guidance(args)
    try:
        report = evaluate_spec(args)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    print(format_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def _model_to_evaluate(spec: str):
    from .evaluate import load_for_evaluation

    try:
        return load_for_evaluation(spec)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def _evaluate_guidance(args: argparse.Namespace) -> int:
    from .guidance_eval import REPORT_SEED, Setting, evaluate_guidance, format_report

    if args.guidance < 1:
        raise UserError(f"--guidance needs at least one scene, got {args.guidance}")
    model = _model_to_evaluate(args.model)
    setting = Setting(steps=args.steps, cfg=args.cfg)
    report = evaluate_guidance(model, args.guidance, REPORT_SEED if args.seed is None else args.seed, setting)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    import torch

    from ..engine import load_model
    from ..resources import resources_dir
    from .classifier import CLEAN_NAME, NOISY_NAME, train

    model = load_model("default", torch.device("cpu"), torch.float32)
    export = args.export or resources_dir() / "guides" / (CLEAN_NAME if args.clean else NOISY_NAME)
    export.parent.mkdir(parents=True, exist_ok=True)
    # defaults: the shipped clean classifier's first stage (resources/guides/MODEL_CARD.md); the noise-aware one's
    train(model, args.out, clean=args.clean, steps=args.steps or (3000 if args.clean else 2000),
          batch=args.batch_size or 128, lr=args.lr or 1e-3,
          scenes=args.dataset_size or (32000 if args.clean else 16000), held_out=2000,
          export=export, minutes=args.minutes, init=Path(args.init) if args.init else None,
          log=lambda line: print(line, flush=True))
    return 0


def _train_clip(args: argparse.Namespace) -> int:
    import torch

    from ..engine import load_model
    from ..engine.classifier_guidance import classifier_path
    from ..resources import resources_dir
    from .clip import (CLEAN_NAME, CLEAN_SCENES, CLEAN_STEPS, LR, NOISY_NAME, NOISY_SCENES, NOISY_STEPS,
                       UNLOCKED_LAYERS, train)

    model = load_model("default", torch.device("cpu"), torch.float32)
    export = args.export or resources_dir() / "guides" / (CLEAN_NAME if args.clean else NOISY_NAME)
    export.parent.mkdir(parents=True, exist_ok=True)
    # the shipped recipe: the image trunk locked at the matching scene classifier's (LiT; training/clip.py)
    train(model, args.out, clean=args.clean, steps=args.steps or (CLEAN_STEPS if args.clean else NOISY_STEPS),
          batch=args.batch_size or 128, lr=args.lr or LR,
          scenes=args.dataset_size or (CLEAN_SCENES if args.clean else NOISY_SCENES), held_out=1000,
          export=export, minutes=args.minutes, image_init=classifier_path(args.clean), lock_image=True,
          unlocked=UNLOCKED_LAYERS[args.clean], bf16=args.bf16, log=lambda line: print(line, flush=True))
    return 0


def _strengths(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--sweep takes numbers separated by commas, got {text!r}") from None


def _evaluate_clip_guidance(args: argparse.Namespace) -> int:
    from . import classifier_guidance_eval as cge
    from . import clip_guidance_eval as clip_eval

    if args.clip_guidance < 1:
        raise UserError(f"--clip-guidance needs at least one scene, got {args.clip_guidance}")
    model = _model_to_evaluate(args.model)
    if args.sweep:
        report = {"sweep": {str(s): row for s, row in clip_eval.sweep(
            model, _strengths(args.sweep), args.clip_guidance, sampler=args.sampler).items()}}
    else:
        only = tuple(w.strip() for w in args.rows.split(",") if w.strip()) if args.rows else ()
        report = clip_eval.evaluate(model, args.clip_guidance, cge.REPORT_SEED if args.seed is None else args.seed,
                                    only)
        print(cge.format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def _evaluate_classifier_guidance(args: argparse.Namespace) -> int:
    from . import classifier_guidance_eval as cge

    if args.classifier_guidance < 1:
        raise UserError(f"--classifier-guidance needs at least one scene, got {args.classifier_guidance}")
    model = _model_to_evaluate(args.model)
    if args.sweep:
        try:
            strengths = [float(s) for s in args.sweep.split(",")]
        except ValueError:
            raise UserError(f"--sweep takes numbers separated by commas, got {args.sweep!r}") from None
        report = {"sweep": {str(s): row for s, row in cge.sweep(model, strengths, args.classifier_guidance,
                                                                 sampler=args.sampler).items()}}
    else:
        report = cge.evaluate(model, args.classifier_guidance, cge.REPORT_SEED if args.seed is None else args.seed)
        print(cge.format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0
