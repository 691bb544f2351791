# The CPU main job of coprs (configs/coprs/coprs_tiny_shapes_cpu.py: the tiny CoPRS assembly, its
# warm-up + GRPO schedule on the synthetic world) trained with a reward that also scores mask
# outlines: 0.5 mask score + 0.2 boundary F-score + 0.3 format.
# Run it as `coprs train coprs-example-reward::coprs_tiny_boundary-reward_shapes_cpu.py`.
#
# mmengine resolves `_base_` next to this file, so a plugin's config cannot build on a config of
# coprs itself: this one spells the main job out. Every setting but the reward and the work dir
# is the main job's, and this plugin's tests check that they stay equal; the reasons for each
# setting are in the main job's config and docs/benchmarks.md.
default_scope = 'coprs'
work_dir = 'work_dirs/coprs_tiny_boundary-reward_shapes_cpu'

model = dict(
    type='ReasoningSegmentor',
    policy=dict(type='Qwen25VLPolicy',
                tiny=dict(seed=0, vocab_size=1024, max_pixels=112 * 112, corpus='shapes'),
                special_token='<REF_POS>', prompt_template='coprs', min_pixels=3136,
                max_pixels=112 * 112, max_new_tokens=128, stop_at_special_token=True,
                freeze_vision_tower=True, tower_cache=4096),
    vision_backbone=dict(type='SAMViTBackbone', arch='tiny', seed=0, embed_dim=64, out_chans=64),
    prior=dict(type='HeatmapPrior', d_q=64, d_k=64, attn_dim=64, num_heads=4,
               coord_channels=True, key_convs=2, position_grid=8),
    decoder=dict(type='PriorDecoder', preset='tiny'),
    rl=dict(kl_coef=0.02, answer_coef=1.0, answer_key='gold_answer_region'),
    feature_cache=dict(root='work_dirs/feature_cache', dtype='float32'),
    seg_loss=dict(type='SegmentationLoss', lambda_prior_dice=1.0),
)

# the reward this plugin adds, next to coprs' own mask and format rewards
reward = dict(type='WeightedSumReward', rewards=[
    dict(reward=dict(type='MaskReward'), weight=0.5),
    dict(reward=dict(type='BoundaryFScoreReward', tolerance=2), weight=0.2),
    dict(reward=dict(type='FormatReward'), weight=0.3),
])

shapes_image_size = 112
shapes_train_pipeline = [
    dict(type='LoadImage'),
    dict(type='ResizePadVision', size=shapes_image_size),
    dict(type='PackReasonSegInputs'),
]
shapes_test_pipeline = [dict(type='LoadImage'), dict(type='PackReasonSegInputs')]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='coprs.reasonseg_collate'),
    dataset=dict(type='ShapesReasonDataset', split='train', num_samples=3000, seed=0,
                 image_size=shapes_image_size, cache_samples=True,
                 pipeline=[dict(type='LoadImage'),
                           dict(type='ResizePadVision', size=shapes_image_size),
                           dict(type='PerturbAnswerPlace', prob=0.1),
                           dict(type='PackReasonSegInputs')]),
)
sft_iters = 3000
grpo_iters = 20
train_cfg = dict(
    type='ReasoningSegTrainLoop',
    stages=[dict(kind='sft', iters=sft_iters),
            dict(kind='grpo', iters=grpo_iters, batch_size=4)],
    group_size=8,
    rollout_engine=dict(type='HFRolloutEngine', temperature=1.0, top_p=1.0, max_new_tokens=96),
    reward=reward,
    response_key='response_coprs',
    rollout_log_interval=5,
    rollout_log_panels=True,
    val_interval=1500,
)
optim_wrapper = dict(
    type='OptimWrapper', constructor='GroupedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), fused=True),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys={
        'prior': dict(lr_mult=1.0),
        'decoder.downscaler': dict(lr_mult=1.0),
        'decoder.mask_decoder': dict(lr_mult=1.0),
    }),
)
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0,
                        end=sft_iters + grpo_iters, eta_min_ratio=0.15)]
custom_hooks = [
    dict(type='SegLossScheduleHook',
         milestones=[dict(iter=sft_iters // 2, lambda_dice=3.0, lambda_focal=10.0),
                     dict(iter=sft_iters, lambda_seg=0.0)]),
    dict(type='PlainCheckpointStateHook'),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=1500, max_keep_ckpts=2,
                    save_last=True, backend_args=dict(backend='atomic_local')),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    progress_bar=dict(type='TrainProgressBarHook'),
)

test_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                       sampler=dict(type='DefaultSampler', shuffle=False),
                       collate_fn=dict(type='coprs.reasonseg_collate'), dataset=None)
test_cfg = dict(type='ReasonSegTestLoop', datasets=[
    dict(type='ShapesReasonDataset', split=split, num_samples=200, seed=0,
         image_size=shapes_image_size, pipeline=shapes_test_pipeline)
    for split in ('test', 'test_novel')])
test_evaluator = dict(type='ReasonSegMetric', empty_empty=1.0, ignore_mode='exclude')
val_dataloader = test_dataloader
val_evaluator = test_evaluator
val_cfg = dict(type='ReasonSegValLoop', reasoning='gold', datasets=[
    dict(type='ShapesReasonDataset', split='val', num_samples=64, seed=0,
         image_size=shapes_image_size, pipeline=shapes_test_pipeline)])

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
# mmengine's, except that a key no iteration updated since the last line is left out (the
# warm-up's loss_lm would repeat in every GRPO line; coprs.engine.FreshLogProcessor)
log_processor = dict(type='FreshLogProcessor', by_epoch=False, window_size=20)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
model_wrapper_cfg = dict(type='coprs.CoprsDistributedDataParallel', find_unused_parameters=True)
