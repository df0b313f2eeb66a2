"""The CLI's --branch output records where the branch came from (A1111-style `Branched from` field), and every PNG
names the model by file name and short hash instead of its path (#18 item 8)."""

import hashlib

from studio.cli import main
from studio.engine import GenerationRequest
from studio.engine.images import parse_parameters, read_parameters
from studio.engine.loading import save_studio_file
from studio.engine.model import build_tiny_random

TINY = ["--model", "tiny-random", "--steps", "4", "--quiet"]


def test_a_branched_png_records_its_lineage_across_two_branches(tmp_path):
    root, child, grandchild = (tmp_path / name for name in ("root.safetensors", "child.safetensors", "g.png"))
    assert main(["generate", *TINY, "--prompt", "a red circle", "--seed", "3", "--cfg", "2",
                 "--out", str(tmp_path / "root.png"), "--save-run", str(root)]) == 0
    assert main(["generate", "--quiet", "--branch", str(root), "--from-step", "1", "--prompt", "a blue square",
                 "--seed", "4", "--out", str(tmp_path / "child.png"), "--save-run", str(child)]) == 0
    assert main(["generate", "--quiet", "--branch", str(child), "--from-step", "2", "--cfg", "5",
                 "--out", str(grandchild)]) == 0
    assert "Branched from" not in read_parameters(tmp_path / "root.png")
    settings = parse_parameters(read_parameters(grandchild))
    assert settings["prompt"] == "a blue square" and settings["cfg"] == 5.0 and settings["model"] == "tiny-random"
    parent, first = settings["lineage"]
    assert parent["from_step"] == 2 and parent["settings"]["seed"] == 4 and parent["settings"]["cfg"] == 2.0
    assert first["from_step"] == 1 and first["settings"]["prompt"] == "a red circle"
    again = GenerationRequest.from_settings(first["settings"])
    assert (again.seed, again.cfg, again.steps, again.model) == (3, 2.0, 4, "tiny-random")


def test_a_model_file_is_written_by_name_and_short_hash(tmp_path):
    model = tmp_path / "my-model.safetensors"
    save_studio_file(build_tiny_random(), model)
    out = tmp_path / "out.png"
    assert main(["generate", "--model", str(model), "--steps", "2", "--quiet", "--out", str(out)]) == 0
    text = read_parameters(out)
    short = hashlib.sha256(model.read_bytes()).hexdigest()[:10]
    assert f"Model hash: {short}, Model: my-model," in text and str(tmp_path) not in text
