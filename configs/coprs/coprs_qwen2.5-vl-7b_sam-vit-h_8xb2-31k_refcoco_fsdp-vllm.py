# CoPRS-7B, the paper's 8-GPU recipe: FSDP (mmengine FlexibleRunner) for the policy, vLLM
# rollouts (pip install -e '.[vllm]'), bf16, gradient checkpointing, cached SAM features.
#   torchrun --nproc_per_node=8 tools/train.py THIS_CONFIG --launcher pytorch \
#     --cfg-options model.policy.model_path=/models/Qwen2.5-VL-7B-Instruct \
#                   model.vision_backbone.checkpoint=/models/sam_vit_h_4b8939.pth \
#                   model.decoder.sam_checkpoint=/models/sam_vit_h_4b8939.pth
# The FSDP path runs with the tiny assembly in the tests on 2 CPU ranks (gloo) and on one GPU
# (tests/gpu); vLLM and 8 GPUs are not run on the project's machines (docs/training.md).
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py']

# fp32 weights, bf16 compute through autocast (AmpOptimWrapper below): one FSDP unit holds one
# dtype, and a bf16 policy beside the fp32 heads fails to flatten. sdpa, not flash_attention_2:
# flash-attn refuses the fp32 forwards outside autocast (reward scoring, validation), and under
# autocast PyTorch's sdpa picks its own flash kernel
model = dict(
    policy=dict(torch_dtype='float32', attn_implementation='sdpa', gradient_checkpointing=True),
    feature_cache=dict(root='data/feature_cache', dtype='float16'),
)
# the reference policy's copy in bf16: 16.5 GB per rank for 7B instead of 33 GB in fp32
train_cfg = dict(reference_dtype='bfloat16', rollout_engine=dict(
    _delete_=True, type='VLLMRolloutEngine', tensor_parallel_size=4, gpu_memory_utilization=0.4,
    max_num_seqs=64, max_num_batched_tokens=17408, enable_chunked_prefill=True,
    temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=2000))
runner_type = 'FlexibleRunner'
# one FSDP unit per transformer block (coprs.engine.fsdp); gradient clipping by the norm over
# all shards and non-finite steps skipped on every rank (CoprsFullyShardedDataParallel);
# full-state-dict checkpoints (one file with plain names, written by rank 0) that resume with
# their optimiser state (CoprsFSDPStrategy: mmengine's FSDPStrategy with the resume fixed)
strategy = dict(
    type='coprs.CoprsFSDPStrategy',
    model_wrapper=dict(type='coprs.CoprsFullyShardedDataParallel',
                       auto_wrap_policy=dict(type='coprs.engine.fsdp.wrap_layers')),
    state_dict_cfg=dict(
        state_dict_type='FULL_STATE_DICT',
        state_dict_config=dict(type='FullStateDictConfig', offload_to_cpu=True,
                               rank0_only=True),
        optim_state_dict_config=dict(type='FullOptimStateDictConfig', offload_to_cpu=True,
                                     rank0_only=True)),
)
# bf16 has fp32's exponent range: no loss scaling (a scaler's state would not survive an FSDP
# resume); non-finite gradients are then caught by coprs' own check, as in fp32
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale=dict(enabled=False))
env_cfg = dict(dist_cfg=dict(backend='nccl'))
