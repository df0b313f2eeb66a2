"""The SD KL autoencoder (LDM `model.py Encoder/Decoder` + `AutoencoderKL`), with the checkpoint's module names.

Attribute paths are the key paths of `first_stage_model.*` in an SD single-file checkpoint
(docs/checkpoints.md, "VAE"). Shapes for SD at 512 px: image (B, 3, 512, 512) in [−1, 1] ↔ unscaled latent
z (B, 4, 64, 64). The UNet works on z·scaling_factor; this module neither applies nor removes that factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .unet import GroupNorm32, Upsample, silu_after_norm  # the same nearest ×2 + conv3×3 as the UNet, same key `conv`


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3  # RGB in
    out_channels: int = 3  # RGB out
    ch: int = 128  # width of the full-resolution level
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # width per level: 128, 256, 512, 512 → downsampling factor 8
    num_res_blocks: int = 2  # ResnetBlocks per encoder level (the decoder has one more)
    z_channels: int = 4  # latent channels
    scaling_factor: float = 0.18215  # UNet input z_s = scaling_factor·z (SD1/2): ~unit variance, Rombach et al. 2022
    norm_groups: int = 32  # GroupNorm groups everywhere
    mid_attention: bool = True  # single-head self-attention between the two mid ResnetBlocks

    @classmethod
    def sd(cls) -> "VAEConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """Downsampling factor 2 and ~0.5 M parameters: builds in milliseconds, for tests and smoke runs."""
        return cls(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8)


class DiagonalGaussian:
    """q(z|x) = N(mean, exp(logvar)) from the encoder's 2·z moments (LDM `DiagonalGaussianDistribution`)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite in both directions
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Draw float32 noise on the generator's device (a seeded CPU generator gives the same z on every device
        # and dtype), then move it next to the mean.
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * noise.to(self.mean.device, self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean


class ResnetBlock(nn.Module):
    """GN → SiLU → conv → GN → SiLU → conv, plus a (1×1 when widths differ) shortcut; no time embedding."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm32(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm32(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu_after_norm(self.norm1(x)))
        h = self.conv2(silu_after_norm(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, q/k/v/proj_out as 1×1 convs, scale 1/√C; residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = GroupNorm32(groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, C, H, W) → (B, 1 head, HW, C), contiguous: strided inputs send SDPA down its math path, which holds
        # the (HW)² scores (17 GB for a 256×256 latent); contiguous ones take the fused kernels, linear in HW
        q, k, v = (t(y).flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LDM pads right/bottom only, then a stride-2 conv with no padding (unlike the UNet's symmetric pad 1)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Level(nn.Module):
    """One resolution level: `block.j` ResnetBlocks, then an optional `downsample` / `upsample`."""

    def __init__(self, blocks: list[ResnetBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        groups, last = config.norm_groups, len(config.ch_mult) - 1
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = config.ch
        for i, mult in enumerate(config.ch_mult):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(ch, config.ch * mult, groups))
                ch = config.ch * mult
            level = _Level(blocks)
            if i != last:
                level.downsample = Downsample(ch)
            self.down.append(level)
        self.mid = _Mid(ch, groups, config.mid_attention)
        self.norm_out = GroupNorm32(groups, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2 * config.z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(silu_after_norm(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        groups = config.norm_groups
        ch = config.ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, ch, 3, padding=1)
        self.mid = _Mid(ch, groups, config.mid_attention)
        # up.i is resolution level i (as in the encoder), so it is built, and run, from the last level down to 0
        levels: list[_Level] = []
        for i in reversed(range(len(config.ch_mult))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, config.ch * config.ch_mult[i], groups))
                ch = config.ch * config.ch_mult[i]
            level = _Level(blocks)
            if i != 0:
                level.upsample = Upsample(ch)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = GroupNorm32(groups, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(silu_after_norm(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        z2 = 2 * config.z_channels
        self.quant_conv = nn.Conv2d(z2, z2, 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    def encode(self, image: torch.Tensor) -> DiagonalGaussian:
        """(B, 3, H, W) in [−1, 1] → q(z|x) over the unscaled latent (B, z, H/f, W/f)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(image)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, z, h, w) → image (B, 3, h·f, w·f), roughly in [−1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(z))
