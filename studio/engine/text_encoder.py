"""The CLIP text transformer (Radford et al. 2021) in the Hugging Face `CLIPTextModel` layout.

`CLIPTextModel(cfg).state_dict()` keys start with `text_model.`, exactly as under
`cond_stage_model.transformer.` in an SD1 single-file checkpoint. SD2's OpenCLIP tower uses other
names; converted to this layout it is `TextEncoderConfig.sd2()` (docs/checkpoints.md, "Text encoders").

`embeddings.position_ids`: HF registers it as a buffer and many checkpoints store it (some as float). It carries
no information (it is 0..max_length−1), so this model has no such buffer: positions are made with `arange` in
`forward`, and a stored `position_ids` is dropped on load, so strict loading of either kind of file works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408  # CLIP BPE vocabulary (both SD1 and SD2 tokenizers)
    max_length: int = 77  # context length; number of position embeddings
    width: int = 768  # hidden size = context_dim the UNet's cross-attention reads
    layers: int = 12  # transformer blocks
    heads: int = 12  # attention heads (head width = width / heads = 64)
    mlp_ratio: int = 4  # MLP hidden = mlp_ratio · width
    activation: Activation = "quick_gelu"  # OpenAI CLIP: x·sigmoid(1.702x); OpenCLIP (SD2): exact erf GELU
    layer_norm_eps: float = 1e-5

    @classmethod
    def clip_l(cls) -> "TextEncoderConfig":
        """OpenAI CLIP ViT-L/14 text tower (SD1)."""
        return cls()

    @classmethod
    def sd2(cls) -> "TextEncoderConfig":
        """OpenCLIP ViT-H/14 text tower as SD2 uses it: the first 23 of 24 blocks ("penultimate"), then the
        final LayerNorm, so skip_layers=0 gives SD2's context (diffusers' converted SD2 text encoder)."""
        return cls(width=1024, layers=23, heads=16, activation="gelu")

    @classmethod
    def tiny(cls) -> "TextEncoderConfig":
        """Real vocabulary size (the tokenizer's ids must fit), everything else tiny."""
        return cls(width=32, layers=2, heads=2)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.token_embedding = _embedding(config.vocab_size, config.width)
        self.position_embedding = _embedding(config.max_length, config.width)
        self.register_load_state_dict_pre_hook(_drop_position_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


def _embedding(count: int, width: int) -> nn.Embedding:
    """nn.Embedding with its usual N(0, 1) start, except on the meta device, where a model file's weights are about
    to replace it: torch has no meta kernel for `normal_`, and its Python fallback imports torch._dynamo, which
    took 2.3 s of every model load from a file (docs/numerics.md, "The first start")."""
    weight = torch.empty(count, width)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(count, width, _weight=weight)


def _drop_position_ids(module, state_dict, prefix, *args) -> None:
    state_dict.pop(prefix + "position_ids", None)


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention: token i attends to tokens j ≤ i only."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        width = config.width
        self.heads = config.heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, width // self.heads).transpose(1, 2)  # (B, H, L, d)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/√d
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class CLIPMLP(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_ratio * config.width)
        self.fc2 = nn.Linear(config.mlp_ratio * config.width, config.width)
        self.activation = quick_gelu if config.activation == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN block: h += attn(ln1(h)); h += mlp(ln2(h))."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.layer_norm1(h))
        return h + self.mlp(self.layer_norm2(h))


class CLIPEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, skip_layers: int = 0) -> torch.Tensor:
        h = self.embeddings(input_ids)
        layers = self.encoder.layers
        for layer in layers[: len(layers) - skip_layers]:
            h = layer(h)
        return self.final_layer_norm(h)


class CLIPTextModel(nn.Module):
    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def forward(self, input_ids: torch.Tensor, skip_layers: int = 0) -> torch.Tensor:
        """Token ids (B, L ≤ max_length) → context (B, L, width), every position (padding included).

        skip_layers=k stops after the first `layers − k` blocks, then applies final_layer_norm
        (A1111 "CLIP skip" k+1: skip_layers=1 is the penultimate layer)."""
        if input_ids.dim() != 2 or input_ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"input_ids must be (B, L) with L ≤ {self.config.max_length}, got {tuple(input_ids.shape)}"
            )
        if not 0 <= skip_layers < self.config.layers:
            raise ValueError(f"skip_layers must be in 0..{self.config.layers - 1}, got {skip_layers}")
        return self.text_model(input_ids, skip_layers)
