# CoPRS-7B, the paper's 8-GPU recipe: FSDP (mmengine FlexibleRunner) for the policy, vLLM
# rollouts (pip install -e '.[vllm]'), bf16, gradient checkpointing, cached SAM features.
#   torchrun --nproc_per_node=8 tools/train.py THIS_CONFIG --launcher pytorch \
#     --cfg-options model.policy.model_path=/models/Qwen2.5-VL-7B-Instruct \
#                   model.vision_backbone.checkpoint=/models/sam_vit_h_4b8939.pth \
#                   model.decoder.sam_checkpoint=/models/sam_vit_h_4b8939.pth
# (GPU path: not run on the project's CPU machines.)
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py']

model = dict(
    policy=dict(torch_dtype='bfloat16', attn_implementation='flash_attention_2',
                gradient_checkpointing=True),
    feature_cache=dict(root='data/feature_cache', dtype='float16'),
)
train_cfg = dict(rollout_engine=dict(
    _delete_=True, type='VLLMRolloutEngine', tensor_parallel_size=4, gpu_memory_utilization=0.4,
    max_num_seqs=64, max_num_batched_tokens=17408, enable_chunked_prefill=True,
    temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=2000))
runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(auto_wrap_policy=dict(
        type='torch.distributed.fsdp.wrap.size_based_auto_wrap_policy',
        min_num_params=int(1e7))),
)
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16')
env_cfg = dict(dist_cfg=dict(backend='nccl'))
