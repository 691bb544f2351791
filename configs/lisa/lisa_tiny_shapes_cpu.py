# The LISA-style baseline on the CPU: the tiny assembly with a <SEG> latent token and SAM's
# prompt decoder, trained and evaluated like configs/coprs/coprs_tiny_shapes_cpu.py (same data,
# schedule, seed): warm-up on the gold LISA answers ("It is the red circle <SEG>."), token
# cross-entropy + answer naming + segmentation loss, then GRPO + segmentation with mask +
# token-format rewards.
_base_ = [
    '../_base_/models/lisa_tiny.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/tiny_cpu.py',
    '../_base_/default_runtime.py',
]
work_dir = 'work_dirs/lisa_tiny_shapes_cpu'
model = dict(
    # the CPU settings of the CoPRS main job (configs/coprs/coprs_tiny_shapes_cpu.py), so that
    # `coprs bench-paradigms` compares the interfaces on like terms: the <SEG> state must name
    # the answer ("the red circle") in warm-up, and responses end at <SEG>, so that no next-token
    # loss fights that (without both the random-initialised policy's <SEG> state carries nothing
    # and the mask is the same whatever the response: docs/benchmarks.md, Paradigms); a frozen
    # policy vision tower (trained, the tiny one collapses) with its output cached, and a
    # 64-wide tiny SAM encoder
    rl=dict(kl_coef=0.02, answer_coef=1.0, answer_key='gold_answer'),
    policy=dict(stop_at_special_token=True, freeze_vision_tower=True, tower_cache=4096),
    vision_backbone=dict(embed_dim=64, out_chans=64),
    feature_cache=dict(root='work_dirs/feature_cache', dtype='float32'),
    # no dense prior to supervise: the BCE goes on the mask instead (LISA's loss), same weight
    seg_loss=dict(type='SegmentationLoss', lambda_mask_bce=1.0),
)
train_dataloader = dict(dataset=dict(num_samples=3000, cache_samples=True))
train_cfg = dict(
    response_key='response_lisa',
    reward=dict(type='WeightedSumReward', rewards=[
        dict(reward=dict(type='MaskReward'), weight=0.7),
        dict(reward=dict(type='TokenFormatReward', special_token='<SEG>'), weight=0.3),
    ]),
)
# the gold responses of this interface, for `--reasoning gold` and for validation (the shapes base)
test_cfg = dict(gold_key='response_lisa')
val_cfg = dict(gold_key='response_lisa')
