# Seg-Zero-style 7B: Qwen2.5-VL-7B-Instruct + SAM ViT-H. The policy reasons in <think> tags and
# writes {"bbox": [x1,y1,x2,y2], "points": [[x,y],[x,y]]} in <answer> tags, in the pixels of
# its view (at most 705,600 px, like Seg-Zero's 840²); the parsed box and points prompt SAM's
# prompt encoder + mask decoder, loaded from the SAM checkpoint and kept frozen (Seg-Zero
# trains the policy only). Same policy and backbone as the CoPRS-7B assembly.
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h.py']

sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
model = dict(
    policy=dict(special_token=None, prompt_template='segzero', stop_at_special_token=False),
    prior=dict(_delete_=True, type='TextCoordinatePrior', num_points=2),
    decoder=dict(_delete_=True, type='SAMPromptDecoder', preset='sam',
                 sam_checkpoint=sam_checkpoint, frozen=True),
)
