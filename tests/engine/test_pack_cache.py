"""The packed-weight cache (engine/pack_cache.py): a second start reads the packs an earlier one wrote, makes none
of its own and draws the same picture bit for bit; a damaged, stale or unwanted entry is never used."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from sd_checkpoint_factory import random_model, sd1_config, sd1_state_dict
from test_cpu_kernels import count_packs
from studio import cli
from studio.engine import Engine, GenerationRequest, cpu_kernels, devices, pack_cache, user_cache

pytestmark = [
    pytest.mark.skipif(not cpu_kernels.kernels_work(), reason="this torch build has no usable oneDNN ops"),
    pytest.mark.skipif(pack_cache._shim() is None, reason="this torch has no entry point to make a pack from bytes"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv(user_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pack_cache.DISABLE_ENV, raising=False)
    monkeypatch.setattr(pack_cache, "MIN_BYTES", 0)  # the test model is small; SD's packs are gigabytes
    path = tmp_path / "tiny-sd1.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(), seed=8)), str(path))
    return path


def request(path, size=64) -> GenerationRequest:
    return GenerationRequest(prompt="a red circle", model=str(path), steps=3, width=size, height=size, cfg=3.0,
                             seed=2, device="cpu", dtype="fp32")


def first_start(path, size=64) -> np.ndarray:
    engine = Engine()
    assert engine.prepare(str(path), "cpu", "fp32", size, size)
    pack_cache.wait_for_writes()
    return engine.run(request(path, size)).image


def entries() -> list:
    folder = user_cache.cache_dir() / pack_cache.FOLDER
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def restored_layers(model) -> int:
    return sum(m._pack_source is not None for m in model.modules() if isinstance(m, cpu_kernels._PackedWeight))


def test_a_second_start_reads_the_packs_and_draws_the_same_picture(checkpoint, monkeypatch):
    picture = first_start(checkpoint)
    assert len(entries()) == 1
    folder = user_cache.cache_dir() / pack_cache.FOLDER / entries()[0]
    index = json.loads((folder / pack_cache.INDEX).read_text())
    assert (folder / pack_cache.BLOB).stat().st_size == index["bytes"]
    assert all(entry["offset"] % pack_cache.ALIGN == 0 for entry in index["packs"])

    engine = Engine()  # a new start
    model = engine.model(str(checkpoint), "cpu", "fp32")  # (loading tries the kernels on small layers of its own)
    made = count_packs(monkeypatch)
    assert engine.prepare(str(checkpoint), "cpu", "fp32", 64, 64)
    assert restored_layers(model) == len(index["packs"]) > 100
    assert made == []  # nothing the packing pass reaches was packed again
    again = engine.run(request(checkpoint)).image
    assert made == []
    assert np.array_equal(again, picture)
    # the weights, read back through torch's API from the mapped packs, are the file's
    fresh = Engine().model(str(checkpoint), "cpu", "fp32").state_dict()
    restored = model.state_dict()
    assert restored.keys() == fresh.keys()
    assert all(torch.equal(restored[k], fresh[k]) for k in fresh)
    # a restored model still copies (the mapping is not copied; the copy packs afresh)
    twin = copy.deepcopy(model.unet)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 20.0])
    context = torch.randn(2, 77, model.config.unet.context_dim)
    with torch.inference_mode():
        assert torch.equal(twin(x, t, context), model.unet(x, t, context))
    assert pack_cache.store(model, (2, 8, 8)) is None  # an entry that exists is not written again


@pytest.mark.parametrize("damage", ["bytes", "truncated", "index", "other layers"])
def test_a_damaged_entry_is_dropped_and_the_model_packs_again(checkpoint, monkeypatch, damage):
    picture = first_start(checkpoint)
    folder = user_cache.cache_dir() / pack_cache.FOLDER / entries()[0]
    blob, index_path = folder / pack_cache.BLOB, folder / pack_cache.INDEX
    index = json.loads(index_path.read_text())
    if damage == "bytes":  # the first layer's values (one of the three checked against the file)
        data = bytearray(blob.read_bytes())
        start = index["packs"][0]["offset"]
        data[start : start + 16] = bytes(16)
        blob.write_bytes(bytes(data))
    elif damage == "truncated":
        blob.write_bytes(blob.read_bytes()[: index["bytes"] // 2])
    elif damage == "index":
        index_path.write_text("{not json")
    else:
        index["packs"][0]["name"] = "model.diffusion_model.no_such_layer"
        index_path.write_text(json.dumps(index))
    made = count_packs(monkeypatch)
    engine = Engine()
    assert engine.prepare(str(checkpoint), "cpu", "fp32", 64, 64)
    pack_cache.wait_for_writes()
    assert restored_layers(engine.model(str(checkpoint), "cpu", "fp32")) == 0
    assert "PackedConv2d" in made and "PackedLinear" in made  # packed as without a cache
    assert np.array_equal(engine.run(request(checkpoint)).image, picture)
    # the damaged entry went, and this start wrote a good one in its place
    assert len(entries()) == 1
    assert restored_layers(_started(checkpoint)) > 100


def _started(path, size=64):
    engine = Engine()
    engine.prepare(str(path), "cpu", "fp32", size, size)
    return engine.model(str(path), "cpu", "fp32")


def test_entries_are_per_size_and_the_two_latest_are_kept(checkpoint):
    for size in (64, 96, 128):
        first_start(checkpoint, size)
    assert len(entries()) == pack_cache.ENTRIES_KEPT == 2
    assert restored_layers(_started(checkpoint, 128)) > 100
    assert restored_layers(_started(checkpoint, 96)) > 100
    assert restored_layers(_started(checkpoint, 64)) == 0  # the oldest was evicted (this start wrote it again)


def test_no_entry_when_turned_off_too_small_or_not_possible(checkpoint, monkeypatch):
    monkeypatch.setenv(pack_cache.DISABLE_ENV, "1")
    picture = first_start(checkpoint)
    assert entries() == []
    monkeypatch.delenv(pack_cache.DISABLE_ENV)
    monkeypatch.setattr(pack_cache, "MIN_BYTES", 256 * 2**20)  # the real threshold: this model packs in milliseconds
    assert np.array_equal(first_start(checkpoint), picture)
    assert entries() == []
    monkeypatch.setattr(pack_cache, "MIN_BYTES", 0)
    monkeypatch.setattr(pack_cache, "_shim", lambda: None)  # a torch without the entry points
    assert np.array_equal(first_start(checkpoint), picture)
    assert entries() == []
    assert Engine().prepare("tiny-random", "cpu", "fp32") is False  # a model built in code has nothing to key on


def test_the_key_follows_the_file_the_precision_and_the_size(checkpoint):
    model = Engine().model(str(checkpoint), "cpu", "fp32")

    def key(files=model.source_files, dtype=torch.float32, shape=(2, 8, 8)):
        return pack_cache.entry_key(files, model.config, dtype, shape)

    assert key() == key() and key() is not None
    assert key() != key(shape=(2, 12, 12)) and key() != key(dtype=torch.bfloat16)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a newer file: its signature changes
    assert key() != key(files=Engine().model(str(checkpoint), "cpu", "fp32").source_files)
    assert key(files=()) is None  # a model built in code


def test_a_second_start_does_not_read_the_weights_it_has_packs_for(checkpoint, monkeypatch):
    """Engine.prepare loads for its size: with an entry, the packed layers' weights (but the three compared with the
    cached values) are never read from the file, and the model is the same as one read whole."""
    from studio.engine.archives import SafetensorsArchive

    picture = first_start(checkpoint)
    read = []
    original = SafetensorsArchive.get
    monkeypatch.setattr(SafetensorsArchive, "get", lambda self, name: read.append(name) or original(self, name))
    engine = Engine()
    assert engine.prepare(str(checkpoint), "cpu", "fp32", 64, 64)
    model = engine.model(str(checkpoint), "cpu", "fp32")
    index = json.loads((user_cache.cache_dir() / pack_cache.FOLDER / entries()[0] / pack_cache.INDEX).read_text())
    packed = {entry["name"] for entry in index["packs"]}
    unread = {f"{name}.weight" for name in packed} - set(read)
    assert len(unread) == len(packed) - 3  # all but the first, middle and last layer's
    reads = len(read)
    whole = Engine().model(str(checkpoint), "cpu", "fp32").state_dict()
    assert reads == len(whole) - len(unread)  # every other tensor, once
    assert restored_layers(model) == len(packed)
    restored = model.state_dict()  # the unread weights, from the packs
    assert all(torch.equal(restored[k], whole[k]) for k in whole)
    assert np.array_equal(engine.run(request(checkpoint)).image, picture)


def test_an_entry_that_fails_after_a_partial_read_reads_the_whole_file(checkpoint, monkeypatch):
    picture = first_start(checkpoint)
    folder = user_cache.cache_dir() / pack_cache.FOLDER / entries()[0]
    index = json.loads((folder / pack_cache.INDEX).read_text())
    middle = index["packs"][len(index["packs"]) // 2]  # a layer read and compared: its cached values are wrong
    data = bytearray((folder / pack_cache.BLOB).read_bytes())
    data[middle["offset"] : middle["offset"] + 8] = b"\xff" * 8
    (folder / pack_cache.BLOB).write_bytes(bytes(data))
    engine = Engine()
    assert engine.prepare(str(checkpoint), "cpu", "fp32", 64, 64)
    pack_cache.wait_for_writes()
    model = engine.model(str(checkpoint), "cpu", "fp32")
    assert restored_layers(model) == 0
    whole = Engine().model(str(checkpoint), "cpu", "fp32").state_dict()
    assert all(torch.equal(model.state_dict()[k], whole[k]) for k in whole)
    assert np.array_equal(engine.run(request(checkpoint)).image, picture)


@pytest.mark.skipif(not devices.cpu_runs_bf16_natively(), reason="bf16 packs exist only on a CPU that runs bf16")
def test_bf16_packs_come_back_too(checkpoint):
    """Precision "fast" on a CPU with AVX512-BF16 or AMX packs in bf16: its entry is its own and reads back."""
    bf16 = request(checkpoint).replace(dtype="bf16")
    engine = Engine()
    assert engine.prepare(str(checkpoint), "cpu", "bf16", 64, 64)
    pack_cache.wait_for_writes()
    picture = engine.run(bf16).image
    again = Engine()
    assert again.prepare(str(checkpoint), "cpu", "bf16", 64, 64)
    assert restored_layers(again.model(str(checkpoint), "cpu", "bf16")) > 100
    assert np.array_equal(again.run(bf16).image, picture)
    assert len(entries()) == 1


def cli_argv(checkpoint, out) -> list[str]:
    return ["generate", "--model", str(checkpoint), "--prompt", "a red circle", "--steps", "2", "--width", "64",
            "--height", "64", "--device", "cpu", "--dtype", "fp32", "--seed", "2", "--out", str(out)]


def test_the_cli_writes_the_entry_after_its_picture_and_not_beside_it(checkpoint, tmp_path, monkeypatch, capsys):
    writers_while_generating = []
    generate = Engine.generate

    def watched(self, *args, **kwargs):
        for event in generate(self, *args, **kwargs):
            writers_while_generating.append(len(pack_cache._writers) + len(entries()))
            yield event

    monkeypatch.setattr(Engine, "generate", watched)
    out = tmp_path / "picture.png"
    assert cli.main(cli_argv(checkpoint, out)) == 0
    assert writers_while_generating and set(writers_while_generating) == {0}  # no writer thread, no entry yet
    assert out.exists() and len(entries()) == 1  # written before the process could end
    assert "keeping the packed weights for the next start" in capsys.readouterr().err
    assert restored_layers(_started(checkpoint)) > 100  # and it is a whole entry a later start reads


def test_a_run_that_fails_after_packing_writes_no_entry(checkpoint, tmp_path, monkeypatch):
    def fails(self, *args, **kwargs):
        raise KeyboardInterrupt  # the user's Ctrl+C after the packing, before the picture

    generate = Engine.generate
    monkeypatch.setattr(Engine, "generate", fails)
    assert cli.main(cli_argv(checkpoint, tmp_path / "never.png")) == 130
    assert entries() == [] and pack_cache._held is None
    monkeypatch.setattr(Engine, "generate", generate)
    assert first_start(checkpoint) is not None and len(entries()) == 1  # the next start (not held) writes it
