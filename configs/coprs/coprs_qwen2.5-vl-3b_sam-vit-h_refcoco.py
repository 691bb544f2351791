# CoPRS-3B (Qwen2.5-VL-3B + SAM ViT-H), trained on the RefCOCO series (paper Sec. 4.1).
_base_ = [
    '../_base_/models/coprs_qwen2.5-vl-3b_sam-vit-h.py',
    '../_base_/datasets/refcoco.py',
    '../_base_/schedules/grpo_paper.py',
    '../_base_/default_runtime.py',
]
