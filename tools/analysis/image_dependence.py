"""Does the policy use the image? Token loss with the right, shifted and blank images.

For ``--num-samples`` samples of a synthetic split, teacher-force each gold response and report
the policy's mean token cross-entropy three ways: with each sample's own image, with the images
shifted by one sample (every response paired with another scene), and with blank images. A
policy that reads the image has a clearly lower loss with the right images. It also reports the
vision tower's merged output for the first two images: the mean per-token norm and the mean
per-token distance between them (a distance that is tiny next to the norm means the image tokens
have become a fixed prefix).

A random-initialised tiny policy can learn the language of the gold reasoning without ever
reading the image; this tells that apart from a policy that perceives (docs/benchmarks.md).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from coprs.commands.common import UsageError, exit_on_usage_error, resolve_checkpoint

EXAMPLE = """example:
  python tools/analysis/image_dependence.py configs/coprs/coprs_tiny_shapes_cpu.py \\
      work_dirs/coprs_tiny_shapes_cpu --num-samples 32
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare the policy's token loss on gold responses with the right, shifted "
                    "and blank images (synthetic world).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a config with a synthetic-world policy")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="checkpoint or training work dir (omitted: the parts' own weights)")
    parser.add_argument("--split", default="train",
                        help="synthetic split: train, val, test or test_novel (default: train)")
    parser.add_argument("--num-samples", type=int, default=32,
                        help="the split's first N samples, at least 2 (default: 32)")
    return parser.parse_args(argv)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from coprs.datasets.shapes import SEED_STRIDE, SPLITS

    if args.split not in SPLITS:
        raise UsageError(f"--split {args.split!r} is not a synthetic split; use one of "
                         f"{', '.join(SPLITS)}")
    if not 2 <= args.num_samples <= SEED_STRIDE:
        raise UsageError(f"--num-samples {args.num_samples} must be at least 2 (the shifted "
                         f"pairing needs two) and at most {SEED_STRIDE}")
    import torch
    from PIL import Image

    from coprs.apis.inference import init_segmentor
    from coprs.datasets.shapes import ShapesReasonDataset

    model = init_segmentor(args.config, resolve_checkpoint(args.checkpoint))
    policy = model.policy
    data = ShapesReasonDataset(split=args.split, num_samples=args.num_samples,
                               image_size=model.vision_backbone.img_size)
    items = [data.get_data_info(i) for i in range(len(data))]
    instructions = [d["instruction"] for d in items]
    rollouts = model.rollouts_from_text([d["response_coprs"] for d in items])

    @torch.no_grad()
    def token_loss(images: list[np.ndarray]) -> float:
        fwd = policy.forward_responses([Image.fromarray(im) for im in images], instructions,
                                       rollouts)
        logp, mask = policy.response_logprobs(fwd)
        return float(-(logp * mask).sum() / mask.sum())

    images = [d["img"] for d in items]
    out = dict(config=args.config, checkpoint=args.checkpoint, split=args.split, n=len(items),
               loss_right=token_loss(images), loss_shifted=token_loss(images[1:] + images[:1]),
               loss_blank=token_loss([np.full_like(im, 255) for im in images]))
    with torch.no_grad():
        enc = policy.encode_prompts([Image.fromarray(im) for im in images[:2]], instructions[:2])
        visual = policy.model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
        feats = getattr(visual, "pooler_output", visual).float()
    half = feats.shape[0] // 2
    out["vision_token_norm"] = float(feats.norm(dim=-1).mean())
    out["vision_between_images"] = float((feats[:half] - feats[half:]).norm(dim=-1).mean())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
