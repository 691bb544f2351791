"""The default rollout engine: one shared prompt prefill per group, then a lean sampling loop."""

from __future__ import annotations

import contextlib
import inspect
from types import SimpleNamespace

import torch
from PIL import Image
from transformers.cache_utils import DynamicLayer

from ..registry import ROLLOUT_ENGINES
from ..structures import Rollout
from .base import BaseRolloutEngine

__all__ = ["HFRolloutEngine"]


@ROLLOUT_ENGINES.register_module()
class HFRolloutEngine(BaseRolloutEngine):
    """Samples G responses per prompt with transformers, encoding each image once per group.

    With ``share_prefill`` (default) the B prompts are run through the model once — the vision
    tower encodes each image once and the prompt's key/value cache is computed once (SPEC §7:
    naive G-fold generation spends most of its time re-encoding and re-prefilling). With sdpa
    attention that cache stays stored once and the G rows attend to it together
    (:class:`_GroupCacheLayer`); otherwise it is repeated G times. Sampling runs in a loop over
    the language model that applies transformers' own logits processors (the model's generation
    config merged with the policy's settings) and draws with ``torch.multinomial`` exactly as
    ``generate`` does, so the tokens equal naive ``generate(num_return_sequences=G)`` with the
    same seed.

    The loop also keeps, for each rollout, the last-layer hidden state at the first special token
    the policy wrote (``Rollout.hidden``; the state is computed when that token is fed back in),
    so the reward phase can decode masks without a second forward over prompt + response.

    Args:
        share_prefill: share the prompt prefill across the group (False: naive generation).
        capture_hidden: keep the special token's hidden state on each rollout.
        temperature, top_p, top_k, max_new_tokens, min_new_tokens, greedy: see
            :class:`BaseRolloutEngine` (``greedy``: ``policy.generate``'s greedy decoding).
    """

    def __init__(self, share_prefill: bool = True, capture_hidden: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.share_prefill = share_prefill
        self.capture_hidden = capture_hidden

    @torch.no_grad()
    def generate(self, policy, images: list[Image.Image], instructions: list[str],
                 num_samples: int) -> list[list[Rollout]]:
        if self.greedy:  # evaluation: the policy's own greedy decoding
            extra = {"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}
            return policy.generate(images, instructions, num_samples=num_samples,
                                   max_new_tokens=self.max_new_tokens, **extra)
        model = policy.model
        was_training = model.training
        model.eval()
        try:
            batch = policy.encode_prompts(images, instructions)
            kwargs = policy.generation_kwargs(True, self.temperature, self.top_p, self.top_k,
                                              self.max_new_tokens)
            if self.min_new_tokens:
                kwargs["min_new_tokens"] = self.min_new_tokens
            prompt_len = batch["input_ids"].shape[1]
            if not self.share_prefill or prompt_len < 2:
                out = model.generate(**batch, num_return_sequences=num_samples, **kwargs)
                return policy.rollouts_from_generate(out, prompt_len, num_samples,
                                                     with_logprobs=True)
            prefill = self._shared_prefill(model, batch, num_samples)
            capture = getattr(policy, "special_token_id", None) if self.capture_hidden else None
            out, hidden = sample_with_cache(model, prefill, kwargs, capture)
            groups = policy.rollouts_from_generate(out, prompt_len, num_samples,
                                                   with_logprobs=True)
            for r, h in zip((r for g in groups for r in g), hidden):
                r.hidden = h
            return groups
        finally:
            model.train(was_training)

    @staticmethod
    def _shared_prefill(model, batch: dict, g: int) -> dict:
        """Prefill the prompts minus their last token once; the cache then serves G rows each.

        Left padding puts every prompt's last token in the last column, so one slice serves the
        whole batch; sampling then feeds that last token itself. With sdpa attention the
        prompt's keys and values stay stored once (:class:`_GroupCacheLayer`); otherwise they
        are repeated G times.
        """
        pre = model(
            input_ids=batch["input_ids"][:, :-1],
            attention_mask=batch["attention_mask"][:, :-1],
            mm_token_type_ids=batch["mm_token_type_ids"][:, :-1],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            use_cache=True,
        )
        # transformers >= 5.24 names the cache `cache` (reading `past_key_values` warns)
        cache = pre["cache"] if "cache" in pre else pre.past_key_values
        layers = getattr(cache, "layers", None)
        if (layers and model.config.text_config._attn_implementation == "sdpa"
                and all(type(layer) is DynamicLayer for layer in layers)):
            for i, layer in enumerate(layers):
                layers[i] = _GroupCacheLayer(layer.keys, layer.values, g)
        else:
            cache.batch_repeat_interleave(g)
        model.model.rope_deltas = model.model.rope_deltas.repeat_interleave(g, 0)
        return dict(
            input_ids=batch["input_ids"].repeat_interleave(g, 0),
            attention_mask=batch["attention_mask"].repeat_interleave(g, 0),
            mm_token_type_ids=batch["mm_token_type_ids"].repeat_interleave(g, 0),
            cache=cache,
        )


class _GroupCacheLayer(DynamicLayer):
    """A cache layer for G samples of each of B prompts.

    The prompts' keys and values (B x KV x Lp x D) are stored once; the tokens fed while
    sampling go, per row (B·G rows, group-major), into reserved room that doubles when full (no
    copy of the whole cache per step, as ``torch.cat`` in ``DynamicLayer`` does). ``update``
    returns only the rows' own keys and values, tagged with this layer, and
    :func:`_group_attention` attends over prompt and own tokens together: the prompt's keys are
    read once per prompt instead of once per row. Only valid while that attention is installed
    (inside :func:`sample_with_cache`).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, group: int,
                 room: int = 256) -> None:
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.prefix_keys, self.prefix_values, self.group = keys, values, group
        b, kv, _, d = keys.shape
        self._k = keys.new_empty(b * group, kv, room, d)
        self._v = values.new_empty(b * group, kv, room, d)
        self._n = 0

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self._n

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, m = self._n, key_states.shape[-2]
        if n + m > self._k.shape[-2]:
            grow = 2 * (n + m)
            self._k = torch.cat([self._k[:, :, :n], self._k.new_empty(
                *self._k.shape[:2], grow - n, self._k.shape[-1])], dim=2)
            self._v = torch.cat([self._v[:, :, :n], self._v.new_empty(
                *self._v.shape[:2], grow - n, self._v.shape[-1])], dim=2)
        self._k[:, :, n:n + m] = key_states
        self._v[:, :, n:n + m] = value_states
        self._n = n + m
        keys, values = self._k[:, :, :self._n], self._v[:, :, :self._n]
        keys._coprs_group_layer = self
        return keys, values


def _group_attention(sdpa):
    """sdpa that understands :class:`_GroupCacheLayer` keys (one query token per row) and
    passes everything else to ``sdpa``."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                  **kwargs):
        layer = getattr(key, "_coprs_group_layer", None)
        if layer is None:
            return sdpa(module, query, key, value, attention_mask, dropout=dropout,
                        scaling=scaling, **kwargs)
        if query.shape[2] != 1:
            raise ValueError("group-shared cache layers take one new token per row")
        pk, pv, g = layer.prefix_keys, layer.prefix_values, layer.group
        n, h, _, d = query.shape
        b, kv, lp, _ = pk.shape
        rep, ls = h // kv, key.shape[2]
        q = query.reshape(n, kv, rep, d)  # query head kv·rep + r reads key head kv
        qp = q.view(b, g, kv, rep, d).transpose(1, 2).reshape(b, kv, g * rep, d)
        sp = (qp @ pk.transpose(-1, -2)).view(b, kv, g, rep, lp).transpose(1, 2)
        s = torch.cat([sp.reshape(n, kv, rep, lp), q @ key.transpose(-1, -2)], dim=-1)
        s = s.float() * (scaling if scaling is not None else d ** -0.5)  # n x kv x rep x L
        if attention_mask is not None:  # n x 1 x 1 x L
            m = attention_mask.reshape(n, 1, 1, lp + ls)
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
        p = torch.softmax(s, dim=-1).to(query.dtype)
        pp, ps = p.split([lp, ls], dim=-1)
        pp = pp.reshape(b, g, kv, rep, lp).transpose(1, 2).reshape(b, kv, g * rep, lp)
        op = (pp @ pv).view(b, kv, g, rep, d).transpose(1, 2).reshape(n, kv, rep, d)
        out = (op + ps @ value).reshape(n, h, 1, d).transpose(1, 2)  # n x 1 x h x d
        return out.contiguous(), None

    return attention


@contextlib.contextmanager
def _group_attention_installed(cache):
    """Route sdpa through :func:`_group_attention` while ``cache`` has group layers."""
    if not any(isinstance(layer, _GroupCacheLayer) for layer in getattr(cache, "layers", [])):
        yield
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as fns

    local = fns._local_mapping
    had, before = "sdpa" in local, local.get("sdpa")
    fns["sdpa"] = _group_attention(fns["sdpa"])
    try:
        yield
    finally:
        if had:
            local["sdpa"] = before
        else:
            del fns["sdpa"]


def cache_keyword(module) -> str:
    """The name under which ``module.forward`` takes the key/value cache: ``cache`` from
    transformers 5.24, ``past_key_values`` before (vLLM 0.33 pins transformers < 5.21). An
    unknown keyword would vanish into ``**kwargs`` and every step would run without context."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sampling_parts(model, input_ids: torch.Tensor, gen_kwargs: dict):
    """transformers' generation config (model defaults merged with ``gen_kwargs``) and the
    logits processors ``generate`` would build from it, so the lean loop samples from exactly
    the same distribution. (The policy keeps only the token ids of a checkpoint's generation
    config, so no repetition penalty of a checkpoint gets in.)"""
    config, _ = model._prepare_generation_config(None, **gen_kwargs)
    model._prepare_special_tokens(config, True, device=input_ids.device)
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=input_ids.shape[1],
        encoder_input_ids=input_ids, prefix_allowed_tokens_fn=None, logits_processor=None,
        device=input_ids.device, model_kwargs={})
    return config, processors


def sample_with_cache(model, prefill: dict, gen_kwargs: dict, capture_id: int | None = None):
    """Sample continuations of prompts whose cache holds all but their last token.

    Mirrors transformers' ``_sample`` (same processors, same ``multinomial`` draw, finished rows
    padded, stop at the end tokens) without its per-step bookkeeping.

    Args:
        model: a ``Qwen2_5_VLForConditionalGeneration`` whose ``model.rope_deltas`` match the
            N rows of ``prefill``.
        prefill: ``input_ids`` and ``attention_mask`` (N x L, left padded) and ``cache`` (the
            first L - 1 positions), as from :meth:`HFRolloutEngine._shared_prefill`.
        gen_kwargs: ``generate`` keyword arguments (``do_sample=True``).
        capture_id: keep the last-layer hidden state at the first occurrence of this token in
            each response (None: keep nothing).

    Returns:
        (``out`` with ``sequences`` N x (L + T) and ``scores`` (T tensors N x V), like
        ``generate``'s output; N hidden states of shape D, or None where the token was not
        written).
    """
    ids, mask, cache = prefill["input_ids"], prefill["attention_mask"], prefill["cache"]
    config, processors = _sampling_parts(model, ids, gen_kwargs)
    if not config.do_sample or config.num_beams != 1:
        raise ValueError("sample_with_cache draws samples: pass do_sample=True, num_beams=1")
    n, device = ids.shape[0], ids.device
    stop = config._eos_token_tensor
    pad = config._pad_token_tensor if config._pad_token_tensor is not None else stop[0]
    max_new = config.max_new_tokens
    # generate drops an all-ones mask (no padding): attention then needs no mask at all
    mask = None if bool((mask == 1).all()) else mask
    # text position of each row's last prompt token: real tokens before it + the mrope offset
    pos = (prefill["attention_mask"].long().sum(-1, keepdim=True) - 1
           + model.model.rope_deltas.to(device))  # N x 1
    prefill_pos = pos
    unfinished = torch.ones(n, dtype=torch.long, device=device)
    seqs, cur, scores = ids, ids[:, -1:], []
    hidden: list[torch.Tensor | None] = [None] * n
    pending = torch.zeros(n, dtype=torch.bool, device=device)  # special token sampled, not fed
    lm = model.model
    cache_kw = cache_keyword(lm)
    with _group_attention_installed(cache):
        for _ in range(max_new):
            out = lm(input_ids=cur, attention_mask=mask, position_ids=pos[None],
                     **{cache_kw: cache}, use_cache=True)
            if pending.any():
                _take(hidden, pending, out.last_hidden_state[:, -1])
            logits = model.lm_head(out.last_hidden_state)[:, -1].to(dtype=torch.float32)
            step_scores = processors(seqs, logits)
            scores.append(step_scores)
            nxt = torch.multinomial(torch.softmax(step_scores, dim=-1), num_samples=1).squeeze(1)
            nxt = nxt * unfinished + pad * (1 - unfinished)
            seqs = torch.cat([seqs, nxt[:, None]], dim=-1)
            if capture_id is not None:
                pending = (nxt == capture_id) & (unfinished > 0) & _not_taken(hidden, device)
            unfinished = unfinished & ~torch.isin(nxt, stop)
            if unfinished.max() == 0:
                break
            cur, pos = nxt[:, None], pos + 1
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(n, 1)], dim=-1)
        if pending.any():  # special tokens drawn at the last step: one more forward reads them
            done = seqs.shape[1] - ids.shape[1]  # tokens generated
            last_pos = prefill_pos + done
            full = None if mask is None else torch.cat(
                [prefill["attention_mask"], mask.new_ones(n, done)], dim=-1)
            out = lm(input_ids=seqs[:, -1:], attention_mask=full, position_ids=last_pos[None],
                     **{cache_kw: cache}, use_cache=True)
            _take(hidden, pending, out.last_hidden_state[:, -1])
    return SimpleNamespace(sequences=seqs, scores=tuple(scores)), hidden


def _take(hidden: list, rows: torch.Tensor, states: torch.Tensor) -> None:
    for i in rows.nonzero().flatten().tolist():
        hidden[i] = states[i].clone()


def _not_taken(hidden: list, device) -> torch.Tensor:
    return torch.tensor([h is None for h in hidden], dtype=torch.bool, device=device)
