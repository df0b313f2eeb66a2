"""Images in and out: files in odd modes, PIL ↔ tensors, and the A1111 `parameters` PNG chunk.

Imports no torch at module level, so the UI thread can read images and PNG parameters before torch is loaded.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .files import FileProblem, atomic_write, open_regular
from .guidance import BACKWARD_MODES
from .request import GenerationRequest, RequestError
from .samplers import SAMPLER_TABLE

if TYPE_CHECKING:
    import torch

    from .api import RunInfo

MAX_IMAGE_PIXELS = 2**26  # 8192×8192; below PIL's own decompression-bomb limit, so ours speaks first
BUILT_IN_MODELS = ("default", "tiny-random")  # written under their own names
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
NOT_IN_LINEAGE = ("device", "dtype")  # where it ran, not what it made


def load_rgb(path: str | Path) -> np.ndarray:
    """Any image file → HxWx3 uint8. Alpha is composited over white; 16-bit and palette modes are converted."""
    return _read(path, "image", to_rgb_array)


def _read(path: str | Path, what: str, convert) -> np.ndarray:
    """Open only a regular file (a FIFO would block, a device never end), refuse a picture too large before its
    pixels are decoded (the header's size is checked first: a 50000×50000 PNG is a few KB), turn it upright by its
    EXIF orientation as photo tools do (JPEG/TIFF Orientation tag, CIPA DC-008 "Exif" 4.6.4), then convert."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd metadata are not the user's to act on
            with open_regular(path, f"{what} file") as f, Image.open(f) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise RequestError(f"{what} {path} is {im.width}x{im.height}: more than the "
                                       f"{MAX_IMAGE_PIXELS // 10**6} megapixels an input may have")
                im.load()
                return convert(_upright(im))
    except FileProblem as exc:
        raise RequestError(str(exc)) from None
    except UnidentifiedImageError:
        raise RequestError(f"cannot read {what} {path}: not an image file, or a format this app cannot read") \
            from None
    except Image.DecompressionBombError:
        raise RequestError(f"{what} {path} is too large to open safely (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # PIL's decoders raise these on damaged data; ValueError also for colour modes it cannot convert
        raise RequestError(f"cannot read {what} {path}: {_short(exc)}") from None
    except MemoryError:
        raise RequestError(f"not enough memory to read {what} {path}") from None


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except (ValueError, TypeError, KeyError, SyntaxError, OSError, struct.error):  # damaged EXIF: as stored
        return im


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file → HxW float32 in [0, 1], 1 (white) = repaint. Modes 1, L, P, RGB, LA/RGBA (the alpha channel
    is the mask when it is not uniform), 8 or 16 bit."""
    return _read(path, "mask", to_mask_array)


def load_rgba(path: str | Path, what: str = "colour hint") -> np.ndarray:
    """A picture with transparency → HxWx4 uint8 (a colour hint: the colour where alpha > 0). A picture without an
    alpha channel is refused: every pixel of it would be a hint."""
    return _read(path, what, to_rgba_array)


def to_rgba_array(im: Image.Image) -> np.ndarray:
    if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and not (im.mode == "P" and "transparency" in im.info):
        raise ValueError(f"it has no alpha channel (mode {im.mode}); paint the hint on a transparent RGBA picture")
    return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()


def to_mask_array(im: Image.Image) -> np.ndarray:
    if im.mode == "LAB":  # lightness is the mask; PIL converts LAB to nothing else
        return np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        peak = 65535.0 if data.max() > 255 else 255.0 if data.max() > 1 else 1.0
        return np.clip(data / peak, 0, 1).astype(np.float32)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() != alpha.max():
            return alpha.astype(np.float32) / 255.0
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode == "LAB":
        raise ValueError("LAB colour is not supported; save the picture as RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(im, dtype=np.float32)
        peak = 65535.0 if data.max() > 255 else 255.0
        grey = np.clip(np.round(data / peak * 255), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")).copy()
    return np.asarray(im.convert("RGB")).copy()


def image_to_tensor(image: np.ndarray) -> "torch.Tensor":
    """HxWx3 uint8 → (1, 3, H, W) float32 in [−1, 1] (x = u8/127.5 − 1)."""
    import torch  # here, not at the top: the UI thread reads images and PNG parameters without torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def tensor_to_image(x: "torch.Tensor") -> np.ndarray:
    """(1, 3, H, W) in [−1, 1] → HxWx3 uint8 (u8 = round(clamp((x+1)/2)·255))."""
    import torch

    x = ((x[0].float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 0).numpy().copy()


def model_name(spec: str) -> str:
    """What a PNG calls the model, as A1111 does: the checkpoint's file name without its extension (a diffusers
    folder's name); a built-in model by its own name. Never the full path."""
    if spec in BUILT_IN_MODELS:
        return spec
    path = Path(spec)
    return path.stem if path.suffix.lower() in CHECKPOINT_SUFFIXES else path.name or spec


def format_run_parameters(run: "RunInfo") -> str:
    """A finished run's `parameters`: its settings, its model's short hash and, for a branch, its lineage."""
    return format_parameters(run.request, model_hash=run.model_hash, lineage=run.lineage, read_as=run.read_as)


def format_parameters(request: GenerationRequest, model_label: str | None = None, *, model_hash: str | None = None,
                      lineage: Sequence[tuple[GenerationRequest, int]] = (), read_as: str | None = None) -> str:
    """The AUTOMATIC1111 `parameters` text, so other tools read our PNGs. `lineage` (a branch's ancestors, nearest
    first, each with the step its child branched from) goes into one extra field that A1111 ignores, and so do
    `read_as`, the caption the model's prompt reader gave its text encoder (RunInfo.read_as), and "Read prompt: off"
    when the request turned the reader off."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    spec = SAMPLER_TABLE.get(request.sampler)
    sampler = spec.display_name if spec is not None else request.sampler
    if request.karras:
        sampler += " Karras"
    fields = [
        ("Steps", request.steps),
        ("Sampler", sampler),
        ("CFG scale", _num(request.cfg)),
        ("Seed", request.seed),
        ("Size", f"{request.width}x{request.height}"),
        *([("Model hash", model_hash)] if model_hash else []),
        ("Model", model_label or model_name(request.model)),
        ("Eta", _num(request.eta)),
    ]
    if request.init_image is not None:
        fields.append(("Denoising strength", _num(request.strength)))
    if request.clip_skip != 1:
        fields.append(("Clip skip", request.clip_skip))
    if request.mask is not None:
        fields.append(("Mask blur", _num(request.feather)))
    fields += guidance_fields(request)
    if read_as:
        fields.append(("Read as", json.dumps(read_as)))
    if not request.read_prompt:
        fields.append(("Read prompt", "off"))
    if lineage:
        fields.append(("Branched from", json.dumps(_lineage_text(lineage))))  # quoted as A1111 quotes its values
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:g}"


def _lineage_text(lineage: Sequence[tuple[GenerationRequest, int]]) -> str:
    """Compact JSON, nearest ancestor first: each one's step its child branched from and its settings that differ
    from the defaults (the model by name, as the Model field)."""
    entries = []
    for request, from_step in lineage:
        defaults = GenerationRequest(sampler=request.sampler).settings()  # η's default is the sampler's own
        settings = {k: v for k, v in request.settings().items() if k not in NOT_IN_LINEAGE and v != defaults[k]}
        if request.sampler != GenerationRequest.sampler:
            settings["sampler"] = request.sampler
        if "model" in settings:
            settings["model"] = model_name(settings["model"])
        entries.append({"from_step": from_step, **settings})
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False)


def _parse_lineage(text: str) -> list[dict[str, Any]]:
    """[{"from_step": k, "settings": {...}}, ...] nearest ancestor first; [] when the field is damaged."""
    try:
        entries = json.loads(text)
        return [{"from_step": int(e.pop("from_step")), "settings": e} for e in entries if isinstance(e, dict)]
    except (ValueError, TypeError, KeyError):
        return []


def guidance_fields(request: GenerationRequest) -> list[tuple[str, Any]]:
    """Universal guidance as extra fields A1111 ignores, e.g. `Guidance: "colour 10, reference 0.5 layout",
    Guidance mode: forward, Guided steps: 0.7`; the guides' pictures are not written (say so when restoring)."""
    if not request.guides:
        return []
    guides = ", ".join(f"{g.kind} {_num(g.strength)}" + (f" {g.variant}" if g.kind == "reference" else "")
                       + (" " + ";".join(f"{k}={v}" for k, v in g.labels) if g.labels else "")
                       + (" " + json.dumps(g.text) if g.kind == "clip" else "")
                       for g in request.guides)  # "classifier 2 colour=red;shape=star", 'clip 10 "a red star"'
    fields: list[tuple[str, Any]] = [("Guidance", json.dumps(guides)), ("Guidance mode", request.guide_mode),
                                     ("Guided steps", _num(request.guide_steps))]
    if request.guide_mode in BACKWARD_MODES:
        fields.append(("Backward steps", request.backward_steps))
    if request.recurrence > 1:
        fields.append(("Recurrence", request.recurrence))
    if request.guide_in_mask:
        fields.append(("Guide in mask", True))
    return fields


_GUIDE = re.compile(r"(colour|reference|keep) ([0-9.eE+-]+)(?: (layout|palette))?")
_LABELLED_GUIDE = re.compile(r"(classifier) ([0-9.eE+-]+) ((?:[\w ]+=[\w ]+;?)+)")
_CLIP_GUIDE = re.compile(r'clip ([0-9.eE+-]+) ("(?:[^"\\]|\\.)*")')  # the caption JSON-quoted: it may hold commas


def parse_guidance_fields(fields: dict[str, str]) -> dict[str, Any]:
    """Inverse of `guidance_fields`: "guides" as [{"kind", "strength", "variant"}] (no pictures) and the guidance
    settings; damaged values are skipped."""
    settings: dict[str, Any] = {}
    if "Guidance" in fields:
        guides = []
        captions = _CLIP_GUIDE.findall(fields["Guidance"])  # each stands in the list as "clip #i" (no commas)
        listed = iter(range(len(captions)))
        for part in _CLIP_GUIDE.sub(lambda m: f"clip #{next(listed)}", fields["Guidance"]).split(","):
            if part.strip().startswith("clip #"):
                try:
                    strength, caption = captions[int(part.strip()[6:])]
                    guides.append({"kind": "clip", "strength": float(strength), "variant": "layout",
                                   "text": str(json.loads(caption))})
                except (ValueError, IndexError):
                    pass
                continue
            match = _GUIDE.fullmatch(part.strip())
            labelled = _LABELLED_GUIDE.fullmatch(part.strip())
            try:
                if match is not None:
                    guides.append({"kind": match[1], "strength": float(match[2]), "variant": match[3] or "layout"})
                elif labelled is not None:
                    labels = dict(item.split("=", 1) for item in labelled[3].split(";") if item)
                    guides.append({"kind": labelled[1], "strength": float(labelled[2]), "variant": "layout",
                                   "labels": labels})
            except ValueError:
                pass
        if guides:
            settings["guides"] = guides
    converters = {"Guidance mode": ("guide_mode", str), "Guided steps": ("guide_steps", float),
                  "Backward steps": ("backward_steps", int), "Recurrence": ("recurrence", int),
                  "Guide in mask": ("guide_in_mask", lambda v: {"true": True, "false": False}[v.lower()])}
    for key, (name, convert) in converters.items():
        if key in fields:
            try:
                settings[name] = convert(fields[key])
            except (ValueError, KeyError):
                pass
    return settings


def guide_pictures_note(settings: dict[str, Any]) -> str:
    """What a restore message adds for a guided picture: its guides' pictures are not in the PNG."""
    kinds = [g["kind"] for g in settings.get("guides") or ()]
    if not kinds:
        return ""
    names = {"colour": "colour hint", "reference": "reference picture", "keep": "keep region"}
    kinds = [k for k in kinds if k in names]  # a classifier guide has no picture: its labels are in the PNG
    if not kinds:
        return ""
    listed = ", ".join(dict.fromkeys(names.get(k, k) for k in kinds))
    return f" It was guided ({listed}); a PNG does not hold the guides' pictures, so paint or choose them again."


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        try:
            decoded = json.loads(value)
            return decoded if isinstance(decoded, str) else value
        except ValueError:
            return value.strip('"')
    return value


_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an A1111 `parameters` text into GenerationRequest settings (unknown fields are ignored). A branch's
    lineage comes back under "lineage": [{"from_step": k, "settings": {...}}, ...], nearest ancestor first."""
    lines = text.strip().split("\n")
    settings: dict[str, Any] = {}
    last = lines[-1] if lines and re.search(r"(^|, )Steps: ", lines[-1]) else None
    body = lines[:-1] if last is not None else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    settings["prompt"] = "\n".join(prompt).strip()
    settings["negative_prompt"] = "\n".join(negative).strip()
    if last is None:
        return settings
    fields = {m.group(1).strip(): _unquote(m.group(2)) for m in _FIELD.finditer(last)}
    sampler_names = {spec.display_name.lower(): name for name, spec in SAMPLER_TABLE.items()}
    converters = {
        "Steps": ("steps", int),
        "CFG scale": ("cfg", float),
        "Seed": ("seed", int),
        "Eta": ("eta", float),
        "Denoising strength": ("strength", float),
        "Clip skip": ("clip_skip", int),
        "Mask blur": ("feather", float),
        "Model": ("model", str),
    }
    for key, (name, convert) in converters.items():
        if key in fields:
            try:
                settings[name] = convert(fields[key])
            except ValueError:
                pass
    if "Branched from" in fields:
        settings["lineage"] = _parse_lineage(fields["Branched from"])
    # "Read as": the model's prompt reader rewrote the prompt; "Read prompt: off": the user turned it off. Neither (a
    # model without a reader, a prompt it left alone, another tool's PNG): the setting is not in the file
    if "Read as" in fields:
        settings["read_prompt"] = True
    elif fields.get("Read prompt") == "off":
        settings["read_prompt"] = False
    settings.update(parse_guidance_fields(fields))
    if "Size" in fields and re.fullmatch(r"\d+x\d+", fields["Size"]):
        w, h = fields["Size"].split("x")
        settings["width"], settings["height"] = int(w), int(h)
    if "Sampler" in fields:
        name = fields["Sampler"].lower()
        # older A1111 writes "DPM++ 2M Karras", 1.9 and later "Sampler: DPM++ 2M, Schedule type: Karras"
        settings["karras"] = name.endswith(" karras") or fields.get("Schedule type", "").lower() == "karras"
        name = name.removesuffix(" karras")
        if name in sampler_names:
            settings["sampler"] = sampler_names[name]
    return settings


def save_png(image: np.ndarray, path: str | Path, parameters: str | None = None) -> None:
    """Write a PNG with the `parameters` chunk, atomically (files.atomic_write: a unique temporary file, then a
    rename). Text that Latin-1 cannot hold goes into an iTXt chunk in UTF-8 (PNG spec 11.3.4.5) as A1111 does;
    anything UTF-8 cannot encode either (a command line's undecodable bytes) is replaced, never an error that
    loses the picture."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        text = parameters.encode("utf-8", errors="replace").decode("utf-8")
        info.add_text("parameters", text)
    picture = Image.fromarray(image)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", pnginfo=info), "image")


def read_parameters(path: str | Path) -> str | None:
    with Image.open(path) as im:
        return im.info.get("parameters") if isinstance(im.info.get("parameters"), str) else None
