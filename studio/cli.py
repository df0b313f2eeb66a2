"""`studio generate …`: the engine from the command line. Bad input exits non-zero with one clear line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

EXIT_USAGE = 2


class CliError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Diffusion Studio: latent diffusion you can scrub.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = sub.add_parser("generate", help="text-to-image, image-to-image, inpainting, branching")
    gen.add_argument("--prompt", default="", help="what to draw")
    gen.add_argument("--negative", default="", help="negative prompt (empty: unconditional)")
    gen.add_argument("--model", default="default", help="default (shipped), tiny-random, or a checkpoint path")
    gen.add_argument("--sampler", default="ddim", help="ddim, ddpm, euler_a or dpmpp_2m")
    gen.add_argument("--karras", action="store_true", help="Karras noise levels (DPM++ 2M Karras)")
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--eta", type=float, default=None, help="noise per step: 0 deterministic, 1 ancestral")
    gen.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--clip-skip", type=int, default=1)
    gen.add_argument("--init", type=Path, default=None, help="input image for img2img / inpainting")
    gen.add_argument("--strength", type=float, default=None, help="fraction of the schedule re-run over --init")
    gen.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    gen.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    gen.add_argument("--out", type=Path, required=True, help="output PNG (or folder with --prompts-file)")
    gen.add_argument("--timeline", type=Path, default=None, help="write the per-step previews as an animated GIF")
    gen.add_argument("--save-run", type=Path, default=None, help="save settings + timeline for branching")
    gen.add_argument("--prompts-file", type=Path, default=None, help="one prompt per line; seeds S, S+1, …")
    gen.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "generate":
            return cmd_generate(args)
    except CliError as exc:
        print(f"studio: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("studio: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


def _request_from_args(args: argparse.Namespace):
    from .engine.images import load_rgb
    from .engine.request import GenerationRequest, RequestError

    init = None
    if args.init is not None:
        try:
            init = load_rgb(args.init)
        except RequestError as exc:
            raise CliError(str(exc)) from None
    eta = args.eta if args.eta is not None else (1.0 if args.sampler in ("ddpm", "euler_a") else 0.0)
    width, height = args.width, args.height
    if init is not None:
        width = width or init.shape[1]
        height = height or init.shape[0]
    strength = args.strength if args.strength is not None else (0.75 if init is not None else 1.0)
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, sampler=args.sampler,
        steps=args.steps, eta=eta, cfg=args.cfg, seed=args.seed, width=width or 0, height=height or 0,
        karras=args.karras, clip_skip=args.clip_skip, device=args.device, dtype=args.dtype,
        init_image=init, strength=strength,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.pipeline import Engine, validate
    from .engine.request import RequestError

    request = _request_from_args(args)
    engine = Engine()
    if request.width == 0 or request.height == 0:  # size defaults to what the model was trained at
        try:
            size = engine.model(request.model, request.device, request.dtype).config.default_size
        except (ValueError, RequestError) as exc:
            raise CliError(str(exc)) from None
        request = request.replace(width=request.width or size, height=request.height or size)
    try:
        validate(request)
    except RequestError as exc:
        raise CliError(str(exc)) from None

    if args.prompts_file is not None:
        try:
            prompts = [p.strip() for p in args.prompts_file.read_text(encoding="utf-8").splitlines() if p.strip()]
        except OSError as exc:
            raise CliError(f"cannot read prompts file {args.prompts_file}: {exc.strerror}") from None
        if not prompts:
            raise CliError(f"prompts file {args.prompts_file} has no prompts")
        args.out.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(prompts):
            _generate_one(engine, request.replace(prompt=prompt, seed=request.seed + i), args, args.out / f"{i:04d}.png")
        return 0
    _check_writable(args.out)
    _generate_one(engine, request, args, args.out)
    return 0


def _check_writable(path: Path) -> None:
    if not path.parent.exists():
        raise CliError(f"output folder does not exist: {path.parent}")
    if path.suffix.lower() != ".png":
        raise CliError(f"output must be a .png file, got {path.name}")


def _generate_one(engine, request, args: argparse.Namespace, out: Path) -> None:
    from .engine.events import EventKind
    from .engine.images import format_parameters, save_png

    previews: list[np.ndarray] = []
    run = None
    for event in engine.generate(request):
        if event.kind is EventKind.ERROR:
            raise CliError(event.message)
        if event.kind is EventKind.STEP:
            if args.timeline is not None and event.preview is not None:
                previews.append(event.preview)
            if not args.quiet:
                _progress(event)
        if event.kind is EventKind.FINISHED:
            run = event.run
    if not args.quiet:
        print(file=sys.stderr)
    assert run is not None and run.image is not None
    save_png(run.image, out, format_parameters(request))
    if args.timeline is not None:
        write_gif(previews + [run.image], args.timeline, size=(request.width, request.height))
    if args.save_run is not None:
        run.save(args.save_run)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)


def _progress(event) -> None:
    eta = event.eta_seconds
    eta_text = f"{eta:5.1f}s" if eta == eta else "  ?  "
    line = f"\rstep {event.step:>4}/{event.total}  {event.its_per_second:6.2f} it/s  ETA {eta_text}"
    print(line, end="", file=sys.stderr, flush=True)


def write_gif(frames: list[np.ndarray], path: Path, size: tuple[int, int], frame_ms: int = 80) -> None:
    from PIL import Image

    images = [Image.fromarray(f).resize(size, Image.NEAREST) for f in frames]
    durations = [frame_ms] * (len(images) - 1) + [1000]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
