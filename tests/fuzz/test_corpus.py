"""The checked-in corpus of hostile files (make_corpus.py), each through the CLI child: its one line, or success."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fuzz_checks import assert_clean, fresh, no_leftovers
from make_corpus import CORPUS, ENCODED, write

MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
BASE = ["generate", "--model", "tiny-random", "--prompt", "t", "--steps", "2", "--width", "16", "--height", "16",
        "--quiet"]


def test_the_corpus_is_what_make_corpus_writes(tmp_path):
    """Regenerated into a temporary folder: the same files (and, where no library encoder is involved, the same
    bytes), every one under 1 MiB. Run `python tests/fuzz/make_corpus.py` after changing the builders."""
    write(tmp_path / "corpus")
    fresh_files = {p.relative_to(tmp_path / "corpus"): p for p in (tmp_path / "corpus").rglob("*") if p.is_file()}
    kept = {p.relative_to(CORPUS): p for p in CORPUS.rglob("*") if p.is_file()}
    assert sorted(map(str, fresh_files)) == sorted(map(str, kept))
    for rel, path in kept.items():
        assert path.stat().st_size < 2**20, rel
        if not str(rel).endswith(ENCODED):
            assert _canonical(rel, path) == _canonical(rel, fresh_files[rel]), f"{rel} differs: rerun make_corpus.py"


def _canonical(rel: Path, path: Path):
    """The bytes; for files written by the safetensors library, whose header's key order varies from process to
    process, the parsed header and the data."""
    data = path.read_bytes()
    if rel.parts[0] == "runs" and rel.name != "header_deep.safetensors":
        n = int.from_bytes(data[:8], "little")
        return json.loads(data[8:8 + n]), data[8 + n:]
    return data


def _check(outcome, entry, label, memory_message_ok=False):
    expected = entry["expect"]
    assert_clean(outcome, label, may_succeed=expected == "ok", memory_message_ok=memory_message_ok)
    if expected != "ok":
        assert expected in outcome.lines[0], f"{label}: {outcome.lines[0]}"


@pytest.mark.parametrize("entry", MANIFEST["models"], ids=lambda e: e["file"])
def test_model_files(worker, scratch, entry):
    case = fresh(scratch)
    outcome = worker.run({"argv": ["generate", "--quiet", "--prompt", "t", "--steps", "2", "--width", "16",
                                   "--height", "16", "--model", str(CORPUS / entry["file"]),
                                   "--out", str(case / "o.png")]})
    _check(outcome, entry, entry["file"])
    assert not (case / "o.png").exists()


@pytest.mark.parametrize("entry", MANIFEST["runs"], ids=lambda e: e["file"])
def test_run_files(worker, scratch, entry):
    case = fresh(scratch)
    outcome = worker.run({"argv": ["generate", "--quiet", "--branch", str(CORPUS / entry["file"]), "--from-step",
                                   "1", "--out", str(case / "o.png")]})
    _check(outcome, entry, entry["file"])
    assert (case / "o.png").exists() == (entry["expect"] == "ok")


@pytest.mark.parametrize("entry", MANIFEST["pictures"], ids=lambda e: e["file"])
def test_pictures(worker, scratch, entry):
    case = fresh(scratch)
    picture = str(CORPUS / entry["file"])
    if entry["role"] == "init":
        args = ["--init", picture, "--strength", "0.5"]
    else:
        init = case / "init.png"
        Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(init)
        args = ["--init", str(init), "--mask", picture]
    argv = [a for a in BASE if a not in ("--width", "--height", "16")] if entry["role"] == "init" else BASE
    outcome = worker.run({"argv": [*argv, *args, "--out", str(case / "o.png")]})
    _check(outcome, entry, entry["file"])
    assert not no_leftovers(case)


@pytest.mark.parametrize("entry", MANIFEST["command_lines"], ids=lambda e: e["name"])
def test_command_lines(worker, scratch, entry):
    case = fresh(scratch)
    outcome = worker.run({"argv": [*BASE, *entry["args"], "--out", str(case / "o.png")]})
    _check(outcome, entry, entry["name"], memory_message_ok=True)
    assert (case / "o.png").exists() == (entry["expect"] == "ok")
