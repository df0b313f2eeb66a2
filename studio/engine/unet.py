"""The Stable Diffusion UNet (LDM `openaimodel.py UNetModel`), with the checkpoint's own module names.

Every attribute path below is a key path of `model.diffusion_model.*` in an original SD single-file checkpoint
(the LDM UNet of Rombach et al. 2022, built after Dhariwal & Nichol 2021's ADM), so
`UNetModel(UNetConfig.sd1()).load_state_dict(sd, strict=True)` needs no mapping table.
Shapes for SD1 at 512 px: latent (B, 4, 64, 64), context (B, 77, 768); levels 64 → 32 → 16 → 8 px.

Latent sides need not be multiples of the UNet's downsampling: a stride-2 conv takes a side n to ⌈n/2⌉, and each
upsampler is handed the size of the skip it will be concatenated with and resamples (nearest) to exactly that
size, as diffusers' `UNet2DConditionModel` does with `upsample_size`. So a 96×64 image (latent 12×8) works:
12 → 6 → 3 → 2 on the way down, 2 → 3 → 6 → 12 on the way up.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # latent channels; 9 for inpainting (latent + mask + masked latent; LDM paper Sec. 4.5)
    out_channels: int = 4  # ε or v, same shape as the latent
    model_channels: int = 320  # width of the first level; time embedding is 4× this
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # width per level: 320, 640, 1280, 1280
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (0, 1, 2)  # levels (index into channel_mult) with a SpatialTransformer
    num_heads: int | None = 8  # SD1: fixed head count, head width grows with the level (40, 80, 160)
    num_head_channels: int | None = None  # SD2: fixed head width 64, head count grows (5, 10, 20); wins if set
    context_dim: int = 768  # text-encoder width read by cross-attention (SD2: 1024)
    transformer_depth: int = 1  # BasicTransformerBlocks per SpatialTransformer
    use_linear_projection: bool = False  # SD2: proj_in/proj_out are Linear on (B, HW, C), SD1: 1×1 convs
    norm_groups: int = 32  # GroupNorm groups everywhere
    upcast_attention: bool = False  # fp16/bf16 attention in float32 (SD 2.1 NaNs without it; Stability ATTN_PRECISION)

    @classmethod
    def sd1(cls) -> "UNetConfig":
        return cls()

    @classmethod
    def sd2(cls) -> "UNetConfig":
        return cls(
            num_heads=None,
            num_head_channels=64,
            context_dim=1024,
            use_linear_projection=True,
            upcast_attention=True,  # Stability's ATTN_PRECISION="fp32"; a no-op in float32
        )

    @classmethod
    def tiny(cls) -> "UNetConfig":
        """A few hundred thousand parameters: builds in milliseconds, for tests and smoke runs."""
        return cls(
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(1,),
            num_heads=2,
            context_dim=32,
            norm_groups=8,
        )

    def head_layout(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a transformer over `channels`, as LDM derives it."""
        if self.num_head_channels is not None:
            return channels // self.num_head_channels, self.num_head_channels
        if self.num_heads is None:
            raise ValueError("UNetConfig needs num_heads or num_head_channels")
        return self.num_heads, channels // self.num_heads


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (LDM `util.py timestep_embedding`), cos first: [cos(t·f_k), sin(t·f_k)],
    f_k = exp(−ln(max_period)·k/half). Computed in float32 from float t, so fractional timesteps are fine."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm in float32, cast back (LDM `GroupNorm32`): half-precision statistics over thousands of pixels
    lose too many digits, and this lets fp16/bf16 weights run on devices without half GroupNorm kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.bfloat16 and self.weight is not None \
                and self.weight.dtype == x.dtype:
            # torch's CPU kernel reads bf16 and keeps its statistics in float32 already (its accumulate type); the
            # float copy in and out cost 10-25x the norm itself (bf16 VAE decode at 256 px: docs/numerics.md)
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def silu_after_norm(h: torch.Tensor) -> torch.Tensor:
    """SiLU of a norm's fresh output, in place when no gradient is recorded: the norm's output has no other reader,
    so this saves an activation-sized allocation and write per ResBlock (the VAE decoder's are 8-33 MB each at
    256 px). Guidance, which differentiates through the model, gets the ordinary SiLU."""
    return F.silu(h, inplace=not torch.is_grad_enabled())


class SiLUAfterNorm(nn.SiLU):
    """nn.SiLU placed right after a GroupNorm32 (same checkpoint keys: it has no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_after_norm(x)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(SiLU(emb)); h = conv(SiLU(GN(h))); out = skip(x) + h."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), SiLUAfterNorm(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # index 2 is LDM's Dropout; kept so the second conv is out_layers.3 as in the checkpoint
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            SiLUAfterNorm(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention softmax(QKᵀ/√d)V of x over `context` (x itself for self-attention)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 upcast: bool = False):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.upcast = upcast
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))
        self._context_cache: tuple | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:
            k, v = self._context_keys_values(context)
        q = self.to_q(x)
        b, n, inner = q.shape
        # (B, L, H·d) → (B, H, L, d); the key length L is whatever the context has (77, 154, ...)
        q, k, v = (t.view(b, -1, self.heads, inner // self.heads).transpose(1, 2) for t in (q, k, v))
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/√d by default
        out = out.to(dtype).transpose(1, 2).reshape(b, n, inner)
        return self.to_out(out)

    def _context_keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the prompt's embedding. A sampler hands the UNet the same context tensor at every step, so
        where no gradient is recorded they are computed once per context and reused: SD1.5 at 256 px on 2 CPU
        threads spends 1.9 % of a UNet call's CPU time projecting the 77 context tokens 32 times (docs/numerics.md). The
        cache holds the tensor weakly and checks its version (an in-place edit) and the inference mode (an
        inference-mode tensor cannot enter a recorded graph); new weights (`.to()`, `load_state_dict`) clear it,
        and a plain Linear's weight edited in place (an EMA update) changes its version. (A packed layer's weight,
        cpu_kernels.py, is not read here: reading it would unpack it; packed weights belong to loaded models.)"""
        if torch.is_grad_enabled() or torch.jit.is_tracing():  # (a trace must record the projections)
            return self.to_k(context), self.to_v(context)
        key = (_version(context), torch.is_inference_mode_enabled(),
               *(_version(layer.weight) for layer in (self.to_k, self.to_v) if type(layer) is nn.Linear))
        cached = self._context_cache
        if cached is not None and cached[0]() is context and cached[1] == key:
            return cached[2]
        keys_values = self.to_k(context), self.to_v(context)
        self._context_cache = (weakref.ref(context), key, keys_values)
        return keys_values

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: new weights, so new projections
        self._context_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._context_cache = None
        super()._load_from_state_dict(*args, **kwargs)


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place edit counter; an inference tensor keeps none (nothing here edits one in place)."""
    return None if tensor.is_inference() else tensor._version


class GEGLU(nn.Module):
    """GLU variant with a GELU gate (Shazeer 2020): proj → halves (h, g) → h·gelu(g)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, upcast: bool):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, upcast=upcast)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, upcast=upcast)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Image (B, C, H, W) → tokens (B, HW, C) → transformer blocks → image, plus the input (residual)."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        heads, dim_head = config.head_layout(channels)
        inner = heads * dim_head
        self.linear = config.use_linear_projection
        self.norm = GroupNorm32(config.norm_groups, channels, eps=1e-6)
        # SD1 projects with 1×1 convs before flattening, SD2 with Linear after: same maths, different shapes
        self.proj_in = nn.Linear(channels, inner) if self.linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, config.context_dim, config.upcast_attention)
            for _ in range(config.transformer_depth)
        )
        # LDM zero-initialises proj_out (a fresh block starts as identity). We only ever load trained weights
        # or run random test models, where a zero here would hide cross-attention entirely, so keep the default.
        self.proj_out = nn.Linear(inner, channels) if self.linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c; a free view for channels_last inputs
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour resampling, ×2 or to `size` (the skip it will meet when a side was odd), then conv3×3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # To `size` whenever it is known, even when it is exactly ×2 (nearest picks the same pixels either way): no
        # branch on the input's shape, so a traced UNet (openvino_unet.py) keeps working at odd sizes too.
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands each layer what it reads: ResBlocks the time embedding, transformers the text,
    an upsampler the size of the skip connection that waits for its output."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        mc, groups = config.model_channels, config.norm_groups
        emb_dim = 4 * mc
        last = len(config.channel_mult) - 1

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, emb_dim, c_out, groups)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # Encoder: every block's output is kept for a skip connection, so remember their widths.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mc * mult)]
                ch = mc * mult
                if level in config.attention_levels:
                    layers.append(SpatialTransformer(ch, config))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(res(ch, ch), SpatialTransformer(ch, config), res(ch, ch))

        # Decoder: one more ResBlock per level than the encoder, each eating one skip (popped in reverse).
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if level in config.attention_levels:
                    layers.append(SpatialTransformer(ch, config))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(groups, ch), SiLUAfterNorm(), nn.Conv2d(mc, config.out_channels, 3, padding=1)
        )

    @property
    def downsample_factor(self) -> int:
        """How much smaller the deepest level is than the latent (any latent size works, see the module note)."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), timesteps (B,) float (or a scalar), context (B, L, context_dim) → (B, C_out, H, W)."""
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # the block's upsampler (if any) must land on the next skip's size: ⌈n/2⌉ below may double to n + 1
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h)
