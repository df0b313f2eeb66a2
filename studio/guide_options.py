"""`studio generate`'s universal-guidance options (issue #14): --guide KIND:PICTURE[:STRENGTH][:VARIANT] and the
settings around it, turned into GenerationRequest fields.

    --guide colour:HINT.png[:STRENGTH]            RGBA: the hint colour where alpha > 0
    --guide reference:REF.png[:STRENGTH][:palette] layout (default) or palette
    --guide keep:MASK.png[:STRENGTH]              white = keep that region of --init
    --guide classifier:shape=star,colour=red[:STRENGTH]   the built-in world's scene classifier (labels as the
                                                  captions name them: position=top left); with --guide-mode
                                                  noisy the noise-aware one on z_t (Dhariwal & Nichol 2021),
                                                  else the clean one on ẑ0
    --guide clip:"a red star at the top"[:STRENGTH]  the built-in world's scene CLIP: the picture should match the
                                                  caption (GLIDE's CLIP guidance with --guide-mode noisy, the
                                                  clean CLIP's score on ẑ0 otherwise)

Without :STRENGTH a guide takes its kind's measured best (engine.suggested_strength: a classifier's depends on the
guide mode and the recurrence). A branch keeps its parent's guides unless --guide replaces them or --no-guides
drops them; --guide-strength gives every guide (given or inherited) one strength. Building the options imports no
torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from typing import Any

from .engine import GUIDE_KINDS, GUIDE_MODES, REFERENCE_VARIANTS, UserError

LABEL_ALIASES = {"color": "colour", "bg": "background"}  # US spelling and the short name also work

def add_guidance_options(p: argparse.ArgumentParser) -> None:
    # Every default is None: a plain run takes GenerationRequest's defaults, a branch its parent's. Values are read
    # as text and checked here or by the engine's validation, so a bad one is one sentence and exit status 1.
    p.add_argument("--guide", action="append", metavar="KIND:PICTURE[:STRENGTH]",
                   help="universal guidance, repeatable: colour:HINT.png (RGBA, hint where alpha > 0), "
                        "reference:REF.png (add :palette for colours instead of layout), keep:MASK.png (with --init), "
                        "classifier:shape=star,colour=red (labels as captions name them), "
                        "clip:\"a red star at the top\" (a caption); strength defaults per kind (a classifier's "
                        "also per --guide-mode and --recurrence: noisy 10, noisy with K > 1 20, else 3)")
    p.add_argument("--guide-mode", metavar="MODE",
                   help=f"{' | '.join(GUIDE_MODES)}: through the model (forward) or on its prediction (backward); "
                        "noisy: classifier or CLIP guidance on the noisy latent (Algorithm 1 or 2 by sampler)")
    p.add_argument("--guide-steps", metavar="FRACTION", help="guide the first FRACTION of the steps")
    p.add_argument("--backward-steps", metavar="M", help="gradient steps of backward guidance per sampler step")
    p.add_argument("--recurrence", metavar="K", help="take each guided step K times (1 = off)")
    p.add_argument("--guide-in-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="when inpainting, guide only inside the mask")
    p.add_argument("--guide-strength", metavar="S", help="one strength for every guide (e.g. a branch's)")
    p.add_argument("--no-guides", action="store_const", const=True, help="drop the guides (e.g. a branch's parent's)")


def _number(args: argparse.Namespace, option: str, kind: type):
    text = getattr(args, option, None)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise UserError(f"--{option.replace('_', '-')} must be {what}, got {text!r}") from None


def parse_guide(spec: str, mode: str = "noisy", recurrence: int = 1):
    """KIND:PICTURE[:STRENGTH][:VARIANT] → Guide with its picture loaded; a path may itself hold colons. A classifier
    or CLIP guide without a strength takes the one measured best for the run's guide mode and recurrence k."""
    from .engine import DEFAULT_STRENGTH, Guide, load_mask, load_rgb, load_rgba, suggested_strength

    kind, sep, rest = spec.partition(":")
    if kind == "classifier":
        return parse_classifier_guide(spec, rest, suggested_strength(kind, mode, recurrence))
    if kind == "clip":
        return parse_clip_guide(spec, rest, suggested_strength(kind, mode, recurrence))
    if kind not in GUIDE_KINDS:
        raise UserError(f"unknown guide kind {kind!r} in --guide {spec}; choose one of "
                        f"{', '.join(GUIDE_KINDS)}, classifier, clip")
    if not sep or not rest:
        raise UserError(f"--guide {spec} names no picture; write {kind}:PICTURE.png[:STRENGTH]")
    variant = "layout"
    head, _, last = rest.rpartition(":")
    if head and last in REFERENCE_VARIANTS:
        if kind != "reference":
            raise UserError(f"--guide {spec}: only a reference guide has a variant ({last})")
        rest, variant = head, last
    strength = DEFAULT_STRENGTH[kind]
    head, _, last = rest.rpartition(":")
    if head and _is_strength_field(last):
        strength = _strength(last, spec)
        rest = head
    loader = {"colour": load_rgba, "reference": load_rgb, "keep": load_mask}[kind]
    return Guide(kind, strength, loader(rest), variant)


def parse_classifier_guide(spec: str, rest: str, strength: float):
    """classifier:GROUP=VALUE[,GROUP=VALUE…][:STRENGTH] → Guide("classifier", labels=…), `strength` when none is
    given; the values are checked against the classifier's own labels when the run starts."""
    from .engine import Guide

    head, _, last = rest.rpartition(":")
    if head and "=" not in last:
        strength, rest = _strength(last, spec), head
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        group, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not group or not value:
            raise UserError(f"--guide {spec}: write labels as GROUP=VALUE, e.g. classifier:shape=star,colour=red")
        group = LABEL_ALIASES.get(group.lower(), group.lower())
        if group in labels:
            raise UserError(f"--guide {spec} asks for two {group}s; give one")
        labels[group] = value.lower()
    if not labels:
        raise UserError(f"--guide {spec} names no label; write e.g. classifier:shape=star,colour=red[:STRENGTH]")
    return Guide("classifier", strength, labels=labels)


def parse_clip_guide(spec: str, rest: str, strength: float):
    """clip:CAPTION[:STRENGTH] → Guide("clip", text=CAPTION); quotes around the caption (kept by a shell that was
    given them inside other quotes) are dropped. A last ':' field that reads as a number is the strength (else
    `strength`)."""
    from .engine import Guide

    head, _, last = rest.rpartition(":")
    if head and _is_number(last):
        strength, rest = _strength(last, spec), head
    text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not text:
        raise UserError(f'--guide {spec} names no caption; write e.g. clip:"a red star at the top"[:STRENGTH]')
    return Guide("clip", strength, text=text)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_strength_field(text: str) -> bool:
    """The last ':' field is a strength unless it looks like (the end of) a file name: a path separator or an
    extension such as .png."""
    return "/" not in text and "\\" not in text and re.search(r"\.[A-Za-z]\w*$", text) is None


def _strength(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"bad strength {text!r} in --guide {spec}: give a number ≥ 0") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"bad strength {text!r} in --guide {spec}: give a number ≥ 0")
    return value


def guidance_changes(args: argparse.Namespace, base) -> dict[str, Any]:
    """The request fields the guidance options set (nothing when none is given)."""
    changes: dict[str, Any] = {}
    if args.guide_mode is not None:
        changes["guide_mode"] = args.guide_mode
    if args.guide_in_mask is not None:
        changes["guide_in_mask"] = args.guide_in_mask
    for option, kind in (("guide_steps", float), ("backward_steps", int), ("recurrence", int)):
        value = _number(args, option, kind)
        if value is not None:
            changes[option] = value
    strength = _number(args, "guide_strength", float)
    if args.guide and args.no_guides:
        raise UserError("--guide and --no-guides contradict each other; give one of them")
    guides = base.guides
    if args.no_guides:
        guides = ()
    elif args.guide:
        mode, recurrence = changes.get("guide_mode", base.guide_mode), changes.get("recurrence", base.recurrence)
        guides = tuple(parse_guide(spec, mode, recurrence) for spec in args.guide)
    if strength is not None:
        if not math.isfinite(strength) or strength < 0:
            raise UserError(f"--guide-strength must be a number ≥ 0, got {args.guide_strength}")
        if not guides:
            raise UserError("--guide-strength needs a guide: give --guide KIND:PICTURE (or branch a guided run)")
        guides = tuple(dataclasses.replace(g, strength=strength) for g in guides)
    if args.no_guides or args.guide or strength is not None:
        changes["guides"] = guides
    return changes
