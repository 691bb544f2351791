"""A tiny Qwen2.5-VL, built locally from the real architecture, for tests and the CPU demo.

Everything here is random-initialised and made without any download: a byte-level BPE tokenizer
trained on a small local corpus (with Qwen's chat special tokens and coprs' own), a Qwen-style
chat template, a ``Qwen2_5_VLProcessor`` around them, and a ``Qwen2_5_VLForConditionalGeneration``
from a ``Qwen2_5_VLConfig`` with small widths. :func:`save_tiny_qwen2_5_vl` writes them with
``save_pretrained`` so they load back through exactly the code a user runs on a real checkpoint
directory (:class:`coprs.policies.Qwen25VLPolicy`).

The tiny model is *not* a trained model; it writes noise until the library trains it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "SPECIAL_TOKENS",
    "QWEN_CHAT_TEMPLATE",
    "TINY_QWEN_TEXT_CONFIG",
    "TINY_QWEN_VISION_CONFIG",
    "build_tiny_tokenizer",
    "build_tiny_processor",
    "build_tiny_qwen2_5_vl",
    "save_tiny_qwen2_5_vl",
    "default_corpus",
]

#: Qwen's chat and vision special tokens, then coprs' reasoning / segmentation tokens.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
    "<REF_POS>",
    "<SEG>",
    "<answer>",
    "</answer>",
]

#: Qwen2.5-VL's chat template (images and text in a user turn; a default system prompt).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: text widths of the tiny policy (SPEC §7); vocab_size is set from the tokenizer.
TINY_QWEN_TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
    tie_word_embeddings=True,
)

#: vision-tower widths of the tiny policy (SPEC §7).
TINY_QWEN_VISION_CONFIG = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    out_hidden_size=128,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    fullatt_block_indexes=[1],
    window_size=56,
)

_BASE_CORPUS = """
You are a helpful assistant. Please find the object the instruction refers to in the image.
First think about the question step by step inside the think tags, then output the position token.
I see a red circle, a blue square, a green triangle, a yellow star and a purple diamond.
The instruction asks for the shape left of the blue square, so the target is the green triangle.
The largest green object is the circle. The smallest shape is the orange square.
The colour that appears only once is yellow. Something that could roll is the circle.
It is the person holding the umbrella. What in the picture can offer shade at the bus stop?
The tree next to the bench gives shade. The answer is the dog on the left of the man.
man woman person child dog cat car bus bench tree umbrella table chair cup bottle phone left right
above below top bottom middle first second third largest smallest biggest other only not the a an
0 1 2 3 4 5 6 7 8 9 10 100 , . : ; ? ! " ' ( ) [ ] { } bbox points answer think
"""


def default_corpus() -> list[str]:
    """A small built-in English corpus for the tiny tokenizer (lines of text)."""
    return [line.strip() for line in _BASE_CORPUS.strip().splitlines() if line.strip()]


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer locally and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        corpus: lines of text to learn merges from (the built-in corpus when None). Byte-level BPE
            covers every string whatever the corpus; the corpus only decides which words are short.
        vocab_size: target vocabulary size including special tokens.

    Returns:
        A ``PreTrainedTokenizerFast`` with Qwen's chat tokens, ``<think>``, ``</think>``,
        ``<REF_POS>``, ``<SEG>``, ``<answer>``, ``</answer>`` as special tokens, the Qwen chat
        template, ``eos_token='<|im_end|>'`` and ``pad_token='<|endoftext|>'``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = list(corpus) if corpus is not None else default_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={},
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def build_tiny_processor(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    min_pixels: int = 3136,
    max_pixels: int = 112 * 112,
):
    """A ``Qwen2_5_VLProcessor`` around :func:`build_tiny_tokenizer` and Qwen's image processor.

    ``max_pixels`` defaults to 112² (16 image tokens) for CPU speed; the paper's cap is 705,600.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = build_tiny_tokenizer(corpus, vocab_size)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def build_tiny_qwen2_5_vl(tokenizer, seed: int = 0, text_config: dict | None = None,
                          vision_config: dict | None = None):
    """A random-initialised ``Qwen2_5_VLForConditionalGeneration`` with tiny widths.

    Token ids (image, vision start/end, bos/eos/pad) are taken from ``tokenizer`` so they fall
    inside the tiny vocabulary. Deterministic given ``seed``.
    """
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TINY_QWEN_TEXT_CONFIG, **(text_config or {}))
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(TINY_QWEN_VISION_CONFIG, **(vision_config or {})),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    devrng = torch.random.fork_rng(devices=[])
    with devrng:
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model.eval()


def save_tiny_qwen2_5_vl(
    save_dir: str | os.PathLike,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    min_pixels: int = 3136,
    max_pixels: int = 112 * 112,
    text_config: dict | None = None,
    vision_config: dict | None = None,
) -> Path:
    """Build the tiny processor + model and ``save_pretrained`` both into ``save_dir``.

    The directory then has the layout of a Hugging Face Qwen2.5-VL checkpoint
    (``config.json``, ``model.safetensors``, tokenizer and processor files) and loads with
    ``AutoProcessor.from_pretrained`` / ``Qwen2_5_VLForConditionalGeneration.from_pretrained``.
    A ``coprs_tiny.json`` records how it was made.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_processor(corpus, vocab_size, min_pixels, max_pixels)
    model = build_tiny_qwen2_5_vl(processor.tokenizer, seed, text_config, vision_config)
    processor.save_pretrained(save_dir)
    model.save_pretrained(save_dir)
    (save_dir / "coprs_tiny.json").write_text(
        json.dumps(dict(seed=seed, vocab_size=vocab_size, min_pixels=min_pixels,
                        max_pixels=max_pixels, text_config=text_config,
                        vision_config=vision_config), indent=2)
    )
    return save_dir
