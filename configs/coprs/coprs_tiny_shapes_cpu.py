# The embedded CPU default: the tiny CoPRS assembly (random-initialised, built locally) trained
# on the synthetic reasoning world (warm-up, then GRPO), evaluated on its `test`
# and `test_novel` splits.
_base_ = [
    '../_base_/models/coprs_tiny.py',
    '../_base_/datasets/shapes.py',
    '../_base_/schedules/tiny_cpu.py',
    '../_base_/default_runtime.py',
]
work_dir = 'work_dirs/coprs_tiny_shapes_cpu'
model = dict(
    # answer_coef: the <REF_POS> state must name the target in warm-up (loss_answer); without it
    # the random-initialised policy's e_conc barely differs between targets and the mask ignores
    # the instruction (docs/benchmarks.md, calibrations 5-8)
    # answer_key: it names where, too ("the purple triangle in the lower left"), which the
    # prior's position map turns into a place; with both the mask picks the named object among
    # those of its colour (docs/benchmarks.md, calibrations 20 and 20b)
    rl=dict(kl_coef=0.02, answer_coef=1.0, answer_key='gold_answer_region'),
    # trained from scratch, the tiny policy's vision tower collapses to an image-independent
    # output within ~200 warm-up steps; frozen, the language model learns to read it, and its
    # output (and each prompt's tokens) for the 3,000 training scenes is kept in memory
    policy=dict(freeze_vision_tower=True, tower_cache=4096),
    # a 64-wide random encoder keeps the 48 values of a 4x4 RGB patch (32 channels cannot)
    vision_backbone=dict(embed_dim=64, out_chans=64),
    # an 8 x 8 position map read from the query (HeatmapPrior.position_grid)
    prior=dict(position_grid=8),
    # the frozen SAM encoder is most of a CPU step: its features are cached on first use
    feature_cache=dict(root='work_dirs/feature_cache', dtype='float32'),
    # targets cover ~2% of a synthetic image: BCE alone keeps the prior below 0 everywhere, a
    # Dice term on the prior makes it localise (tools/analysis/prior_probe.py)
    seg_loss=dict(type='SegmentationLoss', lambda_prior_dice=1.0),
)
# 3,000 scenes: fewer first sights of an image (each costs a tiny-SAM encode before it is cached)
# within the 10-minute budget; kept in memory after their first generation
train_dataloader = dict(dataset=dict(
    num_samples=3000, cache_samples=True,
    # one gold answer in ten names a wrong place ("... in the upper right." for a target in the
    # lower left; the mask stays the target's): the tiny policy rarely knows where the object it
    # names lies, and a prior that only trusts the place masks an empty spot (docs/benchmarks.md,
    # calibration 21)
    pipeline=[
        dict(type='LoadImage'),
        dict(type='ResizePadVision', size={{_base_.shapes_image_size}}),
        dict(type='PerturbAnswerPlace', prob=0.1),
        dict(type='PackReasonSegInputs'),
    ]))
# validation (from the shapes base): gold-reasoning gIoU of 64 `val` scenes at the λ_d/λ_f change,
# the end of the warm-up and the end (the schedule's val_interval, sft_iters // 2).
# `--cfg-options default_hooks.checkpoint.save_best=shapes/val/gIoU
# default_hooks.checkpoint.rule=greater` keeps the best checkpoint.
