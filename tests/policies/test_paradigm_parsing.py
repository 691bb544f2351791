"""Parsing of LISA-style (<SEG>) and Seg-Zero-style (<answer>{json}</answer>) responses."""

import pytest

from coprs.policies.prompts import (
    parse_coordinate_answer,
    parse_segzero_response,
    parse_token_response,
)

GOOD = '<think>the red one</think><answer>{"bbox": [10, 20, 30, 40], "points": [[15, 25], [20, 30]]}</answer>'


def test_token_response():
    p = parse_token_response("It is the red circle <SEG>.<|im_end|>", "<SEG>")
    assert p.valid and p.cot == "It is the red circle" and p.after == "." and p.n_special == 1
    none = parse_token_response("It is the red circle.", "<SEG>")
    assert not none.valid and none.cot == "It is the red circle." and none.n_special == 0
    two = parse_token_response("<SEG> and <SEG>", "<SEG>")
    assert not two.valid and two.n_special == 2


def test_coordinate_answer_well_formed():
    ans, why = parse_coordinate_answer(GOOD)
    assert why == "" and ans.bbox == (10.0, 20.0, 30.0, 40.0)
    assert ans.points == [(15.0, 25.0), (20.0, 30.0)]
    # floats, whitespace, extra keys, chat end tokens; the first answer block counts
    ans, _ = parse_coordinate_answer('<answer>\n {"bbox":[1.5,2,3,4.25],"points":[[1,2],[3,4]],'
                                     '"label":"x"} </answer><answer>junk</answer><|im_end|>')
    assert ans.bbox == (1.5, 2.0, 3.0, 4.25)


@pytest.mark.parametrize("text, reason", [
    ("no answer here", "no <answer>"),
    ("<answer>{\"bbox\": [1, 2, 3</answer>", "not valid JSON"),
    ("<answer>[1, 2, 3, 4]</answer>", "not an object"),
    ('<answer>{"points": [[1, 2], [3, 4]]}</answer>', "no 'bbox'"),
    ('<answer>{"bbox": [1, 2, 3, 4]}</answer>', "no 'points'"),
    ('<answer>{"bbox": [1, 2, 3], "points": [[1, 2], [3, 4]]}</answer>', "four finite"),
    ('<answer>{"bbox": ["1", 2, 3, 4], "points": [[1, 2], [3, 4]]}</answer>', "four finite"),
    ('<answer>{"bbox": [true, 2, 3, 4], "points": [[1, 2], [3, 4]]}</answer>', "four finite"),
    ('<answer>{"bbox": [NaN, 2, 3, 4], "points": [[1, 2], [3, 4]]}</answer>', "four finite"),
    ('<answer>{"bbox": [1e999, 2, 3, 4], "points": [[1, 2], [3, 4]]}</answer>', "four finite"),
    ('<answer>{"bbox": [1, 2, 3, 4], "points": [[1, 2]]}</answer>', "'points'"),
    ('<answer>{"bbox": [1, 2, 3, 4], "points": [[1, 2, 3], [3, 4]]}</answer>', "'points'"),
    ('<answer>{"bbox": [1, 2, 3, 4], "points": [[1, null], [3, 4]]}</answer>', "'points'"),
    ('<answer>{"bbox": [5, 2, 5, 4], "points": [[1, 2], [3, 4]]}</answer>', "degenerate"),
    ('<answer>{"bbox": [1, 4, 3, 2], "points": [[1, 2], [3, 4]]}</answer>', "degenerate"),
    ("<answer>" + "[" * 100000 + "</answer>", "not valid JSON"),
])
def test_coordinate_answer_malformed_never_raises(text, reason):
    ans, why = parse_coordinate_answer(text)
    assert ans is None and reason in why


def test_coordinate_answer_point_count_is_configurable():
    text = '<answer>{"bbox": [1, 2, 3, 4], "points": [[1, 2]]}</answer>'
    assert parse_coordinate_answer(text, num_points=1)[0] is not None
    assert parse_coordinate_answer(text, num_points=2)[0] is None


def test_segzero_response():
    p = parse_segzero_response(GOOD + "<|im_end|>")
    assert p.valid and p.cot == "the red one" and p.between == "" and p.after == ""
    assert p.n_special == 1
    loose = parse_segzero_response("Sure. " + GOOD.replace("</think>", "</think> so ") + " done")
    assert loose.valid and loose.before_think == "Sure." and loose.between == "so"
    assert loose.after == "done"
    for bad in (GOOD.replace("the red one", " "),                  # empty think
                GOOD.replace("<think>", ""),                       # no think block
                GOOD + GOOD[GOOD.index("<answer>"):],              # two answers
                GOOD.replace("[10, 20, 30, 40]", "[10, 20]"),      # bad JSON content
                GOOD[GOOD.index("<answer>"):] + "<think>x</think>"):  # answer before think
        assert not parse_segzero_response(bad).valid, bad
