"""Prompt templates and response parsing shared by policies, priors and rewards."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PROMPT_TEMPLATES", "build_prompt_text", "ParsedResponse", "parse_think_response"]

#: instruction templates by name; ``{instruction}`` and ``{special_token}`` are filled in.
PROMPT_TEMPLATES = {
    # CoPRS (paper Sec. 3.1): reason in <think>…</think>, then emit the concentration token.
    "coprs": (
        "{instruction}\nFind the object the instruction refers to. First output the thinking "
        "process in <think> </think> tags, then output {special_token}."
    ),
    # LISA-style: answer, then the segmentation token.
    "lisa": "{instruction}\nPlease answer and output {special_token} for the segmentation mask.",
    # Seg-Zero-style: reason, then a JSON box and two points in <answer> tags.
    "segzero": (
        "{instruction}\nFind the object the instruction refers to. First output the thinking "
        "process in <think> </think> tags, then output the bounding box and two points inside "
        'the object as JSON in <answer> </answer> tags, like {{"bbox": [x1,y1,x2,y2], '
        '"points": [[x,y],[x,y]]}}.'
    ),
}


def build_prompt_text(instruction: str, template: str = "coprs", special_token: str = "<REF_POS>"
                      ) -> str:
    """Fill a prompt template (a name in :data:`PROMPT_TEMPLATES` or a format string)."""
    fmt = PROMPT_TEMPLATES.get(template, template)
    if "{instruction}" not in fmt:
        raise ValueError(
            f"prompt template {template!r} is neither a known name ({', '.join(PROMPT_TEMPLATES)}) "
            "nor a format string containing '{instruction}'"
        )
    return fmt.format(instruction=instruction, special_token=special_token)


@dataclass
class ParsedResponse:
    """A response split into its parts.

    Attributes:
        valid: exactly one non-empty ``<think>…</think>`` followed by exactly one special token.
        cot: the think content (stripped); without tags, the text before the special token.
        before_think: text before ``<think>`` (stripped).
        between: text between ``</think>`` and the special token (stripped).
        after: text after the special token (stripped; chat end tokens removed).
        n_special: how many special tokens the response contains.
    """

    valid: bool
    cot: str
    before_think: str = ""
    between: str = ""
    after: str = ""
    n_special: int = 0


_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


def parse_think_response(response: str, special_token: str = "<REF_POS>") -> ParsedResponse:
    """Parse ``<think>…</think>{special_token}`` responses; never raises.

    Chat end tokens (``<|im_end|>``, ``<|endoftext|>``) are ignored.
    """
    text = response
    for tok in _END_TOKENS:
        text = text.replace(tok, "")
    n_special = text.count(special_token)
    opens, closes = text.count("<think>"), text.count("</think>")
    m = re.fullmatch(r"(?s)(.*?)<think>(.*?)</think>(.*)", text)
    if m is None or opens != 1 or closes != 1:
        cot = text.split(special_token)[0] if special_token else text
        cot = cot.replace("<think>", "").replace("</think>", "").strip()
        return ParsedResponse(valid=False, cot=cot, n_special=n_special)
    before, cot, rest = m.group(1).strip(), m.group(2).strip(), m.group(3)
    if n_special != 1 or special_token not in rest:
        return ParsedResponse(valid=False, cot=cot, before_think=before, n_special=n_special)
    between, after = rest.split(special_token, 1)
    return ParsedResponse(
        valid=bool(cot),
        cot=cot,
        before_think=before,
        between=between.strip(),
        after=after.strip(),
        n_special=n_special,
    )
