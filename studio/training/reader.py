"""Training the built-in model's prompt reader (engine/prompt_reader.py; issue #20).

The data is the scene world's own: a scene from scenes.sample_scene (one to three objects) and a caption of it from
the training half of the free grammar (grammar.compose) or the training templates (scenes.caption), so every
caption comes with the facts it states. The held-out grammar and the held-out templates never reach training (the
vocabulary is built from training captions only, and a test checks that no held-out word is in it); they are what
`evaluate_reader` and `studio evaluate` report on.

Two robustness tricks: word dropout (a share of the words that name no attribute become the unknown word, so the
reader learns to read around words it does not know) and filler (one or two unknown words inserted anywhere, as the
UNet's training captions carry filler, scenes.FILLER_CHANCE). The decoder has one query per grid place, and a
scene never puts two objects in one place, so each query's target is plain: the object there, or none. The scenes
are facts, not pictures, so they may take any layout (free_scene; the renderer's spacing rule had taught the first
reader that no object stands at the centre beside another).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.prompt_reader import PAD, UNKNOWN, UNSTATED, PromptReader, ReaderConfig, save_reader, words_of
from . import grammar
from .scenes import (COLOURS, POSITION_WORDS, POSITIONS, SHAPES, SIZES, Scene, SceneObject, caption, grid_cell,
                     sample_scene)

TEMPLATE_SHARE = 0.35  # of one- and two-object scenes: the training templates instead of the grammar
DROP_SIZE = 0.15  # one-object grammar captions without a size, so the reader learns "unstated"


FILLER_SHARE = 0.3
WORD_DROPOUT = 0.12
SIZE_WORDS = frozenset(w for names in grammar.SIZE_SYNONYMS.values() for name in names for w in words_of(name)
                       if w != "-")
HELD_OUT_SEED = 7_700_000  # evaluate_reader's scenes; training draws from seed + step


def lexicon() -> dict[str, list[str]]:
    """Words that name a shape, a colour or a place: the reader's completeness check counts them in a prompt."""
    shapes = set()
    for names in grammar.SHAPE_SYNONYMS.values():
        for name in names:
            said = [w for w in words_of(name) if w.isalpha()]
            shapes.add(said[0] if said[-1] == "shape" else said[-1])
    colours = {w for names in grammar.COLOUR_SYNONYMS.values() for w in names}
    places = {"top", "bottom", "left", "right", "upper", "lower", "center", "centre", "middle", "centered"}
    return {"shape": sorted(shapes), "colour": sorted(colours), "position": sorted(places)}


def frames() -> dict:
    """The model's caption language, as its training templates write it (scenes.TRAIN_TEMPLATES, TRAIN_NOUNS)."""
    return {"one": "{o} {p} on a {bg} background", "two": "{o1} {p1} and {o2} {p2} on a {bg} background",
            "noun": "a {s} {c} {h}", "noun_without_size": "a {c} {h}",
            "places": {p: POSITION_WORDS[p][0] for p in POSITIONS},
            "cells": {p: list(grid_cell(p)) for p in POSITIONS}}


def free_scene(rng: np.random.Generator, max_objects: int = 3) -> Scene:
    """A scene's facts with any layout: one to max_objects objects at distinct places drawn uniformly.

    scenes.sample_scene keeps objects apart so that they render apart; its multi-object scenes then use 16 of the
    36 place pairs and never the centre, and a reader trained on them learned that prior (it read no centre object
    beside another, even in training wording). A user may ask for any layout, and inpainting puts a new object
    beside the old ones, so the reader, which reads text and draws nothing, learns from every layout."""
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    others = [c for c in names if c != background]
    places = rng.choice(len(POSITIONS), size=int(rng.integers(1, max_objects + 1)), replace=False)
    return Scene(background, tuple(SceneObject(SHAPES[rng.integers(len(SHAPES))], others[rng.integers(len(others))],
                                               SIZES[rng.integers(len(SIZES))], POSITIONS[p]) for p in places))


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    if len(scene.objects) <= 2 and rng.random() < TEMPLATE_SHARE:
        return caption(scene, rng)
    return grammar.compose(scene, rng, drop_size=DROP_SIZE if len(scene.objects) == 1 else 0.0)


def size_labels(scene: Scene, text: str) -> list[str | None]:
    """Each object's size label: its size, UNSTATED for a one-object caption without a size word, None (not
    scored) when a multi-object caption leaves one size out and the words cannot say whose."""
    said = sum(w in SIZE_WORDS for w in words_of(text))
    if said >= len(scene.objects):
        return [o.size for o in scene.objects]
    if len(scene.objects) == 1:
        return [UNSTATED]
    return [None] * len(scene.objects)


def vocabulary(samples: int = 40_000, seed: int = 5) -> tuple[str, ...]:
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    for _ in range(samples):
        seen.update(words_of(training_caption(sample_scene(rng, max_objects=3), rng)))
    return ("<pad>", "<unknown>", *sorted(seen))


def new_reader(words: tuple[str, ...] | None = None, recurrent: bool = True, width: int = 64) -> PromptReader:
    config = ReaderConfig(words=words or vocabulary(), shapes=SHAPES, colours=tuple(COLOURS),
                          sizes=(*SIZES, UNSTATED), positions=POSITIONS, lexicon=lexicon(), frames=frames(),
                          recurrent=recurrent, width=width)
    return PromptReader(config)


def batch(reader: PromptReader, rng: np.random.Generator, n: int, generator: torch.Generator,
          train: bool = True, held_out: bool = False, scenes: list[Scene] | None = None,
          free_layouts: bool = False):
    """(ids, targets, texts, scenes) for n scenes; targets: "exists" (B, places) 0/1, per object field (B, places)
    (−1: no object there / not scored), "background" (B,). free_layouts: training scenes from free_scene."""
    c = reader.config
    draw = free_scene if train and free_layouts else sample_scene
    scenes = scenes or [draw(rng, max_objects=3) for _ in range(n)]
    texts = []
    for scene in scenes:
        if held_out:
            texts.append(grammar.compose(scene, rng, held_out=True))
        else:
            texts.append(training_caption(scene, rng))
    if train:
        texts = [_with_filler(t, rng) if rng.random() < FILLER_SHARE else t for t in texts]
    ids = reader.ids(texts)
    if train:
        keep = torch.tensor([[w in _ATTRIBUTE_WORDS for w in _padded_words(t, ids.shape[1])] for t in texts])
        drop = (torch.rand(ids.shape, generator=generator) < WORD_DROPOUT) & (ids != PAD) & ~keep
        ids = torch.where(drop, torch.full_like(ids, UNKNOWN), ids)
    places = len(c.positions)
    targets = {k: torch.full((len(scenes), places), -1, dtype=torch.long) for k in ("shape", "colour", "size")}
    targets["exists"] = torch.zeros((len(scenes), places), dtype=torch.long)
    for row, (scene, text) in enumerate(zip(scenes, texts)):
        sizes = size_labels(scene, text)
        for o, size in zip(scene.objects, sizes):
            j = c.positions.index(o.position)
            targets["exists"][row, j] = 1
            targets["shape"][row, j] = c.shapes.index(o.shape)
            targets["colour"][row, j] = c.colours.index(o.colour)
            targets["size"][row, j] = -1 if size is None else c.sizes.index(size)
    targets["background"] = torch.tensor([c.colours.index(s.background) for s in scenes])
    return ids, targets, texts, scenes


# words word dropout never hides: every word of an attribute's synonyms ("hollow" makes a circle a ring)
_ATTRIBUTE_WORDS = frozenset(w for words in lexicon().values() for w in words) | SIZE_WORDS | frozenset(
    w for table in (grammar.SHAPE_SYNONYMS, grammar.COLOUR_SYNONYMS) for names in table.values() for name in names
    for w in words_of(name))


def _padded_words(text: str, length: int) -> list[str]:
    said = words_of(text)[:length]
    return said + [""] * (length - len(said))


def _with_filler(text: str, rng: np.random.Generator) -> str:
    said = text.split(" ")
    for _ in range(1 + int(rng.random() < 1 / 3)):
        said.insert(int(rng.integers(len(said) + 1)), "qzxv")  # a word no vocabulary holds: the unknown id
    return " ".join(said)


def reader_loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per scene: the cross-entropy of "is there an object" at every place, of each object's shape, colour and size
    at its place, and of the background colour."""
    batch_size = targets["background"].shape[0]
    total = F.cross_entropy(out["exists"].flatten(0, 1), targets["exists"].flatten(), reduction="sum")
    for name in ("shape", "colour", "size"):
        total = total + F.cross_entropy(out[name].flatten(0, 1), targets[name].flatten(), ignore_index=-1,
                                        reduction="sum")
    return total / batch_size + F.cross_entropy(out["background"], targets["background"])


def train(out: Path, steps: int = 3000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, threads: int = 1,
          log=print, words: tuple[str, ...] | None = None, recurrent: bool = True, free_layouts: bool = True,
          init: PromptReader | None = None, width: int = 64) -> PromptReader:
    """A reader trained from scratch (`width`: its vector size), or fine-tuned from `init` (its vocabulary and
    architecture kept). The shipped one: width 96 from scratch, 9,000 steps at lr 1e-3, seed 23, free layouts
    (session 20, MODEL_CARD.md)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    reader = new_reader(words, recurrent, width) if init is None else init
    reader.requires_grad_(True)
    optimizer = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    began = time.monotonic()
    reader.train()
    for step in range(steps):
        rate = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = rate
        rng = np.random.default_rng(seed * 1_000_003 + step)
        ids, targets, _, _ = batch(reader, rng, batch_size, generator, free_layouts=free_layouts)
        loss = reader_loss(reader(ids), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step} loss {loss.item():.4f} lr {rate:.2e} {time.monotonic() - began:.0f} s")
    reader.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_reader(reader, out)
    return reader


def exact(reader: PromptReader, text: str, scene: Scene) -> bool:
    """Does the reading state exactly the scene (objects as a set; an unstated size counts only if none is said)?"""
    reading = reader.read(text)
    if reading is None:
        return False
    said_sizes = size_labels(scene, text)
    want = sorted((o.shape, o.colour, s or o.size, o.position) for o, s in zip(scene.objects, said_sizes))
    got = sorted((o.shape, o.colour, o.size, o.position) for o in reading.objects)
    return reading.background == scene.background and want == got


def evaluate_reader(reader: PromptReader, n: int = 400, seed: int = HELD_OUT_SEED) -> dict:
    """Exact readings of one- and two-object scenes: training grammar (fresh scenes), held-out grammar, held-out
    templates, the fresh grammar; of three-object training-grammar captions; how often such a caption, with no hole
    to narrow it to fewer objects, is (rightly) passed to the text encoder as typed; and of two objects in any
    layout (free_scene), in the training and held-out grammars."""
    out = {}
    for name, maker in (("training grammar", lambda s, r: training_caption(s, r)),
                        ("held-out grammar", lambda s, r: grammar.compose(s, r, held_out=True)),
                        ("held-out templates", lambda s, r: caption(s, r, held_out=True)),
                        ("fresh grammar", grammar.compose_fresh)):
        rng = np.random.default_rng(seed)
        for count in (1, 2):
            hits = 0
            for _ in range(n):
                scene = sample_scene(rng, max_objects=2)
                while len(scene.objects) != count:
                    scene = sample_scene(rng, max_objects=2)
                hits += exact(reader, maker(scene, rng), scene)
            out[f"{name}, {count} object{'s' * (count > 1)}"] = hits / n
    rng = np.random.default_rng(seed + 1)
    three = [s for s in (sample_scene(rng, max_objects=3) for _ in range(4 * n)) if len(s.objects) == 3][:n]
    texts = [grammar.compose(s, rng) for s in three]
    out["training grammar, 3 objects"] = float(np.mean([exact(reader, t, s) for t, s in zip(texts, three)]))
    out["3 objects, no hole: passed through as typed"] = float(np.mean([reader.rewrite(t) == t for t in texts]))
    rng = np.random.default_rng(seed + 2)  # layouts the renderer never draws (free_scene): a centre object beside
    for name, maker in (("training grammar", training_caption),  # another, neighbouring cells
                        ("held-out grammar", lambda s, r: grammar.compose(s, r, held_out=True))):
        free = [s for s in (free_scene(rng, 2) for _ in range(4 * n)) if len(s.objects) == 2][:n]
        out[f"{name}, 2 objects, any layout"] = float(np.mean([exact(reader, maker(s, rng), s) for s in free]))
    return out


def run_cli(args) -> int:
    """`studio train --stage reader --out DIR [--init FILE | --reader-width W] [--total-steps N] [--batch-size B]
    [--lr LR] [--data-seed S] [--export FILE]`: trains from scratch, or fine-tunes the reader file --init, on one
    CPU thread (the shipped one: --reader-width 96 --total-steps 9000 --data-seed 23, MODEL_CARD.md); writes
    DIR/prompt-reader.safetensors (and --export) and prints evaluate_reader's numbers."""
    import json
    import shutil

    from ..engine.prompt_reader import load_reader

    out = Path(args.out) / "prompt-reader.safetensors"
    options = {k: v for k, v in (("steps", args.total_steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                 ("seed", args.data_seed), ("width", args.reader_width)) if v is not None}
    if args.init and args.reader_width is not None:
        raise SystemExit("--reader-width is for a reader trained from scratch; --init keeps its file's width")
    init = load_reader(args.init) if args.init else None
    reader = train(out, threads=args.threads, init=init, **options)
    print(json.dumps(evaluate_reader(reader), indent=1))
    if args.export is not None:
        shutil.copyfile(out, args.export)
        print(f"exported {out} to {args.export}")
    return 0
