"""The built-in model's prompt reader: free wording in, the model's own caption language out (issue #20).

The shipped model binds attributes and adds objects into busy scenes when its text encoder is given the sentences it
was trained on (98 % binding with training-template captions, against ~40 % with the same scenes worded freely:
resources/model/MODEL_CARD.md). Distilling the text encoder toward those contexts stalled, so the reader does the
translation in the open instead: a small network reads the prompt's words (a bidirectional GRU under two transformer
layers), and one learned query per place of the scene's 3×3 grid attends over them (a decoder as DETR's object
queries, Carion et al. 2020, but keyed by place: two objects never share one, so each query has one right answer
and no matching is needed) to say whether an object is there and its shape, colour and size; one more query reads
the background colour. The reading is written back as one of the model's training sentences, which the text
encoder then encodes as before. Words the reader never saw become one unknown token, and training replaced random
words by it (word dropout), so it reads the facts around words it does not know.

The reading is used only when it is checkable: a shape, a colour and a place word of the lexicon in the prompt for
each object read, one more colour word for the background, every stated field at probability ≥ 0.5. A caption of
the whole scene also needs as many objects read as shape words (a missed object would vanish from it) and names at
most two (the language has no three-object sentence); when inpainting, the caption names only the objects read in
the hole's grid cells, as the model was trained to read an inpainting caption, so a busy scene's prompt still reads.
Anything else (an empty prompt, emphasis syntax, "a cat", a background left unsaid) goes to the text encoder as
typed. The file carries its vocabulary, labels and sentence frames, so nothing here names the scene world; torch
and numpy only, no Qt.

A prompt naming two or three objects is then read **clause by clause** (PromptReader._by_clauses): the words are
cut between consecutive shape words at a join (a punctuation mark, "and", "plus", "with", or a word the reader does
not know), each stretch is read alone as a one-object prompt, and of all such cuts the one whose stretches read
most surely (the sum of each stretch's log confidence) gives the objects. Read whole, the reader bound a place that
leads a later clause ("a violet star in the centre and toward the top right sits a gray star") to the noun before
it, a construction its training sentences never have; read alone, each clause has one noun and one place, and one
object is what it reads best (MODEL_CARD.md, with session 19's file: two objects in unseen wording 78 → 92 %
exactly, busy inpainting readings 170 → 192 of 200).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

PAD, UNKNOWN = 0, 1
UNSTATED = "unstated"  # the size label of an object whose size the prompt does not give
HOLE_SHARE = 0.25  # a grid cell is "in the hole" when it holds this share of the painted pixels
_WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
_EMPHASIS = re.compile(r"[()\[\]]|<lora:")  # A1111 emphasis or extra networks: the user speaks to the encoder
# where one clause may end and the next begin (besides a word the reader does not know: "alongside", "as well as")
CLAUSE_JOINS = frozenset({",", ";", ".", ":", "!", "and", "plus", "with"})
MOST_CLAUSES = 3  # a prompt naming more objects than this is read whole
MOST_CUTS = 256  # more ways to cut than this (a long prompt full of unknown words) and the prompt is read whole


def _with_articles(text: str) -> str:
    return re.sub(r"\b([aA]) (?=[aeiou])", r"\1n ", text)


def words_of(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, in order ("Top-left: a RED star." → top, -, left, :, a, red, …)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class ReaderConfig:
    words: tuple[str, ...]  # the vocabulary; index 0 padding, 1 an unknown word
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    sizes: tuple[str, ...]  # the last one is UNSTATED
    positions: tuple[str, ...]
    lexicon: dict  # {"shape" | "colour" | "position": words that name one}: the completeness check
    frames: dict  # the caption language: {"one", "two": sentence; "noun", "noun_without_size": phrase; "places"}
    width: int = 64
    layers: int = 2
    heads: int = 4
    max_words: int = 48
    # a bidirectional GRU under the transformer: each word's vector then carries its neighbours in order ("top
    # right, a tiny red star"), the local binding self-attention learns slowly from position embeddings alone
    recurrent: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "ReaderConfig":
        raw = json.loads(text)
        for key in ("words", "shapes", "colours", "sizes", "positions"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


@dataclass(frozen=True)
class ObjectReading:
    shape: str
    colour: str
    size: str  # UNSTATED when the prompt gives none
    position: str
    confidence: float = 1.0  # the least probability among its stated fields (and "there is an object here")


@dataclass(frozen=True)
class Reading:
    objects: tuple[ObjectReading, ...]
    background: str
    background_confidence: float = 1.0
    every_object: bool = True  # as many objects read as the prompt names shapes (PromptReader.read)

    @property
    def confidence(self) -> float:
        """The least probability among the fields its caption states."""
        return min([self.background_confidence, *(o.confidence for o in self.objects)])


class PromptReader(nn.Module):
    def __init__(self, config: ReaderConfig):
        super().__init__()
        self.config = c = config
        self.index = {w: i for i, w in enumerate(c.words)}
        self.lexicon = {kind: frozenset(words) for kind, words in c.lexicon.items()}
        self.embed = nn.Embedding(len(c.words), c.width)
        self.place = nn.Parameter(torch.randn(c.max_words, c.width) * 0.1)  # word order carries the binding
        self.recurrent = nn.GRU(c.width, c.width // 2, batch_first=True, bidirectional=True) if c.recurrent else None
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(len(c.positions) + 1, c.width))  # one per place, then the background
        step = nn.TransformerDecoderLayer(c.width, c.heads, 4 * c.width, dropout=0.1, batch_first=True,
                                          norm_first=True)
        self.decoder = nn.TransformerDecoder(step, 2)
        self.norm = nn.LayerNorm(c.width)
        self.exists = nn.Linear(c.width, 2)
        self.shape = nn.Linear(c.width, len(c.shapes))
        self.colour = nn.Linear(c.width, len(c.colours))
        self.size = nn.Linear(c.width, len(c.sizes))
        self.background = nn.Linear(c.width, len(c.colours))

    def ids(self, texts: list[str]) -> torch.Tensor:
        """(B, L) word ids (unknown words UNKNOWN), padded to the longest text, at most max_words."""
        found = [[self.index.get(w, UNKNOWN) for w in words_of(text)][: self.config.max_words] for text in texts]
        out = torch.full((len(texts), max(1, max(map(len, found), default=1))), PAD, dtype=torch.long)
        for row, said in enumerate(found):
            out[row, : len(said)] = torch.tensor(said, dtype=torch.long)
        return out

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        padding = ids == PAD
        h = self.embed(ids) + self.place[: ids.shape[1]]
        if self.recurrent is not None:  # packed: the backward direction starts at each prompt's last word
            lengths = (~padding).sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            seen, _ = nn.utils.rnn.pad_packed_sequence(self.recurrent(packed)[0], batch_first=True,
                                                       total_length=h.shape[1])
            h = h + seen
        h = self.encoder(h, src_key_padding_mask=padding)
        q = self.queries.expand(ids.shape[0], -1, -1)
        slots = self.norm(self.decoder(q, h, memory_key_padding_mask=padding))
        objects, background = slots[:, :-1], slots[:, -1]
        return {"exists": self.exists(objects), "shape": self.shape(objects), "colour": self.colour(objects),
                "size": self.size(objects), "background": self.background(background)}

    # -- reading one prompt ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def read(self, prompt: str) -> Reading | None:
        """The prompt's scene, or None when the reading is not complete and checkable (module docstring)."""
        c = self.config
        said = words_of(prompt)
        if not said or _EMPHASIS.search(prompt):
            return None
        out = {k: v.float().softmax(-1)[0] for k, v in self(self.ids([prompt]).to(self.embed.weight.device)).items()}
        present = [i for i in range(len(c.positions)) if float(out["exists"][i, 1]) > 0.5]
        if not present:
            return None
        counts = {kind: sum(w in words for w in said) for kind, words in self.lexicon.items()}
        # a shape, colour and place word for each object read, and a colour word more (the background's)
        if counts["shape"] < len(present) or counts["colour"] < len(present) + 1 or counts["position"] < len(present):
            return None
        background, colours = self._colours(out["background"], out["colour"][present])
        objects = []
        for i, colour in zip(present, colours):
            fields = {"position": c.positions[i], "colour": c.colours[colour]}
            confidence = [float(out["colour"][i, colour]), float(out["exists"][i, 1])]
            for name, labels in (("shape", c.shapes), ("size", c.sizes)):
                p, k = out[name][i].max(-1)
                fields[name] = labels[int(k)]
                if name != "size" or labels[int(k)] != UNSTATED:
                    confidence.append(float(p))
            objects.append(ObjectReading(**fields, confidence=min(confidence)))
        # more shape words than objects read: one it missed would vanish from a caption of the whole scene
        whole = Reading(tuple(objects), c.colours[background], float(out["background"][background]),
                        every_object=counts["shape"] == len(present))
        return self._by_clauses(said, whole)

    def _by_clauses(self, said: list[str], whole: Reading) -> Reading:
        """The objects of a prompt naming two or three, each read from its own clause (module docstring); `whole`
        gives the background and any size a clause leaves unsaid. `whole` itself when the words cannot be cut so
        that every stretch reads as one object at a place of its own."""
        shapes = [k for k, w in enumerate(said) if w in self.lexicon["shape"]]
        if not 2 <= len(shapes) <= MOST_CLAUSES:
            return whole
        gaps = [[k for k in range(a + 1, b) if said[k] in CLAUSE_JOINS or said[k] not in self.index]
                for a, b in zip(shapes, shapes[1:])]
        if not all(gaps) or math.prod(map(len, gaps)) > MOST_CUTS:
            return whole
        # a stretch (cut, end) is said[cut + 1 : end]: the join word itself belongs to neither clause
        cuts_list = [tuple(zip((-1, *cuts), (*cuts, len(said)))) for cuts in itertools.product(*gaps)]
        spans = sorted(set(itertools.chain.from_iterable(cuts_list)))
        read = dict(zip(spans, self._one_object_each([said[a + 1: b] for a, b in spans], whole.background)))
        best = None
        for cut in cuts_list:
            found = [read[span] for span in cut]
            if any(f is None for f in found) or len({o.position for _, o in found}) < len(found):
                continue
            total = sum(log_confidence for log_confidence, _ in found)
            if best is None or total > best[0]:
                best = (total, [o for _, o in found])
        if best is None:
            return whole
        sizes = {o.position: o.size for o in whole.objects}
        objects = tuple(dataclasses.replace(o, size=sizes[o.position]) if o.size == UNSTATED and o.position in sizes
                        else o for o in best[1])
        return dataclasses.replace(whole, objects=objects, every_object=True)

    def _one_object_each(self, stretches: list[list[str]], background: str) -> list[tuple[float, ObjectReading] | None]:
        """Each stretch of words read as a one-object prompt: (log confidence, the object), or None where it reads
        as more than one. A stretch with fewer than two colour words gets the background clause of the model's
        own language, as every one-object sentence the reader learned from has one."""
        c = self.config
        clause = _with_articles(c.frames["one"].split("{p}", 1)[1].format(bg=background))  # " on a … background"
        texts = [" ".join(words) + ("" if sum(w in self.lexicon["colour"] for w in words) >= 2 else clause)
                 for words in stretches]
        out = {k: v.float().softmax(-1) for k, v in self(self.ids(texts).to(self.embed.weight.device)).items()}
        b = c.colours.index(background)
        found = []
        for row in range(len(texts)):
            there = out["exists"][row, :, 1]
            place = int(there.argmax())
            if float(torch.cat([there[:place], there[place + 1:]]).max()) > 0.5:
                found.append(None)
                continue
            colour = out["colour"][row, place].clone()
            colour[b] = 0  # no object has the background's colour (_colours)
            colour_p, colour_k = colour.max(-1)
            shape_p, shape_k = out["shape"][row, place].max(-1)
            size_k = int(out["size"][row, place].argmax())
            confidence = min(float(there[place]), float(colour_p), float(shape_p))
            found.append((math.log(max(confidence, 1e-12)), ObjectReading(
                c.shapes[int(shape_k)], c.colours[int(colour_k)], c.sizes[size_k], c.positions[place], confidence)))
        return found

    @staticmethod
    def _colours(background: torch.Tensor, objects: torch.Tensor) -> tuple[int, list[int]]:
        """The most probable background and object colours together, under the scene world's rule that no object
        has the background's colour (an object of that colour would not be there to see): max over b of
        log p(b) + Σ_i max_{c ≠ b} log p_i(c)."""
        log_bg, log_objects = background.clamp(min=1e-12).log(), objects.clamp(min=1e-12).log()
        best = None
        for b in range(background.shape[0]):
            others = log_objects.clone()
            others[:, b] = -float("inf")
            score = float(log_bg[b] + others.max(-1).values.sum())
            if best is None or score > best[0]:
                best = (score, b, others.argmax(-1).tolist())
        return best[1], best[2]

    def caption(self, reading: Reading) -> str:
        """The reading in the model's own caption language (the file's frames: its training sentences)."""
        f = self.config.frames
        nouns = []
        for o in reading.objects:
            frame = f["noun_without_size"] if o.size == UNSTATED else f["noun"]
            nouns.append(frame.format(s=o.size, c=o.colour, h=o.shape))
        places = [f["places"][o.position] for o in reading.objects]
        if len(nouns) == 1:
            text = f["one"].format(o=nouns[0], p=places[0], bg=reading.background)
        else:
            text = f["two"].format(o1=nouns[0], p1=places[0], o2=nouns[1], p2=places[1], bg=reading.background)
        return _with_articles(text)

    def in_hole(self, reading: Reading, mask: np.ndarray) -> Reading | None:
        """Inpainting: only the objects in the grid cells that hold at least HOLE_SHARE of the painted pixels, and
        the background (None: no object read there). The model was trained to fill a hole from a caption of what is
        under it; a caption naming the whole scene asks for every object at once (MODEL_CARD.md: 98 % against 33 %
        in busy scenes)."""
        cells = self.config.frames.get("cells")
        painted = np.asarray(mask, dtype=np.float32) > 0.5
        if not cells or not painted.any():
            return None
        rows, columns = np.array_split(np.arange(painted.shape[0]), 3), np.array_split(np.arange(painted.shape[1]), 3)
        total = painted.sum()
        held = {name for name, (r, c) in cells.items()
                if painted[rows[r][0]: rows[r][-1] + 1, columns[c][0]: columns[c][-1] + 1].sum() >= HOLE_SHARE * total}
        kept = tuple(o for o in reading.objects if o.position in held)
        return dataclasses.replace(reading, objects=kept) if kept else None

    def rewrite(self, prompt: str, mask: np.ndarray | None = None, min_confidence: float = 0.5) -> str:
        """What the text encoder should read for `prompt` (and an inpainting `mask`, 1 = repaint): the caption of
        its reading; when inpainting, of the objects it read in the hole. The prompt itself when there is no such
        reading, when it is unsure of a field the caption states, when it read fewer objects than the prompt names
        (a caption of the whole scene would drop one; a caption of the hole only needs the hole's), or when the
        caption language cannot say it (more than two objects)."""
        reading = self.read(prompt)
        if reading is None:
            return prompt
        hole = self.in_hole(reading, mask) if mask is not None else None
        if hole is not None:
            reading = hole
        elif not reading.every_object:
            return prompt
        if reading.confidence < min_confidence or len(reading.objects) > 2:
            return prompt
        return self.caption(reading)


def save_reader(reader: PromptReader, path: str | Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in reader.state_dict().items()}
    save_file(tensors, str(path), metadata={"studio_prompt_reader": reader.config.to_json()})


def load_reader(path: str | Path, device: torch.device | str = "cpu") -> PromptReader:
    """Safetensors only; a file without the reader's metadata or with other tensors is refused with a clear error."""
    from safetensors import safe_open

    from .archives import ModelLoadError

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if "studio_prompt_reader" not in meta:
                raise ModelLoadError(f"{path} is not a prompt reader file (no studio_prompt_reader metadata)")
            state = {k: f.get_tensor(k) for k in f.keys()}
        reader = PromptReader(ReaderConfig.from_json(meta["studio_prompt_reader"]))
        reader.load_state_dict({k: v.float() for k, v in state.items()})
    except ModelLoadError:
        raise
    except Exception as error:  # a corrupt or foreign file
        raise ModelLoadError(f"cannot read the prompt reader {path}: {error}") from error
    return reader.to(device).eval().requires_grad_(False)
