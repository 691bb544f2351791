# CPU schedule for the tiny assembly (under 10 minutes on 2 cores): supervised warm-up on the gold
# reasoning (3,000 steps at the tiny configs' batch 4), then GRPO with G = 8 rollouts for 4 prompts
# per step (λ_SEG 0 there, see below).
sft_iters = 3000
grpo_iters = 20
train_cfg = dict(
    type='ReasoningSegTrainLoop',
    stages=[dict(kind='sft', iters=sft_iters),
            dict(kind='grpo', iters=grpo_iters, batch_size=4)],
    group_size=8,
    rollout_engine=dict(type='HFRolloutEngine', temperature=1.0, top_p=1.0, max_new_tokens=96),
    response_key='response_coprs',
    # every 5th GRPO iteration's rollouts to <work_dir>/rollouts.jsonl, and the first prompt's
    # best and worst rollouts drawn to vis_data/vis_image (docs/training.md)
    rollout_log_interval=5,
    rollout_log_panels=True,
    # validate at the λ_d/λ_f change, the end of the warm-up and the end (a config with val_cfg)
    val_interval=sft_iters // 2,
)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel for every parameter instead of a loop of small ops per tensor, about
    # 15 ms of a ~170 ms CPU step (tools/benchmarks/warmup_step.py)
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), fused=True),
    clip_grad=dict(max_norm=1.0),
    # the paper's multipliers name these parts; the tiny model trains from scratch, so 1x
    paramwise_cfg=dict(custom_keys={
        'prior': dict(lr_mult=1.0),
        'decoder.downscaler': dict(lr_mult=1.0),
        'decoder.mask_decoder': dict(lr_mult=1.0),
    }),
)
# one-cycle without warm-up = cosine from the peak to peak / 6.67, per parameter group
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=sft_iters + grpo_iters,
         eta_min_ratio=0.15),
]
custom_hooks = [
    # λ_d/λ_f change halfway through the warm-up (paper: at step 1500). λ_SEG is 0 in GRPO: the
    # tiny policy's own rollouts mostly name the wrong object, and L_SEG on their masks teaches
    # the decoder to override the prior (measured: gold-reasoning gIoU 0.65 -> 0.49 after 20 GRPO
    # iterations with λ_SEG 0.3, 0.64 with 0; docs/benchmarks.md). Real policies keep the paper's.
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
    # a tqdm bar over the iterations when stderr is a terminal
    progress_bar=dict(type='TrainProgressBarHook'),
)
