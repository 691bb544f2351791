# LISA-style 7B (Qwen2.5-VL-7B + SAM ViT-H) on the RefCOCO series, under the CoPRS recipe
# (GRPO + segmentation, configs/_base_/schedules/grpo_paper.py) so that only the interface
# differs from configs/coprs/coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py. LISA's own recipe is
# supervised (token CE + 2.0 mask BCE + 0.5 Dice on templated answers such as "It is <SEG>.");
# RefCOCO ships no such answers, so the rewards below (mask score + one <SEG>) drive the policy.
_base_ = [
    '../_base_/models/lisa_qwen2.5-vl-7b_sam-vit-h.py',
    '../_base_/datasets/refcoco.py',
    '../_base_/schedules/grpo_paper.py',
    '../_base_/default_runtime.py',
]
model = dict(
    # no dense prior: the BCE goes on the mask (LISA's loss) with CoPRS' prior-BCE weight
    seg_loss=dict(type='SegmentationLoss', lambda_mask_bce=1.0),
)
train_cfg = dict(
    reward=dict(type='WeightedSumReward', rewards=[
        dict(reward=dict(type='MaskReward'), weight=0.7),
        dict(reward=dict(type='TokenFormatReward', special_token='<SEG>'), weight=0.3),
    ]),
)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'decoder.prompt_encoder': dict(lr_mult=10.0),  # as CoPRS' prompt-encoder downscaler
}))
