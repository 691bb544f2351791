# CoPRS-7B on your own data: data/my_dataset/{train,val}.jsonl, one {"image", "instruction",
# "mask", ...} object per line (configs/_base_/datasets/jsonl.py, docs/datasets.md). Evaluate a
# checkpoint on val.jsonl, or fine-tune from one with --cfg-options load_from=CHECKPOINT.
_base_ = [
    '../_base_/models/coprs_qwen2.5-vl-7b_sam-vit-h.py',
    '../_base_/datasets/jsonl.py',
    '../_base_/schedules/grpo_paper.py',
    '../_base_/default_runtime.py',
]
