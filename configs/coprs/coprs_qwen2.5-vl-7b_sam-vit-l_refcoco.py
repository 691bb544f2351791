# CoPRS-7B with SAM ViT-L (paper Table 5: 8.60B parameters).
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py']

sam_checkpoint = 'checkpoints/sam_vit_l_0b3195.pth'
model = dict(
    vision_backbone=dict(arch='vit_l', checkpoint=sam_checkpoint),
    decoder=dict(sam_checkpoint=sam_checkpoint),
)
