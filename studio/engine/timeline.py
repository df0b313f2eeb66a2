"""A run's timeline: every step's x_t, predicted x0 and predicted noise, kept off the device.

Storage per step (512 px, 64×64×4 latent): x_t in float32 (64 KiB: the exact resume point a branch starts
from), ε̂ in float16 (32 KiB) and nothing else: x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ is derived on access (DDIM eq. 9),
which costs one fused multiply-add and keeps a 50-step run at ~4.9 MB. A branched timeline stores only its own
steps and reads earlier ones from its parent (shared, never copied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .api import VIEWS, View  # noqa: F401  (re-exported: the names the timeline's views go by)
from .samplers import Step, predict_x0
from .schedules import NoiseLevel


@dataclass(frozen=True)
class TimelineStep:
    index: int
    level: NoiseLevel
    x_t: torch.Tensor  # float32, CPU: exact
    eps: torch.Tensor  # float16, CPU
    rng_state: torch.Tensor | None  # noise generator state when the step began (None: deterministic run)
    guidance: torch.Tensor | None = None  # float16, CPU: the Δε universal guidance added this step (guidance.py)
    loss: float | None = None  # the guidance loss ℓ at this step's x̂0 before guidance
    # float32 x̂0, kept only where it cannot be derived exactly from x_t (a multistep sampler's history after
    # self-recurrence re-noised the step's input): what a branch needs to replay bit for bit
    x0_exact: torch.Tensor | None = None

    @property
    def x0(self) -> torch.Tensor:
        if self.x0_exact is not None:  # kept: a cold run's x̂0 = R(x_s, s) is not a function of (x_t, ε̂)
            return self.x0_exact
        return predict_x0(self.x_t, self.eps.float(), self.level.alpha_cumprod)

    def view_array(self, which: View) -> np.ndarray:
        """The same views as numpy arrays, computed without torch's thread pool (cheap on the UI thread)."""
        x_t = self.x_t.numpy()
        if which == "x_t":
            return x_t
        eps = self.eps.numpy().astype(np.float32)
        if which == "eps":
            return eps
        if self.x0_exact is not None:
            return self.x0_exact.numpy()
        a = self.level.alpha_cumprod
        return (x_t - np.float32((1 - a) ** 0.5) * eps) / np.float32(a**0.5)

    def view(self, which: View) -> torch.Tensor:
        if which == "x_t":
            return self.x_t
        if which == "x0":
            return self.x0
        if which == "eps":
            return self.eps.float()
        raise ValueError(f"unknown timeline view {which!r}")

    @property
    def nbytes(self) -> int:
        extra = self.rng_state.numel() if self.rng_state is not None else 0
        for tensor in (self.guidance, self.x0_exact):
            if tensor is not None:
                extra += tensor.numel() * tensor.element_size()
        return self.x_t.numel() * self.x_t.element_size() + self.eps.numel() * self.eps.element_size() + extra


class LatentPreview:
    """Cheap latent → RGB at 1/f resolution, no VAE: a per-pixel map.

    Linear (ComfyUI/A1111 style, SD's factors), or with one hidden SiLU layer in front: rgb = silu(z·W1 + b1)·W2 + b2.
    A small VAE's latent is far from linear in colour: on the studio-shapes VAE a least-squares linear map missed
    by 54 RGB units on average (green came out grey), a 32-unit hidden layer by about 20.
    """

    # SD 1.5 factors (ComfyUI latent_formats.SD15), rows = latent channel; the fallback for 4-channel latents.
    SD15 = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))

    def __init__(self, factors: torch.Tensor, bias: torch.Tensor | None = None,
                 hidden: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.factors = factors.float()  # (C, 3), or (H, 3) after a hidden layer
        self.bias = torch.zeros(3) if bias is None else bias.float()
        self.hidden = None if hidden is None else (hidden[0].float(), hidden[1].float())  # W1 (C, H), b1 (H,)
        self._factors = self.factors.numpy().astype(np.float32)
        self._bias = self.bias.numpy().astype(np.float32)
        self._hidden = None if hidden is None else tuple(t.numpy().astype(np.float32) for t in self.hidden)

    @classmethod
    def from_rows(cls, rows, hidden_rows=None) -> "LatentPreview":
        """From ModelConfig.latent_rgb (factor rows + a bias row) and latent_rgb_hidden (W1 rows + a b1 row)."""
        table = torch.tensor(rows, dtype=torch.float32)
        hidden = None
        if hidden_rows is not None:
            first = torch.tensor(hidden_rows, dtype=torch.float32)
            hidden = (first[:-1], first[-1])
        return cls(table[:-1], table[-1], hidden)

    def rows(self) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...] | None]:
        """(latent_rgb, latent_rgb_hidden) for a ModelConfig, rounded to 5 decimals."""
        def table(matrix: torch.Tensor, last: torch.Tensor) -> tuple[tuple[float, ...], ...]:
            return tuple(tuple(round(v, 5) for v in row) for row in torch.cat([matrix, last[None]]).tolist())
        return table(self.factors, self.bias), None if self.hidden is None else table(*self.hidden)

    def to_json(self) -> str:
        """Exact (float32 values as JSON numbers), for run files: a restored run previews as it did live."""
        state = {"factors": self.factors.tolist(), "bias": self.bias.tolist()}
        if self.hidden is not None:
            state["hidden"] = [self.hidden[0].tolist(), self.hidden[1].tolist()]
        return json.dumps(state)

    @classmethod
    def from_json(cls, text: str) -> "LatentPreview":
        state = json.loads(text)
        hidden = state.get("hidden")
        return cls(torch.tensor(state["factors"]), torch.tensor(state["bias"]),
                   None if hidden is None else (torch.tensor(hidden[0]), torch.tensor(hidden[1])))

    @classmethod
    def default_for(cls, channels: int) -> "LatentPreview":
        if channels == 4:
            return cls(torch.tensor(cls.SD15))
        # Unknown latent space: show the first three channels as R, G, B.
        factors = torch.zeros(channels, 3)
        for c in range(min(channels, 3)):
            factors[c, c] = 0.5
        return cls(factors)

    @classmethod
    def fit(cls, latents: torch.Tensor, images: torch.Tensor) -> "LatentPreview":
        """Least-squares factors and bias mapping latents (N,C,h,w) to images (N,3,h,w) in [−1, 1]."""
        z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
        rgb = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
        design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)
        solution = torch.linalg.lstsq(design, rgb).solution  # (C+1, 3)
        return cls(solution[:-1].float(), solution[-1].float())

    @classmethod
    def fit_hidden(cls, latents: torch.Tensor, images: torch.Tensor, width: int = 32, steps: int = 800,
                   seed: int = 0, max_pixels: int = 16384) -> "LatentPreview":
        """A hidden SiLU layer of `width` units, fitted by full-batch Adam on the L1 error over at most max_pixels
        latent pixels (a few seconds on a CPU); deterministic for a seed."""
        z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()
        rgb = images.permute(0, 2, 3, 1).reshape(-1, 3).float()
        generator = torch.Generator().manual_seed(seed)
        if len(z) > max_pixels:
            keep = torch.randperm(len(z), generator=generator)[:max_pixels]
            z, rgb = z[keep], rgb[keep]
        # plain tensors, not nn.Linear: its initialisation would draw from (and move) torch's global generator
        w1 = ((torch.rand(z.shape[1], width, generator=generator) * 2 - 1) * z.shape[1] ** -0.5).requires_grad_()
        w2 = ((torch.rand(width, 3, generator=generator) * 2 - 1) * width ** -0.5).requires_grad_()
        b1, b2 = torch.zeros(width, requires_grad=True), torch.zeros(3, requires_grad=True)
        optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=1e-2)
        with torch.enable_grad():
            for step in range(steps):
                if step == 2 * steps // 3:
                    optimizer.param_groups[0]["lr"] = 2e-3
                loss = (F.silu(z @ w1 + b1) @ w2 + b2 - rgb).abs().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return cls(w2.detach(), b2.detach(), (w1.detach(), b1.detach()))

    def to_rgb(self, latent: torch.Tensor) -> np.ndarray:
        """(1, C, h, w) or (C, h, w) latent → (h, w, 3) uint8.

        numpy, not torch: these are microsecond-sized ops, and torch's intra-op threads turn them into
        milliseconds when the cores are busy sampling (measured: 0.03 ms vs 11 ms under load).
        """
        z = np.moveaxis(_as_numpy(latent), 0, -1)  # (h, w, C)
        if self._hidden is not None:
            pre = z @ self._hidden[0] + self._hidden[1]
            z = pre * 0.5 * (1 + np.tanh(0.5 * pre))  # SiLU, x·σ(x), with σ through tanh: no exp overflow
        return _to_u8(z @ self._factors + self._bias)  # (h, w, 3)

    def noise_to_rgb(self, eps: torch.Tensor) -> np.ndarray:
        """ε̂ is unit-variance noise; map ±2.5 σ of its first three channels to 0–255 so structure shows."""
        z = _as_numpy(eps)
        channels = z[:3] if z.shape[0] >= 3 else np.repeat(z[:1], 3, axis=0)
        return _to_u8(np.moveaxis(channels, 0, -1) / 2.5)


def _as_numpy(latent: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(latent, np.ndarray):
        return latent.reshape(latent.shape[-3:]).astype(np.float32, copy=False)
    return latent.detach().reshape(latent.shape[-3:]).to("cpu", torch.float32).numpy()


def _to_u8(rgb: np.ndarray) -> np.ndarray:
    return np.rint((np.clip(rgb, -1, 1) + 1) * 127.5).astype(np.uint8)


class Timeline:
    def __init__(self, parent: "Timeline | None" = None, from_step: int = 0):
        if parent is not None and not 0 <= from_step <= len(parent):
            raise ValueError(f"cannot branch from step {from_step}: the parent timeline has {len(parent)} steps")
        self.parent = parent
        self.from_step = from_step if parent is not None else 0
        self._own: list[TimelineStep] = []

    def record(self, step: Step, rng_state: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
               loss: float | None = None, keep_x0: bool = False) -> TimelineStep:
        """Keep `step`; `rng_state` is the noise generator's state when the step began (stochastic samplers);
        `guidance` and `loss` what universal guidance did at this step (None: not guided)."""
        entry = TimelineStep(
            index=step.index,
            level=step.level,
            x_t=step.x_t.detach().to("cpu", torch.float32, copy=True),
            eps=step.eps_pred.detach().to("cpu", torch.float16, copy=True),
            rng_state=rng_state,
            guidance=None if guidance is None else guidance.detach().to("cpu", torch.float16, copy=True),
            loss=loss,
            x0_exact=step.x0_pred.detach().to("cpu", torch.float32, copy=True) if keep_x0 else None,
        )
        self.append(entry)
        return entry

    def append(self, entry: TimelineStep) -> None:
        if entry.index != len(self):
            raise ValueError(f"timeline expected step {len(self)}, got {entry.index}")
        self._own.append(entry)

    def __len__(self) -> int:
        return self.from_step + len(self._own)

    def __getitem__(self, index: int) -> TimelineStep:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} is outside this timeline's {len(self)} steps")
        if index < self.from_step:
            assert self.parent is not None
            return self.parent[index]
        return self._own[index - self.from_step]

    def __iter__(self) -> Iterator[TimelineStep]:
        return (self[i] for i in range(len(self)))

    @property
    def own_steps(self) -> list[TimelineStep]:
        return list(self._own)

    @property
    def nbytes(self) -> int:
        """Bytes held by this timeline itself (a branch's shared prefix is counted in its parent)."""
        return sum(s.nbytes for s in self._own)
