# The tiny CPU assembly: a tiny random-initialised Qwen2.5-VL (built locally once, then loaded
# with from_pretrained like a real checkpoint), a tiny SAM ViT (112 px input, 4 px patches ->
# 28 x 28 key grid), and the CoPRS heatmap prior + prior decoder at small widths.
model = dict(
    type='ReasoningSegmentor',
    policy=dict(
        type='Qwen25VLPolicy',
        tiny=dict(seed=0, vocab_size=1024, max_pixels=112 * 112, corpus='shapes'),
        special_token='<REF_POS>',
        prompt_template='coprs',
        min_pixels=3136,
        max_pixels=112 * 112,
        max_new_tokens=128,
        stop_at_special_token=True,
    ),
    vision_backbone=dict(type='SAMViTBackbone', arch='tiny', seed=0),
    # keys get position (coordinate channels) and spatial context (2 conv blocks): the random
    # frozen tiny encoder gives neither (tools/analysis/prior_probe.py, docs/benchmarks.md)
    prior=dict(type='HeatmapPrior', d_q=64, d_k=64, attn_dim=64, num_heads=4,
               coord_channels=True, key_convs=2),
    decoder=dict(type='PriorDecoder', preset='tiny'),
)
