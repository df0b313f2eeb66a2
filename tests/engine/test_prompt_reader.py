"""The prompt reader's contract (engine/prompt_reader.py): what it refuses to read, the caption it writes, its file
format, and how a run uses it. The trained reader's accuracy is tested in tests/training/test_reader.py."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.engine import Engine, GenerationRequest
from studio.engine.archives import ModelLoadError
from studio.engine.loading import load_model
from studio.engine.prompt_reader import UNSTATED, ObjectReading, PromptReader, Reading, ReaderConfig, load_reader, \
    save_reader, words_of

FRAMES = {"one": "{o} {p} on a {bg} background", "two": "{o1} {p1} and {o2} {p2} on a {bg} background",
          "noun": "a {s} {c} {h}", "noun_without_size": "a {c} {h}",
          "places": {"top": "at the top", "left": "on the left", "center": "in the center"},
          "cells": {"top": [0, 1], "left": [1, 0], "center": [1, 1]}}


def tiny_reader() -> PromptReader:
    torch.manual_seed(0)
    config = ReaderConfig(words=("<pad>", "<unknown>", "a", "red", "blue", "orange", "star", "ring", "top", "left"),
                          shapes=("star", "ring"), colours=("red", "blue", "orange"),
                          sizes=("small", "large", UNSTATED),
                          positions=("top", "left", "center"),
                          lexicon={"shape": ["star", "ring"], "colour": ["red", "blue", "orange"],
                                   "position": ["top", "left", "center"]},
                          frames=FRAMES, width=16, layers=1, heads=2, max_words=12)
    return PromptReader(config).eval()


def test_words_split_punctuation_and_case():
    assert words_of("Top-left: a RED star.") == ["top", "-", "left", ":", "a", "red", "star", "."]


def test_caption_writes_the_reading_in_the_frames_with_articles_fixed():
    reader = tiny_reader()
    one = Reading((ObjectReading("star", "orange", "large", "top"),), "blue", 0.9)
    assert reader.caption(one) == "a large orange star at the top on a blue background"
    two = Reading((ObjectReading("ring", "orange", UNSTATED, "left"), ObjectReading("star", "red", "small", "top")),
                  "orange", 0.9)
    assert reader.caption(two) == ("an orange ring on the left and a small red star at the top on an orange "
                                   "background")


def test_inpainting_names_only_the_objects_in_the_hole(monkeypatch):
    reader = tiny_reader()
    three = Reading((ObjectReading("star", "red", "small", "top"), ObjectReading("ring", "blue", "large", "left"),
                     ObjectReading("star", "blue", UNSTATED, "center")), "orange", 0.9)
    monkeypatch.setattr(reader, "read", lambda prompt: three)
    assert reader.rewrite("three things") == "three things"  # no three-object sentence: as typed
    hole = np.zeros((64, 64), np.float32)
    hole[24:40, 4:18] = 1  # the left cell
    assert reader.rewrite("three things", hole) == "a large blue ring on the left on an orange background"
    hole[24:40, 26:40] = 1  # and the centre: two objects
    assert reader.rewrite("three things", hole) == ("a large blue ring on the left and a blue star in the center on "
                                                    "an orange background")
    elsewhere = np.zeros((64, 64), np.float32)
    elsewhere[50:60, 50:60] = 1  # bottom right: no object there, the whole reading (three: as typed)
    assert reader.rewrite("three things", elsewhere) == "three things"
    one = Reading(three.objects[:1], "orange", 0.9)
    monkeypatch.setattr(reader, "read", lambda prompt: one)
    assert reader.rewrite("one thing", elsewhere) == "a small red star at the top on an orange background"


@pytest.mark.parametrize("prompt", ["", "   ", "a (red:1.3) star at the top on blue", "a cat",
                                    "a red star at the top"])  # the last: no background colour is said
def test_incomplete_or_emphasised_prompts_are_not_read(prompt):
    reader = tiny_reader()
    assert reader.read(prompt) is None
    assert reader.rewrite(prompt) == prompt


def test_a_reading_needs_as_many_named_facts_as_it_claims(monkeypatch):
    """Even when the net says "two objects", a prompt that names one shape and two colours is passed through."""
    reader = tiny_reader()

    def confident(ids):  # slots 0 and 1 exist, every field confident
        b = ids.shape[0]
        big = lambda n, k: torch.nn.functional.one_hot(torch.full((b, 3), k), n).float() * 20
        exists = torch.nn.functional.one_hot(torch.tensor([1, 1, 0]).expand(b, 3), 2).float() * 20
        return {"exists": exists, "shape": big(2, 0), "colour": big(3, 0), "size": big(3, 0),
                "position": big(3, 0), "background": torch.nn.functional.one_hot(torch.full((b,), 1), 3).float() * 20}

    monkeypatch.setattr(reader, "forward", confident)
    assert reader.read("a red star at the top on blue") is None  # one shape word for two objects
    # three shapes named, two read: the one it missed would vanish from a caption of the whole scene
    three_named = "a red star at the top, a red ring on the left and a blue star in the center on orange"
    assert reader.read(three_named).every_object is False
    assert reader.rewrite(three_named) == three_named
    # inpainting needs only what is in the hole: the left cell holds an object it read
    hole = np.zeros((64, 64), np.float32)
    hole[24:40, 4:18] = 1
    assert reader.rewrite(three_named, hole) != three_named
    reading = reader.read("a red star at the top and a red ring on the left on blue")
    assert reading is not None and len(reading.objects) == 2 and reading.background == "blue"
    assert reading.confidence > 0.99


def test_file_round_trip_keeps_every_output(tmp_path):
    reader = tiny_reader()
    path = tmp_path / "reader.safetensors"
    save_reader(reader, path)
    loaded = load_reader(path)
    assert loaded.config == reader.config
    ids = reader.ids(["a red star at the top", "blue ring left"])
    ours, theirs = reader(ids), loaded(ids)
    for key in ours:  # fp16 storage: within half precision of the original
        torch.testing.assert_close(theirs[key], ours[key], atol=2e-2, rtol=2e-2)


def test_foreign_and_corrupt_files_are_refused_clearly(tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelLoadError, match="not a prompt reader"):
        load_reader(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="cannot read the prompt reader"):
        load_reader(corrupt)


class Recorder:
    """A reader stand-in that rewrites every prompt and records what it was asked."""

    def __init__(self):
        self.asked = []

    def rewrite(self, prompt, mask=None):
        self.asked.append(prompt)
        return "a large red star at the top on a blue background"


def _engine_with(model):
    return Engine(loader=lambda spec, device, dtype: model)


def test_a_run_encodes_the_reading_and_records_it():
    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    reader = Recorder()
    model.attach_prompt_reader(reader)
    assert "prompt_reader" not in dict(model.named_modules())  # not a submodule: not in the state dict
    seen = []
    original = model.encode_prompts
    model.encode_prompts = lambda prompt, negative="", clip_skip=1: (seen.append(prompt), original(prompt, negative,
                                                                                                 clip_skip))[1]
    request = GenerationRequest(prompt="star, red and large, toward the top; blue all around", model="tiny-random",
                                steps=2, width=64, height=64, cfg=2.0)
    run = _engine_with(model).run(request)
    assert seen == ["a large red star at the top on a blue background"]
    assert run.read_as == "a large red star at the top on a blue background"
    assert run.request.prompt == request.prompt  # the user's prompt is kept as typed

    seen.clear()
    literal = _engine_with(model).run(request.replace(read_prompt=False))
    assert seen == [request.prompt] and literal.read_as is None


def test_models_without_a_reader_read_prompts_as_typed():
    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    assert model.read_prompt("anything at all") == "anything at all"
    run = _engine_with(model).run(GenerationRequest(prompt="a red star", model="tiny-random", steps=1, width=64,
                                                    height=64))
    assert run.read_as is None


def test_a_run_saved_before_the_reader_keeps_its_prompt_as_typed(tmp_path):
    """Its branches must see the text its steps were made from; the file's settings have no read_prompt."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from studio.engine.run import Run

    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    run = _engine_with(model).run(GenerationRequest(prompt="x", model="tiny-random", steps=2, width=64, height=64))
    run.save(tmp_path / "new.safetensors")
    assert Run.load(tmp_path / "new.safetensors").request.read_prompt is True
    with safe_open(str(tmp_path / "new.safetensors"), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k, v in meta.items() if '"read_prompt": true' in v)
    settings = json.loads(meta[key])
    del settings["read_prompt"]
    meta[key] = json.dumps(settings)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    assert Run.load(tmp_path / "old.safetensors").request.read_prompt is False


def test_the_shipped_model_gets_the_shipped_reader():
    model = load_model("default", torch.device("cpu"), torch.float32)
    assert model.prompt_reader is not None
    rewritten = model.read_prompt("Draw a tiny scarlet disc in the upper-left corner, backdrop: grey")
    assert rewritten == "a small red circle at the top left on a gray background"
    assert model.read_prompt("") == ""


@pytest.mark.parametrize("recurrent", [False, True])
def test_padding_never_changes_a_prompts_reading(recurrent):
    """Prompts are batched padded to the longest; the GRU runs packed, attention masks the padding."""
    import dataclasses

    torch.manual_seed(1)
    reader = PromptReader(dataclasses.replace(tiny_reader().config, recurrent=recurrent)).eval()
    alone = reader(reader.ids(["a red star at the top"]))
    padded = reader(reader.ids(["a red star at the top", "a blue ring on the left and an orange star at the top"]))
    for key in alone:
        torch.testing.assert_close(padded[key][:1], alone[key], atol=1e-5, rtol=1e-5)


def test_no_object_gets_the_background_colour():
    """Joint decoding under the scene world's rule: when the net's best object colour is the background's, the
    more probable of the two ways out wins."""
    background = torch.tensor([0.6, 0.3, 0.1])  # red, blue, orange
    objects = torch.tensor([[0.7, 0.2, 0.1]])  # red too
    # red background: the object's best other colour is blue, 0.6·0.2 = 0.12; blue background: red object, 0.3·0.7
    assert PromptReader._colours(background, objects) == (1, [0])
    objects = torch.tensor([[0.5, 0.45, 0.05]])  # 0.6·0.45 = 0.27 beats 0.3·0.5 = 0.15
    assert PromptReader._colours(background, objects) == (0, [1])
    two = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    assert PromptReader._colours(background, two) == (0, [1, 2])  # nothing to resolve: the plain argmaxes


def test_a_saved_run_keeps_what_was_read(tmp_path):
    from studio.engine.run import Run

    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    model.attach_prompt_reader(Recorder())
    run = _engine_with(model).run(GenerationRequest(prompt="anything", model="tiny-random", steps=2, width=64,
                                                    height=64))
    run.save(tmp_path / "run.safetensors")
    assert Run.load(tmp_path / "run.safetensors").read_as == "a large red star at the top on a blue background"


def _binding_net(reader, place_binds_back: bool):
    """A stand-in network that reads each row's words by rule: an object wherever a place word is bound to a shape
    word, its colour the colour word just before that shape word; the background the last colour word. A place binds
    to the nearest shape word before it (`place_binds_back`, the whole reader's mistake on a place that leads a later
    clause) else to the nearest one after it; a shape word no place names gets none. Sizes are never stated."""
    c = reader.config

    def forward(ids):
        rows = [[c.words[i] for i in row if i != 0] for row in ids.tolist()]
        b, places = ids.shape[0], len(c.positions)
        out = {"exists": torch.zeros(b, places, 2), "shape": torch.zeros(b, places, len(c.shapes)),
               "colour": torch.zeros(b, places, len(c.colours)), "size": torch.zeros(b, places, len(c.sizes)),
               "background": torch.zeros(b, len(c.colours))}
        out["exists"][..., 0] = 20
        out["size"][..., -1] = 20  # UNSTATED
        for r, words in enumerate(rows):
            shapes = [k for k, w in enumerate(words) if w in c.shapes]
            for k, w in enumerate(words):
                if w not in c.positions or not shapes:
                    continue
                before, after = [s for s in shapes if s < k], [s for s in shapes if s > k]
                s = before[-1] if before and (place_binds_back or not after) else after[0]
                p = c.positions.index(w)
                out["exists"][r, p] = torch.tensor([0.0, 20.0])
                out["shape"][r, p, c.shapes.index(words[s])] = 20
                colour = [w for w in words[:s] if w in c.colours][-1]
                out["colour"][r, p, c.colours.index(colour)] = 20
            out["background"][r, c.colours.index([w for w in words if w in c.colours][-1])] = 20
        return out
    return forward


def test_a_later_clause_that_leads_with_its_place_is_read_on_its_own(monkeypatch):
    """Read whole, the stand-in binds "left" back to the star (two places, one star); cut at "and", each clause reads
    as one object at its own place, and the background comes from the whole reading."""
    reader = tiny_reader()
    monkeypatch.setattr(reader, "forward", _binding_net(reader, place_binds_back=True))
    reading = reader.read("a red star top and left a blue ring , orange")
    assert [(o.shape, o.colour, o.position) for o in reading.objects] == [("star", "red", "top"),
                                                                         ("ring", "blue", "left")]
    assert reading.background == "orange" and reading.every_object
    assert reading.confidence > 0.99


def test_words_that_cannot_be_cut_into_clauses_are_read_whole(monkeypatch):
    reader = tiny_reader()
    monkeypatch.setattr(reader, "forward", _binding_net(reader, place_binds_back=False))
    # no join between the shape words: the whole reading (here right, as the stand-in binds forward)
    reading = reader.read("top a red star left a blue ring orange")
    assert sorted((o.shape, o.position) for o in reading.objects) == [("ring", "left"), ("star", "top")]
    # a cut whose stretches both read an object at the same place is no cut: the whole reading stands
    monkeypatch.setattr(reader, "forward", _binding_net(reader, place_binds_back=True))
    same_place = reader.read("a red star top and top a blue ring , orange")
    assert [(o.shape, o.position) for o in same_place.objects] == [("star", "top")]


def test_a_clause_without_a_size_takes_the_whole_readings(monkeypatch):
    reader = tiny_reader()
    net = _binding_net(reader, place_binds_back=False)

    def sized(ids):  # the whole prompt (the longest row) reads every object as small
        out = net(ids)
        if ids.shape[0] == 1:
            out["size"][..., :] = 0
            out["size"][..., 0] = 20
        return out
    monkeypatch.setattr(reader, "forward", sized)
    reading = reader.read("a red star top and left a blue ring , orange")
    assert {o.size for o in reading.objects} == {"small"}


def test_a_prompt_with_too_many_ways_to_cut_is_read_whole(monkeypatch):
    """Unknown words are possible joins: a long prompt full of them would be read in thousands of stretches, so past
    MOST_CUTS ways to cut (here lowered to 2) the prompt is read whole."""
    from studio.engine import prompt_reader

    reader = tiny_reader()
    monkeypatch.setattr(reader, "forward", _binding_net(reader, place_binds_back=True))
    monkeypatch.setattr(prompt_reader, "MOST_CUTS", 2)
    asked = []
    original = reader._one_object_each
    monkeypatch.setattr(reader, "_one_object_each", lambda *a: asked.append(a) or original(*a))
    three_ways = reader.read("red star top mmm mmm and left blue ring , orange")  # cut at mmm, mmm or and
    assert asked == [] and [(o.shape, o.position) for o in three_ways.objects] == [("star", "top"), ("star", "left")]
    two_ways = reader.read("red star top mmm and left blue ring , orange")
    assert len(asked) == 1 and [(o.shape, o.position) for o in two_ways.objects] == [("star", "top"), ("ring", "left")]
