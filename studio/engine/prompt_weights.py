"""Prompts as SD users write them: A1111 emphasis, prompts of any length, BREAK.

Emphasis (the syntax of AUTOMATIC1111's web UI, which most shared SD prompts use):

    (word)        weight × 1.1            ((word)) × 1.21, nesting multiplies
    [word]        weight ÷ 1.1
    (word:1.5)    weight × 1.5            (a (b:0.5) c:2) gives a, c × 2 and b × 1
    \\( \\) \\[ \\]  literal brackets; an unclosed bracket applies to the rest of the prompt, a stray closer is text
    BREAK         (upper case, a word on its own) starts a new 75-token chunk

Length: the text encoder sees 77 positions (bos + 75 + eos). A longer prompt is cut into 75-token chunks (at a
comma within the last 20 tokens when there is one, as A1111 does), each
wrapped with bos/eos and padded to 77, encoded separately and concatenated along the sequence axis (context
77·k); the UNet's cross-attention reads a context of any length. Prompts encoded together are padded with empty
chunks to the same k, so a prompt and its negative can be batched for classifier-free guidance.

Weights act on the encoder's output as A1111 does: each weighted token's context vector is scaled by its weight,
then the chunk is rescaled so its mean equals the unweighted mean (so emphasis shifts attention between tokens
rather than the overall magnitude). A prompt without emphasis gives exactly the plain SD encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .text_encoder import CLIPTextModel
from .tokenizer import BOS_ID, EOS_ID, CLIPTokenizer

ROUND_MULTIPLIER = 1.1  # "(word)"
SQUARE_MULTIPLIER = 1 / 1.1  # "[word]"
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default

_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Segment:
    text: str
    weight: float = 1.0
    is_break: bool = False  # a BREAK: the tokens after it start a new chunk


def parse_emphasis(prompt: str) -> list[Segment]:
    """Split a prompt into runs of text with one weight each (adjacent equal weights merged)."""
    parts: list[list] = []  # [text, weight] pairs, weights multiplied in place as brackets close
    round_open: list[int] = []  # index into `parts` where each still-open "(" began
    square_open: list[int] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            parts.append(["".join(text), 1.0])
            text.clear()

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    i, n = 0, len(prompt)
    while i < n:
        ch = prompt[i]
        if ch == "\\" and i + 1 < n and prompt[i + 1] in "()[]\\":
            text.append(prompt[i + 1])
            i += 2
            continue
        if ch == "(":
            flush()
            round_open.append(len(parts))
        elif ch == "[":
            flush()
            square_open.append(len(parts))
        elif ch == ":" and round_open and (m := _EXPLICIT_WEIGHT.match(prompt, i)):
            flush()
            scale(round_open.pop(), float(m.group(1)))
            i = m.end()
            continue
        elif ch == ")" and round_open:
            flush()
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif ch == "]" and square_open:
            flush()
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            text.append(ch)
        i += 1
    flush()
    for start in round_open:  # unclosed brackets weigh everything after them
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)

    segments: list[Segment] = []
    for chunk_text, weight in parts:
        for k, piece in enumerate(_BREAK.split(chunk_text)):
            if k > 0:
                segments.append(Segment("", 1.0, is_break=True))
            if piece:
                if segments and not segments[-1].is_break and segments[-1].weight == weight:
                    segments[-1] = Segment(segments[-1].text + piece, weight)
                else:
                    segments.append(Segment(piece, weight))
    return segments


@dataclass(frozen=True)
class Chunk:
    """One text-encoder row: `ids` (bos, ≤ 75 tokens, eos, padding) and the weight of each position."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


def chunk_prompt(
    tokenizer: CLIPTokenizer, prompt: str, *, pad_id: int = EOS_ID, context_length: int = 77,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """Tokenize with emphasis and cut into chunks of `context_length − 2` tokens (at least one chunk).

    As A1111 does, a full chunk whose last comma is at most `comma_backtrack` tokens back ends after that comma,
    and the tokens after it open the next chunk, so a phrase is not torn between two encoder calls (0 = off)."""
    size = context_length - 2
    comma = tokenizer.encode(",")[0]
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1  # position of the last comma in the open chunk

    def close() -> None:
        nonlocal last_comma
        row = [BOS_ID, *ids, EOS_ID]
        pad = context_length - len(row)
        chunks.append(Chunk(tuple(row + [pad_id] * pad), tuple([1.0, *weights, 1.0] + [1.0] * pad)))
        ids.clear()
        weights.clear()
        last_comma = -1

    for segment in parse_emphasis(prompt):
        if segment.is_break:
            close()
            continue
        for token in tokenizer.encode(segment.text):
            if token == comma:
                last_comma = len(ids)
            elif comma_backtrack and len(ids) == size and last_comma != -1 and size - last_comma <= comma_backtrack:
                moved = ids[last_comma + 1:], weights[last_comma + 1:]
                del ids[last_comma + 1:], weights[last_comma + 1:]
                close()
                ids.extend(moved[0])
                weights.extend(moved[1])
            if len(ids) == size:
                close()
            ids.append(token)
            weights.append(segment.weight)
    if ids or not chunks:
        close()
    return chunks


def encode_chunks(
    encoder: CLIPTextModel, prompts: list[list[Chunk]], *, pad_id: int, skip_layers: int = 0
) -> torch.Tensor:
    """Chunked prompts → context (B, 77·k, D), k = the most chunks of any prompt; shorter prompts get empty
    chunks (bos, eos, padding), as A1111 pads them. One encoder call for all chunks of all prompts."""
    if not prompts:
        raise ValueError("no prompts to encode")
    length = len(prompts[0][0].ids)
    empty = Chunk(tuple([BOS_ID, EOS_ID] + [pad_id] * (length - 2)), tuple([1.0] * length))
    k = max(len(p) for p in prompts)
    rows = [chunk for p in prompts for chunk in p + [empty] * (k - len(p))]
    device = next(encoder.parameters()).device
    ids = torch.tensor([c.ids for c in rows], dtype=torch.long, device=device)
    z = encoder(ids, skip_layers=skip_layers)  # (B·k, 77, D)
    if any(c.weighted for c in rows):
        weights = torch.tensor([c.weights for c in rows], dtype=torch.float32, device=device)
        z32 = z.float()
        mean = z32.mean(dim=(1, 2), keepdim=True)
        z32 = z32 * weights[..., None]
        z32 = z32 * (mean / z32.mean(dim=(1, 2), keepdim=True))  # restore each chunk's original mean (A1111)
        unweighted = torch.tensor([not c.weighted for c in rows], device=device)
        z = torch.where(unweighted[:, None, None], z, z32.to(z.dtype))  # unweighted chunks stay bit-exact
    return z.reshape(len(prompts), k * length, z.shape[-1])
