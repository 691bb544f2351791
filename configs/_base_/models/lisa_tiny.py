# The tiny LISA-style assembly: the tiny policy and SAM ViT of the CoPRS one (coprs_tiny.py), but
# the policy answers and writes <SEG>, whose last-layer hidden state goes through an MLP to one
# sparse prompt embedding for SAM's prompt encoder + mask decoder (tiny widths).
_base_ = ['./coprs_tiny.py']
model = dict(
    policy=dict(special_token='<SEG>', prompt_template='lisa', stop_at_special_token=False),
    prior=dict(_delete_=True, type='LatentTokenPrior'),
    decoder=dict(_delete_=True, type='SAMPromptDecoder', preset='tiny'),
)
