import gzip

import pytest

from studio.engine.tokenizer import BOS_ID, CONTEXT_LENGTH, EOS_ID, VOCAB_FILENAME, CLIPTokenizer
from studio.resources import resources_dir


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer()


def test_shipped_vocabulary_is_found():
    assert (resources_dir() / VOCAB_FILENAME).is_file()


def test_vocabulary_layout(tok):
    # 256 byte symbols + 256 with </w> + 48894 merges + 2 specials (docs/checkpoints.md, "Tokenizer").
    assert tok.vocab_size == 49408
    assert (BOS_ID, EOS_ID, CONTEXT_LENGTH) == (49406, 49407, 77)
    assert tok.vocab[0] == "!"
    assert tok.vocab[256] == "!</w>"
    assert tok.vocab[320] == "a</w>"
    assert tok.vocab[BOS_ID] == "<|startoftext|>"
    assert tok.vocab[EOS_ID] == "<|endoftext|>"


# Ids as CLIP's reference tokenizer gives them (docs/checkpoints.md, "Tokenizer").
@pytest.mark.parametrize(
    "prompt, ids",
    [
        ("a red circle on a blue background", [320, 736, 7117, 525, 320, 1746, 5994]),
        (
            "A photo of an astronaut riding a horse on Mars.",
            [320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 269],
        ),
        ("masterpiece, best quality, 1girl", [12066, 267, 949, 3027, 267, 272, 1611]),
        ("", []),
        ("3.14", [274, 269, 272, 275]),  # digits split one per token
    ],
)
def test_encode_matches_reference_ids(tok, prompt, ids):
    assert tok.encode(prompt) == ids


# Cross-checked against open_clip 3.3.0's SimpleTokenizer (with ftfy and regex) in a throwaway venv;
# only ids that agreed there are hard-coded here.
@pytest.mark.parametrize(
    "prompt, ids",
    [
        (
            "don't you'll we've I'm she'd they're it's",
            [847, 713, 592, 1342, 649, 1200, 328, 880, 1043, 1896, 889, 982, 585, 568],
        ),
        ("don’t “quoted”", [847, 713, 257, 27706, 257]),  # curly quotes straightened (ftfy)
        ("ﬁne ＡＢＣ１２３！", [3797, 5334, 272, 273, 274, 256]),  # ligature and full-width forms unfolded (ftfy)
        ("a cat 🐱 with a hat 🎩!!!", [320, 2368, 22979, 593, 320, 3801, 1165, 102, 995]),
        ("東京の夜景, cyberpunk", [48338, 21078, 105, 21575, 23170, 250, 48132, 363, 267, 36896]),
        ("naïve café résumé Zürich", [1097, 35689, 563, 15304, 29106, 7054, 4166, 89, 6522, 4021]),
        ("snake_case_words and __dunder__", [8798, 318, 2068, 318, 2709, 537, 3838, 67, 1798, 3838]),
        ("½ cup and x² and Ⅻ", [33613, 1937, 537, 343, 41175, 537, 158, 227, 375]),  # \p{N} outside \d
        ("Tom &amp;amp; Jerry", [2435, 261, 9164]),  # html.unescape applied twice
    ],
)
def test_encode_matches_open_clip(tok, prompt, ids):
    assert tok.encode(prompt) == ids


def test_sd1_row_pads_with_eos(tok):
    (row,) = tok("a red circle on a blue background")
    assert row == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407] + [49407] * 68


def test_sd2_row_pads_with_zero(tok):
    (row,) = tok("a red circle on a blue background", pad_id=0)
    assert row == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407] + [0] * 68


def test_empty_prompt_rows(tok):
    assert tok("") == [[49406, 49407] + [49407] * 75]
    assert tok("", pad_id=0) == [[49406, 49407] + [0] * 75]


def test_batch_of_prompts(tok):
    rows = tok(["a red circle on a blue background", "", "3.14"], pad_id=0)
    assert [len(r) for r in rows] == [77, 77, 77]
    assert rows[2][:6] == [49406, 274, 269, 272, 275, 49407]


def test_long_prompt_is_truncated(tok):
    prompt = ", ".join(["a very detailed painting of a castle"] * 20)
    ids = tok.encode(prompt)
    assert len(ids) > 75
    for pad_id in (EOS_ID, 0):
        (row,) = tok(prompt, pad_id=pad_id)
        assert len(row) == 77
        assert row[0] == BOS_ID and row[-1] == EOS_ID
        assert row[1:76] == ids[:75]


def test_exactly_75_tokens_fill_the_row(tok):
    prompt = " ".join(["cat"] * 75)
    (row,) = tok(prompt, pad_id=0)
    assert row == [BOS_ID] + tok.encode("cat") * 75 + [EOS_ID]


def test_custom_context_length(tok):
    (row,) = tok("a red circle on a blue background", context_length=5)
    assert row == [49406, 320, 736, 7117, 49407]
    with pytest.raises(ValueError):
        tok("x", context_length=1)


def test_case_and_whitespace_do_not_matter(tok):
    reference = tok.encode("a red circle on a blue background")
    assert tok.encode("  A   RED\tCircle\n on a Blue   BACKGROUND ") == reference


def test_html_entities_are_unescaped(tok):
    assert tok.encode("Tom &amp; Jerry") == tok.encode("Tom & Jerry")
    assert tok.encode("Tom &amp;amp; Jerry") == tok.encode("Tom & Jerry")
    assert tok.encode("fish &lt;3 chips") == tok.encode("fish <3 chips")


@pytest.mark.parametrize(
    "sentence",
    [
        "a red circle on a blue background",
        "portrait of an old fisherman by the sea at dawn",
        "a cyberpunk city street at night with neon signs",
        "東京の夜景",
        "naïve café",
    ],
)
def test_decode_round_trip(tok, sentence):
    assert tok.decode(tok.encode(sentence)) == sentence


def test_decode_then_encode_is_stable(tok):
    ids = tok.encode("A photo of an astronaut riding a horse on Mars.")
    assert tok.decode(ids) == "a photo of an astronaut riding a horse on mars ."
    assert tok.encode(tok.decode(ids)) == ids


def test_decode_skips_bos_eos(tok):
    (row,) = tok("a red circle")
    assert tok.decode(row) == "a red circle"
    assert tok.decode(row[:5], skip_special=False) == "<|startoftext|>a red circle <|endoftext|>"
    with pytest.raises(ValueError):
        tok.decode([49408])


@pytest.mark.parametrize("text", ["🙂🚀👩‍🚀", "\ud800 lone surrogate", "\x00\x07 control", "ｶﾞ", "\u200b", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"])
def test_unusual_unicode_does_not_crash(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    (row,) = tok(text)
    assert len(row) == 77


def test_emoji_falls_back_to_byte_tokens(tok):
    # 🫠 (U+1FAE0) is newer than the vocabulary: its UTF-8 lead bytes merge, the last two stay single-byte
    # symbols (ids < 512). Ids cross-checked against open_clip as above.
    ids = tok.encode("🫠")
    assert ids == [558, 104, 510]
    assert tok.decode(ids) == "🫠"


def test_non_str_prompt_is_rejected(tok):
    with pytest.raises(TypeError):
        tok.encode(None)  # type: ignore[arg-type]


def test_missing_vocabulary_file(tmp_path):
    path = tmp_path / VOCAB_FILENAME
    with pytest.raises(FileNotFoundError, match=VOCAB_FILENAME):
        CLIPTokenizer(path)


def test_corrupt_vocabulary_file(tmp_path):
    path = tmp_path / VOCAB_FILENAME
    path.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match=VOCAB_FILENAME):
        CLIPTokenizer(path)


def test_truncated_vocabulary_file(tmp_path):
    path = tmp_path / VOCAB_FILENAME
    path.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(ValueError, match="48894 merges"):
        CLIPTokenizer(path)
