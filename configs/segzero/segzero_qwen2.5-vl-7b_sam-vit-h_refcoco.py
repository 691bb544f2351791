# Seg-Zero-style 7B (Qwen2.5-VL-7B + SAM ViT-H) on the RefCOCO series: GRPO on the policy only
# (the SAM decoder is frozen, so the segmentation loss is off) with Seg-Zero's rewards, through
# the same loop, data and schedule as configs/coprs/coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py.
# RefCOCO has no annotated points, so the point reward is point-in-mask instead of Seg-Zero's
# point L1; the pixel thresholds are Seg-Zero's (its policy view is 840², ours at most 705,600 px).
_base_ = [
    '../_base_/models/segzero_qwen2.5-vl-7b_sam-vit-h.py',
    '../_base_/datasets/refcoco.py',
    '../_base_/schedules/grpo_paper.py',
    '../_base_/default_runtime.py',
]
model = dict(seg_loss=dict(type='SegmentationLoss', lambda_seg=0.0))
train_cfg = dict(
    reward=dict(type='WeightedSumReward', rewards=[
        dict(reward=dict(type='ThinkFormatReward'), weight=1.0),
        dict(reward=dict(type='AnswerFormatReward'), weight=1.0),
        dict(reward=dict(type='BoxIoUReward', threshold=0.5), weight=1.0),
        dict(reward=dict(type='BoxL1Reward', threshold=10.0), weight=1.0),
        dict(reward=dict(type='PointInMaskReward'), weight=1.0),
    ]),
)
