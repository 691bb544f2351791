"""Peak memory and time of one GRPO update, whole batch vs. micro-batches.

``train_cfg.actor_micro_batch`` (paper: 2) forwards and back-propagates that many sequences at a
time and steps once (docs/training.md, "Micro-batches and gradient accumulation"). This script
runs the tiny CPU config's ``train_step`` on one GRPO batch of 2 prompts x 8 rollouts (the
paper's per-GPU batch), each rollout a teacher-forced response of ``--tokens`` tokens, with
the whole batch at once and with micro-batches of 8 and 2 sequences. Each variant runs in a
fresh process so its peak is its own: on CPU the growth of the process's peak resident memory
during the first step, on CUDA ``torch.cuda.max_memory_allocated`` above what the model holds.
``--quick`` runs the three in this process (its peaks mean nothing). It reports each variant's
peak and median step time over the whole batch's, and whether the
variants give the same loss (the whole batch's, to float rounding).

Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/micro_batch.py
    {"peak_over_whole": {"2": 0.16, "8": 0.477, "whole": 1.0}, ...}
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from _common import base_parser, configured, emit, machine, median

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"
PROMPTS, GROUP = 2, 8


def _batch(model, tokens: int):
    """2 synthetic-world samples, each with 8 rollouts of about ``tokens`` tokens."""
    import copy

    import torch
    from mmengine.config import Config

    from coprs.registry import DATASETS
    from coprs.structures import Rollout

    cfg = Config.fromfile(str(TINY_CONFIG))
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg.update(num_samples=PROMPTS, cache_samples=False)
    ds_cfg.pipeline = [p for p in ds_cfg.pipeline if p["type"] != "PerturbAnswerPlace"]
    items = [DATASETS.build(ds_cfg)[i] for i in range(PROMPTS)]
    tok = model.policy.tokenizer
    gen = torch.Generator().manual_seed(0)
    samples = []
    for it in items:
        s = it["data_samples"]
        gold = s["response_coprs"]
        think, rest = gold.split("</think>", 1)
        filler = think[len("<think>"):]
        while len(tok.encode(think, add_special_tokens=False)) < tokens:
            think += " " + filler
        ids = tok.encode(think + "</think>" + rest, add_special_tokens=False)
        rollouts = [Rollout(text=tok.decode(ids), token_ids=list(ids),
                            logprobs=[-1.0] * len(ids)) for _ in range(GROUP)]
        samples.append(dict(s, rollouts=rollouts, advantages=torch.randn(GROUP, generator=gen),
                            ref_logprobs=[r.logprobs for r in rollouts]))
    return [it["inputs"] for it in items], samples


def child(micro: int | None, tokens: int, repeats: int, device: str) -> dict:
    """One variant in this process: peak memory of the first step, then timed steps."""
    import time

    import torch
    from mmengine.optim import OptimWrapper

    from coprs.apis import init_segmentor

    model = init_segmentor(str(TINY_CONFIG), device=device,
                           cfg_options={"model.feature_cache": None}).train()
    model.seg_loss.lambda_seg = 0.3
    images, samples = _batch(model, tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = OptimWrapper(torch.optim.SGD(params, lr=0.0))  # lr 0: every step sees the same model

    def step():
        data = dict(inputs=list(images), data_samples=[dict(s) for s in samples])
        return model.train_step(data, optim, micro_batch=micro)

    with torch.no_grad():
        model.encode_images(images)  # first-call allocations outside the measured step
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    logs = step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return dict(peak_bytes=int(peak), seconds=times, loss=float(logs["loss"]),
                tokens_per_sequence=len(samples[0]["rollouts"][0].token_ids))


def main(argv=None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=None,
                   help="response tokens per rollout (default 512; --quick 64)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tokens = args.tokens or (64 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.child is not None:
        with configured(args):
            micro = None if args.child == "whole" else int(args.child)
            print(json.dumps(child(micro, tokens, repeats, args.device)))
        return {}
    runs = {}
    for name in ("whole", "8", "2"):
        if args.quick:  # one process for the smoke test: its peaks mean nothing
            with configured(args):
                runs[name] = child(None if name == "whole" else int(name), tokens, repeats,
                                   args.device)
            continue
        cmd = [sys.executable, __file__, "--child", name, "--tokens", str(tokens), "--repeats",
               str(repeats), "--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              cwd=str(REPO))
        if proc.returncode:
            raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    whole = runs["whole"]
    with configured(args):
        info = machine()
    return emit(dict(
        benchmark="micro_batch", quick=args.quick, machine=info, device=args.device,
        prompts=PROMPTS, group_size=GROUP, tokens_per_sequence=whole["tokens_per_sequence"],
        repeats=repeats,
        peak_mib={k: round(v["peak_bytes"] / 2 ** 20, 1) for k, v in runs.items()},
        peak_over_whole={k: round(v["peak_bytes"] / max(whole["peak_bytes"], 1), 3)
                         for k, v in runs.items()},
        step_over_whole={k: round(median(v["seconds"]) / median(whole["seconds"]), 3)
                         for k, v in runs.items()},
        same_loss=all(abs(v["loss"] - whole["loss"]) <= 1e-4 * max(1.0, abs(whole["loss"]))
                      for v in runs.values()),
        loss={k: v["loss"] for k, v in runs.items()},
    ))


if __name__ == "__main__":
    main(sys.argv[1:])
