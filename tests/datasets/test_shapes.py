"""Tests of the synthetic shapes reasoning world (coprs/datasets/shapes.py)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from coprs.datasets.shapes import (
    COLOURS,
    INSTRUCTION_TYPES,
    SEED_STRIDE,
    SHAPES,
    SPLITS,
    TEMPLATES,
    ShapesReasonDataset,
    ShapesSample,
    ShapesWorld,
    corpus,
    cot_sentences,
    parse_final_answer,
    parse_inventory,
    sample_seed,
    split_words,
    templates_for_split,
    vocabulary,
)
from coprs.registry import DATASETS

N_TRAIN = 280  # every type appears ~40 times


@pytest.fixture(scope="module")
def train_samples() -> list[ShapesSample]:
    world = ShapesWorld(templates=templates_for_split("train"))
    return [world.sample(sample_seed("train", i)) for i in range(N_TRAIN)]


@pytest.fixture(scope="module")
def novel_samples() -> list[ShapesSample]:
    world = ShapesWorld(templates=templates_for_split("test_novel"))
    return [world.sample(sample_seed("test_novel", i)) for i in range(84)]


def _same(a: ShapesSample, b: ShapesSample) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.gt_mask, b.gt_mask)
        and a.instruction == b.instruction
        and a.gold_cot == b.gold_cot
        and a.response_segzero == b.response_segzero
        and a.objects == b.objects
    )


# --- determinism and splits -------------------------------------------------------------------------
def test_same_seed_same_sample_different_seed_different_sample():
    a, b = ShapesWorld().sample(123), ShapesWorld().sample(123)
    assert _same(a, b)
    c = ShapesWorld().sample(124)
    assert not np.array_equal(a.image, c.image)


def test_dataset_is_deterministic_and_splits_differ():
    ds1 = ShapesReasonDataset(split="train", num_samples=4)
    ds2 = ShapesReasonDataset(split="train", num_samples=4)
    for i in range(4):
        x, y = ds1[i], ds2[i]
        assert np.array_equal(x["img"], y["img"]) and np.array_equal(x["gt_mask"], y["gt_mask"])
        assert x["instruction"] == y["instruction"] and x["gold_cot"] == y["gold_cot"]
    val = ShapesReasonDataset(split="val", num_samples=4)
    other_seed = ShapesReasonDataset(split="train", num_samples=4, seed=1)
    for i in range(4):
        assert not np.array_equal(ds1[i]["img"], val[i]["img"])
        assert not np.array_equal(ds1[i]["img"], other_seed[i]["img"])


def test_splits_draw_from_disjoint_seeds():
    seeds = {}
    for split in SPLITS:
        ds = ShapesReasonDataset(split=split, num_samples=300, lazy_init=True)
        ds.full_init()
        seeds[split] = {ds.get_data_info(i)["sample_seed"] for i in (0, 1, 299)}
        seeds[split] |= {d["sample_seed"] for d in ds.load_data_list()}
        assert len(seeds[split]) == 300
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not seeds[a] & seeds[b], (a, b)
    # the extreme corners of the documented ranges stay disjoint too
    corners = {
        split: {sample_seed(split, i, s) for i in (0, SEED_STRIDE - 1) for s in (0, 99)}
        for split in SPLITS
    }
    assert len(set().union(*corners.values())) == 4 * len(SPLITS)
    for bad in ({"seed": 100}, {"seed": -1}, {"index": SEED_STRIDE}):
        with pytest.raises(ValueError):
            sample_seed("train", bad.get("index", 0), bad.get("seed", 0))


def test_novel_templates_never_used_in_training_and_vice_versa(train_samples, novel_samples):
    train, val, test = (set(templates_for_split(s)) for s in ("train", "val", "test"))
    novel = set(templates_for_split("test_novel"))
    assert train == val == test
    assert not train & novel
    assert train | novel == set(TEMPLATES)
    for itype in INSTRUCTION_TYPES:  # every type has seen and held-out phrasings
        assert any(TEMPLATES[t].instruction_type == itype for t in train)
        assert any(TEMPLATES[t].instruction_type == itype for t in novel)
    seen_texts = {TEMPLATES[t].text for t in train}
    assert not seen_texts & {TEMPLATES[t].text for t in novel}
    assert {s.template_id for s in train_samples} <= train
    assert {s.template_id for s in novel_samples} <= novel
    assert {s.instruction_type for s in novel_samples} == set(INSTRUCTION_TYPES)
    ds = ShapesReasonDataset(split="test_novel", num_samples=6)
    assert all(ds[i]["template_id"] in novel for i in range(6))


def test_every_instruction_type_and_most_templates_appear(train_samples):
    types = Counter(s.instruction_type for s in train_samples)
    assert set(types) == set(INSTRUCTION_TYPES)
    assert min(types.values()) >= 20, types
    used = {s.template_id for s in train_samples}
    assert len(used) >= 0.9 * len(templates_for_split("train"))


# --- geometry ------------------------------------------------------------------------------------
def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - rgb) ** 2)))


def test_mask_bbox_points_and_colours(train_samples):
    for s in train_samples:
        h, w = s.gt_mask.shape
        assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
        assert s.gt_mask.dtype == bool and s.gt_mask.any()
        target = s.objects[s.target_index]
        assert s.gt_mask.sum() == target["size"]
        assert s.gold_answer == f"the {target['colour']} {target['shape']}"
        # the mask's pixels carry the target colour (up to the mild noise) ...
        pixels = s.image[s.gt_mask].astype(np.float64)
        mean = pixels.mean(0)
        assert _nearest_colour(mean) == target["colour"]
        assert np.abs(mean - np.array(COLOURS[target["colour"]])).max() < 4
        # ... and a thin ring around it is background (no neighbour touches it)
        x1, y1, x2, y2 = s.bbox
        assert s.bbox == target["bbox"]
        ys, xs = np.nonzero(s.gt_mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        ring = np.zeros_like(s.gt_mask)
        ring[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
        ring &= ~s.gt_mask
        ring[y1:y2, x1:x2] = False
        assert s.image[ring].min() > 200  # light background, never another shape
        assert len(s.points) == 2 and s.points[0] != s.points[1]
        for x, y in s.points:
            assert s.gt_mask[y, x]
        assert {o["shape"] for o in s.objects} <= set(SHAPES)


def test_objects_never_overlap_and_names_are_unique(train_samples):
    for s in train_samples:
        assert 3 <= len(s.objects) <= 5
        pairs = [(o["colour"], o["shape"]) for o in s.objects]
        assert len(set(pairs)) == len(pairs)
        boxes = [o["bbox"] for o in s.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


# --- every answer is the unique correct one ------------------------------------------------------
def _on_side(a: dict, r: dict, direction: str) -> bool | None:
    """Independent statement of the relation rule: True / False / None (ambiguous)."""
    (ax1, ay1, ax2, ay2), (rx1, ry1, rx2, ry2) = a["bbox"], r["bbox"]
    (acx, acy), (rcx, rcy) = a["centre"], r["centre"]
    rule = {
        "left": (ax2 <= rx1, acx >= rcx),
        "right": (ax1 >= rx2, acx <= rcx),
        "above": (ay2 <= ry1, acy >= rcy),
        "below": (ay1 >= ry2, acy <= rcy),
    }[direction]
    return True if rule[0] else (False if rule[1] else None)


def _named(objs: list[dict], name: str) -> int:
    hits = [i for i, o in enumerate(objs) if f"{o['colour']} {o['shape']}" == name]
    assert len(hits) == 1, name
    return hits[0]


def _relation_answer(objs: list[dict], ref: int, direction: str) -> int:
    sides = [_on_side(o, objs[ref], direction) if i != ref else False for i, o in enumerate(objs)]
    assert None not in sides, "ambiguous relation was accepted"
    hits = [i for i, v in enumerate(sides) if v]
    assert len(hits) == 1
    return hits[0]


def _extreme(objs: list[dict], idxs: list[int], sup: str) -> int:
    order = sorted(idxs, key=lambda i: objs[i]["size"], reverse=sup == "largest")
    a, b = objs[order[0]]["size"], objs[order[1]]["size"]
    assert max(a, b) >= 1.3 * min(a, b), "superlative without a clear margin"
    return order[0]


def _solve(s: ShapesSample) -> int:
    """Recompute the target from objects + slots, asserting uniqueness along the way."""
    objs, slots = s.objects, s.slots
    program = TEMPLATES[s.template_id].program
    every = list(range(len(objs)))
    colours = Counter(o["colour"] for o in objs)
    shapes = Counter(o["shape"] for o in objs)

    def where(**kv: str) -> list[int]:
        return [i for i, o in enumerate(objs) if all(o[k] == v for k, v in kv.items())]

    if program == "name":
        return _named(objs, f"{slots['colour']} {slots['shape']}")
    if program == "colour_only":
        (t,) = where(colour=slots["colour"])
        return t
    if program in ("shape_only", "only_shape"):
        (t,) = where(shape=slots["shape"])
        return t
    if program == "relation":
        return _relation_answer(objs, _named(objs, slots["ref"]), slots["dir"])
    if program == "sup_overall":
        return _extreme(objs, every, slots["sup"])
    if program == "sup_colour":
        return _extreme(objs, where(colour=slots["colour"]), slots["sup"])
    if program == "sup_shape":
        return _extreme(objs, where(shape=slots["shape"]), slots["sup"])
    if program == "unique_colour":
        (t,) = [i for i, o in enumerate(objs) if colours[o["colour"]] == 1]
        return t
    if program == "unique_shape":
        (t,) = [i for i, o in enumerate(objs) if shapes[o["shape"]] == 1]
        return t
    if program.startswith("function"):
        shape = next(sh for sh in SHAPES if re.search(rf"\b{sh}\b", s.gold_cot.split(". ")[1]))
        (t,) = where(shape=shape)
        return t
    if program == "not_colour":
        (t,) = [i for i in where(shape=slots["shape"]) if objs[i]["colour"] != slots["colour"]]
        assert len(where(shape=slots["shape"])) == 2
        return t
    if program == "not_shape":
        (t,) = [i for i in where(colour=slots["colour"]) if objs[i]["shape"] != slots["shape"]]
        assert len(where(colour=slots["colour"])) == 2
        return t
    if program == "rel_of_sup":
        ref = _extreme(objs, every, slots["sup"])
        return _relation_answer(objs, ref, slots["dir"])
    if program == "rel_of_sup_shape":
        ref = _extreme(objs, where(shape=slots["shape"]), slots["sup"])
        return _relation_answer(objs, ref, slots["dir"])
    if program in ("same_colour_as_sup", "same_shape_as_sup"):
        key = "colour" if program == "same_colour_as_sup" else "shape"
        ref = _extreme(objs, every, slots["sup"])
        (t,) = [i for i in where(**{key: objs[ref][key]}) if i != ref]
        return t
    raise AssertionError(f"no checker for program {program!r}")


def test_every_target_is_the_unique_answer(train_samples, novel_samples):
    for s in [*train_samples, *novel_samples]:
        assert _solve(s) == s.target_index, (s.template_id, s.instruction, s.objects)


def test_relation_answers_agree_with_object_centres(train_samples):
    checked = 0
    for s in train_samples:
        if "dir" not in s.slots:
            continue
        ref = _named(s.objects, s.slots["ref"])
        t = s.objects[s.target_index]
        r = s.objects[ref]
        axis = 0 if s.slots["dir"] in ("left", "right") else 1
        sign = -1 if s.slots["dir"] in ("left", "above") else 1
        assert sign * (t["centre"][axis] - r["centre"][axis]) > 0
        for i, o in enumerate(s.objects):
            if i not in (ref, s.target_index):
                assert sign * (o["centre"][axis] - r["centre"][axis]) <= 0
        checked += 1
    assert checked >= 30


def test_cot_reasons_to_the_answer(train_samples):
    for s in train_samples:
        assert s.gold_cot.startswith("I see ")
        for o in s.objects:  # the inventory names every object
            assert f"{o['colour']} {o['shape']}" in s.gold_cot.split(".")[0]
        assert re.search(rf"So the target is {s.gold_answer} in the [a-z ]+\.$", s.gold_cot)
        # the answer with its region is exactly the reasoning's final clause
        assert s.gold_cot.endswith(f"So the target is {s.gold_answer_region}.")
        assert s.gold_answer_region.startswith(s.gold_answer + " in the ")


def test_parse_final_answer_reads_the_gold_and_other_answers(train_samples):
    for s in train_samples:
        colour, shape = s.gold_answer.split()[-2:]
        place = s.gold_answer_region.partition(" in the ")[2]
        assert parse_final_answer(s.response_coprs) == (colour, shape, place)
    assert parse_final_answer("So the target is the red star.") == ("red", "star", None)
    assert parse_final_answer("So the target is the red star in the lower left .") == (
        "red", "star", "lower left")
    assert parse_final_answer("<think>I see a red star") is None


# --- responses and text --------------------------------------------------------------------------
def test_gold_responses_parse(train_samples):
    for s in train_samples:
        m = re.fullmatch(r"<think>(.+)</think><REF_POS>", s.response_coprs)
        assert m and m.group(1) == s.gold_cot
        assert s.response_lisa == f"It is {s.gold_answer} <SEG>."
        m = re.fullmatch(r"<think>(.+)</think><answer>(.+)</answer>", s.response_segzero)
        assert m and m.group(1) == s.gold_cot
        assert " " not in m.group(2)  # compact json
        assert json.loads(m.group(2)) == {"bbox": s.bbox, "points": s.points}


def test_vocabulary_covers_every_emitted_word(novel_samples):
    vocab = set(vocabulary())
    assert {"<think>", "</think>", "<REF_POS>", "<SEG>", "<answer>", "</answer>"} <= vocab
    assert set('0123456789{}[]":,.?') <= vocab
    lines = corpus(500, include_vocabulary=False)
    assert len(lines) == 2000
    words = {w for line in lines for w in split_words(line)}
    words |= {w for s in novel_samples for w in split_words(s.instruction + s.response_segzero)}
    assert words <= vocab, sorted(words - vocab)
    assert corpus(3)[0].split() == vocabulary()
    assert split_words('<think>A b.</think><answer>{"bbox":[12]}</answer>') == [
        "<think>",
        "A",
        "b",
        ".",
        "</think>",
        "<answer>",
        "{",
        '"',
        "bbox",
        '"',
        ":",
        "[",
        "1",
        "2",
        "]",
        "}",
        "</answer>",
    ]


# --- the dataset ---------------------------------------------------------------------------------
def test_dataset_contract_through_basedataset_indexing():
    ds = DATASETS.build(
        dict(type="ShapesReasonDataset", split="val", num_samples=3, image_size=96, pipeline=[])
    )
    assert isinstance(ds, ShapesReasonDataset) and len(ds) == 3
    info = ds[2]
    assert info["img"].shape == (96, 96, 3) and info["img"].dtype == np.uint8
    assert info["gt_mask"].shape == (96, 96) and info["gt_mask"].dtype == bool
    assert info["ignore_mask"] is None
    assert (info["height"], info["width"]) == (96, 96)
    assert info["img_path"] == "shapes://val/000002"
    assert info["dataset_name"] == "shapes" and info["split"] == "val"
    assert info["sample_id"] == "val/000002" and info["sample_idx"] == 2
    assert info["sample_seed"] == sample_seed("val", 2)
    for key in (
        "instruction",
        "instruction_type",
        "template_id",
        "gold_cot",
        "gold_answer",
        "gold_answer_region",
        "response_coprs",
        "response_lisa",
        "response_segzero",
    ):
        assert isinstance(info[key], str) and info[key]
    assert len(info["bbox"]) == 4 and len(info["points"]) == 2
    s = ShapesWorld(image_size=96, templates=templates_for_split("val")).sample(
        sample_seed("val", 2)
    )
    assert np.array_equal(s.image, info["img"]) and s.instruction == info["instruction"]
    # a pipeline sees the same dict; indices keep per-sample seeds
    sub = ShapesReasonDataset(
        split="val",
        num_samples=3,
        image_size=96,
        indices=[2],
        pipeline=[lambda r: {"n": int(r["gt_mask"].sum())}],
    )
    assert sub[0] == {"n": int(info["gt_mask"].sum())}


def test_cache_samples_generates_each_sample_once_and_keeps_it_intact():
    from coprs.datasets.transforms import LoadImage, PackReasonSegInputs, ResizePadVision

    pipeline = [LoadImage(), ResizePadVision(size=112), PackReasonSegInputs()]
    plain = ShapesReasonDataset(split="train", num_samples=4, pipeline=pipeline)
    ds = ShapesReasonDataset(split="train", num_samples=4, pipeline=pipeline, cache_samples=True)
    calls = []
    generate = ds.world.sample
    ds.world.sample = lambda seed: calls.append(seed) or generate(seed)
    first, second, want = ds[1], ds[1], plain[1]
    assert calls == [sample_seed("train", 1)]  # the second draw came from memory
    for got in (first, second):  # and the pipeline did not change the kept sample
        assert np.array_equal(got["inputs"], want["inputs"])
        for key in ("gt_mask", "vision_gt_mask"):
            assert np.array_equal(got["data_samples"][key], want["data_samples"][key])
    assert ds[2]["data_samples"]["instruction"] == plain[2]["data_samples"]["instruction"]
    assert len(calls) == 2


def test_dataset_instruction_type_filter():
    ds = ShapesReasonDataset(split="train", num_samples=12, instruction_types=["relation"])
    assert {ds[i]["instruction_type"] for i in range(12)} == {"relation"}


def test_bad_arguments_list_the_valid_values():
    with pytest.raises(ValueError, match="test_novel"):
        ShapesReasonDataset(split="training")
    with pytest.raises(ValueError, match="multi_hop"):
        ShapesReasonDataset(instruction_types=["counting"])
    with pytest.raises(ValueError, match="test_novel"):
        templates_for_split("dev")
    with pytest.raises(ValueError, match="max_shapes"):
        ShapesWorld(min_shapes=4, max_shapes=3)
    with pytest.raises(ValueError, match="attribute.name.0"):
        ShapesWorld(templates=["nope"])


# --- PerturbAnswerPlace ------------------------------------------------------------------------------
def _place(info: dict) -> str:
    return info["gold_answer_region"].partition(" in the ")[2]


def test_perturb_answer_place_names_another_place_everywhere_and_keeps_the_rest():
    from coprs.datasets.shapes import PLACES
    from coprs.registry import TRANSFORMS

    t = TRANSFORMS.build(dict(type="PerturbAnswerPlace", prob=1.0))
    ds = ShapesReasonDataset(split="train", num_samples=30, cache_samples=True, pipeline=[t])
    for i in range(30):
        info = ds.get_data_info(i)
        old = {k: info[k] for k in ("response_coprs", "gold_cot", "gold_answer_region")}
        out = t(dict(info))
        place = _place(out)
        assert place in PLACES and place != _place(old)
        head, _, _ = old["gold_cot"].rpartition(" So the target is ")
        assert out["gold_cot"] == f"{head} So the target is {out['gold_answer_region']}."
        assert out["response_coprs"] == f"<think>{out['gold_cot']}</think><REF_POS>"
        assert np.array_equal(out["gt_mask"], info["gt_mask"])
        assert out["response_lisa"] == info["response_lisa"]
    # the dataset's pipeline perturbs what it returns, never the samples it keeps
    first = ds[0]
    assert _place(first) != _place(ds.get_data_info(0))
    assert ds.get_data_info(0)["response_coprs"] == ds.world.sample(
        sample_seed("train", 0)).response_coprs


def test_perturb_answer_place_rate_and_replayable_draws():
    from coprs.datasets.shapes import PerturbAnswerPlace

    ds = ShapesReasonDataset(split="train", num_samples=40)
    infos = [ds.get_data_info(i) for i in range(40)] * 10
    runs = []
    for _ in range(2):  # a fresh transform with the same seed replays the same draws
        t = PerturbAnswerPlace(prob=0.25, seed=3)
        runs.append([_place(t(dict(info))) for info in infos])
    assert runs[0] == runs[1]
    changed = sum(p != _place(info) for p, info in zip(runs[0], infos))
    assert 0.15 * len(infos) < changed < 0.35 * len(infos)
    other = PerturbAnswerPlace(prob=0.25, seed=4)
    assert [_place(other(dict(info))) for info in infos] != runs[0]
    never = PerturbAnswerPlace(prob=0.0)
    assert all(never(dict(info)) == info for info in infos[:40])


def test_perturb_answer_place_rejects_bad_input():
    from coprs.datasets.shapes import PerturbAnswerPlace

    with pytest.raises(ValueError, match="prob must be in"):
        PerturbAnswerPlace(prob=1.5)
    foreign = dict(sample_id="refcoco_7", gold_answer_region="the man in the left",
                   response_coprs="<think>a man</think><REF_POS>", gold_cot="a man")
    with pytest.raises(ValueError, match="refcoco_7.*synthetic world only"):
        PerturbAnswerPlace(prob=1.0)(foreign)


def test_world_sentences_are_recognised():
    ds = ShapesReasonDataset(split="test", num_samples=60)
    for s in (ds.get_data_info(i) for i in range(len(ds))):
        kinds = [k for k, _ in cot_sentences(s["response_coprs"])]
        assert None not in kinds and kinds[0] == "see" and kinds[-1] == "final"
        assert sorted(parse_inventory(s["gold_cot"])) == sorted(
            (o["colour"], o["shape"]) for o in s["objects"])
    assert cot_sentences("<think>Hello there. It is a star.</think><REF_POS>") == [
        (None, "Hello there."), ("ref_shape", "It is a star.")]
    assert parse_inventory("The red star is the one asked for.") is None
