_base_ = ['./eval_common.py']

# The synthetic reasoning world (procedurally generated, no files): coprs.datasets.shapes.
shapes_image_size = 112
shapes_test_pipeline = [
    dict(type='LoadImage'),
    dict(type='PackReasonSegInputs'),
]
test_dataloader = dict(batch_size=8, num_workers=0)
test_cfg = dict(
    type='ReasonSegTestLoop',
    datasets=[
        dict(type='ShapesReasonDataset', split='test', num_samples=200, seed=0,
             image_size=shapes_image_size, pipeline=shapes_test_pipeline),
        dict(type='ShapesReasonDataset', split='test_novel', num_samples=200, seed=0,
             image_size=shapes_image_size, pipeline=shapes_test_pipeline),
    ],
)
# validation during training (ReasonSegValLoop, every train_cfg.val_interval iterations and at the
# end): gIoU of 64 `val` scenes with the gold reasoning teacher-forced, the heatmap/mask path the
# warm-up trains; about a second each. Logged as shapes/val/gIoU, shapes/val/cIoU, ...; an
# assembly whose gold response is not `response_coprs` sets val_cfg.gold_key (as test_cfg's).
val_dataloader = dict(_base_.test_dataloader, **test_dataloader)
val_evaluator = dict(_base_.test_evaluator)
val_cfg = dict(
    type='ReasonSegValLoop', reasoning='gold',
    datasets=[dict(type='ShapesReasonDataset', split='val', num_samples=64, seed=0,
                   image_size=shapes_image_size, pipeline=shapes_test_pipeline)],
)

shapes_train_pipeline = [
    dict(type='LoadImage'),
    dict(type='ResizePadVision', size=shapes_image_size),
    dict(type='PackReasonSegInputs'),
]
train_dataloader = dict(
    # 4: on 2 CPU cores a step at batch 4 costs 0.42 of one at batch 16 (fixed costs weigh more),
    # and the tiny prior learns per step more than per sample (docs/benchmarks.md, calibration 18)
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='coprs.reasonseg_collate'),
    dataset=dict(type='ShapesReasonDataset', split='train', num_samples=50000, seed=0,
                 image_size=shapes_image_size, pipeline=shapes_train_pipeline),
)
