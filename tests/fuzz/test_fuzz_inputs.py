"""Hostile run files, pictures and command lines through `studio generate` (#17 items 3, 4, 8, 9, 10, 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fuzz_checks import assert_clean, fresh, fuzz_settings, no_leftovers
from hostile_files import HOSTILE_NUMBERS, IMAGE_MAGIC, image_bytes, json_values, png_claiming

TINY = ["--model", "tiny-random", "--quiet", "--steps", "2"]


# -- run files ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    """Two real runs to damage: a stochastic txt2img run (RNG states per step) and an inpainting run."""
    from studio.engine import Engine, GenerationRequest

    folder = tmp_path_factory.mktemp("runs")
    engine = Engine()
    plain = engine.run(GenerationRequest(prompt="a", model="tiny-random", sampler="euler_a", steps=3, width=16,
                                         height=16, cfg=2.0))
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1
    inpaint = engine.run(GenerationRequest(prompt="b", model="tiny-random", steps=3, width=16, height=16, cfg=2.0,
                                           init_image=image, mask=mask, strength=1.0))
    runs = []
    for name, run in (("plain", plain), ("inpaint", inpaint)):
        path = folder / f"{name}.safetensors"
        run.save(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        runs.append((meta, load_file(str(path))))
    return runs


META_KEYS = ["request", "grid", "from_step", "kind", "status", "guidance_loss", "lineage", "preview", "parent_id",
             "id", "cheap_decode", "model_hash"]
SETTINGS = ["steps", "width", "height", "seed", "cfg", "eta", "sampler", "prompt", "strength", "grow", "feather",
            "clip_skip", "guides", "karras", "model", "recurrence", "guide_steps", "padding", "inpaint_mode"]


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


meta_damage = st.tuples(st.just("meta"), st.sampled_from(META_KEYS),
                        st.one_of(json_values(8).map(_text), st.text(max_size=20), st.just("")))
setting_damage = st.tuples(st.just("setting"), st.sampled_from(SETTINGS),
                           st.one_of(st.sampled_from(HOSTILE_NUMBERS), json_values(6)))
grid_damage = st.tuples(st.just("grid"), st.sampled_from(["short", "long", "nan", "zero", "flat"]), st.integers(0, 999))
tensor_damage = st.tuples(st.just("tensor"),
                          st.sampled_from(["x_t.1", "eps.1", "rng.0", "rng.2", "x_t.2", "image", "final_latent",
                                           "mask", "init_image", "x_t.7", "guide_image.0", "x0.1", "guidance.0"]),
                          st.sampled_from(["delete", "garbage", "reshape", "uint8", "huge_values"]))
damages = st.lists(st.one_of(meta_damage, setting_damage, grid_damage, tensor_damage), min_size=1, max_size=3)


def damage(meta: dict, tensors: dict, changes) -> tuple[dict, dict]:
    meta, tensors = dict(meta), dict(tensors)
    for kind, key, how in changes:
        if kind == "meta":
            meta[key] = how
        elif kind == "setting":
            request = json.loads(meta["request"]) if meta.get("request", "").startswith("{") else {}
            request[key] = how
            meta["request"] = json.dumps(request)
        elif kind == "grid":
            try:
                grid = json.loads(meta["grid"])
            except ValueError:
                continue
            if not isinstance(grid, list):
                continue
            if key == "short":
                grid = grid[:2]
            elif key == "long":
                grid = grid + [[0.0, 0.99]] * how
            elif key == "nan" and grid:
                meta["grid"] = json.dumps(grid).replace(str(grid[0][1]) if isinstance(grid[0], list) else "0", "NaN", 1)
                continue
            elif key == "zero":
                grid = [[t, 0.0] for t, _ in grid] if all(isinstance(g, list) and len(g) == 2 for g in grid) else grid
            elif key == "flat":
                grid = [[1, 1]] * (how % 7)
            meta["grid"] = json.dumps(grid)
        else:
            shape = tuple(tensors["x_t.0"].shape) if "x_t.0" in tensors else (1, 4, 8, 8)
            if how == "delete":
                tensors.pop(key, None)
            elif how == "garbage":
                tensors[key] = torch.arange(37, dtype=torch.uint8)
            elif how == "reshape":
                tensors[key] = torch.zeros(shape[0], shape[1], shape[2] + 1, shape[3])
            elif how == "uint8":
                tensors[key] = torch.zeros(shape, dtype=torch.uint8)
            else:
                tensors[key] = torch.full(shape, 3e38)
    return meta, tensors


@given(which=st.integers(0, 1), changes=damages, step=st.integers(-1, 4),
       extra=st.sampled_from([[], ["--prompt", "other"], ["--sampler", "ddim"], ["--steps", "5"], ["--seed", "9"]]))
@fuzz_settings(40)
def test_damaged_run_files(worker, scratch, base_runs, which, changes, step, extra):
    meta, tensors = damage(*base_runs[which], changes)
    case = fresh(scratch)
    path = case / "run.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    out = case / "branch.png"
    outcome = worker.run({"argv": ["generate", "--quiet", "--branch", str(path), "--from-step", str(step), *extra,
                                   "--out", str(out)]})
    assert_clean(outcome, f"run damaged by {changes}, branched at {step} with {extra}")
    if outcome.code == 0:  # a harmless change: the picture is written and its parameters describe it
        from studio.engine.images import parse_parameters, read_parameters

        settings = parse_parameters(read_parameters(out))
        assert Image.open(out).size == (settings["width"], settings["height"])
    assert not no_leftovers(case)


# -- pictures -----------------------------------------------------------------------------------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "LAB", "YCbCr"]
FORMATS = {"PNG": ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"], "TIFF": MODES, "JPEG": ["L", "RGB", "CMYK"],
           "BMP": ["1", "L", "P", "RGB"], "GIF": ["L", "P"], "WEBP": ["RGB", "RGBA"]}


@st.composite
def pictures(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "truncated", "magic", "bomb"]))
    if kind == "bomb":
        return png_claiming(draw(st.sampled_from([50000, 20000, 65535, 2**31 - 1])), draw(st.integers(1, 50000)))
    if kind == "magic":
        return draw(st.sampled_from(IMAGE_MAGIC)) + draw(st.binary(max_size=64))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    orientation = draw(st.one_of(st.none(), st.integers(0, 9))) if fmt in ("JPEG", "TIFF") else None
    data = image_bytes(mode, size, fmt, seed=draw(st.integers(0, 3)), orientation=orientation)
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return data


@given(picture=pictures(), role=st.sampled_from(["init", "mask"]), only_masked=st.booleans())
@fuzz_settings(35)
def test_hostile_pictures(worker, scratch, picture, role, only_masked):
    case = fresh(scratch)
    hostile = case / "picture"
    hostile.write_bytes(picture)
    if role == "init":
        args = ["--init", str(hostile), "--strength", "0.5"]
    else:
        init = case / "init.png"
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(init)
        args = ["--init", str(init), "--mask", str(hostile), "--width", "16", "--height", "16"]
        args += ["--only-masked"] * only_masked
    out = case / "out.png"
    outcome = worker.run({"argv": ["generate", *TINY, "--prompt", "p", *args, "--out", str(out)]})
    assert_clean(outcome, f"{role} {picture[:40]!r} ({len(picture)} bytes)")
    assert not no_leftovers(case)


# -- command lines ------------------------------------------------------------------------------------------------

SIDES = ["-8", "0", "1", "2", "6", "16", "24", "32", "65", "16392", "100000"]  # valid ones small: each case runs
NUMBERS = ["nan", "inf", "-inf", "-1", "0", "0.5", "1", "2", "1e308", "1e9", "-0"]
OPTIONS = {
    "--width": st.sampled_from(SIDES), "--height": st.sampled_from(SIDES),
    "--steps": st.sampled_from(["-1", "0", "1", "2", "3", "1001", "1000000"]),
    "--cfg": st.sampled_from(NUMBERS), "--eta": st.sampled_from(NUMBERS), "--strength": st.sampled_from(NUMBERS),
    "--seed": st.sampled_from(["-1", "0", "7", str(2**63), str(2**64), str(10**30)]),
    "--clip-skip": st.sampled_from(["-1", "0", "1", "2", "3", "99"]),
    "--feather": st.sampled_from(NUMBERS + ["128", "129"]), "--grow": st.sampled_from(["-1", "0", "3", "128", "129",
                                                                                         "100000"]),
    "--padding": st.sampled_from(["-1", "0", "8", "100000"]),
    "--sampler": st.one_of(st.sampled_from(["ddim", "euler_a", "dpmpp_2m", "unipc", "heun", "plms", ""]),
                           st.text(max_size=6)),
    "--prompt": st.text(max_size=40), "--negative": st.text(max_size=20),
}


@given(options=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), min_size=1, max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys})),
    flags=st.lists(st.sampled_from(["--karras", "--only-masked", "--no-paste-back"]), unique=True, max_size=2),
    sides=st.sampled_from([[], ["--timeline", "t.gif"], ["--save-run", "r.safetensors"]]))
@fuzz_settings(30)
def test_hostile_command_lines(worker, scratch, options, flags, sides):
    case = fresh(scratch)
    argv = ["generate", "--model", "tiny-random", "--quiet", "--width", "16", "--height", "16", "--steps", "2"]
    for option, value in options.items():
        argv += [f"{option}={value}"]  # "=": a value that starts with "-" stays a value
    argv += flags + [str(case / s) if s.endswith((".gif", ".safetensors")) else s for s in sides]
    out = case / "out.png"
    outcome = worker.run({"argv": argv + ["--out", str(out)]})
    assert_clean(outcome, " ".join(argv), memory_message_ok=True)
    assert (outcome.code == 0) == out.exists()
    assert not no_leftovers(case)
