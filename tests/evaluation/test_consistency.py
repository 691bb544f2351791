"""Chain-of-thought consistency (paper Sec. 4.3): the score, the table, the judges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coprs.datasets.shapes import ShapesReasonDataset, cot_sentences
from coprs.evaluation.consistency import (
    PAPER_WEIGHTS,
    ScoresFileJudge,
    ShapesCoTJudge,
    VLMJudge,
    consistency_score,
    consistency_table,
    judge_prompt,
    parse_judge_output,
)
from coprs.registry import COT_JUDGES
from coprs.utils import register_all_modules


def test_score_is_the_papers_weighted_average():
    dims = {"logical_correctness": 1.0, "task_relevance": 0.0, "visual_consistency": 0.5,
            "localization_accuracy": 0.25}
    # 0.3 * 1 + 0.2 * 0 + 0.3 * 0.5 + 0.2 * 0.25
    assert consistency_score(dims) == pytest.approx(0.5)
    assert consistency_score(dims, {"task_relevance": 1.0, "visual_consistency": 3.0}) == \
        pytest.approx(0.375)
    with pytest.raises(ValueError, match="lack.*localization_accuracy"):
        consistency_score({k: 1.0 for k in list(PAPER_WEIGHTS)[:3]})
    with pytest.raises(ValueError, match=r"visual_consistency must be a number in \[0, 1\]"):
        consistency_score({**dims, "visual_consistency": 1.5})
    with pytest.raises(ValueError, match="positive sum"):
        consistency_score(dims, {k: 0.0 for k in dims})


def test_table_bins_like_table_3():
    scores = [0.1, 0.25, 0.3, 0.9, 1.0, 0.2]
    heat = [0.2, None, 0.4, 0.8, 1.0, 0.6]
    mask = [0.0, 0.5, 0.7, 0.9, 1.0, 0.4]
    rows = consistency_table(scores, heat, mask)
    assert [r["range"] for r in rows] == ["[0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)",
                                          "[0.75, 1]"]
    assert [r["n"] for r in rows] == [2, 2, 0, 2]
    assert rows[0]["heatmap_miou"] == pytest.approx(0.4) and rows[0]["mask_miou"] == \
        pytest.approx(0.2)
    assert rows[1]["heatmap_miou"] == pytest.approx(0.4)  # the sample without one is left out
    assert rows[1]["mask_miou"] == pytest.approx(0.6)
    assert rows[2]["heatmap_miou"] is None and rows[2]["mask_miou"] is None
    assert rows[3]["mask_miou"] == pytest.approx(0.95)  # 1.0 falls in the closed last range
    assert [r["n"] for r in consistency_table(scores, heat, mask, edges=(0, 0.5, 1))] == [4, 2]
    with pytest.raises(ValueError, match="outside"):
        consistency_table([1.2], [0.1], [0.1])
    with pytest.raises(ValueError, match="increasing"):
        consistency_table([0.1], [0.1], [0.1], edges=(0, 0.5, 0.5, 1))


@pytest.fixture(scope="module")
def shapes_samples():
    ds = ShapesReasonDataset(split="test", num_samples=60)
    return [ds.get_data_info(i) for i in range(len(ds))]


def test_shapes_judge_gives_gold_reasoning_full_marks(shapes_samples):
    judge = ShapesCoTJudge()
    for s in shapes_samples:
        j = judge({"response": s["response_coprs"]}, s)
        assert j.error is None and j.score == pytest.approx(1.0), (s["gold_cot"], j)


def test_shapes_judge_scores_each_dimension(shapes_samples):
    s = next(s for s in shapes_samples if s["template_id"].startswith("superlative.sup_overall")
             and len(s["objects"]) >= 3)
    objs = [(o["colour"], o["shape"]) for o in s["objects"]]
    target, _, place = s["gold_answer_region"].removeprefix("the ").partition(" in the ")
    other_place = next(p for p in ("upper left", "centre") if p != place)
    steps = [x for k, x in cot_sentences(s["gold_cot"]) if k not in ("see", "final")]
    # the first two objects of the scene, then one listed object that is not in it
    absent = next(f"{c} {sh}" for c in ("red", "blue") for sh in ("star", "circle")
                  if (c, sh) not in objs)
    inventory = f"I see a {objs[0][0]} {objs[0][1]}, a {objs[1][0]} {objs[1][1]} and a {absent}."
    wrong_step = "Comparing sizes, the " + absent + " is the largest."
    response = (f"<think>{inventory} {wrong_step} So the target is the {target} in the "
                f"{other_place}.</think><REF_POS>")
    j = ShapesCoTJudge()({"response": response}, s)
    n = len(objs)
    visual = 2 * 2 / (3 + n)  # two of three listed objects are among the n of the scene
    assert j.dims["visual_consistency"] == pytest.approx(visual)
    assert len(steps) == 1 and steps[0].startswith("Comparing sizes")  # the one gold step
    assert j.dims["logical_correctness"] == 0.0  # the step is false in this scene
    assert j.dims["task_relevance"] == 1.0  # but it is the kind of step the question needs
    assert j.dims["localization_accuracy"] == 0.5  # the right object in the wrong place
    assert j.score == pytest.approx(0.3 * 0 + 0.2 * 1 + 0.3 * visual + 0.2 * 0.5)

    only_place = ShapesCoTJudge(weights={"localization_accuracy": 1.0})({"response": response}, s)
    assert only_place.score == 0.5 and list(only_place.dims) == ["localization_accuracy"]
    with pytest.raises(ValueError, match=r"unknown dimensions \['visual'\]"):
        ShapesCoTJudge(weights={"visual": 1.0})

    garbage = ShapesCoTJudge()({"response": "red red red"}, s)
    assert garbage.error is None and garbage.score == 0.0
    assert "synthetic-world sample" in ShapesCoTJudge()({"response": "x"}, None).error
    assert "no response text" in ShapesCoTJudge()({"response": None}, s).error


def test_scores_file_judge(tmp_path):
    path = tmp_path / "scores.jsonl"
    dims = {"logical_correctness": 1.0, "task_relevance": 0.0, "visual_consistency": 0.5,
            "localization_accuracy": 0.25}
    path.write_text("\n".join(json.dumps(x) for x in [
        {"sample_id": "a", **dims},
        {"sample_id": "b", "consistency": 0.7},
        {"sample_id": "c", "consistency": 7},
        {"sample_id": "d", "logical_correctness": 1.0},
    ]) + "\n\n")
    judge = ScoresFileJudge(str(path))
    assert judge({"sample_id": "a"}).score == pytest.approx(0.5)
    assert judge({"sample_id": "b"}).score == pytest.approx(0.7)
    assert "must be a number in [0, 1]" in judge({"sample_id": "c"}).error
    assert "neither every dimension" in judge({"sample_id": "d"}).error
    assert "no score for sample 'e'" in judge({"sample_id": "e"}).error

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sample_id": "a", "consistency": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        ScoresFileJudge(str(bad))
    bad.write_text('{"sample_id": "a", "consistency": 1}\n{"sample_id": "a", "consistency": 1}\n')
    with pytest.raises(ValueError, match="appears twice"):
        ScoresFileJudge(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ScoresFileJudge(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="is a folder"):
        ScoresFileJudge(str(tmp_path))
    bad.write_text("\n")
    with pytest.raises(ValueError, match="holds no records"):
        ScoresFileJudge(str(bad))


def test_parse_judge_output():
    text = ('Sure. {"note": 1} Here: {"logical_correctness": 0.5, "task_relevance": 1, '
            '"visual_consistency": 0.0, "localization_accuracy": 0.75} done')
    assert parse_judge_output(text) == {"logical_correctness": 0.5, "task_relevance": 1.0,
                                        "visual_consistency": 0.0, "localization_accuracy": 0.75}
    with pytest.raises(ValueError, match="no JSON object with"):
        parse_judge_output("I think it is fine.")
    with pytest.raises(ValueError, match=r"\(an empty output\)"):
        parse_judge_output("\n\n")
    with pytest.raises(ValueError, match="task_relevance must be a number"):
        parse_judge_output('{"logical_correctness": 0.5, "task_relevance": 9, '
                           '"visual_consistency": 0, "localization_accuracy": 0}')
    prompt = judge_prompt("Find the red star.", "I see a red star.")
    assert "Find the red star." in prompt and "I see a red star." in prompt


def test_vlm_judge_on_a_local_folder(tiny_qwen_dir, shapes_samples, monkeypatch):
    register_all_modules()
    judge = COT_JUDGES.build(dict(type="VLMJudge", model_path=str(tiny_qwen_dir),
                                  max_new_tokens=8, batch_size=2))
    s = shapes_samples[0]
    record = {"response": s["response_coprs"], "instruction": s["instruction"]}
    # a random-initialised model writes no scores: a failed judgement that quotes it
    j = judge(record, s)
    assert j.score is None and "no JSON object" in j.error and isinstance(j.detail["output"], str)

    # batched greedy answers are the ones asked one at a time (left padding, prompts of
    # different lengths)
    texts = [judge_prompt(x["instruction"], x["gold_cot"][:30 + 20 * i])
             for i, x in enumerate(shapes_samples[:3])]
    images = [x["img"] for x in shapes_samples[:3]]
    assert judge.generate_batch(images, texts) == [judge.generate(i, t)
                                                   for i, t in zip(images, texts)]

    calls = []

    def fake_generate_batch(images, texts):
        calls.append((images, texts))
        return ['{"logical_correctness": 1, "task_relevance": 1, "visual_consistency": 0.5, '
                '"localization_accuracy": 0}'] * len(texts)

    monkeypatch.setattr(judge, "generate_batch", fake_generate_batch)
    j = judge(record, s)
    assert j.score == pytest.approx(0.3 + 0.2 + 0.15)
    (image,), (text,) = calls[0]
    assert np.array_equal(image, s["img"]) and s["instruction"] in text
    assert s["gold_cot"] in text and "<think>" not in text
    empty = judge({"response": "", "instruction": "x"}, s)  # scored 0, as by ShapesCoTJudge
    assert empty.score == 0.0 and "no reasoning" in empty.detail["note"]

    calls.clear()  # five records, one without reasoning: the model is asked 2 + 2 at a time
    records = [{"response": x["response_coprs"], "instruction": x["instruction"]}
               for x in shapes_samples[:5]]
    records[2]["response"] = ""
    judged = judge.judge_many(records, shapes_samples[:5])
    assert [len(texts) for _, texts in calls] == [2, 2]
    assert [j.score for j in judged] == pytest.approx([0.65, 0.65, 0.0, 0.65, 0.65])
    with pytest.raises(FileNotFoundError, match="coprs never downloads"):
        VLMJudge(model_path="Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        VLMJudge(model_path=str(tiny_qwen_dir), batch_size=0)
