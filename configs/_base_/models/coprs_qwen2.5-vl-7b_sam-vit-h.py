# CoPRS-7B: Qwen2.5-VL-7B-Instruct + SAM ViT-H (paper Table 7: 8.93B parameters).
_base_ = ['./coprs_qwen2.5-vl-3b_sam-vit-h.py']

qwen_path = 'checkpoints/Qwen2.5-VL-7B-Instruct'

# Qwen2.5-VL-7B architecture (its config.json).
qwen_arch = dict(
    text_config=dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        rope_scaling=dict(type='mrope', mrope_section=[16, 24, 24]),
        bos_token_id=151643, eos_token_id=151645),
    vision_config=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
    vision_end_token_id=151653, tie_word_embeddings=False)

model = dict(policy=dict(model_path=qwen_path, arch=qwen_arch))
