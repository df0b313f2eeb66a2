"""A small CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision") for a
model's latents, the guide of CLIP guidance (Nichol et al. 2021, GLIDE, §2.4: "we train CLIP models on noised
images") and, trained at t = 0, a loss on ẑ0 for universal guidance (Bansal et al. 2023).

Two towers map into one unit sphere of `embed_dim` dimensions:
- image tower f(z_t, t): the noise-aware classifier's encoder (classifier.py: residual blocks at 16, 8 and 4 latent
  pixels told the log-SNR λ, the 4×4 map flattened so position stays visible), reading u = √ᾱ·z_t for the reason
  classifier.py gives (a bounded guidance move at the zero-terminal-SNR schedule's first levels), then a linear
  projection. The clean variant is the same network used at ᾱ = 1.
- text tower g(c): our CLIP text transformer (text_encoder.py, the CLIPTextModel layout) at a small width, pooled at
  the end-of-text token as CLIP does, then a linear `text_projection` (no bias), as in CLIP.
Similarity is the cosine f·g of the normalised embeddings; training scales it by the learned temperature exp(τ)
(CLIP's logit_scale). Guidance uses s·∇(f·g) (GLIDE eq. 3), the temperature folded into the strength.

The token table keeps CLIP's 49,408 rows (the tokenizer's ids must fit), so the width is small (48) to keep a file
≤ 8 MiB in fp16; each file carries its own text tower, so the noisy and the clean one each stand alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .classifier import _Block, classifier_metrics, level_embedding, log_snr, read_guide_file
from .errors import UserError
from .text_encoder import CLIPTextModel, TextEncoderConfig
from .tokenizer import EOS_ID

CLIP_METADATA_KEY = "studio_clip"
LOGIT_SCALE_MAX = 100.0  # CLIP clips exp(τ) at 100 "to prevent scaling the logits by more than 100"


@dataclass(frozen=True)
class ClipConfig:
    in_channels: int = 4  # latent channels
    latent_size: int = 16  # h = w of the latents it was trained on (the flattened map needs it)
    widths: tuple[int, ...] = (64, 96, 128)  # image tower, per resolution 16, 8, 4 (built-in model's latents)
    level_dim: int = 128  # noise-level embedding
    hidden: int = 256  # image tower's layer before the projection
    embed_dim: int = 64  # the shared embedding space
    text_width: int = 48  # text transformer width (the 49,408-row token table dominates the file)
    text_layers: int = 3
    text_heads: int = 4
    context_length: int = 32  # tokens, bos and eos included (scene captions fit in ~25)
    clean: bool = False  # trained at t = 0 only: a guide for ẑ0 (universal guidance), not for z_t
    scaling_factor: float = 1.0  # the latent scaling of the model it was trained for (a check, not used)
    trained_for: str = ""  # name of the diffusion model whose VAE made its latents

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ClipConfig":
        values = json.loads(text)
        values["widths"] = tuple(int(w) for w in values["widths"])
        return cls(**values)

    def text_config(self) -> TextEncoderConfig:
        return TextEncoderConfig(width=self.text_width, layers=self.text_layers, heads=self.text_heads,
                                 max_length=self.context_length)


class ImageTower(nn.Module):
    """(z_t (B, C, h, w), ᾱ_t (B,)) → unnormalised image embedding (B, embed_dim)."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.embed = nn.Sequential(nn.Linear(config.level_dim, config.level_dim), nn.SiLU(),
                                   nn.Linear(config.level_dim, config.level_dim))
        self.stem = nn.Conv2d(config.in_channels, w[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, width in enumerate(w):
            self.blocks.append(_Block(w[i - 1] if i else w[0], width, config.level_dim))
            self.downs.append(nn.Conv2d(width, width, 3, stride=2, padding=1) if i < len(w) - 1 else nn.Identity())
        final = config.latent_size // 2 ** (len(w) - 1)
        self.out_norm = nn.GroupNorm(min(32, w[-1] // 4), w[-1])
        self.hidden = nn.Linear(w[-1] * final * final, config.hidden)
        self.hidden_embed = nn.Linear(config.level_dim, config.hidden)
        self.projection = nn.Linear(config.hidden, config.embed_dim, bias=False)

    def forward(self, z_t: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
        a = alpha_cumprod.to(z_t.device, torch.float32).reshape(-1)
        if a.numel() == 1 and z_t.shape[0] > 1:
            a = a.expand(z_t.shape[0])
        emb = self.embed(level_embedding(log_snr(a), self.config.level_dim))
        h = self.stem(z_t * a.sqrt()[:, None, None, None])  # u = √ᾱ·z_t (classifier.py's docstring)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, emb))
        h = F.silu(self.out_norm(h)).flatten(1)
        h = F.silu(self.hidden(h) + self.hidden_embed(emb))
        return self.projection(h)


class TextTower(nn.Module):
    """Token ids (B, L) → unnormalised text embedding (B, embed_dim): the transformer's output at the first
    end-of-text token (CLIP: "the activations of the highest layer at the [EOS] token"), projected."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.transformer = CLIPTextModel(config.text_config())
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.transformer(ids)  # (B, L, width), causal: padding after eos cannot reach it
        eos = (ids == EOS_ID).int().argmax(dim=1)  # first eos (padding may repeat it)
        return self.text_projection(h[torch.arange(len(ids), device=ids.device), eos])


class SceneClip(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.image = ImageTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07

    def encode_image(self, z_t: torch.Tensor, alpha_cumprod: torch.Tensor | float) -> torch.Tensor:
        """f(z_t, t): unit-norm image embeddings (B, embed_dim)."""
        if not isinstance(alpha_cumprod, torch.Tensor):
            alpha_cumprod = torch.tensor([float(alpha_cumprod)])
        return F.normalize(self.image(z_t, alpha_cumprod).float(), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """g(c): unit-norm text embeddings (B, embed_dim)."""
        return F.normalize(self.text(ids).float(), dim=-1)

    def tokens(self, captions: list[str], device=None) -> torch.Tensor:
        """Captions → (B, context_length) ids, eos-padded (as SD1 pads)."""
        for text in captions:
            if not text.strip():
                raise UserError("a CLIP guide needs a caption, e.g. clip:\"a red star at the top\"")
        ids = _tokenizer()(captions, context_length=self.config.context_length)
        return torch.tensor(ids, dtype=torch.long, device=device)

    def temperature_scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def score(self, z_t: torch.Tensor, alpha_cumprod: torch.Tensor | float, text: torch.Tensor) -> torch.Tensor:
        """f(z_t, t)·g(c) per image (B,) for text embeddings (1 or B, embed_dim): GLIDE's guidance objective."""
        return (self.encode_image(z_t, alpha_cumprod) * text.to(z_t.device)).sum(-1)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                     negatives: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (their Figure 3): cross entropy over the scaled cosine matrix, rows and columns.
    `negatives` (unit text embeddings) are extra captions each image must rank below its own, as NegCLIP's hard
    negatives (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words", §4):
    columns of the image → text direction only."""
    logits = scale * image @ text.T
    target = torch.arange(len(image), device=image.device)
    to_text = logits if negatives is None else torch.cat([logits, scale * image @ negatives.T], dim=1)
    return (F.cross_entropy(to_text, target) + F.cross_entropy(logits.T, target)) / 2


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from .tokenizer import CLIPTokenizer

        _TOKENIZER = CLIPTokenizer()
    return _TOKENIZER


# -- files -----------------------------------------------------------------------------------------------------------
def save_clip(clip: SceneClip, path: str | Path, metrics: dict | None = None,
              dtype: torch.dtype = torch.float16) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in clip.state_dict().items()}
    tensors["logit_scale"] = clip.logit_scale.detach().float().reshape(())  # exp() of it: keep fp32
    metadata = {CLIP_METADATA_KEY: clip.config.to_json(), "format": "pt"}
    if metrics:
        metadata["metrics"] = json.dumps(metrics)
    save_file(tensors, str(path), metadata=metadata)


def load_clip(path: str | Path, device: torch.device | str = "cpu") -> SceneClip:
    """A scene CLIP from our safetensors file (no pickle); a UserError naming the file for anything wrong with it."""
    return read_guide_file(path, CLIP_METADATA_KEY, ClipConfig.from_json, SceneClip, noun="CLIP",
                           kind="scene CLIP", device=device)


def clip_metrics(path: str | Path) -> dict:
    return classifier_metrics(path)  # the same metadata field
