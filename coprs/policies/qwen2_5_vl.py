"""Qwen2.5-VL as a reasoning-segmentation policy (CoPRS paper Sec. 3.1)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image

from ..registry import POLICIES
from ..structures import PolicyOutput, Rollout
from ..utils import coprs_home, is_meta_build
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
    written to a temporary folder and renamed, so an interrupted build never leaves a half model.
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
    if isinstance(corpus, str):
        kwargs["corpus"] = _named_corpus(corpus)
    else:
        kwargs["corpus"] = corpus
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        save_tiny_qwen2_5_vl(tmp, **kwargs)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _named_corpus(name: str) -> list[str]:
    from ..testing.tiny_qwen import default_corpus

    if name == "default":
        return default_corpus()
    if name == "shapes":
        from ..datasets.shapes import corpus

        return default_corpus() + corpus()
    raise ValueError(f"unknown tiny corpus {name!r}; use 'default', 'shapes' or a list of lines")


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
        gradient_checkpointing: enable transformers gradient checkpointing.
        max_new_tokens: default response budget (paper: 2000 in training).
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
    ) -> None:
        super().__init__()
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        self.special_token = special_token
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens
        self.processor = None
        if torch_dtype not in _DTYPES:
            raise ValueError(f"policy torch_dtype {torch_dtype!r} must be one of {list(_DTYPES)}")

        if is_meta_build() and arch is not None:
            config = Qwen2_5_VLConfig(**arch)
            with torch.device("meta"):
                self.model = Qwen2_5_VLForConditionalGeneration._from_config(config)
            self.hidden_size = config.text_config.hidden_size
            return

        if tiny is not None:
            model_path = str(ensure_tiny_qwen2_5_vl(tiny))
        if model_path is None:
            raise ValueError(
                "Qwen25VLPolicy needs `model_path` (a local Qwen2.5-VL directory) or `tiny`; "
                "set model.policy.model_path in the config or pass "
                "--cfg-options model.policy.model_path=/path/to/Qwen2.5-VL-7B-Instruct"
            )
        path = Path(model_path).expanduser()
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
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self._add_special_tokens()
        self.hidden_size = self.model.config.text_config.hidden_size
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model.eval()

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
        self.eos_token_ids = sorted({i for i in (*eos, ids("<|im_end|>")) if i is not None})
        self.pad_token_id = self.tokenizer.pad_token_id
        self.suppress_token_ids = [ids(t) for t in _VISION_TOKENS if t in self.tokenizer.get_vocab()]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------- prompts
    def build_messages(self, instruction: str) -> list[dict]:
        """The chat for one instruction: the image, then the filled prompt template."""
        text = build_prompt_text(instruction, self.prompt_template, self.special_token or "")
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    def encode_prompts(self, images: list[Image.Image], instructions: list[str]) -> dict:
        """Tokenise B prompts with their images (left padded) for the model."""
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        texts = [
            self.processor.apply_chat_template(self.build_messages(i), add_generation_prompt=True,
                                               tokenize=False)
            for i in instructions
        ]
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

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
    ) -> list[list[Rollout]]:
        """Write responses; greedy by default (inference), sampled for rollouts.

        Returns B lists of ``num_samples`` rollouts. With sampling, each rollout carries its
        per-token log-probabilities under the sampling distribution.
        """
        batch = self.encode_prompts(images, instructions)
        prompt_len = batch["input_ids"].shape[1]
        sampling = dict(do_sample=do_sample)
        if do_sample:
            sampling.update(temperature=temperature, top_p=top_p, top_k=top_k or 0)
        out = self.model.generate(
            **batch,
            **sampling,
            num_return_sequences=num_samples,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            suppress_tokens=self.suppress_token_ids or None,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_scores=do_sample,
        )
        seqs = out.sequences[:, prompt_len:]
        logps = None
        if do_sample:
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
        return [rollouts[i * num_samples:(i + 1) * num_samples] for i in range(len(images))]

    def _response_length(self, ids: list[int]) -> int:
        """Length up to and including the first end-of-turn token."""
        for t, tok in enumerate(ids):
            if tok in self.eos_token_ids:
                return t + 1
        return len(ids)

    def decode(self, ids: list[int]) -> str:
        """Response text with special tokens kept, end-of-turn and padding removed."""
        keep = [i for i in ids if i not in self.eos_token_ids and i != self.pad_token_id]
        return self.tokenizer.decode(keep, skip_special_tokens=False)

    # ----------------------------------------------------------------- readout
    def readout(self, images: list[Image.Image], instructions: list[str],
                rollouts: list[Rollout]) -> PolicyOutput:
        """Forward prompt + response once and read the last-layer hidden state at the special
        token (its first occurrence). A response without it gets it appended (``has_token``
        False), so a malformed response still yields a query instead of an exception."""
        out, positions, has_token = self.forward_responses(images, instructions, rollouts)
        last = out.hidden_states[-1]  # B x L x D (after the final norm)
        hidden = last[torch.arange(last.shape[0], device=last.device), positions]
        return PolicyOutput(hidden=hidden, responses=[r.text for r in rollouts],
                            has_token=has_token)

    def forward_responses(self, images, instructions, rollouts):
        """Forward B (prompt + response) sequences with hidden states.

        Returns:
            (model output with ``hidden_states`` and ``logits``, LongTensor[B] positions of the
            special token in the padded sequences, list[bool] whether it was written).
        """
        prompt = self.encode_prompts(images, instructions)
        ids_rows, positions, has_token = [], [], []
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
            positions.append(len(prompt_ids) + max(pos, 0))
            has_token.append(found)
        width = max(len(r) for r in ids_rows)
        input_ids = torch.full((len(ids_rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for b, r in enumerate(ids_rows):
            input_ids[b, width - len(r):] = torch.tensor(r)
            attention[b, width - len(r):] = 1
            positions[b] += width - len(r)
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            pixel_values=prompt["pixel_values"],
            image_grid_thw=prompt["image_grid_thw"],
            mm_token_type_ids=(input_ids == self.image_token_id).long(),
            output_hidden_states=True,
            use_cache=False,
        )
        return out, torch.tensor(positions, device=self.device), has_token
