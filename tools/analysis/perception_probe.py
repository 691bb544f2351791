"""Can the policy learn to read the image? Train the policy alone on gold responses.

Builds a config's policy (nothing else: no vision backbone, prior or decoder), teacher-forces the
gold responses of synthetic training scenes with token cross-entropy (AdamW, constant learning
rate, gradient clipping at 1.0) and, every ``--eval-every`` iterations, reports on held-out
``test`` scenes:

* ``loss`` / ``loss_shifted``: the token loss with each scene's own image and with the images
  shifted by one scene; ``gap`` = shifted − right. A policy that reads the image has a growing gap;
  0 means the image tokens carry nothing the language model uses.
* ``answer_right`` / ``answer_colour``: greedy responses whose final "the target is the COLOUR
  SHAPE" names the target (or at least its colour), out of ``n``; ``place_right``: of the
  ``answer_right`` ones, those that also name the target's place ("… in the lower left").

``--cell-loss W`` adds W × an auxiliary loss on the image tokens: a linear head reads each image
token's last hidden state and predicts which colour-shape objects have their centre in that
token's cell of the image (multi-label BCE), a direct perception signal next to the token loss.
``--vision-lr 0`` freezes the policy's vision tower (as ``policy.freeze_vision_tower``); the
default trains it at the same learning rate. ``--policy KEY=VALUE`` overrides keys of the
config's ``model.policy`` (values parsed as Python literals), e.g.
``--policy 'tiny={"seed": 0, "vocab_size": 1024, "corpus": "shapes", "text_config":
{"num_hidden_layers": 4}}'``. It isolates the perception half of the synthetic task from the
prior and decoder, at about a third of the cost of a full warm-up step (docs/benchmarks.md).
Prints one JSON object per evaluation, then a summary object.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys

from coprs.commands.common import UsageError, exit_on_usage_error

EXAMPLE = """example:
  python tools/analysis/perception_probe.py configs/coprs/coprs_tiny_shapes_cpu.py \\
      --iters 1500 --eval-every 250 --vision-lr 0
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a config's policy alone on gold responses of the synthetic world and "
                    "report whether it learns to read the image.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a config whose model.policy is a Qwen2.5-VL policy")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    parser.add_argument("--vision-lr", type=float, default=None,
                        help="learning rate of the vision tower (default: --lr; 0 freezes it)")
    parser.add_argument("--train-scenes", type=int, default=3000)
    parser.add_argument("--eval-scenes", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--cell-loss", type=float, default=0.0, metavar="W",
                        help="weight of the auxiliary per-cell object loss on the image tokens "
                             "(default: 0, off)")
    parser.add_argument("--policy", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override model.policy keys (Python literals)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def check_counts(args, **least: int) -> None:
    """``--iters``, ``--batch-size``, ``--eval-every`` and the scene counts are at least 1 (or
    what ``least`` says) and the scene counts at most a synthetic split's size: a
    :class:`UsageError` naming the option otherwise, before anything is built."""
    from coprs.datasets.shapes import SEED_STRIDE

    for name in ("iters", "batch_size", "eval_every", "train_scenes", "eval_scenes",
                 "test_scenes"):
        value, low = getattr(args, name, None), least.get(name, 1)
        if value is None:
            continue
        option = "--" + name.replace("_", "-")
        if value < low:
            raise UsageError(f"{option} {value} must be at least {low}")
        if name.endswith("_scenes") and value > SEED_STRIDE:
            raise UsageError(f"{option} {value} must be at most {SEED_STRIDE}, the size of a "
                             "synthetic split")


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--policy '{pair}' is not KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_counts(args, eval_scenes=2)
    if args.cell_loss < 0:
        raise UsageError(f"--cell-loss {args.cell_loss} must be at least 0 (0: off)")
    overrides = _overrides(args.policy)
    import numpy as np
    import torch
    from mmengine.config import Config
    from PIL import Image

    from coprs.datasets.shapes import COLOURS, SHAPES, ShapesReasonDataset
    from coprs.registry import POLICIES
    from coprs.structures import Rollout
    from coprs.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(args.config)
    policy_cfg = dict(cfg.model.policy)
    policy_cfg.update(overrides)
    policy_cfg.pop("freeze_vision_tower", None)  # --vision-lr decides
    policy_cfg.pop("tower_cache", None)  # it needs a tower frozen at build time
    torch.manual_seed(args.seed)
    policy = POLICIES.build(policy_cfg)
    size = int(cfg.get("shapes_image_size", 112))

    def scenes(split: str, n: int) -> list[dict]:
        data = ShapesReasonDataset(split=split, num_samples=n, seed=args.seed, image_size=size)
        return [data.get_data_info(i) for i in range(n)]

    train, test = scenes("train", args.train_scenes), scenes("test", args.eval_scenes)
    tok = policy.tokenizer
    visual = [p for n, p in policy.named_parameters() if ".visual." in f".{n}"]
    rest = [p for n, p in policy.named_parameters() if ".visual." not in f".{n}"]
    vision_lr = args.lr if args.vision_lr is None else args.vision_lr
    groups = [dict(params=rest, lr=args.lr)]
    if vision_lr > 0:
        groups.append(dict(params=visual, lr=vision_lr))
    else:
        for p in visual:
            p.requires_grad_(False)
    cell_loss = None
    if args.cell_loss > 0:
        cell_loss = CellLoss(policy, [f"{c} {s}" for c in COLOURS for s in SHAPES], size)
        groups.append(dict(params=list(cell_loss.head.parameters()), lr=args.lr))
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)

    def token_loss(items: list[dict], shift: int = 0) -> torch.Tensor:
        images = [Image.fromarray(d["img"]) for d in items]
        images = images[shift:] + images[:shift]
        rollouts = [Rollout(text=d["response_coprs"],
                            token_ids=tok.encode(d["response_coprs"], add_special_tokens=False))
                    for d in items]
        fwd = policy.forward_responses(images, [d["instruction"] for d in items], rollouts)
        logp, mask = policy.response_logprobs(fwd)
        return -(logp * mask).sum() / mask.sum()

    def evaluate(it: int) -> dict:
        policy.eval()
        with torch.no_grad():
            right, shifted = float(token_loss(test)), float(token_loss(test, 1))
            groups_ = policy.generate([Image.fromarray(d["img"]) for d in test],
                                      [d["instruction"] for d in test])
        policy.train()
        return dict(iter=it, loss=round(right, 4), loss_shifted=round(shifted, 4),
                    gap=round(shifted - right, 4),
                    **score_answers(test, [group[0].text for group in groups_]))

    from tqdm import tqdm

    rng = np.random.default_rng(args.seed)
    history = []
    policy.train()
    for it in tqdm(range(1, args.iters + 1), desc="perception probe", file=sys.stderr):
        batch = [train[i] for i in rng.integers(0, len(train), args.batch_size)]
        loss = token_loss(batch)
        if cell_loss is not None:
            loss = loss + args.cell_loss * cell_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        if it % args.eval_every == 0 or it == args.iters:
            history.append(evaluate(it))
            print(json.dumps(history[-1]), flush=True)
    best = max(history, key=lambda h: h["gap"])
    print(json.dumps(dict(config=args.config, vision_lr=vision_lr, lr=args.lr,
                          cell_loss=args.cell_loss,
                          iters=args.iters, final=history[-1], best_gap=best)))
    return 0


def score_answers(samples: list[dict], texts: list[str]) -> dict:
    """How many responses name the target (``answer_right``), its colour (``answer_colour``),
    the target in its place (``place_right``), of ``n``."""
    from coprs.datasets.shapes import parse_final_answer

    right = colour = place = 0
    for d, text in zip(samples, texts, strict=True):
        found = parse_final_answer(text)
        gold = d["gold_answer"].split()[-2:]
        if found:
            named = list(found[:2]) == gold
            right += named
            place += named and d["gold_answer_region"].endswith(f" in the {found[2]}")
            colour += found[0] == gold[0]
    return dict(answer_right=right, answer_colour=colour, place_right=place, n=len(samples))


class CellLoss:
    """Which objects lie in each image token's cell, read from the token's last hidden state.

    A forward hook on the policy's language model keeps the last forward's input ids and last
    hidden states; calling the object with that forward's samples gives the multi-label BCE of a
    linear head over ``classes`` ("red circle", …) against the objects whose centre falls in each
    token's cell of the ``size`` × ``size`` image (image tokens in row-major order).
    """

    def __init__(self, policy, classes: list[str], size: int):
        import torch

        self.policy, self.classes, self.size = policy, classes, size
        self.head = torch.nn.Linear(policy.model.config.text_config.hidden_size, len(classes))
        self.seen: dict = {}
        policy.model.model.register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, out) -> None:
        self.seen = dict(ids=kwargs["input_ids"], hidden=out.last_hidden_state)

    def targets(self, objects: list[dict], tokens: int):
        import torch

        grid = round(tokens ** 0.5)
        if grid * grid != tokens:
            raise ValueError(f"{tokens} image tokens are not a square grid")
        cell = self.size / grid
        out = torch.zeros(tokens, len(self.classes))
        for o in objects:
            x, y = o["centre"]
            k = min(int(y / cell), grid - 1) * grid + min(int(x / cell), grid - 1)
            out[k, self.classes.index(f"{o['colour']} {o['shape']}")] = 1
        return out

    def __call__(self, items: list[dict]):
        import torch

        image = self.seen["ids"] == self.policy.image_token_id
        feats, targets = [], []
        for row, d in enumerate(items):
            where = image[row].nonzero().squeeze(1)
            feats.append(self.seen["hidden"][row, where])
            targets.append(self.targets(d["objects"], where.numel()))
        return torch.nn.functional.binary_cross_entropy_with_logits(
            self.head(torch.cat(feats)), torch.cat(targets).to(feats[0].device))


if __name__ == "__main__":
    sys.exit(main())
