"""Can a heatmap prior localise the target at all? Train it alone with an oracle query.

The policy is replaced by an *oracle query*: a learned embedding of the words of the gold
answer's last clause ("the purple triangle in the centre"), averaged. Only the prior of a config
(``model.prior``, e.g. ``HeatmapPrior`` with its ``key_convs``/``coord_channels``) and that
embedding are trained, on the synthetic world, with BCE on the prior (+ an optional Dice term,
``--prior-dice``); the keys are the config's frozen backbone features or, with ``--keys pixels``,
the image average-pooled to the backbone's grid, or, with ``--keys stem``, a trainable
convolution over the pixels with the grid's stride (64 channels, GELU), trained with the prior.
``--stride`` sets another grid for those two (e.g. 2: a 56 × 56 grid for the tiny 112 px world;
the prior then upsamples by the stride, so its output stays at the input size).
It prints one JSON object with the held-out heatmap IoU (prior logits > 0 vs the target) every
``--eval-every`` iterations and, for the final prior, which object each held-out heatmap lands
on (``picked``: the target, an object of its colour or of its shape, another, none; classified
as in ``picked_objects.py``). ``--cfg-options`` overrides the config (e.g.
``model.prior.position_grid=8``).

This separates "the prior cannot learn the task from these keys and this loss" from "the policy's
``e_conc`` does not carry the target" when the main job's masks ignore the instruction
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from coprs.commands.common import UsageError, exit_on_usage_error, key_value_action

EXAMPLE = """example:
  python tools/analysis/prior_probe.py configs/coprs/coprs_tiny_shapes_cpu.py --iters 600
  python tools/analysis/prior_probe.py configs/coprs/coprs_tiny_shapes_cpu.py --keys pixels --prior-dice 0
  python tools/analysis/prior_probe.py configs/coprs/coprs_tiny_shapes_cpu.py --keys stem --iters 900
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a config's prior alone with an oracle query on the synthetic world "
                    "and report its held-out heatmap IoU (JSON).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a config whose model.prior and model.vision_backbone "
                                       "are probed (its policy is not built)")
    parser.add_argument("--keys", choices=("backbone", "pixels", "stem"), default="backbone",
                        help="frozen backbone features, the image pooled to the same grid, or "
                             "a trainable conv stem over the image")
    parser.add_argument("--prior-dice", type=float, default=1.0,
                        help="weight of a Dice term next to the prior's BCE (0: BCE only)")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-scenes", type=int, default=1500)
    parser.add_argument("--test-scenes", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--stride", type=int, default=None,
                        help="with --keys pixels/stem: pixels per grid cell (default: the "
                             "backbone's, 4 for the tiny SAM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg-options", nargs="+", action=key_value_action(), default=None,
                        metavar="KEY=VALUE", help="override config entries, e.g. "
                                                  "model.prior.position_grid=8")
    return parser.parse_args(argv)


def _target_words(cot: str) -> list[str]:
    m = re.search(r"So the target is (.*?)\.?$", cot.strip())
    if m is None:
        raise ValueError(f"gold reasoning without a final 'So the target is …': {cot!r}")
    return m.group(1).split()


def _load_sibling(name: str):
    """A tool next to this one (tools/analysis is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _load_sibling("perception_probe").check_counts(args)
    from mmengine.config import Config

    from coprs.datasets.shapes import ShapesWorld, sample_seed
    from coprs.datasets.transforms import ResizePadVision
    from coprs.registry import PRIORS, VISION_BACKBONES
    from coprs.structures import PolicyOutput
    from coprs.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(args.seed)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg = cfg.model
    backbone = VISION_BACKBONES.build(cfg.vision_backbone).eval()
    world = ShapesWorld()
    stride = backbone.img_size // backbone.grid_size
    if args.stride is not None:
        if args.keys == "backbone":
            raise UsageError("--stride applies to --keys pixels or stem; the backbone's features "
                             "come on its own grid")
        if args.stride < 1 or backbone.img_size % args.stride:
            raise UsageError(f"--stride {args.stride} must be a positive divisor of the input "
                             f"size {backbone.img_size}")
        stride = args.stride

    def load(split: str, n: int):
        scenes = [world.sample(sample_seed(split, i)) for i in range(n)]
        keys = []
        for i in range(0, n, 64):  # in chunks: a global-attention block over n images is big
            x, _ = backbone.preprocess([s.image for s in scenes[i:i + 64]])
            with torch.no_grad():
                if args.keys == "backbone":
                    keys.append(backbone(x))
                elif args.keys == "pixels":
                    keys.append(F.avg_pool2d(x, stride))
                else:  # the stem sees the pixels
                    keys.append(x)
        keys = torch.cat(keys)
        gt = ResizePadVision(backbone.img_size)
        gt = np.stack([gt(dict(img=s.image, gt_mask=s.gt_mask))["vision_gt_mask"] for s in scenes])
        return (keys, torch.from_numpy(gt).float(), [_target_words(s.gold_cot) for s in scenes],
                scenes)

    t0 = time.perf_counter()
    k_tr, g_tr, w_tr, _ = load("train", args.train_scenes)
    k_te, g_te, w_te, test_scenes = load("test", args.test_scenes)
    vocab: dict[str, int] = {}
    for words in w_tr + w_te:
        for w in words:
            vocab.setdefault(w, len(vocab))
    query_dim = 128
    emb = nn.Embedding(len(vocab), query_dim)
    stem = nn.Identity()
    if args.keys == "stem":
        stem = nn.Sequential(nn.Conv2d(3, 64, stride, stride=stride), nn.GELU())
    prior = PRIORS.build(cfg.prior, default_args=dict(
        query_dim=query_dim, key_in_dim=64 if args.keys == "stem" else k_tr.shape[1],
        upsample=stride))  # the dense output stays at the input size
    opt = torch.optim.AdamW([*prior.parameters(), *emb.parameters(), *stem.parameters()],
                            lr=args.lr)

    def forward(keys, words):
        q = torch.stack([emb(torch.tensor([vocab[w] for w in ws])).mean(0) for ws in words])
        return prior(PolicyOutput(hidden=q, responses=[""] * len(words),
                                  has_token=[True] * len(words)), stem(keys)).dense[:, 0]

    def fit(logits, gt):
        return F.interpolate(gt[:, None], size=logits.shape[-2:], mode="nearest-exact")[:, 0]

    history = []
    for it in range(1, args.iters + 1):
        idx = torch.randint(0, len(w_tr), (args.batch_size,))
        logits = forward(k_tr[idx], [w_tr[i] for i in idx])
        gt = fit(logits, g_tr[idx])
        loss = F.binary_cross_entropy_with_logits(logits, gt)
        if args.prior_dice:
            p = logits.sigmoid()
            dice = 1 - (2 * (p * gt).sum((1, 2)) + 1) / (p.sum((1, 2)) + gt.sum((1, 2)) + 1)
            loss = loss + args.prior_dice * dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % args.eval_every == 0 or it == args.iters:
            with torch.no_grad():
                logits = forward(k_te, w_te)  # the last iteration's are kept for `picked`
                pred, gt = logits > 0, fit(logits, g_te) > 0.5
                iou = ((pred & gt).sum((1, 2)) / (pred | gt).sum((1, 2)).clamp(min=1)).mean()
            history.append(dict(iter=it, loss=round(loss.item(), 4),
                                heatmap_iou=round(iou.item(), 4)))
            print(f"iter {it}: loss {loss.item():.4f}, test heatmap IoU {iou.item():.3f}",
                  file=sys.stderr, flush=True)
    picked_objects = _load_sibling("picked_objects")
    picked = dict.fromkeys(picked_objects.CLASSES, 0)
    for s, p in zip(test_scenes, (logits > 0).numpy()):  # at the backbone's input size
        scale = backbone.img_size / max(s.image.shape[:2])  # ResizePadVision: longest side
        objects = [dict(o, bbox=[v * scale for v in o["bbox"]]) for o in s.objects]
        t = s.objects[s.target_index]
        picked[picked_objects.classify(p, objects, (t["colour"], t["shape"]))] += 1
    print(json.dumps(dict(config=args.config, prior=cfg.prior.to_dict(), keys=args.keys,
                          stride=stride,
                          prior_dice=args.prior_dice,
                          iters=args.iters, target_fraction=round(g_tr.mean().item(), 4),
                          final_heatmap_iou=history[-1]["heatmap_iou"], picked=picked,
                          history=history,
                          seconds=round(time.perf_counter() - t0, 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
