# The Seg-Zero-style 7B of segzero_qwen2.5-vl-7b_sam-vit-h_refcoco.py evaluated zero-shot on
# ReasonSeg val and test (short and long queries apart), as configs/coprs/*_reasonseg.py does
# for CoPRS.
#   coprs test configs/segzero/segzero_qwen2.5-vl-7b_sam-vit-h_reasonseg.py \
#       work_dirs/segzero_qwen2.5-vl-7b_sam-vit-h_refcoco
_base_ = [
    '../_base_/models/segzero_qwen2.5-vl-7b_sam-vit-h.py',
    '../_base_/datasets/reasonseg.py',
    '../_base_/default_runtime.py',
]
