# The embedded CPU default: the tiny CoPRS assembly (random-initialised, built locally) trained
# on the synthetic reasoning world (warm-up, then GRPO + segmentation), evaluated on its `test`
# and `test_novel` splits.
_base_ = [
    '../_base_/models/coprs_tiny.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/tiny_cpu.py',
    '../_base_/default_runtime.py',
]
work_dir = 'work_dirs/coprs_tiny_shapes_cpu'
model = dict(
    rl=dict(kl_coef=0.02),
    # the frozen SAM encoder is most of a CPU step: its features are cached on first use
    feature_cache=dict(root='work_dirs/feature_cache', dtype='float32'),
    # targets cover ~2% of a synthetic image: BCE alone keeps the prior below 0 everywhere, a
    # Dice term on the prior makes it localise (tools/analysis/prior_probe.py)
    seg_loss=dict(type='SegmentationLoss', lambda_prior_dice=1.0),
)
train_dataloader = dict(dataset=dict(num_samples=6000))
