"""CLIP's byte-level BPE tokenizer (SD 1.x and 2.x text encoders), pure Python with no third-party dependency.

The tokenizer of CLIP (Radford et al. 2021, Sec. 2.4: lower-cased byte pair encoding, Sennrich et al. 2016), in
GPT-2's byte-level form (Radford et al. 2019, Sec. 2.2), written from that description (vocabulary layout and
padding: docs/checkpoints.md, "Tokenizer"):

1. clean: fix common text glitches, ``html.unescape`` twice, collapse whitespace, lowercase;
2. split into pieces: a special token, a contraction ('s 't 're 've 'm 'll 'd), a run of letters, a single
   digit, or a run of other non-space characters;
3. each piece: UTF-8 bytes -> one visible symbol per byte, ``</w>`` on the last symbol, then apply BPE merges
   lowest rank first; the final symbols are the token ids.

Differences from the reference, which uses the third-party ``ftfy`` and ``regex`` packages:

- ``\\p{L}`` / ``\\p{N}`` are emulated with the stdlib ``re``: letter runs are ``[^\\W\\d_]+``, digits ``\\d``. Python's
  letter class also takes non-decimal numbers (category No / Nl, e.g. "½", "²", "Ⅻ"); those are split back out as
  single tokens afterwards, so the split agrees with ``regex`` except where the two engines' Unicode tables differ.
- ``ftfy.fix_text`` is approximated by what matters for prompts: lone surrogates replaced, curly quotes
  straightened, Latin ligatures and full-width forms unfolded, control characters dropped, NFC normalisation.
  Mojibake repair (e.g. "cafÃ©" -> "café") is not attempted.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from studio.resources import resources_dir

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 48894  # merges-file lines 1..48894; 256 + 256 + 48894 + 2 = 49408 ids
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
CONTEXT_LENGTH = 77  # bos + 75 content tokens + eos
END_OF_WORD = "</w>"

_PIECE_RE = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>"
    r"|'s|'t|'re|'ve|'m|'ll|'d"
    r"|(?P<letters>[^\W\d_]+)"  # \p{L}+ (plus No/Nl, split out in _pieces)
    r"|\d"  # \p{N}, one at a time
    r"|(?:[^\s\w]|_)+",  # neither whitespace, letter nor digit
    re.IGNORECASE,
)
_WHITESPACE_RE = re.compile(r"\s+")


def _byte_symbols() -> tuple[list[str], list[str]]:
    """One printable character per byte, in vocabulary order (ids 0..255).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes take U+0100 onward in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = sorted(set(range(256)) - set(printable))
    byte_order = printable + others
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    by_byte = [""] * 256
    for b, s in zip(byte_order, symbols):
        by_byte[b] = s
    return symbols, by_byte


_SYMBOLS_IN_ID_ORDER, _SYMBOL_OF_BYTE = _byte_symbols()
_BYTE_OF_SYMBOL = {s: b for b, s in enumerate(_SYMBOL_OF_BYTE)}


def _fix_text_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for cp in (*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, 0xFEFF, *range(0xFFF9, 0xFFFD)):
        table[cp] = None  # control characters (ftfy remove_control_chars)
    for cp in range(0x2018, 0x201C):
        table[cp] = "'"  # ‘ ’ ‚ ‛ (ftfy uncurl_quotes)
    for cp in range(0x201C, 0x2020):
        table[cp] = '"'  # “ ” „ ‟
    for ch in "ĲĳŉǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬅﬆ":
        table[ord(ch)] = unicodedata.normalize("NFKC", ch)  # ftfy fix_latin_ligatures
    table[0x3000] = " "  # ideographic space (ftfy fix_character_width)
    for cp in range(0xFF01, 0xFFEF):
        table[cp] = unicodedata.normalize("NFKC", chr(cp))  # full-/half-width forms
    return table


_FIX_TEXT_TABLE = _fix_text_table()


def clean_text(text: str) -> str:
    # Combine surrogate pairs, replace lone surrogates (which UTF-8 cannot encode) with U+FFFD.
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = unicodedata.normalize("NFC", text.translate(_FIX_TEXT_TABLE))
    text = html.unescape(html.unescape(text))  # twice, as CLIP does: "&amp;amp;" -> "&"
    return _WHITESPACE_RE.sub(" ", text).strip().lower()


def _pieces(text: str) -> Iterable[str]:
    for match in _PIECE_RE.finditer(text):
        piece = match.group()
        if match.group("letters") is None or piece.isascii():
            yield piece
            continue
        run = ""
        for ch in piece:  # \p{N} characters that Python counts as \w but not \d: one token each
            if unicodedata.category(ch)[0] == "N":
                if run:
                    yield run
                    run = ""
                yield ch
            else:
                run += ch
        if run:
            yield run


class CLIPTokenizer:
    """CLIP BPE tokenizer: ``encode`` gives content ids, calling it gives bos/eos-wrapped, padded rows."""

    def __init__(self, merges_path: Path | None = None, *, cache_size: int = 1 << 16):
        path = Path(merges_path) if merges_path is not None else resources_dir() / VOCAB_FILENAME
        merges = _read_merges(path)
        self.vocab: list[str] = [
            *_SYMBOLS_IN_ID_ORDER,
            *(s + END_OF_WORD for s in _SYMBOLS_IN_ID_ORDER),
            *(a + b for a, b in merges),
            BOS_TOKEN,
            EOS_TOKEN,
        ]
        self._ids = {token: i for i, token in enumerate(self.vocab)}
        if len(self._ids) != len(self.vocab):
            raise ValueError(f"corrupt CLIP vocabulary {path}: merges produce duplicate tokens")
        assert self._ids[BOS_TOKEN] == BOS_ID and self._ids[EOS_TOKEN] == EOS_ID
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._bpe = lru_cache(maxsize=cache_size)(self._bpe_uncached)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected a str prompt, got {type(text).__name__}")
        ids: list[int] = []
        for piece in _pieces(clean_text(text)):
            if piece == BOS_TOKEN or piece == EOS_TOKEN:
                ids.append(self._ids[piece])
            else:
                ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Approximate inverse of ``encode`` (cleaning and whitespace are lost); for debugging and tests.

        Padding with 0 (SD2) cannot be told from a real "!" and decodes as one.
        """
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is outside the vocabulary (0..{len(self.vocab) - 1})")
            token = self.vocab[i]
            if i in (BOS_ID, EOS_ID):
                if not skip_special:
                    out += token.encode()
                continue
            word_end = token.endswith(END_OF_WORD)
            if word_end:
                token = token[: -len(END_OF_WORD)]
            out += bytes(_BYTE_OF_SYMBOL[s] for s in token)
            if word_end:
                out += b" "
        return out.decode("utf-8", errors="replace").strip()

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        pad_id: int = EOS_ID,  # SD1 (HF openai/clip-vit-large-patch14); SD2 / open_clip pads with 0
        context_length: int = CONTEXT_LENGTH,
    ) -> list[list[int]]:
        if context_length < 2:
            raise ValueError(f"context_length must leave room for bos and eos, got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            row = [BOS_ID, *self.encode(text), EOS_ID]
            if len(row) > context_length:  # plain SD truncation: keep the first 76, the last is always eos
                row = row[:context_length]
                row[-1] = EOS_ID
            rows.append(row + [pad_id] * (context_length - len(row)))
        return rows

    def _bpe_uncached(self, piece: str) -> tuple[int, ...]:
        symbols = [_SYMBOL_OF_BYTE[b] for b in piece.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        ranks = self._ranks
        no_merge = len(ranks)
        while len(symbols) > 1:
            # The adjacent pair learned earliest merges first, at every place it occurs (left to right).
            rank, first, second = min(
                (ranks.get((a, b), no_merge), a, b) for a, b in zip(symbols, symbols[1:])
            )
            if rank == no_merge:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self._ids[s] for s in symbols)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CLIP tokenizer vocabulary {VOCAB_FILENAME} not found at {path}")
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt CLIP tokenizer vocabulary {path}: {exc}") from exc
    if "#version" not in lines[0] or len(lines) <= NUM_MERGES:
        raise ValueError(
            f"corrupt CLIP tokenizer vocabulary {path}: expected a '#version' header and at least "
            f"{NUM_MERGES} merges, got {len(lines) - 1} lines"
        )
    merges = [tuple(line.split(" ")) for line in lines[1 : NUM_MERGES + 1]]
    bad = next((n for n, m in enumerate(merges, start=2) if len(m) != 2 or not all(m)), None)
    if bad is not None:
        raise ValueError(f"corrupt CLIP tokenizer vocabulary {path}: line {bad} is not a pair of symbols")
    return merges
