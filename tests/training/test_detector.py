import numpy as np
import pytest
from PIL import Image, ImageFilter

from studio.training.detector import Detection, detect, score
from studio.training.scenes import COLOURS, Scene, SceneObject, make_batch, render

ATTRIBUTES = ("background", "colour", "shape", "size", "position")


def perturb(image, rng, blur=1.0, noise=8.0, gain=0.08, shift=8.0):
    """Gaussian blur, a per-channel colour gain and shift, then per-pixel Gaussian noise (all in 0–255 units)."""
    out = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur)), np.float32)
    out = out * rng.uniform(1 - gain, 1 + gain, 3) + rng.uniform(-shift, shift, 3)
    out = out + rng.normal(0, noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def accuracy(images, scenes):
    scores = [score(scene, detect(image)) for image, scene in zip(images, scenes)]
    return {key: np.mean([s[key] for s in scores]) for key in ATTRIBUTES}


@pytest.fixture(scope="module")
def batch():
    images, _, scenes = make_batch(seed=21, n=300)
    assert {len(scene.objects) for scene in scenes} == {1, 2}
    return images, scenes


def test_reads_clean_scenes(batch):
    result = accuracy(*batch)
    assert all(result[key] >= 0.99 for key in ATTRIBUTES), result


def test_reads_blurred_noisy_jittered_scenes(batch):
    images, scenes = batch
    rng = np.random.default_rng(22)
    result = accuracy([perturb(image, rng) for image in images], scenes)
    assert all(result[key] >= 0.95 for key in ATTRIBUTES), result


def test_plain_background_has_no_objects():
    for name, rgb in COLOURS.items():
        image = np.broadcast_to(np.array(rgb, np.uint8), (64, 64, 3)).copy()
        assert detect(image) == Detection(name, ())


def test_rejects_other_image_sizes():
    with pytest.raises(ValueError):
        detect(np.zeros((32, 32, 3), np.uint8))


TWO = Scene(
    "blue",
    (SceneObject("star", "red", "small", "top left"), SceneObject("ring", "yellow", "large", "bottom right")),
)


def test_score_pairs_objects_regardless_of_order():
    assert detect(render(TWO)) == Detection("blue", TWO.objects)
    swapped = Detection("blue", TWO.objects[::-1])
    assert score(TWO, swapped) == dict.fromkeys(ATTRIBUTES, True)


def test_score_needs_every_object_right():
    wrong_shape = Detection("blue", (TWO.objects[0], SceneObject("circle", "yellow", "large", "bottom right")))
    assert score(TWO, wrong_shape) == {**dict.fromkeys(ATTRIBUTES, True), "shape": False}
    # a misplaced object still pairs with its nearest true object; only its position is wrong
    moved = Detection("blue", (TWO.objects[0], SceneObject("ring", "yellow", "large", "bottom")))
    assert score(TWO, moved) == {**dict.fromkeys(ATTRIBUTES, True), "position": False}


def test_score_counts_missing_or_extra_objects_as_wrong():
    missing = Detection("green", TWO.objects[:1])
    assert score(TWO, missing) == {**dict.fromkeys(ATTRIBUTES, False)}
    extra = Detection("blue", TWO.objects + (SceneObject("heart", "pink", "small", "center"),))
    assert score(TWO, extra) == {"background": True, "colour": False, "shape": False, "size": False, "position": False}
