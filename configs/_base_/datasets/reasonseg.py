# ReasonSeg (LISA): <reasonseg_root>/{train,val,test}/<name>.jpg + <name>.json. Zero-shot eval.
reasonseg_root = 'data/reason_seg/ReasonSeg'
reasonseg_test_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotations', skip_errors=True),
    dict(type='PackReasonSegInputs'),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='coprs.reasonseg_collate'),  # scoped: Runner looks it up in the root
    dataset=None,  # one per entry of test_cfg.datasets
)
test_cfg = dict(
    type='ReasonSegTestLoop',
    datasets=[
        dict(type='ReasonSegDataset', data_root=reasonseg_root, split=split, query='first',
             pipeline=reasonseg_test_pipeline)
        for split in ('val', 'test')
    ],
)
# LISA's protocol: ignore regions excluded, empty/empty = 1, text[0] per image
test_evaluator = dict(type='ReasonSegMetric', empty_empty=1.0, ignore_mode='exclude')
