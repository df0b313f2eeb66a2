"""Checkpoint layouts: which family a set of tensor names is, how its names map onto ours, what shapes imply.

Our module names are the original SD single-file names (docs/checkpoints.md), so an SD1 file maps onto itself.
Everything else that needs translating is in this file, and only here:

- SD2's OpenCLIP text tower (`cond_stage_model.model.*`) → the HF CLIP layout we build (docs/checkpoints.md,
  "Text encoders");
- very old SD1 files whose text encoder lacks the `text_model.` level;
- diffusers folders (`unet/`, `vae/`, `text_encoder/`, docs/checkpoints.md) → the original names.

Names are mapped to `TensorRef`s (where our tensor comes from in the file, and how it is cut or reshaped), so every
name and shape can be checked against the model before a single tensor is read. `detect_config` then reads the
architecture from the mapped shapes alone: widths, depths, input channels and context size are in the tensors,
never in a file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .text_encoder import TextEncoderConfig
from .unet import UNetConfig
from .vae import VAEConfig

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer.text_model."  # where our CLIPTextModel's weights live
OPEN_CLIP = "cond_stage_model.model."  # SD2's text tower in the original files
OLD_SD1_TEXT = "cond_stage_model.transformer."  # very old SD1 files: no `text_model.` level

Shapes = dict[str, tuple[int, ...]]


class LayoutError(ValueError):
    """The tensors do not form a model we can run; the message says what they are or what is missing."""


@dataclass(frozen=True)
class TensorRef:
    """Where one of our tensors comes from: a tensor in the file, optionally one row block of it or reshaped."""

    source: str
    part: tuple[int, int] | None = None  # (i, n): rows [i·R/n, (i+1)·R/n), e.g. q/k/v of OpenCLIP's in_proj
    to_conv: bool = False  # Linear (C_out, C_in) → 1×1 conv (C_out, C_in, 1, 1) (diffusers' VAE attention)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.part is not None:
            shape = (shape[0] // self.part[1], *shape[1:])
        if self.to_conv and len(shape) == 2:
            shape = (*shape, 1, 1)
        return shape

    def apply(self, tensor: Any) -> Any:
        if self.part is not None:
            i, n = self.part
            rows = tensor.shape[0] // n
            tensor = tensor[i * rows : (i + 1) * rows]
        if self.to_conv and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]
        return tensor


# -- families we recognise but do not run -------------------------------------------------------------------------

def identify_unsupported(names: Iterable[str]) -> str | None:
    """A sentence naming the family of a checkpoint we cannot run yet, or None if it may be SD 1.x / 2.x."""
    names = list(names)

    def has(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    def contains(part: str) -> bool:
        return any(part in n for n in names)

    if contains("lora_down") or contains("lora_up") or contains(".lora_A.") or contains(".lora_B.") \
            or has("lora_unet_") or has("lora_te"):
        return "a LoRA (a set of low-rank weight deltas), not a full model; LoRAs are not supported yet"
    if has("string_to_param") or has("emb_params") or names == ["clip_l", "clip_g"]:
        return "a textual-inversion embedding, not a full model; embeddings are not supported yet"
    if has("conditioner.embedders.") or contains("add_embedding.linear_1") or has(UNET + "label_emb.0.0."):
        return "an SDXL-family checkpoint (SDXL base/refiner, Pony, Illustrious, …); SDXL is not supported yet"
    if has(UNET + "joint_blocks.") or has("joint_blocks.") or has("text_encoders.clip_g."):
        return "a Stable Diffusion 3 checkpoint; SD3 is not supported yet"
    if has("double_blocks.") or has(UNET + "double_blocks.") or contains("single_transformer_blocks."):
        return "a Flux checkpoint; Flux is not supported yet"
    if has("control_model.") or contains("input_hint_block") or has("controlnet_cond_embedding"):
        return "a ControlNet, not a full model; ControlNets are not supported yet"
    if has(UNET + "label_emb.") or has("embedder.model.") or has("noise_augmentor."):
        return "an unCLIP / upscaler checkpoint (class-conditioned UNet); it is not supported yet"
    if has(UNET + "input_blocks."):
        return None
    if has("down_blocks.") and has("up_blocks.") and has("conv_in."):
        return ("one component of a diffusers folder (a UNet in diffusers naming); open the whole folder, the one "
                "holding model_index.json")
    if has("encoder.conv_in.") and has("decoder.conv_in.") and not has("down_blocks."):
        return "a VAE on its own, not a full model; separate VAEs are not supported yet"
    if has("decoder.conv_in.") or has("encoder.down_blocks."):
        return "a VAE on its own (diffusers layout), not a full model; separate VAEs are not supported yet"
    if has("text_model.") or has("embeddings.token_embedding."):
        return "a text encoder on its own, not a full model"
    return None


# -- original single-file layout ----------------------------------------------------------------------------------

_IGNORED_PREFIXES = (
    "model_ema.",  # EMA copies (flattened names); "pruned/ema-only" files already hold EMA weights in place
    "cond_stage_model.model.visual.",  # OpenCLIP image tower, unused by SD
    "cond_stage_model.transformer.vision_model.",
)
_IGNORED_NAMES = {
    # LDM's schedule buffers (docs/checkpoints.md); we compute the schedule ourselves
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model_ema.decay", "model_ema.num_updates",
    OPEN_CLIP + "text_projection", OPEN_CLIP + "logit_scale", OPEN_CLIP + "attn_mask",
    TEXT + "embeddings.position_ids", OLD_SD1_TEXT + "embeddings.position_ids",
}


def map_single_file(names: Iterable[str], shapes: Shapes) -> tuple[dict[str, TensorRef], str]:
    """Our name → TensorRef for an original-layout file, and which text encoder it carries ("clip" / "open_clip")."""
    refs: dict[str, TensorRef] = {}
    names = list(names)
    open_clip_layers = _open_clip_layer_count(names)
    for name in names:
        if name in _IGNORED_NAMES or name.startswith(_IGNORED_PREFIXES):
            continue
        if name.startswith((UNET, VAE, TEXT)):
            refs[name] = TensorRef(name)
        elif name.startswith(OPEN_CLIP):
            for ours, ref in _open_clip_refs(name[len(OPEN_CLIP):], name, open_clip_layers):
                refs[TEXT + ours] = ref
        elif name.startswith(OLD_SD1_TEXT):
            refs[TEXT + name[len(OLD_SD1_TEXT):]] = TensorRef(name)
    text = "open_clip" if open_clip_layers else "clip"
    return refs, text


def _open_clip_layer_count(names: Iterable[str]) -> int:
    pattern = re.compile(re.escape(OPEN_CLIP) + r"transformer\.resblocks\.(\d+)\.")
    found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
    return max(found) + 1 if found else 0


_OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _open_clip_refs(local: str, name: str, layers: int) -> list[tuple[str, TensorRef]]:
    """OpenCLIP text-tower name → HF CLIP names (docs/checkpoints.md, "Text encoders"). SD2 reads the penultimate
    block's output ("penultimate" in Stability's FrozenOpenCLIPEmbedder), so the last block is dropped: 24 stored,
    23 used."""
    if local == "token_embedding.weight":
        return [("embeddings.token_embedding.weight", TensorRef(name))]
    if local == "positional_embedding":
        return [("embeddings.position_embedding.weight", TensorRef(name))]
    if local.startswith("ln_final."):
        return [("final_layer_norm." + local[len("ln_final."):], TensorRef(name))]
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)$", local)  # attn.in_proj_weight
    if m is None:
        return []  # text_projection, logit_scale, …: unused by SD
    block, inner, kind = int(m.group(1)), m.group(2), m.group(3)
    if block == layers - 1:
        return []
    layer = f"encoder.layers.{block}."
    if inner == "attn.in_proj":  # rows [q; k; v] of one (3W, W) matrix
        return [
            (f"{layer}self_attn.{proj}.{kind}", TensorRef(name, part=(i, 3)))
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj"))
        ]
    if inner in _OPEN_CLIP_BLOCK:
        return [(f"{layer}{_OPEN_CLIP_BLOCK[inner]}.{kind}", TensorRef(name))]
    return []


# -- diffusers folders (docs/checkpoints.md) ----------------------------------------------------------------------

_DIFFUSERS_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_DIFFUSERS_VAE_ATTENTION = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",  # older diffusers folders
}


def diffusers_unet_name(name: str, layers_per_block: int, levels: int, attention_levels: set[int]) -> str | None:
    """diffusers UNet2DConditionModel name → original name under `model.diffusion_model.` (None: not ours)."""
    n = layers_per_block
    direct = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head, _, param = name.rpartition(".")
    if head in direct:
        return f"{direct[head]}.{param}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", name):
        i, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        block = f"input_blocks.{(n + 1) * i + j + 1}"
        return f"{block}.0.{_resnet_name(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", name):
        return f"input_blocks.{(n + 1) * (int(m.group(1)) + 1)}.0.op.{m.group(2)}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", name):
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        return f"middle_block.{2 * j}.{_resnet_name(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", name):
        i, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        block = f"output_blocks.{(n + 1) * i + j}"
        return f"{block}.0.{_resnet_name(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", name):
        i = int(m.group(1))
        level = levels - 1 - i  # up_blocks run from the deepest level up
        index = 2 if level in attention_levels else 1  # after the ResBlock (and the transformer, if any)
        return f"output_blocks.{(n + 1) * i + n}.{index}.conv.{m.group(2)}"
    return None


def _resnet_name(rest: str) -> str:
    head, _, param = rest.rpartition(".")
    return f"{_DIFFUSERS_RESNET.get(head, head)}.{param}"


def diffusers_vae_name(name: str, levels: int) -> tuple[str, bool] | None:
    """diffusers AutoencoderKL name → (original name under `first_stage_model.`, Linear→1×1 conv?)."""
    head, _, param = name.rpartition(".")
    simple = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    if head in simple:
        return f"{simple[head]}.{param}", False
    if head in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                "quant_conv", "post_quant_conv"):
        return name, False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", name):
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_vae_resnet(m.group(3))}", False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", name):
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", name):
        level = levels - 1 - int(m.group(1))  # diffusers counts the decoder from the deepest level
        return f"decoder.up.{level}.block.{m.group(2)}.{_vae_resnet(m.group(3))}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", name):
        return f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}", False
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", name):
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_vae_resnet(m.group(3))}", False
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", name):
        inner = _DIFFUSERS_VAE_ATTENTION.get(m.group(2))
        if inner is None:
            return None
        return f"{m.group(1)}.mid.attn_1.{inner}.{m.group(3)}", inner != "norm"
    return None


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.")


def map_diffusers(components: dict[str, list[str]], unet_config: dict[str, Any]) -> dict[str, TensorRef]:
    """Our name → TensorRef for a diffusers folder; source names are "component/name"."""
    unet_names = components.get("unet", [])
    levels = len({m.group(1) for n in unet_names if (m := re.match(r"down_blocks\.(\d+)\.", n))})
    per_block = unet_config.get("layers_per_block")
    if per_block is None:
        per_block = len({m.group(1) for n in unet_names if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", n))})
    attention = {int(m.group(1)) for n in unet_names if (m := re.match(r"down_blocks\.(\d+)\.attentions\.", n))}
    refs: dict[str, TensorRef] = {}
    for name in unet_names:
        ours = diffusers_unet_name(name, int(per_block), levels, attention)
        if ours is not None:
            refs[UNET + ours] = TensorRef("unet/" + name)
    vae_names = components.get("vae", [])
    vae_levels = len({m.group(1) for n in vae_names if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", n))})
    for name in vae_names:
        mapped = diffusers_vae_name(name, vae_levels)
        if mapped is not None:
            refs[VAE + mapped[0]] = TensorRef("vae/" + name, to_conv=mapped[1])
    for name in components.get("text_encoder", []):
        local = name[len("text_model."):] if name.startswith("text_model.") else name
        if local.startswith(("embeddings.token", "embeddings.position_embedding", "encoder.", "final_layer_norm.")):
            refs[TEXT + local] = TensorRef("text_encoder/" + name)
    return refs


# -- architecture from shapes -------------------------------------------------------------------------------------

def _indices(shapes: Shapes, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for n in shapes if (m := regex.match(n))})


def _need(shapes: Shapes, name: str, what: str) -> tuple[int, ...]:
    if name not in shapes:
        raise LayoutError(f"{what} is missing (no tensor {name})")
    return shapes[name]


def detect_unet(shapes: Shapes, overrides: dict[str, Any] | None = None) -> UNetConfig:
    if not any(n.startswith(UNET) for n in shapes):
        raise LayoutError(f"the UNet is missing (no {UNET}* tensors)")
    conv_in = _need(shapes, UNET + "input_blocks.0.0.weight", "the UNet's input conv")
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = _need(shapes, UNET + "out.2.weight", "the UNet's output conv")[0]
    blocks = _indices(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\.")
    downs = [i for i in blocks if UNET + f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downs) + 1
    per_level, rest = divmod(len(blocks) - 1 - len(downs), levels)
    if rest or per_level < 1:
        raise LayoutError(f"the UNet's input blocks ({len(blocks)}) do not form the SD layout")
    mult, attention, context, linear, depth = [], [], None, False, 1
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        width = _need(shapes, UNET + f"input_blocks.{first}.0.out_layers.3.weight", f"UNet level {level}")[0]
        if width % model_channels:
            raise LayoutError(f"UNet level {level} has {width} channels, not a multiple of {model_channels}")
        mult.append(width // model_channels)
        if UNET + f"input_blocks.{first}.1.norm.weight" in shapes:
            attention.append(level)
    t = UNET + "middle_block.1."
    to_k = _need(shapes, t + "transformer_blocks.0.attn2.to_k.weight", "the UNet's middle transformer")
    context = to_k[1]
    linear = len(_need(shapes, t + "proj_in.weight", "the middle transformer's proj_in")) == 2
    depth = len(_indices(shapes, re.escape(t) + r"transformer_blocks\.(\d+)\."))
    widths = [model_channels * m for m in mult]
    attn_widths = [widths[lv] for lv in attention] + [widths[-1]]
    # Head count is not in the shapes (docs/checkpoints.md, "Telling variants apart"): SD2 (linear projections,
    # context 1024) uses 64-channel heads, SD1 8 heads; reduced-width models of either topology keep the rule where
    # the widths allow.
    if linear and all(w % 64 == 0 for w in attn_widths):
        heads: dict[str, Any] = {"num_heads": None, "num_head_channels": 64}
    elif all(w % 8 == 0 for w in attn_widths):
        heads = {"num_heads": 8, "num_head_channels": None}
    else:
        heads = {"num_heads": 1, "num_head_channels": None}
    fields: dict[str, Any] = dict(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels, channel_mult=tuple(mult),
        num_res_blocks=per_level, attention_levels=tuple(attention), context_dim=context, transformer_depth=depth,
        use_linear_projection=linear, norm_groups=_groups(widths),
        upcast_attention=linear or context == 1024,  # SD2 overflows in fp16 attention (docs/numerics.md)
        **heads,
    )
    fields.update(overrides or {})
    return UNetConfig(**fields)


def _groups(widths: list[int]) -> int:
    # GroupNorm's group count is not in the shapes; SD uses 32 everywhere. Reduced models keep 32 when they can.
    for groups in (32, 16, 8, 4, 2, 1):
        if all(w % groups == 0 for w in widths):
            return groups
    return 1


def detect_vae(shapes: Shapes, overrides: dict[str, Any] | None = None) -> VAEConfig:
    if not any(n.startswith(VAE) for n in shapes):
        raise LayoutError(f"the VAE is missing (no {VAE}* tensors)")
    conv_in = _need(shapes, VAE + "encoder.conv_in.weight", "the VAE encoder")
    ch = conv_in[0]
    levels = _indices(shapes, re.escape(VAE) + r"encoder\.down\.(\d+)\.")
    if not levels:
        raise LayoutError("the VAE encoder has no levels (no first_stage_model.encoder.down.* tensors)")
    per_level = len(_indices(shapes, re.escape(VAE) + r"encoder\.down\.0\.block\.(\d+)\."))
    mult = []
    for level in levels:
        width = _need(shapes, VAE + f"encoder.down.{level}.block.0.conv1.weight", f"VAE level {level}")[0]
        if width % ch:
            raise LayoutError(f"VAE level {level} has {width} channels, not a multiple of {ch}")
        mult.append(width // ch)
    z = _need(shapes, VAE + "decoder.conv_in.weight", "the VAE decoder")[1]
    fields: dict[str, Any] = dict(
        in_channels=conv_in[1], out_channels=_need(shapes, VAE + "decoder.conv_out.weight", "the VAE decoder")[0],
        ch=ch, ch_mult=tuple(mult), num_res_blocks=per_level, z_channels=z,
        norm_groups=_groups([ch * m for m in mult]),
        mid_attention=VAE + "encoder.mid.attn_1.q.weight" in shapes,
    )
    fields.update(overrides or {})
    return VAEConfig(**fields)


def detect_text(shapes: Shapes, activation: str, overrides: dict[str, Any] | None = None) -> TextEncoderConfig:
    if not any(n.startswith(TEXT) for n in shapes):
        raise LayoutError("the text encoder is missing (no cond_stage_model.* tensors)")
    vocab, width = _need(shapes, TEXT + "embeddings.token_embedding.weight", "the text encoder's token embedding")
    positions = _need(shapes, TEXT + "embeddings.position_embedding.weight", "the text encoder's positions")[0]
    layers = len(_indices(shapes, re.escape(TEXT) + r"encoder\.layers\.(\d+)\."))
    fc1 = _need(shapes, TEXT + "encoder.layers.0.mlp.fc1.weight", "the text encoder's first layer")
    fields: dict[str, Any] = dict(
        vocab_size=vocab, max_length=positions, width=width, layers=layers, mlp_ratio=fc1[0] // width,
        heads=width // 64 if width % 64 == 0 else 1,  # CLIP uses 64-wide heads (12 for ViT-L, 16 for ViT-H)
        activation=activation,
    )
    fields.update(overrides or {})
    return TextEncoderConfig(**fields)
