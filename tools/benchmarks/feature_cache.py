"""One training epoch over a small split with cached frozen-backbone features vs re-encoding.

The segmentor is the tiny CoPRS assembly with a SAM ViT-B-width image encoder (embed 768,
depth 12, 12 heads) and SAM's decoder widths; the epoch is supervised (teacher-forced) steps of
``ReasoningSegmentor.train_step``. A first epoch fills the cache (``feature_cache=dict(root=...,
dtype=...)``, as ``coprs extract-features`` would); then epochs that read it and epochs with
the cache switched off (the encoder runs on every image) alternate. ViT-B at 1024² takes about
30 s per image on one CPU core, so the default input is 512² (a 32 x 32 feature grid);
``--img-size 1024 --samples 2`` runs the paper's size within 3 minutes. Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/feature_cache.py
    {"speedup": 51.9, ...}
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import base_parser, configured, emit, interleaved, machine, median, timed

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "configs" / "_base_" / "models" / "coprs_tiny.py"


def parse_args(argv: list[str] | None = None):
    p = base_parser("One training epoch with cached backbone features vs re-encoding.")
    p.add_argument("--img-size", type=int, default=512, help="encoder input side (paper: 1024)")
    p.add_argument("--arch", default="vit_b", help="SAM encoder preset")
    p.add_argument("--samples", type=int, default=4, help="samples in the epoch")
    p.add_argument("--batch-size", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.arch, args.img_size, args.samples = "tiny", 112, 2
    scratch = tempfile.TemporaryDirectory(prefix="coprs_bench_cache_", ignore_cleanup_errors=True)
    with scratch as cache_root, configured(args):
        return run(args, cache_root)


def run(args, cache_root: str) -> dict:
    import torch
    from mmengine.config import Config
    from mmengine.optim import OptimWrapper
    from torch.utils.data import DataLoader

    from coprs.datasets.shapes import ShapesReasonDataset
    from coprs.datasets.transforms import reasonseg_collate
    from coprs.registry import MODELS
    from coprs.utils import register_all_modules

    register_all_modules()
    repeats = args.repeats or 1
    cfg = Config.fromfile(str(TINY_MODEL)).model.to_dict()
    cfg["vision_backbone"] = dict(type="SAMViTBackbone", arch=args.arch, img_size=args.img_size)
    cfg["decoder"] = dict(type="PriorDecoder", preset="tiny" if args.quick else "sam")
    cfg["feature_cache"] = dict(root=cache_root, dtype="float16")
    model = MODELS.build(cfg)
    model.train()
    optim = OptimWrapper(torch.optim.AdamW(
        [q for q in model.parameters() if q.requires_grad], lr=1e-4))
    cache = model.feature_cache

    dataset = ShapesReasonDataset(
        split="train", num_samples=args.samples, seed=0, image_size=112,
        pipeline=[dict(type="LoadImage"), dict(type="ResizePadVision", size=args.img_size),
                  dict(type="PackReasonSegInputs")])
    batches = list(DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                              collate_fn=reasonseg_collate))
    for b in batches:  # supervised steps teacher-force the gold response
        for s in b["data_samples"]:
            s["response"] = s["response_coprs"]

    def epoch(use_cache: bool):
        model.feature_cache = cache if use_cache else None
        for b in batches:
            model.train_step(b, optim_wrapper=optim)

    fill_seconds, _ = timed(lambda: epoch(True))  # encodes every image once and stores it
    files = sorted(Path(cache_root).rglob("*.pt"))
    times = interleaved({"cached": lambda: epoch(True), "reencode": lambda: epoch(False)},
                        repeats)
    model.feature_cache = cache
    with torch.no_grad():
        x, _ = model.vision_backbone.preprocess([batches[0]["inputs"][0]])
        encode_seconds, feats = timed(lambda: model.vision_backbone(x))
    t_cached, t_reencode = median(times["cached"]), median(times["reencode"])
    return emit(dict(
        benchmark="feature_cache", quick=args.quick, machine=machine(), arch=args.arch,
        img_size=args.img_size, feature_grid=list(feats.shape[1:]), samples=args.samples,
        batch_size=args.batch_size, repeats=repeats, cached_files=len(files),
        seconds=dict(cached_epoch=t_cached, reencode_epoch=t_reencode, fill_epoch=fill_seconds,
                     encode_one_image=encode_seconds),
        speedup=t_reencode / t_cached,
    ))


if __name__ == "__main__":
    main(sys.argv[1:])
