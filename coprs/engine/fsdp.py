"""FSDP helpers for the GRPO + segmentation loop (mmengine ``FlexibleRunner`` + ``FSDPStrategy``).

Under FSDP a parameter is gathered only while the forward of the FSDP unit that owns it runs.
The training step (``train_step`` → the root unit's forward) is such a forward; the rest of a
GRPO iteration is not: sampling rollouts, decoding their masks for the reward, the reference
policy and the weight push to vLLM call the policy's parts directly. Those run inside
:func:`full_params`, and the reference is a plain copy made by :func:`plain_copy`.

Wrap each transformer block as its own unit (:func:`wrap_layers`, the usual recipe for
Hugging Face models): the embeddings, LM head, prior and decoder then stay in the root unit,
which is gathered for the whole training forward, so the policy may call its LM head apart
from the language model.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

__all__ = ["DEFAULT_LAYER_NAMES", "wrap_layers", "is_fsdp", "full_params", "plain_state",
           "plain_copy"]

#: Qwen2.5-VL's text decoder layers and vision blocks, and SAM's image-encoder blocks
DEFAULT_LAYER_NAMES = ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Block")


def wrap_layers(module: nn.Module, recurse: bool, nonwrapped_numel: int,
                layer_names: tuple[str, ...] | list[str] = DEFAULT_LAYER_NAMES) -> bool:
    """FSDP auto-wrap policy: one unit per trainable module whose class name is in
    ``layer_names``.

    Config use (mmengine builds it with ``functools.partial``)::

        strategy = dict(type='FSDPStrategy', model_wrapper=dict(
            auto_wrap_policy=dict(type='coprs.engine.fsdp.wrap_layers')))
    """
    if recurse:
        return True
    # a frozen block stays in its parent's unit: FSDP does not gather all-frozen units in
    # summon_full_params (their weights would stay flat shards)
    return (type(module).__name__ in tuple(layer_names)
            and any(p.requires_grad for p in module.parameters()))


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` is, or contains, an FSDP unit."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return any(isinstance(m, FSDP) for m in model.modules())


@contextlib.contextmanager
def full_params(model: nn.Module, writeback: bool = False):
    """Gather every FSDP-sharded parameter of ``model`` for the block (read-only unless
    ``writeback``: then changes made in the block go back to the shards). A no-op for a model
    without FSDP units."""
    if not is_fsdp(model):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(model, writeback=writeback, recurse=True):
        yield


def plain_state(module: nn.Module, buffers: bool = True) -> dict[str, torch.Tensor]:
    """``module``'s parameters (and buffers) under their names without FSDP's wrapper prefixes.

    Inside :func:`full_params` the tensors are the full ones; outside, FSDP-owned ones are
    shards. Unlike ``state_dict()`` this runs no FSDP state-dict hooks (no collectives) and
    includes non-persistent buffers (e.g. rotary frequencies).
    """
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    items = list(module.named_parameters(remove_duplicate=False))  # tied weights under each name
    if buffers:
        items += list(module.named_buffers(remove_duplicate=False))
    return {clean_tensor_name(k): v for k, v in items}


def plain_copy(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen copy of ``module`` with its current weights and no FSDP units.

    Without FSDP this is ``copy.deepcopy``. With FSDP (call inside :func:`full_params`), the
    module's class is rebuilt from its ``config`` on the meta device (a Hugging Face model),
    materialised and filled with the gathered weights. ``dtype`` (default: the module's) is the
    dtype of the copy's floating-point parameters; buffers (e.g. rotary frequencies) keep theirs.
    """
    import copy

    if not is_fsdp(module):
        copy_ = copy.deepcopy(module)
        if dtype is not None:
            for p in copy_.parameters():
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
        return copy_.eval().requires_grad_(False)
    config = getattr(module, "config", None)
    if config is None or not hasattr(type(module), "_from_config"):
        raise TypeError(f"plain_copy of an FSDP-wrapped {type(module).__name__} needs a "
                        "Hugging Face model (a class with _from_config and a config)")
    state = plain_state(module)
    device = next(iter(state.values())).device
    dtype = dtype or next(module.parameters()).dtype
    with torch.device("meta"):
        copy_ = type(module)._from_config(config, dtype=dtype)
    copy_ = copy_.to_empty(device=device)
    if hasattr(copy_, "tie_weights"):  # e.g. a tied LM head, as in the source
        copy_.tie_weights()
    with torch.no_grad():
        for name, tensor in [*copy_.named_parameters(), *copy_.named_buffers()]:
            source = state.get(name)
            if source is None or source.shape != tensor.shape:
                raise RuntimeError(
                    f"plain_copy: '{name}' {tuple(tensor.shape)} has no gathered counterpart "
                    f"of that shape ({None if source is None else tuple(source.shape)}); call "
                    "it inside full_params(model) on the FSDP root")
            tensor.copy_(source)
    return copy_.eval().requires_grad_(False)
