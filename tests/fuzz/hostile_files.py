"""Hostile inputs for the fuzz suite and its corpus: builders of files, and hypothesis strategies that vary them.

Every builder is deterministic (same arguments, same bytes), so make_corpus.py can write a corpus that a test
regenerates and compares. Nothing here imports the engine beyond what a file format needs.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

CONFIG_KEY = "studio_config"  # loading.CONFIG_METADATA_KEY
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64", "F8_E4M3",
          "F8_E5M2", "C64"]


# -- safetensors --------------------------------------------------------------------------------------------------

def safetensors_bytes(header: Any, data: bytes = b"", *, claimed: int | None = None, raw: bytes | None = None) -> bytes:
    """A safetensors file: header length (or `claimed`), the header JSON (or `raw` bytes), then `data`."""
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if claimed is None else claimed) + text + data


def tiny_config() -> dict[str, Any]:
    """ModelConfig.tiny() as the JSON a studio file carries (kept here literally so the corpus never drifts)."""
    return {
        "default_cfg": 7.5, "default_size": 64, "latent_rgb": None, "latent_rgb_hidden": None, "name": "tiny-random",
        "pad_id": 49407, "prediction": "epsilon",
        "schedule": {"beta_end": 0.012, "beta_start": 0.00085, "kind": "scaled_linear", "num_train_timesteps": 1000,
                     "spacing": "leading", "steps_offset": 1},
        "text": {"activation": "quick_gelu", "heads": 2, "layer_norm_eps": 1e-05, "layers": 2, "max_length": 77,
                 "mlp_ratio": 4, "vocab_size": 49408, "width": 32},
        "unet": {"attention_levels": [1], "channel_mult": [1, 2], "context_dim": 32, "in_channels": 4,
                 "model_channels": 32, "norm_groups": 8, "num_head_channels": None, "num_heads": 2,
                 "num_res_blocks": 1, "out_channels": 4, "transformer_depth": 1, "upcast_attention": False,
                 "use_linear_projection": False},
        "vae": {"ch": 32, "ch_mult": [1, 2], "in_channels": 3, "mid_attention": True, "norm_groups": 8,
                "num_res_blocks": 1, "out_channels": 3, "scaling_factor": 0.18215, "z_channels": 4},
    }


def studio_file_bytes(config_text: str, tensors: dict[str, tuple[str, list[int], bytes]] | None = None) -> bytes:
    """A studio model file carrying `config_text` and (by default) one small tensor; loading must stop at the
    config or at the parameter count, never build or allocate what the config describes."""
    tensors = tensors if tensors is not None else {"first_stage_model.post_quant_conv.bias": ("F32", [4], bytes(16))}
    header: dict[str, Any] = {"__metadata__": {CONFIG_KEY: config_text, "format": "pt"}}
    data = b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    return safetensors_bytes(header, data)


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


# -- pickles and zips ---------------------------------------------------------------------------------------------

def zip_bomb(uncompressed: int = 200 * 2**20, member: str = "archive/data.pkl") -> bytes:
    """A zip whose one deflated member expands to `uncompressed` zero bytes (~1000:1)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(uncompressed // len(chunk)):
                f.write(chunk)
    return buffer.getvalue()


def lying_zip(declared: int = 0xFFFF_FFF0) -> bytes:
    """A stored (uncompressed) zip member whose directory entry declares `declared` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("archive/data.pkl", date_time=(2024, 1, 1, 0, 0, 0)), b"\x80\x02}q\x00.")
    data = bytearray(buffer.getvalue())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)  # the uncompressed size in the central directory
    return bytes(data)


def pickle_bytes(payload: bytes) -> bytes:
    return b"\x80\x02" + payload


# -- images -------------------------------------------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width×height RGB, one tiny IDAT: a few dozen bytes that ask a
    reader for width·height·3 bytes (a decompression bomb by its header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 4))
            + _chunk(b"IEND", b""))


def image_bytes(mode: str, size: tuple[int, int], fmt: str, seed: int = 0, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4, "LAB": 3, "YCbCr": 3}
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        array = rng.integers(0, 60000, (size[1], size[0])).astype(dtype)
        image = Image.fromarray(array, mode) if mode != "I;16" else Image.fromarray(array)
    elif mode in ("1", "P"):
        image = Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8), "L").convert(mode)
    else:
        shape = (size[1], size[0], channels[mode]) if channels[mode] > 1 else (size[1], size[0])
        image = Image.frombytes(mode, size, rng.integers(0, 255, shape, dtype=np.uint8).tobytes())
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


IMAGE_MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF"]


# -- strategies ---------------------------------------------------------------------------------------------------

def json_scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 3e9, 1e308]),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    )


def json_values(max_leaves: int = 12) -> st.SearchStrategy:
    return st.recursive(json_scalars(), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                        max_leaves=max_leaves)


def tensor_entries() -> st.SearchStrategy:
    dtype = st.one_of(st.sampled_from(DTYPES), json_values(4))
    dim = st.one_of(st.integers(0, 8), st.sampled_from([-1, 2**40, 2**63, 10**30]), st.booleans(), st.floats(0, 4))
    shape = st.one_of(st.lists(dim, max_size=4), json_values(4))
    offset = st.one_of(st.integers(0, 64), st.sampled_from([-1, 2**64, 10**20]), st.floats(0, 8))
    offsets = st.one_of(st.lists(offset, min_size=2, max_size=2), st.lists(offset, max_size=3), json_values(3))
    entry = st.fixed_dictionaries({}, optional={"dtype": dtype, "shape": shape, "data_offsets": offsets})
    return st.one_of(entry, json_values(4))


def safetensors_files() -> st.SearchStrategy[bytes]:
    metadata = st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3), json_values(4))
    structured = st.builds(
        lambda entries, meta, with_meta, data, claim: safetensors_bytes(
            {**({"__metadata__": meta} if with_meta else {}), **entries}, data, claimed=claim),
        st.dictionaries(st.text(max_size=10), tensor_entries(), max_size=4), metadata, st.booleans(),
        st.binary(max_size=96), st.one_of(st.none(), st.sampled_from([0, 1, 7, 2**62, 100 * 2**20, 17 * 2**20]))
    )
    raw_text = st.one_of(
        st.builds(nested, st.integers(1, 50_000)),
        st.builds(lambda d: nested(d, b'{"a":', b"}") if d else b"{}", st.integers(0, 5000)),
        st.sampled_from([b'{"a":NaN}', b'{"a":1,"a":2}', b'{"a":' + b"9" * 5000 + b"}", b"\xff\xfe{}", b"{",
                         b'{"__metadata__":{"k":1}}', b'{"__metadata__":[]}', b"[]", b'"text"', b"null"]),
        st.binary(max_size=64),
    )
    raw = st.builds(lambda text, data: safetensors_bytes(None, data, raw=text), raw_text, st.binary(max_size=32))
    return st.one_of(structured, raw, st.binary(max_size=64))


CONFIG_PATHS = [
    ("schedule", "num_train_timesteps"), ("schedule", "beta_start"), ("schedule", "beta_end"), ("schedule", "kind"),
    ("schedule", "spacing"), ("schedule", "steps_offset"), ("unet", "num_res_blocks"), ("unet", "num_heads"),
    ("unet", "num_head_channels"), ("unet", "channel_mult"), ("unet", "attention_levels"), ("unet", "model_channels"),
    ("unet", "norm_groups"), ("unet", "transformer_depth"), ("unet", "context_dim"), ("unet", "in_channels"),
    ("vae", "ch"), ("vae", "ch_mult"), ("vae", "z_channels"), ("vae", "scaling_factor"), ("vae", "norm_groups"),
    ("text", "layers"), ("text", "heads"), ("text", "width"), ("text", "max_length"), ("text", "vocab_size"),
    ("text", "activation"), ("text", "layer_norm_eps"), (None, "pad_id"), (None, "default_cfg"),
    (None, "default_size"), (None, "prediction"), (None, "latent_rgb"), (None, "latent_rgb_hidden"), (None, "name"),
    (None, "unet"), (None, "vae"), (None, "text"), (None, "schedule"),
]

HOSTILE_NUMBERS = [0, -1, -5, 1, 2, 3, 7, 3e9, 2**31, 2**63, 10**40, 0.5, -0.0, 1e-300, 200000, 1e9, 4096, 1.5]


def config_mutations() -> st.SearchStrategy[list[tuple[tuple[str | None, str], Any]]]:
    value = st.one_of(st.sampled_from(HOSTILE_NUMBERS), json_values(6), st.sampled_from(
        ["v", "epsilon", "gelu", "cosine", "trailing", "linspace", [1, 2, 4], [0, 1], [[0.1, 0.2, 0.3]] * 5, {}]))
    return st.lists(st.tuples(st.sampled_from(CONFIG_PATHS), value), min_size=1, max_size=3)


def mutate_config(config: dict[str, Any], mutations) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    for (part, key), value in mutations:
        target = config if part is None else config.get(part)
        if isinstance(target, dict):
            target[key] = value
    return config
