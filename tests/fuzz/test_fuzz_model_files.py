"""Hostile model files through `studio generate --model FILE`: safetensors headers of every shape, files named
for another format, and studio files whose config is wrong in type, range or size (#17 items 1, 7, 11, 12)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_checks import assert_clean, fresh, fuzz_settings, no_leftovers
from hostile_files import config_mutations, mutate_config, safetensors_files, studio_file_bytes, tiny_config

GENERATE = ["generate", "--quiet", "--prompt", "t", "--steps", "2", "--width", "16", "--height", "16", "--cfg", "2"]


def generate(worker, case, model, *extra):
    out = case / "out.png"
    outcome = worker.run({"argv": [*GENERATE, "--model", str(model), *extra, "--out", str(out)]})
    return outcome, out


@given(data=safetensors_files(), suffix=st.sampled_from([".safetensors", ".ckpt", ".bin", ".pt", ""]))
@fuzz_settings(60)
def test_hostile_safetensors_headers(worker, scratch, data, suffix):
    case = fresh(scratch)
    model = case / f"model{suffix}"
    model.write_bytes(data)
    outcome, out = generate(worker, case, model)
    assert_clean(outcome, f"{len(data)}-byte {suffix or 'extensionless'} file {data[:60]!r}", may_succeed=False)
    assert not out.exists() and not no_leftovers(case)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """The tiny-random model as a studio file: its header and its data, to recombine with hostile configs."""
    import torch

    from studio.engine.loading import save_studio_file
    from studio.engine.model import build_tiny_random

    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_studio_file(build_tiny_random(), path, dtype=torch.float32)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def test_the_fuzzed_config_is_tiny_randoms(tiny_file):
    """The hostile configs start from the real tiny-random config, so a harmless mutation really loads and runs."""
    header, _ = tiny_file
    assert json.loads(header["__metadata__"]["studio_config"]) == tiny_config()


@given(mutations=config_mutations())
@fuzz_settings(40)
def test_hostile_model_configs(worker, scratch, tiny_file, mutations):
    """Every config value wrong in type, range or size: refused in one sentence before anything is built, or (a
    harmless change) the model loads and a two-step generation finishes."""
    header, data = tiny_file
    config = mutate_config(tiny_config(), mutations)
    case = fresh(scratch)
    model = case / "hostile.safetensors"
    header = {**header, "__metadata__": {**header["__metadata__"], "studio_config": json.dumps(config)}}
    text = json.dumps(header).encode()
    model.write_bytes(struct.pack("<Q", len(text)) + text + data)
    outcome, out = generate(worker, case, model)
    assert_clean(outcome, f"config mutations {mutations}")
    assert outcome.code != 0 or out.exists()
    assert not no_leftovers(case)


@given(mutations=config_mutations())
@fuzz_settings(25)
def test_hostile_configs_without_their_tensors(worker, scratch, mutations):
    """A 200-byte file whose config describes any model: refused before a byte of it is allocated."""
    case = fresh(scratch)
    model = case / "small.safetensors"
    model.write_bytes(studio_file_bytes(json.dumps(mutate_config(tiny_config(), mutations))))
    outcome, out = generate(worker, case, model)
    assert_clean(outcome, f"config mutations {mutations}", may_succeed=False)
