# CoPRS-3B (Qwen2.5-VL-3B + SAM ViT-H) evaluated zero-shot on ReasonSeg val and test (paper
# Tables 2 and 6): the model that coprs_qwen2.5-vl-3b_sam-vit-h_refcoco.py trains, tested on
# ReasonSeg's splits instead of the RefCOCO series; `coprs test` also reports short and long
# queries apart.
#   coprs test configs/coprs/coprs_qwen2.5-vl-3b_sam-vit-h_reasonseg.py \
#       work_dirs/coprs_qwen2.5-vl-3b_sam-vit-h_refcoco
_base_ = [
    '../_base_/models/coprs_qwen2.5-vl-3b_sam-vit-h.py',
    '../_base_/datasets/reasonseg.py',
    '../_base_/default_runtime.py',
]
