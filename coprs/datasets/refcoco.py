"""RefCOCO / RefCOCO+ / RefCOCOg in the standard ``refer`` layout (one sample per sentence)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from coprs.registry import DATASETS
from coprs.utils import first_few

from .safe_pickle import safe_load

__all__ = [
    "RefCOCODataset",
    "REFER_SPLIT_BYS",
    "REFER_SPLITS",
    "REFER_EVAL_SOURCES",
    "load_refs",
    "collect_eval_image_ids",
]

#: valid ``split_by`` per dataset; the first one is the default (the one papers report)
REFER_SPLIT_BYS: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}
#: every split name the ``refer`` pickles use
REFER_SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB", "test")
#: the (dataset, split_by) pairs whose evaluation images are dropped by ``exclude_eval_images``
REFER_EVAL_SOURCES: tuple[tuple[str, str], ...] = (
    ("refcoco", "unc"),
    ("refcoco+", "unc"),
    ("refcocog", "umd"),
)

_LAYOUT = (
    "expected the `refer` layout: <data_root>/<dataset>/refs(<split_by>).p and "
    "<data_root>/<dataset>/instances.json (e.g. data/refer/refcoco/refs(unc).p), with the COCO "
    "train2014 images under img_dir"
)
_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
_SENT_KEYS = ("sent_id", "sent")


def _refs_path(data_root: str, dataset: str, split_by: str) -> str:
    return os.path.join(data_root, dataset, f"refs({split_by}).p")


def load_refs(path: str) -> list[dict]:
    """Load a ``refs(<split_by>).p`` with the restricted unpickler and check its structure.

    Args:
        path: Path of the pickle.

    Returns:
        The list of ref dicts (``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences``, ...).

    Raises:
        FileNotFoundError: If ``path`` does not exist (the message describes the layout).
        coprs.datasets.safe_pickle.UnsafePickleError: If the pickle holds anything but builtins.
        ValueError: If it is not a list of dicts with the ``refer`` keys, or a ref's
            ``sentences`` are not dicts with ``sent_id`` and ``sent`` (naming the file and the
            first such ref and sentence).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"refs file not found: {path}; {_LAYOUT}")
    refs = safe_load(path)
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        missing = [k for k in _REF_KEYS if not isinstance(ref, dict) or k not in ref]
        if missing:
            raise ValueError(
                f"{path}: ref #{i} lacks key(s) {missing}; this is not a `refer` refs pickle"
            )
        sentences = ref["sentences"]
        if not isinstance(sentences, list):
            raise ValueError(
                f"{path}: ref #{i} (ref_id {ref['ref_id']}) has 'sentences' of type "
                f"{type(sentences).__name__}; in a `refer` refs pickle it is a list of "
                "{'sent_id', 'sent', ...} dicts"
            )
        for j, sent in enumerate(sentences):
            missing = [k for k in _SENT_KEYS if not isinstance(sent, dict) or k not in sent]
            if missing:
                raise ValueError(
                    f"{path}: sentence #{j} of ref #{i} (ref_id {ref['ref_id']}) lacks key(s) "
                    f"{missing}; each sentence of a `refer` refs pickle is a dict with "
                    f"{list(_SENT_KEYS)} (and 'tokens', 'raw')"
                )
    return refs


def collect_eval_image_ids(
    data_root: str,
    sources: Iterable[tuple[str, str]] = REFER_EVAL_SOURCES,
    preloaded: dict[str, list[dict]] | None = None,
) -> tuple[set[int], list[str]]:
    """Image ids of every non-train ref in the given ``refer`` pickles.

    Args:
        data_root: Root of the ``refer`` layout.
        sources: ``(dataset, split_by)`` pairs to read.
        preloaded: Refs already loaded, keyed by path (avoids reading a pickle twice).

    Returns:
        ``(image_ids, missing)``: the ids of images in any val/test/testA/testB split, and the
        paths of the pickles that were not found.
    """
    preloaded = {os.path.normpath(k): v for k, v in (preloaded or {}).items()}
    image_ids: set[int] = set()
    missing: list[str] = []
    for dataset, split_by in sources:
        path = _refs_path(data_root, dataset, split_by)
        if os.path.normpath(path) in preloaded:
            refs = preloaded[os.path.normpath(path)]
        elif os.path.isfile(path):
            refs = load_refs(path)
        else:
            missing.append(path)
            continue
        image_ids.update(int(r["image_id"]) for r in refs if r["split"] != "train")
    return image_ids, missing


def _load_instances(path: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """Read a COCO ``instances.json``: ``(images by id, annotations by id)``.

    Raises:
        ValueError: Naming ``path`` if it is not JSON (UTF-8) or not a COCO instances object.
    """
    try:
        with open(path, encoding="utf-8") as f:
            instances = json.load(f)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(
            f"{path} is not a readable JSON file ({err}); re-download or repair it"
        ) from None
    if not isinstance(instances, dict) or not all(
        isinstance(instances.get(k), list) for k in ("images", "annotations")
    ):
        raise ValueError(
            f"{path}: expected a COCO instances object with 'images' and 'annotations' lists"
        )
    try:
        images = {int(img["id"]): img for img in instances["images"]}
        anns = {int(ann["id"]): ann for ann in instances["annotations"]}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: every entry of 'images' and 'annotations' needs an integer 'id' "
            f"({type(err).__name__}: {err})"
        ) from None
    return images, anns


@DATASETS.register_module()
class RefCOCODataset(BaseDataset):
    """RefCOCO, RefCOCO+ and RefCOCOg over COCO train2014, one sample per referring sentence.

    Reads ``<data_root>/<dataset>/refs(<split_by>).p`` (with the restricted unpickler of
    :mod:`coprs.datasets.safe_pickle`) and ``<data_root>/<dataset>/instances.json``. The target of
    a sentence is the ``segmentation`` of its ref's annotation, passed on unchanged (COCO polygons
    or RLE); :class:`coprs.datasets.masks.LoadSegAnnotations` rasterises it.

    Each data info holds ``img_path`` (absolute), ``instruction`` (``sentences[i]['sent']``),
    ``gt_segm``, ``ignore_segm`` (always ``None``), ``height``, ``width`` (from
    ``instances.json``), ``dataset_name``, ``split``, ``split_by``, ``sample_id``
    (``f"{ref_id}_{sent_id}"``), ``ref_id``, ``ann_id``, ``image_id``, ``category_id``,
    ``sent_id``.

    Bad input:

    * unknown ``dataset``/``split_by``/``split`` -> ``ValueError`` listing the valid values; a split
      with no refs in the pickle -> ``ValueError`` listing the splits it has;
    * a missing refs pickle, ``instances.json`` or image folder -> ``FileNotFoundError`` naming
      the path and the expected layout; a pickle that references anything but builtins ->
      ``UnsafePickleError``;
    * a refs pickle whose refs or sentences lack the ``refer`` keys (``sent_id``, ``sent``, ...),
      or an ``instances.json`` that is not JSON or not a COCO instances object -> ``ValueError``
      naming the file and what is missing;
    * a ref whose ``ann_id`` (or ``image_id``) is not in ``instances.json``, or whose annotation
      has no ``segmentation`` -> skipped, recorded in ``self.skipped`` as ``(where, reason)`` and
      summarised in one warning naming the ref ids; no sample left at all -> ``ValueError``;
    * an annotation whose ``segmentation`` is empty (``[]``) -> *kept* with an empty target,
      listed in ``self.empty_target`` and one warning (as ReasonSeg keeps a JSON without a
      target); polygons that cover no pixel of the image are kept and warned about by
      ``LoadSegAnnotations`` when the sample is loaded.
      Image files are not checked here (that would stat ~20k files); a missing image fails when
      the pipeline loads it, with its path.

    Args:
        data_root: Root of the ``refer`` layout.
        dataset: ``'refcoco'``, ``'refcoco+'`` or ``'refcocog'``.
        split_by: ``'unc'``/``'google'`` (RefCOCO), ``'unc'`` (RefCOCO+), ``'umd'``/``'google'``
            (RefCOCOg). Default: ``'unc'`` for RefCOCO/RefCOCO+, ``'umd'`` for RefCOCOg.
        split: ``'train'``, ``'val'``, ``'testA'``, ``'testB'`` or ``'test'``.
        img_dir: Folder of the COCO train2014 images. Default
            ``<data_root>/images/mscoco/images/train2014``.
        exclude_eval_images: Drop every image that occurs in any val/test/testA/testB split of
            RefCOCO (unc), RefCOCO+ (unc) and RefCOCOg (umd) found under ``data_root`` (the three
            share COCO images, so training on one must not see another's evaluation images). Only
            valid with ``split='train'``; missing pickles are named in a warning.
        **kwargs: Passed to ``mmengine.dataset.BaseDataset`` (``pipeline``, ``test_mode``,
            ``lazy_init``, ``serialize_data``, ``indices``, ``metainfo``, ...).
    """

    def __init__(
        self,
        data_root: str,
        dataset: str = "refcoco",
        split_by: str | None = None,
        split: str = "train",
        img_dir: str | None = None,
        exclude_eval_images: bool = False,
        **kwargs: Any,
    ) -> None:
        if dataset not in REFER_SPLIT_BYS:
            raise ValueError(
                f"unknown RefCOCO dataset {dataset!r}; valid: {', '.join(REFER_SPLIT_BYS)}"
            )
        valid_split_bys = REFER_SPLIT_BYS[dataset]
        split_by = valid_split_bys[0] if split_by is None else split_by
        if split_by not in valid_split_bys:
            raise ValueError(
                f"split_by={split_by!r} does not exist for {dataset}; valid: "
                f"{', '.join(valid_split_bys)}"
            )
        if split not in REFER_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(REFER_SPLITS)}")
        if exclude_eval_images and split != "train":
            raise ValueError(
                f"exclude_eval_images=True drops evaluation images from training data; it would "
                f"empty split={split!r}. Use it only with split='train'."
            )
        if "ann_file" in kwargs:
            raise TypeError(
                "RefCOCODataset derives its annotation file from data_root/dataset/split_by; "
                "do not pass ann_file"
            )
        self.dataset_name = dataset
        self.split_by = split_by
        self.split = split
        self.img_dir = img_dir or os.path.join(data_root, "images", "mscoco", "images", "train2014")
        self.exclude_eval_images = exclude_eval_images
        self.skipped: list[tuple[str, str]] = []
        self.empty_target: list[str] = []
        self.num_excluded_refs = 0
        super().__init__(
            ann_file=os.path.join(dataset, f"refs({split_by}).p"), data_root=data_root, **kwargs
        )
        # set after BaseDataset, which would try to read string metainfo values as files
        self._metainfo.update(dataset_name=dataset, split_by=split_by, split=split)

    def load_data_list(self) -> list[dict]:
        """Read the refs and instances files and expand every ref into one sample per sentence."""
        refs_path = self.ann_file
        inst_path = os.path.join(self.data_root, self.dataset_name, "instances.json")
        #: the files the samples' instructions and masks come from (``coprs test --resume``
        #: stamps them, so that records scored against an older version are not reused)
        self.annotation_files = [refs_path, inst_path]
        if not os.path.isfile(inst_path):
            raise FileNotFoundError(f"instances file not found: {inst_path}; {_LAYOUT}")
        if not os.path.isdir(self.img_dir):
            raise FileNotFoundError(
                f"image folder not found: {self.img_dir}; pass img_dir=<folder of the COCO "
                "train2014 images> (default <data_root>/images/mscoco/images/train2014)"
            )
        refs = load_refs(refs_path)
        splits_present = sorted({str(r["split"]) for r in refs})
        if self.split not in splits_present:
            raise ValueError(
                f"{refs_path} has no refs in split {self.split!r}; it has: "
                f"{', '.join(splits_present)}"
            )

        excluded: set[int] = set()
        if self.exclude_eval_images:
            excluded, missing = collect_eval_image_ids(self.data_root, preloaded={refs_path: refs})
            if missing:
                print_log(
                    "exclude_eval_images: these refs files are missing, so their evaluation "
                    f"images cannot be excluded from training: {', '.join(missing)}",
                    logger="current",
                    level=logging.WARNING,
                )

        images, anns = _load_instances(inst_path)

        self.skipped = []
        self.empty_target = []
        self.num_excluded_refs = 0
        data_list: list[dict] = []
        for ref in refs:
            if ref["split"] != self.split:
                continue
            ref_id, ann_id, image_id = int(ref["ref_id"]), int(ref["ann_id"]), int(ref["image_id"])
            if image_id in excluded:
                self.num_excluded_refs += 1
                continue
            where = f"{refs_path}#ref_id={ref_id}"
            ann = anns.get(ann_id)
            if ann is None:
                self.skipped.append((where, f"ann_id {ann_id} not in {inst_path}"))
                continue
            img = images.get(image_id)
            if img is None:
                self.skipped.append((where, f"image_id {image_id} not in {inst_path}"))
                continue
            if int(ann.get("image_id", image_id)) != image_id:
                self.skipped.append(
                    (where, f"ann_id {ann_id} belongs to image {ann['image_id']}, not {image_id}")
                )
                continue
            lacks = [k for k in ("file_name", "height", "width") if k not in img]
            if lacks:
                self.skipped.append((where, f"image {image_id} in {inst_path} lacks {lacks}"))
                continue
            segm = ann.get("segmentation")
            if not isinstance(segm, (list, dict)):
                self.skipped.append(
                    (where, f"annotation {ann_id} in {inst_path} has no 'segmentation' "
                            "(polygons or RLE)")
                )
                continue
            if len(segm) == 0:  # the referred object has no region: kept, as ReasonSeg keeps one
                self.empty_target.append(where)
            img_path = os.path.abspath(os.path.join(self.img_dir, img["file_name"]))
            for sent in ref["sentences"]:
                sent_id = int(sent["sent_id"])
                data_list.append(
                    dict(
                        img_path=img_path,
                        instruction=str(sent["sent"]),
                        gt_segm=segm,
                        ignore_segm=None,
                        height=int(img["height"]),
                        width=int(img["width"]),
                        dataset_name=self.dataset_name,
                        split=self.split,
                        split_by=self.split_by,
                        sample_id=f"{ref_id}_{sent_id}",
                        ref_id=ref_id,
                        ann_id=ann_id,
                        image_id=image_id,
                        category_id=int(ref.get("category_id", ann.get("category_id", -1))),
                        sent_id=sent_id,
                    )
                )

        if self.skipped:
            shown = first_few([w.rsplit("#", 1)[-1] for w, _ in self.skipped], 20)
            print_log(
                f"{self.dataset_name}({self.split_by}) {self.split}: skipped {len(self.skipped)} "
                f"ref(s) whose annotation/image is missing from (or incomplete in) {inst_path}: "
                f"{shown}. See dataset.skipped for reasons.",
                logger="current",
                level=logging.WARNING,
            )
        if self.empty_target:
            shown = first_few([w.rsplit("#", 1)[-1] for w in self.empty_target], 20)
            print_log(
                f"{self.dataset_name}({self.split_by}) {self.split}: {len(self.empty_target)} "
                f"ref(s) whose annotation in {inst_path} has an empty 'segmentation' are kept "
                f"with an empty target: {shown}. See dataset.empty_target.",
                logger="current",
                level=logging.WARNING,
            )
        if self.exclude_eval_images:
            print_log(
                f"{self.dataset_name}({self.split_by}) train: excluded {self.num_excluded_refs} "
                f"ref(s) on {len(excluded)} evaluation image(s); {len(data_list)} sentences remain",
                logger="current",
                level=logging.INFO,
            )
        if not data_list:
            raise ValueError(
                f"{self.dataset_name}({self.split_by}) {self.split}: no usable sample in "
                f"{refs_path} ({len(self.skipped)} ref(s) skipped, {self.num_excluded_refs} "
                f"excluded as evaluation images); first skip reasons: {self.skipped[:3]}"
            )
        return data_list
