"""Qwen2.5-VL as a reasoning-segmentation policy (CoPRS paper Sec. 3.1)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from PIL import Image

from ..registry import POLICIES
from ..structures import PolicyOutput, ResponseForward, Rollout
from ..utils import coprs_home, is_meta_build
from .adapters import (
    add_token_rows,
    as_adapter,
    is_adapter_weight,
    merged_weights,
    token_rows_moved,
)
from .base import BasePolicy
from .prompts import build_prompt_text

__all__ = ["Qwen25VLPolicy", "ensure_tiny_qwen2_5_vl"]

# tokens the policy must never write (they would corrupt the image-token bookkeeping)
_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_REASONING_TOKENS = ("<think>", "</think>")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def ensure_tiny_qwen2_5_vl(tiny: dict) -> Path:
    """Return the directory of the tiny Qwen2.5-VL described by ``tiny``, building it once.

    The directory lives under ``coprs_home()/tiny`` and is named by a hash of ``tiny``; it is
    written to a temporary folder and renamed, so an interrupted build never leaves a half model,
    and a file lock lets one process build it while others wait (in a distributed run rank 0
    builds it: transformers' ``save_pretrained`` writes only on rank 0).
    ``tiny`` holds keyword arguments of :func:`coprs.testing.tiny_qwen.save_tiny_qwen2_5_vl`;
    ``corpus`` may name a corpus (``'default'`` or ``'shapes'``) instead of listing lines.
    """
    from ..testing.tiny_qwen import save_tiny_qwen2_5_vl

    kwargs = dict(tiny)
    digest = hashlib.sha1(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:10]
    target = coprs_home() / "tiny" / f"qwen2_5_vl-{digest}"
    if (target / "config.json").is_file():
        return target
    corpus = kwargs.pop("corpus", "default")
    kwargs["corpus"] = _named_corpus(corpus) if isinstance(corpus, str) else corpus
    target.parent.mkdir(parents=True, exist_ok=True)
    if _dist_rank() > 0:  # transformers saves only on rank 0: wait for it
        return _wait_for(target / "config.json", timeout_s=600)
    # one builder at a time (several processes may start together)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / "config.json").is_file():
                tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
                try:
                    save_tiny_qwen2_5_vl(tmp, **kwargs)
                    try:
                        os.replace(tmp, target)
                    except OSError:  # another builder got there first
                        if not (target / "config.json").is_file():
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _height_width(image) -> tuple[int, int]:
    """(height, width) of a PIL image or an H x W (x C) array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(image.shape[:2])


def _image_digest(image: Image.Image) -> str:
    """sha1 of a PIL image's mode, size and pixels."""
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds FSDP units (their parameters are gathered only inside their
    forward, so the tower cache, which runs the tower outside it, is not used)."""
    from ..engine.fsdp import is_fsdp

    return is_fsdp(model)


def _dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _wait_for(path: Path, timeout_s: float) -> Path:
    import time

    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not build {path.parent} within {timeout_s:.0f} s")
        time.sleep(0.2)
    return path.parent


def _named_corpus(name: str) -> list[str]:
    from ..testing.tiny_qwen import default_corpus

    if name == "default":
        return default_corpus()
    if name == "shapes":
        from ..datasets.shapes import corpus

        return default_corpus() + corpus()
    raise ValueError(f"unknown tiny corpus {name!r}; use 'default', 'shapes' or a list of lines")


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dimension from log-probabilities. Suppressed tokens (log-prob -inf,
    probability 0) add nothing: their log-prob is replaced by 0 first, as 0 * -inf (and its
    gradient) would be NaN."""
    finite = log_probs.masked_fill(torch.isinf(log_probs), 0.0)
    return -(log_probs.exp() * finite).sum(-1)


def _tied_embeddings(model: torch.nn.Module) -> dict[torch.nn.Module, str]:
    """The input and output embedding modules of ``model`` by their names, when the two share
    one weight (``tie_word_embeddings=True``, e.g. Qwen2.5-VL-3B); empty otherwise."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or out is None or inp.weight is not out.weight:
        return {}
    return {m: n for n, m in model.named_modules() if m is inp or m is out}


def _refuse_lora_on_tied_embeddings(model: torch.nn.Module, tied: dict, targets) -> None:
    """ValueError when peft put a LoRA adapter on one of the ``tied`` embedding modules
    (:func:`_tied_embeddings`): the adapter's delta would apply to one use of the shared weight
    only, and the merged export (one weight, tied again on load) and vLLM would run another
    model than the one trained."""
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer) and m.get_base_layer() in tied:
            name = tied[m.get_base_layer()]
            other = next(n for n in tied.values() if n != name)
            raise ValueError(
                f"model.policy.lora.target_modules={targets!r} puts LoRA on {name}, whose weight "
                f"this policy ties to {other} (tie_word_embeddings=True): the merged export and "
                "vLLM would differ from the trained model; leave lm_head and embed_tokens out "
                "of target_modules (e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj'])")


#: peft adapter names of a LoRA policy: the one that trains, and the frozen GRPO reference
_TRAINED, _REFERENCE = "default", "reference"


#: what a checkpoint's generation_config.json may keep: the token ids, not how to decode
_GENERATION_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")
#: generation-config keys that do not change which tokens are decoded (not worth a log line)
_NOT_DECODING = {"transformers_version", "use_cache", "output_attentions", "output_hidden_states",
                 "output_scores", "output_logits", "return_dict_in_generate"}


def _plain_generation_config(model) -> None:
    """Keep only the token ids of a checkpoint's ``generation_config.json``.

    coprs decides how the policy decodes: greedily at inference and evaluation, with the
    rollout engine's temperature / top-p / top-k in GRPO. transformers merges the checkpoint's
    generation config into every ``generate`` call, so a setting such as Qwen2.5-VL-Instruct's
    ``repetition_penalty: 1.05`` would otherwise change the greedy answers and make the
    rollouts' log-probabilities (taken from the penalised scores) disagree with the actor's,
    which biases every PPO ratio. What is dropped is logged.
    """
    from mmengine.logging import print_log
    from transformers import GenerationConfig

    old = model.generation_config
    plain = GenerationConfig(**{k: getattr(old, k, None) for k in _GENERATION_TOKENS})
    default = GenerationConfig()
    dropped = {k: v for k, v in old.to_diff_dict().items()
               if k not in _GENERATION_TOKENS and k not in _NOT_DECODING
               and not k.startswith("_") and getattr(default, k, None) != v}
    if dropped:
        print_log(f"policy: the checkpoint's generation_config.json settings {dropped} are not "
                  "used: coprs decodes greedily at inference and samples with the rollout "
                  "engine's temperature/top_p/top_k in training", logger="current")
    model.generation_config = plain


@POLICIES.register_module()
class Qwen25VLPolicy(BasePolicy):
    """Qwen2.5-VL that reasons in ``<think>…</think>`` and then writes a special token.

    Exactly one of three sources gives the weights:

    * ``model_path``: a local Hugging Face directory (e.g. a downloaded
      ``Qwen/Qwen2.5-VL-7B-Instruct``), loaded with ``from_pretrained``; nothing is downloaded.
    * ``tiny``: a tiny random-initialised Qwen2.5-VL built locally once (for tests and the CPU
      demo), saved to a directory and loaded back through the same ``from_pretrained`` path.
    * inside :func:`coprs.utils.meta_build`: ``arch`` (``Qwen2_5_VLConfig`` keyword arguments)
      builds the architecture on the meta device, without weights, for parameter counting.

    Args:
        model_path: local directory with config, weights, tokenizer and processor files.
        arch: ``Qwen2_5_VLConfig`` keyword arguments (used for meta builds).
        tiny: keyword arguments of :func:`ensure_tiny_qwen2_5_vl`.
        special_token: the token whose hidden state is read (``<REF_POS>`` for CoPRS, ``<SEG>``
            for LISA-style, None for text-only priors). Added to the tokenizer if missing.
        prompt_template: a name in ``coprs.policies.prompts.PROMPT_TEMPLATES`` or a format string.
        min_pixels / max_pixels: the policy view's pixel budget (paper: 3,136 and 705,600).
        torch_dtype: 'float32', 'bfloat16' or 'float16'.
        attn_implementation: transformers attention backend ('sdpa', 'eager', 'flash_attention_2').
            flash_attention_2 needs bf16 or float16 weights.
        gradient_checkpointing: enable transformers gradient checkpointing.
        max_new_tokens: default response budget (paper: 2000 in training).
        max_prompt_tokens: the prompt-length cap (paper B.3: 1300 tokens): the chat-templated
            prompt with its image tokens (:meth:`prompt_length`). The training loop drops the
            samples whose prompt is longer, with a warning (verl's ``max_prompt_length`` and
            ``filter_overlong_prompts``); evaluation and inference take every prompt. None
            (default): no cap.
        stop_at_special_token: end a response at the special token (it is then the last token
            and no next-token loss shapes its hidden state, which stays free to carry the
            query; see docs/training.md). False: responses end at ``<|im_end|>``.
        lora: parameter-efficient training with peft LoRA adapters, e.g. ``dict(r=8, alpha=16,
            dropout=0.0, target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'],
            trainable_tokens=True)``: the base weights are frozen, only the adapters train, the
            GRPO reference is the policy with its adapters as GRPO began (disabled while
            untrained; no second copy of the base) and checkpoints hold only trainable weights.
            ``trainable_tokens`` (default True) also trains the rows of the tokens coprs adds
            (``<think>``, ``</think>``, the special token) in ``embed_tokens`` and ``lm_head``,
            which a real checkpoint has untrained (:mod:`coprs.policies.adapters`); a list
            names other tokens, False trains none.
        freeze_vision_tower: keep the policy's own vision tower (``model.model.visual``, patch
            embedding to merger) fixed: its parameters get no gradient and no optimiser state.
            A random-initialised tiny tower trained from scratch collapses to an
            image-independent output within a few hundred warm-up steps (docs/benchmarks.md);
            frozen, it stays a fixed random feature extractor the language model learns to read.
        tower_cache: with ``freeze_vision_tower``, keep the tokenised prompt and the frozen
            tower's output of up to this many (image, instruction) pairs in memory (least
            recently used dropped first), so that a training forward over a sample seen before
            skips the image processor and the tower; its result is the same. An entry holds the
            tower's output (image tokens x hidden size): about 8 KB for the tiny CPU policy,
            several MB for a 7B policy on a large image. 0 (default): off.
    """

    def __init__(
        self,
        model_path: str | None = None,
        arch: dict | None = None,
        tiny: dict | None = None,
        special_token: str | None = "<REF_POS>",
        prompt_template: str = "coprs",
        min_pixels: int = 3136,
        max_pixels: int = 705600,
        torch_dtype: str = "float32",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 256,
        max_prompt_tokens: int | None = None,
        stop_at_special_token: bool = False,
        lora: dict | None = None,
        freeze_vision_tower: bool = False,
        tower_cache: int = 0,
    ) -> None:
        super().__init__()
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        self.special_token = special_token
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens
        self.processor = None
        self.model_path = model_path
        self.uses_adapters = False
        self.trainable_tokens: list[str] = []
        self.stop_at_special_token = stop_at_special_token
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        if tower_cache < 0 or (tower_cache and not freeze_vision_tower):
            raise ValueError(
                f"policy tower_cache={tower_cache}: it must be >= 0, and it needs "
                "freeze_vision_tower=True (a trained tower's output changes every step); set "
                "model.policy.freeze_vision_tower=True or model.policy.tower_cache=0")
        self.tower_cache = tower_cache
        if max_prompt_tokens is not None and (isinstance(max_prompt_tokens, bool) or not isinstance(
                max_prompt_tokens, int) or max_prompt_tokens < 1):
            raise ValueError(
                f"model.policy.max_prompt_tokens={max_prompt_tokens!r}: need a whole number of "
                "tokens >= 1 (the paper caps prompts at 1300), or None for no cap")
        self.max_prompt_tokens = max_prompt_tokens
        self._tower_entries: OrderedDict = OrderedDict()
        if torch_dtype not in _DTYPES:
            raise ValueError(f"policy torch_dtype {torch_dtype!r} must be one of {list(_DTYPES)}")
        if attn_implementation == "flash_attention_2" and torch_dtype == "float32":
            raise ValueError(
                "policy attn_implementation='flash_attention_2' with torch_dtype='float32': "
                "flash-attn runs only in bf16/fp16, and the forwards outside autocast (reward "
                "scoring, validation) would fail. Use attn_implementation='sdpa' (PyTorch picks "
                "its flash kernel under bf16 autocast) or torch_dtype='bfloat16' for inference")

        if is_meta_build() and arch is not None:
            config = Qwen2_5_VLConfig(**arch)
            with torch.device("meta"):
                self.model = Qwen2_5_VLForConditionalGeneration._from_config(config)
                if lora is not None:  # what trains, for coprs count-params
                    self._add_lora(lora)
            if freeze_vision_tower:
                self.model.model.visual.requires_grad_(False)
            self.hidden_size = config.text_config.hidden_size
            return

        if tiny is not None:
            if model_path is not None:
                raise ValueError(
                    f"model.policy sets both tiny (a tiny random-initialised policy built "
                    f"locally) and model_path '{model_path}': to load the weights at model_path, "
                    "also pass --cfg-options model.policy.tiny=None")
            model_path = str(ensure_tiny_qwen2_5_vl(tiny))
        if model_path is None:
            raise ValueError(
                "Qwen25VLPolicy needs `model_path` (a local Qwen2.5-VL directory) or `tiny`; "
                "set model.policy.model_path in the config or pass "
                "--cfg-options model.policy.model_path=/path/to/Qwen2.5-VL-7B-Instruct"
            )
        path = Path(model_path).expanduser()
        self.model_path = str(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"policy model_path '{path}' is not a Qwen2.5-VL directory (no config.json). "
                "Download the checkpoint (e.g. Qwen/Qwen2.5-VL-7B-Instruct) to a local folder and "
                "point model.policy.model_path at it; coprs never downloads at run time."
            )
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        # the policy view's pixel budget (Qwen's smart_resize keeps aspect, multiples of 28)
        self.processor.image_processor.size = {"shortest_edge": min_pixels,
                                               "longest_edge": max_pixels}
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=_DTYPES[torch_dtype], attn_implementation=attn_implementation
        )
        _plain_generation_config(self.model)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self._add_special_tokens()
        self.hidden_size = self.model.config.text_config.hidden_size
        if gradient_checkpointing:  # transformers >= 5.24 names it activation checkpointing
            enable = (getattr(self.model, "activation_checkpointing_enable", None)
                      or self.model.gradient_checkpointing_enable)
            enable()
        if lora is not None:
            self._add_lora(lora)
        self.freeze_vision_tower = freeze_vision_tower
        if freeze_vision_tower:
            self.model.model.visual.requires_grad_(False)
        self.model.eval()
        # loading weights (a checkpoint, a resume) may change the tower: forget its outputs
        self._register_load_state_dict_pre_hook(
            lambda *args, **kwargs: self._tower_entries.clear())

    def _add_lora(self, lora: dict) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        unknown = set(lora) - {"r", "alpha", "dropout", "target_modules", "trainable_tokens"}
        if unknown:
            raise ValueError(f"unknown policy.lora keys {sorted(unknown)}; use r, alpha, "
                             "dropout, target_modules, trainable_tokens")
        targets = lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])
        self.trainable_tokens = self._trainable_tokens(lora.get("trainable_tokens", True))
        config = LoraConfig(r=lora.get("r", 8), lora_alpha=lora.get("alpha", 16),
                            lora_dropout=lora.get("dropout", 0.0), target_modules=targets)
        tied = _tied_embeddings(self.model)
        inject_adapter_in_model(config, self.model, adapter_name=_TRAINED)
        _refuse_lora_on_tied_embeddings(self.model, tied, targets)
        # a second, frozen adapter of the same shape: the GRPO reference when the trained one
        # starts GRPO trained (set_reference_adapters; its lora_B starts at zero like any)
        with warnings.catch_warnings():  # peft warns that a model gets a second adapter
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(config, self.model, adapter_name=_REFERENCE)
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in self.model.modules():  # peft made the newest adapter the active one
            if isinstance(m, BaseTunerLayer):
                m._active_adapter = [_TRAINED]
        if self.trainable_tokens:
            # the added tokens' rows of embed_tokens and lm_head, per adapter (a meta build
            # for counting has no tokenizer: any rows of the same number count the same)
            vocab = None if is_meta_build() else self.tokenizer.get_vocab()
            ids = (list(range(len(self.trainable_tokens))) if vocab is None
                   else [vocab[t] for t in self.trainable_tokens])
            add_token_rows(self.model, ids, (_TRAINED, _REFERENCE))
        for name, param in self.model.named_parameters():
            param.requires_grad_(is_adapter_weight(name, _TRAINED))
            if is_adapter_weight(name) and param.dtype in (torch.bfloat16, torch.float16):
                # adapters train in float32 over a bf16 base, as peft's PeftModel keeps them
                # (autocast_adapter_dtype): bf16 cannot hold small AdamW updates
                param.data = param.data.float()
        self.uses_adapters = True

    def _trainable_tokens(self, option) -> list[str]:
        """The tokens whose rows train under LoRA (``model.policy.lora.trainable_tokens``): True
        for those coprs adds (``<think>``, ``</think>`` and the special token), False for none,
        or a list of tokens of the tokenizer."""
        if option is True:
            return [t for t in (*_REASONING_TOKENS, self.special_token) if t]
        if option is False or option is None:
            return []
        vocab = None if is_meta_build() else self.tokenizer.get_vocab()
        if (not isinstance(option, (list, tuple)) or not all(isinstance(t, str) for t in option)
                or (vocab is not None and any(t not in vocab for t in option))):
            raise ValueError(
                f"model.policy.lora.trainable_tokens={option!r}: use True (the rows of the "
                f"tokens coprs adds: {[*_REASONING_TOKENS, self.special_token]}), False (none) "
                "or a list of tokens the tokenizer has")
        return list(dict.fromkeys(option))

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model without the LoRA adapters (the GRPO reference policy)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Copies of the trained LoRA adapters' weights (peft's ``default`` adapter) under their
        names without FSDP's wrapper prefixes; empty without adapters. Under FSDP call it inside
        ``full_params``, which gathers them."""
        from ..engine.fsdp import plain_state

        return {n: p.detach().clone() for n, p in plain_state(self.model, buffers=False).items()
                if is_adapter_weight(n, _TRAINED)}

    @torch.no_grad()
    def set_reference_adapters(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` (from :meth:`adapter_state`) into the frozen ``reference`` adapter, the
        GRPO reference after a warm-up (:meth:`reference_adapters`). Under FSDP call it inside
        ``full_params(model, writeback=True)``."""
        from ..engine.fsdp import plain_state

        own = {as_adapter(n, _REFERENCE, _TRAINED): p
               for n, p in plain_state(self.model, buffers=False).items()
               if is_adapter_weight(n, _REFERENCE)}
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(
                "the adapter snapshot does not match the policy's LoRA adapters (missing "
                f"{missing[:3]}, unexpected {extra[:3]}): it was taken with other "
                "model.policy.lora settings")
        for name, p in own.items():
            p.copy_(state[name])

    def adapters_trained(self) -> bool:
        """Whether the trained adapters differ from fresh ones: a nonzero ``lora_B`` (peft
        starts it at zero) or a token row moved from its base row. Under FSDP call it inside
        ``full_params``."""
        from ..engine.fsdp import plain_state

        return (any(bool(p.any()) for n, p in plain_state(self.model, buffers=False).items()
                    if "lora_B" in n and is_adapter_weight(n, _TRAINED))
                or token_rows_moved(self.model, _TRAINED))

    @contextlib.contextmanager
    def reference_adapters(self):
        """Run the block with the frozen ``reference`` adapter active instead of the trained one
        (a module setting, like :meth:`disable_adapter`, so it also holds under FSDP)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        # peft's set_adapter would also change which adapter requires grad: only the active
        # adapter's name is switched here
        for m in layers:
            m._active_adapter = [_REFERENCE]
        try:
            yield
        finally:
            for m in layers:
                m._active_adapter = [_TRAINED]

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's weights with LoRA adapters merged in, under plain transformers names.

        The merged weights are new tensors
        (:func:`~coprs.policies.adapters.merged_weights`: LoRA deltas added, the added
        tokens' trained rows put in): the policy's own weights are not touched (peft's ``merge``
        then ``unmerge`` would leave them changed by rounding)."""
        if not self.uses_adapters:
            return dict(self.model.state_dict())
        return {k: v.clone() for k, v in merged_weights(self.model,
                                                          self.model.state_dict().items())}

    # ------------------------------------------------------------------ setup
    def _add_special_tokens(self) -> None:
        wanted = [t for t in (*_REASONING_TOKENS, self.special_token) if t]
        missing = [t for t in wanted if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                              replace_extra_special_tokens=False)
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > rows:
            self.model.resize_token_embeddings(len(self.tokenizer))
        ids = self.tokenizer.convert_tokens_to_ids
        self.special_token_id = ids(self.special_token) if self.special_token else None
        self.image_token_id = self.model.config.image_token_id
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        # the special token is no end of turn, though a coprs export-hf folder lists it among
        # its eos ids (so that plain generate stops there); it ends a response only through
        # stop_at_special_token, and stays in the decoded text
        self.eos_token_ids = sorted({i for i in (*eos, ids("<|im_end|>"))
                                     if i is not None and i != self.special_token_id})
        #: tokens that end a response (the end-of-turn tokens, and the special token if
        #: ``stop_at_special_token``)
        self.stop_token_ids = list(self.eos_token_ids)
        if self.stop_at_special_token and self.special_token_id is not None:
            self.stop_token_ids.append(self.special_token_id)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.suppress_token_ids = [ids(t) for t in _VISION_TOKENS if t in self.tokenizer.get_vocab()]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def view_size(self, height: int, width: int) -> tuple[int, int]:
        """The policy view of a ``height`` x ``width`` image (Qwen's ``smart_resize`` within
        ``min_pixels``/``max_pixels`` to multiples of the processor's patch size times its merge
        size, :func:`coprs.image.policy_view_size`)."""
        from ..image import policy_view_size

        image = self.processor.image_processor
        return policy_view_size(height, width, self.min_pixels, self.max_pixels,
                                factor=image.patch_size * image.merge_size)

    # ----------------------------------------------------------------- prompts
    def prompt_length(self, height: int, width: int, instruction: str) -> int:
        """The number of tokens of the prompt :meth:`encode_prompts` builds for an image of
        ``height`` x ``width`` and ``instruction``, without processing any pixels: the
        chat-templated text with one image placeholder, plus the merged image tokens of the
        policy view (:meth:`view_size`) less that placeholder."""
        text = self.processor.apply_chat_template(self.build_messages(instruction),
                                                  add_generation_prompt=True, tokenize=False)
        text_tokens = len(self.tokenizer(text)["input_ids"])  # as the processor tokenises it
        image = self.processor.image_processor
        h, w = self.view_size(height, width)
        image_tokens = (h // image.patch_size) * (w // image.patch_size) // image.merge_size ** 2
        return text_tokens + image_tokens - 1

    def overlong_prompts(self, images: list, instructions: list[str]) -> dict[int, int]:
        """``{index: length}`` of the (image, instruction) pairs whose :meth:`prompt_length`
        exceeds ``max_prompt_tokens``; none without a cap. Images are PIL images or H x W x 3
        arrays."""
        if self.max_prompt_tokens is None:
            return {}
        lengths = (self.prompt_length(*_height_width(im), ins)
                   for im, ins in zip(images, instructions, strict=True))
        return {i: n for i, n in enumerate(lengths) if n > self.max_prompt_tokens}

    def build_messages(self, instruction: str) -> list[dict]:
        """The chat for one instruction: the image, then the filled prompt template."""
        text = build_prompt_text(instruction, self.prompt_template, self.special_token or "")
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    def encode_prompts(self, images: list[Image.Image], instructions: list[str]) -> dict:
        """Tokenise B prompts with their images (left padded) for the model.

        Repeated (image object, instruction) pairs — a GRPO group's G copies — are processed
        once and their rows repeated (the result is the same as processing every copy). The last
        two results are kept, keyed by image content and instruction: a training step encodes
        the same prompts for rollout, reward, reference and actor."""
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        keys = [(id(im), ins) for im, ins in zip(images, instructions)]
        unique = list(dict.fromkeys(keys))
        if len(unique) < len(keys):
            first = {k: keys.index(k) for k in unique}
            batch = self.encode_prompts([images[first[k]] for k in unique],
                                        [instructions[first[k]] for k in unique])
            rows = [unique.index(k) for k in keys]
            patches = batch["image_grid_thw"].prod(-1).tolist()  # pixel rows per image
            pixels = torch.split(batch["pixel_values"], patches)
            out = {k: v[rows] for k, v in batch.items() if k != "pixel_values"}
            out["pixel_values"] = torch.cat([pixels[r] for r in rows])
            return out
        key = (self.prompt_template, self.special_token,
               *((_image_digest(im), ins) for im, ins in zip(images, instructions)))
        recent = self.__dict__.setdefault("_recent_prompts", OrderedDict())
        if key in recent:
            recent.move_to_end(key)
            return dict(recent[key])
        texts = [
            self.processor.apply_chat_template(self.build_messages(i), add_generation_prompt=True,
                                               tokenize=False)
            for i in instructions
        ]
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        recent[key] = batch
        if len(recent) > 2:
            recent.popitem(last=False)
        return dict(batch)

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        images: list[Image.Image],
        instructions: list[str],
        num_samples: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        max_new_tokens: int | None = None,
        prefixes: list[str] | None = None,
        min_new_tokens: int | None = None,
    ) -> list[list[Rollout]]:
        """Write responses; greedy by default (inference), sampled for rollouts.

        Returns B lists of ``num_samples`` rollouts. With sampling, each rollout carries its
        per-token log-probabilities under the sampling distribution.

        ``prefixes`` (greedy only): B texts each response must begin with, e.g. the first part of
        a gold reasoning (``tools/analysis/picked_objects.py --gold-prefix``); the policy writes
        the rest. They are tokenised as teacher-forced responses are, and the returned rollouts
        hold prefix and continuation (``max_new_tokens`` counts the continuation only).
        ``min_new_tokens``: forbid the end tokens before this many new tokens (None: none).
        """
        batch = self.encode_prompts(images, instructions)
        if prefixes is not None:
            if do_sample:
                raise ValueError("generate(prefixes=...) is greedy only: sampled rollouts carry "
                                 "log-probs of sampled tokens, and a forced prefix has none")
            if len(prefixes) != len(instructions):
                raise ValueError(f"got {len(prefixes)} prefixes for {len(instructions)} prompts")
            prefix_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prefixes]
            rows = [row[mask.bool()].tolist() + ids for row, mask, ids in
                    zip(batch["input_ids"], batch["attention_mask"], prefix_ids)]
            input_ids, attention, _ = self._left_pad(rows)
            batch.update(input_ids=input_ids, attention_mask=attention,
                         mm_token_type_ids=(input_ids == self.image_token_id).long())
        kwargs = self.generation_kwargs(do_sample, temperature, top_p, top_k, max_new_tokens)
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        out = self.model.generate(**batch, **kwargs, num_return_sequences=num_samples)
        groups = self.rollouts_from_generate(out, batch["input_ids"].shape[1], num_samples,
                                             with_logprobs=do_sample)
        if prefixes is None:
            return groups
        return [[Rollout(text=text + r.text, token_ids=ids + r.token_ids) for r in group]
                for text, ids, group in zip(prefixes, prefix_ids, groups)]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """B token-id lists as left-padded ``input_ids`` and ``attention_mask`` on the policy's
        device, and the padding added to each row."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for b, r in enumerate(rows):
            input_ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention[b, width - len(r):] = 1
        return (input_ids.to(self.device), attention.to(self.device),
                [width - len(r) for r in rows])

    def generation_kwargs(self, do_sample: bool = False, temperature: float = 1.0,
                          top_p: float = 1.0, top_k: int | None = None,
                          max_new_tokens: int | None = None) -> dict:
        """Keyword arguments of ``model.generate`` for this policy's tokens and sampling."""
        kwargs = dict(
            do_sample=do_sample,
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            suppress_tokens=self.suppress_token_ids or None,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_scores=do_sample,
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or 0)
        return kwargs

    def rollouts_from_generate(self, out, prompt_len: int, num_samples: int,
                               with_logprobs: bool) -> list[list[Rollout]]:
        """Turn a ``generate`` output (B·n rows, group-major) into B lists of n rollouts.

        With ``with_logprobs``, each rollout carries the log-probability of each of its tokens
        under the sampling distribution (the processed scores ``generate`` sampled from).
        """
        seqs = out.sequences[:, prompt_len:]
        logps = None
        if with_logprobs:
            scores = torch.stack(out.scores, dim=1).float()  # N x T x V (processed logits)
            logps = torch.log_softmax(scores, dim=-1).gather(-1, seqs[..., None])[..., 0]
        rollouts: list[Rollout] = []
        for n, row in enumerate(seqs.tolist()):
            length = self._response_length(row)
            ids = row[:length]
            rollouts.append(
                Rollout(
                    text=self.decode(ids),
                    token_ids=ids,
                    logprobs=logps[n, :length].tolist() if logps is not None else None,
                )
            )
        groups = len(rollouts) // num_samples
        return [rollouts[i * num_samples:(i + 1) * num_samples] for i in range(groups)]

    def _response_length(self, ids: list[int]) -> int:
        """Length up to and including the first stop token."""
        for t, tok in enumerate(ids):
            if tok in self.stop_token_ids:
                return t + 1
        return len(ids)

    def decode(self, ids: list[int]) -> str:
        """Response text with special tokens kept, end-of-turn and padding removed."""
        keep = [i for i in ids if i not in self.eos_token_ids and i != self.pad_token_id]
        return self.tokenizer.decode(keep, skip_special_tokens=False)

    # ----------------------------------------------------------------- readout
    def readout(self, images: list[Image.Image], instructions: list[str],
                rollouts: list[Rollout]) -> PolicyOutput:
        """One forward over prompt + response; the last-layer hidden state at the special token
        (its first occurrence in the response). A response without it gets it appended
        (``has_token`` False), so a malformed response still yields a query, never an error.

        Rollouts that carry the state already (``Rollout.hidden``, kept by the rollout engine
        while sampling) are not forwarded again."""
        texts = [r.text for r in rollouts]
        todo = [i for i, r in enumerate(rollouts) if r.hidden is None]
        if len(todo) == len(rollouts):
            return self.forward_responses(images, instructions, rollouts).policy_output(texts)
        hidden = [r.hidden for r in rollouts]
        has_token = [True] * len(rollouts)
        if todo:
            sub = self.forward_responses([images[i] for i in todo],
                                         [instructions[i] for i in todo],
                                         [rollouts[i] for i in todo])
            out = sub.policy_output([texts[i] for i in todo])
            for j, i in enumerate(todo):
                hidden[i], has_token[i] = out.hidden[j], out.has_token[j]
        return PolicyOutput(hidden=torch.stack([h.to(self.device) for h in hidden]),
                            responses=texts, has_token=has_token)

    def forward_responses(self, images, instructions, rollouts, model=None) -> ResponseForward:
        """Forward B (prompt + response) sequences through the language model once.

        The response is the rollout's tokens; when the special token is missing, trailing
        end-of-turn tokens are dropped and the special token appended (the hidden state is read
        there; causality keeps the log-probs of the original tokens computable, see
        :meth:`response_logprobs`).

        Args:
            model: another model with the same tokenizer (the frozen reference policy);
                default: this policy's.
        """
        model = model if model is not None else self.model
        base = model.model if hasattr(model, "lm_head") else model
        cached = self.tower_cache and model is self.model and not _is_sharded(model)
        if cached:
            prompt, image_inputs = self._encode_from_tower_cache(images, instructions)
        else:
            prompt = self.encode_prompts(images, instructions)
            image_inputs = self._image_inputs(base, images, prompt)
        ids_rows, positions, has_token, starts = [], [], [], []
        for row, mask, rollout in zip(prompt["input_ids"], prompt["attention_mask"], rollouts):
            prompt_ids = row[mask.bool()].tolist()
            resp = [i for i in rollout.token_ids if i != self.pad_token_id]
            if self.special_token_id is None:
                pos, found = len(resp) - 1, True
            elif self.special_token_id in resp:
                pos, found = resp.index(self.special_token_id), True
            else:
                while resp and resp[-1] in self.eos_token_ids:
                    resp = resp[:-1]
                resp = resp + [self.special_token_id]
                pos, found = len(resp) - 1, False
            ids_rows.append(prompt_ids + resp)
            starts.append(len(prompt_ids))
            positions.append(len(prompt_ids) + max(pos, 0))
            has_token.append(found)
        input_ids, attention, pads = self._left_pad(ids_rows)
        positions = [p + pad for p, pad in zip(positions, pads)]
        starts = [s + pad for s, pad in zip(starts, pads)]
        out = base(
            input_ids=input_ids,
            attention_mask=attention,
            image_grid_thw=prompt["image_grid_thw"],
            mm_token_type_ids=(input_ids == self.image_token_id).long(),
            use_cache=False,
            **image_inputs,
        )
        return ResponseForward(
            last_hidden=out.last_hidden_state,  # B x W x D (after the final norm)
            special_pos=torch.tensor(positions, device=self.device),
            has_token=has_token,
            resp_start=starts,
            token_ids=[list(r.token_ids) for r in rollouts],
            lm_head=model.lm_head if hasattr(model, "lm_head") else self.model.lm_head,
        )

    def _encode_from_tower_cache(self, images, instructions) -> tuple[dict, dict]:
        """Prompts (as :meth:`encode_prompts` gives them, without pixels) and the frozen
        tower's output for B (image, instruction) pairs, from the ``tower_cache`` entries; pairs
        not there are encoded together, once each, and stored."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        entries = self._tower_entries
        digests: dict[int, str] = {}
        keys = []
        for im, ins in zip(images, instructions):
            if id(im) not in digests:
                digests[id(im)] = _image_digest(im)
            keys.append((self.prompt_template, self.special_token, digests[id(im)], ins))
        missing = [k for k in dict.fromkeys(keys) if k not in entries]
        if missing:
            first = [keys.index(k) for k in missing]
            batch = self.encode_prompts([images[i] for i in first],
                                        [instructions[i] for i in first])
            with torch.no_grad():
                feats = self.model.model.get_image_features(
                    batch["pixel_values"], batch["image_grid_thw"], return_dict=True).pooler_output
            for j, k in enumerate(missing):
                ids = batch["input_ids"][j][batch["attention_mask"][j].bool()]
                entries[k] = (ids, batch["image_grid_thw"][j], feats[j].detach())
        for k in keys:
            entries.move_to_end(k)
        rows = [entries[k] for k in keys]
        while len(entries) > self.tower_cache:
            entries.popitem(last=False)
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long,
                               device=self.device)
        attention = torch.zeros_like(input_ids)
        for b, (ids, _, _) in enumerate(rows):
            input_ids[b, width - len(ids):] = ids
            attention[b, width - len(ids):] = 1
        prompt = {"input_ids": input_ids, "attention_mask": attention,
                  "image_grid_thw": torch.stack([grid for _, grid, _ in rows])}
        encoded = BaseModelOutputWithPooling(pooler_output=tuple(f for _, _, f in rows))
        return prompt, {"mm_encoder_outputs": {"image": encoded}}

    @staticmethod
    def _image_inputs(base, images, prompt) -> dict:
        """The images of a forward: ``pixel_values``, or — when rows share an image object (a
        GRPO group's G copies) — the vision tower's output computed once per distinct image and
        repeated (``mm_encoder_outputs``; gradients reach the tower through every copy)."""
        rows = [id(im) for im in images]
        distinct = list(dict.fromkeys(rows))
        if (len(distinct) == len(rows)
                or "mm_encoder_outputs" not in inspect.signature(base.forward).parameters):
            return {"pixel_values": prompt["pixel_values"]}
        grid = prompt["image_grid_thw"]
        pixels = torch.split(prompt["pixel_values"], grid.prod(-1).tolist())
        first = [rows.index(k) for k in distinct]
        encoded = base.get_image_features(torch.cat([pixels[i] for i in first]), grid[first],
                                          return_dict=True)
        per_image = encoded.pooler_output
        encoded.pooler_output = tuple(per_image[distinct.index(k)] for k in rows)
        return {"mm_encoder_outputs": {"image": encoded}}

    def response_logprobs(self, fwd: ResponseForward, with_entropy: bool = False,
                          entropy_grad: bool = True) -> tuple[torch.Tensor, ...]:
        """Log-probabilities of each rollout's own tokens under the forwarded model.

        Logits are computed only at the response positions (not the whole sequence). Tokens the
        policy may never write (vision tokens) are masked as in generation, so these match the
        rollout-time log-probs.

        Args:
            fwd: :meth:`forward_responses` output.
            with_entropy: also return the entropy (nats) of the next-token distribution at each
                response position, over the tokens the policy may write.
            entropy_grad: the entropy keeps its gradient (for an entropy loss); False computes it
                without one, so nothing of it is held for the backward (for logging).

        Returns:
            (logp B x T, mask B x T) with T the longest response; mask is 1 on real tokens.
            With ``with_entropy``: (logp, mask, entropy B x T), entropy 0 on padding.
        """
        b = len(fwd.token_ids)
        t_max = max(1, max(len(t) for t in fwd.token_ids))
        device = fwd.last_hidden.device
        index = torch.zeros(b, t_max, dtype=torch.long, device=device)
        targets = torch.zeros(b, t_max, dtype=torch.long, device=device)
        mask = torch.zeros(b, t_max, device=device)
        for i, ids in enumerate(fwd.token_ids):
            n = len(ids)
            if n == 0:
                continue
            # logits at position p predict token p + 1 (causal): token t of the response
            index[i, :n] = torch.arange(fwd.resp_start[i] - 1, fwd.resp_start[i] - 1 + n)
            targets[i, :n] = torch.tensor(ids)
            mask[i, :n] = 1
        hidden = fwd.last_hidden.gather(1, index[..., None].expand(-1, -1,
                                                                   fwd.last_hidden.shape[-1]))
        logits = fwd.lm_head(hidden).float()  # B x T x V
        if self.suppress_token_ids:
            logits[..., self.suppress_token_ids] = -float("inf")
        log_probs = torch.log_softmax(logits, dim=-1)
        logp = log_probs.gather(-1, targets[..., None])[..., 0]
        if not with_entropy:
            return logp * mask, mask
        if torch.is_grad_enabled() and entropy_grad:
            entropy = _entropy(log_probs)
        else:  # for logging: a few positions at a time, so no extra B x T x V tensor is held
            with torch.no_grad():
                rows = log_probs.detach().flatten(0, -2)
                entropy = torch.cat([_entropy(rows[i:i + 1024])
                                     for i in range(0, rows.shape[0], 1024)]).view(mask.shape)
        return logp * mask, mask, entropy * mask
