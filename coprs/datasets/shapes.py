"""A procedurally generated reasoning-segmentation world: a few coloured shapes on a plain canvas.

Every sample is drawn from one integer seed, needs no files, and comes with an instruction that
has exactly one correct target, a short gold chain of thought that reasons to it, and gold
responses in the three paradigms coprs supports (CoPRS ``<REF_POS>``, LISA ``<SEG>``, Seg-Zero
``<answer>{json}</answer>``). It exists so that the whole stack (tokenizer, policy, prior, decoder,
rewards, GRPO, metrics) can be trained and evaluated end to end on CPU in minutes.

The world
    ``image_size`` x ``image_size`` RGB, a light background with mild Gaussian noise, and
    ``min_shapes``..``max_shapes`` axis-aligned shapes (:data:`SHAPES`) in :data:`COLOURS`. Areas
    are log-uniform between 0.6 % and 4 % of the image. Shapes never overlap (their boxes keep a
    3 px gap; rejection sampling) and no two share both colour and shape, so "the red circle"
    always names one object.

Instructions
    Seven types (:data:`INSTRUCTION_TYPES`), each produced by *programs* that enumerate the
    questions a scene can answer uniquely (relations need the target's box entirely on that side
    of the reference and every other centre clearly on the other side; superlatives need an area
    ratio of at least 1.3 to the runner-up). A scene that offers no unique question for the
    chosen template is rejected and redrawn. Each program has several phrasings; every
    (program, phrasing) pair is a *template* with a ``template_id`` (:data:`TEMPLATES`).

Splits and seeds
    Sample ``index`` of a split, for dataset ``seed`` ``s``, is generated from
    ``SPLIT_SEED_OFFSETS[split] + s * SEED_STRIDE + index`` (:func:`sample_seed`): train from
    0, val from 1e9, test from 2e9, test_novel from 3e9, with ``SEED_STRIDE = 1e7``, so the
    splits never share a seed while ``s < 100`` and ``index < 1e7``. ``train``, ``val`` and
    ``test`` use the *seen* templates; ``test_novel`` uses only the held-out ones (at least one
    per instruction type, some with new wording, some with new words such as unseen
    affordances), which the other splits never sample (:func:`templates_for_split`).

Text
    :func:`vocabulary` lists every token (:func:`split_words`) the generator can emit, and
    :func:`corpus` returns instructions and gold responses to train a tokenizer on.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from mmengine.dataset import BaseDataset
from PIL import Image, ImageDraw

from coprs.registry import DATASETS, TRANSFORMS

__all__ = [
    "COLOURS",
    "SHAPES",
    "INSTRUCTION_TYPES",
    "SPLITS",
    "SPLIT_SEED_OFFSETS",
    "SEED_STRIDE",
    "TEMPLATES",
    "ShapeTemplate",
    "ShapesSample",
    "ShapesWorld",
    "ShapesReasonDataset",
    "PerturbAnswerPlace",
    "PLACES",
    "parse_final_answer",
    "parse_inventory",
    "cot_sentences",
    "sample_seed",
    "templates_for_split",
    "split_words",
    "vocabulary",
    "corpus",
]

# --- the world ------------------------------------------------------------------------------------

#: colour name -> RGB fill
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (230, 195, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
#: shape name -> area of the drawn polygon per squared circumradius (used to size it)
_SHAPE_AREA_FACTOR: dict[str, float] = {
    "circle": math.pi,
    "square": 2.0,  # side sqrt(2)·R
    "triangle": 3.0 * math.sqrt(3.0) / 4.0,  # equilateral, apex up
    "diamond": 1.5,  # half-diagonals R (vertical) and 0.75·R (horizontal)
    "star": 5.0 * 0.5 * math.sin(math.radians(36.0)),  # five points, inner radius 0.5·R
}
SHAPES: tuple[str, ...] = tuple(_SHAPE_AREA_FACTOR)
_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "star": "stars",
}
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
_REGIONS = (
    ("upper left", "upper middle", "upper right"),
    ("middle left", "centre", "middle right"),
    ("lower left", "lower middle", "lower right"),
)
#: the nine places an answer can name ("… in the lower left")
PLACES: tuple[str, ...] = tuple(p for row in _REGIONS for p in row)
_RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
_SUPERLATIVES = ("largest", "smallest")
_MIN_AREA_FRAC, _MAX_AREA_FRAC = 0.006, 0.04
_GAP = 3  # px between object boxes
_SIZE_MARGIN = 1.3  # area ratio to the runner-up for a superlative
_MAX_SCENES = 2000  # scenes tried per sample before giving up

INSTRUCTION_TYPES: tuple[str, ...] = (
    "attribute",
    "relation",
    "superlative",
    "uniqueness",
    "function",
    "negation",
    "multi_hop",
)
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_novel")
#: first seed of every split; sample i of dataset seed s uses offset + s * SEED_STRIDE + i
SPLIT_SEED_OFFSETS: dict[str, int] = {
    "train": 0,
    "val": 1_000_000_000,
    "test": 2_000_000_000,
    "test_novel": 3_000_000_000,
}
SEED_STRIDE = 10_000_000
_MAX_DATASET_SEED = 100
_CORPUS_SEED_OFFSET = 4_000_000_000

# affordances: shape -> phrases true of that shape only (seen in training / held out)
_PROPS_SEEN: dict[str, tuple[str, ...]] = {
    "circle": ("could roll", "looks like a wheel"),
    "square": ("could be stacked like a box", "looks like the face of a die"),
    "triangle": ("has exactly three corners", "looks like a slice of pizza"),
    "diamond": ("looks like a kite", "looks like a gem"),
    "star": ("has five points", "could sit on top of a tree"),
}
_PROPS_NOVEL: dict[str, tuple[str, ...]] = {
    "circle": ("is shaped like a coin",),
    "square": ("looks like a floor tile",),
    "triangle": ("is shaped like a warning sign",),
    "diamond": ("has the shape of a rhombus",),
    "star": ("looks like a sheriff badge",),
}

# --- gold reasoning sentences (every word the CoT can contain is in these or in the fillers) ---
_COT: dict[str, str] = {
    "see": "I see {inventory}.",
    "final": "So the target is the {target} in the {region}.",
    "named": "The {target} is the one asked for.",
    "colour_only": "Only one object is {colour}: the {target}.",
    "shape_only": "Only one shape is a {shape}: the {target}.",
    "relation": "The only shape {rel} the {ref} is the {target}.",
    "sup_overall": "Comparing sizes, the {target} is the {sup}.",
    "colour_group": "The {colour} objects are {group}.",
    "shape_group": "The {plural} are {group}.",
    "sup_of_group": "The {target} is the {sup} of them.",
    "colour_counts": "Colour counts: {counts}.",
    "shape_counts": "Shape counts: {counts}.",
    "colour_once": "Only {colour} appears once.",
    "shape_once": "Only the {shape} appears once.",
    "one_of_shape": "There is one {shape}: the {target}.",
    "affordance": "Something that {prop} is a {shape}.",
    "the_only": "The only {shape} is the {target}.",
    "not_colour": "The {target} is not {colour}.",
    "not_shape": "The {target} is not a {shape}.",
    "sup_ref": "The {sup} shape is the {ref}.",
    "sup_shape_ref": "The {sup} {shape} is the {ref}.",
    "ref_colour": "It is {colour}.",
    "ref_shape": "It is a {shape}.",
    "other_colour": "The other {colour} object is the {target}.",
    "other_shape": "The other {shape} is the {target}.",
}
_LISA_RESPONSE = "It is {answer} <SEG>."
_ANSWER = "the {target}"
_ANSWER_REGION = "the {target} in the {region}"  # the final clause of the gold reasoning
_FILLER_WORDS = ("a", "an", "the", "and", ",")  # used to join inventories, groups and counts
_TAGS = ("<think>", "</think>", "<REF_POS>", "<SEG>", "<answer>", "</answer>")
_JSON_CHARS = ("{", "}", "[", "]", '"', ":", ",", "bbox", "points")


# --- scenes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Obj:
    colour: str
    shape: str
    area: int
    bbox: tuple[int, int, int, int]  # x1, y1, x2, y2 (x2/y2 exclusive)
    cx: float
    cy: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _coprs_response(cot: str) -> str:
    """The CoPRS gold response around a chain of thought."""
    return f"<think>{cot}</think><REF_POS>"


#: the gold reasoning's final sentence (``_COT["final"]``), also without its place
_FINAL_ANSWER = re.compile(r"target is the (\w+) (\w+)(?: in the ([a-z ]+?))?\s*\.")


def parse_final_answer(response: str) -> tuple[str, str, str | None] | None:
    """(colour, shape, place or None) that a response's final sentence names, or None if it has
    none: "… So the target is the red star in the lower left." → ("red", "star", "lower left")."""
    m = _FINAL_ANSWER.search(response)
    return None if m is None else m.group(1, 2, 3)


def _alternatives(words) -> str:
    """A regex group matching any of ``words`` (longest first)."""
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_OBJECT_RE = _alternatives(COLOURS) + " " + _alternatives(SHAPES)
#: the words each slot of the gold sentences takes; the other slots (inventories, groups,
#: counts, properties) take any text
_SLOT_RES = {
    "colour": _alternatives(COLOURS),
    "shape": _alternatives(SHAPES),
    "plural": _alternatives(_PLURALS.values()),
    "sup": _alternatives(_SUPERLATIVES),
    "rel": _alternatives(_RELATIONS.values()),
    "region": _alternatives(PLACES),
    "target": _OBJECT_RE,
    "ref": _OBJECT_RE,
}


def _sentence_re(fmt: str) -> re.Pattern:
    parts = []
    for literal, slot, _, _ in string.Formatter().parse(fmt):
        parts.append(re.escape(literal))
        if slot is not None:
            parts.append(_SLOT_RES.get(slot, ".+?"))
    return re.compile("".join(parts))


#: each kind of gold reasoning sentence (a key of ``_COT``) as a pattern of the whole sentence
_SENTENCE_RES = {kind: _sentence_re(fmt) for kind, fmt in _COT.items()}
_INVENTORY_ITEM = re.compile(r"\b(?:a|an) (" + _alternatives(COLOURS) + ") ("
                             + _alternatives(SHAPES) + r")\b")


def cot_sentences(cot: str) -> list[tuple[str | None, str]]:
    """Split a chain of thought into sentences, each with the kind of gold sentence it has the
    form of: ``"see"`` (the inventory), ``"final"`` (the answer), or a step such as
    ``"sup_overall"`` ("Comparing sizes, the red star is the largest."); None for a sentence of
    no known form. Tags (``<think>``, ``<REF_POS>``, …) are dropped first.

    >>> cot_sentences("<think>I see a red star. It is a star.</think><REF_POS>")
    [('see', 'I see a red star.'), ('ref_shape', 'It is a star.')]
    """
    text = re.sub(r"<[^<>\s]*>", " ", cot)
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]
    return [(next((k for k, p in _SENTENCE_RES.items() if p.fullmatch(s)), None), s)
            for s in sentences]


def parse_inventory(cot: str) -> list[tuple[str, str]] | None:
    """The (colour, shape) of every object the first "I see …." sentence of ``cot`` lists, in its
    order, or None if it has no such sentence.

    >>> parse_inventory("I see a red star and an orange circle. The red star is the one asked for.")
    [('red', 'star'), ('orange', 'circle')]
    """
    for kind, sentence in cot_sentences(cot):
        if kind == "see":
            return [m.group(1, 2) for m in _INVENTORY_ITEM.finditer(sentence)]
    return None


@dataclass
class _Scene:
    size: int
    objs: list[_Obj]
    masks: list[np.ndarray]

    def colour_count(self) -> Counter:
        return Counter(o.colour for o in self.objs)

    def shape_count(self) -> Counter:
        return Counter(o.shape for o in self.objs)

    def region(self, i: int) -> str:
        o = self.objs[i]
        row = min(int(o.cy * 3 / self.size), 2)
        col = min(int(o.cx * 3 / self.size), 2)
        return _REGIONS[row][col]

    def left_to_right(self) -> list[int]:
        return sorted(range(len(self.objs)), key=lambda i: (self.objs[i].cx, self.objs[i].cy))


def _join(items: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _inventory(scene: _Scene) -> str:
    return _join(
        [f"{_article(scene.objs[i].colour)} {scene.objs[i].name}" for i in scene.left_to_right()]
    )


def _group(scene: _Scene, idxs: Sequence[int]) -> str:
    order = sorted(idxs, key=lambda i: (scene.objs[i].cx, scene.objs[i].cy))
    return _join([f"the {scene.objs[i].name}" for i in order])


def _counts(scene: _Scene, key: str) -> str:
    """'two red, one green and two blue' in left-to-right order of first appearance."""
    counts = Counter(getattr(o, key) for o in scene.objs)
    seen: list[str] = []
    for i in scene.left_to_right():
        v = getattr(scene.objs[i], key)
        if v not in seen:
            seen.append(v)
    words = []
    for v in seen:
        noun = v if key == "colour" or counts[v] == 1 else _PLURALS[v]
        words.append(f"{_NUMBERS[counts[v]]} {noun}")
    return _join(words)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r / math.sqrt(2.0)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        s = r * math.sqrt(3.0) / 2.0
        return [(cx, cy - r), (cx + s, cy + r / 2.0), (cx - s, cy + r / 2.0)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.5 * r
            ang = -math.pi / 2.0 + k * math.pi / 5.0
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """Half extents (left, up, right, down) of a shape of circumradius ``r`` around its centre."""
    if shape == "circle":
        return r, r, r, r
    if shape == "square":
        h = r / math.sqrt(2.0)
        return h, h, h, h
    if shape == "triangle":
        s = r * math.sqrt(3.0) / 2.0
        return s, r, s, r / 2.0
    if shape == "diamond":
        return 0.75 * r, r, 0.75 * r, r
    s = r * math.cos(math.radians(18.0))  # star: widest points at ±18°
    return s, r, s, r * math.cos(math.radians(36.0))


def _draw_mask(size: int, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    return np.asarray(canvas) > 0


def _make_scene(
    rng: np.random.Generator, size: int, min_shapes: int, max_shapes: int
) -> _Scene | None:
    """One random non-overlapping scene, or ``None`` when placement failed (caller redraws)."""
    n = int(rng.integers(min_shapes, max_shapes + 1))
    # draw from a random subset of colours and shapes so that repeats (needed by counting,
    # negation and within-group superlatives) are common; (colour, shape) pairs stay distinct
    while True:
        k_col = int(rng.integers(2, len(COLOURS) + 1))
        k_shp = int(rng.integers(2, len(SHAPES) + 1))
        if k_col * k_shp >= n:
            break
    colours = [str(c) for c in rng.choice(list(COLOURS), size=k_col, replace=False)]
    shapes = [str(s) for s in rng.choice(list(SHAPES), size=k_shp, replace=False)]
    pairs = [(c, s) for c in colours for s in shapes]
    picked = rng.choice(len(pairs), size=n, replace=False)
    log_lo = math.log(_MIN_AREA_FRAC * size * size)
    log_hi = math.log(_MAX_AREA_FRAC * size * size)
    boxes: list[tuple[float, float, float, float]] = []
    objs: list[_Obj] = []
    masks: list[np.ndarray] = []
    for p in picked:
        colour, shape = pairs[int(p)]
        area = math.exp(rng.uniform(log_lo, log_hi))
        r = math.sqrt(area / _SHAPE_AREA_FACTOR[shape])
        el, eu, er, ed = _extent(shape, r)
        for _ in range(50):
            cx = rng.uniform(el + 2, size - er - 3)
            cy = rng.uniform(eu + 2, size - ed - 3)
            box = (cx - el, cy - eu, cx + er, cy + ed)
            if all(
                box[0] > b[2] + _GAP
                or box[2] < b[0] - _GAP
                or box[1] > b[3] + _GAP
                or box[3] < b[1] - _GAP
                for b in boxes
            ):
                break
        else:
            return None
        mask = _draw_mask(size, shape, cx, cy, r)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        boxes.append(box)
        masks.append(mask)
        objs.append(
            _Obj(
                colour,
                shape,
                int(len(xs)),
                (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                float(xs.mean()),
                float(ys.mean()),
            )
        )
    return _Scene(size, objs, masks)


# --- programs: scene -> every uniquely answerable question ---------------------------------------
@dataclass
class _Candidate:
    target: int
    slots: dict[str, str]
    cot: list[tuple[str, dict[str, str]]]


def _extreme(scene: _Scene, idxs: Sequence[int], sup: str) -> int | None:
    """Index of the largest/smallest of ``idxs`` if it beats the runner-up by the size margin."""
    if len(idxs) < 2:
        return None
    order = sorted(idxs, key=lambda i: scene.objs[i].area, reverse=(sup == "largest"))
    a, b = scene.objs[order[0]].area, scene.objs[order[1]].area
    ok = a >= _SIZE_MARGIN * b if sup == "largest" else b >= _SIZE_MARGIN * a
    return order[0] if ok else None


def _side(a: _Obj, r: _Obj, direction: str) -> bool | None:
    """True: ``a`` is entirely on that side of ``r``; False: clearly not; None: ambiguous."""
    if direction == "left":
        pos, neg = a.bbox[2] <= r.bbox[0], a.cx >= r.cx
    elif direction == "right":
        pos, neg = a.bbox[0] >= r.bbox[2], a.cx <= r.cx
    elif direction == "above":
        pos, neg = a.bbox[3] <= r.bbox[1], a.cy >= r.cy
    else:
        pos, neg = a.bbox[1] >= r.bbox[3], a.cy <= r.cy
    return True if pos else (False if neg else None)


def _unique_on_side(scene: _Scene, ref: int, direction: str) -> int | None:
    hits = []
    for i, o in enumerate(scene.objs):
        if i == ref:
            continue
        s = _side(o, scene.objs[ref], direction)
        if s is None:
            return None
        if s:
            hits.append(i)
    return hits[0] if len(hits) == 1 else None


def _prog_name(scene: _Scene) -> list[_Candidate]:
    return [
        _Candidate(i, {"colour": o.colour, "shape": o.shape}, [("named", {"target": o.name})])
        for i, o in enumerate(scene.objs)
    ]


def _prog_colour_only(scene: _Scene) -> list[_Candidate]:
    cc = scene.colour_count()
    return [
        _Candidate(
            i, {"colour": o.colour}, [("colour_only", {"colour": o.colour, "target": o.name})]
        )
        for i, o in enumerate(scene.objs)
        if cc[o.colour] == 1
    ]


def _prog_shape_only(scene: _Scene) -> list[_Candidate]:
    sc = scene.shape_count()
    return [
        _Candidate(i, {"shape": o.shape}, [("shape_only", {"shape": o.shape, "target": o.name})])
        for i, o in enumerate(scene.objs)
        if sc[o.shape] == 1
    ]


def _prog_relation(scene: _Scene) -> list[_Candidate]:
    out = []
    for ref, r in enumerate(scene.objs):
        for direction, rel in _RELATIONS.items():
            t = _unique_on_side(scene, ref, direction)
            if t is not None:
                name = scene.objs[t].name
                out.append(
                    _Candidate(
                        t,
                        {"rel": rel, "ref": r.name, "dir": direction},
                        [("relation", {"rel": rel, "ref": r.name, "target": name})],
                    )
                )
    return out


def _prog_sup_overall(scene: _Scene) -> list[_Candidate]:
    out = []
    for sup in _SUPERLATIVES:
        t = _extreme(scene, range(len(scene.objs)), sup)
        if t is not None:
            out.append(
                _Candidate(
                    t, {"sup": sup}, [("sup_overall", {"target": scene.objs[t].name, "sup": sup})]
                )
            )
    return out


def _prog_sup_group(scene: _Scene, key: str) -> list[_Candidate]:
    out = []
    for value, count in Counter(getattr(o, key) for o in scene.objs).items():
        if count < 2:
            continue
        idxs = [i for i, o in enumerate(scene.objs) if getattr(o, key) == value]
        for sup in _SUPERLATIVES:
            t = _extreme(scene, idxs, sup)
            if t is None:
                continue
            group = _group(scene, idxs)
            first = (
                ("colour_group", {"colour": value, "group": group})
                if key == "colour"
                else ("shape_group", {"plural": _PLURALS[value], "group": group})
            )
            slots = {"sup": sup, key: value}
            if key == "shape":
                slots["plural"] = _PLURALS[value]
            out.append(
                _Candidate(
                    t, slots, [first, ("sup_of_group", {"target": scene.objs[t].name, "sup": sup})]
                )
            )
    return out


def _prog_unique(scene: _Scene, key: str) -> list[_Candidate]:
    """The one object whose ``key`` ('colour' or 'shape') occurs only once in the scene."""
    counts = Counter(getattr(o, key) for o in scene.objs)
    once = [i for i, o in enumerate(scene.objs) if counts[getattr(o, key)] == 1]
    if len(once) != 1:
        return []
    o = scene.objs[once[0]]
    return [
        _Candidate(
            once[0],
            {},
            [
                (f"{key}_counts", {"counts": _counts(scene, key)}),
                (f"{key}_once", {key: getattr(o, key)}),
            ],
        )
    ]


def _prog_only_shape(scene: _Scene) -> list[_Candidate]:
    sc = scene.shape_count()
    if len(sc) < 2:
        return []
    counts = _counts(scene, "shape")
    return [
        _Candidate(
            i,
            {"shape": o.shape},
            [
                ("shape_counts", {"counts": counts}),
                ("one_of_shape", {"shape": o.shape, "target": o.name}),
            ],
        )
        for i, o in enumerate(scene.objs)
        if sc[o.shape] == 1
    ]


def _prog_function(scene: _Scene, props: dict[str, tuple[str, ...]]) -> list[_Candidate]:
    sc = scene.shape_count()
    out = []
    for i, o in enumerate(scene.objs):
        if sc[o.shape] != 1:
            continue
        for prop in props[o.shape]:
            out.append(
                _Candidate(
                    i,
                    {"prop": prop},
                    [
                        ("affordance", {"prop": prop, "shape": o.shape}),
                        ("the_only", {"shape": o.shape, "target": o.name}),
                    ],
                )
            )
    return out


def _pairs(scene: _Scene, key: str) -> list[tuple[int, int]]:
    """Ordered (other, target) pairs of the values of ``key`` that occur exactly twice."""
    out = []
    for value, count in Counter(getattr(o, key) for o in scene.objs).items():
        if count == 2:
            a, b = (i for i, o in enumerate(scene.objs) if getattr(o, key) == value)
            out += [(a, b), (b, a)]
    return out


def _prog_not_colour(scene: _Scene) -> list[_Candidate]:
    out = []
    for other, t in _pairs(scene, "shape"):
        o, x = scene.objs[t], scene.objs[other]
        out.append(
            _Candidate(
                t,
                {"shape": o.shape, "colour": x.colour},
                [
                    (
                        "shape_group",
                        {"plural": _PLURALS[o.shape], "group": _group(scene, [t, other])},
                    ),
                    ("not_colour", {"target": o.name, "colour": x.colour}),
                ],
            )
        )
    return out


def _prog_not_shape(scene: _Scene) -> list[_Candidate]:
    out = []
    for other, t in _pairs(scene, "colour"):
        o, x = scene.objs[t], scene.objs[other]
        out.append(
            _Candidate(
                t,
                {"colour": o.colour, "shape": x.shape},
                [
                    ("colour_group", {"colour": o.colour, "group": _group(scene, [t, other])}),
                    ("not_shape", {"target": o.name, "shape": x.shape}),
                ],
            )
        )
    return out


def _prog_rel_of_sup(scene: _Scene) -> list[_Candidate]:
    out = []
    for sup in _SUPERLATIVES:
        ref = _extreme(scene, range(len(scene.objs)), sup)
        if ref is None:
            continue
        r = scene.objs[ref]
        for direction, rel in _RELATIONS.items():
            t = _unique_on_side(scene, ref, direction)
            if t is not None:
                out.append(
                    _Candidate(
                        t,
                        {"sup": sup, "rel": rel, "dir": direction, "ref": r.name},
                        [
                            ("sup_ref", {"sup": sup, "ref": r.name}),
                            ("relation", {"rel": rel, "ref": r.name, "target": scene.objs[t].name}),
                        ],
                    )
                )
    return out


def _prog_rel_of_sup_shape(scene: _Scene) -> list[_Candidate]:
    out = []
    for shape, count in scene.shape_count().items():
        if count < 2:
            continue
        idxs = [i for i, o in enumerate(scene.objs) if o.shape == shape]
        for sup in _SUPERLATIVES:
            ref = _extreme(scene, idxs, sup)
            if ref is None:
                continue
            r = scene.objs[ref]
            for direction, rel in _RELATIONS.items():
                t = _unique_on_side(scene, ref, direction)
                if t is None:
                    continue
                out.append(
                    _Candidate(
                        t,
                        {"sup": sup, "shape": shape, "rel": rel, "dir": direction, "ref": r.name},
                        [
                            (
                                "shape_group",
                                {"plural": _PLURALS[shape], "group": _group(scene, idxs)},
                            ),
                            ("sup_shape_ref", {"sup": sup, "shape": shape, "ref": r.name}),
                            ("relation", {"rel": rel, "ref": r.name, "target": scene.objs[t].name}),
                        ],
                    )
                )
    return out


def _prog_same_as_sup(scene: _Scene, key: str) -> list[_Candidate]:
    out = []
    for sup in _SUPERLATIVES:
        ref = _extreme(scene, range(len(scene.objs)), sup)
        if ref is None:
            continue
        r = scene.objs[ref]
        value = getattr(r, key)
        same = [i for i, o in enumerate(scene.objs) if getattr(o, key) == value and i != ref]
        if len(same) != 1:
            continue
        t = same[0]
        name = scene.objs[t].name
        hop = (
            [("ref_colour", {"colour": value}), ("other_colour", {"colour": value, "target": name})]
            if key == "colour"
            else [
                ("ref_shape", {"shape": value}),
                ("other_shape", {"shape": value, "target": name}),
            ]
        )
        out.append(
            _Candidate(
                t,
                {"sup": sup, "ref": r.name, key: value},
                [("sup_ref", {"sup": sup, "ref": r.name}), *hop],
            )
        )
    return out


_PROGRAMS: dict[str, Callable[[_Scene], list[_Candidate]]] = {
    "name": _prog_name,
    "colour_only": _prog_colour_only,
    "shape_only": _prog_shape_only,
    "relation": _prog_relation,
    "sup_overall": _prog_sup_overall,
    "sup_colour": partial(_prog_sup_group, key="colour"),
    "sup_shape": partial(_prog_sup_group, key="shape"),
    "unique_colour": partial(_prog_unique, key="colour"),
    "unique_shape": partial(_prog_unique, key="shape"),
    "only_shape": _prog_only_shape,
    "function": partial(_prog_function, props=_PROPS_SEEN),
    "function_novel": partial(_prog_function, props=_PROPS_NOVEL),
    "not_colour": _prog_not_colour,
    "not_shape": _prog_not_shape,
    "rel_of_sup": _prog_rel_of_sup,
    "rel_of_sup_shape": _prog_rel_of_sup_shape,
    "same_colour_as_sup": partial(_prog_same_as_sup, key="colour"),
    "same_shape_as_sup": partial(_prog_same_as_sup, key="shape"),
}


# --- templates ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeTemplate:
    """One way of asking: an instruction type, the program that finds unique targets, a phrasing.

    Attributes:
        template_id: Stable identifier, ``"<type>.<program>.<k>"``.
        instruction_type: One of :data:`INSTRUCTION_TYPES`.
        program: Name of the question program (which scenes qualify, what the CoT says).
        text: ``str.format`` pattern of the instruction (slots come from the program).
        novel: Held out: only the ``test_novel`` split samples it.
    """

    template_id: str
    instruction_type: str
    program: str
    text: str
    novel: bool = False


# (type, program, [seen phrasings], [held-out phrasings])
_TEMPLATE_TABLE: list[tuple[str, str, list[str], list[str]]] = [
    (
        "attribute",
        "name",
        ["Segment the {colour} {shape}.", "Find the {colour} {shape} in the image."],
        ["Could you outline the {colour} {shape}?"],
    ),
    (
        "attribute",
        "colour_only",
        ["Segment the {colour} object.", "Where is the {colour} shape?"],
        ["Highlight the object painted {colour}."],
    ),
    ("attribute", "shape_only", ["Segment the {shape}.", "Show me the {shape}."], []),
    (
        "relation",
        "relation",
        [
            "Segment the shape {rel} the {ref}.",
            "Which object is {rel} the {ref}?",
            "Find what lies {rel} the {ref}.",
        ],
        ["Point out the thing located {rel} the {ref}."],
    ),
    (
        "superlative",
        "sup_overall",
        ["Segment the {sup} shape.", "Which object is the {sup}?"],
        ["Find the {sup} item in the picture."],
    ),
    (
        "superlative",
        "sup_colour",
        ["Segment the {sup} {colour} object.", "Find the {sup} of the {colour} shapes."],
        [],
    ),
    (
        "superlative",
        "sup_shape",
        ["Segment the {sup} {shape}.", "Which {shape} is the {sup}?"],
        ["Among the {plural}, pick the {sup} one."],
    ),
    (
        "uniqueness",
        "unique_colour",
        [
            "Segment the object whose colour appears only once.",
            "Find the shape with a colour no other shape has.",
        ],
        ["Which object has a colour that is not repeated?"],
    ),
    (
        "uniqueness",
        "unique_shape",
        ["Segment the shape whose kind appears only once.", "Find the only object of its kind."],
        ["Which shape has no twin of the same kind?"],
    ),
    (
        "uniqueness",
        "only_shape",
        ["Segment the only {shape}.", "Find the only {shape} in the image."],
        [],
    ),
    (
        "function",
        "function",
        ["Segment something that {prop}.", "Find the object that {prop}."],
        [],
    ),
    ("function", "function_novel", [], ["I need a thing that {prop}; which one is it?"]),
    (
        "negation",
        "not_colour",
        ["Segment the {shape} that is not {colour}.", "Find the {shape} which is not {colour}."],
        ["Which {shape} has any colour but {colour}?"],
    ),
    (
        "negation",
        "not_shape",
        [
            "Segment the {colour} object that is not a {shape}.",
            "Find the {colour} shape that is not a {shape}.",
        ],
        ["Which {colour} object is anything but a {shape}?"],
    ),
    (
        "multi_hop",
        "rel_of_sup",
        ["Segment the shape {rel} the {sup} object.", "Find what lies {rel} the {sup} shape."],
        ["Locate the {sup} shape, then segment the one {rel} it."],
    ),
    (
        "multi_hop",
        "rel_of_sup_shape",
        ["Segment the shape {rel} the {sup} {shape}.", "Which object is {rel} the {sup} {shape}?"],
        [],
    ),
    (
        "multi_hop",
        "same_colour_as_sup",
        [
            "Segment the other shape with the same colour as the {sup} shape.",
            "Find the object that shares its colour with the {sup} shape.",
        ],
        ["Which object matches the colour of the {sup} one?"],
    ),
    (
        "multi_hop",
        "same_shape_as_sup",
        [
            "Segment the other object with the same shape as the {sup} one.",
            "Find the shape of the same kind as the {sup} object.",
        ],
        [],
    ),
]


def _build_templates() -> dict[str, ShapeTemplate]:
    out: dict[str, ShapeTemplate] = {}
    for itype, program, seen, novel in _TEMPLATE_TABLE:
        for k, text in enumerate([*seen, *novel]):
            tid = f"{itype}.{program}.{k}"
            out[tid] = ShapeTemplate(tid, itype, program, text, novel=k >= len(seen))
    return out


#: every template, by id
TEMPLATES: dict[str, ShapeTemplate] = _build_templates()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid splits: {', '.join(SPLITS)}")


def _check_types(instruction_types: Sequence[str] | None) -> tuple[str, ...]:
    if instruction_types is None:
        return INSTRUCTION_TYPES
    if isinstance(instruction_types, str):
        instruction_types = [instruction_types]
    bad = [t for t in instruction_types if t not in INSTRUCTION_TYPES]
    if bad or not instruction_types:
        raise ValueError(
            f"unknown instruction type(s) {bad or list(instruction_types)!r}; valid types: "
            f"{', '.join(INSTRUCTION_TYPES)}"
        )
    return tuple(dict.fromkeys(instruction_types))


def templates_for_split(split: str, instruction_types: Sequence[str] | None = None) -> list[str]:
    """Template ids a split samples: held-out ones for ``test_novel``, the others otherwise.

    Args:
        split: One of :data:`SPLITS`.
        instruction_types: Restrict to these types (default: all).

    Returns:
        Template ids, in :data:`TEMPLATES` order.

    Raises:
        ValueError: Unknown split or instruction type.
    """
    _check_split(split)
    types = _check_types(instruction_types)
    novel = split == "test_novel"
    return [
        t.template_id
        for t in TEMPLATES.values()
        if t.novel == novel and t.instruction_type in types
    ]


def sample_seed(split: str, index: int, seed: int = 0) -> int:
    """The generator seed of sample ``index`` of ``split`` for dataset seed ``seed``.

    ``SPLIT_SEED_OFFSETS[split] + seed * SEED_STRIDE + index``; splits never share a seed for
    ``0 <= seed < 100`` and ``0 <= index < SEED_STRIDE``.

    Raises:
        ValueError: Unknown split, or ``seed`` / ``index`` outside those ranges.
    """
    _check_split(split)
    if not 0 <= seed < _MAX_DATASET_SEED:
        raise ValueError(f"shapes dataset seed must be in [0, {_MAX_DATASET_SEED}), got {seed}")
    if not 0 <= index < SEED_STRIDE:
        raise ValueError(f"shapes sample index must be in [0, {SEED_STRIDE}), got {index}")
    return SPLIT_SEED_OFFSETS[split] + seed * SEED_STRIDE + index


# --- samples --------------------------------------------------------------------------------------
@dataclass
class ShapesSample:
    """One generated sample.

    Attributes:
        image: H x W x 3 uint8 RGB.
        instruction: The referring instruction.
        instruction_type: One of :data:`INSTRUCTION_TYPES`.
        template_id: Key of :data:`TEMPLATES`.
        gold_cot: Reasoning that lists the objects left to right and derives the target.
        gold_answer: ``"the <colour> <shape>"`` of the target.
        gold_answer_region: ``"the <colour> <shape> in the <region>"``, the gold reasoning's
            final clause (what an answer-naming loss can ask the special token to say,
            ``model.rl.answer_key``).
        gt_mask: H x W bool, exactly the target's pixels.
        bbox: ``[x1, y1, x2, y2]`` of the target in pixels, ``x2``/``y2`` exclusive
            (``gt_mask[y1:y2, x1:x2]`` holds every target pixel).
        points: Two distinct ``[x, y]`` pixels inside the target (the most interior one first).
        objects: Every object: ``colour``, ``shape``, ``size`` (area in pixels), ``bbox``,
            ``centre`` (``[x, y]`` mask centroid).
        target_index: Index of the target in ``objects``.
        slots: The values the template was filled with (plus ``dir`` for relations).
        seed: The seed the sample was generated from.
        response_coprs: ``<think>{gold_cot}</think><REF_POS>``.
        response_lisa: ``It is {gold_answer} <SEG>.``.
        response_segzero: ``<think>{gold_cot}</think><answer>{"bbox":…,"points":…}</answer>``.
    """

    image: np.ndarray
    instruction: str
    instruction_type: str
    template_id: str
    gold_cot: str
    gold_answer: str
    gold_answer_region: str
    gt_mask: np.ndarray
    bbox: list[int]
    points: list[list[int]]
    objects: list[dict[str, Any]]
    target_index: int
    slots: dict[str, str]
    seed: int
    response_coprs: str = field(init=False)
    response_lisa: str = field(init=False)
    response_segzero: str = field(init=False)

    def __post_init__(self) -> None:
        self.response_coprs = _coprs_response(self.gold_cot)
        self.response_lisa = _LISA_RESPONSE.format(answer=self.gold_answer)
        answer = json.dumps({"bbox": self.bbox, "points": self.points}, separators=(",", ":"))
        self.response_segzero = f"<think>{self.gold_cot}</think><answer>{answer}</answer>"


def _interior_points(mask: np.ndarray, bbox: Sequence[int]) -> list[list[int]]:
    """Two distinct pixels of ``mask``: the deepest one, then a deep one far from it."""
    x1, y1, x2, y2 = bbox
    crop = np.pad(mask[y1:y2, x1:x2], 1)
    depth = np.zeros(crop.shape, dtype=np.int32)
    cur = crop.copy()
    d = 0
    while cur.any():  # depth = 4-neighbour erosions survived
        d += 1
        depth[cur] = d
        nxt = np.zeros_like(cur)
        nxt[1:-1, 1:-1] = (
            cur[1:-1, 1:-1] & cur[:-2, 1:-1] & cur[2:, 1:-1] & cur[1:-1, :-2] & cur[1:-1, 2:]
        )
        cur = nxt
    ys, xs = np.nonzero(depth == d)
    cy, cx = np.nonzero(crop)
    mid = np.array([cy.mean(), cx.mean()])
    k = int(np.argmin((ys - mid[0]) ** 2 + (xs - mid[1]) ** 2))
    p1 = (int(ys[k]), int(xs[k]))
    for min_depth in (max(2, (d + 1) // 2), 1):
        ys2, xs2 = np.nonzero(depth >= min_depth)
        dist = (ys2 - p1[0]) ** 2 + (xs2 - p1[1]) ** 2
        if dist.max() > 0:
            j = int(np.argmax(dist))
            p2 = (int(ys2[j]), int(xs2[j]))
            break
    else:
        p2 = p1
    return [[p[1] - 1 + x1, p[0] - 1 + y1] for p in (p1, p2)]


class ShapesWorld:
    """Generator of synthetic reasoning-segmentation samples, deterministic by seed.

    Args:
        image_size: Side of the square image in pixels.
        min_shapes: Fewest objects per image (>= 2).
        max_shapes: Most objects per image (<= 8).
        templates: Template ids (keys of :data:`TEMPLATES`) to sample from; ``None`` means all,
            held-out ones included (use :func:`templates_for_split` for a split's set).
        instruction_types: Keep only templates of these types (default: all).
        noise: Standard deviation of the Gaussian pixel noise (0 for flat colours).

    A sample first picks an instruction type uniformly, then a template of that type uniformly,
    then draws scenes until one has a unique answer for it.

    Example:
        >>> s = ShapesWorld().sample(0)
        >>> s.image.shape, bool(s.gt_mask.any())
        ((112, 112, 3), True)
    """

    def __init__(
        self,
        image_size: int = 112,
        min_shapes: int = 3,
        max_shapes: int = 5,
        templates: Sequence[str] | None = None,
        instruction_types: Sequence[str] | None = None,
        noise: float = 3.0,
    ) -> None:
        if not 2 <= min_shapes <= max_shapes <= 8:
            raise ValueError(
                f"need 2 <= min_shapes <= max_shapes <= 8, got min_shapes={min_shapes}, "
                f"max_shapes={max_shapes}"
            )
        if image_size < 48:
            raise ValueError(f"image_size must be at least 48 pixels, got {image_size}")
        types = _check_types(instruction_types)
        ids = list(TEMPLATES) if templates is None else list(templates)
        unknown = [t for t in ids if t not in TEMPLATES]
        if unknown:
            raise ValueError(f"unknown template id(s) {unknown}; valid ids: {', '.join(TEMPLATES)}")
        by_type: dict[str, list[ShapeTemplate]] = {}
        for tid in ids:
            t = TEMPLATES[tid]
            if t.instruction_type in types:
                by_type.setdefault(t.instruction_type, []).append(t)
        if not by_type:
            raise ValueError(
                f"no template left: templates={ids} has none of the instruction types {types}"
            )
        self.image_size = image_size
        self.min_shapes = min_shapes
        self.max_shapes = max_shapes
        self.noise = float(noise)
        self.instruction_types: tuple[str, ...] = tuple(
            t for t in INSTRUCTION_TYPES if t in by_type
        )
        self._by_type = by_type

    @property
    def templates(self) -> list[str]:
        """Template ids this world samples from."""
        return [t.template_id for ts in self._by_type.values() for t in ts]

    def sample(self, seed: int) -> ShapesSample:
        """Generate the sample of ``seed`` (same seed and settings -> identical sample).

        Raises:
            RuntimeError: No scene with a unique answer was found (only with extreme settings,
                e.g. ``max_shapes=2`` and a template that needs repeated colours).
        """
        rng = np.random.default_rng(seed)
        itype = self.instruction_types[int(rng.integers(len(self.instruction_types)))]
        options = self._by_type[itype]
        template = options[int(rng.integers(len(options)))]
        program = _PROGRAMS[template.program]
        for _ in range(_MAX_SCENES):
            scene = _make_scene(rng, self.image_size, self.min_shapes, self.max_shapes)
            if scene is None:
                continue
            candidates = program(scene)
            if candidates:
                cand = candidates[int(rng.integers(len(candidates)))]
                return self._finish(rng, seed, template, scene, cand)
        raise RuntimeError(
            f"no scene with a unique answer for template {template.template_id!r} after "
            f"{_MAX_SCENES} tries (seed={seed}, min_shapes={self.min_shapes}, "
            f"max_shapes={self.max_shapes}); allow more shapes or drop this template"
        )

    def _finish(
        self,
        rng: np.random.Generator,
        seed: int,
        template: ShapeTemplate,
        scene: _Scene,
        cand: _Candidate,
    ) -> ShapesSample:
        size = scene.size
        bg = np.array([240, 240, 236], dtype=np.float32) + rng.uniform(-8, 8, size=3)
        palette = np.array([bg, *(COLOURS[o.colour] for o in scene.objs)], dtype=np.float32)
        labels = np.zeros((size, size), dtype=np.intp)
        for k, m in enumerate(scene.masks):
            labels[m] = k + 1
        img = palette[labels]  # H x W x 3
        if self.noise > 0:
            img += self.noise * rng.standard_normal(img.shape, dtype=np.float32)
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

        t = cand.target
        target = scene.objs[t]
        sentences = [
            ("see", {"inventory": _inventory(scene)}),
            *cand.cot,
            ("final", {"target": target.name, "region": scene.region(t)}),
        ]
        gold_cot = " ".join(_COT[key].format(**slots) for key, slots in sentences)
        bbox = list(target.bbox)
        objects = [
            {
                "colour": o.colour,
                "shape": o.shape,
                "size": o.area,
                "bbox": list(o.bbox),
                "centre": [round(o.cx, 2), round(o.cy, 2)],
            }
            for o in scene.objs
        ]
        return ShapesSample(
            image=image,
            instruction=template.text.format(**cand.slots),
            instruction_type=template.instruction_type,
            template_id=template.template_id,
            gold_cot=gold_cot,
            gold_answer=_ANSWER.format(target=target.name),
            gold_answer_region=_ANSWER_REGION.format(target=target.name, region=scene.region(t)),
            gt_mask=scene.masks[t].copy(),
            bbox=bbox,
            points=_interior_points(scene.masks[t], bbox),
            objects=objects,
            target_index=t,
            slots=dict(cand.slots),
            seed=int(seed),
        )


# --- text -----------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"</?[A-Za-z_]+>|[A-Za-z]+|\d|[^\sA-Za-z\d]")


def split_words(text: str) -> list[str]:
    """Split text the way :func:`vocabulary` counts words.

    Tags (``<think>``, ``</think>``, ``<REF_POS>``, ``<SEG>``, ``<answer>``, ``</answer>``) stay
    whole, letters group into words (case kept), every digit and punctuation mark is its own token.
    """
    return _WORD_RE.findall(text)


def _format_literals(pattern: str) -> list[str]:
    return [lit for lit, *_ in string.Formatter().parse(pattern) if lit]


def vocabulary() -> list[str]:
    """Every token (:func:`split_words`) the generator can emit, sorted.

    Covers instructions of every template (held-out ones too), gold CoTs, answers, the three
    response formats (tags, JSON punctuation, digits 0-9).
    """
    pieces: list[str] = [
        *_FILLER_WORDS,
        *_TAGS,
        *_JSON_CHARS,
        *string.digits,
        *COLOURS,
        *SHAPES,
        *_PLURALS.values(),
        *_NUMBERS,
        *_RELATIONS.values(),
        *_SUPERLATIVES,
        *(r for row in _REGIONS for r in row),
    ]
    for props in (_PROPS_SEEN, _PROPS_NOVEL):
        for phrases in props.values():
            pieces += phrases
    for pattern in [*(t.text for t in TEMPLATES.values()), *_COT.values(), _LISA_RESPONSE, _ANSWER]:
        pieces += _format_literals(pattern)
    return sorted({w for p in pieces for w in split_words(p)})


def corpus(n: int = 2000, seed: int = 0, include_vocabulary: bool = True) -> list[str]:
    """Text to train a tokenizer on: instructions and gold responses of ``n`` samples.

    Samples come from every template (held-out ones included, so a tokenizer knows their words)
    on seeds disjoint from all splits.

    Args:
        n: Number of samples; each contributes its instruction and its three gold responses.
        seed: Corpus seed (0 <= seed < 100).
        include_vocabulary: Start with one line holding :func:`vocabulary`, so every word occurs
            at least once whatever ``n`` is.

    Returns:
        ``4 * n`` strings (plus the vocabulary line).
    """
    if not 0 <= seed < _MAX_DATASET_SEED:
        raise ValueError(f"corpus seed must be in [0, {_MAX_DATASET_SEED}), got {seed}")
    world = ShapesWorld(noise=0.0)
    lines = [" ".join(vocabulary())] if include_vocabulary else []
    for i in range(n):
        s = world.sample(_CORPUS_SEED_OFFSET + seed * SEED_STRIDE + i)
        lines += [s.instruction, s.response_coprs, s.response_lisa, s.response_segzero]
    return lines


# --- dataset --------------------------------------------------------------------------------------
@DATASETS.register_module()
class ShapesReasonDataset(BaseDataset):
    """The synthetic shapes world as an mmengine dataset; needs no files.

    ``load_data_list`` returns one light dict per sample (its seed and ids); ``get_data_info``
    generates the sample on the fly, deterministically.

    Args:
        split: ``'train'``, ``'val'``, ``'test'`` (seen templates, disjoint seeds) or
            ``'test_novel'`` (held-out templates only).
        num_samples: Length of the dataset (< 1e7).
        seed: Dataset seed in [0, 100); shifts every sample seed by ``seed * SEED_STRIDE``.
        image_size: Side of the square images.
        min_shapes: Fewest objects per image.
        max_shapes: Most objects per image.
        instruction_types: Types to sample (default: all of :data:`INSTRUCTION_TYPES`).
        noise: Pixel noise standard deviation.
        pipeline: Transforms applied to every data info.
        cache_samples: Keep each generated sample in memory, so a training run that draws a
            sample several times generates it once (about 50 KB per 112 px sample; a
            generation costs a few milliseconds, ~10% of a tiny CPU training step).
        **kwargs: Forwarded to ``BaseDataset`` (``indices``, ``test_mode``, ...).

    The data info holds ``img`` (H x W x 3 uint8 RGB), ``img_path`` (``shapes://<split>/<idx>``),
    ``instruction``, ``gt_mask`` (H x W bool), ``ignore_mask`` (``None``), ``height``, ``width``,
    ``dataset_name`` (``'shapes'``), ``split``, ``sample_id``, ``instruction_type``,
    ``template_id``, ``gold_cot``, ``gold_answer``, ``response_coprs``, ``response_lisa``,
    ``response_segzero``, ``bbox``, ``points``, ``objects``, ``sample_seed`` and mmengine's
    ``sample_idx``.
    """

    METAINFO = {"dataset_name": "shapes"}

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 1000,
        seed: int = 0,
        image_size: int = 112,
        min_shapes: int = 3,
        max_shapes: int = 5,
        instruction_types: Sequence[str] | None = None,
        noise: float = 3.0,
        pipeline: Sequence[dict | Callable] = (),
        cache_samples: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_split(split)
        self._samples: dict[int, ShapesSample] | None = {} if cache_samples else None
        if not 0 < num_samples <= SEED_STRIDE:
            raise ValueError(f"num_samples must be in [1, {SEED_STRIDE}], got {num_samples}")
        sample_seed(split, 0, seed)  # validates seed
        types = _check_types(instruction_types)
        self.split = split
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.world = ShapesWorld(
            image_size=image_size,
            min_shapes=min_shapes,
            max_shapes=max_shapes,
            templates=templates_for_split(split, types),
            instruction_types=types,
            noise=noise,
        )
        kwargs.setdefault("data_root", "")
        kwargs.setdefault("ann_file", "")
        super().__init__(pipeline=list(pipeline), **kwargs)
        self._metainfo.update(dataset_name="shapes", split=split)

    def load_data_list(self) -> list[dict]:
        """One light dict per sample: ``sample_seed``, ``sample_id``, ``img_path``, ``split``."""
        return [
            {
                "sample_seed": sample_seed(self.split, i, self.seed),
                "sample_id": f"{self.split}/{i:06d}",
                "img_path": f"shapes://{self.split}/{i:06d}",
                "split": self.split,
            }
            for i in range(self.num_samples)
        ]

    def get_data_info(self, idx: int) -> dict:
        """Generate sample ``idx`` (see the class docstring for the keys)."""
        info = super().get_data_info(idx)
        s = self._samples.get(idx) if self._samples is not None else None
        if s is None:
            s = self.world.sample(info["sample_seed"])
            if self._samples is not None:
                self._samples[idx] = s
        h, w = s.gt_mask.shape
        info.update(
            img=s.image,
            instruction=s.instruction,
            gt_mask=s.gt_mask,
            ignore_mask=None,
            height=h,
            width=w,
            dataset_name="shapes",
            instruction_type=s.instruction_type,
            template_id=s.template_id,
            gold_cot=s.gold_cot,
            gold_answer=s.gold_answer,
            gold_answer_region=s.gold_answer_region,
            response_coprs=s.response_coprs,
            response_lisa=s.response_lisa,
            response_segzero=s.response_segzero,
            bbox=s.bbox,
            points=s.points,
            objects=s.objects,
        )
        return info


@TRANSFORMS.register_module()
class PerturbAnswerPlace:
    """Warm-up augmentation for the synthetic world: sometimes the gold answer names a wrong place.

    With probability ``prob`` the final sentence of the gold reasoning names another of the nine
    :data:`PLACES` ("So the target is the red diamond in the upper right." for a red diamond in
    the lower left) in ``response_coprs``, ``gold_cot`` and ``gold_answer_region`` alike; the
    target mask stays the same. A tiny policy copies the object from the instruction far more
    often than it reads where the object is, and a prior that trusts the named place then masks
    an empty spot; trained with a share of wrong places, it falls back on the named object's
    colour and shape (docs/benchmarks.md, calibration 21). Use it on training pipelines only.

    The draws come from the transform's own generator (``seed``, and the dataloader worker's id
    when there are workers), one per call, so a resumed run, which replays the batches it skips,
    perturbs the same samples as an uninterrupted one.

    Args:
        prob: Probability of a wrong place per sample, in [0, 1].
        seed: Seed of the generator, independent of the runner's ``randomness.seed`` (another
            runner seed perturbs other samples, since the data order changes, with the same
            stream of draws).

    Raises:
        ValueError: ``prob`` outside [0, 1]; a sample whose ``response_coprs`` does not end its
            reasoning with the ``gold_answer_region`` sentence (not a synthetic-world sample).
    """

    def __init__(self, prob: float = 0.25, seed: int = 0) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"PerturbAnswerPlace: prob must be in [0, 1], got {prob}")
        self.prob, self.seed = float(prob), int(seed)
        self._rng: np.random.Generator | None = None

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            import torch.utils.data

            worker = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id + 1])
        return self._rng

    def __call__(self, results: dict) -> dict:
        rng = self._generator()
        wrong, pick = rng.random() < self.prob, int(rng.integers(len(PLACES) - 1))
        if not wrong:
            return results
        name, _, place = results["gold_answer_region"].removeprefix("the ").partition(" in the ")
        old_final = _COT["final"].format(target=name, region=place)
        cot = results["gold_cot"]
        if (place not in PLACES or not cot.endswith(old_final)
                or results["response_coprs"] != _coprs_response(cot)):
            raise ValueError(
                f"PerturbAnswerPlace: sample {results.get('sample_id')!r} does not end its "
                f"reasoning with {old_final!r}; use this transform on the synthetic world only")
        new_place = [p for p in PLACES if p != place][pick]
        results["gold_cot"] = (cot.removesuffix(old_final)
                               + _COT["final"].format(target=name, region=new_place))
        results["response_coprs"] = _coprs_response(results["gold_cot"])
        results["gold_answer_region"] = _ANSWER_REGION.format(target=name, region=new_place)
        return results

    transform = __call__
