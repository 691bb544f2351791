"""Tiny on-disk fixtures in the real RefCOCO (``refer``), ReasonSeg and coprs JSON-lines formats.

Tests and tools build them on the fly in a temporary folder; nothing binary is committed. Images
are small JPEGs (64 x 48 by default) with the annotated objects painted in, so a model or a
visualisation has something to look at.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "RefCOCOFixture",
    "ReasonSegFixture",
    "make_refcoco_fixture",
    "make_reasonseg_fixture",
    "write_reasonseg_sample",
    "make_jsonl_fixture",
    "REFCOCO_FIXTURE_SPLITS",
]

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}
_CATEGORIES = [
    {"id": 1, "name": "box", "supercategory": "shape"},
    {"id": 2, "name": "blob", "supercategory": "shape"},
]

#: splits of image k per dataset (k >= 4: train only). Images 1-3 are evaluation images somewhere;
#: some of them also carry train refs (in the same or another dataset) to exercise exclusion.
REFCOCO_FIXTURE_SPLITS: dict[str, dict[int, tuple[str, ...]]] = {
    "refcoco": {0: ("train",), 1: ("train", "val"), 2: ("testA",), 3: ("testB",)},
    "refcoco+": {0: ("train",), 1: ("train",), 2: ("train", "testB"), 3: ("train",)},
    "refcocog": {0: ("train",), 1: ("val",), 2: ("train",), 3: ("test", "train")},
}
_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


@dataclass
class RefCOCOFixture:
    """What :func:`make_refcoco_fixture` wrote.

    Attributes:
        data_root: Root of the ``refer`` layout.
        img_dir: Folder of the images (``<data_root>/images/mscoco/images/train2014``).
        images: COCO image records (``id``, ``file_name``, ``height``, ``width``).
        annotations: COCO annotation records, shared by every dataset.
        refs: The refs written per dataset name.
        refs_paths: Path of each dataset's refs pickle.
        eval_image_ids: Image ids in a non-train split, per dataset.
        rle_ann_id: Id of the annotation whose segmentation is an RLE (counts as str).
    """

    data_root: str
    img_dir: str
    images: list[dict]
    annotations: list[dict]
    refs: dict[str, list[dict]] = field(default_factory=dict)
    refs_paths: dict[str, str] = field(default_factory=dict)
    eval_image_ids: dict[str, set[int]] = field(default_factory=dict)
    rle_ann_id: int = -1

    def sentences(self, dataset: str, split: str, exclude: set[int] | None = None) -> int:
        """Number of sentences in ``dataset``/``split`` (skipping images in ``exclude``)."""
        exclude = exclude or set()
        return sum(
            len(r["sentences"])
            for r in self.refs[dataset]
            if r["split"] == split and r["image_id"] not in exclude
        )


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_refcoco_fixture(
    root: str | os.PathLike,
    datasets: Sequence[str] = ("refcoco", "refcoco+", "refcocog"),
    num_images: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (64, 48),
) -> RefCOCOFixture:
    """Write a tiny ``refer`` layout: JPEGs, ``instances.json`` and ``refs(unc|umd).p``.

    Each image has two objects: a rectangle polygon and a triangle polygon; the first object of
    image 0 (referred to by every dataset's train split) is stored as a pycocotools RLE (``counts`` as str, ``iscrowd`` 0). Each dataset gets
    one ref per (object, split) listed in :data:`REFCOCO_FIXTURE_SPLITS`, with 1-3 sentences,
    pickled with protocol 2 and the real key names.

    Args:
        root: Folder to write into (becomes ``data_root``).
        datasets: Which of ``'refcoco'``, ``'refcoco+'``, ``'refcocog'`` to write.
        num_images: Number of images (>= 4, so every split is populated).
        seed: Seed of the object placement.
        size: Image ``(width, height)``.

    Returns:
        A :class:`RefCOCOFixture` describing what was written.
    """
    from pycocotools import mask as mask_utils

    if num_images < 4:
        raise ValueError(f"num_images must be >= 4 to populate every split, got {num_images}")
    rng = random.Random(seed)
    root = os.fspath(root)
    width, height = size
    img_dir = os.path.join(root, "images", "mscoco", "images", "train2014")
    os.makedirs(img_dir, exist_ok=True)

    images, annotations = [], []
    objects: dict[int, list[tuple[int, str]]] = {}  # image index -> [(ann_id, description)]
    rle_ann_id = -1
    for k in range(num_images):
        image_id = 1000 + 7 * k
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        img = Image.new("RGB", (width, height), (128, 128, 128))
        draw = ImageDraw.Draw(img)
        colours = rng.sample(sorted(_COLOURS), 2)
        x0, y0 = rng.randint(2, width // 2 - 12), rng.randint(2, height - 20)
        box = _rect(x0, y0, x0 + rng.randint(8, 14), y0 + rng.randint(8, 16))
        tx = rng.randint(width // 2 + 2, width - 14)
        tri = [tx, height - 4.0, tx + 12.0, height - 4.0, tx + 6.0, rng.randint(4, height - 16)]
        objects[k] = []
        for j, (poly, cat, colour) in enumerate(((box, 1, colours[0]), (tri, 2, colours[1]))):
            ann_id = 50000 + 10 * k + j
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=_COLOURS[colour])
            segm: Any = [[float(v) for v in poly]]
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
            if k == 0 and j == 0:
                segm = {"size": [height, width], "counts": rle["counts"].decode("utf-8")}
                rle_ann_id = ann_id
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": segm,
                    "area": float(mask_utils.area(rle)),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
            side = "left" if j == 0 else "right"
            shape = "box" if j == 0 else "triangle"
            objects[k].append((ann_id, f"{colour} {shape} on the {side}"))
        img.save(os.path.join(img_dir, file_name), quality=75)

    instances = {
        "info": {"description": "coprs tiny refer fixture"},
        "images": images,
        "annotations": annotations,
        "categories": _CATEGORIES,
    }
    fixture = RefCOCOFixture(root, img_dir, images, annotations, rle_ann_id=rle_ann_id)
    ann_cat = {a["id"]: a["category_id"] for a in annotations}
    ref_id, sent_id = 0, 0
    for dataset in datasets:
        if dataset not in _SPLIT_BY:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(_SPLIT_BY)}")
        ds_dir = os.path.join(root, dataset)
        os.makedirs(ds_dir, exist_ok=True)
        with open(os.path.join(ds_dir, "instances.json"), "w", encoding="utf-8") as f:
            json.dump(instances, f)
        refs = []
        for k in range(num_images):
            image_id = images[k]["id"]
            for n, split in enumerate(REFCOCO_FIXTURE_SPLITS[dataset].get(k, ("train",))):
                # alternate objects so a shared image's train and eval refs differ
                ann_id, desc = objects[k][(n + k) % 2]
                sentences = []
                phrasing = ["the " + desc, desc, "the " + desc.split(" on ")[0]]
                for s in range(1 + (ref_id % 3)):
                    sent = phrasing[s]
                    sentences.append(
                        {
                            "tokens": sent.split(),
                            "raw": sent.capitalize(),
                            "sent_id": sent_id,
                            "sent": sent,
                        }
                    )
                    sent_id += 1
                refs.append(
                    {
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                        "ann_id": ann_id,
                        "ref_id": ref_id,
                        "image_id": image_id,
                        "split": split,
                        "sentences": sentences,
                        "category_id": ann_cat[ann_id],
                    }
                )
                ref_id += 1
        path = os.path.join(ds_dir, f"refs({_SPLIT_BY[dataset]}).p")
        with open(path, "wb") as f:
            pickle.dump(refs, f, protocol=2)
        fixture.refs[dataset] = refs
        fixture.refs_paths[dataset] = path
        fixture.eval_image_ids[dataset] = {r["image_id"] for r in refs if r["split"] != "train"}
    return fixture


@dataclass
class ReasonSegFixture:
    """What :func:`make_reasonseg_fixture` wrote.

    Attributes:
        data_root: Folder holding the split folder.
        split_dir: ``<data_root>/<split>``.
        samples: Per stem: ``json_path``, ``img_path``, ``text`` (list), ``target`` and
            ``ignore`` (flat polygons), ``height``, ``width``.
    """

    data_root: str
    split_dir: str
    samples: dict[str, dict] = field(default_factory=dict)


def write_reasonseg_sample(
    split_dir: str | os.PathLike,
    name: str,
    text: str | list[str],
    shapes: list[dict],
    size: tuple[int, int] = (64, 48),
    is_sentence: bool = False,
    write_size: bool = True,
    write_image: bool = True,
    seed: int = 0,
) -> dict:
    """Write one ReasonSeg sample: ``<name>.jpg`` and a LabelMe-style ``<name>.json``.

    Args:
        split_dir: Split folder (created if needed).
        name: File stem.
        text: ``text`` field (list of instructions, or a string).
        shapes: LabelMe shapes (``label``, ``points``, optional ``shape_type``).
        size: Image ``(width, height)``.
        is_sentence: ``is_sentence`` field.
        write_size: Write ``imageHeight``/``imageWidth`` into the JSON.
        write_image: Write the JPEG (False makes a JSON without its image).
        seed: Seed of the background colour.

    Returns:
        Dict with ``json_path``, ``img_path``, ``height``, ``width``.
    """
    split_dir = os.fspath(split_dir)
    os.makedirs(split_dir, exist_ok=True)
    width, height = size
    img_path = os.path.join(split_dir, f"{name}.jpg")
    if write_image:
        rng = np.random.default_rng(seed)
        img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(60, 200, 3)))
        draw = ImageDraw.Draw(img)
        for shape in shapes:
            pts = [tuple(p) for p in shape["points"]]
            if len(pts) >= 3 and shape.get("label") == "target":
                draw.polygon(pts, fill=(230, 60, 40))
        img.save(img_path, quality=75)
    anno: dict[str, Any] = {
        "text": text,
        "is_sentence": is_sentence,
        "shapes": shapes,
        "imagePath": f"{name}.jpg",
    }
    if write_size:
        anno.update(imageHeight=height, imageWidth=width)
    json_path = os.path.join(split_dir, f"{name}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(anno, f)
    return {"json_path": json_path, "img_path": img_path, "height": height, "width": width}


def _poly_shape(label: str, poly: list[float]) -> dict:
    return {
        "label": label,
        "points": [[poly[i], poly[i + 1]] for i in range(0, len(poly), 2)],
        "group_id": None,
        "shape_type": "polygon",
        "flags": {},
    }


def make_reasonseg_fixture(
    root: str | os.PathLike,
    split: str = "val",
    size: tuple[int, int] = (64, 48),
) -> ReasonSegFixture:
    """Write three ReasonSeg samples into ``<root>/<split>/``.

    * ``list_text``: ``text`` is a list of 3 instructions, ``is_sentence`` True, one target
      polygon, ``imageHeight``/``imageWidth`` present;
    * ``str_text``: ``text`` is a single string, two target polygons, no size fields (the size
      must come from the image header);
    * ``with_ignore``: a target polygon, an ``ignore`` polygon and a ``flag`` polygon.

    Args:
        root: Folder to write into (becomes ``data_root``).
        split: Split folder name.
        size: Image ``(width, height)``.

    Returns:
        A :class:`ReasonSegFixture`.
    """
    root = os.fspath(root)
    split_dir = os.path.join(root, split)
    fixture = ReasonSegFixture(root, split_dir)
    specs = {
        "list_text": dict(
            text=["what can hold water?", "the cup on the table", "where would you pour tea?"],
            is_sentence=True,
            target=[_rect(10, 8, 30, 28)],
            ignore=[],
            flag=[],
            write_size=True,
        ),
        "str_text": dict(
            text="the two things that can be sat on",
            is_sentence=False,
            target=[_rect(4, 4, 14, 20), [40.0, 10.0, 60.0, 10.0, 50.0, 40.0]],
            ignore=[],
            flag=[],
            write_size=False,
        ),
        "with_ignore": dict(
            text=["which object is used for cutting?"],
            is_sentence=False,
            target=[_rect(8, 8, 40, 40)],
            ignore=[_rect(44, 4, 60, 20)],
            flag=[_rect(2, 30, 6, 44)],
            write_size=True,
        ),
    }
    for i, (name, spec) in enumerate(specs.items()):
        shapes = (
            [_poly_shape("target", p) for p in spec["target"]]
            + [_poly_shape("ignore", p) for p in spec["ignore"]]
            + [_poly_shape("flag", p) for p in spec["flag"]]
        )
        info = write_reasonseg_sample(
            split_dir,
            name,
            spec["text"],
            shapes,
            size=size,
            is_sentence=spec["is_sentence"],
            write_size=spec["write_size"],
            seed=i,
        )
        text = spec["text"]
        info.update(
            text=[text] if isinstance(text, str) else list(text),
            target=spec["target"],
            ignore=spec["ignore"],
            flag=spec["flag"],
        )
        fixture.samples[name] = info
    return fixture


def make_jsonl_fixture(root: str | os.PathLike, name: str = "val.jsonl",
                       size: tuple[int, int] = (64, 48)) -> dict[str, np.ndarray]:
    """Write ``root/name`` in the format of :class:`~coprs.datasets.JsonlSegDataset`, with its
    images under ``root/images/`` and one mask image under ``root/masks/``: three good lines (the
    target as a mask PNG, as a COCO RLE and as a polygon with an ignore region; types ``short``
    and ``long``; each with a gold response) and three bad ones (not JSON, a missing image, an
    empty instruction), lines 4 to 6.

    Returns:
        The target mask (H x W bool) of each good line, by sample id.
    """
    from coprs.datasets.masks import mask_to_rle, segm_to_mask

    root = os.fspath(root)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    w, h = size
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(root, "images", f"{i}.png"))
    box = np.zeros((h, w), bool)
    box[5:20, 10:30] = True
    Image.fromarray(box.astype(np.uint8) * 255).save(os.path.join(root, "masks", "0.png"))
    blob = np.zeros((h, w), bool)
    blob[20:40, 30:50] = True
    triangle = [[10.0, 10.0, 30.0, 10.0, 20.0, 30.0]]
    gold = "<think>{}</think><REF_POS>"
    good = [
        {"image": "images/0.png", "instruction": "the box", "mask": "masks/0.png", "id": "box",
         "type": "short", "response": gold.format("the box")},
        {"image": "images/1.png", "instruction": "what could hold a cup?",
         "mask": mask_to_rle(blob), "id": "blob", "type": "long",
         "response": gold.format("the blob")},
        {"image": "images/2.png", "instruction": "the triangle", "mask": triangle,
         "ignore": [[40.0, 5.0, 55.0, 5.0, 50.0, 20.0]], "id": "triangle", "type": "short",
         "response": gold.format("the triangle")},
    ]
    bad = [
        "{not json",
        json.dumps({"image": "images/9.png", "instruction": "x", "mask": []}),
        json.dumps({"image": "images/0.png", "instruction": " ", "mask": []}),
    ]
    with open(os.path.join(root, name), "w", encoding="utf-8") as f:
        f.write("\n".join([*(json.dumps(item) for item in good), *bad]) + "\n")
    return {"box": box, "blob": blob, "triangle": segm_to_mask(triangle, h, w)}
