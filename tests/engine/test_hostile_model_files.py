"""Hostile and careless model files (#17 items 1, 5, 7, 11, 12): each one refused in one sentence, before anything
large is built or read; a model in use survives its file being rewritten on disk."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd_checkpoint_factory import random_model, sd1_config, sd1_state_dict
from studio.engine import archives
from studio.engine.archives import SafetensorsArchive, SafetensorsHeader, sniff
from studio.engine.config_checks import parse_config
from studio.engine.loading import ModelLoadError, load_model, save_studio_file, source_changed
from studio.engine.model import ModelConfig, build_tiny_random
from studio.engine.pipeline import Engine

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
from hostile_files import lying_zip, nested, safetensors_bytes, studio_file_bytes, tiny_config, zip_bomb  # noqa: E402


def load(path, **kwargs):
    return load_model(str(path), CPU, torch.float32, **kwargs)


@contextmanager
def deadline(seconds: int):
    """A hang (a FIFO opened for reading blocks until a writer comes) fails the test instead of stalling CI."""
    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def sd1_tensors():
    return sd1_state_dict(random_model(sd1_config(), seed=3))


# -- 1: the config a studio file carries --------------------------------------------------------------------------

def _config(**changes):
    config = tiny_config()
    for path, value in changes.items():
        part, _, key = path.rpartition("__")
        (config[part] if part else config)[key] = value
    return config


@pytest.mark.parametrize("changes, message", [
    ({"schedule__num_train_timesteps": 3e9}, "schedule.num_train_timesteps must be a whole number"),
    ({"schedule__num_train_timesteps": 3_000_000_000}, "schedule.num_train_timesteps must be between 2 and 100000"),
    ({"unet__num_res_blocks": 200000}, "unet.num_res_blocks must be between 1 and 4"),
    ({"unet__num_heads": 0}, "unet.num_heads must be between 1 and 256"),
    ({"text": "layers"}, "text must be an object"),
    ({"text__layers": "12"}, "text.layers must be a whole number"),
    ({"schedule__num_train_timesteps": -1000}, "between 2 and 100000, got -1000"),
    ({"default_cfg": "7.5"}, "default_cfg must be a finite number"),
    ({"pad_id": 1e9}, "pad_id must be a whole number"),
    ({"pad_id": 10**9}, "pad_id must be between 0 and 49407"),
    ({"unet__norm_groups": 64}, "unet level 0 has 32 channels, not a multiple of norm_groups 64"),
    ({"vae__scaling_factor": -0.5}, r"vae.scaling_factor must be above 0\.0"),
    ({"latent_rgb": [[1, 2, 3]]}, "latent_rgb must be 5 rows"),
    ({"prediction": "x0"}, "prediction must be one of epsilon, v"),
    ({"unet__context_dim": 64}, "reads a 64-wide context but the text encoder is 32 wide"),
])
def test_config_values_are_checked_before_anything_is_built(tmp_path, changes, message):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(studio_file_bytes(json.dumps(_config(**changes))))
    with pytest.raises(ModelLoadError, match=f"hostile.safetensors: invalid model config: .*{message}"):
        load(path)


@pytest.mark.parametrize("text", ["[1, 2]", "not json", "{" * 5000 + "}" * 5000, '{"unet": NaN}', 7])
def test_a_config_that_is_not_an_object_is_one_sentence(text):
    with pytest.raises(ModelLoadError, match="model config"):
        parse_config(text if isinstance(text, str) else json.dumps(text))


def test_a_config_describing_more_than_the_file_holds_is_refused_before_reading(tmp_path, monkeypatch):
    """A 200-byte file whose valid config describes SD: the count is compared before a tensor is read."""
    config = json.loads(ModelConfig().to_json())
    path = tmp_path / "small.safetensors"
    path.write_bytes(studio_file_bytes(json.dumps(config)))
    monkeypatch.setattr(SafetensorsArchive, "get", lambda *a: pytest.fail("a tensor was read"))
    with pytest.raises(ModelLoadError, match=r"describes 1\.\d B parameters but the file holds only 4"):
        load(path)


def test_the_tiny_config_round_trips_through_the_checks():
    assert parse_config(ModelConfig.tiny().to_json()) == ModelConfig.tiny()
    assert parse_config(ModelConfig().to_json()) == ModelConfig()


# -- 7: realistic mistakes ----------------------------------------------------------------------------------------

def test_the_format_comes_from_the_bytes_not_the_name(sd1_tensors, tmp_path):
    renamed = tmp_path / "model.ckpt"
    save_file(sd1_tensors, str(renamed))  # a safetensors file named .ckpt
    assert sniff(renamed) == "safetensors"
    assert load(renamed).config.unet.model_channels == 32
    zipped = tmp_path / "model.safetensors"
    torch.save(sd1_tensors, zipped)  # and a torch zip named .safetensors
    assert sniff(zipped) == "zip"
    assert load(zipped).config.unet.model_channels == 32
    studio = tmp_path / "studio.bin"
    save_studio_file(build_tiny_random(), studio)
    assert load(studio).config.name == "tiny-random"


def _sharded_folder(root: Path, weight_map: dict[str, str], files: dict[str, bytes]) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    for name, data in files.items():
        (root / "unet" / name).write_bytes(data)
    return root


def test_a_sharded_folder_missing_a_shard_names_it(tmp_path):
    shard = safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))
    folder = _sharded_folder(tmp_path / "sd", {"a": "part-00001.safetensors", "b": "part-00002.safetensors"},
                             {"part-00001.safetensors": shard})
    with pytest.raises(ModelLoadError, match=r"sd: shard unet/part-00002\.safetensors named by .* is missing "
                                             r"\(2 shards expected"):
        load(folder)


@pytest.mark.parametrize("target", ["/etc/passwd", "../../dev/zero", "../outside.safetensors", "link.safetensors"])
def test_a_weight_map_entry_outside_the_folder_is_refused(tmp_path, target):
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    folder = _sharded_folder(tmp_path / "sd", {"a": target}, {})
    (folder / "unet" / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ModelLoadError, match="points outside unet/"):
        load(folder)


@pytest.mark.parametrize("index, message", [('{"weight_map": 5}', "has no weight_map"),
                                             ("[" * 100_000, "nested too deeply"),
                                             ('{"weight_map": {"a": 7}}', "not a file name")])
def test_a_damaged_shard_index_is_one_sentence(tmp_path, index, message):
    folder = _sharded_folder(tmp_path / "sd", {"a": "x.safetensors"}, {})
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelLoadError, match=message):
        load(folder)


# -- 11: the safetensors header -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    (nested(100_000), "nested too deeply"),
    (b'{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', r"unknown dtype \['F32'\]"),
    (b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', "invalid shape"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4]}}', "invalid data offsets"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{}}', "a name appears twice"),
    (b'{"a":NaN}', "NaN is not a JSON number"),
    (b'{"__metadata__":{"k":1}}', "__metadata__ must map names to text"),
    (b'{"a":' + b"9" * 5000 + b"}", "not JSON"),
    (b'{"a\\nb":{"dtype":"Q","shape":[],"data_offsets":[0,0]}}', r"tensor a\\nb has an unknown dtype"),
])
def test_hostile_headers_are_one_sentence(tmp_path, raw, message):
    path = tmp_path / "h.safetensors"
    path.write_bytes(safetensors_bytes(None, bytes(8), raw=raw))
    with pytest.raises(ModelLoadError, match=message) as info:
        SafetensorsHeader(path)
    assert "\n" not in str(info.value)


def test_the_header_size_is_capped_before_it_is_read(tmp_path):
    """An 89 MB header took 2.6 GB to parse: anything over 16 MiB is refused from its length field alone."""
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # sparse: the claimed header is never written, never read
        f.write(struct.pack("<Q", 89_000_000))
        f.truncate(8 + 89_000_000 + 8)
    with pytest.raises(ModelLoadError, match="at most 16 MiB"):
        load(path)


# -- 12: resource abuse -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["zero.ckpt", "zero.safetensors", "zero.bin"])
def test_a_device_named_like_a_checkpoint_is_never_read(tmp_path, name):
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    with deadline(20), pytest.raises(ModelLoadError, match="it is a device, not a regular file"):
        load(link)


@pytest.mark.parametrize("name", ["pipe.ckpt", "pipe.safetensors"])
def test_a_fifo_named_like_a_checkpoint_never_blocks(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(ModelLoadError, match=r"it is a pipe \(FIFO\)"):
        load(fifo)


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    path = tmp_path / "bomb.ckpt"
    path.write_bytes(zip_bomb(64 * 2**20))
    assert path.stat().st_size < 2**20
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a: pytest.fail("a member was decompressed"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was reached"))
    with pytest.raises(ModelLoadError, match=r"declare 64 MiB uncompressed in a 0\.\d MiB file"):
        load(path)
    lying = tmp_path / "lying.ckpt"
    lying.write_bytes(lying_zip())
    with pytest.raises(ModelLoadError, match="zip bomb"):
        load(lying)


def test_a_pickle_asking_for_gigabytes_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    """Five bytes: BINUNICODE with a 2.6 GB length. Parsed from memory, refused without an allocation."""
    path = tmp_path / "short.ckpt"
    path.write_bytes(b"\x80\x02X\x00\x00\x00\x9b")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was reached"))
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint"):
        load(path)


# -- 5: a model in use whose file changes -------------------------------------------------------------------------

SHRINK = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from studio.engine import Engine, GenerationRequest
    path = Path(sys.argv[1])
    engine = Engine()
    request = GenerationRequest(prompt="x", model=str(path), steps=1, width=16, height=16, dtype="fp32")
    engine.run(request)
    model = engine.model(str(path), "auto", "fp32")
    path.write_bytes(path.read_bytes()[:100])  # the file shrinks under the loaded model
    with torch.inference_mode():  # every weight touched: a page mapped past the new end would be SIGBUS
        total = sum(float(p.float().sum()) for p in model.parameters())
    print("alive", total == total)
""")


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_a_loaded_model_survives_its_file_shrinking(tmp_path, kind):
    """Loaded fp32 on the CPU, used, then its file cut to 100 bytes: the weights are the process's own memory."""
    path = tmp_path / f"tiny.{kind}"
    model = build_tiny_random()
    if kind == "safetensors":
        save_studio_file(model, path, dtype=torch.float32)
    else:
        torch.save(sd1_state_dict(random_model(sd1_config(), seed=1)), path)
    result = subprocess.run([sys.executable, "-c", SHRINK, str(path)], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"exit {result.returncode} (SIGBUS is -7)\n{result.stderr[-2000:]}"
    assert "alive True" in result.stdout


def test_the_engine_reloads_a_model_whose_file_changed(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_studio_file(build_tiny_random(), path)
    engine = Engine()
    first = engine.model(str(path), "cpu", "fp32")
    assert engine.model(str(path), "cpu", "fp32") is first and not source_changed(first)
    changed = build_tiny_random(seed=5)
    changed.config = dataclasses.replace(ModelConfig.tiny(), default_cfg=3.0)
    save_studio_file(changed, path)
    assert source_changed(first)
    second = engine.model(str(path), "cpu", "fp32")
    assert second is not first and second.config.default_cfg == 3.0


def test_a_file_changed_between_header_and_tensors_is_refused(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_studio_file(build_tiny_random(), path)
    header = SafetensorsHeader(path)
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 8)  # another version: size and mtime differ
    with pytest.raises(ModelLoadError, match="changed on disk while it was being loaded"):
        archive = SafetensorsArchive(path, header)
        archive.get(next(iter(header.tensors)))


def test_tensors_are_read_into_memory_of_their_own(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_studio_file(build_tiny_random(), path, dtype=torch.float32)
    archive = archives.SafetensorsArchive(path)
    try:
        names = list(archive.shapes)[:5]
        tensors = [archive.get(n) for n in names]
    finally:
        archive.close()
    for t in tensors:  # no view into a mapping: each tensor owns exactly its bytes
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
