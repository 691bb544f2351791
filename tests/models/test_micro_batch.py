"""Micro-batched train steps: the parts' gradients add up to the whole batch's (paper B.3)."""

import copy
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from coprs.models.micro_batch import (
    WHOLE_BATCH,
    check_micro_batch,
    micro_batch_slices,
    split_batch,
)
from coprs.registry import DATASETS, ROLLOUT_ENGINES

from ..conftest import TINY_CONFIG  # noqa: TID252


def test_slices_cut_groups_evenly_or_take_whole_groups():
    assert micro_batch_slices(2, 4, 2) == [[(0, 0, 2)], [(0, 2, 4)], [(1, 0, 2)], [(1, 2, 4)]]
    assert micro_batch_slices(3, 4, 8) == [[(0, 0, 4), (1, 0, 4)], [(2, 0, 4)]]
    assert micro_batch_slices(3, 1, 2) == [[(0, 0, 1), (1, 0, 1)], [(2, 0, 1)]]
    assert micro_batch_slices(1, 4, 4) == [[(0, 0, 4)]]


@pytest.mark.parametrize("size", [3, 6, 0, 2.5])
def test_a_size_that_does_not_cut_groups_evenly_is_refused(size):
    with pytest.raises(ValueError, match="actor_micro_batch"):
        check_micro_batch(size, 4)


@pytest.fixture(scope="module")
def batch(tiny_segmentor):
    """Three training samples of the synthetic world through the tiny config's pipeline."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg.update(num_samples=3, cache_samples=False)
    ds_cfg.pipeline = [p for p in ds_cfg.pipeline if p["type"] != "PerturbAnswerPlace"]
    ds = DATASETS.build(ds_cfg)
    items = [ds[i] for i in range(3)]
    return [it["inputs"] for it in items], [it["data_samples"] for it in items]


def _grpo_samples(model, images, samples, g=4):
    from PIL import Image

    engine = ROLLOUT_ENGINES.build(dict(type="HFRolloutEngine", max_new_tokens=8))
    torch.manual_seed(0)
    groups = engine.generate(model.policy, [Image.fromarray(im) for im in images],
                             [s["instruction"] for s in samples], g)
    out = []
    for s, grp in zip(samples, groups):
        s = dict(s, rollouts=grp, advantages=torch.randn(g))
        # a reference a little off the sampling policy, so the KL term has a gradient
        s["ref_logprobs"] = [[lp - 0.1 * (k % 3) for k, lp in enumerate(r.logprobs)] for r in grp]
        out.append(s)
    return out


def _step(model, images, samples, micro_batch):
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = OptimWrapper(torch.optim.SGD(params, lr=1.0), clip_grad=dict(max_norm=1e3))
    steps = []
    optim.optimizer.register_step_post_hook(lambda *a: steps.append(1))
    before = [p.detach().clone() for p in params]
    logs = model.train_step(dict(inputs=list(images), data_samples=[dict(s) for s in samples]),
                            optim, micro_batch=micro_batch)
    assert len(steps) == 1  # one optimiser step, however many parts
    assert all(p.grad is None or not p.grad.any() for p in params)  # zeroed after the step
    return [b - p.detach() for b, p in zip(before, params)], logs  # = the gradient (SGD, lr 1)


def _assert_same_step(full, micro):
    (g_full, logs_full), (g_micro, logs_micro) = full, micro
    assert sum(bool(g.abs().sum() > 0) for g in g_full) > 10  # the step moved many tensors
    for a, b in zip(g_full, g_micro):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for k, v in logs_full.items():
        if "loss" in k:
            torch.testing.assert_close(torch.as_tensor(logs_micro[k]).float(),
                                       torch.as_tensor(v).float(), rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_grpo_step_in_micro_batches_equals_the_whole_batch(tiny_segmentor, batch, agg):
    model = copy.deepcopy(tiny_segmentor)
    model.rl.update(agg=agg, kl_coef=0.2)
    model.seg_loss.lambda_seg = 0.3  # the paper's joint loss (the tiny schedule's GRPO sets 0)
    images, samples = batch
    samples = _grpo_samples(model, images, samples)
    full = _step(model, images, samples, None)
    assert {"loss_pg", "loss_kl", "loss_seg"} <= set(full[1])
    for size in (2, 8):  # half a group; two groups, then one
        _assert_same_step(full, _step(model, images, samples, size))


def test_supervised_step_in_micro_batches_equals_the_whole_batch(tiny_segmentor, batch):
    images, samples = batch
    samples = [dict(s, response=s["response_coprs"]) for s in samples]
    samples[1].pop("gold_answer_region")  # one sample without an answer to name
    full = _step(tiny_segmentor, images, samples, None)
    assert {"loss_lm", "loss_answer", "loss_seg"} <= set(full[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        micro = _step(tiny_segmentor, images, samples, 1)
    _assert_same_step(full, micro)
    # the part holding only that sample is no batch without answers: no answer-key warning
    assert not [w for w in caught if "no sample in the batch" in str(w.message)]
    assert WHOLE_BATCH.get() is None  # set for the parts only


def test_shares_of_each_loss_add_up_to_one(tiny_segmentor, batch):
    images, samples = batch
    samples = [dict(s, response=s["response_coprs"]) for s in samples]
    parts = split_batch(tiny_segmentor, dict(inputs=images, data_samples=samples), 2)
    assert [len(p["data_samples"]) for p, _ in parts] == [2, 1]
    for key in ("loss_lm", "loss_seg", "_seqs"):
        assert sum(shares[key] for _, shares in parts) == pytest.approx(1.0)
    # token-mean: a part's share is its share of the response tokens, not of the samples
    tokens = [len(tiny_segmentor.rollouts_for_training([s])[0][0].token_ids) for s in samples]
    assert parts[1][1]["loss_lm"] == pytest.approx(tokens[2] / sum(tokens))


def test_a_nonfinite_part_skips_the_whole_update(tiny_segmentor, batch, monkeypatch):
    images, samples = batch
    samples = [dict(s, response=s["response_coprs"]) for s in samples]
    model = copy.deepcopy(tiny_segmentor).train()
    calls = []
    original = type(model).loss

    def loss(self, imgs, smp):
        out = original(self, imgs, smp)
        calls.append(1)
        if len(calls) == 1:  # the first part's loss is NaN, the others are fine
            out["loss_lm"] = out["loss_lm"] * float("nan")
        return out

    monkeypatch.setattr(type(model), "loss", loss)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optim = OptimWrapper(torch.optim.SGD(params, lr=1.0))
    logs = model.train_step(dict(inputs=list(images), data_samples=samples), optim, micro_batch=1)
    assert len(calls) == 3 and logs["nonfinite_step"] == 1.0
    assert all(torch.equal(b, p) for b, p in zip(before, params))
    assert all(p.grad is None or not p.grad.any() for p in params)


def test_an_iteration_is_one_count_of_mmengines_gradient_accumulation(tiny_segmentor, batch):
    """``optim_wrapper.accumulative_counts=2`` steps every second iteration, micro-batches or
    not, with the mean of the two iterations' gradients."""
    images, samples = batch
    samples = [dict(s, response=s["response_coprs"]) for s in samples]
    halves = [(images[:2], samples[:2]), (images[2:], samples[2:])]
    deltas = []
    for micro in (None, 1):
        model = copy.deepcopy(tiny_segmentor).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optim = OptimWrapper(torch.optim.SGD(params, lr=1.0), accumulative_counts=2)
        optim.initialize_count_status(model, 0, 4)
        steps = []
        optim.optimizer.register_step_post_hook(lambda *a, steps=steps: steps.append(1))
        before = [p.detach().clone() for p in params]
        for k, (ims, smp) in enumerate(halves):
            model.train_step(dict(inputs=list(ims), data_samples=[dict(s) for s in smp]), optim,
                             micro_batch=micro)
            assert len(steps) == k  # no step after the first iteration, one after the second
        deltas.append([b - p.detach() for b, p in zip(before, params)])
    expected = [sum(g) / 2 for g in zip(*(_step(tiny_segmentor, i, s, None)[0] for i, s in halves))]
    for whole, micro, exp in zip(*deltas, expected):
        torch.testing.assert_close(whole, exp, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(micro, exp, rtol=1e-4, atol=1e-6)


def test_entropy_bonus_raises_the_entropy_and_splits_like_the_policy_loss(tiny_segmentor, batch):
    """``rl.entropy_coef`` > 0: ``loss_entropy`` = −coef · entropy (``pg/entropy`` logged), a step
    on it alone raises the entropy, and micro-batches give the whole batch's step."""
    model = copy.deepcopy(tiny_segmentor)
    model.rl.update(entropy_coef=1.0, kl_coef=0.0, clip_eps=0.2)
    images, samples = batch
    samples = _grpo_samples(model, images, samples)
    for s in samples:  # no advantage: the step follows the entropy bonus (and L_SEG) alone
        s["advantages"] = torch.zeros(4)
    full = _step(model, images, samples, None)
    logs = full[1]
    assert float(logs["loss_entropy"]) == pytest.approx(-float(logs["pg/entropy"]), rel=1e-5)
    _assert_same_step(full, _step(model, images, samples, 2))
    stepped = copy.deepcopy(model).train()
    params = [p for p in stepped.parameters() if p.requires_grad]
    for p, d in zip(params, full[0]):  # apply the step: p - lr * grad, lr 0.01
        p.data -= 0.01 * d
    after = stepped.train_step(dict(inputs=list(images), data_samples=[dict(s) for s in samples]),
                               OptimWrapper(torch.optim.SGD(params, lr=0.0)))
    assert float(after["pg/entropy"]) > float(logs["pg/entropy"])


def test_actor_old_logprobs_ignore_the_engines_and_keep_the_ratio_at_one(tiny_segmentor, batch):
    """``model.rl.old_logprobs='actor'``: the PPO ratio uses the actor's own log-probs, so the
    sampling log-probs (another engine's numerics) do not enter the loss."""
    images, samples = batch
    grpo = _grpo_samples(tiny_segmentor, images, samples)
    off = [dict(s, rollouts=[type(r)(text=r.text, token_ids=r.token_ids,
                                     logprobs=[lp - 0.5 for lp in r.logprobs])
                             for r in s["rollouts"]]) for s in grpo]
    model = copy.deepcopy(tiny_segmentor).train()
    losses = {}
    for mode in ("rollout", "actor"):
        model.rl["old_logprobs"] = mode
        for name, ss in (("as_sampled", grpo), ("off", off)):
            with torch.no_grad():
                losses[mode, name] = model.loss(list(images), [dict(s) for s in ss])
    # the rollout mode reads the sampling log-probs: off by 0.5, every ratio is 1.65 and the
    # clipped branch is active wherever the advantage is positive
    assert losses["rollout", "off"]["pg/clip_frac"] > 0.2
    assert not torch.allclose(losses["rollout", "off"]["loss_pg"],
                              losses["rollout", "as_sampled"]["loss_pg"])
    # the actor mode does not: the same loss either way, with no clipping
    torch.testing.assert_close(losses["actor", "off"]["loss_pg"],
                               losses["actor", "as_sampled"]["loss_pg"])
    assert losses["actor", "off"]["pg/clip_frac"] == 0
    # on-policy, the two modes agree up to the engine's numerics
    torch.testing.assert_close(losses["actor", "as_sampled"]["loss_pg"],
                               losses["rollout", "as_sampled"]["loss_pg"], atol=1e-4, rtol=1e-4)
    from coprs.registry import MODELS

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.rl["old_logprobs"] = "vllm"
    with pytest.raises(ValueError, match="old_logprobs='vllm'"):
        MODELS.build(cfg.model)
