"""Pictures given as input (#17 item 9): decompression bombs, odd colour modes, EXIF orientation, non-files, and
mask settings that are not numbers."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.engine.images import load_mask, load_rgb
from studio.engine.pipeline import validate
from studio.engine.request import GenerationRequest, RequestError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from hostile_files import image_bytes, png_claiming  # noqa: E402


@pytest.mark.parametrize("read", [load_rgb, load_mask])
def test_a_picture_whose_header_claims_gigapixels_is_refused_before_decoding(tmp_path, read):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(50000, 50000))
    assert path.stat().st_size < 200
    with pytest.raises(RequestError, match="too large to open safely|more than the 67 megapixels"):
        read(path)


def test_a_picture_just_over_our_limit_is_refused_by_its_size(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_claiming(9000, 9000))  # 81 MP: under PIL's bomb limit, over ours
    with pytest.raises(RequestError, match="is 9000x9000: more than the 67 megapixels"):
        load_rgb(path)


def test_a_lab_tiff_mask_uses_its_lightness(tmp_path):
    lab = np.zeros((6, 8, 3), np.uint8)
    lab[2:4, 2:6, 0] = 255  # L: white square
    path = tmp_path / "mask.tif"
    Image.frombytes("LAB", (8, 6), lab.tobytes()).save(path)
    mask = load_mask(path)
    assert mask.shape == (6, 8) and mask.dtype == np.float32
    assert mask[3, 3] == 1.0 and mask[0, 0] == 0.0
    with pytest.raises(RequestError, match="LAB colour is not supported"):
        load_rgb(path)


@pytest.mark.parametrize("orientation, shape", [(1, (10, 20)), (3, (10, 20)), (6, (20, 10)), (8, (20, 10))])
def test_exif_orientation_is_applied(tmp_path, orientation, shape):
    """A phone photo stored landscape with Orientation 6 ("rotate 90° clockwise to view") is used upright."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(image_bytes("RGB", (20, 10), "JPEG", orientation=orientation))
    assert load_rgb(path).shape == (*shape, 3)
    assert load_mask(path).shape == shape


def test_orientation_turns_the_pixels_not_just_the_shape(tmp_path):
    picture = np.zeros((10, 20, 3), np.uint8)
    picture[:, :5] = 255  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: the left edge becomes the top
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG", exif=exif.tobytes())
    path = tmp_path / "rotated.png"
    path.write_bytes(out.getvalue())
    upright = load_rgb(path)
    assert upright.shape == (20, 10, 3)
    assert upright[:4].mean() > 250 and upright[-4:].mean() < 5


def test_a_fifo_or_a_folder_is_not_a_picture(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(RequestError, match=r"it is a pipe \(FIFO\), not a regular file"):
        load_rgb(fifo)
    with pytest.raises(RequestError, match="it is a folder"):
        load_mask(tmp_path)


def test_a_file_that_is_no_picture_says_so(tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"II*\x00\x00\x00\x00\x01")
    with pytest.raises(RequestError, match="not an image file, or a format this app cannot read"):
        load_rgb(path)


@pytest.mark.parametrize("feather", [float("inf"), float("nan"), -1.0, 1e9])
def test_feather_must_be_a_sane_number(feather):
    with pytest.raises(RequestError, match="feather must be a number of pixels from 0 to 128"):
        validate(GenerationRequest(feather=feather))
