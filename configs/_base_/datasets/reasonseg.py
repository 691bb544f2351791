_base_ = ['./eval_common.py']

# ReasonSeg (LISA): <reasonseg_root>/{train,val,test}/<name>.jpg + <name>.json. Zero-shot eval.
reasonseg_root = 'data/reason_seg/ReasonSeg'
reasonseg_test_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotations', skip_errors=True),
    dict(type='PackReasonSegInputs'),
]
test_cfg = dict(
    type='ReasonSegTestLoop',
    datasets=[
        dict(type='ReasonSegDataset', data_root=reasonseg_root, split=split, query='first',
             pipeline=reasonseg_test_pipeline)
        for split in ('val', 'test')
    ],
)
