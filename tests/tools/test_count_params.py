import json
import math
from pathlib import Path

import pytest

from coprs.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "coprs"

# paper Tables 5-7: totals truncated to two decimals, in billions
PAPER_TOTALS = {
    "coprs_qwen2.5-vl-3b_sam-vit-h_refcoco.py": 4.39,
    "coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py": 8.93,
    "coprs_qwen2.5-vl-7b_sam-vit-l_refcoco.py": 8.60,
    "coprs_qwen2.5-vl-7b_sam-vit-b_refcoco.py": 8.38,
}


def _count(capsys, name):
    assert main(["count-params", str(CONFIGS / name), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("name, billions", sorted(PAPER_TOTALS.items()))
def test_real_size_configs_reproduce_paper_totals(capsys, name, billions):
    counts = _count(capsys, name)
    assert math.floor(counts["total"] / 1e7) / 100 == pytest.approx(billions)
    assert counts["total"] == sum(counts["components"].values())
    policy = counts["components"]["policy"]
    assert policy == (3_754_622_976 if "3b" in name else 8_292_166_656)  # SPEC §7


def test_the_8_gpu_leaf_with_a_feature_cache_counts_without_its_weight_files(capsys):
    """Its feature cache is keyed by the SAM file's size and date; on the meta device no cache
    is made, so the (absent) file is never read."""
    leaf = "coprs_qwen2.5-vl-7b_sam-vit-h_8xb2-31k_refcoco_fsdp-vllm.py"
    counts = _count(capsys, leaf)
    assert counts["total"] == _count(capsys, "coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py")["total"]


def test_added_path_of_the_3b_assembly_is_lightweight(capsys):
    c = _count(capsys, "coprs_qwen2.5-vl-3b_sam-vit-h_refcoco.py")["components"]
    assert 4.5e6 <= c["prior"] + c["decoder"] <= 4.9e6
    assert c["vision_backbone"] == 637_026_048


def test_human_readable_output_and_missing_config(capsys):
    assert main(["count-params", str(CONFIGS / "coprs_tiny_shapes_cpu.py")]) == 0
    out = capsys.readouterr().out
    assert "added path" in out and "total" in out
    assert main(["count-params", "configs/nope.py"]) == 2
    assert "does not exist" in capsys.readouterr().err


PARADIGM_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name, prior", [
    ("lisa/lisa_qwen2.5-vl-7b_sam-vit-h_refcoco.py", 3584 * 3584 + 3584 + 3584 * 256 + 256),
    ("segzero/segzero_qwen2.5-vl-7b_sam-vit-h_refcoco.py", 0),
])
def test_paradigm_configs_count_on_the_meta_device(capsys, name, prior):
    """LISA-style: the <SEG> MLP (text_hidden_fcs) + SAM prompt encoder and mask decoder;
    Seg-Zero-style: no prior parameters, the same decoder."""
    assert main(["count-params", str(PARADIGM_CONFIGS / name), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    comps = counts["components"]
    assert comps["policy"] == 8_292_166_656 and comps["vision_backbone"] == 637_026_048
    assert comps["prior"] == prior
    assert comps["decoder"] == 4_058_340 + 6_220  # SAM mask decoder + prompt encoder
    assert counts["total"] == sum(comps.values())


def test_trainable_parameters_full_fine_tuning_and_lora(capsys):
    """Trainable counts follow ``requires_grad``: the frozen SAM encoder trains nothing; under
    LoRA only the adapters of the policy train (q/k/v/o of 28 layers of width 3,584 with 512-wide
    k/v at rank 16) and the rows of the three added tokens in the untied embed_tokens and
    lm_head, and the frozen reference adapter is counted nowhere."""
    name = str(CONFIGS / "coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py")
    full = _count(capsys, "coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py")
    trains = full["trainable"]["components"]
    assert trains["vision_backbone"] == 0 and trains["policy"] == full["components"]["policy"]
    assert full["trainable"]["total"] == sum(trains.values())
    assert main(["count-params", name, "--json", "--cfg-options", "model.policy.lora.r=16",
                 "model.policy.lora.alpha=32"]) == 0
    lora = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    adapters = 28 * 16 * (2 * (3584 + 3584) + 2 * (3584 + 512)) + 2 * 3 * 3584
    assert lora["trainable"]["components"]["policy"] == adapters
    assert lora["components"]["policy"] == full["components"]["policy"] + adapters
    heads = trains["prior"] + trains["decoder"]
    assert lora["trainable"]["total"] == adapters + heads
    assert main(["count-params", name, "--cfg-options", "model.policy.lora.r=16"]) == 0
    assert f"{(adapters + heads) / 1e6:.2f}M trainable" in capsys.readouterr().out
