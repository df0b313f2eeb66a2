"""A model's configuration checked before anything is built from it.

A studio model file carries its ModelConfig as JSON in the safetensors metadata (loading.py), and a checkpoint's
config is inferred from its tensors' shapes (checkpoint_layout.py); either can be wrong or hostile. Every value is
checked here for its type and a range that covers every Stable Diffusion 1.x/2.x model (docs/checkpoints.md) with
room to spare, so that building the modules (on the meta device, no memory) takes bounded time, the tables built
for real (the noise schedule, the preview map) stay small, and a bad value is one sentence instead of a traceback
deep inside torch. The parameter count is then compared with the tensors the file actually holds
(`check_parameter_count`), before any tensor is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .archives import ModelLoadError
from .model import ModelConfig
from .schedules import SPACINGS, ScheduleConfig
from .text_encoder import TextEncoderConfig
from .tokenizer import EOS_ID
from .unet import UNetConfig
from .vae import VAEConfig

MAX_CONFIG_JSON = 1 << 20  # bytes; a real config is about 1 KB
SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")
ACTIVATIONS = ("quick_gelu", "gelu")
PREDICTIONS = ("epsilon", "v")

# (low, high) for every integer field. SD 1.x/2.x: UNet 4 levels × 2 ResBlocks, transformer depth 1, width 320,
# VAE 4 levels × 2, text encoder 12–23 layers of width 768–1024. The caps bound the modules built: at most
# 6 levels × (2·4 + 1) blocks × 10 transformer blocks each.
UNET_INTS = {
    "in_channels": (1, 64), "out_channels": (1, 64), "model_channels": (1, 4096), "num_res_blocks": (1, 4),
    "context_dim": (1, 8192), "transformer_depth": (1, 10), "norm_groups": (1, 1024),
}
VAE_INTS = {"in_channels": (1, 16), "out_channels": (1, 16), "ch": (1, 2048), "num_res_blocks": (1, 4),
            "z_channels": (1, 64), "norm_groups": (1, 1024)}
TEXT_INTS = {"vocab_size": (1, 1 << 20), "max_length": (3, 1024), "width": (1, 8192), "layers": (1, 48),
             "heads": (1, 256), "mlp_ratio": (1, 16)}
SCHEDULE_INTS = {"num_train_timesteps": (2, 100_000), "steps_offset": (0, 99_999)}
MAX_LEVELS = 6
MAX_MULT = 16
MAX_PREVIEW_HIDDEN = 1024


class _Fail(Exception):
    pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(where: str, value: Any, low: int, high: int) -> int:
    if not _is_int(value):
        raise _Fail(f"{where} must be a whole number, got {_show(value)}")
    if not low <= value <= high:
        raise _Fail(f"{where} must be between {low} and {high}, got {value}")
    return value


def _number(where: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    if not _is_number(value):
        raise _Fail(f"{where} must be a finite number, got {_show(value)}")
    if value > high or value < low or (open_low and value == low):
        bound = f"above {low}" if open_low else f"at least {low}"
        raise _Fail(f"{where} must be {bound} and at most {high}, got {value}")
    return float(value)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Fail(f"{where} must be true or false, got {_show(value)}")
    return value


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _Fail(f"{where} must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _int_tuple(where: str, value: Any, low: int, high: int, min_len: int, max_len: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Fail(f"{where} must be a list of whole numbers, got {_show(value)}")
    if not min_len <= len(value) <= max_len:
        raise _Fail(f"{where} must have {min_len} to {max_len} entries, got {len(value)}")
    return tuple(_int(f"{where}[{i}]", v, low, high) for i, v in enumerate(value))


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, bool)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields(where: str, kind: type, raw: Any) -> dict[str, Any]:
    """The known fields of `raw` (a JSON object); unknown ones are ignored (a newer file's additions)."""
    if not isinstance(raw, dict):
        raise _Fail(f"{where} must be an object, got {_show(raw)}")
    known = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in raw.items() if k in known}


def _defaults(kind: type) -> dict[str, Any]:
    return {f.name: getattr(kind(), f.name) for f in dataclasses.fields(kind)}


# -- the parts ----------------------------------------------------------------------------------------------------

def _unet(raw: Any) -> UNetConfig:
    values = {**_defaults(UNetConfig), **_fields("unet", UNetConfig, raw)}
    for name, (low, high) in UNET_INTS.items():
        values[name] = _int(f"unet.{name}", values[name], low, high)
    mult = _int_tuple("unet.channel_mult", values["channel_mult"], 1, MAX_MULT, 1, MAX_LEVELS)
    levels = range(len(mult))
    attention = _int_tuple("unet.attention_levels", values["attention_levels"], 0, len(mult) - 1, 0, len(mult))
    if len(set(attention)) != len(attention):
        raise _Fail(f"unet.attention_levels lists a level twice: {list(attention)}")
    for name in ("use_linear_projection", "upcast_attention"):
        values[name] = _bool(f"unet.{name}", values[name])
    heads, head_channels = values["num_heads"], values["num_head_channels"]
    if head_channels is not None:
        head_channels = _int("unet.num_head_channels", head_channels, 1, 1024)
    elif heads is not None:
        heads = _int("unet.num_heads", heads, 1, 256)
    else:
        raise _Fail("unet needs num_heads or num_head_channels")
    groups, width = values["norm_groups"], values["model_channels"]
    for level in levels:
        channels = width * mult[level]
        if channels % groups:
            raise _Fail(f"unet level {level} has {channels} channels, not a multiple of norm_groups {groups}")
        if level in attention:
            split = head_channels or heads
            if channels % split:
                raise _Fail(f"unet level {level} has {channels} channels, which {split}-wide heads cannot split"
                            if head_channels else f"unet level {level} has {channels} channels, which "
                            f"{heads} heads cannot split")
    if width % groups:
        raise _Fail(f"unet.model_channels {width} is not a multiple of norm_groups {groups}")
    return UNetConfig(**{**values, "channel_mult": mult, "attention_levels": attention, "num_heads": heads,
                         "num_head_channels": head_channels})


def _vae(raw: Any) -> VAEConfig:
    values = {**_defaults(VAEConfig), **_fields("vae", VAEConfig, raw)}
    for name, (low, high) in VAE_INTS.items():
        values[name] = _int(f"vae.{name}", values[name], low, high)
    mult = _int_tuple("vae.ch_mult", values["ch_mult"], 1, MAX_MULT, 1, MAX_LEVELS)
    values["scaling_factor"] = _number("vae.scaling_factor", values["scaling_factor"], 0.0, 1000.0, open_low=True)
    values["mid_attention"] = _bool("vae.mid_attention", values["mid_attention"])
    groups = values["norm_groups"]
    for level, m in enumerate(mult):
        if (values["ch"] * m) % groups:
            raise _Fail(f"vae level {level} has {values['ch'] * m} channels, not a multiple of norm_groups {groups}")
    return VAEConfig(**{**values, "ch_mult": mult})


def _text(raw: Any) -> TextEncoderConfig:
    values = {**_defaults(TextEncoderConfig), **_fields("text", TextEncoderConfig, raw)}
    for name, (low, high) in TEXT_INTS.items():
        values[name] = _int(f"text.{name}", values[name], low, high)
    values["activation"] = _choice("text.activation", values["activation"], ACTIVATIONS)
    values["layer_norm_eps"] = _number("text.layer_norm_eps", values["layer_norm_eps"], 0.0, 1.0, open_low=True)
    if values["width"] % values["heads"]:
        raise _Fail(f"text.width {values['width']} is not a multiple of text.heads {values['heads']}")
    if values["vocab_size"] <= EOS_ID:  # every id the CLIP tokenizer emits must have an embedding
        raise _Fail(f"text.vocab_size {values['vocab_size']} is smaller than the tokenizer's {EOS_ID + 1} ids")
    return TextEncoderConfig(**values)


def _schedule(raw: Any) -> ScheduleConfig:
    values = {**_defaults(ScheduleConfig), **_fields("schedule", ScheduleConfig, raw)}
    for name, (low, high) in SCHEDULE_INTS.items():
        values[name] = _int(f"schedule.{name}", values[name], low, high)
    values["kind"] = _choice("schedule.kind", values["kind"], SCHEDULE_KINDS)
    values["spacing"] = _choice("schedule.spacing", values["spacing"], SPACINGS)
    start = _number("schedule.beta_start", values["beta_start"], 0.0, 0.999, open_low=True)
    end = _number("schedule.beta_end", values["beta_end"], 0.0, 0.999, open_low=True)
    if start > end:
        raise _Fail(f"schedule.beta_start {start} is above schedule.beta_end {end}")
    if values["steps_offset"] >= values["num_train_timesteps"]:
        raise _Fail(f"schedule.steps_offset {values['steps_offset']} is not below num_train_timesteps "
                    f"{values['num_train_timesteps']}")
    return ScheduleConfig(**{**values, "beta_start": start, "beta_end": end})


def _rows(where: str, value: Any, count: int, width: int) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise _Fail(f"{where} must be {count} rows, got {_show(value)}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise _Fail(f"{where}[{i}] must be {width} numbers, got {_show(row)}")
        rows.append(tuple(_number(f"{where}[{i}]", v, -1e6, 1e6) for v in row))
    return tuple(rows)


def config_from_dict(raw: Any) -> ModelConfig:
    """A ModelConfig from parsed JSON, every value checked; raises `_Fail` with the sentence to show."""
    if not isinstance(raw, dict):
        raise _Fail(f"the model config must be an object, got {_show(raw)}")
    defaults = ModelConfig()
    unet = _unet(raw.get("unet", dataclasses.asdict(defaults.unet)))
    vae = _vae(raw.get("vae", dataclasses.asdict(defaults.vae)))
    text = _text(raw.get("text", dataclasses.asdict(defaults.text)))
    schedule = _schedule(raw.get("schedule", dataclasses.asdict(defaults.schedule)))
    prediction = _choice("prediction", raw.get("prediction", defaults.prediction), PREDICTIONS)
    pad_id = _int("pad_id", raw.get("pad_id", defaults.pad_id), 0, text.vocab_size - 1)
    default_size = _int("default_size", raw.get("default_size", defaults.default_size), 8, 16384)
    default_cfg = _number("default_cfg", raw.get("default_cfg", defaults.default_cfg), 0.0, 100.0)
    name = raw.get("name", defaults.name)
    if not isinstance(name, str) or len(name) > 256:
        raise _Fail(f"name must be text of at most 256 characters, got {_show(name)}")
    hidden_raw, rgb_raw = raw.get("latent_rgb_hidden"), raw.get("latent_rgb")
    hidden = rgb = None
    if hidden_raw is not None:
        if not isinstance(hidden_raw, (list, tuple)) or not hidden_raw or not isinstance(hidden_raw[0], (list, tuple)):
            raise _Fail(f"latent_rgb_hidden must be rows of numbers, got {_show(hidden_raw)}")
        size = len(hidden_raw[0])
        if not 1 <= size <= MAX_PREVIEW_HIDDEN:
            raise _Fail(f"latent_rgb_hidden rows must have 1 to {MAX_PREVIEW_HIDDEN} numbers, got {size}")
        hidden = _rows("latent_rgb_hidden", hidden_raw, vae.z_channels + 1, size)
    if rgb_raw is not None:
        rgb = _rows("latent_rgb", rgb_raw, (len(hidden[0]) if hidden else vae.z_channels) + 1, 3)
    elif hidden is not None:
        raise _Fail("latent_rgb_hidden is given without latent_rgb")
    config = ModelConfig(unet=unet, vae=vae, text=text, schedule=schedule, prediction=prediction, pad_id=pad_id,
                         default_size=default_size, default_cfg=default_cfg, latent_rgb=rgb,
                         latent_rgb_hidden=hidden, name=name)
    check_config(config)
    return config


def parse_config(text: Any) -> ModelConfig:
    """A ModelConfig from the JSON a studio model file carries; a ModelLoadError (without the file name) if it
    is not valid JSON or any value is out of range."""
    if not isinstance(text, str) or len(text) > MAX_CONFIG_JSON:
        raise ModelLoadError("the model config is not JSON text of at most 1 MB")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ModelLoadError("the model config is not valid JSON") from None
    try:
        return config_from_dict(raw)
    except _Fail as exc:
        raise ModelLoadError(f"invalid model config: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_config(config: ModelConfig) -> None:
    """The checks that need the whole config: the parts fit together. Raises `_Fail`."""
    if config.unet.out_channels != config.vae.z_channels:
        raise _Fail(f"the UNet outputs {config.unet.out_channels} channels but the VAE's latent has "
                    f"{config.vae.z_channels}")
    if config.unet.in_channels not in (config.vae.z_channels, 2 * config.vae.z_channels + 1):
        raise _Fail(f"the UNet takes {config.unet.in_channels} channels; the VAE's latent has "
                    f"{config.vae.z_channels} (so {config.vae.z_channels} or {2 * config.vae.z_channels + 1})")
    if config.unet.context_dim != config.text.width:
        raise _Fail(f"the UNet reads a {config.unet.context_dim}-wide context but the text encoder is "
                    f"{config.text.width} wide")


def validated(config: ModelConfig, source: str) -> ModelConfig:
    """`config` (however it was made: read from a file or inferred from a checkpoint's shapes) re-checked value
    by value; a ModelLoadError naming `source` otherwise."""
    try:
        return config_from_dict(json.loads(config.to_json()))
    except _Fail as exc:
        raise ModelLoadError(f"{source}: invalid model config: {exc}") from None


def check_parameter_count(expected: int, available: int, source: str) -> None:
    """The modules the config describes need `expected` numbers; the file holds `available`. Far fewer in the file
    means the config describes a model the file does not hold: say so before reading anything. (A small gap is left
    to the name-by-name check, whose message names the tensor.)"""
    if expected > 1.25 * available:
        raise ModelLoadError(f"{source}: the model config describes {_count(expected)} parameters but the file "
                             f"holds only {_count(available)}")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
