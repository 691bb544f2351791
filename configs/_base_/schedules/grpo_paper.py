# The paper's recipe (Sec. 4.1, B.3): GRPO + segmentation for 31,250 steps, global batch 16
# (8 GPUs x 2), G = 8, AdamW lr 1.6e-6 with x25 / x10 / x5 multipliers, grad clip 1.0, one-cycle
# without warm-up (cosine from the peak to peak / 6.67, per parameter group), lambda_d / lambda_f
# switched at step 1,500. Per device, the 2 prompts x 8 rollouts of a step are forwarded 2
# sequences at a time for the update and 8 at a time for experience collection (mask scoring,
# reference log-probs); one optimiser step per iteration.
train_cfg = dict(
    type='ReasoningSegTrainLoop',
    stages=[dict(kind='grpo', iters=31250)],
    group_size=8,
    actor_micro_batch=2,
    experience_micro_batch=8,
    # every 100th iteration's rollouts (response, reward breakdown, advantage) to
    # <work_dir>/rollouts.rank<k>.jsonl; the first prompt's best and worst drawn to the visualizer
    rollout_log_interval=100,
    rollout_log_panels=True,
    rollout_engine=dict(type='HFRolloutEngine', temperature=1.0, top_p=1.0, top_k=None,
                        max_new_tokens=2000),
)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='GroupedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1.6e-6, weight_decay=0.01, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys={
        'prior': dict(lr_mult=25.0),                # query head (+ Q/K projections, fuse)
        'decoder.downscaler': dict(lr_mult=10.0),   # position / prompt encoder
        'decoder.image_proj': dict(lr_mult=10.0),
        'decoder.mask_decoder': dict(lr_mult=5.0),  # mask decoder
    }),
)
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=31250, eta_min_ratio=0.15),
]
custom_hooks = [
    dict(type='SegLossScheduleHook',
         milestones=[dict(iter=1500, lambda_dice=3.0, lambda_focal=10.0)]),
    dict(type='PlainCheckpointStateHook'),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=3,
                    save_last=True, backend_args=dict(backend='atomic_local')),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # a tqdm bar over the iterations when stderr is a terminal
    progress_bar=dict(type='TrainProgressBarHook'),
)
