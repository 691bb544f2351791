# What every evaluated dataset shares: the test loader (its dataset is set per entry of
# test_cfg.datasets) and the metric under LISA's protocol (ignore regions excluded,
# empty/empty = 1).
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='coprs.reasonseg_collate'),  # scoped: Runner looks it up in the root
    dataset=None,  # one per entry of test_cfg.datasets
)
test_evaluator = dict(type='ReasonSegMetric', empty_empty=1.0, ignore_mode='exclude')
