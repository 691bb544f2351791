"""How consistent is a chain of thought, and does a better one give a better mask (paper Sec. 4.3)?

The paper scores each generated chain of thought against its image and instruction with an
automatic judge, as a weighted average over four dimensions (:data:`PAPER_WEIGHTS`: logical
correctness 0.3, task relevance 0.2, visual consistency 0.3, localization accuracy 0.2), then
groups the samples by score range (:data:`PAPER_EDGES`) and reports the count and the mean heatmap
and mask IoU of each range (its Table 3), and plots score against heatmap and mask IoU (Figure 4).

Judges are components of the ``COT_JUDGES`` registry (plugins add theirs with the
``register_cot_judges`` hook). Each is called as ``judge(record, sample)``, where ``record`` is a
per-sample record of ``coprs test`` (``response``, ``instruction``, ``sample_id``, …) and
``sample`` the dataset's data info for that sample (None when the judge does not need it), and
returns a :class:`Judgement`. A judge never raises for a response it cannot score: it returns a
judgement with ``error`` set, and the analysis counts it apart.

* :class:`ShapesCoTJudge`: exact, rule-based, for the synthetic world, whose scenes are known.
* :class:`ScoresFileJudge`: scores made elsewhere (an API model, people) read from JSON lines.
* :class:`VLMJudge`: a multimodal LLM from a local folder (e.g. a Qwen2.5-VL-Instruct checkpoint)
  asked for the four scores as JSON.

``tools/analysis/cot_consistency.py`` runs a judge over the records of ``coprs test`` and writes
the table and the plots.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import COT_JUDGES
from .functional import read_json_records

__all__ = [
    "PAPER_WEIGHTS", "PAPER_EDGES", "DIMENSIONS", "Judgement", "BaseCoTJudge", "ShapesCoTJudge",
    "ScoresFileJudge", "VLMJudge", "consistency_score", "consistency_table", "judge_prompt",
    "parse_judge_output",
]

#: the paper's four dimensions and their weights in the consistency score
PAPER_WEIGHTS: dict[str, float] = {
    "logical_correctness": 0.3,
    "task_relevance": 0.2,
    "visual_consistency": 0.3,
    "localization_accuracy": 0.2,
}
DIMENSIONS: tuple[str, ...] = tuple(PAPER_WEIGHTS)
#: the paper's score ranges (Table 3): [0, 0.25), [0.25, 0.5), [0.5, 0.75), [0.75, 1]
PAPER_EDGES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def consistency_score(dims: Mapping[str, float],
                      weights: Mapping[str, float] = PAPER_WEIGHTS) -> float:
    """The weighted average of the dimension scores, in [0, 1].

    Raises:
        ValueError: a dimension of ``weights`` is missing from ``dims``, a score is not in
            [0, 1], or the weights are negative or sum to 0.
    """
    missing = [k for k in weights if k not in dims]
    if missing:
        raise ValueError(f"the scores lack {missing}; a consistency score needs every dimension "
                         f"of {list(weights)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    total = sum(weights.values())
    return sum(w * _check_unit(k, dims[k]) for k, w in weights.items()) / total


def consistency_table(scores: Sequence[float], heatmap_iou: Sequence[float | None],
                      mask_iou: Sequence[float], edges: Sequence[float] = PAPER_EDGES
                      ) -> list[dict[str, Any]]:
    """The paper's Table 3: per score range, the number of samples and their mean heatmap and
    mask IoU (None for an empty range; heatmap IoU averages the samples that have one).

    Ranges are half-open, ``[edges[i], edges[i+1])``, except the last, which includes its upper
    edge. Every score must lie within ``[edges[0], edges[-1]]``.
    """
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two increasing numbers, got {list(edges)}")
    if not len(scores) == len(heatmap_iou) == len(mask_iou):
        raise ValueError(f"scores, heatmap_iou and mask_iou differ in length: {len(scores)}, "
                         f"{len(heatmap_iou)}, {len(mask_iou)}")
    scores_a = np.asarray(scores, dtype=np.float64)
    outside = scores_a[(scores_a < edges[0]) | (scores_a > edges[-1])]
    if outside.size:
        raise ValueError(f"{outside.size} score(s) lie outside [{edges[0]}, {edges[-1]}], e.g. "
                         f"{outside[0]}")
    rows = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        last = i == len(edges) - 2
        inside = (scores_a >= lo) & ((scores_a <= hi) if last else (scores_a < hi))
        idx = np.flatnonzero(inside)
        heat = [heatmap_iou[j] for j in idx if heatmap_iou[j] is not None]
        rows.append({
            "range": f"[{lo:g}, {hi:g}{']' if last else ')'}",
            "low": float(lo),
            "high": float(hi),
            "n": int(idx.size),
            "heatmap_miou": float(np.mean(heat)) if heat else None,
            "mask_miou": float(np.mean([mask_iou[j] for j in idx])) if idx.size else None,
        })
    return rows


@dataclass
class Judgement:
    """What a judge made of one response.

    Attributes:
        dims: the score of each dimension (:data:`DIMENSIONS`), or None.
        score: the consistency score in [0, 1], or None when the response could not be judged.
        error: why it could not be judged (None when it was).
        detail: anything else the judge reports (e.g. a VLM judge's raw output).
    """

    dims: dict[str, float] | None
    score: float | None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str, **detail: Any) -> Judgement:
        return cls(dims=None, score=None, error=error, detail=detail)


class BaseCoTJudge(abc.ABC):
    """Scores a response's chain of thought: ``judge(record, sample) -> Judgement``.

    ``needs_sample`` tells the analysis to pass each sample's data info (the synthetic world's
    scene, the image); otherwise ``sample`` is None. A response that cannot be judged gives a
    :meth:`Judgement.failed`, never an exception.

    Args:
        weights: dimension weights of the consistency score (default: the paper's).
    """

    needs_sample: bool = False
    #: the dimensions this judge scores (``weights`` may weigh a subset of them)
    dimensions: tuple[str, ...] = DIMENSIONS

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(PAPER_WEIGHTS if weights is None else weights)
        unknown = [k for k in self.weights if k not in self.dimensions]
        if unknown:
            raise ValueError(f"{type(self).__name__} weights name unknown dimensions {unknown}; "
                             f"it scores {list(self.dimensions)}")
        consistency_score({k: 0.0 for k in self.weights}, self.weights)  # validates the weights

    def judged(self, dims: Mapping[str, float], **detail: Any) -> Judgement:
        """A judgement from dimension scores (a failed one if a score is not in [0, 1])."""
        try:
            dims = {k: _check_unit(k, dims[k]) for k in self.weights}
            return Judgement(dims=dims, score=consistency_score(dims, self.weights), detail=detail)
        except (KeyError, ValueError) as exc:
            return Judgement.failed(f"bad scores {dict(dims)}: {exc}", **detail)

    @abc.abstractmethod
    def __call__(self, record: Mapping[str, Any], sample: Mapping[str, Any] | None = None
                 ) -> Judgement:
        """Judge ``record['response']`` (a per-sample record of ``coprs test``)."""

    def judge_many(self, records: Sequence[Mapping[str, Any]],
                   samples: Sequence[Mapping[str, Any] | None]) -> list[Judgement]:
        """Judge several records at once (one by one here; a model judge batches them)."""
        return [self(r, s) for r, s in zip(records, samples, strict=True)]


def _f1(pred: Iterable, gold: Iterable) -> float:
    """Multiset F1 of two collections; 1.0 when both are empty."""
    p, g = Counter(pred), Counter(gold)
    n_p, n_g = sum(p.values()), sum(g.values())
    if n_p + n_g == 0:
        return 1.0
    return 2.0 * sum((p & g).values()) / (n_p + n_g)


@COT_JUDGES.register_module()
class ShapesCoTJudge(BaseCoTJudge):
    """Exact judge for the synthetic world: the scene and the gold reasoning are known.

    The response's chain of thought is split into sentences of the world's gold forms
    (:func:`coprs.datasets.shapes.cot_sentences`):

    * **visual consistency**: the objects its inventory ("I see a red star and …") lists against
      the scene's objects, as a multiset F1 over (colour, shape); 0 without an inventory;
    * **logical correctness**: its steps (the sentences between the inventory and the answer)
      against the gold reasoning's steps, as a multiset F1 over whole sentences: a step is right
      when it states what holds in this scene;
    * **task relevance**: the *kinds* of its steps (a size comparison, a relation, a colour
      group, …) against the gold steps' kinds, as a multiset F1: does it reason about what the
      instruction asks, right or wrong;
    * **localization accuracy**: 0.5 if its answer ("So the target is the red star in the lower
      left.") names the target's colour and shape, plus 0.5 if it names the target's place; 0
      without an answer.

    The gold reasoning scores 1 in every dimension. Needs the sample's ``gold_cot``, ``objects``
    and ``gold_answer_region`` (the synthetic dataset's data info).
    """

    needs_sample = True

    def __call__(self, record, sample=None):
        from ..datasets.shapes import cot_sentences, parse_final_answer, parse_inventory

        if sample is None or not all(k in sample for k in ("gold_cot", "objects",
                                                             "gold_answer_region")):
            return Judgement.failed("ShapesCoTJudge needs a synthetic-world sample (gold_cot, "
                                    "objects, gold_answer_region); use it on the shapes dataset")
        response = record.get("response")
        if not isinstance(response, str):
            return Judgement.failed("the record has no response text (per-sample records of "
                                    "`coprs test` keep it; rerun the evaluation)")
        inventory = parse_inventory(response)
        scene = [(o["colour"], o["shape"]) for o in sample["objects"]]
        visual = 0.0 if inventory is None else _f1(inventory, scene)

        def steps(text: str) -> list[tuple[str | None, str]]:
            return [(k, s) for k, s in cot_sentences(text) if k not in ("see", "final")]

        mine, gold = steps(response), steps(sample["gold_cot"])
        logical = _f1([s for _, s in mine], [s for _, s in gold])
        relevance = _f1([k for k, _ in mine], [k for k, _ in gold])

        target, _, place = sample["gold_answer_region"].removeprefix("the ").partition(" in the ")
        answer = parse_final_answer(response)
        located = 0.0
        if answer is not None:
            located = 0.5 * (f"{answer[0]} {answer[1]}" == target) + 0.5 * (answer[2] == place)
        return self.judged({"logical_correctness": logical, "task_relevance": relevance,
                            "visual_consistency": visual, "localization_accuracy": located})


@COT_JUDGES.register_module()
class ScoresFileJudge(BaseCoTJudge):
    """Scores made elsewhere, read from JSON lines: one object per sample with its
    ``sample_id`` and either the four dimensions (:data:`DIMENSIONS`) or a ready ``consistency``
    score, each in [0, 1]. A sample absent from the file is reported, not scored.

    Args:
        path: the JSON-lines file.
        weights: dimension weights (default: the paper's).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder or holds no records, a line is not a JSON object with a
            ``sample_id`` (names the line), or a sample id appears twice.
    """

    def __init__(self, path: str, weights: Mapping[str, float] | None = None) -> None:
        super().__init__(weights)
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"scores file '{path}' is a folder; give the JSON-lines file")
        if not self.path.is_file():
            raise FileNotFoundError(f"scores file '{path}' does not exist")
        self.scores: dict[str, dict] = {}
        for n, obj in enumerate(read_json_records(self.path, ("sample_id",)), 1):
            sid = str(obj["sample_id"])
            if sid in self.scores:
                raise ValueError(f"{path}: sample_id {sid!r} appears twice (record {n})")
            self.scores[sid] = obj
        if not self.scores:
            raise ValueError(f"scores file '{path}' holds no records")

    def __call__(self, record, sample=None):
        obj = self.scores.get(str(record.get("sample_id")))
        if obj is None:
            return Judgement.failed(f"no score for sample {record.get('sample_id')!r} in "
                                    f"{self.path}")
        if all(k in obj for k in self.weights):
            return self.judged({k: obj[k] for k in self.weights})
        if "consistency" not in obj:
            return Judgement.failed(f"the line of sample {obj['sample_id']!r} in {self.path} has "
                                    f"neither every dimension of {list(self.weights)} nor "
                                    "'consistency'")
        try:
            return Judgement(dims=None, score=_check_unit("consistency", obj["consistency"]))
        except ValueError as exc:
            return Judgement.failed(str(exc))


#: the question a :class:`VLMJudge` asks, after the image; ``{instruction}`` and ``{reasoning}``
#: are filled in
JUDGE_PROMPT = (
    "You are checking the reasoning written for an image segmentation request.\n"
    "Request: {instruction}\n"
    "Reasoning: {reasoning}\n"
    "Rate the reasoning against the image and the request, each from 0 (worst) to 1 (best):\n"
    "- logical_correctness: are its steps logically sound?\n"
    "- task_relevance: does it address what the request asks?\n"
    "- visual_consistency: does what it says agree with the image?\n"
    "- localization_accuracy: does it identify and locate the right target?\n"
    'Answer with one JSON object only, e.g. {{"logical_correctness": 0.8, "task_relevance": 1.0, '
    '"visual_consistency": 0.6, "localization_accuracy": 0.5}}'
)


def judge_prompt(instruction: str, reasoning: str, template: str = JUDGE_PROMPT) -> str:
    """The text a :class:`VLMJudge` sends with the image."""
    return template.format(instruction=instruction, reasoning=reasoning)


_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_judge_output(text: str, dimensions: Sequence[str] = DIMENSIONS) -> dict[str, float]:
    """The scores of the first JSON object in ``text`` that has every dimension.

    Raises:
        ValueError: no such object (the message quotes the start of the output), or a score
            that is not a number in [0, 1].
    """
    for m in _JSON_OBJECT.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and all(k in obj for k in dimensions):
            return {k: _check_unit(k, obj[k]) for k in dimensions}
    head = text.strip().replace("\n", " ")[:120]
    raise ValueError(f"the judge's output has no JSON object with {list(dimensions)}: "
                     + (repr(head) if head else "(an empty output)"))


@COT_JUDGES.register_module()
class VLMJudge(BaseCoTJudge):
    """A multimodal LLM from a local folder judges each response (greedy), given the image, the
    instruction and the chain of thought, with :data:`JUDGE_PROMPT`; its answer is parsed by
    :func:`parse_judge_output`. An output without the four scores is a failed judgement that
    quotes it, not an error. A response without reasoning scores 0 in every dimension, as with
    :class:`ShapesCoTJudge`, and the model is not asked.

    The folder is anything ``transformers.AutoModelForImageTextToText`` and ``AutoProcessor``
    load (Qwen2.5-VL-7B/72B-Instruct, …), read with ``local_files_only=True``: coprs never
    downloads.

    Args:
        model_path: the local model folder.
        max_new_tokens: generation budget per response.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'`` …
        torch_dtype: ``'float32'``, ``'bfloat16'`` or ``'float16'``.
        prompt: the question (``{instruction}`` and ``{reasoning}`` are filled in).
        batch_size: questions generated together (left-padded) by :meth:`judge_many`; greedy
            answers are the same as one at a time up to floating-point rounding.
        weights: dimension weights (default: the paper's).

    Raises:
        FileNotFoundError: ``model_path`` is not a folder.
    """

    needs_sample = True

    def __init__(self, model_path: str, max_new_tokens: int = 128, device: str = "cpu",
                 torch_dtype: str = "float32", prompt: str = JUDGE_PROMPT, batch_size: int = 1,
                 weights: Mapping[str, float] | None = None) -> None:
        super().__init__(weights)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not Path(model_path).is_dir():
            raise FileNotFoundError(
                f"judge model folder '{model_path}' does not exist; give a local folder with the "
                "model's config, weights and processor files (coprs never downloads)")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if torch_dtype not in dtypes:
            raise ValueError(f"torch_dtype {torch_dtype!r} must be one of {list(dtypes)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues each row
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, local_files_only=True, dtype=dtypes[torch_dtype]).to(device).eval()
        self.device, self.max_new_tokens, self.prompt = device, max_new_tokens, prompt
        self.batch_size = batch_size

    def generate_batch(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[str]:
        """The model's greedy answers to ``texts``, each about its image, in one batch."""
        import torch

        chats = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
            add_generation_prompt=True, tokenize=False) for t in texts]
        inputs = self.processor(text=chats, images=list(images), padding=True,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                           skip_special_tokens=True)

    def generate(self, image: np.ndarray, text: str) -> str:
        """The model's greedy answer to ``text`` about ``image``."""
        return self.generate_batch([image], [text])[0]

    def _prepare(self, record, sample) -> Judgement | tuple[np.ndarray, str]:
        """The image and question for the model, or the judgement when none is needed."""
        from ..image import load_image
        from ..policies.prompts import parse_think_response

        if sample is None:
            return Judgement.failed("VLMJudge needs the sample (its image)")
        try:
            image = load_image(sample["img"] if sample.get("img") is not None
                               else sample["img_path"])
        except (KeyError, FileNotFoundError, ValueError) as exc:
            return Judgement.failed(f"cannot read the sample's image: {exc}")
        reasoning = parse_think_response(str(record.get("response") or "")).cot
        if not reasoning:  # as ShapesCoTJudge scores it: nothing is consistent
            return self.judged(dict.fromkeys(self.weights, 0.0), output="",
                               note="no reasoning: 0 in every dimension, the model not asked")
        return image, judge_prompt(str(record.get("instruction", "")), reasoning, self.prompt)

    def _parse(self, output: str) -> Judgement:
        try:
            dims = parse_judge_output(output, tuple(self.weights))
        except ValueError as exc:
            return Judgement.failed(str(exc), output=output)
        return self.judged(dims, output=output)

    def judge_many(self, records, samples):
        """Judge ``records``, asking the model ``batch_size`` questions at a time."""
        out: list[Judgement | None] = []
        asks: list[tuple[int, np.ndarray, str]] = []
        for r, s in zip(records, samples, strict=True):
            prepared = self._prepare(r, s)
            if isinstance(prepared, Judgement):
                out.append(prepared)
            else:
                out.append(None)
                asks.append((len(out) - 1, *prepared))
        for k in range(0, len(asks), self.batch_size):
            chunk = asks[k:k + self.batch_size]
            outputs = self.generate_batch([a[1] for a in chunk], [a[2] for a in chunk])
            for (i, _, _), output in zip(chunk, outputs, strict=True):
                out[i] = self._parse(output)
        return out

    def __call__(self, record, sample=None):
        return self.judge_many([record], [sample])[0]
