import pytest

from coprs.policies.prompts import build_prompt_text, parse_think_response


@pytest.mark.parametrize(
    "response, valid, cot, before, after",
    [
        ("<think>the red one</think><REF_POS>", True, "the red one", "", ""),
        ("<think>the red one</think><REF_POS><|im_end|>", True, "the red one", "", ""),
        ("Sure. <think>x</think><REF_POS>", True, "x", "Sure.", ""),
        ("<think>x</think><REF_POS> done", True, "x", "", "done"),
        ("<think></think><REF_POS>", False, "", "", ""),
        ("<think>x</think>", False, "x", "", ""),
        ("<think>x</think><REF_POS><REF_POS>", False, "x", "", ""),
        ("<think>a</think><think>b</think><REF_POS>", False, "ab", "", ""),
        ("no tags at all <REF_POS>", False, "no tags at all", "", ""),
        ("<REF_POS><think>x</think>", False, "x", "", ""),
        ("", False, "", "", ""),
    ],
)
def test_parse_think_response(response, valid, cot, before, after):
    p = parse_think_response(response)
    assert p.valid is valid
    assert p.cot == cot
    if valid:
        assert p.before_think == before and p.after == after


def test_between_text_is_reported():
    p = parse_think_response("<think>x</think> so it is the cup <REF_POS>")
    assert p.valid and p.between == "so it is the cup"


def test_build_prompt_text():
    text = build_prompt_text("the dog", "coprs", "<REF_POS>")
    assert text.startswith("the dog") and "<REF_POS>" in text and "<think>" in text
    assert build_prompt_text("x", "Q: {instruction}") == "Q: x"
    with pytest.raises(ValueError, match="neither a known name"):
        build_prompt_text("x", "nonsense")
