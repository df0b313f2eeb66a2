"""Write a run's timeline out: an animated GIF of the predicted x̂0 per step, or every view of every step as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VIEW_NAMES = {"x_t": "x_t", "x0": "x0", "eps": "eps"}
GIF_SIDE = 384  # the long side of the GIF's frames


def _frame_size(run: Any, side: int) -> tuple[int, int]:
    w, h = run.request.width, run.request.height
    scale = side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def export_gif(run: Any, path: str | Path, view: str = "x0", frame_ms: int = 90, side: int = GIF_SIDE) -> int:
    """Every step's `view`, then the final image (held longer); returns the number of frames."""
    size = _frame_size(run, min(side, max(run.request.width, run.request.height)))
    frames = [Image.fromarray(_best(run, i, view)).resize(size, Image.Resampling.BICUBIC) for i in range(run.recorded)]
    durations = [frame_ms] * len(frames)
    if run.image is not None:
        frames.append(Image.fromarray(run.image).resize(size, Image.Resampling.LANCZOS))
        durations.append(frame_ms * 12)
    if not frames:
        raise ValueError("this run has no steps to export yet")
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return len(frames)


def _best(run: Any, index: int, view: str) -> np.ndarray:
    """The step's exact decode when there is one, else its latent-resolution preview."""
    decoded = run.decoded(index, view)
    return decoded if decoded is not None else run.step_image(index, view)


def export_pngs(run: Any, folder: str | Path) -> int:
    """step_001_x_t.png, step_001_x0.png, step_001_eps.png … at the run's pixel size; returns files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = (run.request.width, run.request.height)
    count = 0
    for i in range(run.recorded):
        for view, name in VIEW_NAMES.items():
            image = Image.fromarray(_best(run, i, view))
            resample = Image.Resampling.NEAREST if view == "eps" else Image.Resampling.BICUBIC
            image.resize(size, resample).save(folder / f"step_{i + 1:03d}_{name}.png")
            count += 1
    if run.image is not None:
        Image.fromarray(np.asarray(run.image)).save(folder / "final.png")
        count += 1
    return count
