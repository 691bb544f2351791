"""Prompt templates and response parsing shared by policies, priors and rewards."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

__all__ = ["PROMPT_TEMPLATES", "build_prompt_text", "ParsedResponse", "parse_think_response",
           "parse_token_response", "CoordinateAnswer", "parse_coordinate_answer",
           "parse_segzero_response"]

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


def _strip_end_tokens(response: str) -> str:
    for tok in _END_TOKENS:
        response = response.replace(tok, "")
    return response


def parse_token_response(response: str, special_token: str = "<SEG>") -> ParsedResponse:
    """Parse LISA-style responses (an answer that contains the special token); never raises.

    Valid when the special token occurs exactly once. ``cot`` is the text before the token (the
    answer, e.g. "It is the red circle"), ``after`` the text after it. Chat end tokens are
    ignored.
    """
    text = _strip_end_tokens(response)
    n_special = text.count(special_token) if special_token else 0
    if n_special == 0:
        return ParsedResponse(valid=False, cot=text.strip(), n_special=0)
    before, after = text.split(special_token, 1)
    return ParsedResponse(valid=n_special == 1, cot=before.strip(), after=after.strip(),
                          n_special=n_special)


@dataclass
class CoordinateAnswer:
    """A box and points read from a Seg-Zero-style answer, in the policy view's pixels.

    Attributes:
        bbox: (x1, y1, x2, y2) with x2 > x1 and y2 > y1.
        points: the points ``(x, y)``, in the order written.
    """

    bbox: tuple[float, float, float, float]
    points: list[tuple[float, float]]


_ANSWER_RE = re.compile(r"(?s)<answer>(.*?)</answer>")


def _finite_numbers(value, n: int) -> list[float] | None:
    """``value`` as n finite floats if it is a list of n JSON numbers (not booleans), else None."""
    if not isinstance(value, list) or len(value) != n:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    out = [float(v) for v in value]
    return out if all(math.isfinite(v) for v in out) else None


def parse_coordinate_answer(response: str, num_points: int = 2
                            ) -> tuple[CoordinateAnswer | None, str]:
    """Read ``{"bbox": [x1,y1,x2,y2], "points": [[x,y], …]}`` from the first ``<answer>…</answer>``
    block of a response; never raises.

    Args:
        response: the response text.
        num_points: how many points the answer must hold (Seg-Zero: 2).

    Returns:
        ``(answer, "")`` when the answer is well formed, else ``(None, reason)`` with reason one
        of: no answer block, not JSON, not an object, a missing key, a box that is not four finite
        numbers, points that are not ``num_points`` pairs of finite numbers, or a degenerate box
        (``x2 <= x1`` or ``y2 <= y1``). Extra keys are ignored.
    """
    m = _ANSWER_RE.search(_strip_end_tokens(response))
    if m is None:
        return None, "no <answer>…</answer> block"
    try:
        data = json.loads(m.group(1).strip())
    except (ValueError, RecursionError):
        return None, "the answer is not valid JSON"
    if not isinstance(data, dict):
        return None, "the answer JSON is not an object"
    for key in ("bbox", "points"):
        if key not in data:
            return None, f"the answer has no {key!r}"
    bbox = _finite_numbers(data["bbox"], 4)
    if bbox is None:
        return None, "'bbox' is not a list of four finite numbers"
    raw = data["points"]
    points = ([_finite_numbers(p, 2) for p in raw]
              if isinstance(raw, list) and len(raw) == num_points else None)
    if points is None or any(p is None for p in points):
        return None, f"'points' is not a list of {num_points} [x, y] pairs of finite numbers"
    if bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
        return None, "degenerate box (x2 <= x1 or y2 <= y1)"
    return CoordinateAnswer(bbox=tuple(bbox), points=[tuple(p) for p in points]), ""


def parse_segzero_response(response: str, num_points: int = 2) -> ParsedResponse:
    """Parse ``<think>…</think><answer>{json}</answer>`` responses; never raises.

    Valid when there is exactly one non-empty think block, followed by exactly one answer block
    whose JSON is well formed (:func:`parse_coordinate_answer`). ``between`` is the text between
    ``</think>`` and ``<answer>``, ``after`` the text after ``</answer>``, ``n_special`` the
    number of answer blocks. Chat end tokens are ignored.
    """
    text = _strip_end_tokens(response)
    n_answers = text.count("<answer>")
    m = re.fullmatch(r"(?s)(.*?)<think>(.*?)</think>(.*)", text)
    if m is None or text.count("<think>") != 1 or text.count("</think>") != 1:
        cot = text.split("<answer>")[0].replace("<think>", "").replace("</think>", "").strip()
        return ParsedResponse(valid=False, cot=cot, n_special=n_answers)
    before, cot, rest = m.group(1).strip(), m.group(2).strip(), m.group(3)
    am = re.fullmatch(r"(?s)(.*?)<answer>(.*?)</answer>(.*)", rest)
    if am is None or n_answers != 1 or text.count("</answer>") != 1:
        return ParsedResponse(valid=False, cot=cot, before_think=before, n_special=n_answers)
    answer, _ = parse_coordinate_answer(rest, num_points)
    return ParsedResponse(valid=bool(cot) and answer is not None, cot=cot, before_think=before,
                          between=am.group(1).strip(), after=am.group(3).strip(),
                          n_special=n_answers)
