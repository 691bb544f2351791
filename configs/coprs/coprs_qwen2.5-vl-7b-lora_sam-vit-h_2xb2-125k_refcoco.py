# CoPRS-7B with LoRA on two GPUs (DDP), for when the paper's 8-GPU full fine-tune is out of reach:
#   bash tools/dist_train.sh THIS_CONFIG 2 \
#     --cfg-options model.policy.model_path=/models/Qwen2.5-VL-7B-Instruct \
#                   model.vision_backbone.checkpoint=/models/sam_vit_h_4b8939.pth \
#                   model.decoder.sam_checkpoint=/models/sam_vit_h_4b8939.pth
# What trains: LoRA adapters (rank 16 on the four attention projections), the rows of the added
# tokens (<think>, </think>, <REF_POS>) in embed_tokens and lm_head, the prior and the decoder:
# 15.4M parameters (coprs count-params THIS_CONFIG). The base policy stays frozen in bf16
# (16.5 GB), with no optimiser state and no reference copy (the GRPO reference is the base with
# the adapters off, or a frozen copy of adapters trained before GRPO).
# The paper's global batch of 16 is 2 GPUs x 2 prompts x 4 accumulated iterations, so its 31,250
# optimiser steps take 125,000 iterations, and the schedule, the lambda_d / lambda_f milestone
# and the checkpoint interval count 4 times as many iterations. On one GPU the same config
# steps every 8 prompts (half the paper's batch) over the same schedule.
# Not from the paper (it fine-tunes fully) and not tuned here (no real weights on the project's
# machines): the adapters' learning rate (2e-5, 12.5 x the paper's 1.6e-6; LoRA commonly takes
# about ten times a full fine-tune's), their rank and alpha. No LoRA dropout: it would be on in the
# actor forward and off in the rollouts, and the PPO ratio and KL would carry its noise. The prior
# and decoder keep the paper's learning rates. See docs/real_weights.md, "LoRA and coprs export-hf".
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py']

accumulate = 4
steps = 31250

model = dict(
    policy=dict(
        torch_dtype='bfloat16', attn_implementation='sdpa', gradient_checkpointing=True,
        lora=dict(r=16, alpha=32, dropout=0.0,
                  target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'],
                  trainable_tokens=True)),
    feature_cache=dict(root='data/feature_cache', dtype='float16'),
)
train_cfg = dict(stages=[dict(kind='grpo', iters=steps * accumulate)])
# bf16 compute under autocast over the fp32 adapters and heads; bf16 needs no loss scaling
optim_wrapper = dict(
    type='AmpOptimWrapper', dtype='bfloat16', loss_scale=dict(enabled=False),
    accumulative_counts=accumulate,
    paramwise_cfg=dict(custom_keys={'policy': dict(lr_mult=12.5)}))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=steps * accumulate,
         eta_min_ratio=0.15),
]
custom_hooks = [
    dict(type='SegLossScheduleHook',
         milestones=[dict(iter=1500 * accumulate, lambda_dice=3.0, lambda_focal=10.0)]),
    dict(type='PlainCheckpointStateHook'),
]
default_hooks = dict(checkpoint=dict(interval=500 * accumulate))
env_cfg = dict(dist_cfg=dict(backend='nccl'))
