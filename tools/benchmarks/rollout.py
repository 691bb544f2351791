"""G-sample group rollout: HFRolloutEngine (image encoded once, shared prompt prefill, lean
sampling loop) vs naive G-fold ``generate`` (the prompt and its image repeated G times).

Both sides sample with the same settings (temperature 1, top-p 1) and are forced to write
exactly ``--new-tokens`` tokens (end tokens suppressed until then); both start from the same
seed and must produce the same tokens. Prints one JSON object last, e.g.::

    PYTHONPATH=. python tools/benchmarks/rollout.py
    {"speedup": 3.42, "same_tokens": true, ...}
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import base_parser, configured, emit, interleaved, machine, median, timed
from PIL import Image


def parse_args(argv: list[str] | None = None):
    p = base_parser("G-sample group rollout: HFRolloutEngine vs naive G-fold generate.")
    p.add_argument("--group", type=int, default=8, help="G, samples per prompt")
    p.add_argument("--image", type=int, default=840, help="side of the square test image")
    p.add_argument("--new-tokens", type=int, default=128)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.group, args.image, args.new_tokens = 2, 112, 4
    with configured(args):
        return run(args)


def run(args) -> dict:
    from coprs.policies import Qwen25VLPolicy
    from coprs.rollout import HFRolloutEngine

    g, n_new = args.group, args.new_tokens
    repeats = args.repeats or (1 if args.quick else 3)
    # the paper's policy-view cap: 840 x 840 = 705,600 pixels -> 900 image tokens
    policy = Qwen25VLPolicy(tiny=dict(seed=0), max_pixels=705600, max_new_tokens=n_new)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.image, args.image, 3),
                                                              dtype=np.uint8))
    instruction = "the object a person would sit on"
    batch1 = policy.encode_prompts([image], [instruction])
    image_tokens = int((batch1["input_ids"] == policy.image_token_id).sum())

    engine = HFRolloutEngine(max_new_tokens=n_new, min_new_tokens=n_new)
    hf_kwargs = dict(policy.generation_kwargs(True, 1.0, 1.0, None, n_new), min_new_tokens=n_new)

    def shared():
        return [r.token_ids for r in engine.generate(policy, [image], [instruction], g)[0]]

    @torch.no_grad()
    def naive():  # G copies of (image, prompt) in one generate call
        batch = policy.encode_prompts([image] * g, [instruction] * g)
        out = policy.model.generate(**batch, **hf_kwargs)
        return out.sequences[:, batch["input_ids"].shape[1]:].tolist()

    nrs_engine = HFRolloutEngine(share_prefill=False, max_new_tokens=n_new, min_new_tokens=n_new)

    def num_return_sequences():  # transformers encodes the image once, prefills G rows
        return [r.token_ids for r in nrs_engine.generate(policy, [image], [instruction], g)[0]]

    # equality (and warm-up): same seed, same tokens
    outs = {}
    for name, fn in (("shared", shared), ("naive", naive), ("nrs", num_return_sequences)):
        torch.manual_seed(0)
        outs[name] = fn()
    same = outs["shared"] == outs["naive"] == outs["nrs"]
    lengths = sorted({len(t) for t in outs["shared"]})

    times = interleaved({"shared": shared, "naive": naive, "nrs": num_return_sequences},
                        repeats)
    # where the time goes: one prefill vs G prefills, and sampling after the prefill
    with torch.no_grad():
        batch_g = policy.encode_prompts([image] * g, [instruction] * g)
        t_prefill_1 = median([timed(lambda: policy.model(**batch1))[0] for _ in range(repeats)])
        t_prefill_g = median([timed(lambda: policy.model(**batch_g))[0] for _ in range(repeats)])

    t_shared, t_naive, t_nrs = (median(times[k]) for k in ("shared", "naive", "nrs"))
    return emit(dict(
        benchmark="rollout", quick=args.quick, machine=machine(), group=g,
        image_side=args.image, image_tokens=image_tokens, new_tokens=lengths,
        repeats=repeats, same_tokens=bool(same),
        seconds=dict(shared=t_shared, naive=t_naive, num_return_sequences=t_nrs,
                     prefill_1=t_prefill_1, prefill_g=t_prefill_g),
        speedup=t_naive / t_shared,
        speedup_vs_num_return_sequences=t_nrs / t_shared,
    ))


if __name__ == "__main__":
    main(sys.argv[1:])
