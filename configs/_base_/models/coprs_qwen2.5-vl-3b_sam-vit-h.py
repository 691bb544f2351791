# CoPRS-3B: Qwen2.5-VL-3B-Instruct + SAM ViT-H (paper Table 6: 4.39B parameters).
# Weights are read from local paths; set them here or with
#   --cfg-options model.policy.model_path=DIR model.vision_backbone.checkpoint=FILE
qwen_path = 'checkpoints/Qwen2.5-VL-3B-Instruct'
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'

# Qwen2.5-VL-3B architecture (its config.json), used to build without weights (count_params).
qwen_arch = dict(
    text_config=dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        rope_scaling=dict(type='mrope', mrope_section=[16, 24, 24]),
        bos_token_id=151643, eos_token_id=151645),
    vision_config=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
    vision_end_token_id=151653, tie_word_embeddings=True)

model = dict(
    type='ReasoningSegmentor',
    policy=dict(
        type='Qwen25VLPolicy',
        model_path=qwen_path,
        arch=qwen_arch,
        special_token='<REF_POS>',
        prompt_template='coprs',
        min_pixels=3136,
        max_pixels=705600,
        torch_dtype='bfloat16',
        max_new_tokens=2000,
        # the paper's prompt cap (B.3): training drops a sample whose prompt (text and image
        # tokens) is longer, with a warning; evaluation and inference take every prompt
        max_prompt_tokens=1300,
        # recompute the decoder layers in the backward (paper B.3); no effect at inference
        gradient_checkpointing=True,
    ),
    vision_backbone=dict(type='SAMViTBackbone', arch='vit_h', checkpoint=sam_checkpoint),
    prior=dict(type='HeatmapPrior', d_q=256, d_k=256, attn_dim=128, num_heads=8),
    decoder=dict(type='PriorDecoder', preset='sam', sam_checkpoint=sam_checkpoint),
    # GRPO's old log-probs from the actor's own forward (detached), as verl recomputes them:
    # the rollouts come from another numerics (vLLM's bf16 kernels, or fp32 HF rollouts against
    # a bf16-autocast actor), and one optimiser step per batch makes the two equal in exact
    # arithmetic
    rl=dict(old_logprobs='actor'),
)
