"""A noise-aware classifier p_φ(y | z_t, t) on a model's latents, for classifier guidance (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs on Image Synthesis", §4), and the same network trained on clean latents only (t = 0),
a guide for universal guidance (Bansal et al. 2023) on ẑ0.

The network is the encoder half of a small UNet: residual blocks at 16, 8 and 4 latent pixels, each told the noise
level through a learned embedding added to its features (as the UNet's ResBlocks are), then the 4×4 map flattened
(position stays visible) into one linear head per label group (shape, colour, size, position, background ...).
Label groups and their values are data, read from the weights file, so the engine knows nothing of any scene world.

A head named "a+b" (JOINT) is a *joint* head over groups a and b, its values "va+vb": p_φ(a, b | z_t) as one
softmax. Asked both a and b, the guide uses it in place of the two independent heads. Why: with two objects in the
picture, log p(a) + log p(b) of independent heads is raised as much by one object of shape a and another of colour
b as by one object with both (the split we measured for universal guidance, resources/guides/MODEL_CARD.md); the
joint head only rewards the pair on one object.

Two choices of ours, both about the zero-terminal-SNR schedule of the built-in model (ᾱ at the first level ≈ 2e-9):
- the noise level enters as the log-SNR λ = log(ᾱ/(1−ᾱ)), clamped to ±LOG_SNR_LIMIT, not the timestep: the
  network then reads any schedule's levels (fractional Karras timesteps included), and t = 0 is just λ = limit.
- the network sees u = √ᾱ·z_t, not z_t. Classifier guidance moves ẑ0 by (1−ᾱ)/√ᾱ·∇_{z_t} log p (Algorithm 2 and
  DDIM eq. 9; Tweedie's formula says the same of the Bayes classifier), which at ᾱ ≈ 2e-9 multiplies any slope
  the network has by 5·10⁴; with u the chain rule supplies the √ᾱ, ∇_{z_t} = √ᾱ·∇_u, and the move is
  (1−ᾱ)·∇_u log p, bounded at every level. (For a Gaussian class-conditional, log p(y | z_t) is affine in
  √ᾱ·z_t/(1−ᾱ): the Bayes classifier itself reads z_t through √ᾱ.)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .archives import ModelLoadError, SafetensorsArchive, SafetensorsHeader
from .errors import UserError

CLASSIFIER_METADATA_KEY = "studio_classifier"
JOINT = "+"  # joins group names and values of a joint head ("shape+colour", "star+red")
LOG_SNR_LIMIT = 12.0  # |λ| beyond this carries no more information for a classifier (ᾱ = 1 − 6e-6)


@dataclass(frozen=True)
class ClassifierConfig:
    heads: tuple[tuple[str, tuple[str, ...]], ...]  # (group, its label values), e.g. ("shape", ("circle", ...))
    in_channels: int = 4  # latent channels
    latent_size: int = 16  # h = w of the latents it was trained on (the flattened head needs it)
    widths: tuple[int, ...] = (64, 96, 128)  # per resolution 16, 8, 4 (built-in model's latents)
    embed_dim: int = 128  # noise-level embedding
    hidden: int = 256  # the shared layer before the heads
    clean: bool = False  # trained at t = 0 only: a guide for ẑ0 (universal guidance), not for z_t
    scaling_factor: float = 1.0  # the latent scaling of the model it was trained for (a check, not used)
    trained_for: str = ""  # name of the diffusion model whose VAE made its latents

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        values = json.loads(text)
        values["heads"] = tuple((str(name), tuple(str(v) for v in labels)) for name, labels in values["heads"])
        values["widths"] = tuple(int(w) for w in values["widths"])
        return cls(**values)

    def groups(self) -> dict[str, tuple[str, ...]]:
        """The label groups a user picks from: every head but the joint ones."""
        return {name: values for name, values in self.heads if JOINT not in name}

    def labels(self, group: str) -> tuple[str, ...]:
        for name, values in self.heads:
            if name == group:
                return values
        raise UserError(f"the classifier has no {group!r} labels; it knows {', '.join(self.groups())}")


def log_snr(alpha_cumprod: torch.Tensor) -> torch.Tensor:
    a = alpha_cumprod.double().clamp(0.0, 1.0)
    return torch.log(a / (1 - a)).clamp(-LOG_SNR_LIMIT, LOG_SNR_LIMIT).float()


def level_embedding(lam: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of λ / LOG_SNR_LIMIT ∈ [−1, 1] (the Transformer's, over a range of frequencies)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(100.0), half, device=lam.device))
    angle = (lam / LOG_SNR_LIMIT)[:, None] * freqs[None] * math.pi
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class _Block(nn.Module):
    """GroupNorm → SiLU → conv, + the level embedding, GroupNorm → SiLU → conv, plus the skip (the UNet's ResBlock)."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(32, c_in // 4) if c_in >= 8 else 1, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.embed = nn.Linear(embed_dim, c_out)
        self.norm2 = nn.GroupNorm(min(32, c_out // 4), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.embed(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class NoisyClassifier(nn.Module):
    """(z_t (B, C, h, w), ᾱ_t (B,)) → {group: logits (B, n_labels)}."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.embed = nn.Sequential(nn.Linear(config.embed_dim, config.embed_dim), nn.SiLU(),
                                   nn.Linear(config.embed_dim, config.embed_dim))
        self.stem = nn.Conv2d(config.in_channels, w[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, width in enumerate(w):
            self.blocks.append(_Block(w[max(0, i - 1)] if i else w[0], width, config.embed_dim))
            self.downs.append(nn.Conv2d(width, width, 3, stride=2, padding=1) if i < len(w) - 1 else nn.Identity())
        final = config.latent_size // 2 ** (len(w) - 1)
        self.out_norm = nn.GroupNorm(min(32, w[-1] // 4), w[-1])
        self.hidden = nn.Linear(w[-1] * final * final, config.hidden)
        self.hidden_embed = nn.Linear(config.embed_dim, config.hidden)
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden, len(labels)) for name, labels in config.heads})

    def forward(self, z_t: torch.Tensor, alpha_cumprod: torch.Tensor) -> dict[str, torch.Tensor]:
        a = alpha_cumprod.to(z_t.device, torch.float32).reshape(-1)
        if a.numel() == 1 and z_t.shape[0] > 1:
            a = a.expand(z_t.shape[0])
        emb = self.embed(level_embedding(log_snr(a), self.config.embed_dim))
        h = self.stem(z_t * a.sqrt()[:, None, None, None])  # u = √ᾱ·z_t (module docstring)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, emb))
        h = F.silu(self.out_norm(h)).flatten(1)
        h = F.silu(self.hidden(h) + self.hidden_embed(emb))
        return {name: head(h) for name, head in self.heads.items()}

    def log_prob(self, z_t: torch.Tensor, alpha_cumprod: torch.Tensor | float, labels: dict[str, str],
                 exclusive_background: bool = False) -> torch.Tensor:
        """log p_φ(y | z_t, t) for the asked labels, (B,): a sum over independent heads, with a joint head (module
        docstring) in place of the groups it covers when all of them are asked; `exclusive_background` adds
        log p_φ(background ≠ the asked colour) (`_log_background_is_not`)."""
        if not isinstance(alpha_cumprod, torch.Tensor):
            alpha_cumprod = torch.tensor([float(alpha_cumprod)])
        logits = self(z_t, alpha_cumprod)
        total = torch.zeros(z_t.shape[0], device=z_t.device)
        for group, value in head_indices(self.config, labels).items():
            total = total + F.log_softmax(logits[group].float(), dim=1)[:, value]
        if exclusive_background:
            total = total + self._log_background_is_not(logits, labels)
        return total

    def _log_background_is_not(self, logits: dict[str, torch.Tensor], labels: dict[str, str]) -> torch.Tensor:
        """log p_φ(background ≠ c) for an asked object colour c when the background is not asked: in the scene world
        no object has its background's colour (scenes.py), so there the event "the object is c" is "the object is c
        and the background is not", which the independent heads give as p(colour = c)·p(background ≠ c). Without it
        universal guidance on ẑ0 often satisfied a colour by painting the background (docs/guidance_scale_sweep.md,
        the seventh session)."""
        heads = dict(self.config.heads)
        colour = labels.get("colour")
        if colour is None or "background" in labels or colour not in heads.get("background", ()):
            return torch.zeros(())
        log_p = F.log_softmax(logits["background"].float(), dim=1)[:, heads["background"].index(colour)]
        return torch.log1p(-log_p.exp().clamp(max=1.0 - 1e-6))


def head_indices(config: ClassifierConfig, labels: dict[str, str]) -> dict[str, int]:
    """The heads and label indices log p reads for `labels`: each asked group's own head, except that the groups a
    joint head covers go through it when they are all asked ({"shape": "star", "colour": "red"} → {"shape+colour":
    index of "star+red"}). Joint heads are taken in file order, each over groups not yet covered."""
    indices = label_indices(config, labels)
    out: dict[str, int] = {}
    covered: set[str] = set()
    for name, values in config.heads:
        parts = name.split(JOINT)
        if len(parts) < 2 or not all(p in indices and p not in covered for p in parts):
            continue
        value = JOINT.join(labels[p] for p in parts)
        if value in values:
            out[name] = values.index(value)
            covered.update(parts)
    out.update({group: index for group, index in indices.items() if group not in covered})
    return out


def label_indices(config: ClassifierConfig, labels: dict[str, str]) -> dict[str, int]:
    """{"shape": "star"} → {"shape": 3}; a clear UserError for an unknown group or value."""
    if not labels:
        raise UserError("a classifier guide needs at least one label, e.g. shape=star")
    out = {}
    for group, value in labels.items():
        known = config.labels(group)
        if value not in known:
            raise UserError(f"the classifier knows no {group} {value!r}; choose one of {', '.join(known)}")
        out[group] = known.index(value)
    return out


# -- files -----------------------------------------------------------------------------------------------------------
def save_classifier(classifier: NoisyClassifier, path: str | Path, metrics: dict | None = None,
                    dtype: torch.dtype = torch.float16) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in classifier.state_dict().items()}
    metadata = {CLASSIFIER_METADATA_KEY: classifier.config.to_json(), "format": "pt"}
    if metrics:
        metadata["metrics"] = json.dumps(metrics)
    save_file(tensors, str(path), metadata=metadata)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> NoisyClassifier:
    """A classifier from our safetensors file (no pickle); a UserError naming the file for anything wrong with it."""
    return read_guide_file(path, CLASSIFIER_METADATA_KEY, ClassifierConfig.from_json, NoisyClassifier,
                           noun="classifier", kind="classifier", device=device)


def read_guide_file(path: str | Path, metadata_key: str, config_from_json, build, *, noun: str, kind: str,
                    device: torch.device | str = "cpu") -> nn.Module:
    """One of our guide networks (a classifier, a scene CLIP) from its safetensors file: the config from the
    metadata under `metadata_key`, names and shapes checked before a tensor is read, NaN refused; a UserError that
    names the file (and the `noun`) for anything wrong with it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no {noun} file at {path}")
    header = SafetensorsHeader(path)  # ModelLoadError (a UserError) for a damaged or foreign file
    meta = header.metadata
    if metadata_key not in meta:
        raise ModelLoadError(f"{path.name}: not a Diffusion Studio {kind} (no {metadata_key} metadata)")
    try:
        config = config_from_json(meta[metadata_key])
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{path.name}: damaged {noun} settings ({exc})") from None
    with torch.device("cpu"):
        network = build(config)
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    if header.shapes != expected:
        missing = sorted(set(expected) - set(header.shapes))
        wrong = sorted(k for k in expected if k in header.shapes and header.shapes[k] != expected[k])
        raise ModelLoadError(f"{path.name}: the weights do not fit the {noun} its settings describe "
                             f"(missing {missing[:3]}, wrong shape {wrong[:3]})")
    archive = SafetensorsArchive(path, header)
    try:
        state = {k: v.float() for k, v in archive.read_all().items()}
    finally:
        archive.close()
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise ModelLoadError(f"{path.name}: the {noun}'s weights hold NaN or infinite values")
    network.load_state_dict(state)
    return network.to(device).eval().requires_grad_(False)


def classifier_metrics(path: str | Path) -> dict:
    meta = SafetensorsHeader(Path(path)).metadata
    return json.loads(meta.get("metrics", "{}"))
