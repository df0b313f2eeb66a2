"""model_info: what a probe tells the UI about the built-in models and about SD checkpoints opened from files."""

import dataclasses
import hashlib
import importlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from sd_checkpoint_factory import random_model, sd1_config, sd1_state_dict, sd2_config, sd2_state_dict
from studio.engine.api import ModelInfo
from studio.engine.loading import load_model
from studio.engine import user_cache
from studio.engine.model_info import file_hash, model_info

model_info_module = importlib.import_module("studio.engine.model_info")  # the package exports a function of that name

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def probe(spec: str) -> ModelInfo:
    return model_info(load_model(spec, CPU, torch.float32), spec)


def assert_plain(info: ModelInfo) -> None:
    """Only plain values cross to the UI thread: no tensors, no torch dtypes, nothing live."""
    for f in dataclasses.fields(info):
        value = getattr(info, f.name)
        plain = type(value) in (str, int, float, bool) or (type(value) is tuple and all(type(v) is str for v in value))
        assert plain or (f.name == "file_hash" and value is None), (f.name, type(value))
    hash(info)  # frozen and hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.label = "changed"  # type: ignore[misc]


def test_the_shipped_model():
    info = probe("default")
    assert_plain(info)
    # a 3-level VAE (4× per side) in front of a 9-channel v-prediction UNet, trained at 64 px (MODEL_CARD.md)
    assert info == ModelInfo(
        spec="default", label="studio-shapes (built-in)", default_size=64, size_multiple=4, default_cfg=3.0,
        prediction="v", inpaints_natively=True, latent_channels=4, vae_factor=4,
    )


def test_tiny_random():
    info = probe("tiny-random")
    assert_plain(info)
    assert info == ModelInfo(
        spec="tiny-random", label="tiny-random (built-in)", default_size=64, size_multiple=2, default_cfg=7.5,
        prediction="epsilon", inpaints_natively=False, latent_channels=4, vae_factor=2,
    )


def test_sd1_checkpoint(tmp_path):
    path = tmp_path / "my-sd1-model.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(), seed=1)), str(path))
    info = probe(str(path))
    assert_plain(info)
    # the SD topology: a 4-level VAE (8× per side) sets the size multiple; the 8× UNet adds nothing to it
    assert info == ModelInfo(
        spec=str(path), label="my-sd1-model.safetensors", default_size=512, size_multiple=8, default_cfg=7.5,
        prediction="epsilon", inpaints_natively=False, latent_channels=4, vae_factor=8,
        file_hash=hashlib.sha256(path.read_bytes()).hexdigest()[:10],  # A1111's short hash of the whole file
    )


def test_sd2_v_checkpoint_with_its_yaml(tmp_path):
    path = tmp_path / "sd2-v.safetensors"
    save_file(sd2_state_dict(random_model(sd2_config(), seed=2)), str(path))
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    info = probe(str(path))
    assert_plain(info)
    assert info.label == "sd2-v.safetensors" and info.prediction == "v" and not info.inpaints_natively
    # the factory's SD2 has a 2-level VAE: 2× per side, so sides need only be even
    assert info.vae_factor == info.size_multiple == 2
    # 768 is for SD2-768's 1024-wide text context; this tiny one (64 wide) keeps SD's 512
    assert info.default_size == 512 and info.latent_channels == 4


def test_nine_channel_inpainting_checkpoint(tmp_path):
    path = tmp_path / "inpainting.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(in_channels=9), seed=4)), str(path))
    info = probe(str(path))
    assert_plain(info)
    assert info.inpaints_natively and info.prediction == "epsilon"
    assert info.size_multiple == info.vae_factor == 8 and info.latent_channels == 4


def test_labels_of_paths(tmp_path):
    model = random_model(sd1_config(), seed=1)
    folder = tmp_path / "some-diffusers-folder"
    assert model_info(model, str(folder) + "/").label == "some-diffusers-folder"
    assert model_info(model, "~/models/x.ckpt").label == "x.ckpt"


def test_file_hash_is_cached_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"first version")
    first = file_hash(str(path))
    assert first == hashlib.sha256(b"first version").hexdigest()[:10]
    reads = []
    real_open = type(path).open
    monkeypatch.setattr(type(path), "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k))
    assert file_hash(str(path)) == first and path not in reads  # the same file again: not read again
    path.write_bytes(b"second version!")  # another size (and mtime): hashed anew
    os.utime(path, ns=(1, 1))
    reads.clear()  # write_bytes opened it too
    assert file_hash(str(path)) == hashlib.sha256(b"second version!").hexdigest()[:10] and reads.count(path) == 1
    assert file_hash("default") is None and file_hash("tiny-random") is None
    assert file_hash(str(tmp_path)) is None and file_hash(str(tmp_path / "missing.ckpt")) is None


def test_file_hashes_are_kept_for_the_next_start_and_a_damaged_cache_costs_only_a_rehash(tmp_path, monkeypatch):
    monkeypatch.setenv(user_cache.CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"weights")
    expected = hashlib.sha256(b"weights").hexdigest()[:10]
    assert file_hash(str(path)) == expected
    monkeypatch.setattr(model_info_module, "_hashes", {})  # a new process
    reads = []
    real_open = type(path).open
    monkeypatch.setattr(type(path), "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k))
    assert file_hash(str(path)) == expected and path not in reads  # from the cache file, not the model file
    saved = tmp_path / "cache" / model_info_module.HASH_FILE
    for damage in (b"{not json", b"[1, 2]", b'{"x": 3}', b""):
        saved.write_bytes(damage)
        monkeypatch.setattr(model_info_module, "_hashes", {})
        assert file_hash(str(path)) == expected and reads.count(path) == 1  # hashed again, and saved again
        reads.clear()
        assert json.loads(saved.read_text())[f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}"] == expected
