"""Training data: scenes rendered on the fly (they cost ~0.3 ms each), inpainting masks, and the latent cache.

The VAE sees fresh scenes every step. The UNet never runs the VAE while it trains: every scene of its data set is
encoded once, with the frozen VAE, into a cache of latents (the clean image, the masked image for one inpainting
mask) kept in RAM and on disk beside the checkpoints. Captions are drawn fresh from each scene at every visit, so
the model sees many sentences per picture.

Conventions follow the engine's 9-channel conditioning (engine/tasks.py `inpaint_concat`): the mask is the binary
edit mask nearest-downsampled to the latent, and the masked image is image·(1 − mask) in [−1, 1] (grey holes); a
text-to-image sample has mask 1 everywhere and the latent of an all-grey image.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..engine import LatentDiffusion
from ..engine.inpaint import latent_mask
from ..engine.masks import grow_mask
from ..engine.tokenizer import CLIPTokenizer
from .scenes import CANVAS, Scene, SceneObject, caption, caption_words, random_mask, render_layers, sample_scene
from .scenes import ANCHORS, grid_cell, with_filler
from . import grammar

OBJECT_MASK_SHARE = 0.5  # inpainting masks: a square over one object (what "put an X here" looks like), else random
OBJECT_MASK_MARGIN = (3.0, 9.0)  # px added around the object's box on each side


def to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 in [−1, 1], as engine.images.image_to_tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def render_scenes(rng: np.random.Generator, n: int, max_objects: int = 2
                  ) -> tuple[np.ndarray, list[Scene], list[np.ndarray]]:
    images = np.empty((n, CANVAS, CANVAS, 3), np.uint8)
    scenes, layers = [], []
    for i in range(n):
        scene = sample_scene(rng, max_objects)
        images[i], alphas = render_layers(scene, rng)
        scenes.append(scene)
        layers.append(alphas)
    return images, scenes, layers


def object_mask(rng: np.random.Generator, alphas: np.ndarray) -> np.ndarray:
    """A square over one object's box, a few px larger on every side: (64, 64) bool, True = repaint."""
    alpha = alphas[rng.integers(len(alphas))]
    ys, xs = np.nonzero(alpha > 0.02)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    half = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) / 2 + rng.uniform(*OBJECT_MASK_MARGIN)
    grid = np.arange(CANVAS) + 0.5
    inside_x = np.abs(grid - cx) <= half
    inside_y = np.abs(grid - cy) <= half
    return inside_y[:, None] & inside_x[None, :]


def inpaint_mask(rng: np.random.Generator, alphas: np.ndarray) -> np.ndarray:
    return object_mask(rng, alphas) if rng.random() < OBJECT_MASK_SHARE else random_mask(rng)


# Busy scenes (issue #20): users add an object beside others, so with two or three objects most holes cover one
# object and reach over the empty space beside it, often up to (or over) a neighbour's edge; the neighbours
# outside the hole are what the model must draw around. Half of those holes are squares on the grid cell's
# anchor, as a user would drag one over an empty cell (evaluate.busy_inpaint_cases).
BUSY_MASK_SHARES = (0.4, 0.35)  # object square, cell square; the rest random
CELL_HOLE_SIDES = (22.0, 32.0)  # px


def cell_mask(rng: np.random.Generator, alpha: np.ndarray, position: str) -> np.ndarray:
    """A square on the anchor of `position`'s grid cell, side 22–32 px, grown until it covers the object (alpha)."""
    ys, xs = np.nonzero(alpha > 0.02)
    row, column = grid_cell(position)
    cx, cy = ANCHORS[column], ANCHORS[row]
    half = max(rng.uniform(*CELL_HOLE_SIDES) / 2, np.abs(xs + 0.5 - cx).max() + 1.5, np.abs(ys + 0.5 - cy).max() + 1.5)
    grid = np.arange(CANVAS) + 0.5
    return (np.abs(grid - cy) <= half)[:, None] & (np.abs(grid - cx) <= half)[None, :]


def busy_inpaint_mask(rng: np.random.Generator, scene: Scene, alphas: np.ndarray) -> np.ndarray:
    if len(alphas) < 2:
        return inpaint_mask(rng, alphas)
    r = rng.random()
    if r < BUSY_MASK_SHARES[0]:
        return object_mask(rng, alphas)
    if r < sum(BUSY_MASK_SHARES):
        index = int(rng.integers(len(alphas)))
        return cell_mask(rng, alphas[index], scene.objects[index].position)
    return random_mask(rng)


def object_emphasis(alphas: np.ndarray, factor: int = 1, radius: int = 2) -> np.ndarray:
    """Σ_objects [cell touches the object grown by radius px] · cells / (its region's cells), on a grid of
    (64 / factor)² cells: every object's surroundings sum to one whole image, so a small star's points (a few
    dozen of 4,096 pixels, or 9 of 256 latent cells) count as much as a large square's edges. (H, W) float32."""
    size = CANVAS // factor
    emphasis = np.zeros((size, size), np.float32)
    for alpha in alphas:
        region = grow_mask(alpha > 0.02, radius).reshape(size, factor, size, factor).any(axis=(1, 3))
        emphasis += region * (region.size / max(int(region.sum()), 1))
    return emphasis


def vae_batch(seed: int, n: int, masked_share: float, object_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n fresh scenes in [−1, 1] (a share with a grey inpainting hole, one in 32 all grey) and per-pixel loss weights
    1 + object_weight · object_emphasis: plain L1 lets a decoder round off a small star's points."""
    rng = np.random.default_rng(seed)
    images, _, layers = render_scenes(rng, n)
    x = to_unit(images)
    weights = np.ones((n, 1, CANVAS, CANVAS), np.float32)
    for i in range(n):
        r = rng.random()
        if r < 1 / 32:
            x[i] = 0.0
            continue
        if r < masked_share:
            x[i] *= 1.0 - torch.from_numpy(inpaint_mask(rng, layers[i]).astype(np.float32))
        if object_weight:
            weights[i, 0] += object_weight * object_emphasis(layers[i])
    return x, torch.from_numpy(weights)


# ---- the latent cache -------------------------------------------------------------------------------------------


@dataclass
class LatentCache:
    scenes: list[Scene]
    latents: torch.Tensor  # (N, C, h, w) float16, unscaled VAE mean of the scene
    masks: torch.Tensor  # (N, 1, h, w) bool, the inpainting mask at latent resolution
    masked_latents: torch.Tensor  # (N, C, h, w) float16, unscaled mean of image·(1 − mask)
    grey_latent: torch.Tensor  # (C, h, w) float32, unscaled mean of the all-grey image (text-to-image)
    # (N, 1, h, w) float16, object_emphasis at latent resolution; None in caches written before it existed
    object_emphasis: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.scenes)

    def save(self, path: Path) -> None:
        """Tensors and a JSON string only, so that loading needs no pickle (torch.load(weights_only=True))."""
        state = {k: v for k, v in self.__dict__.items() if k != "scenes"}
        state["scenes_json"] = json.dumps([[s.background, [dataclasses.astuple(o) for o in s.objects]]
                                           for s in self.scenes])
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "LatentCache":
        state = torch.load(path, map_location="cpu", weights_only=True)
        scenes = [Scene(background, tuple(SceneObject(*o) for o in objects))
                  for background, objects in json.loads(state.pop("scenes_json"))]
        return cls(scenes=scenes, **state)

    @classmethod
    def concatenate(cls, parts: list["LatentCache"]) -> "LatentCache":
        if len(parts) == 1:
            return parts[0]
        return cls(
            [scene for part in parts for scene in part.scenes],
            torch.cat([part.latents for part in parts]),
            torch.cat([part.masks for part in parts]),
            torch.cat([part.masked_latents for part in parts]),
            parts[0].grey_latent,
            None if any(part.object_emphasis is None for part in parts)
            else torch.cat([part.object_emphasis for part in parts]),
        )

    def latent_std(self) -> float:
        return float(self.latents.float().std())


def _cache_scenes(n: int, seed: int, chunk: int, max_objects: int = 2, busy: bool = False):
    """The cache's scenes, chunk by chunk: (images, scenes, layers, inpainting holes (count, 64, 64) float32)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        images, scenes, layers = render_scenes(rng, min(chunk, n - start), max_objects)
        holes = [busy_inpaint_mask(rng, s, a) if busy else inpaint_mask(rng, a) for s, a in zip(scenes, layers)]
        holes = torch.from_numpy(np.stack(holes).astype(np.float32))
        yield images, scenes, layers, holes


def _emphasis(layers: list[np.ndarray], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([object_emphasis(a, CANVAS // size) for a in layers]))[:, None].half()


@torch.no_grad()
def build_cache(
    model: LatentDiffusion, n: int, seed: int, chunk: int = 256, log: Callable[[str], None] = print,
    max_objects: int = 2, busy: bool = False,
) -> LatentCache:
    vae = model.vae.eval()
    device = model.device
    scenes: list[Scene] = []
    latents, masks, masked, emphasis = [], [], [], []
    began = time.perf_counter()
    for images, batch_scenes, layers, holes in _cache_scenes(n, seed, chunk, max_objects, busy):
        count = len(batch_scenes)
        x = to_unit(images)
        pair = torch.cat([x, x * (1.0 - holes[:, None])]).to(device)
        z = vae.encode(pair).mode().float().cpu()
        latents.append(z[:count].half())
        masked.append(z[count:].half())
        masks.append(latent_mask(holes, (z.shape[-1], z.shape[-1]), mode="nearest").bool())
        emphasis.append(_emphasis(layers, z.shape[-1]))
        scenes.extend(batch_scenes)
        done = len(scenes)
        rate = done / (time.perf_counter() - began)
        log(f"latent cache: {done}/{n} scenes encoded ({rate:.0f}/s, {(n - done) / rate / 60:.1f} min left)")
    grey = vae.encode(torch.zeros(1, 3, CANVAS, CANVAS, device=device)).mode()[0].float().cpu()
    return LatentCache(scenes, torch.cat(latents), torch.cat(masks), torch.cat(masked), grey, torch.cat(emphasis))


def add_object_emphasis(cache: LatentCache, seed: int, chunk: int = 256) -> None:
    """Fill in object_emphasis for a cache written before it existed: the scenes are re-rendered from the same seed
    (no VAE needed) and must come out as the cached ones."""
    emphasis, at = [], 0
    for _, scenes, layers, _ in _cache_scenes(len(cache), seed, chunk):
        if scenes != cache.scenes[at:at + len(scenes)]:
            raise ValueError("the latent cache does not hold the scenes of its seed; delete it to rebuild it")
        emphasis.append(_emphasis(layers, cache.latents.shape[-1]))
        at += len(scenes)
    cache.object_emphasis = torch.cat(emphasis)


# ---- UNet batches -----------------------------------------------------------------------------------------------


@dataclass
class UNetBatch:
    x0: torch.Tensor  # (B, C, h, w) scaled clean latents
    concat: torch.Tensor  # (B, 1 + C, h, w): mask and scaled masked-image latent, SD order
    tokens: torch.Tensor  # (B, 77) caption ids; dropped captions are the ids of ""
    weights: torch.Tensor | None = None  # (B, 1, h, w) per-latent-cell loss weights; None = uniform


class Captioner:
    """Scene → fresh caption → token ids, with caption dropout for classifier-free guidance.

    grammar_share of the captions come from the free grammar (grammar.compose), the rest from the sentence
    templates (scenes.caption); scenes with three objects always use the grammar (the templates have none)."""

    def __init__(self, pad_id: int, context_length: int, grammar_share: float = 0.0):
        self.tokenizer = CLIPTokenizer()
        self.pad_id = pad_id
        self.context_length = context_length
        self.grammar_share = grammar_share
        self.filler = filler_vocabulary(self.tokenizer)

    def text(self, scene: Scene, rng: np.random.Generator) -> str:
        # no draw at share 0: older runs keep their exact caption stream
        if len(scene.objects) > 2 or (self.grammar_share > 0 and rng.random() < self.grammar_share):
            return grammar.compose(scene, rng, drop_size=GRAMMAR_DROP_SIZE)
        return caption(scene, rng)

    def __call__(self, scenes: list[Scene], rng: np.random.Generator, dropout: float) -> torch.Tensor:
        texts = ["" if rng.random() < dropout else with_filler(self.text(scene, rng), rng, self.filler)
                 for scene in scenes]
        ids = self.tokenizer(texts, pad_id=self.pad_id, context_length=self.context_length)
        return torch.tensor(ids, dtype=torch.long)


GRAMMAR_DROP_SIZE = 0.1  # as scenes.TRAIN_DROP_SIZE: the model learns what a caption without a size means


def filler_vocabulary(tokenizer: CLIPTokenizer) -> tuple[str, ...]:
    """Whole English-looking words of CLIP's vocabulary (3–10 letters, one token) that no caption uses."""
    taken = caption_words() | grammar.grammar_words()
    words = (token[:-4] for token in tokenizer.vocab if token.endswith("</w>"))
    return tuple(sorted(w for w in words if 3 <= len(w) <= 10 and w.isascii() and w.isalpha() and w not in taken))


def unet_batch(
    cache: LatentCache,
    rng: np.random.Generator,
    n: int,
    captioner: Captioner,
    scaling_factor: float,
    caption_dropout: float,
    full_mask: float,
    object_weight: float = 0.0,
) -> UNetBatch:
    index = torch.from_numpy(rng.integers(len(cache), size=n))
    x0 = cache.latents[index].float() * scaling_factor
    mask = cache.masks[index].float()
    masked = cache.masked_latents[index].float() * scaling_factor
    text_to_image = torch.from_numpy(rng.random(n) < full_mask)[:, None, None, None]
    mask = torch.where(text_to_image, torch.ones_like(mask), mask)
    masked = torch.where(text_to_image, cache.grey_latent[None] * scaling_factor, masked)
    tokens = captioner([cache.scenes[i] for i in index.tolist()], rng, caption_dropout)
    weights = None
    if object_weight:
        if cache.object_emphasis is None:
            raise ValueError("object_weight needs a latent cache with object_emphasis (data.add_object_emphasis)")
        weights = 1.0 + object_weight * cache.object_emphasis[index].float()
    return UNetBatch(x0, torch.cat([mask, masked], dim=1), tokens, weights)
