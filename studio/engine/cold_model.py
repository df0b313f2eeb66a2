"""The restoration network R(x_s, s) ≈ x0 of cold diffusion (Bansal et al. 2022, eq. 2: min ‖R(D(x, s), s) − x‖),
a small pixel-space UNet at 64 px.

Pixel space, not our VAE's latents: blur and downsampling are defined on pixels (a blur of latents is not a blur
of the picture, and at s = T the "per-channel mean" has to be the picture's colour for the GMM start of §5.1), and
masking must keep the unmasked pixels exactly, which a decoder would not. At 64 px a net of ~1.5 M parameters is
as cheap per image as the VAE round trip would be.

R predicts x̂0 = x_s + UNet(x_s, s, …): near s = 0 the image is almost right and the net learns the small change.
Inputs besides x_s: the current mask m_s for the mask kind (R must know which pixels are holes, and m_s is known
at sampling time), and, for caption-conditioned models, a caption vector: the mean of learned embeddings of its
CLIP-tokenizer ids (the scene world's captions name a handful of facts; the shipped text encoder would add ~40 %
compute per step on one CPU thread for no fact it knows that a bag of words does not), added to the step embedding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ColdConfig:
    kind: str = "blur"  # the degradation: blur | mask | down
    steps: int = 40  # T
    size: int = 64  # image side, px
    channels: tuple[int, ...] = (32, 64, 96, 128)  # per resolution 64, 32, 16, 8 px
    vocabulary: int = 0  # caption token ids (0: unconditional)
    # share of captions emptied in training (training/cold.py, CAPTION_DROPOUT): > 0 means R(x_s, s, ∅) was learned,
    # so classifier-free guidance (guided_x0) means something; older files read as 0 and ignore the CFG scale
    caption_dropout: float = 0.0
    # the guidance scale w the model was tuned with (guided_x0; 1: one call, no guidance): its default CFG
    guidance: float = 1.0
    # GMM over training images' per-channel means in [−1, 1] (§5.1: the start x_T of generation from blur)
    gmm_weights: tuple[float, ...] = ()
    gmm_means: tuple[tuple[float, ...], ...] = ()
    gmm_stds: tuple[tuple[float, ...], ...] = ()  # diagonal
    # generation's start step s0; 0 (older files) means T, the paper's flat start above. Below T the start is
    # D(x̃0, s0) with x̃0 drawn from the file's StartPrior over the low frequencies D(·, s0) keeps (docs/cold.md)
    start_step: int = 0

    @property
    def guidable(self) -> bool:
        return self.vocabulary > 0 and self.caption_dropout > 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ColdConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("channels", "gmm_weights"):
            if key in known:
                known[key] = tuple(known[key])
        for key in ("gmm_means", "gmm_stds"):
            if key in known:
                known[key] = tuple(tuple(row) for row in known[key])
        return cls(**known)

    @property
    def extra_inputs(self) -> int:
        return 1 if self.kind == "mask" else 0

    @property
    def generation_step(self) -> int:
        """s0, the step a generation starts from: T unless the file carries a low-frequency start prior."""
        return self.start_step if 0 < self.start_step < self.steps else self.steps


@dataclass(frozen=True)
class StartPrior:
    """A density over the low frequencies of training pictures, from which a generation starts at s0 < T.

    At s = T the blur leaves one colour per channel, and the paper draws x_T from a GMM over training images'
    channel means (Bansal et al. 2022, §5.1). From that start the sample is a function of the colour alone (model
    card: 19 (shape, colour) pairs in 100 samples, with or without the §5.1 perturbation). At s0 < T the blur
    keeps a handful of DCT coefficients per channel (where the object is, its colour, its rough size; not its
    shape), so the start can carry more than the colour. The prior over those coefficients is a Gaussian kernel
    density estimate (Parzen 1962) on n training pictures, not a GMM: a 32-component full-covariance GMM over the
    24 coefficients of s0 = 36 drew blobs no training scene has (56 % valid against 77 %, model card). A draw is
    x̃0 = the kept cosines with one picture's coefficients plus kernel noise; the start is D(x̃0, s0), so it is
    the degradation of a picture, x_s = D(x0, s) as Algorithm 2's argument (§3.3) asks."""

    frequencies: torch.Tensor  # (k, 2) DCT-II indices (row u, column v) kept at s0
    coefficients: torch.Tensor  # (n, 3, k) those coefficients of n training pictures (orthonormal DCT-II, [−1, 1])
    bandwidth: torch.Tensor  # (3, k) the kernel's standard deviation per coefficient

    def sample(self, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 3, size, size) low-pass pictures x̃0: a training picture's kept coefficients plus N(0, bandwidth²)."""
        from .cold import dct_matrix

        pick = torch.randint(self.coefficients.shape[0], (n,), generator=generator)
        noise = torch.randn((n, *self.bandwidth.shape), generator=generator, dtype=torch.float64)
        drawn = self.coefficients[pick].double() + self.bandwidth.double() * noise
        grid = torch.zeros(n, 3, size, size, dtype=torch.float64)
        grid[:, :, self.frequencies[:, 0], self.frequencies[:, 1]] = drawn
        c = dct_matrix(size, dtype=torch.float64)
        return (c.T @ grid @ c).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {START_PRIOR + "frequencies": self.frequencies.long().contiguous(),
                START_PRIOR + "coefficients": self.coefficients.float().contiguous(),
                START_PRIOR + "bandwidth": self.bandwidth.float().contiguous()}


START_PRIOR = "start_prior."  # the StartPrior's tensors in a model file, beside the net's


def step_embedding(s: torch.Tensor, steps: int, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of s/T (Vaswani et al. 2017 §3.5, as DDPM embeds t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half).to(s.device)
    angle = (s.float() / steps * 1000.0)[:, None] * freqs[None] / 10.0
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class RestorationNet(nn.Module):
    """UNet: one ResBlock per level down, a middle block, one per level up with skips; FiLM from (s, caption)."""

    def __init__(self, config: ColdConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        emb = 4 * ch[0]
        self.emb = nn.Sequential(nn.Linear(ch[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.words = nn.EmbeddingBag(config.vocabulary, emb, mode="mean") if config.vocabulary else None
        self.stem = nn.Conv2d(3 + config.extra_inputs, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        for i, c in enumerate(ch):
            self.down.append(ResBlock(ch[i - 1] if i else ch[0], c, emb))
        self.middle = ResBlock(ch[-1], ch[-1], emb)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch))):
            above = ch[i + 1] if i + 1 < len(ch) else ch[-1]
            self.up.append(ResBlock(above + ch[i], ch[i], emb))
        self.out_norm = nn.GroupNorm(8, ch[0])
        self.out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(
        self,
        x_s: torch.Tensor,
        s: torch.Tensor,
        extra: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x̂0 = x_s + UNet(…). `extra`: m_s for the mask kind; `tokens`/`offsets`: EmbeddingBag input."""
        cfg = self.config
        s = s.reshape(-1).to(x_s.device).expand(x_s.shape[0]) if s.numel() == 1 else s.to(x_s.device)
        emb = self.emb(step_embedding(s, cfg.steps, cfg.channels[0]).to(x_s.dtype))
        if self.words is not None and tokens is not None:
            emb = emb + self.words(tokens, offsets)
        h = self.stem(torch.cat([x_s, extra], dim=1) if extra is not None else x_s)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.avg_pool2d(h, 2)
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if i:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return x_s + self.out(F.silu(self.out_norm(h)))


def null_tokens(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag input of n empty captions: id 0 each, the condition ∅ of caption dropout (training/cold.py)."""
    return torch.zeros(n, dtype=torch.long), torch.arange(n, dtype=torch.long)


def guided_x0(net: RestorationNet, x_s: torch.Tensor, s: torch.Tensor, extra: torch.Tensor | None,
              tokens: torch.Tensor | None, offsets: torch.Tensor | None, scale: float) -> torch.Tensor:
    """x̂0 = R(x_s, s, ∅) + w·(R(x_s, s, c) − R(x_s, s, ∅)): classifier-free guidance (Ho & Salimans 2022, eq. 6)
    applied to the x0-prediction instead of ε; w = 1 is the one plain call. Both calls run as one batch of 2n.
    The guided x̂0 is clipped to the pixel range [−1, 1]: for w > 1 it overshoots, and the cold samplers put x̂0
    itself into the picture (Alg. 2 commits each pixel of a masked ring from it)."""
    if scale == 1.0 or tokens is None or net.words is None:
        return net(x_s, s, extra, tokens, offsets)
    n = x_s.shape[0]
    s = s.reshape(-1).expand(n) if s.numel() == 1 else s
    empty_ids, empty_offsets = null_tokens(n)
    ids = torch.cat([tokens, empty_ids.to(tokens.device)])
    bags = torch.cat([offsets, empty_offsets.to(offsets.device) + tokens.numel()])
    both = net(torch.cat([x_s, x_s]), torch.cat([s, s]), None if extra is None else torch.cat([extra, extra]), ids, bags)
    conditional, unconditional = both.chunk(2)
    return (unconditional + scale * (conditional - unconditional)).clamp(-1, 1)


# ---- the model file: safetensors, the ColdConfig as JSON in its metadata --------------------------------------

COLD_METADATA_KEY = "studio_cold_config"


def caption_tokens(captions: list[str], words: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag input for a batch of captions: ids into `words`, words the model does not know left out (id 0
    stands for a caption with no known word)."""
    index = {w: i + 1 for i, w in enumerate(words)}
    ids, offsets = [], []
    for text in captions:
        offsets.append(len(ids))
        found = [i for i in (index.get(w, 0) for w in _WORD.findall(text.lower())) if i]  # unknown words add nothing
        ids.extend(found or [0])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


_WORD = __import__("re").compile(r"[a-z]+")


def save_cold_file(net: RestorationNet, words: tuple[str, ...], path, dtype: torch.dtype = torch.float16,
                   prior: StartPrior | None = None) -> None:
    import json

    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in net.state_dict().items()}
    if prior is not None:
        tensors.update(prior.tensors())
    metadata = {COLD_METADATA_KEY: json.dumps(net.config.to_json()), "studio_cold_words": json.dumps(list(words))}
    save_file(tensors, str(path), metadata=metadata)


def read_cold_header(path) -> tuple[ColdConfig, tuple[str, ...]] | None:
    """The config and caption words of a cold model file, or None when the file is not one."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if COLD_METADATA_KEY not in metadata:
        return None
    return ColdConfig.from_json(json.loads(metadata[COLD_METADATA_KEY])), tuple(
        json.loads(metadata.get("studio_cold_words", "[]"))
    )


def load_cold_file(path, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[RestorationNet, tuple[str, ...]]:
    from safetensors.torch import load_file

    header = read_cold_header(path)
    if header is None:
        raise ValueError(f"{path} is not a cold model file")
    config, words = header
    net = RestorationNet(config)
    tensors = load_file(str(path))
    net.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items() if not k.startswith(START_PRIOR)})
    return net.to(device=device, dtype=dtype).eval(), words


def read_start_prior(path) -> StartPrior | None:
    """The file's low-frequency start prior, or None (the flat start of §5.1)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        fields = ("frequencies", "coefficients", "bandwidth")
        if not all(START_PRIOR + f in names for f in fields):
            return None
        prior = StartPrior(*(handle.get_tensor(START_PRIOR + f) for f in fields))
    k = prior.frequencies.shape[0]
    if prior.frequencies.shape != (k, 2) or prior.coefficients.shape[1:] != (3, k) or prior.bandwidth.shape != (3, k):
        raise ValueError(f"{path}: the start prior's tensors do not fit together")
    return prior
