# LISA-style 7B: Qwen2.5-VL-7B-Instruct + SAM ViT-H. The policy answers and writes <SEG>; the
# last-layer hidden state at <SEG> goes through an MLP (3584 -> 3584 -> 256, LISA's
# text_hidden_fcs) to one sparse prompt embedding for SAM's prompt encoder + mask decoder,
# initialised from the SAM checkpoint. Same policy and backbone as the CoPRS-7B assembly.
_base_ = ['./coprs_qwen2.5-vl-7b_sam-vit-h.py']

sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
model = dict(
    policy=dict(special_token='<SEG>', prompt_template='lisa', stop_at_special_token=False),
    prior=dict(_delete_=True, type='LatentTokenPrior'),
    decoder=dict(_delete_=True, type='SAMPromptDecoder', preset='sam',
                 sam_checkpoint=sam_checkpoint),
)
