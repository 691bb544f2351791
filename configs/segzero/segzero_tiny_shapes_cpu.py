# The Seg-Zero-style baseline on the CPU: the tiny assembly writing a JSON box + two points that
# prompt SAM's prompt decoder, trained and evaluated like configs/coprs/coprs_tiny_shapes_cpu.py
# (same data, schedule, seed): warm-up on the gold Seg-Zero responses (token cross-entropy; the
# random tiny SAM decoder learns from the gold box and points with the segmentation loss), then
# GRPO + segmentation with Seg-Zero's five rewards. Seg-Zero's pixel thresholds are for an 840²
# view; the tiny policy sees 112², so they are scaled by 112 / 840.
_base_ = [
    '../_base_/models/segzero_tiny.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/tiny_cpu.py',
    '../_base_/default_runtime.py',
]
work_dir = 'work_dirs/segzero_tiny_shapes_cpu'
model = dict(
    rl=dict(kl_coef=0.02),
    # the CPU settings of the CoPRS main job (configs/coprs/coprs_tiny_shapes_cpu.py), so that
    # `coprs bench-paradigms` compares the interfaces on like terms: a frozen policy vision tower
    # (trained, the tiny one collapses) with its output cached, and a 64-wide tiny SAM encoder
    policy=dict(max_new_tokens=160, freeze_vision_tower=True, tower_cache=4096),
    vision_backbone=dict(embed_dim=64, out_chans=64),
    feature_cache=dict(root='work_dirs/feature_cache', dtype='float32'),
    # no dense prior to supervise: the BCE goes on the mask instead, same weight
    seg_loss=dict(type='SegmentationLoss', lambda_mask_bce=1.0),
)
train_dataloader = dict(dataset=dict(num_samples=3000, cache_samples=True))
train_cfg = dict(
    response_key='response_segzero',
    rollout_engine=dict(max_new_tokens=160),
    reward=dict(type='WeightedSumReward', rewards=[
        dict(reward=dict(type='ThinkFormatReward'), weight=1.0),
        dict(reward=dict(type='AnswerFormatReward'), weight=1.0),
        dict(reward=dict(type='BoxIoUReward', threshold=0.5), weight=1.0),
        dict(reward=dict(type='BoxL1Reward', threshold=10.0 * 112 / 840), weight=1.0),
        dict(reward=dict(type='PointL1Reward', threshold=100.0 * 112 / 840), weight=1.0),
    ]),
)
# the gold responses of this interface, for `--reasoning gold` and for validation (the shapes base)
test_cfg = dict(gold_key='response_segzero')
val_cfg = dict(gold_key='response_segzero')
