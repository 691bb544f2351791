# CoPRS-7B with SAM ViT-B (paper Table 5: 8.38B parameters).
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py']

sam_checkpoint = 'checkpoints/sam_vit_b_01ec64.pth'
model = dict(
    vision_backbone=dict(arch='vit_b', checkpoint=sam_checkpoint),
    decoder=dict(sam_checkpoint=sam_checkpoint),
)
