# The tiny Seg-Zero-style assembly: the tiny policy and SAM ViT of the CoPRS one
# (coprs_tiny.py), but the policy reasons and then writes a JSON box and two points in
# <answer> tags (pixels of its 112 x 112 view); the parsed box + points prompt SAM's prompt
# encoder + mask decoder (tiny widths). No special token, no hidden-state readout.
_base_ = ['./coprs_tiny.py']
model = dict(
    policy=dict(special_token=None, prompt_template='segzero', stop_at_special_token=False),
    prior=dict(_delete_=True, type='TextCoordinatePrior', num_points=2),
    decoder=dict(_delete_=True, type='SAMPromptDecoder', preset='tiny'),
)
