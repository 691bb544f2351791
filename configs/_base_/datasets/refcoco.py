_base_ = ['./eval_common.py']

# RefCOCO / RefCOCO+ / RefCOCOg in the `refer` layout:
#   <refer_root>/<dataset>/refs(<split_by>).p + instances.json, COCO train2014 under coco_img_dir
refer_root = 'data/refer_seg'
coco_img_dir = 'data/refer_seg/images/mscoco/images/train2014'
refcoco_test_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotations', skip_errors=True),
    dict(type='PackReasonSegInputs'),
]
test_cfg = dict(
    type='ReasonSegTestLoop',
    datasets=[
        dict(type='RefCOCODataset', data_root=refer_root, img_dir=coco_img_dir, dataset=name,
             split_by=split_by, split=split, pipeline=refcoco_test_pipeline)
        for name, split_by, splits in (('refcoco', 'unc', ('val', 'testA', 'testB')),
                                       ('refcoco+', 'unc', ('val', 'testA', 'testB')),
                                       ('refcocog', 'umd', ('val', 'test')))
        for split in splits
    ],
)

# training: the train splits of the three datasets, without any image of a val/test split
refcoco_train_pipeline = [
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
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            dict(type='RefCOCODataset', data_root=refer_root, img_dir=coco_img_dir, dataset=name,
                 split_by=split_by, split='train', exclude_eval_images=True,
                 pipeline=refcoco_train_pipeline)
            for name, split_by in (('refcoco', 'unc'), ('refcoco+', 'unc'), ('refcocog', 'umd'))
        ],
    ),
)
