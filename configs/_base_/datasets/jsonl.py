_base_ = ['./eval_common.py']

# Your own data as JSON lines (JsonlSegDataset, docs/datasets.md "Your own data"):
#   <jsonl_root>/train.jsonl and val.jsonl, one {"image", "instruction", "mask", ...} per line,
#   paths relative to jsonl_root. Point it elsewhere with --cfg-options
#   test_cfg.datasets.0.data_root=... train_dataloader.dataset.data_root=...
jsonl_root = 'data/my_dataset'
jsonl_test_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotations', skip_errors=True),
    dict(type='PackReasonSegInputs'),
]
test_cfg = dict(
    type='ReasonSegTestLoop',
    datasets=[dict(type='JsonlSegDataset', data_root=jsonl_root, ann_file='val.jsonl',
                   pipeline=jsonl_test_pipeline)],
)
jsonl_train_pipeline = [
    dict(type='LoadImage', skip_errors=False),
    dict(type='LoadSegAnnotations'),
    dict(type='ResizePadVision', size=1024),
    dict(type='PackReasonSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='coprs.reasonseg_collate'),
    dataset=dict(type='JsonlSegDataset', data_root=jsonl_root, ann_file='train.jsonl',
                 pipeline=jsonl_train_pipeline),
)
