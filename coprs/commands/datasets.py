"""Finding the datasets a config names (shared by extract-features and browse-dataset)."""

from __future__ import annotations

import copy

from .common import UsageError

__all__ = ["config_datasets", "build_selected"]


def config_datasets(cfg) -> list[dict]:
    """Every dataset config in ``cfg``: ``train_dataloader.dataset``, then ``val_cfg.datasets``
    (validation during training), then ``test_cfg.datasets``."""
    found = []
    train = cfg.get("train_dataloader")
    if train is not None and train.get("dataset") is not None:
        found.append(copy.deepcopy(train["dataset"]))
    for key in ("val_cfg", "test_cfg"):
        loop = cfg.get(key)
        if loop is not None:  # a dataset both validated and tested counts once
            found += [copy.deepcopy(d) for d in loop.get("datasets") or [] if d not in found]
    return found


def build_selected(cfg, splits=None, dataset_names=None, pipeline=None) -> list:
    """Build the config's datasets whose ``split`` (and ``dataset_name``) match (mmengine
    ``BaseDataset`` subclasses: each is built with ``lazy_init`` and only the chosen ones read
    their annotations, so files of splits not asked for need not exist).

    Args:
        splits: split names to keep (None: all).
        dataset_names: dataset names to keep (None: all).
        pipeline: replaces each dataset's pipeline when given.
    """
    from coprs.registry import DATASETS
    from coprs.utils import register_all_modules

    register_all_modules()
    built, seen = [], []
    for ds_cfg in config_datasets(cfg):
        if pipeline is not None:
            ds_cfg["pipeline"] = pipeline
        # built lazily (mmengine's lazy_init: no annotation file read yet), so that the files
        # of a split not asked for need not exist; the chosen ones are then loaded
        ds = DATASETS.build({**ds_cfg, "lazy_init": True})
        name, split = ds.metainfo.get("dataset_name"), ds.metainfo.get("split")
        seen.append(f"{name}/{split}")
        if (splits is None or split in splits) and (dataset_names is None or
                                                     name in dataset_names):
            ds.full_init()
            built.append(ds)
    if not built:
        raise UsageError(f"no dataset in the config matches split={splits} "
                         f"dataset={dataset_names}; the config names: {', '.join(seen) or 'none'}")
    return built
