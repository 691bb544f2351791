"""Cost of one CoPRS GRPO + segmentation step.

(a) FLOPs at the paper's sizes, counted on the meta device with
``torch.utils.flop_counter.FlopCounterMode`` (no weights, no time): Qwen2.5-VL-3B + the CoPRS
prior and decoder at SAM-H widths over cached image features (the SAM encoder does not run),
G = 8 rollouts of 256 tokens for one prompt with 900 image tokens. Phases as the training loop
runs them: rollout (vision tower once, shared prefill, 256 decoding steps for 8 rows), reward
(CoPRS: prior + decoder without gradients on the hidden states the rollout engine kept;
policy-only: a text rule, no FLOPs), reference (no-grad forward of the 8 sequences), actor
(forward + backward; CoPRS adds prior + decoder + L_SEG on the same forward, one backward). The
8 sequences of a group share one image, which the vision tower encodes once in every phase
(``coprs_vision_per_row_over_per_group``: the step if it ran once per sequence).
FLOPs are affine in the number of layers of each kind, so the model is built with 1–2 text layers
and 1–2 vision blocks of each kind (window / full attention) and the counts are extrapolated to
36 text layers and 28 + 4 vision blocks; decoding FLOPs are affine in the cache length, so two
steps (first and last cache length) give the 256-step total exactly.

(b) Wall clock at tiny scale: a few GRPO iterations of the tiny CPU config through the real
training loop; the seconds of every phase it logs (``time/rollout``, ``time/reward``,
``time/reference``, ``time/actor`` with its ``time/backward_step``), the time inside model
computation (forward, backward, generation, optimiser step; measured by hooks), and the
fraction of the step spent outside it (data, reward arithmetic, advantages, bookkeeping,
logging).

Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/train_step.py
    {"coprs_over_policy_only_flops": 1.0004, "overhead_fraction": 0.041, ...}
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

from _common import base_parser, configured, emit, machine

REPO = Path(__file__).resolve().parents[2]
CONFIG_3B = REPO / "configs" / "_base_" / "models" / "coprs_qwen2.5-vl-3b_sam-vit-h.py"
TINY_CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"


# ---------------------------------------------------------------------------- (a) FLOPs
def _meta_rotary(head_dim: int):
    """Stands in for the vision tower's rotary embedding on the meta device (its positions come
    from ``grid_thw`` on the CPU; rotary maths is elementwise and counts no FLOPs)."""
    import torch

    class MetaRotary(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head_dim = head_dim

        def forward(self, hidden, position_ids):
            e = hidden.new_empty(hidden.shape[0], self.head_dim)
            return e, e

    return MetaRotary()


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _phase_flops(model_cfg: dict, g: int, image_tokens: int, text_tokens: int,
                 resp_tokens: int) -> dict[str, int]:
    """FLOPs of each phase for one (possibly layer-reduced) meta model."""
    import torch
    from transformers.cache_utils import DynamicCache

    from coprs.models.counting import build_for_counting
    from coprs.structures import PolicyOutput

    seg = build_for_counting(model_cfg)
    seg.prior.to("meta")  # small parts are built with weights; count them on meta too
    seg.decoder.to("meta")
    seg.seg_loss.to("meta")
    hf = seg.policy.model
    vis, lm, head = hf.model.visual, hf.model.language_model, hf.lm_head
    vcfg, tcfg = vis.config, lm.config
    vis.rotary_pos_emb = _meta_rotary(vcfg.hidden_size // vcfg.num_heads)
    merge = vcfg.spatial_merge_size
    side = int(round(image_tokens ** 0.5)) * merge  # patches per image side (60 for 900)
    patch_dim = 3 * vcfg.temporal_patch_size * vcfg.patch_size ** 2
    d, meta = tcfg.hidden_size, "meta"
    prompt = image_tokens + text_tokens
    seq = prompt + resp_tokens

    def vision(train: bool):
        """One image through the vision tower (forward, or forward + backward)."""
        pix = torch.empty(side * side, patch_dim, device=meta)
        feats = vis(pix, grid_thw=torch.tensor([[1, side, side]])).pooler_output
        if train:
            feats.sum().backward()

    def embeds(rows: int, length: int, train: bool):
        """Token embeddings with the image features in place (the features themselves are
        counted per image by ``vision``)."""
        text = lm.embed_tokens(torch.zeros(rows, length - image_tokens, dtype=torch.long,
                                           device=meta))
        img = torch.empty(rows, image_tokens, d, device=meta, requires_grad=train)
        return torch.cat([text[:, :3], img, text[:, 3:]], dim=1)  # rows x length x d

    def positions(rows: int, length: int):
        return torch.zeros(3, rows, length, dtype=torch.long, device=meta)

    def policy_forward(rows: int, train: bool):
        """forward_responses + response_logprobs over rows sequences (text part)."""
        x = embeds(rows, seq, train)
        hidden = lm(inputs_embeds=x, position_ids=positions(rows, seq),
                    use_cache=False).last_hidden_state  # rows x seq x d
        logits = head(hidden[:, prompt - 1:seq - 1]).float()  # rows x resp x V
        return hidden, torch.log_softmax(logits, -1)[..., 0]

    def decode_step(cache_len: int):
        cache = DynamicCache(config=tcfg)
        kv, hd = tcfg.num_key_value_heads, tcfg.hidden_size // tcfg.num_attention_heads
        for i in range(tcfg.num_hidden_layers):
            cache.update(torch.empty(g, kv, cache_len, hd, device=meta),
                         torch.empty(g, kv, cache_len, hd, device=meta), i)
        out = lm(inputs_embeds=torch.empty(g, 1, d, device=meta), position_ids=positions(g, 1),
                 cache=cache, use_cache=True)
        head(out.last_hidden_state).float().softmax(-1)

    def prefill():
        x = embeds(1, prompt, False)[:, :-1]
        lm(inputs_embeds=x, position_ids=positions(1, prompt - 1), use_cache=True)

    keys = torch.empty(1, seg.vision_backbone.out_channels, seg.vision_backbone.grid_size,
                       seg.vision_backbone.grid_size, device=meta).repeat_interleave(g, 0)
    mask_side = seg.vision_backbone.img_size // 4  # the decoder's 256 x 256 output
    gt = torch.empty(g, mask_side, mask_side, device=meta)

    def prior_decoder(hidden):
        out = PolicyOutput(hidden=hidden, responses=[""] * g, has_token=[True] * g)
        return seg.decode(out, keys)

    def reward():
        with torch.no_grad():
            prior_decoder(torch.empty(g, d, device=meta))

    def actor(coprs: bool):
        hidden, logp = policy_forward(g, True)
        loss = logp.mean()
        if coprs:
            prior, dec = prior_decoder(hidden[:, seq - 2])  # e_conc at <REF_POS>
            losses = seg.seg_loss(prior.dense, dec["mask_logits"], gt, torch.ones_like(gt))
            loss = loss + sum(v for k, v in losses.items() if k.startswith("loss"))
        loss.backward()

    first, last = prompt - 1, prompt - 1 + resp_tokens - 1
    with torch.no_grad():
        v_fwd = _count(lambda: vision(False))
        steps = resp_tokens * (_count(lambda: decode_step(first)) +
                               _count(lambda: decode_step(last))) // 2
        rollout_flops = v_fwd + _count(prefill) + steps  # the image is encoded once
        # the g rows of a group share their image: the vision tower runs once for them
        reference = v_fwd + _count(lambda: policy_forward(g, False))
    v_train = _count(lambda: vision(True))
    return {
        "rollout": rollout_flops,
        "reward_coprs": _count(reward),
        "reward_readout_forward": reference,  # the policy forward the reward used to need
        "reference": reference,
        "actor_policy_only": v_train + _count(lambda: actor(False)),
        "actor_coprs": v_train + _count(lambda: actor(True)),
        # what encoding the image once per row (g times) added to reference + actor
        "vision_per_row_extra": (g - 1) * (v_fwd + v_train),
    }


#: --quick: tiny widths, so the counting path runs in seconds (the numbers mean nothing)
QUICK_MODEL = dict(
    policy=dict(arch=dict(
        text_config=dict(vocab_size=1024, hidden_size=128, intermediate_size=256,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling=dict(type="mrope", mrope_section=[4, 6, 6])),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_heads=4,
                           out_hidden_size=128, depth=4, fullatt_block_indexes=[3]))),
    vision_backbone=dict(arch="tiny", checkpoint=None),
    prior=dict(d_q=64, d_k=64, attn_dim=64, num_heads=4),
    decoder=dict(preset="tiny", sam_checkpoint=None),
)


def count_step_flops(g: int = 8, image_tokens: int = 900, text_tokens: int = 70,
                     resp_tokens: int = 256, config=CONFIG_3B,
                     overrides: dict | None = None, extrapolate: bool = True) -> dict:
    """Per-phase FLOPs of one CoPRS step and of a policy-only GRPO step (see module doc).

    ``extrapolate=False`` counts only the smallest layer-reduced model (smoke tests)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    if overrides:
        cfg.merge_from_dict(dict(model=overrides))
    base = cfg.model.to_dict()
    arch = base["policy"]["arch"]
    n_text = arch["text_config"]["num_hidden_layers"]
    full = list(arch["vision_config"]["fullatt_block_indexes"])
    n_full, n_window = len(full), arch["vision_config"]["depth"] - len(full)

    def reduced(text_layers: int, window: int, full_blocks: int) -> dict:
        cfg = copy.deepcopy(base)
        a = cfg["policy"]["arch"]
        a["text_config"]["num_hidden_layers"] = text_layers
        a["vision_config"]["depth"] = window + full_blocks
        a["vision_config"]["fullatt_block_indexes"] = list(range(window, window + full_blocks))
        return _phase_flops(cfg, g, image_tokens, text_tokens, resp_tokens)

    base_f = reduced(1, 1, 1)
    if not extrapolate:
        n_text, n_window, n_full = 1, 1, 1
    zero = dict.fromkeys(base_f, 0)
    per_text, per_window, per_full = (
        {k: v - base_f[k] for k, v in reduced(*layers).items()} if extrapolate else zero
        for layers in ((2, 1, 1), (1, 2, 1), (1, 1, 2)))
    f = {k: base_f[k] + (n_text - 1) * per_text[k] + (n_window - 1) * per_window[k]
         + (n_full - 1) * per_full[k] for k in base_f}
    policy_only = f["rollout"] + f["reference"] + f["actor_policy_only"]
    coprs = f["rollout"] + f["reward_coprs"] + f["reference"] + f["actor_coprs"]
    before = coprs + f["reward_readout_forward"]
    return dict(
        sizes=dict(group=g, image_tokens=image_tokens, prompt_text_tokens=text_tokens,
                   response_tokens=resp_tokens, text_layers=n_text,
                   vision_blocks=dict(window=n_window, full=n_full)),
        tflops=dict(rollout=f["rollout"] / 1e12, reference=f["reference"] / 1e12,
                    actor_policy_only=f["actor_policy_only"] / 1e12,
                    actor_coprs=f["actor_coprs"] / 1e12, reward_coprs=f["reward_coprs"] / 1e12,
                    readout_forward=f["reward_readout_forward"] / 1e12,
                    policy_only_step=policy_only / 1e12, coprs_step=coprs / 1e12),
        coprs_over_policy_only_flops=coprs / policy_only,
        coprs_over_policy_only_flops_training_phases=(
            (f["reward_coprs"] + f["reference"] + f["actor_coprs"])
            / (f["reference"] + f["actor_policy_only"])),
        coprs_over_policy_only_flops_with_readout_forward=before / policy_only,
        # the CoPRS step if reference and actor encoded the image once per row, not per group
        coprs_vision_per_row_over_per_group=(coprs + f["vision_per_row_extra"]) / coprs,
    )


# --------------------------------------------------------------------------- (b) wall clock
class _ComputeClock:
    """Splits wall time into model computation and the rest.

    Regions nest: time goes to the innermost open region, so data preparation called from
    inside a compute region (prompt tokenisation inside ``generate``) still counts as overhead.
    """

    def __init__(self) -> None:
        self.stack: list[bool] = []
        self.mark = time.perf_counter()
        self.total = {True: 0.0, False: 0.0}

    def _switch(self) -> None:
        now = time.perf_counter()
        self.total[bool(self.stack and self.stack[-1])] += now - self.mark
        self.mark = now

    def enter(self, compute: bool = True) -> None:
        self._switch()
        self.stack.append(compute)

    def exit(self) -> None:
        self._switch()
        self.stack.pop()

    @property
    def compute(self) -> float:
        self._switch()
        return self.total[True]

    def wrap(self, fn, compute: bool = True):
        def wrapped(*args, **kwargs):
            self.enter(compute)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        return wrapped

    def watch(self, module) -> None:
        module.register_forward_pre_hook(lambda *_: self.enter(True))
        module.register_forward_hook(lambda *_: self.exit())


def measure_tiny_step(iters: int, warmup: int, group: int, batch: int, new_tokens: int) -> dict:
    """Phase seconds and overhead fraction of GRPO iterations of the tiny CPU config.

    Model computation = the sampling loop, forwards of the policy's language model and output
    head (the reference policy is a copy and inherits the hooks), the vision backbone, prior,
    decoder, token log-probabilities, GRPO / KL / segmentation losses, the backward and the
    optimiser step. Everything else in an iteration (data loading, prompt tokenisation and
    image preprocessing, reward arithmetic, advantages, bookkeeping, hooks, logging) is
    overhead.
    """
    from coprs.utils import register_all_modules

    register_all_modules()
    scratch = tempfile.TemporaryDirectory(prefix="coprs_bench_train_", ignore_cleanup_errors=True)
    with scratch as work:
        return _measure(Path(work), iters, warmup, group, batch, new_tokens)


def _measure(work: Path, iters: int, warmup: int, group: int, batch: int,
             new_tokens: int) -> dict:
    import statistics

    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from coprs.engine import drop_validation

    cfg = Config.fromfile(str(TINY_CONFIG))
    drop_validation(cfg)
    cfg.work_dir = str(work)
    cfg.log_level = "WARNING"
    # mmengine keeps one visualizer / logger per name: this run's own, not an earlier Runner's
    cfg.experiment_name = work.name
    cfg.visualizer.name = f"visualizer_{work.name}"
    cfg.model.feature_cache = dict(root=str(work / "feature_cache"), dtype="float32")
    cfg.train_dataloader.batch_size = batch
    cfg.train_cfg.stages = [dict(kind="grpo", iters=warmup + iters)]
    cfg.train_cfg.group_size = group
    cfg.train_cfg.rollout_engine.max_new_tokens = new_tokens
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=10 ** 9)
    cfg.param_scheduler = []
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h["type"] != "PlainCheckpointStateHook"]
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if hasattr(runner.model, "module") else runner.model

    import coprs.rl.grpo as grpo
    import coprs.rollout.hf as hf_engine

    clock = _ComputeClock()
    policy = model.policy.model
    # the vision tower too: shared images are encoded before the language model's forward
    for m in (policy.model, policy.model.visual, policy.lm_head, model.vision_backbone,
              model.prior, model.decoder, model.seg_loss):
        clock.watch(m)
    patched = [(hf_engine, "sample_with_cache")] + [
        (grpo, n) for n in ("policy_loss", "kl_penalty", "agg_loss")]
    originals = [getattr(mod, n) for mod, n in patched]
    for (mod, n), fn in zip(patched, originals):
        setattr(mod, n, clock.wrap(fn))
    model.policy.response_logprobs = clock.wrap(model.policy.response_logprobs)
    model.policy.encode_prompts = clock.wrap(model.policy.encode_prompts, compute=False)
    records: list[dict] = []

    class Recorder(Hook):
        priority = "LOWEST"  # after the logger: the iteration is over

        def before_train(self, runner) -> None:
            ow = runner.optim_wrapper
            ow.backward = clock.wrap(_phase(ow.backward, "backward"))
            ow.step = clock.wrap(_phase(ow.step, "optimizer"))
            self.last, self.compute = time.perf_counter(), clock.compute
            self.fetched = self.last

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            self.fetched = time.perf_counter()  # the loop has just fetched the batch

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            now = time.perf_counter()
            phases = {k[len("time/"):]: float(v) for k, v in (outputs or {}).items()
                      if k.startswith("time/")}
            phases.update(_PHASES)
            _PHASES.clear()
            compute = clock.compute
            records.append(dict(step=now - self.last, compute=compute - self.compute,
                                data=self.fetched - self.last, **phases))
            self.last, self.compute = now, compute

    runner.register_hook(Recorder())
    try:
        runner.train()
    finally:
        for (mod, n), fn in zip(patched, originals):
            setattr(mod, n, fn)
    kept = records[warmup:]
    step = sum(r["step"] for r in kept)
    compute = sum(r["compute"] for r in kept)
    keys = ("data", "rollout", "reward", "reference", "actor", "backward", "optimizer")
    phase_seconds = {k: statistics.median(r.get(k, 0.0) for r in kept) for k in keys}
    phase_seconds["step"] = statistics.median(r["step"] for r in kept)
    phase_seconds["compute"] = statistics.median(r["compute"] for r in kept)
    return dict(
        tiny=dict(group=group, prompts=batch, new_tokens=new_tokens, iters=len(kept)),
        phase_seconds=phase_seconds,
        overhead_fraction=1.0 - compute / step,
    )


_PHASES: dict[str, float] = {}


def _phase(fn, name: str):
    def timed_fn(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _PHASES[name] = _PHASES.get(name, 0.0) + time.perf_counter() - t0

    return timed_fn


def parse_args(argv: list[str] | None = None):
    p = base_parser("Cost of one CoPRS GRPO + segmentation step (FLOPs; tiny wall clock).")
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument("--skip-wallclock", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with configured(args):
        return run(args)


def run(args) -> dict:
    result = dict(benchmark="train_step", quick=args.quick, machine=machine())
    if not args.skip_flops:
        t0 = time.perf_counter()
        if args.quick:
            result.update(count_step_flops(g=2, image_tokens=16, text_tokens=8, resp_tokens=4,
                                           overrides=QUICK_MODEL, extrapolate=False))
        else:
            result.update(count_step_flops())
        result["flops_count_seconds"] = time.perf_counter() - t0
    if not args.skip_wallclock:
        result.update(measure_tiny_step(iters=1 if args.quick else 6,
                                        warmup=0 if args.quick else 1,
                                        group=2 if args.quick else 8,
                                        batch=1 if args.quick else 4,
                                        new_tokens=4 if args.quick else 96))
    return emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
