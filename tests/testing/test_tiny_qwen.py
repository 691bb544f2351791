import torch
from PIL import Image

from coprs.testing.tiny_qwen import SPECIAL_TOKENS, build_tiny_qwen2_5_vl, build_tiny_tokenizer


def test_tokenizer_special_tokens_are_single_ids():
    tok = build_tiny_tokenizer()
    for t in SPECIAL_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, t
    ids = tok.encode("<think>the red circle</think><REF_POS>", add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids("<think>")
    assert ids[-1] == tok.convert_tokens_to_ids("<REF_POS>")
    assert tok.decode(ids) == "<think>the red circle</think><REF_POS>"


def test_saved_directory_loads_with_the_user_code_path(tiny_qwen_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    assert (tiny_qwen_dir / "config.json").is_file()
    proc = AutoProcessor.from_pretrained(tiny_qwen_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    batch = proc(text=[text], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    image_id = model.config.image_token_id
    assert int((batch["input_ids"] == image_id).sum()) == 16  # 112² → 4 x 4 merged patches
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size


def test_build_is_deterministic_given_seed():
    tok = build_tiny_tokenizer()
    a = build_tiny_qwen2_5_vl(tok, seed=3).state_dict()
    b = build_tiny_qwen2_5_vl(tok, seed=3).state_dict()
    c = build_tiny_qwen2_5_vl(tok, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
