"""A1111 prompt emphasis, long prompts in 75-token chunks, BREAK, and how weights act on the context."""

from __future__ import annotations

import pytest
import torch

from studio.engine.model import build_tiny_random
from studio.engine.prompt_weights import Segment, chunk_prompt, encode_chunks, parse_emphasis
from studio.engine.tokenizer import BOS_ID, EOS_ID, CLIPTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def model():
    return build_tiny_random()


def pairs(prompt: str) -> list[tuple[str, float]]:
    return [(s.text, round(s.weight, 6)) for s in parse_emphasis(prompt)]


@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat) here", [("a ", 1.0), ("cat", 1.1), (" here", 1.0)]),
    ("((cat))", [("cat", 1.21)]),
    ("[cat]", [("cat", round(1 / 1.1, 6))]),
    ("[[cat]]", [("cat", round(1 / 1.21, 6))]),
    ("(cat:1.5) dog", [("cat", 1.5), (" dog", 1.0)]),
    ("(cat: 0.8 )", [("cat", 0.8)]),
    ("(cat:.5)", [("cat", 0.5)]),
    ("(cat:-1)", [("cat", -1.0)]),
    ("(a (b:0.5) c:2)", [("a ", 2.0), ("b", 1.0), (" c", 2.0)]),
    ("([cat])", [("cat", 1.0)]),
    (r"\(cat\) \[x\] a\\b", [("(cat) [x] a\\b", 1.0)]),
    ("(open ended", [("open ended", 1.1)]),  # unclosed: weighs the rest
    ("[open", [("open", round(1 / 1.1, 6))]),
    ("stray) closer]", [("stray) closer]", 1.0)]),
    ("time: 12:30", [("time: 12:30", 1.0)]),  # a colon outside brackets is text
    ("(a:b)", [("a:b", 1.1)]),  # not a number: plain emphasis
    ("(a) (b)", [("a", 1.1), (" ", 1.0), ("b", 1.1)]),
    ("", []),
])
def test_parse_emphasis(prompt, expected):
    assert pairs(prompt) == expected


def test_break_splits_segments():
    segments = parse_emphasis("a cat BREAK (a dog) BREAKFAST")
    assert segments == [Segment("a cat", 1.0), Segment("", 1.0, is_break=True), Segment("a dog", 1.1),
                        Segment(" BREAKFAST", 1.0)]


def test_short_prompt_is_plain_sd_tokenization(tokenizer):
    prompt = "a red circle on a blue background"
    (chunk,) = chunk_prompt(tokenizer, prompt)
    assert list(chunk.ids) == tokenizer([prompt])[0]
    assert not chunk.weighted
    (sd2,) = chunk_prompt(tokenizer, prompt, pad_id=0)
    assert list(sd2.ids) == tokenizer([prompt], pad_id=0)[0]


def test_emphasis_weights_tokens_not_ids(tokenizer):
    (plain,) = chunk_prompt(tokenizer, "a red circle")
    (weighted,) = chunk_prompt(tokenizer, "a (red:1.4) circle")
    assert weighted.ids == plain.ids  # brackets and numbers never become tokens
    assert weighted.weights[:4] == (1.0, 1.0, 1.4, 1.0)  # bos, a, red, circle


def test_long_prompts_are_cut_into_75_token_chunks(tokenizer):
    words = " ".join(["cat"] * 75)
    (one,) = chunk_prompt(tokenizer, words)
    assert one.ids[0] == BOS_ID and one.ids[76] == EOS_ID and len(one.ids) == 77
    two = chunk_prompt(tokenizer, words + " (dog:1.3)", pad_id=0)
    assert len(two) == 2
    assert two[1].ids[:3] == (BOS_ID, tokenizer.encode("dog")[0], EOS_ID)
    assert set(two[1].ids[3:]) == {0} and two[1].weights[1] == 1.3
    (empty,) = chunk_prompt(tokenizer, "")
    assert empty.ids[:2] == (BOS_ID, EOS_ID)


def test_a_full_chunk_backtracks_to_a_recent_comma(tokenizer):
    """A1111's comma_padding_backtrack (20): the chunk ends after a comma at most 20 tokens back, and the words
    after it open the next chunk; a comma further back, or backtrack 0, gives the hard cut at 75 tokens."""
    cat, dog, comma = tokenizer.encode("cat")[0], tokenizer.encode("dog")[0], tokenizer.encode(",")[0]
    prompt = " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 20)  # 60 + comma + 20 = 81 tokens
    first, second = chunk_prompt(tokenizer, prompt)
    assert first.ids[1:63] == (*[cat] * 60, comma, EOS_ID)  # ends after the comma (14 tokens back), padded
    assert second.ids[:22] == (BOS_ID, *[dog] * 20, EOS_ID)
    hard = chunk_prompt(tokenizer, prompt, comma_backtrack=0)
    assert hard[0].ids[1:76] == (*[cat] * 60, comma, *[dog] * 14) and hard[1].ids[:8] == (BOS_ID, *[dog] * 6, EOS_ID)
    far = " ".join(["cat"] * 40) + ", " + " ".join(["dog"] * 40)  # the comma is 34 tokens back: too far
    assert chunk_prompt(tokenizer, far)[0].ids[1:76] == (*[cat] * 40, comma, *[dog] * 34)
    weighted = " ".join(["cat"] * 60) + ", (" + " ".join(["dog"] * 20) + ":1.2)"  # weights move with their tokens
    assert chunk_prompt(tokenizer, weighted)[1].weights[1:21] == (1.2,) * 20


def test_break_starts_a_new_chunk(tokenizer):
    chunks = chunk_prompt(tokenizer, "a cat BREAK a dog")
    assert len(chunks) == 2
    assert chunks[0].ids[:4] == (BOS_ID, *tokenizer.encode("a cat"), EOS_ID)
    assert chunks[1].ids[:4] == (BOS_ID, *tokenizer.encode("a dog"), EOS_ID)


def test_unweighted_encoding_is_exactly_plain_sd(model):
    prompt = "a red circle on a blue background"
    ids = torch.tensor(model.tokenizer([prompt], pad_id=model.config.pad_id))
    with torch.inference_mode():
        plain = model.text_encoder(ids)
        skip = model.text_encoder(ids, skip_layers=1)
    assert torch.equal(model.encode_text([prompt]), plain)
    assert torch.equal(model.encode_text([prompt], clip_skip=2), skip)


def test_weights_scale_tokens_and_keep_the_mean(model):
    plain = model.encode_text(["a red circle"])[0]
    weighted = model.encode_text(["a (red:1.5) circle"])[0]
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    ratio = plain.mean() / (plain * torch.tensor([1, 1, 1.5] + [1] * 74)[:, None]).mean()
    assert torch.allclose(weighted[2], plain[2] * 1.5 * ratio, atol=1e-6)  # "red" (after bos, "a")
    assert torch.allclose(weighted[5], plain[5] * ratio, atol=1e-6)  # any other position: only the mean fix


def test_cond_and_uncond_share_one_length(model):
    long = " ".join(["cat"] * 100)
    cond, uncond = model.encode_prompts(long, "")
    assert cond.shape == uncond.shape == (1, 154, model.config.text.width)
    empty = model.encode_text([""])
    assert torch.equal(uncond[:, :77], empty[0:1]) and torch.equal(uncond[:, 77:], empty[0:1])
    cond2, uncond2 = model.encode_prompts("a cat", "ugly " * 90)
    assert cond2.shape == uncond2.shape == (1, 154, model.config.text.width)


def test_chunks_are_encoded_independently(model, tokenizer):
    """Chunk k of a long prompt is exactly the encoding of its own 75 tokens (A1111), not a continuation."""
    long = " ".join(["cat"] * 75) + " dog"
    context = model.encode_text([long])
    assert torch.equal(context[:, 77:], model.encode_text(["dog"]))
    chunks = chunk_prompt(tokenizer, long)
    assert torch.equal(encode_chunks(model.text_encoder, [chunks], pad_id=EOS_ID), context)
