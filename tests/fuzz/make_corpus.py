"""Write the hostile-file corpus: tests/fuzz/corpus/ and its manifest.json (`python tests/fuzz/make_corpus.py`).

Every reproducer of issue #17 that is a file, plus their neighbours, each under 1 MiB. manifest.json says how
each is used (`--model`, `--branch`, `--init`, `--mask`, or a whole command line) and what must happen: "ok", or
an error whose one line contains the given text. test_corpus.py runs them all through the CLI child.

Not in the corpus, made at test time instead (tests/engine/test_hostile_model_files.py): FIFOs and symlinks to
/dev/zero (a checked-in symlink to a device would hang any tool that walks the repository and follows links) and
the 89 MB header (a sparse file; git would store all of it).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from hostile_files import (  # noqa: E402
    image_bytes, lying_zip, nested, png_claiming, safetensors_bytes, studio_file_bytes, tiny_config, zip_bomb,
)

CORPUS = HERE / "corpus"
# Files whose bytes depend on a library's encoder (zlib, Pillow): compared by name only when regenerated.
ENCODED = ("zip_bomb.ckpt", "lying_zip.ckpt", ".png", ".jpg", ".tif")


def _config(**changes) -> str:
    config = tiny_config()
    for path, value in changes.items():
        part, _, key = path.rpartition("__")
        (config[part] if part else config)[key] = value
    return json.dumps(config)


def model_files() -> list[tuple[str, bytes, str]]:
    """(name, bytes, expected) for `generate --model corpus/models/NAME`."""
    t = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    return [
        # 11: the header parser
        ("header_nested_50000.safetensors", safetensors_bytes(None, raw=nested(50_000)), "nested too deeply"),
        ("header_dtype_list.safetensors", safetensors_bytes({"a": {**t, "dtype": ["F32"]}}, bytes(4)), "unknown dtype"),
        ("header_shape_bool.safetensors", safetensors_bytes({"a": {**t, "shape": [True]}}, bytes(4)), "invalid shape"),
        ("header_offsets_float.safetensors", safetensors_bytes({"a": {**t, "data_offsets": [0.0, 4]}}, bytes(4)),
         "invalid data offsets"),
        ("header_nan.safetensors", safetensors_bytes(None, bytes(4), raw=b'{"a":NaN}'), "NaN is not a JSON number"),
        ("header_duplicate.safetensors", safetensors_bytes(None, bytes(4), raw=b'{"a":{},"a":{}}'),
         "a name appears twice"),
        ("header_metadata_numbers.safetensors", safetensors_bytes({"__metadata__": {"k": 1}}), "__metadata__"),
        ("header_long_integer.safetensors", safetensors_bytes(None, raw=b'{"a":' + b"9" * 5000 + b"}"), "not JSON"),
        ("header_not_utf8.safetensors", safetensors_bytes(None, raw=b'{"\xff":1}'), "not UTF-8"),
        ("header_claims_89mb.safetensors", safetensors_bytes({}, claimed=89_000_000), "at most 16 MiB"),
        ("header_claims_2e62.safetensors", safetensors_bytes({}, claimed=2**62), "corrupt safetensors header"),
        ("header_overlap.safetensors", safetensors_bytes({"a": t, "b": {**t, "data_offsets": [2, 6]}}, bytes(8)),
         "overlap"),
        ("header_newline_name.safetensors", safetensors_bytes({"a\nb": {**t, "dtype": "Q8"}}, bytes(4)),
         "a\\nb has an unknown dtype"),
        ("truncated.safetensors", safetensors_bytes({"a": {**t, "shape": [100], "data_offsets": [0, 400]}}, bytes(8)),
         "truncated"),
        ("empty.safetensors", b"", "not a safetensors file (only 0 bytes)"),
        # 1: the config a studio file carries
        ("config_timesteps_3e9.safetensors", studio_file_bytes(_config(schedule__num_train_timesteps=3e9)),
         "schedule.num_train_timesteps must be a whole number"),
        ("config_res_blocks_200000.safetensors", studio_file_bytes(_config(unet__num_res_blocks=200000)),
         "unet.num_res_blocks must be between 1 and 4"),
        ("config_list.safetensors", studio_file_bytes("[1, 2, 3]"), "the model config must be an object"),
        ("config_heads_0.safetensors", studio_file_bytes(_config(unet__num_heads=0)), "unet.num_heads must be"),
        ("config_text_string.safetensors", studio_file_bytes(_config(text="layers")), "text must be an object"),
        ("config_text_layers_string.safetensors", studio_file_bytes(_config(text__layers="12")),
         "text.layers must be a whole number"),
        ("config_negative_timesteps.safetensors", studio_file_bytes(_config(schedule__num_train_timesteps=-1000)),
         "num_train_timesteps must be between 2 and 100000"),
        ("config_cfg_string.safetensors", studio_file_bytes(_config(default_cfg="7.5")),
         "default_cfg must be a finite number"),
        ("config_pad_1e9.safetensors", studio_file_bytes(_config(pad_id=10**9)), "pad_id must be between 0 and"),
        ("config_not_json.safetensors", studio_file_bytes("{'unet': 1}"), "not valid JSON"),
        ("config_describes_more.safetensors", studio_file_bytes(_config()), "parameters but the file holds only 4"),
        # 7: the bytes decide, not the name
        ("safetensors_named.ckpt", safetensors_bytes({"a": {**t, "dtype": ["F32"]}}, bytes(4)), "unknown dtype"),
        # 12: zips and pickles that ask for more than they hold
        ("zip_bomb.ckpt", zip_bomb(200 * 2**20), "zip bomb"),
        ("lying_zip.ckpt", lying_zip(), "zip bomb"),
        ("pickle_2600mb_string.ckpt", b"\x80\x02X\x00\x00\x00\x9b", "not a readable PyTorch checkpoint"),
        ("pickle_without_proto.ckpt", b"X\x00\x00\x00\x9b", "not a readable PyTorch checkpoint"),
        ("garbage.pt", bytes(range(256)) * 4, "not a readable PyTorch checkpoint"),
        ("model.gguf", b"GGUF" + bytes(60), "GGUF"),
    ]


def diffusers_folders() -> list[tuple[str, dict[str, bytes], str]]:
    """(folder, {relative path: bytes}, expected) for `generate --model corpus/models/FOLDER`."""
    index = "unet/diffusion_pytorch_model.safetensors.index.json"
    shard = safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))
    pipeline = json.dumps({"_class_name": "StableDiffusionPipeline"}).encode()

    def folder(weight_map, files=None):
        return {"model_index.json": pipeline, index: json.dumps({"weight_map": weight_map}).encode(), **(files or {})}

    return [
        ("diffusers_missing_shard", folder({"a": "part-1.safetensors", "b": "part-2.safetensors"},
                                           {"unet/part-1.safetensors": shard}), "shard unet/part-2.safetensors"),
        ("diffusers_shard_etc_passwd", folder({"a": "/etc/passwd"}), "points outside unet/"),
        ("diffusers_shard_dev_zero", folder({"a": "../../dev/zero"}), "points outside unet/"),
        ("diffusers_index_not_a_map", folder(7), "has no weight_map"),
    ]


def sorted_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes them in a hash map's order,
    which changes from process to process, and the corpus must come out the same bytes every time."""
    length = struct.unpack("<Q", data[:8])[0]
    header = json.dumps(json.loads(data[8:8 + length]), sort_keys=True, separators=(",", ":")).encode()
    assert len(header) <= length  # the same JSON, only reordered; safetensors pads with spaces
    return data[:8] + header.ljust(length) + data[8 + length:]


def run_files() -> list[tuple[str, bytes, str]]:
    """(name, bytes, expected) for `generate --branch corpus/runs/NAME --from-step 1`: a synthetic tiny-random run
    (deterministic tensors, no sampling) and the damaged ones of item 10."""
    import torch
    from safetensors.torch import save

    from studio.engine.request import GenerationRequest
    from studio.engine.run import RUN_FORMAT

    request = GenerationRequest(prompt="corpus", model="tiny-random", sampler="euler_a", steps=3, width=16,
                                height=16, cfg=2.0)
    levels = [[999.0, 0.0047], [666.0, 0.1], [333.0, 0.5], [-1.0, 1.0]]
    x = torch.linspace(-1, 1, 4 * 8 * 8).reshape(1, 4, 8, 8)
    rng = torch.Generator().manual_seed(0).get_state()
    tensors = {}
    for i in range(3):
        tensors[f"x_t.{i}"] = x * (3 - i)
        tensors[f"eps.{i}"] = (x * 0.5).half()
        tensors[f"rng.{i}"] = rng.clone()
    tensors["final_latent"] = x * 0.1
    tensors["image"] = torch.arange(16 * 16 * 3, dtype=torch.int32).reshape(16, 16, 3).remainder(256).to(torch.uint8)
    meta = {"format": RUN_FORMAT, "request": request.to_json(), "grid": json.dumps(levels), "kind": "txt2img",
            "status": "finished", "id": "corpus000001", "parent_id": "", "from_step": "0", "lineage": "[]",
            "cheap_decode": "", "guidance_loss": "[null, null, null]"}

    def run(meta_changes=None, drop=(), extra=None):
        m = {**meta, **(meta_changes or {})}
        t = {k: v.contiguous() for k, v in {**tensors, **(extra or {})}.items() if k not in drop}
        return sorted_header(save(t, metadata=m))

    settings = json.loads(request.to_json())
    return [
        ("intact.safetensors", run(), "ok"),
        ("grid_shorter_than_timeline.safetensors", run({"grid": json.dumps(levels[:2])}),
         "records 3 steps but its grid has only 1"),
        ("missing_eps_1.safetensors", run(drop=["eps.1"]), "eps.1 is missing"),
        ("garbage_rng.safetensors", run(extra={"rng.1": torch.arange(64, dtype=torch.uint8)}),
         "rng.1 is not a random generator state"),
        ("from_step_string.safetensors", run({"from_step": "two"}), "from_step must be a whole number"),
        ("request_list.safetensors", run({"request": "[1, 2, 3]"}), "its request is list"),
        ("grid_1000_levels.safetensors", run({"grid": json.dumps([[999 - i, 0.001 + 0.0009 * i] for i in range(1001)])}),
         "its grid has 1000 steps but the request asks for 3"),
        ("steps_as_text.safetensors", run({"request": json.dumps({**settings, "steps": "3"})}),
         'the setting steps is "3"'),
        ("request_not_json.safetensors", run({"request": "{steps: 3"}), "its request is not valid JSON"),
        ("latent_of_another_size.safetensors", run(extra={"x_t.1": torch.zeros(1, 4, 8, 9)}),
         "x_t.1 is [1, 4, 8, 9]"),
        ("not_a_run.safetensors", sorted_header(save({"a": torch.zeros(1)}, metadata={"format": "pt"})),
         "is not a Diffusion Studio run file"),
        ("header_deep.safetensors", safetensors_bytes(None, raw=nested(50_000)), "cannot read run file"),
    ]


def pictures() -> list[tuple[str, bytes, str, str]]:
    """(name, bytes, role, expected): role "init" (`--init`) or "mask" (`--mask` over a 16×16 init)."""
    rotated = image_bytes("RGB", (16, 8), "JPEG", orientation=6)  # stored 16×8, upright 8×16
    lab = np.zeros((16, 16, 3), np.uint8)
    lab[4:12, 4:12, 0] = 255
    out = io.BytesIO()
    Image.frombytes("LAB", (16, 16), lab.tobytes()).save(out, format="TIFF")
    return [
        ("bomb_50000x50000.png", png_claiming(50000, 50000), "init", "too large to open safely"),
        ("bomb_50000x50000_mask.png", png_claiming(50000, 50000), "mask", "too large to open safely"),
        ("over_67_megapixels.png", png_claiming(9000, 9000), "init", "more than the 67 megapixels"),
        ("lab_mask.tif", out.getvalue(), "mask", "ok"),
        ("exif_rotated.jpg", rotated, "init", "ok"),
        ("truncated.png", image_bytes("RGB", (16, 16), "PNG")[:60], "init", "cannot read image"),
        ("tiff_magic_only.tif", b"II*\x00\x00\x00\x00\x01", "init", "not an image file"),
        ("odd_size.png", image_bytes("RGB", (15, 16), "PNG"), "init", "multiples of 2"),
    ]


def command_lines() -> list[tuple[str, list[str], str]]:
    """(name, extra arguments, expected) for `generate --model tiny-random --prompt t --steps 2 --width 16
    --height 16` (item 3's sizes and numbers, item 13's grow)."""
    return [
        ("width_100000", ["--width", "100000"], "width must be at most 16384 px"),
        ("feather_1e9", ["--feather", "1e9"], "feather must be a number of pixels from 0 to 128"),
        ("feather_inf", ["--feather", "inf"], "feather must be"),
        ("feather_nan", ["--feather", "nan"], "feather must be"),
        ("grow_100000", ["--grow", "100000"], "grow must be a whole number of pixels from 0 to 128"),
        ("clip_skip_50", ["--clip-skip", "50"], "CLIP skip must be at most 2"),
        ("steps_1001", ["--steps", "1001"], "steps must be between 1 and 1000"),
        ("prompt_latin1_byte", ["--prompt", "caf\udce9"], "ok"),
        ("width_16384", ["--width", "16384", "--height", "16384"], "would fit"),
        ("size_4096_under_3gb", ["--width", "4096", "--height", "4096"], "would fit"),  # the child's ulimit -v
    ]


def write(root: Path = CORPUS) -> dict:
    if root.exists():
        shutil.rmtree(root)
    manifest: dict[str, list] = {"models": [], "runs": [], "pictures": [], "command_lines": []}
    for name, data, expected in model_files():
        _put(root / "models" / name, data)
        manifest["models"].append({"file": f"models/{name}", "expect": expected})
    for name, files, expected in diffusers_folders():
        for rel, data in files.items():
            _put(root / "models" / name / rel, data)
        manifest["models"].append({"file": f"models/{name}", "expect": expected})
    for name, data, expected in run_files():
        _put(root / "runs" / name, data)
        manifest["runs"].append({"file": f"runs/{name}", "expect": expected})
    for name, data, role, expected in pictures():
        _put(root / "pictures" / name, data)
        manifest["pictures"].append({"file": f"pictures/{name}", "role": role, "expect": expected})
    for name, args, expected in command_lines():
        manifest["command_lines"].append({"name": name, "args": args, "expect": expected})
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")
    return manifest


def _put(path: Path, data: bytes) -> None:
    assert len(data) < 2**20, f"{path.name} is {len(data)} bytes; corpus files stay under 1 MiB"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


if __name__ == "__main__":
    written = write(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)
    print(f"wrote {sum(len(v) for v in written.values())} corpus entries to {CORPUS}")
