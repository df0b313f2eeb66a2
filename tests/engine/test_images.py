"""Image and mask files in every mode users have, and the A1111 `parameters` chunk."""

import numpy as np
import pytest
from PIL import Image

from studio.engine.images import (
    format_parameters,
    load_mask,
    load_rgb,
    parse_parameters,
    read_parameters,
    save_png,
)
from studio.engine.request import GenerationRequest, RequestError

SQUARE = np.zeros((16, 16), bool)
SQUARE[4:12, 4:12] = True


def mask_file(tmp_path, mode):
    path = tmp_path / f"mask_{mode.replace(';', '_')}.png"
    if mode == "1":
        Image.fromarray(SQUARE).convert("1").save(path)
    elif mode == "L":
        Image.fromarray(SQUARE.astype(np.uint8) * 255).save(path)
    elif mode == "RGB":
        Image.fromarray(np.repeat(SQUARE[..., None] * 255, 3, 2).astype(np.uint8)).save(path)
    elif mode == "RGBA":  # a transparent layer with the painted area opaque: the alpha is the mask
        rgba = np.zeros((16, 16, 4), np.uint8)
        rgba[..., :3] = 255  # white everywhere: only the alpha tells the shape
        rgba[..., 3] = SQUARE * 255
        Image.fromarray(rgba).save(path)
    elif mode == "I;16":
        Image.fromarray((SQUARE * 65535).astype(np.uint16)).save(path)
    return path


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "I;16"])
def test_masks_in_every_mode_read_the_same(tmp_path, mode):
    mask = load_mask(mask_file(tmp_path, mode))
    assert mask.shape == (16, 16) and mask.dtype == np.float32
    assert np.array_equal(mask >= 0.5, SQUARE)


def test_opaque_rgba_mask_falls_back_to_its_colour(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = SQUARE[..., None] * 255
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png") >= 0.5, SQUARE)


def test_images_in_odd_modes_become_rgb(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.all(load_rgb(tmp_path / "clear.png") == 255)  # transparent → white, not black
    Image.new("P", (8, 8), 3).save(tmp_path / "palette.png")
    assert load_rgb(tmp_path / "palette.png").shape == (8, 8, 3)
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert np.all(load_rgb(tmp_path / "deep.png") == 255)
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(RequestError, match="cannot read image"):
        load_rgb(tmp_path / "junk.png")


def test_parameters_round_trip_through_a_png(tmp_path):
    request = GenerationRequest(prompt="a red circle,\nsecond line", negative_prompt="blur", sampler="dpmpp_2m",
                                karras=True, steps=30, cfg=6.5, seed=123456789, width=96, height=64, eta=0.25,
                                model="tiny-random", clip_skip=2)
    save_png(np.zeros((64, 96, 3), np.uint8), tmp_path / "p.png", format_parameters(request))
    text = read_parameters(tmp_path / "p.png")
    assert "Sampler: DPM++ 2M Karras" in text and "Clip skip: 2" in text
    restored = GenerationRequest.from_settings(parse_parameters(text))
    assert restored == request


def test_parse_parameters_reads_a1111_text():
    text = ("masterpiece, a cat\nNegative prompt: lowres, bad hands\n"
            "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 512x768, "
            'Model hash: abc123, Model: v1-5, Lora hashes: "x: 1, y: 2", Version: v1.10.0')
    s = parse_parameters(text)
    assert s["prompt"] == "masterpiece, a cat" and s["negative_prompt"] == "lowres, bad hands"
    assert (s["steps"], s["sampler"], s["cfg"], s["seed"], s["width"], s["height"]) == (20, "euler_a", 7.0, 42, 512, 768)
    assert s["model"] == "v1-5"
    assert parse_parameters("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}


def test_only_the_modes_with_backward_steps_write_them_into_the_parameters():
    from studio.engine import Guide
    from studio.engine.images import guidance_fields

    guides = (Guide("classifier", 10.0, labels=(("colour", "red"),)),)
    for mode, has_m in (("forward", False), ("backward", True), ("both", True), ("noisy", False)):
        fields = dict(guidance_fields(GenerationRequest(guides=guides, guide_mode=mode, backward_steps=3)))
        assert fields["Guidance mode"] == mode
        assert ("Backward steps" in fields) is has_m and fields.get("Backward steps", 3) == 3


def test_the_prompt_readers_part_survives_a_png():
    request = GenerationRequest(prompt="star, red, top; blue around")
    read = parse_parameters(format_parameters(request, read_as="a red star at the top on a blue background"))
    assert read["read_prompt"] is True and read["prompt"] == request.prompt
    literal = parse_parameters(format_parameters(request.replace(read_prompt=False)))
    assert literal["read_prompt"] is False
    assert "read_prompt" not in parse_parameters(format_parameters(request))  # nothing rewritten: nothing to say
