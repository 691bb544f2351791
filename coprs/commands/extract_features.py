"""``coprs extract-features``: precompute frozen backbone features into the feature cache."""

from __future__ import annotations

from .common import UsageError, add_cfg_options, check_device, load_config

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract-features",
        help="precompute frozen backbone features into the feature cache",
        description="Encode every image of the config's datasets once with the frozen vision "
                    "backbone and store the features under <cache-dir>/<backbone cache key>/. "
                    "A model whose config sets model.feature_cache=dict(root=<cache-dir>) then "
                    "reads them instead of re-encoding.",
        epilog="example: coprs extract-features configs/coprs/coprs_tiny_shapes_cpu.py "
               "--split test --cache-dir data/feature_cache",
    )
    p.add_argument("config", help="config file")
    p.add_argument("--split", nargs="+", help="only datasets with these splits (default: all)")
    p.add_argument("--dataset", nargs="+", help="only these dataset names (default: all)")
    p.add_argument("--cache-dir", help="cache root (default: model.feature_cache.root)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="storage dtype (default: model.feature_cache.dtype or float16)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_cfg_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from coprs.backbones.feature_cache import FeatureCache, image_key
    from coprs.registry import VISION_BACKBONES

    from .datasets import build_selected

    check_device(args.device)
    cfg = load_config(args.config, args.cfg_options)
    fc = dict(cfg.model.get("feature_cache") or {})
    root = args.cache_dir or fc.get("root")
    if root is None:
        raise UsageError("no cache folder: pass --cache-dir or set model.feature_cache.root")
    datasets = build_selected(cfg, args.split, args.dataset, pipeline=[dict(type="LoadImage")])
    backbone = VISION_BACKBONES.build(cfg.model.vision_backbone).to(args.device).eval()
    cache = FeatureCache(root, backbone.cache_key, args.dtype or fc.get("dtype", "float16"))
    written = present = unreadable = 0
    seen: set[str] = set()
    pending: list = []

    def flush() -> None:
        nonlocal written
        if pending:
            x, _ = backbone.preprocess(pending)
            with torch.no_grad():
                for img, feats in zip(pending, backbone(x.to(args.device))):
                    cache.put(img, feats)
            written += len(pending)
            pending.clear()

    for ds in datasets:
        meta = ds.metainfo
        for i in tqdm(range(len(ds)), desc=f"{meta.get('dataset_name')}/{meta.get('split')}"):
            info = ds[i]
            if info.get("load_error"):
                unreadable += 1
                print(f"skipped: {info['load_error']}")
                continue
            key = image_key(info["img"])
            if key in seen:
                continue
            seen.add(key)
            if cache.path(key).is_file():
                present += 1
                continue
            pending.append(info["img"])
            if len(pending) >= args.batch_size:
                flush()
    flush()
    print(f"{written} images encoded, {present} already cached, {unreadable} unreadable; "
          f"cache: {cache.dir}")
    return 0
