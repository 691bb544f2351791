"""The trainable parts of a LoRA policy besides the LoRA matrices: the rows of the tokens coprs
adds (``<think>``, ``</think>``, ``<REF_POS>``) in the input embedding and the LM head, and the
merge of both kinds into plain weights.

A real Qwen2.5-VL has spare, untrained rows for tokens added to its tokenizer; LoRA on the
attention projections trains neither matrix, so without these rows the ``<REF_POS>`` embedding
(the input whose hidden state becomes the prior's query) and the logits that end a response
would stay as the checkpoint left them. LISA trains all of ``embed_tokens`` and ``lm_head`` for
the same reason; here only the added tokens' rows train (peft's trainable tokens).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["add_token_rows", "as_adapter", "is_adapter_weight", "is_token_row", "lora_config",
           "merged_adapter_weight", "merged_weights", "token_rows_moved"]

#: name parts of the tensors a LoRA policy trains and keeps per adapter
ADAPTER_MARKERS = ("lora_", "trainable_tokens_delta")


def is_adapter_weight(name: str, adapter: str | None = None) -> bool:
    """Whether parameter or state-dict key ``name`` is an adapter's (a LoRA matrix or a trained
    token row), not a base weight; with ``adapter``, one of that adapter's (peft names LoRA
    matrices ``….lora_A.<adapter>.weight`` and token rows ``….trainable_tokens_delta.<adapter>``).
    """
    if not any(marker in name for marker in ADAPTER_MARKERS):
        return False
    return adapter is None or f".{adapter}." in name or name.endswith(f".{adapter}")


def is_token_row(name: str) -> bool:
    """Whether parameter or state-dict key ``name`` is trained token rows (any adapter's)."""
    return ".trainable_tokens_delta." in name


def lora_config(policy):
    """The peft ``LoraConfig`` of a LoRA policy's trained adapter (``r``, ``lora_alpha``,
    ``lora_dropout``, ``target_modules``), or None for a policy without adapters."""
    peft_config = getattr(getattr(policy, "model", None), "peft_config", None) or {}
    return peft_config.get("default")


def as_adapter(name: str, source: str, target: str) -> str:
    """Adapter weight ``name`` of adapter ``source`` under the name of adapter ``target``."""
    if name.endswith(f".{source}"):
        return f"{name[:-len(source)]}{target}"
    return name.replace(f".{source}.", f".{target}.")


@functools.cache
def _token_rows_layer_cls():
    """The token-rows layer class (built on first use: importing peft takes seconds)."""
    from peft.tuners.trainable_tokens import TrainableTokensLayer

    class TokenRowsLayer(TrainableTokensLayer):
        """peft's trainable-token layer (one set of rows per adapter, switched, disabled and
        tied like peft's) with a forward that never copies the whole weight: the embedding
        looks up the base rows and replaces those of the trained tokens, and the LM head
        computes the base logits and replaces the trained tokens' columns. peft's own forward
        builds a full copy of the matrix each call (a gigabyte for a 7B policy's ``lm_head`` in
        bf16) and, for the head, the full weight gradient."""

        def _rows(self, adapter: str, device: torch.device) -> torch.Tensor:
            """The adapter's token ids as a tensor on ``device``, made once (the forward runs
            at every generated token; the ids are fixed when the layer is built)."""
            cache = self.__dict__.setdefault("_rows_on", {})
            if (adapter, device) not in cache:
                cache[adapter, device] = torch.as_tensor(self.token_indices[adapter],
                                                         device=device)
            return cache[adapter, device]

        def forward_adapters(self, x, active_adapters, *args, **kwargs):
            if self.disable_adapters or not active_adapters or self.merged:
                return super().forward_adapters(x, active_adapters, *args, **kwargs)
            (adapter,) = active_adapters  # the policy switches one adapter at a time
            base = self.base_layer(x, *args, **kwargs)
            rows = self._rows(adapter, base.device)
            delta = self.trainable_tokens_delta[adapter]
            if isinstance(self.base_layer, nn.Embedding):
                hit = x.unsqueeze(-1) == rows  # ... x k: which trained token each id is
                picked = hit.to(delta.dtype) @ delta
                return torch.where(hit.any(-1, keepdim=True), picked.to(base.dtype), base)
            if isinstance(self.base_layer, nn.Linear):  # an LM head (maybe tied)
                own = F.linear(x, delta.to(x.dtype))
                return base.index_copy(base.dim() - 1, rows, own.to(base.dtype))
            raise ValueError(f"trained token rows wrap a {type(self.base_layer).__name__}, "
                             "not an embedding or a linear LM head")

    return TokenRowsLayer


def add_token_rows(model: nn.Module, token_ids: list[int], adapters: tuple[str, ...]) -> None:
    """Make the rows ``token_ids`` of ``model``'s input embedding and LM head trainable, one
    copy per adapter name in ``adapters`` (each starting as the base rows; the first active).
    When the two matrices share one weight (``tie_word_embeddings``), the head uses the
    embedding's rows, so that the merged export, tied again on load, is the trained model.

    A ``ValueError`` when one of the two modules already carries an adapter (LoRA on
    ``embed_tokens`` or ``lm_head``): the rows would be trained twice over."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    cls = _token_rows_layer_cls()
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {m: n for n, m in model.named_modules() if m is inp or m is out}
    for m in (inp, out):
        if isinstance(m, BaseTunerLayer):
            raise ValueError(
                f"model.policy.lora.target_modules puts LoRA on {names[m]}, whose added-token "
                "rows model.policy.lora.trainable_tokens also trains: leave embed_tokens and "
                "lm_head out of target_modules, or set trainable_tokens=False")
    tied = out is not None and inp.weight is out.weight
    ids = [int(i) for i in token_ids]
    wrapped = {}
    for m in (inp, out):
        if m is None:
            continue
        layer = cls(m, adapters[0], tied_adapter=wrapped.get(inp) if tied else None)
        for adapter in adapters:
            layer.update_layer(adapter, token_indices=ids,
                               tied_adapter=wrapped.get(inp) if tied else None)
        layer._active_adapter = [adapters[0]]
        wrapped[m] = layer
        parent_name, _, leaf = names[m].rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, layer)


def merged_adapter_weight(layer, weight: torch.Tensor, name: str) -> torch.Tensor:
    """``weight`` (the base weight of peft tuner ``layer``) with its active adapters merged in,
    as a new tensor: a LoRA layer's deltas (as peft's ``merge`` computes them), a token-rows
    layer's rows in place of the base rows; ``weight`` itself when the adapters are merged
    already or disabled. ``name`` (the layer's) is for the error on LoRA variants it does not
    merge."""
    if layer.merged or layer.disable_adapters:
        return weight
    if hasattr(layer, "trainable_tokens_delta"):
        merged = weight
        for adapter in layer.active_adapters:
            rows = torch.as_tensor(layer.token_indices[adapter], device=weight.device)
            merged = merged.index_copy(0, rows, layer.trainable_tokens_delta[adapter].to(weight))
        return merged
    merged = weight
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A and adapter not in getattr(layer, "lora_embedding_A", {}):
            continue
        if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(
                adapter):
            raise ValueError(
                f"coprs merges plain LoRA adapters only; {name} uses a LoRA variant (e.g. DoRA) "
                "or lora_bias")
        merged = merged + layer.get_delta_weight(adapter)
    return merged.to(weight.dtype)


def merged_weights(model: nn.Module, items):
    """``(name, tensor)`` pairs of ``items`` (``model``'s weights, e.g. its ``state_dict()``
    items or :func:`coprs.engine.fsdp.plain_state`'s) with ``model``'s active adapters merged in,
    under the names without peft's: adapter tensors are left out, and each adapted weight is a
    new merged tensor (:func:`merged_adapter_weight`), made when it is reached, under its base
    layer's name (``….q_proj.weight`` for ``….q_proj.base_layer.weight``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    layers = {clean_tensor_name(name): m for name, m in model.named_modules()
              if isinstance(m, BaseTunerLayer)}
    for name, tensor in items:
        if is_adapter_weight(name):
            continue
        prefix, sep, leaf = name.rpartition(".base_layer.")
        if not sep:
            yield name, tensor
            continue
        if leaf == "weight" and prefix in layers:
            tensor = merged_adapter_weight(layers[prefix], tensor, prefix)
        yield f"{prefix}.{leaf}", tensor


def token_rows_moved(model: nn.Module, adapter: str) -> bool:
    """Whether any token-rows layer of ``model`` holds rows for ``adapter`` that differ from the
    base rows it started from (peft keeps those as ``trainable_tokens_original``)."""
    cls = _token_rows_layer_cls()
    for m in model.modules():
        if isinstance(m, cls) and m.tied_adapter is None and adapter in m.trainable_tokens_delta:
            delta = m.trainable_tokens_delta[adapter]
            if not torch.equal(delta.detach(), m.trainable_tokens_original[adapter].to(delta)):
                return True
    return False
