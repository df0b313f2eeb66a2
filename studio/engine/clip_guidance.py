"""CLIP guidance (Nichol et al. 2021, "GLIDE", §2.4) with the scene CLIP of clip_guide.py, and the clean CLIP's
score as a loss on ẑ0 for universal guidance (guidance.py).

GLIDE eq. 3 replaces the classifier of classifier guidance by a CLIP score: μ̂_θ(x_t|c) + s·Σ_θ(x_t|c)·
∇_{x_t}(f(x_t, t)·g(c)), f and g the noised-image and caption encoders. That is Dhariwal & Nichol's Algorithm 1 with
log p_φ(y | x_t) → f(x_t, t)·g(c), so this module only supplies the objective and reuses classifier_guidance.py's
two wrappers: `noisy_sampler` for ancestral samplers (Algorithm 1 / GLIDE eq. 3) and `noisy_denoiser` for DDIM-type
samplers (Algorithm 2's ε̂ − s·√(1−ᾱ_t)·∇_{x_t}(f·g), the same substitution in their eq. 14).

The score is the cosine f·g times the CLIP's own learned temperature exp(τ): that is the logit CLIP's softmax over
captions reads, so a strength s weighs it as the classifier's strengths weigh log p_φ (GLIDE's s with exp(τ)
folded in). Several CLIP guides add their s_i·exp(τ)·f·g_i; CLIP and classifier guides add up the same way.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import UserError
from .guidance import Guide

if TYPE_CHECKING:
    import torch

    from .clip_guide import SceneClip
    from .schedules import NoiseLevel

CLIP_FILES = {False: "scene-clip-noisy.safetensors", True: "scene-clip-clean.safetensors"}


def clip_path(clean: bool):
    from ..resources import resources_dir
    from .classifier_guidance import GUIDES_FOLDER

    return resources_dir() / GUIDES_FOLDER / CLIP_FILES[clean]


@lru_cache(maxsize=4)
def _load(path: str, device: str) -> "SceneClip":
    from .clip_guide import load_clip

    return load_clip(path, device)


def shipped_clip(clean: bool, device) -> "SceneClip":
    """The built-in world's CLIP (noise-aware, or clean for ẑ0), loaded once per device."""
    path = clip_path(clean)
    if not path.exists():
        raise UserError(f"the {'clean' if clean else 'noise-aware'} scene CLIP is missing ({path}); "
                        "train it with `studio train --stage clip" + (" --clean`" if clean else "`"))
    return _load(str(path), str(device))


def clip_guides(guides: Sequence[Guide]) -> list[Guide]:
    return [g for g in guides if g.kind == "clip"]


def check_fits(clip: "SceneClip", latent: "torch.Tensor") -> None:
    c = clip.config
    if latent.shape[1] != c.in_channels or tuple(latent.shape[-2:]) != (c.latent_size, c.latent_size):
        raise UserError(f"the CLIP guide reads {c.in_channels}×{c.latent_size}×{c.latent_size} latents "
                        f"({c.trained_for or 'the built-in model'} at {c.latent_size * 4} px); this run's latent is "
                        f"{latent.shape[1]}×{latent.shape[2]}×{latent.shape[3]}")


def _asks(guides: Sequence[Guide], clip: "SceneClip") -> list[tuple[float, "torch.Tensor"]]:
    """(s_i·exp(τ), g(c_i)) per CLIP guide: the captions encoded once, now, not at every step."""
    import torch

    out = []
    with torch.inference_mode(False), torch.no_grad():
        scale = float(clip.temperature_scale())
        for g in clip_guides(guides):
            out.append((g.strength * scale, clip.encode_text(clip.tokens([g.text], device=clip.logit_scale.device))))
    return out


def log_prob_fn(guides: Sequence[Guide], clip: "SceneClip") -> Callable[["torch.Tensor", "NoiseLevel"], "torch.Tensor"]:
    """Σ_i s_i·exp(τ)·f(z_t, t)·g(c_i), summed over the batch: the objective whose gradient GLIDE eq. 3 adds
    (classifier_guidance.LogProb's contract, so its Algorithm 1 and 2 wrappers take it as they are)."""
    asks = _asks(guides, clip)

    def score(z: "torch.Tensor", level: "NoiseLevel") -> "torch.Tensor":
        import torch

        a = torch.full((z.shape[0],), float(level.alpha_cumprod))
        return sum(weight * clip.score(z, a, text).sum() for weight, text in asks)

    return score


def clean_losses(guides: Sequence[Guide], clip: "SceneClip") -> list[tuple[float, Callable]]:
    """For universal guidance: (s_i, ℓ_i) with ℓ_i(ẑ0) = −exp(τ)·f(ẑ0, 0)·g(c_i), the clean CLIP at ᾱ = 1, divided
    by the latent pixel count as classifier_guidance.clean_losses divides (guidance.guide_denoiser multiplies
    forward guidance's gradient by it)."""
    import torch

    out = []
    for guide in clip_guides(guides):
        ((scale, embedding),) = _asks([Guide("clip", 1.0, text=guide.text)], clip)

        def loss(z0: torch.Tensor, scale=scale, embedding=embedding) -> torch.Tensor:
            cells = z0.shape[-1] * z0.shape[-2]
            return -scale * clip.score(z0, torch.ones(z0.shape[0]), embedding).sum() / cells

        out.append((guide.strength, loss))
    return out
