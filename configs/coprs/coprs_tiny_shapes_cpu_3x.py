# The CPU main job's earlier recipe (900 warm-up iterations at batch 16) at three times its budget
# (about 27 minutes of training on 2 cores): 2,700 warm-up + 20 GRPO iterations at batch 16 on
# 9,000 scenes, the λ_d/λ_f change halfway through the warm-up. It measures how the accuracy
# targets scale with training (docs/benchmarks.md, calibration 14).
_base_ = ['./coprs_tiny_shapes_cpu.py']
work_dir = 'work_dirs/coprs_tiny_shapes_cpu_3x'
# measured before calibration 20: no position map, the answer-naming loss names colour and shape
# (and before the tiny schedule's fused AdamW: a rerun may differ as runs at another thread
# count do, by ~0.03); the tower cache holds all 9,000 scenes
model = dict(prior=dict(position_grid=0), rl=dict(answer_key='gold_answer'),
             policy=dict(tower_cache=9000))
sft_iters = 2700
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
# (and gold answers that always name the right place: no PerturbAnswerPlace, calibration 21)
train_dataloader = dict(batch_size=16, dataset=dict(num_samples=9000,
                                                 pipeline={{_base_.shapes_train_pipeline}}))
default_hooks = dict(checkpoint=dict(interval=900, max_keep_ckpts=5))
