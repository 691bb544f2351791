# The tiny CPU CoPRS on your own data in JSON lines (docs/datasets.md, "Your own data"): a check
# on CPU that a dataset loads, trains and evaluates end to end before a real model meets it.
#   <jsonl_root>/train.jsonl and val.jsonl, one {"image", "instruction", "mask", ...} per line,
#   paths relative to jsonl_root; the warm-up stage needs each training line's "response"
#   ("<think>…</think><REF_POS>"), evaluation does not.
#   coprs test configs/coprs/coprs_tiny_jsonl_cpu.py --limit 16 --cfg-options \
#       test_cfg.datasets.0.data_root=DIR  # or copy this file and set jsonl_root
# The model, schedule and runtime are the main job's (coprs_tiny_shapes_cpu.py); only the data
# changes, and the answer-naming loss is off: it reads a field that names the target (the
# synthetic world's "gold_answer_region"), which JSON lines rarely have. Lines that carry one can
# turn it on: --cfg-options model.rl.answer_coef=1.0 model.rl.answer_key=<field>.
_base_ = ['./coprs_tiny_shapes_cpu.py']
work_dir = 'work_dirs/coprs_tiny_jsonl_cpu'
model = dict(rl=dict(answer_coef=0.0))
jsonl_root = 'data/my_dataset'
jsonl_test_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotations', skip_errors=True),
    dict(type='PackReasonSegInputs'),
]
test_cfg = dict(datasets=[dict(type='JsonlSegDataset', data_root=jsonl_root,
                               ann_file='val.jsonl', pipeline=jsonl_test_pipeline)])
# validation during training: the same lines with their gold responses teacher-forced
val_cfg = dict(datasets=[dict(type='JsonlSegDataset', data_root=jsonl_root,
                              ann_file='val.jsonl', pipeline=jsonl_test_pipeline)])
train_dataloader = dict(dataset=dict(
    _delete_=True, type='JsonlSegDataset', data_root=jsonl_root, ann_file='train.jsonl',
    pipeline=[
        dict(type='LoadImage', skip_errors=False),
        dict(type='LoadSegAnnotations'),
        dict(type='ResizePadVision', size={{_base_.shapes_image_size}}),
        dict(type='PackReasonSegInputs'),
    ]))
