"""How much could GRPO find? Best-of-k of sampled reasoning against greedy reasoning.

GRPO can only reinforce what the policy samples: a group whose rollouts all miss the target
teaches nothing. For the first ``--num-samples`` samples of each test split in the config, this
samples ``--k`` responses per sample with the training rollout engine (``train_cfg.rollout_engine``:
its temperature, top-p and top-k unless overridden), decodes each rollout's mask as
``coprs test`` does, and compares with the greedy response:

* ``greedy_giou``: gIoU of the greedy responses (what ``coprs test`` reports);
* ``sampled_giou``: the mean IoU over all sampled responses (a rollout's expected score);
* ``best_of_k_giou``: gIoU when, for every sample, the best of its k masks is kept (an oracle
  pick: the ceiling that sharpening the policy toward its best rollouts could reach);
* ``pass_at_k``: the share of samples with at least one mask of IoU ≥ ``--threshold``;
* ``flat_groups``: the share of samples whose k IoUs are all equal (within 1e-6): GRPO's group
  advantage is 0 for them on the mask reward.

IoUs use the ``exclude`` ignore mode (LISA's). Prints one JSON object last; ``--out`` also
writes per-sample lines (the k responses and IoUs).

    python tools/analysis/pass_at_k.py configs/coprs/coprs_tiny_shapes_cpu.py \\
        work_dirs/coprs_tiny_shapes_cpu --k 8 --num-samples 200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
import torch

from coprs.commands.common import (
    UsageError,
    exit_on_usage_error,
    key_value_action,
    resolve_checkpoint,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint, training work dir or export folder (omitted: the parts' "
                        "own weights)")
    p.add_argument("--k", type=int, default=8, help="responses sampled per sample (default 8, "
                                                    "the paper's group size)")
    p.add_argument("--num-samples", type=int, default=64,
                   help="first N samples of each test split (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per rollout call")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the config's rollout engine)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.5, help="IoU that counts as found")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON-lines file for the per-sample records")
    p.add_argument("--cfg-options", nargs="+", action=key_value_action(), default=None)
    return p.parse_args(argv)


def _iou(mask: np.ndarray, sample: dict) -> float:
    from coprs.evaluation.functional import sample_counts, sample_iou

    ignore = sample.get("ignore_mask")
    counts = sample_counts(mask, np.asarray(sample["gt_mask"], bool),
                           None if ignore is None else np.asarray(ignore, bool))
    return float(sample_iou(counts, empty_empty=1.0, ignore_mode="exclude"))


def summarize(greedy: list[float], sampled: list[list[float]], threshold: float) -> dict:
    """The numbers of one split from each sample's greedy IoU and its k sampled IoUs."""
    s = np.asarray(sampled, dtype=np.float64)  # n x k
    return dict(n=len(greedy), greedy_giou=round(float(np.mean(greedy)), 4),
                sampled_giou=round(float(s.mean()), 4),
                best_of_k_giou=round(float(s.max(axis=1).mean()), 4),
                pass_at_k=round(float((s >= threshold).any(axis=1).mean()), 4),
                greedy_found=round(float((np.asarray(greedy) >= threshold).mean()), 4),
                flat_groups=round(float((np.ptp(s, axis=1) <= 1e-6).mean()), 4))


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for option, value in (("--k", args.k), ("--num-samples", args.num_samples),
                          ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{option} {value} must be at least 1")
    from PIL import Image

    from coprs.apis.inference import init_segmentor
    from coprs.commands.common import load_config
    from coprs.registry import DATASETS, ROLLOUT_ENGINES

    cfg = load_config(args.config, args.cfg_options)
    if not (cfg.get("test_cfg") or {}).get("datasets"):
        raise UsageError(f"config '{args.config}' has no test_cfg.datasets (the test splits "
                         "this samples from)")
    model = init_segmentor(copy.deepcopy(cfg), resolve_checkpoint(args.checkpoint))
    engine_cfg = copy.deepcopy((cfg.get("train_cfg") or {}).get("rollout_engine")
                               or dict(type="HFRolloutEngine"))
    if args.temperature is not None:
        engine_cfg["temperature"] = args.temperature
    if args.max_new_tokens is not None:
        engine_cfg["max_new_tokens"] = args.max_new_tokens
    engine = ROLLOUT_ENGINES.build(engine_cfg)
    torch.manual_seed(args.seed)
    report, records = {}, []
    for ds_cfg in cfg.test_cfg.datasets:
        ds_cfg = copy.deepcopy(ds_cfg)
        ds_cfg["indices"] = args.num_samples
        data = DATASETS.build(ds_cfg)
        name = f"{data.metainfo.get('dataset_name', 'dataset')}/{data.metainfo.get('split')}"
        greedy, sampled = [], []
        for start in range(0, len(data), args.batch_size):
            items = [data[i] for i in range(start, min(start + args.batch_size, len(data)))]
            images = [it["inputs"] for it in items]
            samples = [it["data_samples"] for it in items]
            instructions = [s["instruction"] for s in samples]
            for s, r in zip(samples, model.predict_images(images, instructions)):
                greedy.append(_iou(r.mask, s))
            with torch.no_grad():
                groups = engine.generate(model.policy, [Image.fromarray(im) for im in images],
                                         instructions, args.k)
            for im, s, grp, g_iou in zip(images, samples, groups, greedy[-len(items):]):
                ious = [_iou(mask, s) for _, mask, _ in model.rollout_maps(im, s, grp)]
                sampled.append(ious)
                records.append(dict(split=name, sample_id=s.get("sample_id"),
                                    instruction=s["instruction"], greedy_iou=g_iou,
                                    ious=ious, responses=[r.text for r in grp]))
            print(f"{name}: {len(greedy)}/{len(data)} samples", file=sys.stderr, flush=True)
        report[name] = summarize(greedy, sampled, args.threshold)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in records)
    print(json.dumps(dict(config=args.config, checkpoint=args.checkpoint, k=args.k,
                          temperature=engine_cfg.get("temperature"), threshold=args.threshold,
                          splits=report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
