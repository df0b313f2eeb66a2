"""`studio generate|invert|train|evaluate …`: the engine from the command line.

Bad input exits non-zero with one clear line on stderr and writes no file. The CLI uses only the engine's public
package (`studio.engine`); building the parser imports no torch, so `studio --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine import SAMPLER_TABLE, UserError, report_internal_error
from .guide_options import add_guidance_options, guidance_changes

EXIT_ERROR = 1
EXIT_USAGE = 2

# CLI option → GenerationRequest field, for options that map one to one.
REQUEST_OPTIONS = {
    "prompt": "prompt", "negative": "negative_prompt", "model": "model", "sampler": "sampler", "karras": "karras",
    "steps": "steps", "eta": "eta", "cfg": "cfg", "seed": "seed", "width": "width", "height": "height",
    "clip_skip": "clip_skip", "strength": "strength", "device": "device", "dtype": "dtype", "feather": "feather",
    "grow": "grow", "inpaint_mode": "inpaint_mode", "only_masked": "only_masked", "padding": "padding",
    "fill": "fill", "paste_back": "paste_back", "prediction": "prediction", "noise": "cold_noise",
}


class CliError(UserError):
    """A command-line mistake; shown as one line like every UserError."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Diffusion Studio: latent diffusion you can scrub.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = sub.add_parser("generate", help="text-to-image, image-to-image, inpainting, branching")
    _add_request_options(gen)
    gen.add_argument("--init", type=Path, help="input image for img2img / inpainting")
    gen.add_argument("--mask", type=Path, help="inpainting mask (white = repaint; alpha of RGBA counts)")
    gen.add_argument("--branch", type=Path, metavar="RUN", help="continue a run saved with --save-run")
    gen.add_argument("--from-step", type=int, default=None, metavar="K", help="step of --branch to continue from")
    gen.add_argument("--out", type=Path, required=True, help="output PNG (a folder with --prompts-file)")
    gen.add_argument("--timeline", type=Path, help="write the per-step previews as an animated GIF")
    gen.add_argument("--save-run", type=Path, metavar="RUN", help="save settings + timeline for branching")
    gen.add_argument("--prompts-file", type=Path, help="one prompt per line; seeds S, S+1, …")
    gen.add_argument("--quiet", action="store_true", help="no progress line")

    inv = sub.add_parser("invert", help="DDIM-invert an image into a run you can branch from")
    inv.add_argument("image", type=Path)
    inv.add_argument("--prompt", default="", help="the prompt that describes the image")
    inv.add_argument("--model", default="default")
    inv.add_argument("--steps", type=int, default=50)
    inv.add_argument("--cfg", type=float, default=1.0, help="guidance while inverting (1 = none, the stable choice)")
    inv.add_argument("--refine", type=int, default=None, metavar="N",
                     help="fixed-point iterations per step: 0 = plain DDIM inversion; each adds one model call per "
                          "step and brings the reconstruction closer (default 1)")
    inv.add_argument("--device", default="auto", choices=["auto", "cpu", "openvino", "cuda", "mps"])
    inv.add_argument("--dtype", default="auto", choices=["auto", "fast", "fp32", "fp16", "bf16"])
    inv.add_argument("--save-run", type=Path, required=True, metavar="RUN")
    inv.add_argument("--out", type=Path, help="also write the reconstruction as PNG")
    inv.add_argument("--quiet", action="store_true")

    try:
        from .training.cli import add_training_commands
    except ImportError:  # training tools are optional in a slim install
        pass
    else:
        add_training_commands(sub)
    return parser


def _add_request_options(p: argparse.ArgumentParser) -> None:
    # Every default is None: a plain run takes GenerationRequest's defaults, a branch takes its parent's settings.
    p.add_argument("--prompt", help="what to draw")
    p.add_argument("--negative", help="negative prompt (empty: unconditional)")
    p.add_argument("--literal-prompt", action="store_const", const=True,
                   help="the text encoder reads the prompt as typed (the built-in model's prompt reader is off)")
    p.add_argument("--model", help="default (shipped), tiny-random, or a checkpoint file / diffusers folder")
    p.add_argument("--sampler", help=", ".join(SAMPLER_TABLE))
    p.add_argument("--karras", action="store_const", const=True, help="Karras noise levels (e.g. DPM++ 2M Karras)")
    p.add_argument("--steps", type=int)
    noisy = ", ".join(name for name, spec in SAMPLER_TABLE.items() if spec.default_eta > 0)
    p.add_argument("--eta", type=float,
                   help=f"noise per step: 0 deterministic, 1 DDPM-like (default 1 for {noisy}, else 0)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the model's, 7.5 for SD)")
    p.add_argument("--seed", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--strength", type=float, help="fraction of the schedule re-run over --init (SDEdit)")
    p.add_argument("--noise", type=float,
                   help="cold models: scale of the Gaussian perturbation of the generation start (default 0.002)")
    p.add_argument("--prediction", choices=["auto", "epsilon", "v"],
                   help="what the model predicts (auto: from the file; SD 2.x 768 models are v)")
    p.add_argument("--device", choices=["auto", "cpu", "openvino", "cuda", "mps"])
    p.add_argument("--dtype", choices=["auto", "fast", "fp32", "fp16", "bf16"])
    p.add_argument("--feather", type=float, help="mask feather in pixels (default 4)")
    p.add_argument("--grow", type=int, help="grow the mask by this many pixels (default 0)")
    p.add_argument("--inpaint-mode", choices=["auto", "blend", "model"])
    p.add_argument("--only-masked", action="store_const", const=True, help="inpaint a crop around the mask")
    p.add_argument("--padding", type=int, help="context around the mask for --only-masked (default 32)")
    p.add_argument("--fill", choices=["original", "noise", "blur"], help="what the masked area starts from")
    p.add_argument("--no-paste-back", dest="paste_back", action="store_const", const=False,
                   help="keep the decoded pixels outside the mask instead of the original ones")
    add_guidance_options(p)  # --guide KIND:PICTURE[:STRENGTH], --guide-mode, … (guide_options.py)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args) if hasattr(args, "handler") else COMMANDS[args.command](args)
    except UserError as exc:
        print(f"studio: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nstudio: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's mistake: one line here, the traceback in the log
        print(f"studio: {report_internal_error(exc, f'running {args.command}', echo=False)}", file=sys.stderr)
        return EXIT_ERROR


def one_line(text: str) -> str:
    """The message as one line however it was built: characters that end a line (a newline in a file name, the
    separators str.splitlines honours) are written escaped."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    given = {field: getattr(args, opt) for opt, field in REQUEST_OPTIONS.items() if getattr(args, opt, None) is not None}
    for field in ("prompt", "negative_prompt"):
        if field in given:
            given[field] = argv_text(given[field])
    if getattr(args, "literal_prompt", None):
        given["read_prompt"] = False
    return given


def argv_text(text: str) -> str:
    """Command-line text whose bytes were not UTF-8 (Python keeps them as lone surrogates, PEP 383) read as
    Latin-1 instead: `--prompt $'caf\\xe9'` from a Latin-1 terminal is "café", not an error after the work."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("latin-1")
        except UnicodeEncodeError:  # a surrogate no decoder made: not from a command line, but never a crash
            return text.encode("utf-8", "replace").decode("utf-8")


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine import pack_cache

    # a first start's packed weights are written once the pictures are, not beside the generation, which they
    # would slow down as much as the writing takes (pack_cache.writes_held)
    with pack_cache.writes_held(None if args.quiet else _announce_packs):
        return _generate(args)


def _announce_packs(nbytes: int) -> None:
    print(f"keeping the packed weights for the next start ({nbytes / 2**30:.1f} GiB, once per model and size)",
          file=sys.stderr)


def _generate(args: argparse.Namespace) -> int:
    from .engine import Engine, GenerationRequest, RequestError, Run, is_cold_model, load_mask, load_rgb, validate

    _check_generate_outputs(args)  # before any work: a finished picture is never lost to a bad path
    changes = _given(args)
    parent = None
    try:
        if args.branch is not None:
            if args.from_step is None:
                raise CliError("--branch needs --from-step K")
            if args.prompts_file is not None:
                raise CliError("--branch and --prompts-file cannot be combined")
            parent = Run.load(args.branch)
            base = parent.request
        elif args.from_step is not None:
            raise CliError("--from-step needs --branch RUN")
        else:
            base = GenerationRequest()
        if args.init is not None:
            changes["init_image"] = load_rgb(args.init)
        if args.mask is not None:
            if args.init is None and base.init_image is None:
                raise CliError("--mask needs --init IMG (the image to inpaint)")
            changes["mask"] = load_mask(args.mask)
        changes.update(guidance_changes(args, base))
        request = base.replace(**changes)
        engine = Engine()
        request = _model_defaults(engine, request, changes, fill_cfg=parent is None)
        validate(request)
    except RequestError as exc:
        raise CliError(str(exc)) from None
    if not is_cold_model(request.model):  # pack the CPU weights for this size before the first step (Engine.prepare)
        engine.prepare(request.model, request.device, request.dtype, request.width, request.height)

    if args.prompts_file is not None:
        prompts = _read_prompts(args.prompts_file)
        requests = [request.replace(prompt=prompt, seed=request.seed + i) for i, prompt in enumerate(prompts)]
        try:
            for each in requests:
                validate(each)  # every prompt's text and the seeds, before the first picture
        except RequestError as exc:
            raise CliError(str(exc)) from None
        args.out.mkdir(parents=True, exist_ok=True)
        for i, each in enumerate(requests):
            _generate_one(engine, each, args, args.out / f"{i:04d}.png")
        return 0
    _generate_one(engine, request, args, args.out, parent=parent, from_step=args.from_step or 0)
    return 0


def _check_generate_outputs(args: argparse.Namespace) -> None:
    """Every file `generate` will write, checked before it starts (files.check_writable)."""
    from .engine import UserError as _UserError, check_writable

    try:
        if args.prompts_file is not None:
            if args.out.suffix:
                raise CliError(f"with --prompts-file, --out is a folder, got {args.out}")
            if args.out.exists() and not args.out.is_dir():
                raise CliError(f"with --prompts-file, --out is a folder, but {args.out} is a file")
            existing = next((p for p in [args.out, *args.out.parents] if p.exists()), Path("."))
            if not existing.is_dir():
                raise CliError(f"cannot create the folder {args.out}: {existing} is a file")
        else:
            _check_output(args.out)
        if args.timeline is not None:
            if args.timeline.suffix.lower() != ".gif":
                raise CliError(f"--timeline must be a .gif file, got {args.timeline.name}")
            check_writable(args.timeline, "timeline")
        if args.save_run is not None:
            check_writable(args.save_run, "run file")
    except _UserError as exc:
        raise CliError(str(exc)) from None


def _model_defaults(engine, request, changes: dict[str, Any], fill_cfg: bool):
    """What the command line leaves open, from the model: its guidance scale (a branch keeps its parent's) and its
    size, unless given or taken from the init image (only-masked works at the model's size)."""
    from .engine import cold_model_info, is_cold_model

    if is_cold_model(request.model):  # a cold model works at its own size, with its own samplers (cold_pipeline.py)
        if not fill_cfg:
            return request
        if "cfg" not in changes:  # its own guidance scale: 1 (none) unless it was trained for guidance
            request = request.replace(cfg=cold_model_info(request.model).default_cfg)
        return request if "sampler" in changes else request.replace(sampler="cold_improved")
    if fill_cfg and "cfg" not in changes:
        request = request.replace(cfg=_model_config(engine, request).default_cfg)
    if "width" in changes and "height" in changes:
        return request
    if not fill_cfg and "width" not in changes and "height" not in changes:
        return request  # a branch keeps its run's size, whatever the model's default or an --init (#17 item 8)
    image = request.init_image
    if image is not None and not request.only_masked and "width" not in changes and "height" not in changes:
        return request.replace(width=image.shape[1], height=image.shape[0])
    if "width" in changes or "height" in changes:
        side = changes.get("width") or changes.get("height")
        return request.replace(width=changes.get("width", side), height=changes.get("height", side))
    size = _model_config(engine, request).default_size
    return request.replace(width=size, height=size)


def _model_config(engine, request):
    # loaded for its own size, which the request then takes (a second start reads its cached packs: pack_cache.py)
    return engine.model(request.model, request.device, request.dtype, size=(0, 0)).config  # a UserError reaches main()


def _read_prompts(path: Path) -> list[str]:
    try:
        prompts = [p.strip() for p in path.read_text(encoding="utf-8").splitlines() if p.strip()]
    except OSError as exc:
        raise CliError(f"cannot read prompts file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"prompts file {path} is not UTF-8 text") from None
    if not prompts:
        raise CliError(f"prompts file {path} has no prompts")
    return prompts


def _check_output(path: Path) -> None:
    from .engine import UserError as _UserError, check_writable

    if not path.parent.exists():
        raise CliError(f"output folder does not exist: {path.parent}")
    if path.suffix.lower() != ".png":
        raise CliError(f"output must be a .png file, got {path.name}")
    try:
        check_writable(path, "output")
    except _UserError as exc:
        raise CliError(str(exc)) from None


def _generate_one(engine, request, args: argparse.Namespace, out: Path, parent=None, from_step: int = 0) -> None:
    from .engine import format_run_parameters, save_png

    run, previews = _consume(engine.generate(request, parent=parent, from_step=from_step), args.quiet)
    save_png(run.image, out, format_run_parameters(run))  # what ran: a cold model works at its own size
    # the picture is on disk: a side file that fails now is reported with it, never instead of it
    _side_files(out, [(args.timeline, "timeline", lambda: write_gif(
        previews + [run.image], args.timeline, size=(run.image.shape[1], run.image.shape[0]))),
        (args.save_run, "run file", lambda: run.save(args.save_run))])
    if not args.quiet:
        if run.read_as is not None:
            print(f"read as: {one_line(run.read_as)}", file=sys.stderr)
        extras = [f"timeline {args.timeline}"] * (args.timeline is not None) + [f"run {args.save_run}"] * (args.save_run is not None)
        print(f"wrote {out}" + "".join(f", {extra}" for extra in extras), file=sys.stderr)


def _consume(events, quiet: bool):
    from .engine import EventKind

    previews: list[np.ndarray] = []
    run = None
    for event in events:
        if event.kind is EventKind.ERROR:
            if not quiet and sys.stderr.isatty():
                print(file=sys.stderr)  # end the progress line
            raise CliError(event.message)
        if event.kind is EventKind.STEP:
            if event.preview is not None:
                previews.append(event.preview)
            if not quiet:
                _progress(event)
        if event.kind is EventKind.FINISHED:
            run = event.run
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)  # end the progress line
    if run is None or run.image is None:
        raise CliError("the run ended without an image")
    return run, previews


def cmd_invert(args: argparse.Namespace) -> int:
    from .engine import INVERSION_REFINE, Engine, GenerationRequest, RequestError, format_parameters, load_rgb, save_png

    from .engine import UserError as _UserError, check_writable

    if args.out is not None:
        _check_output(args.out)
    try:
        check_writable(args.save_run, "run file")
        image = load_rgb(args.image)
    except _UserError as exc:
        raise CliError(str(exc)) from None
    request = GenerationRequest(prompt=argv_text(args.prompt), model=args.model, steps=args.steps, cfg=args.cfg,
                                device=args.device, dtype=args.dtype, init_image=image)
    refine = INVERSION_REFINE if args.refine is None else args.refine
    if refine < 0:
        raise CliError("--refine must be 0 or more")
    run, _ = _consume(Engine().invert(request, refine=refine), args.quiet)
    run.save(args.save_run)
    if args.out is not None:
        _side_files(args.save_run, [(args.out, "reconstruction", lambda: save_png(
            run.image, args.out, format_parameters(run.request)))])
    if not args.quiet:
        print(f"wrote {args.save_run}", file=sys.stderr)
    return 0


COMMANDS = {"generate": cmd_generate, "invert": cmd_invert}


def _progress(event) -> None:
    """One line rewritten in place on a terminal; in a log (stderr not a terminal), a plain line at every tenth of
    the run, as pip and tqdm do, instead of one huge line of carriage returns."""
    eta = event.eta_seconds
    eta_text = f"{eta:5.1f}s" if eta == eta else "  ?  "
    line = f"step {event.step:>4}/{event.total}  {event.its_per_second:6.2f} it/s  ETA {eta_text}"
    if sys.stderr.isatty():
        print("\r" + line, end="", file=sys.stderr, flush=True)
    elif event.step == event.total or event.step * 10 // event.total != (event.step - 1) * 10 // event.total:
        print(line, file=sys.stderr, flush=True)


def _side_files(written: Path, writers) -> None:
    """Write each (path, what, write) whose path is set; if any fails, one line naming what was written anyway."""
    from .engine import UserError as _UserError

    failed = []
    for path, what, write in writers:
        if path is None:
            continue
        try:
            write()
        except (_UserError, OSError) as exc:
            failed.append(f"the {what} ({exc})")
    if failed:
        raise CliError(f"wrote {written}, but could not write {'; nor '.join(failed)}")


GIF_MAX_SIDE = 1024  # px: the previews are latent-sized anyway (64 px for SD at 512); a bigger GIF only costs memory


def write_gif(frames: list[np.ndarray], path: Path, size: tuple[int, int], frame_ms: int = 80) -> None:
    from PIL import Image

    from .engine import atomic_write

    scale = min(1.0, GIF_MAX_SIDE / max(size))
    size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    images = [Image.fromarray(f).resize(size, Image.NEAREST) for f in frames]
    durations = [frame_ms] * (len(images) - 1) + [1000]
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=durations, loop=0), "timeline")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
