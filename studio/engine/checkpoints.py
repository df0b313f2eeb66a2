"""Opening the Stable Diffusion checkpoints users already have: single files and diffusers folders.

- `.safetensors` single files in the original layout (docs/checkpoints.md), memory-mapped;
- `.ckpt` / `.pt` / `.pth` / `.bin` only through `torch.load(weights_only=True)` (safe_pickle.py): nothing in
  the file is ever run, and a file that asks to run something is refused, naming what it asked for;
- diffusers folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `scheduler/`, `tokenizer/`).

The architecture comes from the tensors (checkpoint_layout.py); names and shapes are checked before any tensor is
read (materialize.py). Families we cannot run yet are named in the error, never a stack trace.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from .checkpoint_layout import (
    LayoutError,
    detect_text,
    detect_unet,
    detect_vae,
    identify_unsupported,
    map_diffusers,
    map_single_file,
)
from .archives import ModelLoadError, SafetensorsArchive, TensorArchive, sniff
from .files import FileProblem, open_regular
from .materialize import materialize
from .model import LatentDiffusion, ModelConfig, Prediction
from .safe_pickle import PickleArchive
from .schedules import SPACINGS, ScheduleConfig
from .tokenizer import EOS_ID

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_OTHER_FORMATS = {
    ".gguf": "a GGUF (quantised) file", ".onnx": "an ONNX export", ".engine": "a TensorRT engine",
    ".mlmodel": "a Core ML model", ".mlpackage": "a Core ML model", ".xml": "an OpenVINO model",
}
_UNET_CHANNEL_KINDS = {8: "an instruct-pix2pix model", 5: "an SD2 depth model", 7: "an x4 upscaler"}
_SHAPE_ERRORS = (IndexError, ZeroDivisionError, TypeError, ValueError, KeyError, AttributeError, OverflowError)


def load_checkpoint(
    path: str | Path, device: torch.device, dtype: torch.dtype, *, prediction: Prediction | None = None
) -> LatentDiffusion:
    """An SD 1.x / 2.x model (txt2img or 9-channel inpainting, any width) from a file or a diffusers folder."""
    path = Path(path)
    if path.is_dir():
        return _load_diffusers_folder(path, device, dtype, prediction)
    suffix = path.suffix.lower()
    try:
        kind = sniff(path)  # the bytes decide, not the name: a .safetensors renamed .ckpt still loads
    except FileProblem as exc:
        raise ModelLoadError(str(exc)) from None
    if kind == "safetensors" or (kind == "unknown" and suffix == ".safetensors"):
        archive: TensorArchive = SafetensorsArchive(path)
    elif kind in ("zip", "pickle") or (kind == "unknown" and suffix in PICKLE_SUFFIXES):
        archive = PickleArchive(path)
    elif kind == "gguf":
        raise ModelLoadError(f"{path.name}: this is {_OTHER_FORMATS['.gguf']}; such files are not supported yet")
    elif suffix in _OTHER_FORMATS:
        raise ModelLoadError(f"{path.name}: this is {_OTHER_FORMATS[suffix]}; such files are not supported yet")
    else:
        raise ModelLoadError(
            f"{path.name}: unknown model file type {suffix or '(no extension)'!r}; expected a .safetensors or .ckpt "
            "Stable Diffusion checkpoint, or a diffusers folder"
        )
    try:
        return _load_single_file(path, archive, device, dtype, prediction)
    finally:
        archive.close()


def _load_single_file(
    path: Path, archive: TensorArchive, device: torch.device, dtype: torch.dtype, prediction: Prediction | None
) -> LatentDiffusion:
    names = list(archive.shapes)
    if not names:
        raise ModelLoadError(f"{path.name}: the file holds no tensors")
    family = identify_unsupported(names)
    if family is not None:
        raise ModelLoadError(f"{path.name}: this is {family}")
    try:
        refs, text_kind = map_single_file(names, archive.shapes)
        shapes = {ours: ref.shape(tuple(archive.shapes[ref.source])) for ours, ref in refs.items()}
        open_clip = text_kind == "open_clip"
        config = ModelConfig(
            unet=detect_unet(shapes),
            vae=detect_vae(shapes),
            text=detect_text(shapes, "gelu" if open_clip else "quick_gelu"),
            pad_id=0 if open_clip else EOS_ID,  # open_clip pads with 0, HF's CLIP-L with eos (docs/checkpoints.md)
            name=path.stem,
        )
    except LayoutError as exc:
        raise ModelLoadError(f"{path.name}: not a complete Stable Diffusion 1.x/2.x checkpoint: {exc}") from None
    except _SHAPE_ERRORS:  # the layout code indexes shapes it expects: a hostile file's do not fit
        raise ModelLoadError(f"{path.name}: its tensors do not have the shapes of a Stable Diffusion 1.x/2.x "
                             "checkpoint") from None
    _check_config(config, path)
    prediction = prediction or _sidecar_prediction(path)
    model = materialize(config, archive, path, device, dtype, refs)
    if prediction is None:
        # SD1 and all inpainting models predict ε; SD2-768 (v) and SD2-base (ε) look alike (docs/checkpoints.md)
        sd2_like = config.unet.context_dim == 1024 or config.unet.use_linear_projection
        prediction = "v" if sd2_like and not model.is_inpainting and looks_like_v_prediction(model) else "epsilon"
    default_size = 768 if prediction == "v" and config.unet.context_dim == 1024 else 512
    model.config = dataclasses.replace(model.config, prediction=prediction, default_size=default_size)
    return model


def _check_config(config: ModelConfig, path: Path) -> None:
    z = config.vae.z_channels
    unet = config.unet
    if unet.in_channels not in (z, 2 * z + 1):
        kind = _UNET_CHANNEL_KINDS.get(unet.in_channels, f"a UNet with {unet.in_channels} input channels")
        raise ModelLoadError(f"{path.name}: this is {kind}; only txt2img ({z}) and inpainting ({2 * z + 1}) "
                             "UNets are supported yet")
    if unet.out_channels != z:
        raise ModelLoadError(f"{path.name}: the UNet outputs {unet.out_channels} channels but the VAE has {z}")
    if unet.context_dim != config.text.width:
        raise ModelLoadError(f"{path.name}: the UNet reads a {unet.context_dim}-wide context but the text encoder "
                             f"is {config.text.width} wide")
    if config.text.vocab_size != 49408:
        raise ModelLoadError(f"{path.name}: the text encoder has a {config.text.vocab_size}-token vocabulary; "
                             "only CLIP's 49408 is supported")


def _sidecar_prediction(path: Path) -> Prediction | None:
    """An A1111-style `<name>.yaml` (the original LDM config) beside the checkpoint says `parameterization: "v"`
    for v-models; a yaml without it means ε."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    try:
        with open_regular(yaml, "config") as f:
            text = f.read(MAX_JSON_BYTES).decode("utf-8", errors="replace")
    except (OSError, FileProblem):
        return None
    return "v" if re.search(r"""parameterization:\s*["']?v["']?\s*$""", text, re.MULTILINE) else "epsilon"


@torch.inference_mode()
def looks_like_v_prediction(model: LatentDiffusion) -> bool:
    """A1111's probe (`sd_models_config.py`): one UNet call on a constant 0.5 latent at t = 999 with a constant 0.5
    context; a v-model's output sits far below its input there (mean(out − x) < −1), an ε-model's does not."""
    unet = model.unet
    side = max(8, unet.downsample_factor)
    dtype = next(unet.parameters()).dtype
    x = torch.full((1, unet.config.in_channels, side, side), 0.5, device=model.device, dtype=dtype)
    context = torch.full((1, 2, unet.config.context_dim), 0.5, device=model.device, dtype=dtype)
    t = torch.full((1,), 999.0, device=model.device)
    out = unet(x, t, context).float()
    return float((out - x.float()).mean()) < -1


# -- diffusers folders --------------------------------------------------------------------------------------------

_SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionImg2ImgPipeline",
                 "StableDiffusionInpaintPipelineLegacy", "AltDiffusionPipeline")
_OTHER_PIPELINES = {
    "StableDiffusionXL": "an SDXL pipeline; SDXL is not supported yet",
    "StableDiffusion3": "a Stable Diffusion 3 pipeline; SD3 is not supported yet",
    "Flux": "a Flux pipeline; Flux is not supported yet",
    "StableDiffusionUpscale": "an x4 upscaler pipeline; it is not supported yet",
    "StableDiffusionDepth2Img": "an SD2 depth pipeline; it is not supported yet",
    "StableDiffusionInstructPix2Pix": "an instruct-pix2pix pipeline; it is not supported yet",
    "StableUnCLIP": "an unCLIP pipeline; it is not supported yet",
}


class _FolderArchive:
    """The tensors of several component files under names "component/name"."""

    def __init__(self, parts: dict[str, list[TensorArchive]]):
        self._where: dict[str, tuple[TensorArchive, str]] = {}
        self.archives = [a for files in parts.values() for a in files]
        for component, files in parts.items():
            for archive in files:
                for name in archive.shapes:
                    self._where[f"{component}/{name}"] = (archive, name)
        self.shapes = {k: tuple(a.shapes[n]) for k, (a, n) in self._where.items()}

    def names(self, component: str) -> list[str]:
        prefix = component + "/"
        return [k[len(prefix):] for k in self._where if k.startswith(prefix)]

    @property
    def fresh(self) -> bool:
        return all(getattr(a, "fresh", False) for a in self.archives)

    @property
    def files(self) -> list:
        return [entry for a in self.archives for entry in getattr(a, "files", ())]

    def get(self, name: str) -> torch.Tensor:
        archive, inner = self._where[name]
        return archive.get(inner)

    def close(self) -> None:
        for archive in self.archives:
            archive.close()


MAX_JSON_BYTES = 16 * 2**20  # a diffusers config or shard index; the largest real ones are a few hundred KB


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    where = path.relative_to(folder)
    try:
        with open_regular(path, f"{folder.name}/{where}") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ModelLoadError(f"{folder.name}: {where} is larger than {MAX_JSON_BYTES // 2**20} MiB")
        value = json.loads(data.decode("utf-8"))
    except FileProblem as exc:
        raise ModelLoadError(str(exc)) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else _first_line(exc)
        raise ModelLoadError(f"{folder.name}: unreadable {where} ({reason})") from None
    return value if isinstance(value, dict) else {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _open_weights(file: Path) -> TensorArchive:
    try:
        kind = sniff(file)
    except FileProblem as exc:
        raise ModelLoadError(str(exc)) from None
    if kind == "safetensors" or (kind == "unknown" and file.suffix == ".safetensors"):
        return SafetensorsArchive(file)
    return PickleArchive(file)


def _component_files(folder: Path, stems: Iterable[str]) -> list[Path]:
    """The weight files of one component, safetensors preferred, then the fp16 variant, then sharded, then .bin."""
    for ext in (".safetensors", ".bin"):
        for stem in stems:
            for variant in ("", ".fp16"):
                single = folder / f"{stem}{variant}{ext}"
                if single.is_file():
                    return [single]
                index = folder / f"{stem}{variant}{ext}.index.json"
                if index.exists():
                    return _shards(folder, index)
    return []


def _shards(folder: Path, index: Path) -> list[Path]:
    """The shard files a diffusers `*.index.json` names: each must be a plain file name inside `folder` (never a
    path that resolves elsewhere: `/etc/passwd`, `../../dev/zero`, a symlink out) and must exist."""
    model = folder.parent
    where = index.relative_to(model)
    weight_map = _read_json(index, model).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"{model.name}: {where} has no weight_map")
    names = list(dict.fromkeys(weight_map.values()))
    if not all(isinstance(n, str) and n for n in names):
        raise ModelLoadError(f"{model.name}: {where} maps tensors to something that is not a file name")
    root = folder.resolve()
    files = []
    for name in names:
        file = folder / name
        if Path(name).is_absolute() or not file.resolve().is_relative_to(root):
            raise ModelLoadError(f"{model.name}: {where} points outside {folder.name}/ ({name[:80]}); refused")
        if not file.exists():
            raise ModelLoadError(f"{model.name}: shard {folder.name}/{name[:80]} named by {index.name} is missing "
                                 f"({len(names)} shards expected; an incomplete download?)")
        files.append(file)
    return files


def _load_diffusers_folder(
    path: Path, device: torch.device, dtype: torch.dtype, prediction: Prediction | None
) -> LatentDiffusion:
    index = _read_json(path / "model_index.json", path)
    pipeline = str(index.get("_class_name", ""))
    for prefix, what in _OTHER_PIPELINES.items():
        if pipeline.startswith(prefix):
            raise ModelLoadError(f"{path.name}: this is {what}")
    if pipeline and pipeline not in _SD_PIPELINES:
        raise ModelLoadError(f"{path.name}: this is a diffusers {pipeline} folder; only Stable Diffusion 1.x/2.x "
                             "pipelines are supported yet")
    if not index and not (path / "unet").is_dir():
        raise ModelLoadError(f"{path.name}: a folder, but not a diffusers model (no model_index.json or unet/)")

    stems = {"unet": ("diffusion_pytorch_model",), "vae": ("diffusion_pytorch_model",),
             "text_encoder": ("model", "pytorch_model")}
    parts: dict[str, list[TensorArchive]] = {}
    archive: _FolderArchive | None = None
    try:
        for component, names in stems.items():
            files = _component_files(path / component, names)
            if not files:
                raise ModelLoadError(f"{path.name}: no weights in {component}/ (expected {names[0]}.safetensors)")
            parts[component] = [_open_weights(f) for f in files]
        archive = _FolderArchive(parts)
        return _build_from_folder(path, archive, device, dtype, prediction)
    finally:
        if archive is not None:
            archive.close()
        else:
            for files in parts.values():
                for a in files:
                    a.close()


def _build_from_folder(
    path: Path, archive: _FolderArchive, device: torch.device, dtype: torch.dtype, prediction: Prediction | None
) -> LatentDiffusion:
    unet_cfg = _read_json(path / "unet" / "config.json", path)
    vae_cfg = _read_json(path / "vae" / "config.json", path)
    text_cfg = _read_json(path / "text_encoder" / "config.json", path)
    sched_cfg = _read_json(path / "scheduler" / "scheduler_config.json", path)
    for key in ("addition_embed_type", "class_embed_type", "time_cond_proj_dim", "encoder_hid_dim"):
        if unet_cfg.get(key) is not None:
            raise ModelLoadError(f"{path.name}: the UNet uses {key}={unet_cfg[key]!r} (SDXL / LCM / unCLIP "
                                 "conditioning), which is not supported yet")
    try:
        config, refs = _config_from_folder(path, archive, prediction, unet_cfg, vae_cfg, text_cfg, sched_cfg)
    except _SHAPE_ERRORS as exc:  # a config.json value of the wrong type, or shapes the layout code cannot index
        raise ModelLoadError(f"{path.name}: its config files or tensor shapes are not those of a Stable Diffusion "
                             f"1.x/2.x diffusers folder ({_first_line(exc)})") from None
    _check_config(config, path)
    return materialize(config, archive, path, device, dtype, refs)


def _config_from_folder(path, archive, prediction, unet_cfg, vae_cfg, text_cfg, sched_cfg):
    refs = map_diffusers({c: archive.names(c) for c in ("unet", "vae", "text_encoder")}, unet_cfg)
    shapes = {ours: ref.shape(tuple(archive.shapes[ref.source])) for ours, ref in refs.items()}
    try:
        unet = detect_unet(shapes, _unet_overrides(unet_cfg, shapes, path))
        vae = detect_vae(shapes, _pick(vae_cfg, scaling_factor="scaling_factor", norm_groups="norm_num_groups"))
        activation = text_cfg.get("hidden_act", "quick_gelu")
        if activation not in ("quick_gelu", "gelu"):
            raise ModelLoadError(f"{path.name}: text encoder activation {activation!r} is not supported")
        text = detect_text(shapes, activation, _pick(text_cfg, layers="num_hidden_layers",
                                                     heads="num_attention_heads", layer_norm_eps="layer_norm_eps"))
    except LayoutError as exc:
        raise ModelLoadError(f"{path.name}: not a complete Stable Diffusion 1.x/2.x diffusers folder: {exc}") from None

    schedule, scheduled_prediction = _schedule_from(sched_cfg, path)
    sample_size = unet_cfg.get("sample_size")
    factor = 2 ** (len(vae.ch_mult) - 1)
    config = ModelConfig(
        unet=unet, vae=vae, text=text, schedule=schedule,
        prediction=prediction or scheduled_prediction,
        pad_id=_pad_id(path),
        default_size=int(sample_size) * factor if isinstance(sample_size, int) else 512,
        name=path.name,
    )
    return config, refs


def _pick(cfg: dict[str, Any], **names: str) -> dict[str, Any]:
    return {ours: cfg[theirs] for ours, theirs in names.items() if cfg.get(theirs) is not None}


def _unet_overrides(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, Any]:
    out = _pick(cfg, use_linear_projection="use_linear_projection", upcast_attention="upcast_attention",
                norm_groups="norm_num_groups")
    if cfg.get("flip_sin_to_cos") is False or cfg.get("freq_shift", 0) != 0:
        raise ModelLoadError(f"{path.name}: the UNet's timestep embedding differs from SD's; not supported")
    # diffusers' historic misnomer: for SD, attention_head_dim holds the number of heads (docs/checkpoints.md)
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim")
    if heads is None:
        return out
    widths = [int(w) for w in cfg.get("block_out_channels", [])]
    per_level = list(heads) if isinstance(heads, (list, tuple)) else [heads] * max(1, len(widths))
    if len(set(per_level)) == 1:
        out.update(num_heads=int(per_level[0]), num_head_channels=None)
    elif widths and len(widths) == len(per_level) and len({w // h for w, h in zip(widths, per_level)}) == 1:
        out.update(num_heads=None, num_head_channels=widths[0] // int(per_level[0]))
    else:
        raise ModelLoadError(f"{path.name}: unsupported attention head layout {heads!r}")
    return out


def _schedule_from(cfg: dict[str, Any], path: Path) -> tuple[ScheduleConfig, Prediction]:
    kind = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}.get(
        cfg.get("beta_schedule", "scaled_linear"))
    if kind is None:
        raise ModelLoadError(f"{path.name}: unsupported beta_schedule {cfg.get('beta_schedule')!r}")
    spacing = cfg.get("timestep_spacing", "leading")
    defaults = ScheduleConfig()
    schedule = ScheduleConfig(
        kind=kind,
        num_train_timesteps=int(cfg.get("num_train_timesteps", defaults.num_train_timesteps)),
        beta_start=float(cfg.get("beta_start", defaults.beta_start)),
        beta_end=float(cfg.get("beta_end", defaults.beta_end)),
        spacing=spacing if spacing in SPACINGS else "leading",
        steps_offset=int(cfg.get("steps_offset", defaults.steps_offset)),
    )
    kind_of_output = cfg.get("prediction_type", "epsilon")
    if kind_of_output not in ("epsilon", "v_prediction"):
        raise ModelLoadError(f"{path.name}: prediction_type {kind_of_output!r} is not supported")
    return schedule, "v" if kind_of_output == "v_prediction" else "epsilon"


def _pad_id(path: Path) -> int:
    """SD2's diffusers tokenizer pads with "!" (id 0, as open_clip does); SD1's with <|endoftext|>
    (docs/checkpoints.md, "Tokenizer")."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        pad = _read_json(path / "tokenizer" / name, path).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad == "!":
            return 0
        if pad == "<|endoftext|>":
            return EOS_ID
    return EOS_ID

