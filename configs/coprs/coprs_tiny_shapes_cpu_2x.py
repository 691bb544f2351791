# The CPU main job's recipe before calibration 20 at twice its budget (about 15 minutes of
# training on 2 cores): 7,200 warm-up steps at batch 4 + 20 GRPO iterations on the same 3,000
# scenes, the λ_d/λ_f change halfway through the warm-up. The gold-reasoning path reaches gIoU
# 0.848 on `test` here (target 0.85); the generated reasoning does not move (docs/benchmarks.md,
# calibration 19).
_base_ = ['./coprs_tiny_shapes_cpu.py']
work_dir = 'work_dirs/coprs_tiny_shapes_cpu_2x'
# measured before calibration 20: no position map, the answer-naming loss names colour and shape
# (and before the tiny schedule's fused AdamW: a rerun may differ as runs at another thread
# count do, by ~0.03)
model = dict(prior=dict(position_grid=0), rl=dict(answer_key='gold_answer'))
# and its gold answers always name the right place (no PerturbAnswerPlace, calibration 21)
train_dataloader = dict(dataset=dict(pipeline={{_base_.shapes_train_pipeline}}))
sft_iters = 7200
grpo_iters = 20
train_cfg = dict(stages=[dict(kind='sft', iters=sft_iters),
                         dict(kind='grpo', iters=grpo_iters, batch_size=4)],
                 val_interval=sft_iters // 2)
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=sft_iters + grpo_iters,
         eta_min_ratio=0.15),
]
custom_hooks = [
    dict(type='SegLossScheduleHook',
         milestones=[dict(iter=sft_iters // 2, lambda_dice=3.0, lambda_focal=10.0),
                     dict(iter=sft_iters, lambda_seg=0.0)]),
    dict(type='PlainCheckpointStateHook'),
]
default_hooks = dict(checkpoint=dict(interval=3600, max_keep_ckpts=3))
