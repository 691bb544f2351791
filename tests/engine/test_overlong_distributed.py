"""Two gloo ranks whose batches lose different numbers of over-long prompts keep stepping together
(``model.policy.max_prompt_tokens``; DDP with micro-batches, whose forwards are collectives)."""

import json

import torch
from mmengine.config import Config

from ..conftest import TINY_CONFIG  # noqa: TID252
from ._torchrun import rank_params, train_on_two_ranks


def _rank_batches(policy, steps: int) -> list[list[list[int]]]:
    """Prompt lengths of each rank's batch (2 samples) at each step of the tiny config's
    training set, unshuffled: ``InfiniteSampler`` deals the scenes to the 2 ranks in turn."""
    from coprs.registry import DATASETS

    dataset = DATASETS.build(Config.fromfile(str(TINY_CONFIG)).train_dataloader.dataset)
    lengths = []
    for i in range(4 * steps):
        item = dataset[i]
        lengths.append(policy.prompt_length(*item["inputs"].shape[:2],
                                            item["data_samples"]["instruction"]))
    return [[[lengths[4 * k + r], lengths[4 * k + r + 2]] for r in (0, 1)] for k in range(steps)]


def test_ranks_keep_equal_batches_and_skip_together(tmp_path, tiny_segmentor):
    batches = _rank_batches(tiny_segmentor.policy, steps=3)

    def kept(cap):  # per step: samples within the cap on each rank
        return [[sum(n <= cap for n in rank) for rank in step] for step in batches]

    # a cap under which one step has a rank with nothing left (every rank skips) and another
    # step ranks that keep different numbers of samples (the larger batch is cut)
    cap = next((c for c in sorted({n for s in batches for r in s for n in r})
                if any(min(k) == 0 < max(k) for k in kept(c))
                and any(0 < min(k) < max(k) for k in kept(c))), None)
    assert cap is not None, f"the first scenes' prompt lengths {batches} offer no such cap"
    proc = train_on_two_ranks(tmp_path, 29543, [
        "train_cfg.stages.1.iters=1", "train_dataloader.sampler.shuffle=False",
        "train_cfg.actor_micro_batch=1", "default_hooks.logger.interval=1",
        f"model.policy.max_prompt_tokens={cap}"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    a, b = rank_params(tmp_path / "w")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # rank 0's log and scalars: every step's warnings, naming the samples of both ranks (mmengine
    # prints no warning of rank 1), and the counts over both ranks
    log = out + "".join(p.read_text() for p in (tmp_path / "w").rglob("*.log"))
    dropped = evened = 0
    for it, (step, k) in enumerate(zip(batches, kept(cap)), 1):
        over = [(n, r) for r, rank in enumerate(step) for n in rank if n > cap]
        dropped += len(over)
        evened += sum(k) - 2 * min(k)
        if over:
            line = next(x for x in log.splitlines() if f"iteration {it}: dropped {len(over)} of "
                        "4 samples whose prompt is longer" in x)
            assert all(f"({n} tokens, rank {r})" in line for n, r in over), line
        if min(k) == 0:
            empty = ", ".join(str(r) for r, n in enumerate(k) if not n)
            assert f"iteration {it}: the batch of rank {empty} has no sample with a prompt " \
                "within" in log
        elif max(k) > min(k):
            assert (f"iteration {it}: dropped {sum(k) - 2 * min(k)} more samples (prompts within "
                    f"the cap) to keep as many on every rank as the rank with the fewest "
                    f"({min(k)})") in log
    assert any(n > cap for step in batches for n in step[1])  # rank 1's, named by rank 0
    scalars = [json.loads(x) for x in next((tmp_path / "w").rglob("scalars.json")).open()]
    counts = [x["data/overlong_dropped"] for x in scalars if "data/overlong_dropped" in x]
    assert counts[-1] == dropped
    equalised = [x["data/equalised_dropped"] for x in scalars if "data/equalised_dropped" in x]
    assert equalised[-1] == evened > 0
    assert sum("overlong_step" in x for x in scalars) == sum(min(k) == 0 for k in kept(cap))
