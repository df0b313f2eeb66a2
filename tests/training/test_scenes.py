import math
import re

import numpy as np
import pytest

from studio.engine.tokenizer import CLIPTokenizer
from studio.training.scenes import (
    CELL,
    COLOURS,
    HELD_OUT_NOUNS,
    HELD_OUT_TEMPLATES,
    MASK_COVERAGE,
    MIN_GAP,
    POSITION_WORDS,
    POSITIONS,
    SHAPES,
    SIZE_THRESHOLDS,
    SIZE_WORDS,
    SIZES,
    COLOUR_WORDS,
    TRAIN_NOUNS,
    TRAIN_TEMPLATES,
    Scene,
    SceneObject,
    caption,
    caption_words,
    grid_cell,
    make_batch,
    random_mask,
    render,
    with_filler,
    render_layers,
    sample_scene,
    shape_alpha,
)


@pytest.fixture(scope="module")
def batch():
    return make_batch(seed=5, n=600)


def test_same_seed_same_bytes():
    images_a, captions_a, scenes_a = make_batch(seed=3, n=40)
    images_b, captions_b, scenes_b = make_batch(seed=3, n=40)
    assert images_a.shape == (40, 64, 64, 3) and images_a.dtype == np.uint8
    assert images_a.tobytes() == images_b.tobytes()
    assert captions_a == captions_b and scenes_a == scenes_b
    images_c, _, _ = make_batch(seed=4, n=40)
    assert images_a.tobytes() != images_c.tobytes()


def test_render_without_rng_is_the_nominal_scene():
    scene = Scene("blue", (SceneObject("star", "red", "medium", "top left"),))
    image = render(scene)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render(scene))
    assert tuple(image[0, 0]) == COLOURS["blue"]
    assert render(scene, size=128).shape == (128, 128, 3)


def test_every_value_appears(batch):
    _, _, scenes = batch
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {scene.background for scene in scenes} == set(COLOURS)
    assert {obj.colour for obj in objects} == set(COLOURS)
    assert {obj.shape for obj in objects} == set(SHAPES)
    assert {obj.size for obj in objects} == set(SIZES)
    assert {obj.position for obj in objects} == set(POSITIONS)
    assert {len(scene.objects) for scene in scenes} == {1, 2}


def test_scene_rules():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        assert all(obj.colour != scene.background for obj in scene.objects)
        assert len({obj.position for obj in scene.objects}) == len(scene.objects)


def _box(alpha, level=0.5):
    rows, columns = np.nonzero(alpha >= level)
    return columns.min(), rows.min(), columns.max() + 1, rows.max() + 1


def test_drawn_geometry_stays_inside_its_class():
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = sample_scene(rng)
        _, alphas = render_layers(scene, rng)
        for obj, alpha in zip(scene.objects, alphas):
            x0, y0, x1, y1 = _box(alpha)
            extent = max(x1 - x0, y1 - y0)
            expected = SIZES.index(obj.size)
            assert sum(extent >= t for t in SIZE_THRESHOLDS) == expected, (obj, extent)
            row, column = grid_cell(obj.position)
            assert int((y0 + y1) / 2 // CELL) == row and int((x0 + x1) / 2 // CELL) == column, obj
        if len(alphas) == 2:
            a, b = (_box(alpha, 1e-3) for alpha in alphas)
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            assert gap >= MIN_GAP - 2  # boxes of any coverage: each side may gain one anti-aliased pixel


def test_small_ring_keeps_its_hole_and_star_its_points():
    ring = shape_alpha("ring", 32.0, 32.0, 11.0)
    assert ring[31:33, 31:33].max() < 0.1 and ring.max() == 1.0
    # 4×4 average pooling (a factor-4 autoencoder's grid) still shows a hole darker than the band
    pooled = shape_alpha("ring", 30.0, 30.0, 11.0).reshape(16, 4, 16, 4).mean(axis=(1, 3))
    assert pooled[7, 7] < 0.6 * pooled.max()
    star = shape_alpha("star", 32.0, 32.0, 40.0)
    angles = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    radii = np.arange(0, 22, 0.25)
    reach = [
        radii[star[(32 + radii * math.sin(a)).astype(int), (32 + radii * math.cos(a)).astype(int)] >= 0.5].max()
        for a in angles
    ]
    far = np.array(reach) > (max(reach) + min(reach)) / 2
    assert np.count_nonzero(far & ~np.roll(far, 1)) == 5  # five angular runs reach out: five points


def _mentions(text, words):
    return any(re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) for word in words)


@pytest.mark.parametrize("held_out", [False, True])
def test_captions_state_the_facts(held_out):
    rng = np.random.default_rng(2)
    with_size = 0
    for _ in range(400):
        scene = sample_scene(rng)
        text = caption(scene, rng, held_out=held_out)
        assert _mentions(text, COLOUR_WORDS[scene.background]), text
        for obj in scene.objects:
            assert _mentions(text, COLOUR_WORDS[obj.colour]), text
            assert _mentions(text, (obj.shape,)), text
            assert _mentions(text, POSITION_WORDS[obj.position]), text
        with_size += all(_mentions(text, SIZE_WORDS[obj.size]) for obj in scene.objects)
        assert not re.search(r"\ba [aeiou]", text), text
    assert with_size == 400 if held_out else with_size >= 0.8 * 400


def test_captions_stay_well_inside_clip_context():
    tokenizer = CLIPTokenizer()
    rng = np.random.default_rng(6)
    longest = max(len(tokenizer.encode(caption(sample_scene(rng), rng, held_out=i % 2 == 1))) for i in range(600))
    assert longest + 2 <= 50  # + bos and eos; CLIP reads 77


def test_captions_vary():
    scene = Scene("blue", (SceneObject("star", "red", "small", "left"), SceneObject("ring", "pink", "large", "right")))
    rng = np.random.default_rng(0)
    assert len({caption(scene, rng) for _ in range(100)}) >= 40
    single = Scene("gray", (SceneObject("heart", "orange", "large", "bottom right"),))
    assert len({caption(single, rng) for _ in range(100)}) >= 30


def _pattern(template):
    # any caption a template can produce: fields become wildcards, article "a" also matches "an"
    parts = re.split(r"\{\w+\}", template)
    literal = [re.sub(r"\ba ", "an? ", re.escape(part).replace("\\ ", " ")) for part in parts]
    return re.compile(".+".join(literal) + "$", re.IGNORECASE)


def test_held_out_phrasings_never_appear_in_training():
    for count in (1, 2):
        assert not set(TRAIN_TEMPLATES[count]) & set(HELD_OUT_TEMPLATES[count])
    assert not set(TRAIN_NOUNS) & set(HELD_OUT_NOUNS)
    train_patterns = [_pattern(t) for templates in TRAIN_TEMPLATES.values() for t in templates]
    held_out_patterns = [_pattern(t) for templates in HELD_OUT_TEMPLATES.values() for t in templates]
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = sample_scene(rng)
        held_out = caption(scene, rng, held_out=True)
        train = caption(scene, rng)
        assert not any(p.match(held_out) for p in train_patterns), held_out
        assert not any(p.match(train) for p in held_out_patterns), train
        assert any(p.match(held_out) for p in held_out_patterns), held_out  # the patterns do match
        assert any(p.match(train) for p in train_patterns), train


def test_random_masks_cover_between_bounds_and_vary():
    rng = np.random.default_rng(4)
    masks = [random_mask(rng) for _ in range(300)]
    coverage = np.array([m.mean() for m in masks])
    assert all(m.shape == (64, 64) and m.dtype == bool for m in masks)
    assert coverage.min() >= MASK_COVERAGE[0] and coverage.max() <= MASK_COVERAGE[1]
    assert coverage.std() > 0.08
    filled = [m.sum() / np.prod(np.subtract(_box(m)[2:], _box(m)[:2])) for m in masks]  # of the bounding box
    assert sum(f == 1.0 for f in filled) > 20 and sum(f < 0.7 for f in filled) > 60  # boxes and strokes/blobs
    assert np.array_equal(random_mask(np.random.default_rng(9)), random_mask(np.random.default_rng(9)))
    assert random_mask(np.random.default_rng(9), size=128).shape == (128, 128)


def test_filler_words_never_carry_a_caption_word():
    from studio.training.data import filler_vocabulary

    vocabulary = filler_vocabulary(CLIPTokenizer())
    assert len(vocabulary) > 10_000
    held_out = {w for ts in HELD_OUT_TEMPLATES.values() for t in ts for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", t))}
    assert {"plain", "canvas", "picture", "there"} <= held_out <= caption_words()
    assert not set(vocabulary) & caption_words()
    rng = np.random.default_rng(4)
    scene = sample_scene(rng)
    base = caption(scene, np.random.default_rng(9))
    texts = [with_filler(base, rng, vocabulary) for _ in range(600)]
    extra = [len(t.split(" ")) - len(base.split(" ")) for t in texts]
    assert set(extra) == {0, 1, 2}
    assert 0.2 < np.mean([e > 0 for e in extra]) < 0.4
    for text in texts:  # the caption's own words stay, in order
        words = iter(text.split(" "))
        assert all(word in words for word in base.split(" ")), text
